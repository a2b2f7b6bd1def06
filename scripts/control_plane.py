"""A real Kubernetes control plane on loopback for tests and the demo: etcd, kube-apiserver, kube-scheduler and
kube-controller-manager, each built from the Go module proxy (scripts/build-kube).

As in a real cluster, the ServiceAccount admission plugin is on (every pod gets its ``kube-api-access-*``
volume), the controller-manager runs every default controller (service accounts and their tokens, the root-CA
publisher, node lifecycle, node IPAM with ``--allocate-node-cidrs``, garbage collection, the workload
controllers) and the scheduler places pods. The node lifecycle is faster than a production default (see
NODE_MONITOR_GRACE_S and DEFAULT_TOLERATION_S) so that disconnect tests finish in a minute. Everything ``up``
creates lives in one state directory; ``down`` stops exactly the processes whose pids ``up`` recorded there,
and removes the directory.

    scripts/control-plane up [--dir DIR]      prints: export KUBECONFIG=DIR/kubeconfig
    scripts/control-plane status [--dir DIR]
    scripts/control-plane down [--dir DIR]
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from scripts.harness.procs import free_port, is_ours, stop_pid

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = Path(os.environ.get("KUBAGE_CONTROL_PLANE_DIR", "/tmp/kubage-control-plane"))
READY_TIMEOUT_S = 90.0
# Addresses the tests give edge nodes, so that the API server's request to a node's kubelet names the node; the
# kubelet serving certificate covers each. Not loopback: the API server's node proxy refuses loopback addresses
# (they are not global unicast). A "local" route on lo makes the whole range this machine's own, so nothing
# sent to it leaves the machine; ``up`` adds the route when it is missing and leaves it (another control plane
# may be using it).
EDGE_NODE_NETWORK = "10.250.3.0/24"
EDGE_NODE_ADDRESSES = [f"10.250.3.{i}" for i in range(1, 255)]
STOP_TIMEOUT_S = 10.0
# Processes in start order; `down` stops them in reverse.
PROCESSES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
SERVICE_CIDR = "10.0.0.0/24"
CLUSTER_CIDR = "10.244.0.0/16"  # node IPAM hands each node a /24 of it as spec.podCIDR
# A node whose lease and status are this old is NotReady (Kubernetes' default is 50 s); pods without a
# toleration of their own are evicted from it this long after (default 300 s). Short, for tests of a disconnect.
NODE_MONITOR_GRACE_S = 30
DEFAULT_TOLERATION_S = 10


class ControlPlaneError(Exception):
    pass


@dataclass(frozen=True)
class Endpoints:
    etcd_client: int
    etcd_peer: int
    apiserver: int


# --- binaries ---------------------------------------------------------------------------------------------


def kube_binary(component: str) -> Path:
    """Build (first run only) or find a cached Kubernetes binary; see scripts/build-kube."""
    out = subprocess.run([str(ROOT / "scripts" / "build-kube"), component], check=False, capture_output=True, text=True)
    if out.returncode != 0:
        raise ControlPlaneError(f"building {component} failed:\n{out.stderr[-4000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def etcd_binary() -> Path:
    found = os.environ.get("KUBAGE_ETCD") or shutil.which("etcd")
    if not found:
        raise ControlPlaneError("etcd not found: install Debian's etcd-server (make deps does) or set KUBAGE_ETCD")
    return Path(found)


# --- certificates -----------------------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _cert(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server_sans: list[x509.GeneralName] | None = None,
    client: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        usages = []
        if server_sans is not None:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
            builder = builder.add_extension(x509.SubjectAlternativeName(server_sans), critical=False)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_certificates(pki: Path) -> None:
    pki.mkdir(parents=True)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubage-control-plane-ca")])
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
    (pki / "ca.crt").write_bytes(_pem(ca))
    _write_key(pki / "ca.key", ca_key)

    server_key = _key()
    sans: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("10.0.0.1")),  # first address of --service-cluster-ip-range
        *(x509.DNSName(n) for n in ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc")),
    ]
    server = _cert(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
        server_key,
        ca_name,
        ca_key,
        server_sans=sans,
    )
    (pki / "apiserver.crt").write_bytes(_pem(server))
    _write_key(pki / "apiserver.key", server_key)

    admin_key = _key()
    admin_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
            x509.NameAttribute(NameOID.COMMON_NAME, "kubage-admin"),
        ]
    )
    admin = _cert(admin_name, admin_key, ca_name, ca_key, client=True)
    (pki / "admin.crt").write_bytes(_pem(admin))
    _write_key(pki / "admin.key", admin_key)

    # The scheduler's and controller-manager's identities: the API server's bootstrap RBAC has their roles.
    for name in ("kube-scheduler", "kube-controller-manager"):
        key = _key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"system:{name}")])
        (pki / f"{name}.crt").write_bytes(_pem(_cert(subject, key, ca_name, ca_key, client=True)))
        _write_key(pki / f"{name}.key", key)

    # The API server's client certificate towards kubelets, and the serving certificate of a kubelet it verifies
    # (--kubelet-certificate-authority): CloudCore's stream server answers for every edge node, whose addresses
    # in tests come from EDGE_NODE_ADDRESSES.
    kubelet_client_key = _key()
    kubelet_client_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
            x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver-kubelet-client"),
        ]
    )
    kubelet_client = _cert(kubelet_client_name, kubelet_client_key, ca_name, ca_key, client=True)
    (pki / "apiserver-kubelet-client.crt").write_bytes(_pem(kubelet_client))
    _write_key(pki / "apiserver-kubelet-client.key", kubelet_client_key)
    stream_key = _key()
    stream_sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        *(x509.IPAddress(ipaddress.ip_address(a)) for a in ["127.0.0.1", *EDGE_NODE_ADDRESSES]),
    ]
    stream = _cert(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubage-stream-server")]),
        stream_key,
        ca_name,
        ca_key,
        server_sans=stream_sans,
    )
    (pki / "kubelet-serving.crt").write_bytes(_pem(stream))
    _write_key(pki / "kubelet-serving.key", stream_key)

    _write_key(pki / "sa.key", _key())  # signs service-account tokens
    sa_pub = serialization.load_pem_private_key((pki / "sa.key").read_bytes(), None).public_key()
    (pki / "sa.pub").write_bytes(
        sa_pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def write_kubeconfig(state: Path, port: int, user: str = "admin") -> Path:
    """A kubeconfig for ``user`` (the certificate pki/<user>.crt); the admin's is ``state/kubeconfig``."""
    pki = state / "pki"

    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kubage",
                "cluster": {
                    "server": f"https://127.0.0.1:{port}",
                    "certificate-authority-data": b64("ca.crt"),
                },
            }
        ],
        "users": [
            {
                "name": f"kubage-{user}",
                "user": {"client-certificate-data": b64(f"{user}.crt"), "client-key-data": b64(f"{user}.key")},
            }
        ],
        "contexts": [{"name": "kubage", "context": {"cluster": "kubage", "user": f"kubage-{user}"}}],
        "current-context": "kubage",
    }
    path = state / ("kubeconfig" if user == "admin" else f"{user}.kubeconfig")
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


# --- processes --------------------------------------------------------------------------------------------


def _start(state: Path, name: str, argv: list[str]) -> int:
    log = (state / f"{name}.log").open("ab")
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        cwd=state,
    )
    (state / f"{name}.pid").write_text(f"{proc.pid}\n")
    (state / f"{name}.exe").write_text(os.path.realpath(argv[0]))
    return proc.pid


def _recorded_pid(state: Path, name: str) -> int | None:
    """The pid ``up`` recorded for ``name``, if that process still runs the binary it started.

    Compared through /proc/PID/exe, not cmdline: a starting Go program can briefly show an empty cmdline.
    """
    try:
        pid = int((state / f"{name}.pid").read_text())
        binary = (state / f"{name}.exe").read_text()
    except (OSError, ValueError):
        return None
    return pid if is_ours(pid, binary) else None  # a reused pid belongs to someone else: leave it alone


def _stop(state: Path, name: str) -> None:
    pid = _recorded_pid(state, name)
    if pid is not None:
        stop_pid(pid, (state / f"{name}.exe").read_text(), timeout=STOP_TIMEOUT_S)


def _ssl_context(state: Path) -> ssl.SSLContext:
    pki = state / "pki"
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    return ctx


def _request(
    state: Path,
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    content_type: str = "application/json",
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    req = urllib.request.Request(f"https://127.0.0.1:{port}{path}", data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, context=_ssl_context(state), timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(state: Path, port: int, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if _recorded_pid(state, "kube-apiserver") is None:
            raise ControlPlaneError(
                f"kube-apiserver exited; see {state / 'kube-apiserver.log'}:\n" + _tail(state, "kube-apiserver")
            )
        try:
            status, body = _request(state, port, "GET", "/readyz", timeout=2.0)
            if status == 200 and body.strip() == b"ok":
                return
            last = f"HTTP {status}"
        except (OSError, ssl.SSLError) as exc:
            last = str(exc)
        time.sleep(0.25)
    raise ControlPlaneError(
        f"kube-apiserver not ready after {timeout:.0f}s ({last}); see {state / 'kube-apiserver.log'}"
    )


def _tail(state: Path, name: str, lines: int = 20) -> str:
    try:
        return "\n".join((state / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def apply_crds(state: Path, port: int, crd_dir: Path) -> list[str]:
    """Server-side apply every CRD in ``crd_dir`` and wait until each is Established."""
    names = []
    for path in sorted(crd_dir.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            name = doc["metadata"]["name"]
            status, body = _request(
                state,
                port,
                "PATCH",
                f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}?fieldManager=kubage&force=true",
                json.dumps(doc).encode(),
                content_type="application/apply-patch+yaml",
            )
            if status not in (200, 201):
                raise ControlPlaneError(f"applying CRD {name} from {path.name} failed: HTTP {status} {body[:500]!r}")
            names.append(name)
    deadline = time.monotonic() + 30
    pending = set(names)
    while pending and time.monotonic() < deadline:
        for name in list(pending):
            _, body = _request(state, port, "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            # A CRD just created may show "conditions": null until the API server has looked at it.
            conditions = (json.loads(body).get("status") or {}).get("conditions") or []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                pending.discard(name)
        time.sleep(0.1)
    if pending:
        raise ControlPlaneError(f"CRDs not established after 30s: {sorted(pending)}")
    return names


def start_etcd(state: Path, ports: Endpoints) -> None:
    _start(
        state,
        "etcd",
        [
            str(etcd_binary()),
            "--name",
            "kubage",
            "--data-dir",
            str(state / "etcd"),
            "--listen-client-urls",
            f"http://127.0.0.1:{ports.etcd_client}",
            "--advertise-client-urls",
            f"http://127.0.0.1:{ports.etcd_client}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{ports.etcd_peer}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{ports.etcd_peer}",
            "--initial-cluster",
            f"kubage=http://127.0.0.1:{ports.etcd_peer}",
            "--logger",
            "zap",
            "--log-level",
            "warn",
            "--unsafe-no-fsync",  # throwaway test data: durability across power loss does not matter here
        ],
    )


def start_apiserver(state: Path, ports: Endpoints) -> None:
    pki = state / "pki"
    _start(
        state,
        "kube-apiserver",
        [
            str(kube_binary("kube-apiserver")),
            f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={ports.apiserver}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            # Edge nodes' kubelet endpoint is CloudCore's stream server: reached at the node's InternalIP (no name
            # lookup leaves the machine), verified against this CA, and shown the API server's client certificate.
            "--kubelet-preferred-address-types=InternalIP,Hostname,InternalDNS,ExternalDNS,ExternalIP",
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=RBAC",
            "--allow-privileged=true",
            f"--default-not-ready-toleration-seconds={DEFAULT_TOLERATION_S}",
            f"--default-unreachable-toleration-seconds={DEFAULT_TOLERATION_S}",
            "--enable-priority-and-fairness=false",
            "--endpoint-reconciler-type=none",  # the loopback address may not back the kubernetes Service
            "--profiling=false",
            "--v=1",
        ],
    )


def start_controller_manager(state: Path) -> None:
    pki = state / "pki"
    kubeconfig = state / "kube-controller-manager.kubeconfig"
    _start(
        state,
        "kube-controller-manager",
        [
            str(kube_binary("kube-controller-manager")),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--secure-port=0",
            "--leader-elect=false",
            "--controllers=*",  # every default controller
            "--use-service-account-credentials=true",  # each controller as its own service account
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allocate-node-cidrs=true",
            f"--cluster-cidr={CLUSTER_CIDR}",
            "--node-cidr-mask-size=24",
            "--node-monitor-period=2s",
            f"--node-monitor-grace-period={NODE_MONITOR_GRACE_S}s",
            "--concurrent-deployment-syncs=5",
            "--profiling=false",
            "--v=1",
        ],
    )


def start_scheduler(state: Path) -> None:
    kubeconfig = state / "kube-scheduler.kubeconfig"
    _start(
        state,
        "kube-scheduler",
        [
            str(kube_binary("kube-scheduler")),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--secure-port=0",
            "--leader-elect=false",
            "--profiling=false",
            "--v=1",
        ],
    )


def wait_controllers(state: Path, port: int, timeout: float = READY_TIMEOUT_S) -> None:
    """Until the controller-manager works: the ``default`` ServiceAccount of ``default`` exists (without
    it the ServiceAccount admission refuses every pod there), and so does the root CA's ConfigMap."""
    deadline = time.monotonic() + timeout
    wanted = (
        "/api/v1/namespaces/default/serviceaccounts/default",
        "/api/v1/namespaces/default/configmaps/kube-root-ca.crt",
    )
    while time.monotonic() < deadline:
        for name in ("kube-controller-manager", "kube-scheduler"):
            if _recorded_pid(state, name) is None:
                raise ControlPlaneError(f"{name} exited; see {state / (name + '.log')}:\n" + _tail(state, name))
        if all(_request(state, port, "GET", path)[0] == 200 for path in wanted):
            return
        time.sleep(0.25)
    raise ControlPlaneError(
        f"kube-controller-manager made no default ServiceAccount within {timeout:.0f}s; "
        f"see {state / 'kube-controller-manager.log'}"
    )


def up(state: Path) -> Path:
    if state.exists():
        if all(_recorded_pid(state, n) is not None for n in PROCESSES):
            return state / "kubeconfig"
        raise ControlPlaneError(f"{state} exists but its processes are not running: run 'down' first")
    ports = Endpoints(free_port(), free_port(), free_port())
    ensure_edge_node_route()
    state.mkdir(parents=True)
    try:
        write_certificates(state / "pki")
        (state / "ports.json").write_text(json.dumps(ports.__dict__))
        start_etcd(state, ports)
        start_apiserver(state, ports)
        wait_ready(state, ports.apiserver)
        for user in ("kube-controller-manager", "kube-scheduler"):
            write_kubeconfig(state, ports.apiserver, user)
        start_controller_manager(state)
        start_scheduler(state)
        apply_crds(state, ports.apiserver, ROOT / "deploy" / "crds")
        wait_controllers(state, ports.apiserver)
        return write_kubeconfig(state, ports.apiserver)
    except BaseException:
        down(state)
        raise


def ensure_edge_node_route() -> None:
    """Make EDGE_NODE_NETWORK local to this machine (``ip route add local … dev lo``), unless it is already."""
    shown = subprocess.run(
        ["ip", "route", "show", "table", "local", EDGE_NODE_NETWORK], capture_output=True, text=True, check=False
    )
    if EDGE_NODE_NETWORK.split("/", maxsplit=1)[0] in shown.stdout:
        return
    added = subprocess.run(
        ["ip", "route", "add", "local", EDGE_NODE_NETWORK, "dev", "lo"], capture_output=True, text=True, check=False
    )
    if added.returncode != 0 and "File exists" not in added.stderr:
        raise ControlPlaneError(f"cannot make {EDGE_NODE_NETWORK} local (ip route add local): {added.stderr.strip()}")


def restart_apiserver(state: Path) -> None:
    """Stop kube-apiserver and start it again on the same port and etcd (for failure tests)."""
    ports = Endpoints(**json.loads((state / "ports.json").read_text()))
    _stop(state, "kube-apiserver")
    start_apiserver(state, ports)
    wait_ready(state, ports.apiserver)


def down(state: Path) -> None:
    if not state.exists():
        return
    for name in reversed(PROCESSES):
        _stop(state, name)
    shutil.rmtree(state, ignore_errors=True)


def status(state: Path) -> bool:
    ok = True
    for name in PROCESSES:
        pid = _recorded_pid(state, name)
        print(f"{name}: {'running, pid ' + str(pid) if pid else 'not running'}")
        ok = ok and pid is not None
    if ok:
        port = json.loads((state / "ports.json").read_text())["apiserver"]
        code, body = _request(state, port, "GET", "/readyz")
        print(f"readyz: {body.decode().strip() if code == 200 else f'HTTP {code}'}")
        print(f"export KUBECONFIG={state / 'kubeconfig'}")
        ok = code == 200
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="control-plane", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "restart-apiserver"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"state directory (default {DEFAULT_DIR})")
    args = parser.parse_args(argv)
    state: Path = args.dir.absolute()
    try:
        if args.command == "up":
            started = time.monotonic()
            kubeconfig = up(state)
            print(f"# control plane ready in {time.monotonic() - started:.1f}s", file=sys.stderr)
            print(f"export KUBECONFIG={kubeconfig}")
        elif args.command == "down":
            down(state)
        elif args.command == "restart-apiserver":
            restart_apiserver(state)
        else:
            return 0 if status(state) else 1
    except ControlPlaneError as exc:
        print(f"control-plane: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
