"""A private containerd (CRI enabled) for integration tests: everything it owns lives in one temp dir.

``start()`` writes a config into a fresh temp dir (root, state, gRPC socket, CNI conf dir all inside it;
``restrict_oom_score_adj = true``, which this kind of machine needs since root lacks CAP_SYS_RESOURCE;
cgroupfs; ``sandbox_image = localhost/pause:3.6``), starts containerd, waits for its socket, builds the two
images with scripts/mkimage.py (cached under ~/.cache/kubage/images/) and imports them with ``ctr``.
``Containerd.stop()`` removes every sandbox and container it finds over CRI, stops containerd by pid
(SIGTERM, then SIGKILL), kills any shim or container process left from its own state dir, unmounts what is
still mounted under the temp dir, removes the empty ``k8s.io``/``kubepods`` cgroups and the temp dir.

No registry is reachable on the test machines, so images are only ever imported, never pulled.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from edgecore.edged.cri import api_pb2 as pb
from edgecore.edged.cri import api_pb2_grpc as pb_grpc
from scripts.harness.procs import stop, tail

MKIMAGE = Path(__file__).resolve().parent.parent / "mkimage.py"
BUSYBOX = Path("/bin/busybox")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kubage" / "images"
CGROUP_ROOT = Path("/sys/fs/cgroup")
CNI_BIN_DIR = Path("/usr/lib/cni")

BUSYBOX_IMAGE = "localhost/busybox:1.35"
PAUSE_IMAGE = "localhost/pause:3.6"
# What the pause binary does: sleep until SIGTERM or SIGINT, then exit 0 (a bare sleep as PID 1 ignores them,
# so every stop of a pause container would wait out its whole grace period).
PAUSE_CMD = ["/bin/sh", "-c", "trap 'exit 0' TERM INT; sleep 2147483647 & wait"]
IMAGES: dict[str, list[str]] = {
    BUSYBOX_IMAGE: ["/bin/sh"],
    PAUSE_IMAGE: PAUSE_CMD,
}
NAMESPACE = "k8s.io"  # the containerd namespace the CRI plugin uses
# cgroup parents the CRI plugin (k8s.io) and Edged (kubepods) create and leave behind.
CGROUP_PARENTS = ("k8s.io", "kubepods")

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0

CONFIG = """\
version = 2
root = "{root}/root"
state = "{root}/state"

[grpc]
  address = "{socket}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # Root lacks CAP_SYS_RESOURCE here: without this the pause container (oom_score_adj -998) cannot start.
  restrict_oom_score_adj = true
  systemd_cgroup = false
  disable_cgroup = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{root}/runc"  # runc's state, by default under /run/containerd/runc
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{root}/cni"
"""


class ContainerdError(Exception):
    """containerd could not be started or prepared on this machine; the message says why."""


@dataclass
class Containerd:
    root: Path  # the temp dir holding everything
    process: subprocess.Popen[bytes]
    images: dict[str, Path] = field(default_factory=dict)

    @property
    def socket(self) -> Path:
        return self.root / "containerd.sock"

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    @property
    def log(self) -> Path:
        return self.root / "containerd.log"

    @property
    def state(self) -> Path:
        return self.root / "state"

    def log_tail(self, lines: int = 30) -> str:
        return tail(self.log, lines)

    def ctr(self, *args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            ["ctr", "-a", str(self.socket), "-n", NAMESPACE, *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        if check and out.returncode != 0:
            raise ContainerdError(f"ctr {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
        return out

    @contextlib.contextmanager
    def cri(self) -> Iterator[tuple[Any, Any]]:
        """Synchronous CRI stubs (RuntimeService, ImageService), for setup and teardown outside any loop."""
        channel = grpc.insecure_channel(self.endpoint)
        try:
            yield pb_grpc.RuntimeServiceStub(channel), pb_grpc.ImageServiceStub(channel)  # type: ignore[no-untyped-call]
        finally:
            channel.close()

    # --- setup -------------------------------------------------------------------------------------------

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if self.process.poll() is not None:
                raise ContainerdError(
                    f"containerd exited with {self.process.returncode} before serving:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise ContainerdError(
                    f"containerd did not create {self.socket} within {timeout:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(0.05)
        with self.cri() as (runtime, _):
            while True:
                try:
                    runtime.Version(pb.VersionRequest(version="v1"), timeout=5)
                except grpc.RpcError as exc:
                    if time.monotonic() > deadline:
                        raise ContainerdError(
                            f"containerd's CRI plugin does not answer: {exc}\n{self.log_tail()}"
                        ) from None
                    time.sleep(0.1)
                else:
                    return

    def import_images(self, timeout: float = 10.0) -> None:
        for ref, cmd in IMAGES.items():
            self.import_image(ref, cmd, timeout=timeout)

    def import_image(
        self,
        ref: str,
        cmd: list[str],
        add: dict[str, Path] | None = None,
        timeout: float = 30.0,
        *,
        entrypoint: tuple[str, ...] = (),
        all_applets: bool = False,
        links: dict[str, str] | None = None,
        modes: dict[str, int] | None = None,
        user: str = "",
    ) -> None:
        """Build (once, cached) and import an image, then wait until the CRI plugin sees it."""
        tar = cached_image(
            ref, cmd, add, entrypoint=entrypoint, all_applets=all_applets, links=links, modes=modes, user=user
        )
        self.import_tar(ref, tar, timeout=timeout)

    def import_tar(self, ref: str, tar: Path, timeout: float = 30.0) -> None:
        """Import an image tar built elsewhere (scripts/mkimage.py's layout), then wait until CRI sees it."""
        self.images[ref] = tar
        self.ctr("images", "import", str(tar), timeout=120)
        # The CRI plugin learns about imported images from containerd events: wait until it sees them.
        deadline = time.monotonic() + timeout
        with self.cri() as (_, images):
            while not images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=ref)), timeout=5).image.id:
                if time.monotonic() > deadline:
                    raise ContainerdError(f"imported image {ref} does not show in CRI ImageStatus")
                time.sleep(0.05)

    def smoke_test(self) -> None:
        """One host-network sandbox (the pause image) up and down: proves runc can run containers here."""
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name="smoke", namespace="kubage-test", uid=uuid.uuid4().hex),
            linux=pb.LinuxPodSandboxConfig(
                security_context=pb.LinuxSandboxSecurityContext(namespace_options=pb.NamespaceOption(network=pb.NODE))
            ),
        )
        with self.cri() as (runtime, _):
            try:
                sandbox_id = runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=30).pod_sandbox_id
            except grpc.RpcError as exc:
                raise ContainerdError(f"a host-network pod sandbox does not start: {_rpc_error(exc)}") from None
            runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)
            runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)

    # --- teardown ----------------------------------------------------------------------------------------

    def remove_all(self) -> list[str]:
        """Stop and remove every sandbox and container, over CRI; returns what failed."""
        problems: list[str] = []
        if self.process.poll() is not None or not self.socket.exists():
            return problems
        with self.cri() as (runtime, _):
            try:
                for container in runtime.ListContainers(pb.ListContainersRequest(), timeout=10).containers:
                    with _collect(problems, f"container {container.id}"):
                        runtime.StopContainer(pb.StopContainerRequest(container_id=container.id, timeout=0), timeout=20)
                        runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=container.id), timeout=20)
                for sandbox in runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items:
                    with _collect(problems, f"sandbox {sandbox.id}"):
                        runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox.id), timeout=20)
                        runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox.id), timeout=20)
            except grpc.RpcError as exc:
                problems.append(f"CRI list: {_rpc_error(exc)}")
        return problems

    def stop(self) -> list[str]:
        """Tear everything down; returns the problems met (teardown never raises)."""
        problems = self.remove_all()
        problems += remove_bridges(bridge_prefix(self.root))
        stop(self.process, STOP_TIMEOUT_S)
        problems += self._kill_leftover_tasks()
        problems += unmount_under(self.root)
        remove_cgroups()
        _remove_run_dirs()
        try:
            shutil.rmtree(self.root)
        except OSError as exc:
            problems.append(f"rmtree {self.root}: {exc}")
        return problems

    def _kill_leftover_tasks(self) -> list[str]:
        """Container processes and shims that outlived containerd: SIGKILL them by pid.

        Only processes this containerd started: the pids recorded in its own state dir, and the shims whose
        command line names its socket. The shims' sockets (/run/containerd/s/...) are removed too.
        """
        problems = []
        shim_sockets = []
        for bundle in sorted(self.state.glob("io.containerd.runtime.v2.task/*/*")):
            with contextlib.suppress(OSError, ValueError):
                pid = int((bundle / "init.pid").read_text().strip())
                if bundle.name in Path(f"/proc/{pid}/cgroup").read_text():  # still that task's process
                    os.kill(pid, signal.SIGKILL)
                    problems.append(f"killed leftover process {pid} of task {bundle.name}")
            with contextlib.suppress(OSError):
                shim_sockets.append((bundle / "address").read_text().strip().removeprefix("unix://"))
        for pid in _shims_of(self.socket):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                problems.append(f"killed leftover shim {pid}")
        for socket in shim_sockets:
            if socket.startswith("/run/containerd/s/"):
                with contextlib.suppress(OSError):
                    os.unlink(socket)
        return problems


def bridge_prefix(root: Path) -> str:
    """The start of the names of the pod bridges made for the nodes of the containerd in ``root``."""
    return "kb" + hashlib.sha256(str(root).encode()).hexdigest()[:5]


def cni_settings(endpoint: str, node: str) -> dict[str, Any]:
    """modules.edged keys for a node on the harness containerd at ``endpoint``: its CNI configuration
    directory, and a bridge of the node's own (each node's pod CIDR differs, and a bridge holds one), named so
    that ``stop`` removes it. Pod traffic stays on the machine: no masquerade."""
    root = Path(endpoint.removeprefix("unix://")).parent
    bridge = bridge_prefix(root) + hashlib.sha256(node.encode()).hexdigest()[:6]
    return {"cniConfDir": str(root / "cni"), "bridgeName": bridge, "masquerade": False}


def remove_bridges(prefix: str) -> list[str]:
    """``ip link del`` every bridge whose name starts with ``prefix``."""
    shown = subprocess.run(["ip", "-o", "link", "show", "type", "bridge"], capture_output=True, text=True, check=False)
    problems = []
    for line in shown.stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith(prefix):
            out = subprocess.run(["ip", "link", "del", name], capture_output=True, text=True, check=False)
            if out.returncode != 0:
                problems.append(f"ip link del {name}: {out.stderr.strip()}")
    return problems


def _shims_of(socket: Path) -> list[int]:
    """Pids of the containerd-shim processes serving the containerd at ``socket`` (their ``-address``)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and b"-address" in argv:
            i = argv.index(b"-address")
            if i + 1 < len(argv) and argv[i + 1] == str(socket).encode():
                pids.append(int(proc.name))
    return pids


@contextlib.contextmanager
def _collect(problems: list[str], what: str) -> Iterator[None]:
    try:
        yield
    except grpc.RpcError as exc:
        problems.append(f"{what}: {_rpc_error(exc)}")


def _rpc_error(exc: Any) -> str:
    """``CODE: details`` of a synchronous gRPC error."""
    try:
        return f"{exc.code().name}: {exc.details()}"
    except AttributeError:
        return str(exc)


def unmount_under(root: Path) -> list[str]:
    """Lazily unmount every mount point under ``root``, deepest first."""
    problems = []
    prefix = str(root.resolve()) + "/"
    points = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                points.append(point)
    for point in sorted(set(points), key=len, reverse=True):
        out = subprocess.run(["umount", "-R", "-l", point], capture_output=True, text=True, check=False)
        if out.returncode != 0 and "not mounted" not in out.stderr:
            problems.append(f"umount {point}: {out.stderr.strip()}")
    return problems


def remove_cgroups(parents: tuple[str, ...] = CGROUP_PARENTS) -> None:
    """rmdir the empty cgroup trees containerd and Edged leave behind (non-empty ones stay)."""
    for controller in sorted(CGROUP_ROOT.iterdir()):
        for parent in parents:
            top = controller / parent
            if not top.is_dir() or top.is_symlink():
                continue
            for dirpath, _, _ in sorted(os.walk(top), key=lambda entry: len(entry[0]), reverse=True):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)


def _remove_run_dirs() -> None:
    """The shims' /run/containerd dirs (no config key moves them): removed only when empty."""
    run = Path("/run/containerd")
    for d in (run / "fifo", run / "s", run):
        with contextlib.suppress(OSError):
            d.rmdir()


# --- images ------------------------------------------------------------------------------------------------


def cached_image(
    ref: str,
    cmd: list[str],
    add: dict[str, Path] | None = None,
    *,
    entrypoint: tuple[str, ...] = (),
    all_applets: bool = False,
    links: dict[str, str] | None = None,
    modes: dict[str, int] | None = None,
    user: str = "",
) -> Path:
    """The image tar for ``ref``, built by scripts/mkimage.py once per version of the script, busybox, the
    options and the files ``add``ed (path in the image → host file)."""
    if not BUSYBOX.exists():
        raise ContainerdError(f"{BUSYBOX} is missing: install the Debian package busybox-static")
    options: list[str] = ["--all-applets"] if all_applets else []
    for part in entrypoint:
        options += ["--entrypoint", part]
    for path, target in sorted((links or {}).items()):
        options += ["--link", f"{path}:{target}"]
    if user:
        options += ["--user", user]
    key = hashlib.sha256()
    key.update(MKIMAGE.read_bytes())
    key.update(BUSYBOX.read_bytes())
    key.update("\0".join([ref, *options, "--", *cmd]).encode())
    for dest, source in sorted((add or {}).items()):
        mode = (modes or {}).get(dest)
        key.update(f"{dest}:{mode}".encode() + source.resolve().read_bytes())
        options += ["--add", f"{source}:{dest}" + (f":{mode:o}" if mode is not None else "")]
    name = ref.rsplit("/", 1)[-1].replace(":", "-")
    tar = CACHE / f"{name}-{key.hexdigest()[:16]}.tar"
    if not tar.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(
            [sys.executable, str(MKIMAGE), str(tar), ref, *options, *cmd], capture_output=True, text=True, check=False
        )
        if out.returncode != 0:
            raise ContainerdError(f"scripts/mkimage.py {ref} failed: {out.stderr.strip()}")
    return tar


# --- start -------------------------------------------------------------------------------------------------


def write_config(root: Path) -> Path:
    (root / "cni").mkdir(parents=True, exist_ok=True)
    config = root / "config.toml"
    config.write_text(CONFIG.format(root=root, socket=root / "containerd.sock", pause=PAUSE_IMAGE, cni_bin=CNI_BIN_DIR))
    return config


def start() -> Containerd:
    """A running containerd with both images imported; raises ContainerdError (after cleaning up) if not."""
    for binary in ("containerd", "ctr", "runc", "containerd-shim-runc-v2"):
        if shutil.which(binary) is None:
            raise ContainerdError(f"{binary} is not installed (Debian packages: containerd runc)")
    root = Path(tempfile.mkdtemp(prefix="kubage-containerd-"))
    config = write_config(root)
    with open(root / "containerd.log", "wb") as log:
        process = subprocess.Popen(
            ["containerd", "--config", str(config), "--log-level", "info"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    ctd = Containerd(root=root, process=process)
    try:
        ctd.wait_ready()
        ctd.import_images()
        ctd.smoke_test()
    except BaseException:
        ctd.stop()
        raise
    return ctd
