"""Desired state in SQLite (WAL): written before any switch is touched, read back on restart."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from controller.fabric.model import ConnectionPlan

_SCHEMA = """
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
        self.db.executescript(_SCHEMA)

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
