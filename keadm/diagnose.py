"""`keadm diagnose`: is this edge node able to work? One line per check, ``ok`` or ``FAIL`` with the reason.

Reads the node's ``edgecore.yaml`` (``--config``, default ``<root>/etc/kubage/edgecore.yaml``) and checks what
EdgeCore needs from the machine around it:

- runtime: the CRI Version RPC at ``modules.edged.remoteRuntimeEndpoint``;
- mqtt: an MQTT CONNECT to ``modules.eventBus.mqttServerExternal`` (a bare TCP accept would also pass for a
  port that is something else, or a broker that refuses us);
- cloud: a TCP connect to each ``modules.edgeHub.websocket.server`` address, and ``GET <httpServer>/ca.crt``
  verified against ``tlsCaFile`` and compared with it;
- certificate: ``tlsCertFile`` readable, issued by ``tlsCaFile``, matching ``tlsPrivateKeyFile``, and valid for
  at least 7 more days;
- disk: free space on the database's filesystem (at least 500 MiB and 5 %).

Every check has its own timeout, so a black-holed address or a hung socket never hangs the command. Exit codes:
0 all ok, 1 some check failed, 2 the config cannot be loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import shutil
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import aiomqtt
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from common.cli import EXIT_USAGE
from common.config import ConfigError
from edgecore import config as edge_config
from edgecore.config import EdgeCoreConfig
from edgecore.eventbus.bus import parse_server
from keadm.paths import EdgeLayout

CHECK_TIMEOUT_S = 3.0
MIN_CERT_DAYS = 7
MIN_FREE_BYTES = 500 * 1024 * 1024
MIN_FREE_FRACTION = 0.05
MAX_CA_BYTES = 64 * 1024  # a CA certificate is a few hundred bytes; never read an endless answer


class CheckFailed(Exception):
    """A check's verdict: the message is the reason shown after FAIL."""


@dataclass(frozen=True)
class Result:
    name: str
    ok: bool
    detail: str
    seconds: float

    def line(self) -> str:
        return f"{'ok' if self.ok else 'FAIL':<5} {self.name:<12} {self.detail}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="PATH",
        help="the node's edgecore.yaml (default: <root-dir>/etc/kubage/edgecore.yaml)",
    )
    parser.add_argument(
        "--root-dir",
        type=Path,
        default=Path("/"),
        metavar="DIR",
        help="the root 'keadm join --root-dir' installed into (default: /)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=CHECK_TIMEOUT_S,
        metavar="SECONDS",
        help=f"time allowed to each check (default: {CHECK_TIMEOUT_S:g})",
    )


def run(args: argparse.Namespace) -> int:
    path: Path = args.config if args.config is not None else EdgeLayout(args.root_dir).config
    try:
        config = edge_config.load(path)
    except ConfigError as exc:
        sys.stderr.write(f"keadm diagnose: {exc}\n")
        return EXIT_USAGE
    print(f"keadm diagnose: {path} (node {config.modules.edged.hostname_override})", flush=True)
    results = asyncio.run(diagnose(config, limit=float(args.timeout)))
    failed = [r.name for r in results if not r.ok]
    print(
        f"{len(results) - len(failed)} of {len(results)} checks ok"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


async def diagnose(config: EdgeCoreConfig, *, limit: float = CHECK_TIMEOUT_S) -> list[Result]:
    """Run every check concurrently (each bounded by ``limit`` seconds); print each line as soon as it is known,
    in a fixed order, so the output reads the same every time."""
    checks: list[tuple[str, Callable[[], Awaitable[str]]]] = [
        ("runtime", lambda: check_runtime(config, limit)),
        ("mqtt", lambda: check_mqtt(config, limit)),
        ("cloud", lambda: check_cloud(config, limit)),
        ("certificate", lambda: check_certificate(config)),
        ("disk", lambda: check_disk(config)),
    ]
    tasks = [asyncio.create_task(_bounded(name, check, limit)) for name, check in checks]
    results = []
    for task in tasks:
        result = await task
        print(result.line(), flush=True)
        results.append(result)
    return results


async def _bounded(name: str, check: Callable[[], Awaitable[str]], limit: float) -> Result:
    started = time.monotonic()
    try:
        # A little beyond the check's own timeouts, so that its more precise message usually wins.
        detail = await asyncio.wait_for(check(), limit + 0.5)
        ok = True
    except TimeoutError:
        detail, ok = f"no answer within {limit:g} s", False
    except CheckFailed as exc:
        detail, ok = str(exc), False
    except Exception as exc:  # a check must report, never crash the others
        detail, ok = f"{type(exc).__name__}: {exc}", False
    return Result(name, ok, detail, time.monotonic() - started)


# --- runtime ---------------------------------------------------------------------------------------------------


async def check_runtime(config: EdgeCoreConfig, limit: float) -> str:
    # Imported here: the gRPC stubs are generated by `make proto`, and a missing stub must fail this check
    # only, with its reason, not the whole command.
    from edgecore.edged.cri.client import CriRuntime  # noqa: PLC0415
    from edgecore.edged.runtime import ContainerRuntimeError  # noqa: PLC0415

    endpoint = config.modules.edged.remote_runtime_endpoint
    socket_path = (
        Path(endpoint.removeprefix("unix://")) if "://" not in endpoint or endpoint.startswith("unix://") else None
    )
    if socket_path is not None and not await asyncio.to_thread(socket_path.exists):
        # gRPC would say the same in three nested lines; the usual cause is a runtime that is not running.
        raise CheckFailed(f"{endpoint}: {socket_path} does not exist (is containerd running?)")
    runtime = CriRuntime(endpoint, timeout=limit)
    try:
        version = await runtime.version()
    except ContainerRuntimeError as exc:
        raise CheckFailed(_first_line(str(exc))) from None  # names the RPC, the endpoint and the gRPC status
    finally:
        await runtime.close()
    return f"{version} at {endpoint}"


# --- mqtt ------------------------------------------------------------------------------------------------------


async def check_mqtt(config: EdgeCoreConfig, limit: float) -> str:
    url = config.modules.event_bus.mqtt_server_external
    try:
        host, port = parse_server(url)
    except ValueError as exc:
        raise CheckFailed(str(exc)) from None
    # Refused or unreachable is told apart from "something answered but is not an MQTT broker that lets us in".
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), limit)
    except TimeoutError:
        raise CheckFailed(f"{url}: no TCP answer within {limit:g} s") from None
    except OSError as exc:
        raise CheckFailed(f"{url}: {_reason(exc)}") from None
    writer.close()
    try:
        async with aiomqtt.Client(host, port, timeout=limit, identifier=f"keadm-diagnose-{time.time_ns()}"):
            pass
    except aiomqtt.MqttError as exc:
        raise CheckFailed(f"{url}: MQTT connect failed: {exc}") from None
    return f"MQTT broker at {url} accepts a connection"


# --- cloud -----------------------------------------------------------------------------------------------------


def _split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.strip().rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise CheckFailed(f"websocket.server {address!r} is not host:port")
    return host.strip("[]"), int(port)


async def check_cloud(config: EdgeCoreConfig, limit: float) -> str:
    hub = config.modules.edge_hub
    addresses = [a.strip() for a in hub.websocket.server.split(",") if a.strip()]
    if not addresses:
        raise CheckFailed("modules.edgeHub.websocket.server is empty")
    problems = []
    for address in addresses:
        host, port = _split_host_port(address)
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), limit)
        except TimeoutError:
            problems.append(f"CloudHub {address}: no TCP answer within {limit:g} s")
            continue
        except OSError as exc:
            problems.append(f"CloudHub {address}: {_reason(exc)}")
            continue
        writer.close()
    ca_problem = await _check_ca_download(hub.https_server, Path(hub.tls_ca_file), limit)
    if ca_problem:
        problems.append(ca_problem)
    if problems:
        raise CheckFailed("; ".join(problems))
    return f"CloudHub {', '.join(addresses)} reachable; {hub.https_server}/ca.crt matches tlsCaFile"


async def _check_ca_download(server: str, ca_file: Path, limit: float) -> str | None:
    """``GET <server>/ca.crt`` over TLS verified by our CA; the answer must be that same CA. Returns the problem."""
    url = server.rstrip("/") + "/ca.crt"
    try:
        local, context = await asyncio.to_thread(_trust, ca_file)
    except (OSError, ValueError, ssl.SSLError) as exc:
        return f"tlsCaFile {ca_file}: {_reason(exc)}"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=limit)) as session,
            session.get(url, ssl=context) as response,
        ):
            status = response.status
            body = await response.content.read(MAX_CA_BYTES)
    except TimeoutError:
        return f"{url}: no answer within {limit:g} s"
    except aiohttp.ClientError as exc:
        return f"{url}: {_client_error(exc)}"
    if status != 200:
        return f"{url}: HTTP {status}"
    served = _certificate_in(body)
    return None if served == local else f"{url}: serves a CA other than tlsCaFile {ca_file} (replaced? re-join)"


def _client_error(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"its certificate does not verify against tlsCaFile ({exc.certificate_error})"
    if isinstance(exc, aiohttp.ClientConnectorError):  # its own text repeats the SSL context's repr
        return _reason(exc.os_error)
    return _first_line(str(exc)) or type(exc).__name__


def _trust(ca_file: Path) -> tuple[x509.Certificate, ssl.SSLContext]:
    """The CA certificate in ``ca_file`` and a TLS client context that trusts only it."""
    return x509.load_pem_x509_certificate(ca_file.read_bytes()), ssl.create_default_context(cafile=str(ca_file))


def _certificate_in(body: bytes) -> x509.Certificate | None:
    """The certificate a ``/ca.crt`` answer holds (PEM or DER), or None if it holds none."""
    try:
        if b"-----BEGIN CERTIFICATE-----" in body:
            return x509.load_pem_x509_certificate(body)
        return x509.load_der_x509_certificate(body)
    except ValueError:
        return None


# --- certificate -----------------------------------------------------------------------------------------------


async def check_certificate(config: EdgeCoreConfig) -> str:
    return await asyncio.to_thread(_certificate, config)


def _certificate(config: EdgeCoreConfig) -> str:
    hub = config.modules.edge_hub
    cert_file, key_file, ca_file = Path(hub.tls_cert_file), Path(hub.tls_private_key_file), Path(hub.tls_ca_file)
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise CheckFailed(f"tlsCertFile {cert_file}: {_reason(exc)}") from None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(names[0].value) if names else "(no CN)"
    now = dt.datetime.now(dt.UTC)
    days = (cert.not_valid_after_utc - now).total_seconds() / 86400
    what = f"CN={cn}"
    if cert.not_valid_before_utc > now:
        raise CheckFailed(f"{what} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (clock?)")
    if days < 0:
        raise CheckFailed(f"{what} expired {-days:.0f} days ago ({cert.not_valid_after_utc:%Y-%m-%d} UTC)")
    if days < MIN_CERT_DAYS:
        raise CheckFailed(f"{what} expires in {days:.1f} days (under {MIN_CERT_DAYS}); renew it")
    try:
        ca = x509.load_pem_x509_certificate(ca_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise CheckFailed(f"{what}: tlsCaFile {ca_file}: {_reason(exc)}") from None
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError) as exc:  # another issuer name, or a key type that cannot sign
        raise CheckFailed(f"{what} is not issued by tlsCaFile {ca_file}: {exc}") from None
    except InvalidSignature:  # same issuer name, another key: a CA re-created since the node joined
        raise CheckFailed(f"{what} is not signed by tlsCaFile {ca_file}'s key (the CA was replaced?)") from None
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CheckFailed(f"{what}: tlsPrivateKeyFile {key_file}: {_reason(exc)}") from None
    if key.public_key() != cert.public_key():
        raise CheckFailed(f"{what}: tlsPrivateKeyFile {key_file} is not this certificate's key")
    return f"{what}, issued by tlsCaFile, {days:.0f} days left"


# --- disk ------------------------------------------------------------------------------------------------------


async def check_disk(config: EdgeCoreConfig) -> str:
    return await asyncio.to_thread(_disk, Path(config.database.data_source))


def _disk(database: Path) -> str:
    # Before the first start the database does not exist yet: measure the filesystem it will be created on.
    where = database
    while not where.exists() and where != where.parent:
        where = where.parent
    usage = shutil.disk_usage(where)
    free, fraction = usage.free, usage.free / usage.total if usage.total else 0.0
    text = f"{_mib(free)} free ({fraction:.0%}) on the filesystem of {database}"
    if free < MIN_FREE_BYTES:
        raise CheckFailed(f"only {text}; EdgeCore needs at least {_mib(MIN_FREE_BYTES)}")
    if fraction < MIN_FREE_FRACTION:
        raise CheckFailed(f"only {text}; EdgeCore needs at least {MIN_FREE_FRACTION:.0%}")
    return text


# --- helpers ---------------------------------------------------------------------------------------------------


def _mib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)  # asyncio's "Connect call failed (...)" says less than "Connection refused"
    return _first_line(str(exc)) or type(exc).__name__
