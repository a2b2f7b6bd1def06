"""Edged's decisions, with a real SQLite store and the hollow runtime (no processes: this is about logic;
tests/integration/test_edge_pods.py runs real containers through containerd)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from common.messages import Operation
from common.upstream import Upstream
from edgecore.edged.edged import Edged
from edgecore.edged.hollow import HollowRuntime
from edgecore.edged.network import DnsSettings
from edgecore.edged.runtime import ContainerConfig, ContainerState, DnsConfig, SandboxConfig
from edgecore.metamanager.store import MetaStore
from tests.store import put

NODE = "edge-1"


class Published:
    def __init__(self) -> None:
        self.items: list[tuple[str, str, Any]] = []

    async def __call__(self, *messages: Upstream) -> None:
        self.items.extend((m.key, m.operation, m.content) for m in messages)

    def statuses(self, name: str) -> list[dict[str, Any]]:
        return [c["status"] for k, _, c in self.items if k == f"podstatus/default/{name}"]


def pod(name: str, rv: int = 1, **spec: Any) -> dict[str, Any]:
    containers = spec.pop("containers", [{"name": "main", "image": "localhost/busybox:1.35"}])
    return {
        "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}", "resourceVersion": str(rv)},
        "spec": {"nodeName": NODE, "containers": containers, **spec},
    }


def edged(store: MetaStore, runtime: HollowRuntime, published: Published, tmp_path: Path, **options: Any) -> Edged:
    settings: dict[str, Any] = {"restart_backoff": 60.0, **options}
    return Edged(
        node_name=NODE,
        store=store,
        runtime=runtime,
        root=tmp_path / "edged",
        publish=published,
        host_ip="192.0.2.7",
        cgroup_root=tmp_path / "cgroup",
        **settings,
    )


async def test_a_pod_gets_a_sandbox_and_running_containers_and_reports_it(store: MetaStore, tmp_path: Path) -> None:
    runtime, published = HollowRuntime(), Published()
    await put(
        store,
        "pod",
        pod(
            "web",
            containers=[
                {"name": "a", "image": "localhost/busybox:1.35"},
                {"name": "b", "image": "localhost/busybox:1.35"},
            ],
        ),
    )
    e = edged(store, runtime, published, tmp_path)
    await e.sync_once()
    assert len(runtime.sandboxes) == 1
    assert sorted(c.name for c in runtime.containers.values()) == ["a", "b"]
    [status] = published.statuses("web")
    assert status["phase"] == "Running"
    assert [c["state"].keys() for c in status["containerStatuses"]] == [{"running"}, {"running"}]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
    assert status["hostIP"] == "192.0.2.7"
    await e.sync_once()
    assert len(published.items) == 1  # nothing changed: nothing published


async def test_restart_policy_decides_what_happens_after_an_exit(store: MetaStore, tmp_path: Path) -> None:
    runtime, published = HollowRuntime(), Published()
    await put(store, "pod", pod("always"))
    await put(store, "pod", pod("never", restartPolicy="Never"))
    await put(store, "pod", pod("onfailure", restartPolicy="OnFailure"))
    e = edged(store, runtime, published, tmp_path)
    await e.sync_once()
    for container in list(runtime.containers.values()):
        runtime.exit(container.id, 0 if "onfailure" in container.labels["io.kubernetes.pod.name"] else 3)
    await e.sync_once()
    restarted = {
        c.labels["io.kubernetes.pod.name"]: c.attempt
        for c in runtime.containers.values()
        if c.state is ContainerState.RUNNING
    }
    assert restarted == {"always": 1}
    assert published.statuses("never")[-1]["phase"] == "Failed"
    assert published.statuses("onfailure")[-1]["phase"] == "Succeeded"
    latest = published.statuses("always")[-1]["containerStatuses"][0]
    assert latest["restartCount"] == 1 and latest["lastState"]["terminated"]["exitCode"] == 3
    # the second crash waits out the back-off instead of restarting in a tight loop
    for container in list(runtime.containers.values()):
        if container.state is ContainerState.RUNNING:
            runtime.exit(container.id, 3)
    await e.sync_once()
    waiting = published.statuses("always")[-1]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "CrashLoopBackOff"


async def test_a_restarted_edged_adopts_instead_of_duplicating(store: MetaStore, tmp_path: Path) -> None:
    runtime, published = HollowRuntime(), Published()
    await put(store, "pod", pod("web"))
    await edged(store, runtime, published, tmp_path).sync_once()
    before = (dict(runtime.sandboxes), dict(runtime.containers))
    again = edged(store, runtime, Published(), tmp_path)  # a new process: nothing remembered but SQLite
    await again.sync_once()
    assert (runtime.sandboxes, runtime.containers) == before
    assert again.stats.adopted == 1 and again.stats.sandboxes_started == 0


async def test_env_and_volumes_come_from_the_store(store: MetaStore, tmp_path: Path) -> None:
    runtime, published = HollowRuntime(), Published()
    await put(
        store,
        "configmap",
        {
            "metadata": {"name": "cfg", "namespace": "default", "uid": "cm1", "resourceVersion": "1"},
            "data": {"mode": "fast", "level": "3"},
        },
    )
    await put(
        store,
        "secret",
        {
            "metadata": {"name": "creds", "namespace": "default", "uid": "s1", "resourceVersion": "1"},
            "data": {"token": base64.b64encode(b"s3cr3t").decode()},
        },
    )
    container = {
        "name": "main",
        "image": "localhost/busybox:1.35",
        "env": [
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
        "volumeMounts": [{"name": "cfg", "mountPath": "/etc/app", "readOnly": True}],
        "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}},
    }
    await put(store, "pod", pod("web", containers=[container], volumes=[{"name": "cfg", "configMap": {"name": "cfg"}}]))
    configs: list[Any] = []
    original = runtime.create_container

    async def capture(sandbox_id: str, config: Any, sandbox: Any) -> str:
        configs.append(config)
        return await original(sandbox_id, config, sandbox)

    runtime.create_container = capture  # type: ignore[method-assign]  # observe what Edged asks for
    await edged(store, runtime, published, tmp_path).sync_once()
    [config] = configs
    assert config.env == {"CFG_mode": "fast", "CFG_level": "3", "TOKEN": "s3cr3t", "POD": "web"}
    [mount, hosts, message] = config.mounts
    assert mount.container_path == "/etc/app" and mount.readonly
    assert hosts.container_path == "/etc/hosts" and "localhost" in Path(hosts.host_path).read_text()
    assert message.container_path == "/dev/termination-log" and Path(message.host_path).read_bytes() == b""
    assert (Path(mount.host_path) / "mode").read_text() == "fast"
    assert config.resources.cpu_quota == 50_000 and config.resources.memory_limit_bytes == 64 * 2**20


async def test_volumes_are_written_again_when_what_they_come_from_changed(store: MetaStore, tmp_path: Path) -> None:
    runtime, published = HollowRuntime(), Published()

    def cfg(rv: int, mode: str) -> dict[str, Any]:
        return {
            "metadata": {"name": "cfg", "namespace": "default", "uid": "cm1", "resourceVersion": str(rv)},
            "data": {"mode": mode},
        }

    await put(store, "configmap", cfg(1, "fast"))
    volumes = [{"name": "cfg", "configMap": {"name": "cfg"}}]
    await put(store, "pod", pod("web", volumes=volumes))
    e = edged(store, runtime, published, tmp_path)
    await e.sync_once()
    written = tmp_path / "edged" / "pods" / "uid-web" / "volumes" / "cfg" / "mode"
    assert written.read_text() == "fast"
    # Nothing changed: a sync leaves the files alone (this is what made every sync cost every pod).
    written.write_text("touched by hand")
    await e.sync_once()
    assert written.read_text() == "touched by hand"
    # The configmap changed: EdgeHub's change listener tells Edged, and the next sync writes it.
    e.on_changes(await put(store, "configmap", cfg(2, "slow"), Operation.UPDATE))
    await e.sync_once()
    assert written.read_text() == "slow"
    # The pod changed (its labels, for the downward API): written again too.
    written.write_text("touched by hand")
    e.on_changes(await put(store, "pod", pod("web", rv=2, volumes=volumes), Operation.UPDATE))
    await e.sync_once()
    assert written.read_text() == "slow"


async def test_missing_configmap_and_missing_image_say_why_the_pod_waits(store: MetaStore, tmp_path: Path) -> None:
    runtime, published = HollowRuntime(), Published()
    await put(
        store,
        "pod",
        pod(
            "nocfg",
            containers=[
                {"name": "main", "image": "localhost/busybox:1.35", "envFrom": [{"configMapRef": {"name": "absent"}}]}
            ],
        ),
    )
    await put(
        store,
        "pod",
        pod("noimage", containers=[{"name": "main", "image": "localhost/nothere:1", "imagePullPolicy": "Never"}]),
    )
    await edged(store, runtime, published, tmp_path).sync_once()
    nocfg = published.statuses("nocfg")[-1]
    assert nocfg["phase"] == "Pending"
    assert nocfg["containerStatuses"][0]["state"]["waiting"]["reason"] == "CreateContainerConfigError"
    assert "configmap default/absent not found" in nocfg["containerStatuses"][0]["state"]["waiting"]["message"]
    assert (
        published.statuses("noimage")[-1]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ErrImageNeverPull"
    )


async def test_deletion_stops_the_pod_and_tells_the_cloud(store: MetaStore, tmp_path: Path) -> None:
    runtime, published = HollowRuntime(), Published()
    await put(store, "pod", pod("web"))
    e = edged(store, runtime, published, tmp_path)
    await e.sync_once()
    terminating = pod("web", rv=2)
    terminating["metadata"]["deletionTimestamp"] = "2026-11-28T00:00:00Z"
    terminating["metadata"]["deletionGracePeriodSeconds"] = 1
    await put(store, "pod", terminating, Operation.UPDATE)
    await e.sync_once()
    assert runtime.sandboxes == {} and runtime.containers == {}
    assert (
        "pod/default/web/deleted",
        "delete",
        {"metadata": {"uid": "uid-web", "name": "web", "namespace": "default"}},
    ) in published.items
    # a pod the store no longer has at all is removed too
    await put(store, "pod", pod("other"))
    await e.sync_once()
    await put(store, "pod", pod("other", rv=5), Operation.DELETE)
    await e.sync_once()
    assert runtime.sandboxes == {}


async def test_init_containers_run_one_by_one_before_the_app_and_never_again(store: MetaStore, tmp_path: Path) -> None:
    runtime, published = HollowRuntime(), Published()
    image = "localhost/busybox:1.35"
    await put(
        store,
        "pod",
        pod("web", initContainers=[{"name": "i1", "image": image}, {"name": "i2", "image": image}]),
    )
    e = edged(store, runtime, published, tmp_path)

    def names() -> list[str]:
        return sorted(c.name for c in runtime.containers.values())

    await e.sync_once()
    assert names() == ["i1"]
    status = published.statuses("web")[-1]
    assert (
        status["phase"] == "Pending"
        and status["containerStatuses"][0]["state"]["waiting"]["reason"] == "PodInitializing"
    )
    runtime.exit(next(c.id for c in runtime.containers.values() if c.name == "i1"), 0)
    await e.sync_once()
    assert names() == ["i1", "i2"]
    runtime.exit(next(c.id for c in runtime.containers.values() if c.name == "i2"), 0)
    await e.sync_once()
    assert names() == ["i1", "i2", "main"]
    status = published.statuses("web")[-1]
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert status["phase"] == "Running" and conditions["Initialized"] == conditions["Ready"] == "True"
    assert [s["state"]["terminated"]["exitCode"] for s in status["initContainerStatuses"]] == [0, 0]
    # after a restart of EdgeCore the exited init containers say they are done: nothing runs again
    again = edged(store, runtime, published, tmp_path)
    await again.sync_once()
    assert names() == ["i1", "i2", "main"]


async def test_a_failed_init_container_fails_a_never_restarting_pod(store: MetaStore, tmp_path: Path) -> None:
    runtime, published = HollowRuntime(), Published()
    image = "localhost/busybox:1.35"
    await put(store, "pod", pod("job", restartPolicy="Never", initContainers=[{"name": "i1", "image": image}]))
    e = edged(store, runtime, published, tmp_path)
    await e.sync_once()
    runtime.exit(next(iter(runtime.containers)), 1)
    await e.sync_once()
    status = published.statuses("job")[-1]
    assert status["phase"] == "Failed" and [c.name for c in runtime.containers.values()] == ["i1"]


async def test_a_pod_past_its_active_deadline_is_stopped_and_failed(store: MetaStore, tmp_path: Path) -> None:
    runtime, published = HollowRuntime(), Published()
    await put(store, "pod", pod("slow", activeDeadlineSeconds=0))
    e = edged(store, runtime, published, tmp_path)
    await e.sync_once()  # the sandbox starts; its age is already past 0 s
    await e.sync_once()
    status = published.statuses("slow")[-1]
    assert status["phase"] == "Failed" and status["reason"] == "DeadlineExceeded"
    assert all(c.state is not ContainerState.RUNNING for c in runtime.containers.values())


async def test_a_pod_for_another_os_or_with_a_forbidden_sysctl_is_rejected(store: MetaStore, tmp_path: Path) -> None:
    runtime, published = HollowRuntime(), Published()
    await put(store, "pod", pod("win", os={"name": "windows"}))
    await put(store, "pod", pod("sys", securityContext={"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}))
    await edged(store, runtime, published, tmp_path).sync_once()
    assert not runtime.sandboxes
    assert published.statuses("win")[-1]["reason"] == "PodOSNotSupported"
    assert published.statuses("sys")[-1]["phase"] == "Failed"
    assert published.statuses("sys")[-1]["reason"] == "SysctlForbidden"


async def test_a_deleted_pod_stops_its_app_first_then_its_sidecars_last_declared_first(
    store: MetaStore, tmp_path: Path
) -> None:
    runtime, published = HollowRuntime(), Published()
    image = "localhost/busybox:1.35"
    sidecars = [{"name": n, "image": image, "restartPolicy": "Always"} for n in ("proxy", "logger")]
    await put(store, "pod", pod("web", initContainers=sidecars))
    e = edged(store, runtime, published, tmp_path)
    for _ in range(3):  # one sidecar per round (each must have started), then the app
        await e.sync_once()
    assert sorted(c.name for c in runtime.containers.values()) == ["logger", "main", "proxy"]
    stopped: list[str] = []
    stop = runtime.stop_container

    async def recorded(container_id: str, timeout_s: int) -> None:
        stopped.append(runtime.containers[container_id].name)
        await stop(container_id, timeout_s)

    runtime.stop_container = recorded  # type: ignore[method-assign]  # observe the order Edged stops them in
    terminating = pod("web", rv=2, initContainers=sidecars)
    terminating["metadata"]["deletionTimestamp"] = "2026-11-28T00:00:00Z"
    await put(store, "pod", terminating, Operation.UPDATE)
    await e.sync_once()
    assert stopped[:3] == ["main", "logger", "proxy"]


class RecordingRuntime(HollowRuntime):
    """The hollow runtime, keeping the sandbox configuration each sandbox and container was made with."""

    def __init__(self) -> None:
        super().__init__()
        self.sandbox_configs: list[SandboxConfig] = []

    async def run_sandbox(self, config: SandboxConfig) -> str:
        self.sandbox_configs.append(config)
        return await super().run_sandbox(config)

    async def create_container(self, sandbox_id: str, config: ContainerConfig, sandbox: SandboxConfig) -> str:
        self.sandbox_configs.append(sandbox)
        return await super().create_container(sandbox_id, config, sandbox)


async def test_a_sandbox_configuration_is_built_once_per_pod_version_and_sandbox(
    store: MetaStore, tmp_path: Path
) -> None:
    """Every sync of every pod needs its sandbox configuration; building it reads the host's resolv.conf and
    creates the log directory, so it is built again only for a new pod version or a new sandbox."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 192.0.2.53\n")
    runtime, published = RecordingRuntime(), Published()
    e = edged(store, runtime, published, tmp_path, restart_backoff=0.0, dns=DnsSettings(resolv_conf=resolv))
    await put(store, "pod", pod("web", dnsPolicy="Default"))
    await e.sync_once()
    assert [c.dns for c in runtime.sandbox_configs] == [DnsConfig(servers=("192.0.2.53",))] * 2
    resolv.write_text("nameserver 192.0.2.54\n")
    # The container exits and is started again in the same sandbox: the configuration it was made with holds.
    (container,) = runtime.containers
    runtime.exit(container, 1)
    await e.sync_once()
    assert len(runtime.sandbox_configs) == 3 and runtime.sandbox_configs[2] is runtime.sandbox_configs[0]
    # The sandbox is gone: the new one (attempt 1) sees the host's resolv.conf as it is now.
    (sandbox,) = runtime.sandboxes
    await runtime.stop_sandbox(sandbox)
    await e.sync_once()
    assert runtime.sandbox_configs[3].attempt == 1 and runtime.sandbox_configs[3].dns == DnsConfig(
        servers=("192.0.2.54",)
    )
