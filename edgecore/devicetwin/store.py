"""The ``device_twins`` table: per device property, the desired value (from the Device spec) and the reported
value (from the mapper), each with a version that counts its changes.

It lives in EdgeCore's SQLite file beside the cloud's objects (schema migration 3 of the MetaStore) and uses
the connection of the MetaStore it is given. Reported values are written in batches, in one transaction each.
Timestamps are kept in the ``metadata`` column as JSON: ``{"desired_ts": ms, "reported_ts": ms}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite
import orjson

from edgecore.metamanager.store import MetaStore

_COLUMNS = "device, property, desired, desired_version, reported, reported_version, metadata"


@dataclass(frozen=True, slots=True)
class TwinRow:
    device: str  # <namespace>/<name>
    property: str
    desired: str | None = None
    desired_version: int = 0
    reported: str | None = None
    reported_version: int = 0
    desired_ts: int = 0  # ms since the epoch
    reported_ts: int = 0


def _row(raw: Any) -> TwinRow:
    device, prop, desired, desired_version, reported, reported_version, metadata = raw
    meta: dict[str, Any] = {}
    if metadata:
        try:
            loaded = orjson.loads(metadata)
        except orjson.JSONDecodeError:
            loaded = None
        meta = loaded if isinstance(loaded, dict) else {}
    return TwinRow(
        device,
        prop,
        desired,
        int(desired_version),
        reported,
        int(reported_version),
        int(meta.get("desired_ts") or 0),
        int(meta.get("reported_ts") or 0),
    )


class TwinStore:
    def __init__(self, store: MetaStore) -> None:
        self._store = store

    @property
    def _db(self) -> aiosqlite.Connection:
        return self._store.db

    async def get(self, device: str) -> dict[str, TwinRow]:
        query = f"SELECT {_COLUMNS} FROM device_twins WHERE device = ?"  # noqa: S608 - constant columns
        async with self._db.execute(query, (device,)) as cursor:
            return {row.property: row for row in map(_row, await cursor.fetchall())}

    async def get_all(self) -> dict[str, dict[str, TwinRow]]:
        found: dict[str, dict[str, TwinRow]] = {}
        async with self._db.execute(f"SELECT {_COLUMNS} FROM device_twins") as cursor:  # noqa: S608
            for row in map(_row, await cursor.fetchall()):
                found.setdefault(row.device, {})[row.property] = row
        return found

    async def set_desired(self, device: str, prop: str, value: str | None, now_ms: int) -> TwinRow | None:
        """Store a desired value; the new row if it differs from the stored one (version bumped), else None."""
        query = f"""
            INSERT INTO device_twins (device, property, desired, desired_version, metadata)
            VALUES (?, ?, ?, 1, json_object('desired_ts', ?))
            ON CONFLICT (device, property) DO UPDATE SET
                desired = excluded.desired,
                desired_version = desired_version + 1,
                metadata = json_set(coalesce(metadata, '{{}}'), '$.desired_ts', ?)
            WHERE desired IS NOT excluded.desired
            RETURNING {_COLUMNS}
        """  # noqa: S608 - constant columns
        async with self._db.execute(query, (device, prop, value, now_ms, now_ms)) as cursor:
            raw = await cursor.fetchone()
        return _row(raw) if raw is not None else None

    async def put_reported(self, rows: Sequence[TwinRow]) -> None:
        """Store reported values with the versions and times in ``rows``, all or none, in one transaction
        (DeviceTwin counts the versions: it is the table's only writer and keeps it in memory)."""
        query = """
            INSERT INTO device_twins (device, property, reported, reported_version, metadata)
            VALUES (?1, ?2, ?3, ?4, json_object('reported_ts', ?5))
            ON CONFLICT (device, property) DO UPDATE SET
                reported = ?3,
                reported_version = ?4,
                metadata = json_set(coalesce(metadata, '{}'), '$.reported_ts', ?5)
        """
        params = [(r.device, r.property, r.reported, r.reported_version, r.reported_ts) for r in rows]
        await self._store.write_all([(query, params)])

    async def delete_devices(self, devices: Iterable[str]) -> None:
        await self._db.executemany("DELETE FROM device_twins WHERE device = ?", [(d,) for d in devices])

    async def delete_properties(self, device: str, props: Iterable[str]) -> None:
        await self._db.executemany(
            "DELETE FROM device_twins WHERE device = ? AND property = ?", [(device, p) for p in props]
        )
