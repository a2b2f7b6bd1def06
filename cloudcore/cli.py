"""The ``cloudcore`` command."""

from __future__ import annotations

from cloudcore import config
from common.cli import config_parser, not_built, resolve_config
from common.logging import configure_logging


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
    configure_logging(loaded.log_level)
    return not_built("The cloudcore command (hub plus Kubernetes controllers)", 4)
