"""Desired state in SQLite (WAL): written before any switch is touched, read back on restart.

The schema's version is SQLite's `user_version`. A controller opens a store of an older version
by migrating it in place, one step at a time, each step in one transaction; it refuses a store
of a newer version (written by a newer controller) rather than guess at what it holds."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Protocol

from controller.fabric.model import ConnectionPlan

# Version 1 is the first versioned schema. Stores written before versions existed have
# user_version 0 and the same two tables (created below when absent).
_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS connections (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    revision INTEGER NOT NULL,
    plan TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

# Version 2: records of other owners (registrations, pipeline revisions, ...), each under its
# kind, so that a feature that must survive a restart needs no schema change of its own.
_SCHEMA_V2 = """
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (kind, key)
);
"""

# _MIGRATIONS[v] turns a store of version v into one of version v + 1.
_MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1, _SCHEMA_V2)
SCHEMA_VERSION = len(_MIGRATIONS)


class StoreVersionError(Exception):
    """The store was written by a newer controller."""


class StoreUnavailable(Exception):
    """durable() could not make the writes made so far durable: the replicated store (etcd)
    has no quorum or cannot be reached. The writes stay queued and are committed when it can be
    reached again, as long as this replica still leads. A caller answers UNAVAILABLE."""


class StoreRefused(StoreUnavailable):
    """The writes were refused: this replica does not lead the fabric (any more), so its writes
    are not the fabric's. A caller answers UNAVAILABLE; the leader serves the call."""


class StateStore(Protocol):
    """What the fabric and the other owners of lasting state use of a store: the SQLite `Store`
    below, or `EtcdStore` (etcd_store.py), chosen by the `store` setting (store_backend.py).
    Writes and reads are synchronous (the fabric calls them on its hot path); `durable()` is
    where a writer waits until what it wrote is stored for good, before it touches a switch or
    answers on the strength of it."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def close(self) -> None: ...
    def put(self, plan: ConnectionPlan) -> None: ...
    def put_many(self, plans: list[ConnectionPlan]) -> None: ...
    def delete(self, conn_id: str) -> None: ...
    def get(self, conn_id: str) -> ConnectionPlan | None: ...
    def all(self) -> list[ConnectionPlan]: ...
    def count(self) -> int: ...
    def size_bytes(self) -> int: ...
    def set_meta(self, key: str, value: str) -> None: ...
    def get_meta(self, key: str) -> str | None: ...
    def put_record(self, kind: str, key: str, value: str) -> None: ...
    def delete_record(self, kind: str, key: str) -> None: ...
    def get_record(self, kind: str, key: str) -> str | None: ...
    def records(self, kind: str) -> dict[str, str]: ...
    async def durable(self) -> None: ...


class Store:
    """One writer (the controller's event loop); small synchronous transactions.

    A commit in WAL mode with synchronous=NORMAL costs tens of microseconds, cheaper than a
    hop to a thread, so the loop calls it directly.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    def _migrate(self) -> None:
        found = self.version()
        if found > SCHEMA_VERSION:
            self.db.close()
            raise StoreVersionError(
                f"store {self.path} has schema version {found}, newer than this controller's {SCHEMA_VERSION}: "
                "run the controller version that wrote it, or move the store aside")
        for version in range(found, SCHEMA_VERSION):
            # executescript commits first, so each step is its own explicit transaction.
            self.db.executescript(f"BEGIN; {_MIGRATIONS[version]} PRAGMA user_version = {version + 1}; COMMIT;")

    def version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    async def start(self) -> None:
        """Nothing to wait for: the file is open and migrated once constructed."""

    async def stop(self) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    def put(self, plan: ConnectionPlan) -> None:
        self.db.execute(
            "INSERT INTO connections (id, state, revision, plan, updated) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET state=excluded.state, revision=excluded.revision, "
            "plan=excluded.plan, updated=excluded.updated",
            (plan.id, plan.state, plan.revision, plan.model_dump_json(), time.time()),
        )

    def put_many(self, plans: list[ConnectionPlan]) -> None:
        now = time.time()
        self.db.execute("BEGIN")
        try:
            self.db.executemany(
                "INSERT INTO connections (id, state, revision, plan, updated) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET state=excluded.state, revision=excluded.revision, "
                "plan=excluded.plan, updated=excluded.updated",
                [(p.id, p.state, p.revision, p.model_dump_json(), now) for p in plans],
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def delete(self, conn_id: str) -> None:
        self.db.execute("DELETE FROM connections WHERE id = ?", (conn_id,))

    def get(self, conn_id: str) -> ConnectionPlan | None:
        row = self.db.execute("SELECT plan FROM connections WHERE id = ?", (conn_id,)).fetchone()
        return ConnectionPlan.model_validate_json(row[0]) if row else None

    def all(self) -> list[ConnectionPlan]:
        return [ConnectionPlan.model_validate_json(r[0]) for r in self.db.execute("SELECT plan FROM connections ORDER BY id")]

    def count(self) -> int:
        """Stored connections."""
        return int(self.db.execute("SELECT count(*) FROM connections").fetchone()[0])

    def size_bytes(self) -> int:
        """The database's files on disk (the file and its write-ahead log); 0 in memory."""
        if str(self.path) == ":memory:":
            return 0
        return sum(p.stat().st_size for p in (self.path, self.path.with_name(self.path.name + "-wal")) if p.exists())

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value))

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    # --- records: state other owners keep across restarts, one kind each -------------------

    def put_record(self, kind: str, key: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO records (kind, key, value, updated) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(kind, key) DO UPDATE SET value=excluded.value, updated=excluded.updated",
            (kind, key, value, time.time()))

    def delete_record(self, kind: str, key: str) -> None:
        self.db.execute("DELETE FROM records WHERE kind = ? AND key = ?", (kind, key))

    def get_record(self, kind: str, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM records WHERE kind = ? AND key = ?", (kind, key)).fetchone()
        return row[0] if row else None

    def records(self, kind: str) -> dict[str, str]:
        """Every record of one kind, by key."""
        return dict(self.db.execute("SELECT key, value FROM records WHERE kind = ? ORDER BY key", (kind,)).fetchall())

    async def durable(self) -> None:
        """Returns once every write made so far is stored for good. SQLite's writes above are
        durable when they return; a replicated store (etcd) makes its callers wait here, and
        raises here when the write was refused (leadership lost, no quorum)."""
        return None
