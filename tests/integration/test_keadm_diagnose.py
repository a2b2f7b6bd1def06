"""``keadm diagnose`` against real parts: a private containerd (CRI), mosquitto, and a TLS server on loopback.

The cloud end is a small HTTPS server serving ``/ca.crt`` with the test CA's server certificate, and its port
doubles as the CloudHub address (diagnose only opens a TCP connection there). It stands in for CloudCore so that
these tests need no control plane: diagnose talks to both over the wire exactly as it would to CloudCore.

A healthy node gives exit 0 and five ``ok`` lines; each broken part gives exit 1 and a ``FAIL`` line for that
check, and only that one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from common.pki import CertificateAuthority, new_key, node_subject, write_pair
from scripts.harness.mosquitto import Mosquitto
from scripts.harness.pki import Pki
from scripts.harness.procs import BIN, free_port, production_env

CHECKS = ("runtime", "mqtt", "cloud", "certificate", "disk")
RUN_TIMEOUT_S = 30.0  # diagnose bounds each check by ~3 s; this only keeps a hung command from hanging the suite


@dataclass
class Cloud:
    port: int
    ca_file: Path


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    def verdicts(self) -> dict[str, str]:
        """check name → "ok" or "FAIL", from the output's check lines."""
        found = {}
        for line in self.out.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] in ("ok", "FAIL") and parts[1] in CHECKS:
                found[parts[1]] = parts[0]
        return found

    def line(self, check: str) -> str:
        return next((line for line in self.out.splitlines() if line.split()[1:2] == [check]), "")


@pytest.fixture
async def cloud(pki: Pki) -> AsyncIterator[Cloud]:
    """An HTTPS server on 127.0.0.1 answering ``GET /ca.crt`` with the CA, as CloudCore's cert service does."""

    async def ca_crt(_: web.Request) -> web.Response:
        return web.Response(body=pki.ca_file.read_bytes(), content_type="application/x-pem-file")

    app = web.Application()
    app.router.add_get("/ca.crt", ca_crt)
    runner = web.AppRunner(app)
    await runner.setup()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=context)
    await site.start()
    try:
        yield Cloud(port=port, ca_file=pki.ca_file)
    finally:
        await runner.cleanup()


def edge_config(
    tmp_path: Path, pki: Pki, cloud: Cloud, runtime: str, broker: str, cert: tuple[Path, Path] | None = None
) -> dict[str, Any]:
    cert_file, key_file = cert if cert is not None else pki.node_files("edge-diag")
    return {
        "database": {"dataSource": str(tmp_path / "var" / "edgecore.db")},  # not created yet, as before a first start
        "modules": {
            "edgeHub": {
                "tlsCaFile": str(pki.ca_file),
                "tlsCertFile": str(cert_file),
                "tlsPrivateKeyFile": str(key_file),
                "websocket": {"server": f"127.0.0.1:{cloud.port}"},
                "httpServer": f"https://127.0.0.1:{cloud.port}",
            },
            "edged": {"hostnameOverride": "edge-diag", "remoteRuntimeEndpoint": runtime},
            "eventBus": {"mqttServerExternal": broker},
        },
    }


async def diagnose(*args: str) -> Outcome:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "keadm"),
        "diagnose",
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=production_env(),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"keadm diagnose did not finish within {RUN_TIMEOUT_S} s") from None
    assert proc.returncode is not None
    return Outcome(proc.returncode, out.decode(), err.decode())


async def run_with(tmp_path: Path, config: dict[str, Any]) -> Outcome:
    path = tmp_path / "edgecore.yaml"
    path.write_text(yaml.safe_dump(config))
    return await diagnose("--config", str(path))


def only_failing(outcome: Outcome, check: str) -> None:
    assert outcome.code == 1, outcome
    expected = {name: "FAIL" if name == check else "ok" for name in CHECKS}
    assert outcome.verdicts() == expected, outcome.out


async def test_a_healthy_node_passes_every_check(
    tmp_path: Path, pki: Pki, cloud: Cloud, containerd: Any, mosquitto: Mosquitto
) -> None:
    outcome = await run_with(tmp_path, edge_config(tmp_path, pki, cloud, containerd.endpoint, mosquitto.url))
    assert outcome.code == 0, outcome
    assert outcome.verdicts() == dict.fromkeys(CHECKS, "ok"), outcome.out
    assert "containerd://" in outcome.line("runtime")
    assert "CN=system:node:edge-diag" in outcome.line("certificate")
    assert "5 of 5 checks ok" in outcome.out


async def test_the_default_config_is_under_the_root_dir(
    tmp_path: Path, pki: Pki, cloud: Cloud, containerd: Any, mosquitto: Mosquitto
) -> None:
    etc = tmp_path / "root" / "etc" / "kubage"
    etc.mkdir(parents=True)
    (etc / "edgecore.yaml").write_text(
        yaml.safe_dump(edge_config(tmp_path, pki, cloud, containerd.endpoint, mosquitto.url))
    )
    outcome = await diagnose("--root-dir", str(tmp_path / "root"))
    assert outcome.code == 0, outcome
    assert str(etc / "edgecore.yaml") in outcome.out


async def test_a_stopped_broker_fails_the_mqtt_check(tmp_path: Path, pki: Pki, cloud: Cloud, containerd: Any) -> None:
    broker = Mosquitto(tmp_path / "mosquitto")  # our own: stopping the session's broker would disturb other tests
    broker.start()
    broker.stop()
    outcome = await run_with(tmp_path, edge_config(tmp_path, pki, cloud, containerd.endpoint, broker.url))
    only_failing(outcome, "mqtt")
    assert "Connection refused" in outcome.line("mqtt")


async def test_a_port_that_is_not_an_mqtt_broker_fails_the_mqtt_check(
    tmp_path: Path, pki: Pki, cloud: Cloud, containerd: Any
) -> None:
    # The cloud's TLS port accepts TCP but never speaks MQTT: a bare connect test would wrongly pass it.
    outcome = await run_with(
        tmp_path, edge_config(tmp_path, pki, cloud, containerd.endpoint, f"tcp://127.0.0.1:{cloud.port}")
    )
    only_failing(outcome, "mqtt")


async def test_a_wrong_runtime_socket_fails_the_runtime_check(
    tmp_path: Path, pki: Pki, cloud: Cloud, mosquitto: Mosquitto
) -> None:
    missing = f"unix://{tmp_path}/containerd.sock"
    outcome = await run_with(tmp_path, edge_config(tmp_path, pki, cloud, missing, mosquitto.url))
    only_failing(outcome, "runtime")
    assert "does not exist" in outcome.line("runtime")


async def test_a_socket_that_is_not_a_cri_runtime_fails_the_runtime_check(
    tmp_path: Path, pki: Pki, cloud: Cloud, mosquitto: Mosquitto
) -> None:
    # Something listens on the socket but does not answer gRPC: the check gives up within its timeout.
    path = tmp_path / "silent.sock"
    accepted: list[asyncio.StreamWriter] = []
    server = await asyncio.start_unix_server(lambda _r, w: accepted.append(w), path=str(path))
    try:
        started = asyncio.get_running_loop().time()
        outcome = await run_with(tmp_path, edge_config(tmp_path, pki, cloud, f"unix://{path}", mosquitto.url))
        elapsed = asyncio.get_running_loop().time() - started
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
    only_failing(outcome, "runtime")
    assert elapsed < 15, f"diagnose took {elapsed:.1f} s; each check should give up after about 3 s"


async def test_an_expired_certificate_fails_the_certificate_check(
    tmp_path: Path, pki: Pki, cloud: Cloud, containerd: Any, mosquitto: Mosquitto
) -> None:
    key = new_key()
    then = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    # valid from 30 days ago until yesterday (days counts from now)
    expired = pki.ca.issue(node_subject("edge-diag"), key.public_key(), days=-1, client=True, not_before=then)
    files = write_pair(tmp_path / "certs", "expired", key, expired)
    outcome = await run_with(tmp_path, edge_config(tmp_path, pki, cloud, containerd.endpoint, mosquitto.url, files))
    only_failing(outcome, "certificate")
    assert "expired" in outcome.line("certificate")


async def test_a_certificate_expiring_within_a_week_fails(
    tmp_path: Path, pki: Pki, cloud: Cloud, containerd: Any, mosquitto: Mosquitto
) -> None:
    key = new_key()
    soon = pki.ca.issue(node_subject("edge-diag"), key.public_key(), days=3, client=True)
    files = write_pair(tmp_path / "certs", "soon", key, soon)
    outcome = await run_with(tmp_path, edge_config(tmp_path, pki, cloud, containerd.endpoint, mosquitto.url, files))
    only_failing(outcome, "certificate")
    assert "expires in 3.0 days" in outcome.line("certificate")


async def test_a_certificate_from_another_ca_fails(
    tmp_path: Path, pki: Pki, cloud: Cloud, containerd: Any, mosquitto: Mosquitto
) -> None:
    # Same CA name, another key: what a node holds after the cluster's CA was re-created.
    other = CertificateAuthority.create("kubage-test-ca")
    key, cert = other.issue_node("edge-diag")
    files = write_pair(tmp_path / "certs", "other", key, cert)
    outcome = await run_with(tmp_path, edge_config(tmp_path, pki, cloud, containerd.endpoint, mosquitto.url, files))
    only_failing(outcome, "certificate")
    assert "not signed by tlsCaFile" in outcome.line("certificate")


async def test_an_unreachable_cloud_fails_the_cloud_check(
    tmp_path: Path, pki: Pki, containerd: Any, mosquitto: Mosquitto
) -> None:
    closed = Cloud(port=free_port(), ca_file=pki.ca_file)  # nothing listens there
    outcome = await run_with(tmp_path, edge_config(tmp_path, pki, closed, containerd.endpoint, mosquitto.url))
    only_failing(outcome, "cloud")
    assert "Connection refused" in outcome.line("cloud")


async def test_a_cloud_serving_another_ca_fails_the_cloud_check(
    tmp_path: Path, pki: Pki, cloud: Cloud, containerd: Any, mosquitto: Mosquitto
) -> None:
    # The node trusts a CA the cloud's TLS certificate is not signed by: the download must not be trusted.
    stranger = Pki(tmp_path / "stranger")
    config = edge_config(tmp_path, pki, cloud, containerd.endpoint, mosquitto.url)
    config["modules"]["edgeHub"]["tlsCaFile"] = str(stranger.ca_file)
    cert, key = stranger.node_files("edge-diag")
    config["modules"]["edgeHub"]["tlsCertFile"], config["modules"]["edgeHub"]["tlsPrivateKeyFile"] = str(cert), str(key)
    outcome = await run_with(tmp_path, config)
    only_failing(outcome, "cloud")
    assert "does not verify" in outcome.line("cloud")


async def test_a_full_disk_fails_the_disk_check(
    tmp_path: Path, pki: Pki, cloud: Cloud, containerd: Any, mosquitto: Mosquitto
) -> None:
    small = tmp_path / "small"
    small.mkdir()
    mount = await asyncio.to_thread(
        subprocess.run,
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(small)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert mount.returncode == 0, f"cannot mount a small tmpfs here: {mount.stderr}"
    try:
        config = edge_config(tmp_path, pki, cloud, containerd.endpoint, mosquitto.url)
        config["database"]["dataSource"] = str(small / "edgecore.db")
        outcome = await run_with(tmp_path, config)
    finally:
        await asyncio.to_thread(subprocess.run, ["umount", "-l", str(small)], check=False)
    only_failing(outcome, "disk")
    assert "64 MiB free" in outcome.line("disk")


async def test_a_bad_config_exits_2_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "edgecore.yaml"
    path.write_text("modules:\n  edgeHub:\n    heartbeat: -1\n")
    outcome = await diagnose("--config", str(path))
    assert outcome.code == 2, outcome
    assert "heartbeat" in outcome.err
    missing = await diagnose("--root-dir", str(tmp_path / "nothing"))
    assert missing.code == 2
    assert "config file not found" in missing.err
