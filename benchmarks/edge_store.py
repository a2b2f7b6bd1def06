"""Edge store benchmark: ``MetaStore.apply`` rows/s beside plain sqlite3 ``executemany`` rows/s (perf.md §9 T8).

One run, on files in a temp dir, both with the store's PRAGMAs (``journal_mode=WAL``, ``synchronous=NORMAL``):

  (a) baseline: stdlib ``sqlite3``, synchronous, a table with the columns and index of MetaStore's ``objects``;
      ``--rows`` pod-like rows are inserted ``--batch`` rows per transaction (BEGIN IMMEDIATE, ``executemany``,
      COMMIT). The rows, with their JSON already serialised, are built before the clock starts;
  (b) our path: ``MetaStore.apply`` on uvloop (``common.loop.run``), awaited once per batch of ``--batch``
      insert messages (distinct UIDs, integer resourceVersions). The messages are built before the clock
      starts; the clock covers only the ``apply`` calls, so it includes what ``apply`` does per row
      (UID lookup, version check, resource parsing and ``orjson.dumps``);
  (b') updates: the same UIDs again, each at a newer resourceVersion, which exercises the version lookup
      against rows that exist.

``--payload-bytes`` is the size of each object's JSON content. Every phase starts from a fresh file each
round ((b') on the file (b) just filled); the best of ``--rounds`` rounds is reported, since other processes
only ever slow a run down. The run prints a table and, as the last line of stdout, one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks.support import log, table
from common.logging import configure_logging
from common.loop import loop_name, run
from common.messages import Group, Message, ObjectUid, Operation, Resource, new_message
from edgecore.metamanager.store import SCHEMA, MetaStore

NAMESPACE = "bench"
NODE = "edge-00000"
FIRST_RV = 1_000_000  # integer resourceVersions, as etcd revisions; updates use FIRST_RV + rows + i
T8_GOAL_RATIO = 0.5
T8_ABSOLUTE_ROWS_PER_S = 20_000


# --- workload ----------------------------------------------------------------------------------------------


def pod_content(i: int, rv: int, pad: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"bench-pod-{i:06d}",
            "namespace": NAMESPACE,
            "uid": uid_of(i),
            "resourceVersion": str(rv),
            "labels": {"app": "bench"},
            "annotations": {"bench/pad": pad},
        },
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "localhost/busybox:1.35"}]},
        "status": {"phase": "Pending"},
    }


def uid_of(i: int) -> ObjectUid:
    return ObjectUid(f"0000bench-{i:08d}-4000-8000-000000000000")


def sized_pod(i: int, rv: int, payload_bytes: int) -> dict[str, Any]:
    """A pod whose compact JSON is exactly ``payload_bytes`` long (or as short as it gets, if that is less)."""
    base = len(orjson.dumps(pod_content(i, rv, "")))
    return pod_content(i, rv, "x" * max(0, payload_bytes - base))


def resource_of(i: int) -> str:
    return f"{NAMESPACE}/pod/bench-pod-{i:06d}"


def build_messages(rows: int, payload_bytes: int, operation: Operation, rv_base: int) -> list[Message]:
    return [
        new_message(
            source="edgecontroller",
            group=Group.RESOURCE,
            operation=operation,
            resource=resource_of(i),
            content=sized_pod(i, rv_base + i, payload_bytes),
            now_ms=0,
            resourceversion=str(rv_base + i),
        )
        for i in range(rows)
    ]


def baseline_rows(messages: list[Message]) -> list[tuple[Any, ...]]:
    """The very tuples ``MetaStore.apply`` writes for these messages, built ahead of time."""
    out: list[tuple[Any, ...]] = []
    for message in messages:
        resource = Resource.parse(message.route.resource)
        out.append(
            (
                message.content["metadata"]["uid"],
                message.route.resource,
                resource.type,
                resource.namespace,
                resource.name,
                message.header.resourceversion,
                orjson.dumps(message.content),
            )
        )
    return out


def batches(items: list[Any], size: int) -> list[list[Any]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


# --- (a) plain sqlite3 --------------------------------------------------------------------------------------


def sqlite_executemany(path: Path, row_batches: list[list[tuple[Any, ...]]]) -> float:
    """Rows/s inserting ``row_batches`` one transaction each, with stdlib sqlite3 and the store's PRAGMAs."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        for ddl in SCHEMA:  # MetaStore's schema, every migration applied
            db.executescript(f"BEGIN; {ddl}; COMMIT;")
        query = "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, ?, ?)"
        rows = sum(len(batch) for batch in row_batches)
        gc.collect()
        start = time.perf_counter()
        for batch in row_batches:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(query, batch)
            db.execute("COMMIT")
        elapsed = time.perf_counter() - start
        (count,) = db.execute("SELECT count(*) FROM objects").fetchone()
    finally:
        db.close()
    if count != rows:
        raise RuntimeError(f"sqlite3 baseline: {count} rows in the table, {rows} inserted")
    return rows / elapsed


# --- (b), (b') MetaStore.apply ------------------------------------------------------------------------------


async def store_apply(store: MetaStore, message_batches: list[list[Message]], what: str) -> float:
    """Rows/s awaiting ``store.apply`` once per batch; every message must change a row."""
    rows = sum(len(batch) for batch in message_batches)
    applied = 0
    gc.collect()
    start = time.perf_counter()
    for batch in message_batches:
        changes, rejected = await store.apply(batch)
        applied += len(changes) + len(rejected)  # rejected counted so that a mismatch below is reported
    elapsed = time.perf_counter() - start
    if applied != rows:
        raise RuntimeError(f"MetaStore.apply ({what}): {applied} changes for {rows} messages")
    return rows / elapsed


# --- main ---------------------------------------------------------------------------------------------------


def rate(value: float) -> str:
    return f"{value:>12,.0f} rows/s"


async def main_async(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    inserts = build_messages(args.rows, args.payload_bytes, Operation.INSERT, FIRST_RV)
    updates = build_messages(args.rows, args.payload_bytes, Operation.UPDATE, FIRST_RV + args.rows)
    rows = baseline_rows(inserts)
    row_batches = batches(rows, args.batch)
    insert_batches = batches(inserts, args.batch)
    update_batches = batches(updates, args.batch)
    content_bytes = len(rows[0][6])
    log(f"built {2 * args.rows} messages of {content_bytes} B content in {time.perf_counter() - t0:.2f}s")

    plain: list[float] = []
    applied: list[float] = []
    updated: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-edge-store-") as tmp:
        workdir = Path(tmp)
        for round_ in range(args.rounds):  # alternate, so that noise from other processes hits every phase alike
            plain.append(sqlite_executemany(workdir / f"sqlite-{round_}.db", row_batches))
            store = await MetaStore.open(workdir / f"store-{round_}.db")
            try:
                applied.append(await store_apply(store, insert_batches, "inserts"))
                updated.append(await store_apply(store, update_batches, "updates"))
                inventory = await store.inventory()
            finally:
                await store.close()
            if len(inventory) != args.rows or inventory[uid_of(0)] != str(FIRST_RV + args.rows):
                raise RuntimeError(f"MetaStore: {len(inventory)} objects after the round, or not at the new version")
            log(
                f"round {round_ + 1}/{args.rounds}: sqlite3 {plain[-1]:,.0f}, apply {applied[-1]:,.0f}, "
                f"apply updates {updated[-1]:,.0f} rows/s"
            )

    best_plain, best_apply, best_update = max(plain), max(applied), max(updated)
    ratio = best_apply / best_plain if best_plain else 0.0
    verdict = "ok" if ratio >= T8_GOAL_RATIO else "BELOW GOAL"
    absolute = "ok" if best_apply >= T8_ABSOLUTE_ROWS_PER_S else "BELOW"
    print(
        table(
            [
                ("workload", f"{args.rows} rows, {args.batch} rows/tx, {content_bytes} B JSON content"),
                ("journal", "WAL, synchronous=NORMAL, files in a temp dir"),
                ("loop", loop_name()),
                ("rounds", f"{args.rounds} (best reported)"),
                ("(a) sqlite3 executemany", rate(best_plain)),
                ("(b) MetaStore.apply, inserts", rate(best_apply)),
                ("(b') MetaStore.apply, updates", rate(best_update)),
                ("ratio (b)/(a)", f"{ratio:>12.2f}   goal >= {T8_GOAL_RATIO}: {verdict}"),
                ("ratio (b')/(a)", f"{best_update / best_plain if best_plain else 0.0:>12.2f}"),
                ("absolute (b)", f"goal >= {T8_ABSOLUTE_ROWS_PER_S:,} rows/s: {absolute}"),
            ]
        )
    )
    line = {
        "bench": "edge_store",
        "sqlite_executemany_rows_per_s": round(best_plain),
        "store_apply_rows_per_s": round(best_apply),
        "ratio": round(ratio, 3),
        "store_update_rows_per_s": round(best_update),
        "batch": args.batch,
        "payload_bytes": args.payload_bytes,
    }
    print(json.dumps(line))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=20_000, help="objects written per phase and round")
    parser.add_argument("--batch", type=int, default=256, help="rows (messages) per transaction / apply call")
    parser.add_argument("--payload-bytes", type=int, default=512, help="size of each object's JSON content")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (a), (b), (b'); the best is reported")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.batch < 1 or args.payload_bytes < 1 or args.rounds < 1:
        parser.error("--rows, --batch, --payload-bytes and --rounds must be positive")
    return args


def main() -> None:
    args = parse_args()
    configure_logging("warning", stream=sys.stderr)
    run(main_async(args))


if __name__ == "__main__":
    main()
