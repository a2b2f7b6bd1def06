"""Security contexts, termination messages, init-container and probe bookkeeping: the pure parts, no runtime."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from edgecore.edged import probes, security, termination, volumes
from edgecore.edged.runtime import ContainerInfo, ContainerState, ExecResult
from edgecore.edged.status import Init, Waiting, container_status, pod_status


def pod(spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u1"}, "spec": spec}


def test_container_fields_override_the_pods_and_groups_add_up() -> None:
    p = pod(
        {
            "securityContext": {"runAsUser": 1000, "runAsGroup": 3000, "fsGroup": 2000, "supplementalGroups": [5]},
            "containers": [{"name": "c", "securityContext": {"runAsUser": 1001, "allowPrivilegeEscalation": False}}],
        }
    )
    got = security.container_security(p, p["spec"]["containers"][0], image_uid=None)
    assert (got.run_as_user, got.run_as_group, got.supplemental_groups) == (1001, 3000, (5, 2000))
    assert got.no_new_privs and not got.privileged and got.seccomp == "Unconfined"


def test_run_as_non_root_is_refused_with_the_kubelets_reasons() -> None:
    def check(context: dict[str, Any], uid: int | None, user: str = "") -> str:
        p = pod({"containers": [{"name": "c", "securityContext": context}]})
        try:
            security.container_security(p, p["spec"]["containers"][0], image_uid=uid, image_user=user)
        except security.SecurityError as exc:
            return str(exc)
        return ""

    assert check({"runAsNonRoot": True, "runAsUser": 1234}, None) == ""
    assert check({"runAsNonRoot": True}, 1234) == ""
    assert "runAsUser breaks non-root policy" in check({"runAsNonRoot": True, "runAsUser": 0}, 1234)
    assert "image will run as root" in check({"runAsNonRoot": True}, None)
    assert "image will run as root" in check({"runAsNonRoot": True}, 0)
    assert "non-numeric user (nobody)" in check({"runAsNonRoot": True}, None, "nobody")


def test_unsafe_sysctls_reject_the_pod_unless_allowed_and_slashes_are_separators() -> None:
    p = pod({"securityContext": {"sysctls": [{"name": "kernel/shm_rmid_forced", "value": "1"}]}, "containers": []})
    assert security.sandbox_security(p).sysctls == {"kernel.shm_rmid_forced": "1"}
    unsafe = pod({"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}, "containers": []})
    with pytest.raises(security.Rejected) as refused:
        security.sandbox_security(unsafe)
    assert refused.value.reason == "SysctlForbidden" and "kernel.msgmax" in str(refused.value)
    assert security.sandbox_security(unsafe, frozenset({"kernel.msg*"})).sysctls == {"kernel.msgmax": "1"}
    assert security.normalized_sysctl("net/ipv4/conf/eno2.100/rp_filter") == "net.ipv4.conf.eno2/100.rp_filter"


def test_a_termination_message_comes_from_its_file_or_the_end_of_the_log(tmp_path: Path) -> None:
    spec = {"name": "c", "terminationMessagePolicy": "FallbackToLogsOnError"}
    host, path = termination.prepare(tmp_path, spec, 0)
    assert path == "/dev/termination-log" and host.stat().st_mode & 0o777 == 0o666
    log = tmp_path / "0.log"
    log.write_text("".join(f"2026-12-02T00:00:00.{i:09d}Z stdout F line {i}\n" for i in range(100)))
    assert termination.message(tmp_path, spec, 0, 1, str(log)).endswith("line 99\n")
    assert termination.message(tmp_path, spec, 0, 0, str(log)) == ""  # succeeded: no fallback
    log.write_text("2026-12-02T00:00:00.1Z stdout P DONE\n")  # echo -n DONE: an unterminated line
    assert termination.message(tmp_path, spec, 0, 1, str(log)) == "DONE"
    host.write_text("FROM FILE")
    assert termination.message(tmp_path, spec, 0, 1, str(log)) == "FROM FILE"


def _exited(code: int, attempt: int = 0) -> ContainerInfo:
    return ContainerInfo("c1", "s1", "c", ContainerState.EXITED, {}, attempt=attempt, exit_code=code)


def test_a_container_waiting_to_restart_reports_its_own_last_instance_and_the_pod_stays_running() -> None:
    spec = {"name": "c", "image": "i"}
    status = container_status(spec, _exited(1, attempt=2), None, waiting=Waiting("CrashLoopBackOff", "back-off"))
    assert status["lastState"]["terminated"]["exitCode"] == 1 and status["restartCount"] == 2
    p = pod({"containers": [spec]})
    assert pod_status(p, None, [status], host_ip="1.2.3.4", now="t")["phase"] == "Running"


def test_pending_init_containers_keep_the_pod_pending_and_not_initialized() -> None:
    p = pod({"initContainers": [{"name": "i1"}, {"name": "i2"}], "containers": [{"name": "c"}]})
    init = Init([{"name": "i1", "state": {"terminated": {"exitCode": 0}}}, {"name": "i2", "state": {"running": {}}}])
    init = Init(init.statuses, done=False)
    status = pod_status(p, None, [container_status({"name": "c"}, None, None, None)], host_ip="", now="t", init=init)
    conditions = {c["type"]: c for c in status["conditions"]}
    assert status["phase"] == "Pending" and conditions["Initialized"]["status"] == "False"
    assert conditions["Initialized"]["message"] == "containers with incomplete status: [i2]"
    failed = pod_status(p, None, [], host_ip="", now="t", init=Init(init.statuses, done=False, failed=True))
    assert failed["phase"] == "Failed"


class FakeExec:
    def __init__(self) -> None:
        self.code = 0

    async def exec_sync(self, container_id: str, cmd: list[str], timeout_s: int) -> ExecResult:
        return ExecResult(b"out", b"", self.code)


async def test_probes_flip_readiness_and_give_up_on_liveness_after_the_threshold() -> None:
    runtime = FakeExec()
    changes: list[int] = []
    events: list[str] = []
    prober = probes.Prober(runtime, lambda: changes.append(1))

    async def unhealthy(type_: str, reason: str, message: str) -> None:
        events.append(message)

    fast = {"exec": {"command": ["true"]}, "periodSeconds": 1, "failureThreshold": 2}
    container = {"name": "c", "readinessProbe": fast, "livenessProbe": fast}
    target = probes.Target("c1", "127.0.0.1")
    first = prober.ensure(container, target, 0.0, unhealthy)
    assert first.started and not first.ready
    for _ in range(500):  # the first probe runs at once; 10 s for a loaded machine
        await asyncio.sleep(0.02)
        if prober.ensure(container, target, 0.0).ready:
            break
    assert prober.ensure(container, target, 0.0).ready
    runtime.code = 1
    for _ in range(750):  # two failures a second apart, with room to spare
        await asyncio.sleep(0.02)
        if prober.ensure(container, target, 0.0).live_failed:
            break
    result = prober.ensure(container, target, 0.0)
    assert result.live_failed.startswith("Liveness probe failed: out") and not result.ready
    assert any(e.startswith("Readiness probe failed") for e in events)
    await prober.close()


async def test_actions_report_why_they_failed() -> None:
    target = probes.Target("c1", "127.0.0.1", {"http": 1})
    refused = await probes.run_action({"tcpSocket": {"port": "http"}}, target, FakeExec(), 1)
    assert not refused.ok and refused.message
    unnamed = await probes.run_action({"httpGet": {"port": "nope"}}, target, FakeExec(), 1)
    assert not unnamed.ok and "named port" in unnamed.message
    assert not (await probes.run_action({}, target, FakeExec(), 1)).ok
    assert (await probes.run_action({"sleep": {"seconds": 0}}, target, FakeExec(), 1)).ok


async def _nothing(kind: str, namespace: str, name: str) -> Any:
    return {"data": {"k": "v"}} if kind == "configmap" else None


async def test_fs_group_owns_the_pods_volumes_and_a_memory_emptydir_is_a_tmpfs(tmp_path: Path) -> None:
    p = pod(
        {
            "securityContext": {"fsGroup": 1234},
            "volumes": [
                {"name": "scratch", "emptyDir": {}},
                {"name": "ram", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
                {"name": "cfg", "configMap": {"name": "c", "defaultMode": 0o400}},
                {"name": "made", "hostPath": {"path": str(tmp_path / "host" / "new"), "type": "DirectoryOrCreate"}},
            ],
        }
    )
    try:
        paths = await volumes.prepare(p, tmp_path / "pod", _nothing, None)
        scratch = paths["scratch"].stat()
        assert scratch.st_gid == 1234 and scratch.st_mode & 0o7777 == 0o2777
        assert os.path.ismount(paths["ram"]) and "size=1024k" in Path("/proc/mounts").read_text()
        cfg = (paths["cfg"] / "k").stat()
        assert cfg.st_gid == 1234 and cfg.st_mode & 0o777 == 0o440  # 0400 plus the group's read
        assert paths["made"].is_dir()
        again = await volumes.prepare(p, tmp_path / "pod", _nothing, None)  # a second sync changes nothing
        assert (again["cfg"] / "k").stat().st_ino == cfg.st_ino
    finally:
        volumes.release(tmp_path / "pod")
    assert not os.path.ismount(tmp_path / "pod" / "volumes" / "ram")
    with pytest.raises(volumes.VolumeError, match="is not a File"):
        await volumes.prepare(
            pod({"volumes": [{"name": "f", "hostPath": {"path": str(tmp_path), "type": "File"}}]}),
            tmp_path / "p2",
            _nothing,
            None,
        )


async def test_http_probes_follow_redirects_only_on_the_same_host() -> None:
    async def elsewhere(_: web.Request) -> web.Response:
        raise web.HTTPFound("http://192.0.2.1:1/never-asked")  # another host: the redirect itself is the answer

    async def local(_: web.Request) -> web.Response:
        raise web.HTTPFound("/broken")

    async def broken(_: web.Request) -> web.Response:
        return web.Response(status=500)

    app = web.Application()
    app.router.add_get("/elsewhere", elsewhere)
    app.router.add_get("/local", local)
    app.router.add_get("/broken", broken)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        target = probes.Target("c1", "127.0.0.1")
        ok = await probes.run_action({"httpGet": {"path": "/elsewhere", "port": port}}, target, FakeExec(), 2)
        assert ok.ok and ok.warning.startswith("Probe terminated redirects, Response body:")
        followed = await probes.run_action({"httpGet": {"path": "/local", "port": port}}, target, FakeExec(), 2)
        assert not followed.ok and "500" in followed.message
    finally:
        await runner.cleanup()
