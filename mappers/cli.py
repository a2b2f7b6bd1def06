"""``kubage-mapper``: run the mapper of one protocol for one node.

kubage-mapper --protocol modbus --node edge-1 [--broker tcp://127.0.0.1:1883]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from common.cli import EXIT_USAGE, package_version
from common.logging import configure_logging
from common.supervisor import Module, Restart, run_process
from mappers.sdk.driver import DriverNotFound, installed_protocols, load_driver
from mappers.sdk.runner import Broker, MapperRunner


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kubage-mapper",
        description="Serve the devices of one protocol on one edge node, over EdgeCore's MQTT broker.",
    )
    p.add_argument("--protocol", required=True, help=f"driver to run (installed: {', '.join(installed_protocols())})")
    p.add_argument("--node", required=True, help="the edge node whose devices to serve")
    p.add_argument("--broker", default="tcp://127.0.0.1:1883", help="MQTT broker (default: %(default)s)")
    p.add_argument("--max-devices", type=int, default=1000, help="devices served at most (default: %(default)s)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--version", action="version", version=f"kubage-mapper {package_version()}")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    configure_logging(args.log_level)  # first: loggers bound before it would keep structlog's defaults
    try:
        broker = Broker.parse(args.broker)
        driver = load_driver(args.protocol)
        runner = MapperRunner(
            protocol=args.protocol, node=args.node, driver=driver, broker=broker, max_devices=args.max_devices
        )
    except (ValueError, DriverNotFound) as exc:
        sys.stderr.write(f"kubage-mapper: {exc}\n")
        return EXIT_USAGE
    # A crash of the runner (a bug: it survives broker and device failures itself) restarts it after a backoff.
    return run_process([Module("mapper", runner.run, Restart.ON_FAILURE)])


if __name__ == "__main__":
    sys.exit(main())
