"""The ``edgecore`` command."""

from __future__ import annotations

from common.cli import config_parser, report_missing, resolve_config
from common.logging import configure_logging
from common.supervisor import run_process
from edgecore import config


def main(argv: list[str] | None = None) -> int:
    parser = config_parser(
        "edgecore",
        "EdgeCore: keeps what the cloud sent in SQLite, runs the node's pods and bridges its devices.",
        config.DEFAULT_CONFIG_PATH,
    )
    args = parser.parse_args(argv)
    loaded = resolve_config(parser, args, config.EdgeCoreConfig, config.load, config.DEFAULT_CONFIG_PATH)
    if isinstance(loaded, int):
        return loaded
    failed = report_missing("edgecore", config.required_files(loaded), "keadm join creates it")
    if failed is not None:
        return failed
    configure_logging(loaded.log_level)
    # Imported here so that --help and config errors stay fast.
    from edgecore.app import build  # noqa: PLC0415
    from edgecore.edged.cri import CriRuntime  # noqa: PLC0415

    return run_process(lambda: build(loaded, CriRuntime))
