"""The ``edgecore`` command."""

from __future__ import annotations

from common.cli import config_parser, not_built, resolve_config
from common.logging import configure_logging
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
    configure_logging(loaded.log_level)
    return not_built("The EdgeCore agent", 5)
