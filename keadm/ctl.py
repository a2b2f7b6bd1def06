"""``keadm ctl``: look at the node's pods from the gateway itself, with or without the cloud.

    keadm ctl get pods [-n NS | -A]
    keadm ctl logs POD [-n NS] [-c CONTAINER] [-f] [--tail N] [-p]
    keadm ctl exec POD [-n NS] [-c CONTAINER] -- COMMAND [ARG...]

Everything comes from EdgeCore's store (opened read-only, beside a running EdgeCore) and the local container
runtime (CRI): nothing waits for CloudCore, unlike KubeEdge's ``keadm ctl``, which needs its MetaServer.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from common.config import ConfigError
from edgecore import config as edge_config
from edgecore.edged.cri.client import CriRuntime
from edgecore.edged.logs import LogError, LogOptions, stream_log
from edgecore.edged.runtime import CONTAINER_NAME, POD_UID, ContainerInfo, ContainerRuntimeError, ContainerState
from edgecore.metamanager.store import MetaStore, StoreError
from keadm.paths import EdgeLayout

EXIT_USAGE = 2


class CtlError(Exception):
    """What keadm ctl cannot do; the message says why."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, metavar="PATH", help="the node's edgecore.yaml")
    parser.add_argument("--root-dir", type=Path, default=Path("/"), metavar="DIR", help="keadm join's --root-dir")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    get = verbs.add_parser("get", help="list the node's pods")
    get.add_argument("what", choices=["pods", "pod", "po"])
    get.add_argument("-n", "--namespace", default="default")
    get.add_argument("-A", "--all-namespaces", action="store_true")
    logs = verbs.add_parser("logs", help="print a container's log")
    logs.add_argument("pod")
    logs.add_argument("-n", "--namespace", default="default")
    logs.add_argument("-c", "--container", default="")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("-p", "--previous", action="store_true")
    logs.add_argument("--tail", type=int, default=None)
    run = verbs.add_parser("exec", help="run a command in a container: exec POD [-c C] -- COMMAND [ARG...]")
    run.add_argument("pod")
    run.add_argument("-n", "--namespace", default="default")
    run.add_argument("-c", "--container", default="")
    run.add_argument("--timeout", type=int, default=60, help="seconds the command may run")


def run(args: argparse.Namespace) -> int:
    path: Path = args.config if args.config is not None else EdgeLayout(args.root_dir).config
    try:
        config = edge_config.load(path)
    except ConfigError as exc:
        sys.stderr.write(f"keadm ctl: {exc}\n")
        return EXIT_USAGE
    try:
        return asyncio.run(_run(args, config))
    except (CtlError, StoreError, ContainerRuntimeError, LogError) as exc:
        sys.stderr.write(f"keadm ctl: {exc}\n")
        return 1


async def _run(args: argparse.Namespace, config: edge_config.EdgeCoreConfig) -> int:
    store = await MetaStore.open_readonly(config.database.data_source)
    runtime = CriRuntime(config.modules.edged.remote_runtime_endpoint, timeout=10)
    node = config.modules.edged.hostname_override
    try:
        pods = [p for p in await store.list_kind("pod") if (p.get("spec") or {}).get("nodeName") == node]
        if args.verb == "get":
            return await _get(args, pods, runtime)
        pod = _find(pods, args.namespace, args.pod)
        container = args.container or str(((pod.get("spec") or {}).get("containers") or [{}])[0].get("name", ""))
        instances = await _instances(runtime, pod, container)
        if args.verb == "logs":
            log_root = Path(config.modules.edged.root_directory) / "logs" / "pods"
            return await _logs(args, log_root, pod, container, instances, runtime=runtime)
        return await _exec(args, instances, pod, container, runtime)
    finally:
        await runtime.close()
        await store.close()


def _find(pods: list[dict[str, Any]], namespace: str, name: str) -> dict[str, Any]:
    for pod in pods:
        m = pod["metadata"]
        if m["name"] == name and m.get("namespace", "default") == namespace:
            return pod
    raise CtlError(f'pod "{name}" not found in namespace {namespace} on this node')


async def _instances(runtime: CriRuntime, pod: dict[str, Any], container: str) -> list[ContainerInfo]:
    uid = pod["metadata"]["uid"]
    found = [
        c
        for c in await runtime.list_containers()
        if c.labels.get(POD_UID) == uid and c.labels.get(CONTAINER_NAME) == container
    ]
    return sorted(found, key=lambda c: (c.attempt, c.created_at_ns))


async def _get(args: argparse.Namespace, pods: list[dict[str, Any]], runtime: CriRuntime) -> int:
    containers = await runtime.list_containers()
    rows: list[tuple[str, ...]] = [("NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE")]
    for pod in sorted(pods, key=lambda p: (p["metadata"].get("namespace", ""), p["metadata"]["name"])):
        m = pod["metadata"]
        if not args.all_namespaces and m.get("namespace", "default") != args.namespace:
            continue
        wanted = [c["name"] for c in (pod.get("spec") or {}).get("containers") or []]
        mine = [c for c in containers if c.labels.get(POD_UID) == m["uid"]]
        latest = {
            name: max((c for c in mine if c.name == name), key=lambda c: c.attempt, default=None) for name in wanted
        }
        running = sum(1 for c in latest.values() if c is not None and c.state is ContainerState.RUNNING)
        restarts = sum(c.attempt for c in latest.values() if c is not None)
        status = "Terminating" if m.get("deletionTimestamp") else _status(list(latest.values()))
        rows.append(
            (
                m.get("namespace", "default"),
                m["name"],
                f"{running}/{len(wanted)}",
                status,
                str(restarts),
                _age(m.get("creationTimestamp", "")),
            )
        )
    if not args.all_namespaces:
        rows = [row[1:] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _status(latest: list[ContainerInfo | None]) -> str:
    if any(c is None for c in latest):
        return "Pending"
    states = {c.state for c in latest if c is not None}
    if states == {ContainerState.RUNNING}:
        return "Running"
    if ContainerState.EXITED in states:
        return "Completed" if all(c is not None and c.exit_code == 0 for c in latest) else "Error"
    return "Pending"


def _age(created: str) -> str:
    try:
        then = dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return "?"
    seconds = int((dt.datetime.now(dt.UTC) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


async def _logs(
    args: argparse.Namespace,
    log_root: Path,
    pod: dict[str, Any],
    container: str,
    instances: list[ContainerInfo],
    *,
    runtime: CriRuntime,
) -> int:
    if not instances or (args.previous and len(instances) < 2):
        which = "previous terminated" if args.previous else "started"
        raise CtlError(f'no {which} container "{container}" in pod "{pod["metadata"]["name"]}"')
    chosen = instances[-2] if args.previous else instances[-1]
    m = pod["metadata"]
    pod_dir = log_root / f"{m.get('namespace', 'default')}_{m['name']}_{m['uid']}"
    path = Path(chosen.log_path) if chosen.log_path else pod_dir / container / f"{chosen.attempt}.log"

    async def running() -> bool:
        try:
            return (await runtime.container_status(chosen.id)).state is ContainerState.RUNNING
        except ContainerRuntimeError:
            return False

    options = LogOptions(follow=args.follow and not args.previous, tail_lines=args.tail)
    async for chunk in stream_log(path, options, running=running):
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
    return 0


async def _exec(
    args: argparse.Namespace, instances: list[ContainerInfo], pod: dict[str, Any], container: str, runtime: CriRuntime
) -> int:
    command = list(getattr(args, "after_dashes", []))
    if not command:
        raise CtlError("exec needs a command after --")
    if not instances or instances[-1].state is not ContainerState.RUNNING:
        raise CtlError(f'container "{container}" is not running in pod "{pod["metadata"]["name"]}"')
    result = await runtime.exec_sync(instances[-1].id, command, args.timeout)
    sys.stdout.buffer.write(result.stdout)
    sys.stderr.buffer.write(result.stderr)
    return result.exit_code
