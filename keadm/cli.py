"""The ``keadm`` command: the same subcommands and flags as KubeEdge's keadm."""

from __future__ import annotations

import argparse

from common.cli import not_built, package_version


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keadm", description="Set up kubage's cloud side and join edge gateways.")
    parser.add_argument("--version", action="version", version=f"keadm {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    init = sub.add_parser("init", help="install CloudCore into the cluster of the kubeconfig")
    init.add_argument("--kube-config", default=None, help="kubeconfig of the cluster (default: $KUBECONFIG)")
    init.add_argument("--advertise-address", default="", help="comma-separated addresses edges reach CloudCore on")
    init.add_argument("--dry-run", action="store_true", help="write the manifests out instead of applying them")

    token = sub.add_parser("gettoken", help="print a join token")
    token.add_argument("--kube-config", default=None, help="kubeconfig of the cluster (default: $KUBECONFIG)")
    token.add_argument("--node", default=None, help="bind the token to one node name (single use)")
    token.add_argument("--ttl", default="24h", help="how long the token is valid (default 24h)")

    join = sub.add_parser("join", help="join this machine to CloudCore as an edge node")
    join.add_argument("--cloudcore-ipport", required=True, help="CloudCore's WebSocket address, HOST:PORT")
    join.add_argument("--token", required=True, help="the token printed by 'keadm gettoken'")
    join.add_argument("--edgenode-name", default=None, help="this node's name (default: the hostname)")
    join.add_argument("--remote-runtime-endpoint", default="unix:///run/containerd/containerd.sock")
    join.add_argument("--labels", default="", help="comma-separated key=value node labels")
    join.add_argument("--certport", default="10002", help="CloudCore's certificate service port")

    sub.add_parser("reset", help="undo 'keadm join' or 'keadm init' on this machine")
    sub.add_parser("diagnose", help="check runtime, broker, cloud reachability, certificates and disk")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return not_built(f"'keadm {args.command}'", 7)
