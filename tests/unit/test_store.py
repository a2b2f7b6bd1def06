"""The edge store: persistence, idempotent applies, migrations, and what happens to a corrupt file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from common.messages import Group, Operation, new_message
from edgecore.metamanager.store import MetaStore


def message(uid: str, rv: str, operation: str = Operation.INSERT) -> object:
    return new_message(
        source="edgecontroller",
        group=Group.RESOURCE,
        operation=operation,
        resource="default/pod/p",
        content={"metadata": {"uid": uid, "name": "p"}},
        now_ms=0,
        resourceversion=rv,
    )


async def test_applies_survive_a_reopen_and_older_versions_never_win(tmp_path: Path) -> None:
    store = await MetaStore.open(tmp_path / "edge.db")
    try:
        changes, _ = await store.apply([message("u1", "5"), message("u1", "3"), message("u1", "5")])  # type: ignore[list-item]
        assert [c.resource_version for c in changes] == ["5"]
    finally:
        await store.close()
    store = await MetaStore.open(tmp_path / "edge.db")
    try:
        assert await store.inventory() == {"u1": "5"}
    finally:
        await store.close()


async def test_a_batch_that_fails_half_way_leaves_nothing_behind(tmp_path: Path) -> None:
    store = await MetaStore.open(tmp_path / "edge.db")
    try:
        unbindable = message("u2", "7")
        object.__setattr__(unbindable.header, "resourceversion", object())  # type: ignore[attr-defined]
        with pytest.raises(sqlite3.Error):  # the second row cannot be bound: the first one must not stay
            await store.apply([message("u1", "5"), unbindable])  # type: ignore[list-item]
        assert await store.inventory() == {}
        changes, _ = await store.apply([message("u1", "5")])  # type: ignore[list-item]  # no transaction left open
        assert [c.uid for c in changes] == ["u1"]
        assert await store.inventory() == {"u1": "5"}
    finally:
        await store.close()  # aiosqlite's thread is not a daemon: an open store would keep pytest from exiting


async def test_a_corrupt_database_is_moved_aside_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "edge.db"
    path.write_bytes(b"this is not sqlite" * 1000)
    with capture_logs() as logs:
        store = await MetaStore.open(path)
    try:
        assert await store.inventory() == {}
    finally:
        await store.close()
    [aside] = list(tmp_path.glob("edge.db.corrupt-*"))
    assert aside.read_bytes().startswith(b"this is not sqlite")  # kept, not silently replaced
    [event] = [e for e in logs if e["event"] == "store_corrupt"]
    assert event["moved_to"] == str(aside) and "not a usable database" in event["reason"]


async def test_an_old_database_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "edge.db"
    with sqlite3.connect(path) as old:  # what schema version 1 left behind, with a row in it
        old.executescript(
            "CREATE TABLE objects (uid TEXT PRIMARY KEY, key TEXT NOT NULL, kind TEXT NOT NULL, namespace TEXT,"
            " name TEXT NOT NULL, resource_version TEXT NOT NULL, content BLOB NOT NULL);"
            "CREATE TABLE outbox (key TEXT PRIMARY KEY, version INTEGER NOT NULL, grp TEXT NOT NULL,"
            " operation TEXT NOT NULL, resource TEXT NOT NULL, content BLOB NOT NULL);"
            "INSERT INTO objects VALUES ('u9', 'default/pod/p', 'pod', 'default', 'p', '7', '{}');"
            "PRAGMA user_version = 1;"
        )
    store = await MetaStore.open(path)
    try:
        assert await store.inventory() == {"u9": "7"}
        assert list(await store.digests()) == ["u9"]
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (5,)
        assert db.execute("SELECT count(*) FROM service_account_tokens").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM device_twins").fetchone() == (0,)
