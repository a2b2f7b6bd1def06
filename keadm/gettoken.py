"""``keadm gettoken``: print a join token, ``<sha256 of the CA>.<claims>.<signature>``.

It is made here, from the CA in the cluster's Secret (the kubeconfig's user must be able to read it), so no
CloudCore needs to be reachable. ``--node`` binds it to one node name and makes it single-use.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from common import tokens
from common.tls import valid_node_name
from keadm.paths import default_kubeconfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kube-config", default=None, help="kubeconfig of the cluster (default: $KUBECONFIG)")
    parser.add_argument("--node", default=None, help="bind the token to this node name; it then works once")
    parser.add_argument("--ttl", default="24h", help="how long the token is valid, e.g. 24h, 30m (default 24h)")


def run(args: argparse.Namespace) -> int:
    try:
        ttl = tokens.parse_duration(args.ttl)
    except ValueError as exc:
        sys.stderr.write(f"keadm gettoken: --ttl: {exc}\n")
        return 2
    if args.node is not None and not valid_node_name(args.node):
        sys.stderr.write(f"keadm gettoken: --node {args.node!r} is not a valid node name (DNS-1123 subdomain)\n")
        return 2
    kubeconfig = args.kube_config or default_kubeconfig()
    if not Path(kubeconfig).exists():
        sys.stderr.write(f"keadm gettoken: kubeconfig {kubeconfig} does not exist (use --kube-config)\n")
        return 2
    try:
        token = asyncio.run(_token(kubeconfig, ttl, args.node))
    except GetTokenError as exc:
        sys.stderr.write(f"keadm gettoken: {exc}\n")
        return 1
    sys.stdout.write(token + "\n")
    return 0


class GetTokenError(Exception):
    pass


async def _token(kubeconfig: str, ttl: float, node: str | None) -> str:
    # Imported here: the cloud side's code is not needed by the other subcommands.
    from cloudcore.certs import CA_SECRET, NAMESPACE, CaSecretError, load_ca  # noqa: PLC0415
    from cloudcore.kube import Kube, KubeError, KubeUnavailable  # noqa: PLC0415
    from cloudcore.kubeconfig import KubeconfigError  # noqa: PLC0415

    try:
        kube = await Kube.connect(kubeconfig)
    except KubeconfigError as exc:
        raise GetTokenError(f"cannot use kubeconfig {kubeconfig}: {exc}") from exc
    try:
        ca = await load_ca(kube)
    except KubeUnavailable as exc:
        raise GetTokenError(f"cannot reach the API server of {kubeconfig}: {exc}") from exc
    except KubeError as exc:
        raise GetTokenError(f"cannot read secret {NAMESPACE}/{CA_SECRET}: {exc}") from exc
    except CaSecretError as exc:
        raise GetTokenError(str(exc)) from exc
    finally:
        await kube.close()
    if ca is None:
        raise GetTokenError(f"no CA yet (secret {NAMESPACE}/{CA_SECRET} is missing): run 'keadm init' first")
    return tokens.issue(ca, ttl_s=ttl, node=node)
