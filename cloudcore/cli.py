"""The ``cloudcore`` command."""

from __future__ import annotations

import os
import sys

from cloudcore import config
from common.cli import EXIT_USAGE, config_parser, report_missing, resolve_config
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
    failed = report_missing("cloudcore", config.required_files(loaded), "keadm init creates it")
    if failed is not None:
        return failed
    if not loaded.kube_api_config.kube_config and not os.environ.get("KUBERNETES_SERVICE_HOST"):
        sys.stderr.write(
            "cloudcore: kubeAPIConfig.kubeConfig is empty, so the in-cluster service account would be used, "
            "but this is not a pod (KUBERNETES_SERVICE_HOST is unset): set kubeAPIConfig.kubeConfig\n"
        )
        return EXIT_USAGE
    configure_logging(loaded.log_level)
    from cloudcore.app import build  # noqa: PLC0415 - keeps --help and config errors fast

    return run_process(lambda: build(loaded))
