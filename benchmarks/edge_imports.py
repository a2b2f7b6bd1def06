"""What EdgeCore's imports cost: the resident memory each third-party library (and EdgeCore itself) adds to a
fresh interpreter, and the slowest imports by ``python -X importtime``. The first cut of the gateway footprint
(goal: EdgeCore ≤ 50 MiB with 10 pods) is whatever a gateway loads and does not need at run time.

Each line is its own fresh interpreter (the same one EdgeCore runs on, the environment EdgeCore runs with):
the baseline imports nothing; every other line imports the standard library EdgeCore needs (asyncio, ssl,
sqlite3), then its own module. Its cost is its VmRSS minus the standard-library line's. Libraries import
each other, so costs overlap (yaml is inside the config, h2 inside the CRI client): the last line,
``edgecore.app`` whole, is the total. Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys

from benchmarks.support import runtime_env, table
from scripts.harness.procs import production_env

STDLIB = "import asyncio, ssl, sqlite3, json"
MODULES = [  # (what, import statement)
    ("the CRI client (h2, protobuf, the CRI stubs)", "import edgecore.edged.cri"),
    ("structlog (logging)", "import structlog"),
    ("rich (structlog's pretty tracebacks)", "import rich"),
    ("websockets (the tunnel)", "import websockets.asyncio.client"),
    ("orjson", "import orjson"),
    ("yaml (config files)", "import yaml"),
    ("prometheus_client (metrics)", "import prometheus_client"),
    ("edgecore.eventbus (MQTT client, config, logging)", "import edgecore.eventbus"),
    ("edgecore.config", "import edgecore.config"),
    ("edgecore.app (everything EdgeCore loads)", "import edgecore.app"),
]
PROBE = (
    "import re\n"
    "{stmt}\n"
    "status = open('/proc/self/status').read()\n"
    "print(int(re.search(r'VmRSS:\\s+(\\d+)', status).group(1)))\n"
)


def rss_after(python: str, statement: str) -> int:
    """KiB resident after ``statement`` in a fresh interpreter; -1 if it cannot import."""
    out = subprocess.run(
        [python, "-c", PROBE.format(stmt=statement)],
        capture_output=True,
        text=True,
        env=production_env(),
        check=False,
    )
    return int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip().isdigit() else -1


def slowest_imports(python: str, statement: str, count: int) -> list[tuple[str, int]]:
    """(package, µs) of the packages slowest to import in ``statement``, by ``-X importtime``: each package's
    largest cumulative time at any depth (its own first import, with what it imports)."""
    out = subprocess.run(
        [python, "-X", "importtime", "-c", statement],
        capture_output=True,
        text=True,
        env=production_env(),
        check=False,
    )
    slowest: dict[str, int] = {}
    for line in out.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|\s*(\S+)", line)
        if match:
            package = match.group(3).split(".")[0]
            slowest[package] = max(slowest.get(package, 0), int(match.group(2)))
    slowest.pop("edgecore", None)  # the whole: the total, not a part
    return sorted(slowest.items(), key=lambda r: -r[1])[:count]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=3, help="interpreters per line; the median is kept")
    parser.add_argument("--slowest", type=int, default=12, help="top-level imports listed by import time")
    parser.add_argument(
        "--dev-env", action="store_true", help="measure this venv, test tools and all, not a runtime-only one"
    )
    args = parser.parse_args(argv)
    python = sys.executable if args.dev_env else str(runtime_env() / "python")

    def median_rss(statement: str) -> int:
        values = sorted(rss_after(python, statement) for _ in range(args.repeat))
        return values[len(values) // 2]

    base = median_rss("pass")
    stdlib = median_rss(STDLIB)
    resident = {what: median_rss(f"{STDLIB}; {stmt}") for what, stmt in MODULES}
    costs = {what: kib - stdlib for what, kib in resident.items() if kib >= 0}  # -1: not installed there
    rows = [("", "KiB resident (added)"), ("python, nothing imported", f"{base:,}")]
    rows.append(("+ asyncio, ssl, sqlite3, json", f"{stdlib:,} (+{stdlib - base:,})"))
    rows += [(f"+ {what}", f"+{costs[what]:,}" if what in costs else "not installed") for what, _ in MODULES]
    print(table(rows))
    slow = slowest_imports(python, f"{STDLIB}; import edgecore.app", args.slowest)
    print(
        table(
            [("import edgecore.app: slowest packages", "cumulative ms")] + [(m, f"{us / 1000:.1f}") for m, us in slow]
        )
    )
    total = costs["edgecore.app (everything EdgeCore loads)"] + stdlib
    print(
        json.dumps(
            {
                "bench": "edge_imports",
                "environment": "dev" if args.dev_env else "runtime",
                "python_kib": base,
                "stdlib_kib": stdlib,
                "edgecore_app_kib": total,
                "added_kib": {what: cost for what, cost in costs.items()},
                "slowest_ms": {m: round(us / 1000, 1) for m, us in slow},
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
