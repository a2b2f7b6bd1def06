"""``keadm join``: make this machine an edge node of a CloudCore, in one command.

1. pin the CA: fetch ``/ca.crt`` from the certificate service and keep it only if its sha256 is the token's;
2. make a key and a CSR, and trade them with the token for a certificate for this node;
3. write ``/etc/kubage/edgecore.yaml``, the CA, the certificate and key (all staged in a temp dir and moved
   into place together at the end: a failed join leaves nothing behind);
4. install and start the ``edgecore`` systemd unit, and wait for EdgeCore to be ready.

``--root-dir`` puts every file under another root (tests, ``make demo``); then nothing is installed into
systemd and the command to start EdgeCore is printed instead.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from common.certclient import CertServiceError, fetch_ca, request_certificate
from common.config import ConfigError, load_config, to_yaml
from common.tls import NODE_CN_PREFIX, valid_node_name
from common.tokens import TokenError, ca_hash
from edgecore.config import ENV_PREFIX, UNSUPPORTED, EdgeCoreConfig
from keadm.paths import EdgeLayout, deploy_dir

READY_WAIT_S = 60.0


class JoinError(Exception):
    pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-e", "--cloudcore-ipport", required=True, help="CloudCore's WebSocket address, HOST:PORT")
    parser.add_argument("-t", "--token", required=True, help="the token printed by 'keadm gettoken'")
    parser.add_argument("-i", "--edgenode-name", default=None, help="this node's name (default: the hostname)")
    parser.add_argument(
        "-p",
        "--remote-runtime-endpoint",
        default="unix:///run/containerd/containerd.sock",
        help="the CRI endpoint of the container runtime (default: containerd's socket)",
    )
    parser.add_argument("-l", "--labels", default="", help="comma-separated key=value labels for the node")
    parser.add_argument("-s", "--certport", type=int, default=10002, help="CloudCore's certificate service port")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an edgecore.yaml setting, e.g. modules.eventBus.mqttServerExternal=tcp://127.0.0.1:1883 (repeatable)",
    )
    parser.add_argument(
        "--root-dir", type=Path, default=Path("/"), help="install under this root instead of / (no systemd)"
    )


def run(args: argparse.Namespace) -> int:
    layout = EdgeLayout(args.root_dir)
    try:
        plan = _plan(args, layout)
        ca_pem, cert_pem, key = asyncio.run(_obtain_certificate(plan))
        _install_files(layout, plan, ca_pem, cert_pem, key)
        _step(3, f"wrote {layout.config} and the node's certificate")
        _install_unit(layout, plan)
    except JoinError as exc:
        sys.stderr.write(f"keadm join: {exc}\n")
        return 1
    return 0


@dataclass(frozen=True)
class Plan:
    host: str
    port: int
    certport: int
    node: str
    token: str
    config: EdgeCoreConfig  # edgecore.yaml, validated
    unit: str  # the systemd unit


def _plan(args: argparse.Namespace, layout: EdgeLayout) -> Plan:
    """Every flag checked, and the EdgeCore config built and validated, before anything touches the network."""
    host, sep, port = str(args.cloudcore_ipport).rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise JoinError(f"--cloudcore-ipport must be HOST:PORT, got {args.cloudcore_ipport!r}")
    node = args.edgenode_name or socket.gethostname().lower()
    if not valid_node_name(node):
        raise JoinError(f"node name {node!r} is not a valid node name (DNS-1123 subdomain); use --edgenode-name")
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in args.labels.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise JoinError(f"--labels: {item!r} is not key=value")
        labels[key] = value
    try:
        ca_hash(args.token)
    except TokenError as exc:
        raise JoinError(f"--token: {exc}") from None
    if layout.config.exists():
        raise JoinError(f"this machine has already joined ({layout.config} exists): run 'keadm reset' first")
    settings: dict[str, Any] = {
        "database": {"dataSource": str(layout.database)},
        "modules": {
            "edgeHub": {
                "tlsCaFile": str(layout.ca_file),
                "tlsCertFile": str(layout.cert_file),
                "tlsPrivateKeyFile": str(layout.key_file),
                "websocket": {"server": f"{args.cloudcore_ipport}"},
                "httpServer": f"https://{args.cloudcore_ipport.rpartition(':')[0]}:{args.certport}",
                "rotateCertificates": True,
            },
            "edged": {
                "hostnameOverride": node,
                "remoteRuntimeEndpoint": args.remote_runtime_endpoint,
                "rootDirectory": str(layout.edged_root),
                "nodeLabels": labels,
            },
            "localController": {"rootDirectory": str(layout.sedna_root)},
        },
    }
    overrides: dict[str, str] = {}
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise JoinError(f"--set: {item!r} is not KEY=VALUE")
        overrides[f"{ENV_PREFIX}__" + key.strip().replace(".", "__")] = value
    with tempfile.TemporaryDirectory() as scratch:
        draft = Path(scratch) / "edgecore.yaml"
        draft.write_text(yaml.safe_dump(settings))
        try:
            config = load_config(
                EdgeCoreConfig, draft, env_prefix=ENV_PREFIX, environ=overrides, unsupported=UNSUPPORTED
            )
        except ConfigError as exc:
            raise JoinError(
                f"the EdgeCore configuration would be invalid: {str(exc).replace(str(draft), 'edgecore.yaml')}"
            ) from None
    return Plan(
        host=host,
        port=int(port),
        certport=args.certport,
        node=node,
        token=args.token.strip(),
        config=config,
        unit=_unit_text(layout),
    )


def _step(number: int, text: str) -> None:
    sys.stdout.write(f"[{number}/4] {text}\n")
    sys.stdout.flush()


async def _obtain_certificate(plan: Plan) -> tuple[bytes, bytes, Any]:
    """The pinned CA, and a certificate for this node with the key made for it."""
    # Imported here: the cryptography package is only needed while joining.
    from common.pki import new_csr, new_key  # noqa: PLC0415

    try:
        ca_pem = await fetch_ca(plan.host, plan.certport, expected_sha256=ca_hash(plan.token))
    except CertServiceError as exc:
        raise JoinError(f"cannot get CloudCore's CA: {exc}") from None
    _step(1, f"CA pinned: sha256 {ca_hash(plan.token)[:16]}… from {plan.host}:{plan.certport}")

    key = new_key()
    try:
        cert_pem = await request_certificate(
            plan.host, plan.certport, node=plan.node, csr_pem=new_csr(key, plan.node), ca_pem=ca_pem, token=plan.token
        )
    except CertServiceError as exc:
        raise JoinError(f"CloudCore refused the certificate: {exc}") from None
    not_after = _check_certificate(cert_pem, key, ca_pem, plan.node)
    _step(2, f"certificate issued for {NODE_CN_PREFIX}{plan.node}, valid until {not_after}")
    return ca_pem, cert_pem, key


def _install_unit(layout: EdgeLayout, plan: Plan) -> None:
    _write_atomic(layout.unit_file, plan.unit.encode(), mode=0o644)
    if not layout.installs_systemd:
        _step(4, f"not installed into systemd (--root-dir); start it with: edgecore --config {layout.config}")
        return
    for command in (["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", "edgecore"]):
        done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603 - fixed argv
        if done.returncode != 0:
            raise JoinError(f"'{' '.join(command)}' failed: {done.stderr.strip()} (files are in {layout.etc})")
    _step(4, "edgecore.service installed and started; waiting for it to be ready")
    _wait_ready(plan.config.modules.edged.healthz_bind_address)
    sys.stdout.write(f"This node joined as {plan.node!r}. 'keadm diagnose' checks it; 'keadm reset' undoes it.\n")


def _check_certificate(cert_pem: bytes, key: Any, ca_pem: bytes, node: str) -> str:
    """The certificate is for our key and our node, and signed by the pinned CA; its expiry, as text."""
    from common.pki import check_node_certificate  # noqa: PLC0415

    try:
        cert = check_node_certificate(cert_pem, key, ca_pem, node)
    except ValueError as exc:
        raise JoinError(f"the certificate CloudCore returned is not usable: {exc}") from None
    return cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")


def _install_files(layout: EdgeLayout, plan: Plan, ca_pem: bytes, cert_pem: bytes, key: Any) -> None:
    """Stage every file in a temp dir beside the target, then move it into place whole."""
    from common.pki import key_pem  # noqa: PLC0415

    target = layout.etc
    if target.exists() and any(target.iterdir()):
        raise JoinError(f"{target} is not empty: run 'keadm reset' first")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".kubage-join-", dir=target.parent))
    try:
        rel = {path: staging / path.relative_to(target) for path in (layout.config, layout.ca_file, layout.cert_file)}
        for path in rel.values():
            path.parent.mkdir(parents=True, exist_ok=True)
        rel[layout.config].write_text(to_yaml(plan.config))  # every key under its description
        rel[layout.config].chmod(0o600)
        rel[layout.ca_file].write_bytes(ca_pem)
        rel[layout.cert_file].write_bytes(cert_pem)
        key_path = staging / layout.key_file.relative_to(target)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key_pem(key))
        staging.chmod(0o755)
        if target.exists():
            target.rmdir()  # empty, checked above
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    layout.var.mkdir(parents=True, exist_ok=True)


def _write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    os.replace(tmp, path)


def _unit_text(layout: EdgeLayout) -> str:
    """deploy/edgecore.service, starting the edgecore installed beside this keadm with the joined config."""
    found = deploy_dir()
    if found is None:
        raise JoinError("deploy/edgecore.service is missing from this installation of keadm")
    beside = Path(sys.argv[0]).resolve().parent / "edgecore"
    edgecore = str(beside) if beside.exists() else shutil.which("edgecore")
    if edgecore is None:
        raise JoinError("the edgecore command is not installed on this machine (pip install kubage)")
    unit = (found / "edgecore.service").read_text()
    default = "ExecStart=/usr/local/bin/edgecore --config /etc/kubage/edgecore.yaml"
    if default not in unit:
        raise JoinError(f"{found / 'edgecore.service'} has no line {default!r} to fill in")
    return unit.replace(default, f"ExecStart={edgecore} --config {layout.config}")


def _wait_ready(bind_address: str) -> None:
    deadline = time.monotonic() + READY_WAIT_S
    url = f"http://{bind_address}/readyz"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise JoinError(f"edgecore did not become ready within {READY_WAIT_S:g} s: see 'journalctl -u edgecore'")
