"""The ``keadm`` command: the same subcommands and flags as KubeEdge's keadm.

Each subcommand lives in its own module with ``add_arguments(parser)`` and ``run(args) -> int``; they are
imported only when chosen, so ``keadm join`` on a gateway never loads the cloud side's code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Protocol, cast

from common.cli import package_version

# name → (module, help)
SUBCOMMANDS = {
    "init": ("keadm.init", "install CloudCore into the cluster of the kubeconfig"),
    "gettoken": ("keadm.gettoken", "print a join token"),
    "join": ("keadm.join", "join this machine to CloudCore as an edge node"),
    "reset": ("keadm.reset", "undo 'keadm join' (or, with --kube-config, 'keadm init')"),
    "diagnose": ("keadm.diagnose", "check runtime, broker, cloud reachability, certificates and disk"),
    "ctl": ("keadm.ctl", "the node's pods, their logs and exec, from the gateway itself (works offline)"),
}


class Subcommand(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def _module(name: str) -> Subcommand:
    return cast(Subcommand, importlib.import_module(SUBCOMMANDS[name][0]))


def _parser(chosen: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keadm", description="Set up kubage's cloud side and join edge gateways.")
    parser.add_argument("--version", action="version", version=f"keadm {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in SUBCOMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:  # only the chosen subcommand's module is imported
            _module(name).add_arguments(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    # What follows "--" is a command to run (keadm ctl exec POD -- CMD): kept away from nested subparsers,
    # which would try to parse it.
    cut = argv.index("--") if "--" in argv else len(argv)
    args = _parser(chosen if chosen in SUBCOMMANDS else None).parse_args(argv[:cut])
    args.after_dashes = argv[cut + 1 :]
    try:
        return _module(args.command).run(args)
    except KeyboardInterrupt:
        sys.stderr.write("keadm: interrupted\n")
        return 130
