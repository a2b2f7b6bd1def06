"""The ``cloudcore`` command."""

from __future__ import annotations

import sys

from cloudcore import config
from common.cli import EXIT_USAGE, config_parser, resolve_config
from common.logging import configure_logging
from common.supervisor import run_process


def main(argv: list[str] | None = None) -> int:
    parser = config_parser(
        "cloudcore",
        "CloudCore: watches the Kubernetes API and delivers each edge node's objects over a WebSocket tunnel.",
        config.DEFAULT_CONFIG_PATH,
    )
    args = parser.parse_args(argv)
    loaded = resolve_config(parser, args, config.CloudCoreConfig, config.load, config.DEFAULT_CONFIG_PATH)
    if isinstance(loaded, int):
        return loaded
    missing = config.missing_files(loaded)
    if missing:
        for key, path in missing:
            sys.stderr.write(f"cloudcore: {key}: {path} does not exist (keadm init creates it)\n")
        return EXIT_USAGE
    configure_logging(loaded.log_level)
    from cloudcore.app import build  # noqa: PLC0415 - keeps --help and config errors fast

    return run_process(lambda: build(loaded))
