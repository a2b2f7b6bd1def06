"""What the kubelet's ``/pods``, ``/stats/summary`` and ``/metrics/resource`` report, from the store, the runtime
(CRI ``ListContainerStats``) and /proc, so that metrics-server can scrape an edge node like any other.

CPU rates (``usageNanoCores``) need two samples: each call compares with the one before it.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from edgecore.edged.runtime import POD_NAME, POD_NAMESPACE, POD_UID, ContainerUsage, StreamingRuntime

StatusSource = Callable[[str], dict[str, Any] | None]  # pod uid → the status Edged last reported
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BOOT = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=time.monotonic())


class PodStore(Protocol):
    async def list_kind(self, kind: str) -> list[Any]: ...


def rfc3339(at: dt.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def node_cpu_ns() -> int:
    """CPU time the machine has spent busy since boot (all cores), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    jiffies = [int(v) for v in fields[:8]]
    busy = sum(jiffies) - jiffies[3] - jiffies[4]  # minus idle and iowait
    return busy * 1_000_000_000 // CLOCK_TICKS


def node_memory() -> dict[str, int]:
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        info[name] = int(rest.split()[0]) * 1024
    total, available = info.get("MemTotal", 0), info.get("MemAvailable", 0)
    return {
        "availableBytes": available,
        "usageBytes": total - info.get("MemFree", 0),
        "workingSetBytes": total - available,
    }


class Stats:
    def __init__(
        self, *, node_name: str, store: PodStore, runtime: StreamingRuntime, pod_statuses: StatusSource
    ) -> None:
        self._node = node_name
        self._store = store
        self._runtime = runtime
        self._statuses = pod_statuses
        self._previous: dict[str, tuple[int, int]] = {}  # id → (timestamp ns, cpu ns) of the last sample

    async def _pods(self) -> list[dict[str, Any]]:
        return [p for p in await self._store.list_kind("pod") if (p.get("spec") or {}).get("nodeName") == self._node]

    async def pod_list(self) -> dict[str, Any]:
        items = []
        for pod in await self._pods():
            status = self._statuses(pod["metadata"]["uid"])
            items.append({**pod, "status": status} if status is not None else pod)
        return {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}

    def _cpu(self, key: str, at_ns: int, cpu_ns: int) -> dict[str, Any]:
        out: dict[str, Any] = {"time": _time(at_ns), "usageCoreNanoSeconds": cpu_ns}
        before = self._previous.get(key)
        if before is not None and at_ns > before[0]:
            out["usageNanoCores"] = max(0, (cpu_ns - before[1]) * 1_000_000_000 // (at_ns - before[0]))
        self._previous[key] = (at_ns, cpu_ns)
        return out

    async def summary(self) -> dict[str, Any]:
        now_ns = time.time_ns()
        usage = await self._runtime.container_usage()
        node = {
            "nodeName": self._node,
            "startTime": rfc3339(BOOT),
            "cpu": self._cpu("node", now_ns, node_cpu_ns()),
            "memory": {"time": _time(now_ns), **node_memory()},
        }
        by_pod: dict[str, list[ContainerUsage]] = {}
        for container in usage:
            by_pod.setdefault(container.labels.get(POD_UID, ""), []).append(container)
        pods = []
        for pod in await self._pods():
            m = pod["metadata"]
            containers = [self._container(c) for c in by_pod.get(m["uid"], [])]
            pods.append(
                {
                    "podRef": {"name": m["name"], "namespace": m.get("namespace", "default"), "uid": m["uid"]},
                    "startTime": (self._statuses(m["uid"]) or {}).get("startTime", rfc3339(BOOT)),
                    "containers": containers,
                    "cpu": {
                        "time": _time(now_ns),
                        "usageCoreNanoSeconds": sum(c["cpu"]["usageCoreNanoSeconds"] for c in containers),
                        "usageNanoCores": sum(c["cpu"].get("usageNanoCores", 0) for c in containers),
                    },
                    "memory": {
                        "time": _time(now_ns),
                        "workingSetBytes": sum(c["memory"]["workingSetBytes"] for c in containers),
                        "usageBytes": sum(c["memory"]["usageBytes"] for c in containers),
                    },
                }
            )
        return {"node": node, "pods": pods}

    def _container(self, c: ContainerUsage) -> dict[str, Any]:
        at = c.timestamp_ns or time.time_ns()
        return {
            "name": c.name,
            "cpu": self._cpu(c.container_id, at, c.cpu_core_ns),
            "memory": {
                "time": _time(at),
                "workingSetBytes": c.memory_working_set,
                "usageBytes": c.memory_usage,
                "rssBytes": c.memory_rss,
            },
        }

    async def resource_metrics(self) -> str:
        """The kubelet's /metrics/resource, in the Prometheus text format metrics-server reads."""
        now_ms = time.time_ns() // 1_000_000
        usage = await self._runtime.container_usage()
        lines = [
            "# HELP node_cpu_usage_seconds_total Cumulative cpu time consumed by the node in core-seconds",
            "# TYPE node_cpu_usage_seconds_total counter",
            f"node_cpu_usage_seconds_total {node_cpu_ns() / 1e9} {now_ms}",
            "# HELP node_memory_working_set_bytes Current working set of the node in bytes",
            "# TYPE node_memory_working_set_bytes gauge",
            f"node_memory_working_set_bytes {node_memory()['workingSetBytes']} {now_ms}",
            "# HELP container_cpu_usage_seconds_total Cumulative cpu time consumed by the container in core-seconds",
            "# TYPE container_cpu_usage_seconds_total counter",
        ]
        memory = [
            "# HELP container_memory_working_set_bytes Current working set of the container in bytes",
            "# TYPE container_memory_working_set_bytes gauge",
        ]
        pod_cpu: dict[tuple[str, str], float] = {}
        pod_memory: dict[tuple[str, str], int] = {}
        for c in usage:
            namespace, pod = c.labels.get(POD_NAMESPACE, ""), c.labels.get(POD_NAME, "")
            at_ms = (c.timestamp_ns // 1_000_000) or now_ms
            labels = f'container="{c.name}",namespace="{namespace}",pod="{pod}"'
            lines.append(f"container_cpu_usage_seconds_total{{{labels}}} {c.cpu_core_ns / 1e9} {at_ms}")
            memory.append(f"container_memory_working_set_bytes{{{labels}}} {c.memory_working_set} {at_ms}")
            pod_cpu[namespace, pod] = pod_cpu.get((namespace, pod), 0.0) + c.cpu_core_ns / 1e9
            pod_memory[namespace, pod] = pod_memory.get((namespace, pod), 0) + c.memory_working_set
        lines += memory
        lines += ["# TYPE pod_cpu_usage_seconds_total counter"]
        lines += [
            f'pod_cpu_usage_seconds_total{{namespace="{ns}",pod="{p}"}} {v} {now_ms}' for (ns, p), v in pod_cpu.items()
        ]
        lines += ["# TYPE pod_memory_working_set_bytes gauge"]
        lines += [
            f'pod_memory_working_set_bytes{{namespace="{ns}",pod="{p}"}} {v} {now_ms}'
            for (ns, p), v in pod_memory.items()
        ]
        lines += ["# TYPE resource_scrape_error gauge", "resource_scrape_error 0"]
        return "\n".join(lines) + "\n"


def _time(ns: int) -> str:
    return rfc3339(dt.datetime.fromtimestamp(ns / 1e9, dt.UTC))
