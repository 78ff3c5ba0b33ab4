"""The store's schema version: an older store is migrated in place, a newer one refused."""

import sqlite3

import pytest

from controller.fabric.store import SCHEMA_VERSION, Store, StoreVersionError
from tests.unit.test_fabric_paths import plan_on_line

# The schema as controllers wrote it before stores had versions (user_version 0).
_UNVERSIONED = """
CREATE TABLE connections (id TEXT PRIMARY KEY, state TEXT NOT NULL, revision INTEGER NOT NULL,
                          plan TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def test_unversioned_store_is_migrated_in_place_and_keeps_its_rows(tmp_path):
    path = tmp_path / "old.sqlite"
    plan = plan_on_line()
    db = sqlite3.connect(path)
    db.executescript(_UNVERSIONED)
    db.execute("INSERT INTO connections VALUES (?, ?, ?, ?, ?)", (plan.id, plan.state, plan.revision,
                                                                  plan.model_dump_json(), 0.0))
    db.execute("INSERT INTO meta VALUES ('pipeline_cookie', '7')")
    db.commit()
    db.close()
    store = Store(path)
    assert store.version() == SCHEMA_VERSION
    assert [p.id for p in store.all()] == [plan.id]
    assert store.get_meta("pipeline_cookie") == "7"
    store.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_new_store_starts_at_the_current_version(tmp_path):
    store = Store(tmp_path / "new.sqlite")
    assert store.version() == SCHEMA_VERSION
    store.close()


def test_store_from_a_newer_controller_is_refused_naming_both_versions(tmp_path):
    path = tmp_path / "newer.sqlite"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    db.commit()
    db.close()
    with pytest.raises(StoreVersionError) as refused:
        Store(path)
    assert f"version {SCHEMA_VERSION + 5}" in str(refused.value)
    assert f"this controller's {SCHEMA_VERSION}" in str(refused.value)
    # Refused means untouched: the newer controller's store keeps its version.
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 5


def test_version_1_store_gains_records_and_keeps_its_connections(tmp_path):
    path = tmp_path / "v1.sqlite"
    plan = plan_on_line()
    db = sqlite3.connect(path)
    db.executescript(_UNVERSIONED)
    db.execute("INSERT INTO connections VALUES (?, ?, ?, ?, ?)", (plan.id, plan.state, plan.revision,
                                                                  plan.model_dump_json(), 0.0))
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    store = Store(path)
    assert store.version() == SCHEMA_VERSION
    assert [p.id for p in store.all()] == [plan.id]
    store.put_record("registration", "nse-1", '{"name": "nse-1"}')
    store.put_record("registration", "nse-1", '{"name": "nse-1", "v": 2}')
    store.put_record("revision", "nse-1", "other kind, same key")
    assert store.records("registration") == {"nse-1": '{"name": "nse-1", "v": 2}'}
    store.delete_record("registration", "nse-1")
    assert store.get_record("registration", "nse-1") is None
    assert store.get_record("revision", "nse-1") == "other kind, same key"
    store.close()
