"""From a pod spec to what the runtime needs: environment, volumes on disk, resource limits.

Configmaps and secrets come from the edge's own store (they arrived with the pod), so a pod restarts with
the right environment and files while the cloud is unreachable.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Awaitable, Callable
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from edgecore.edged.runtime import Mount, Resources

Lookup = Callable[[str, str, str], Awaitable[Any]]  # (kind, namespace, name) → object or None

_SUFFIXES: dict[str, Decimal] = {
    **{s: Decimal(2) ** (10 * (i + 1)) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{s: Decimal(10) ** (3 * (i + 1)) for i, s in enumerate(("k", "M", "G", "T", "P", "E"))},
    "K": Decimal(1000),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")


class SpecError(Exception):
    """The pod spec cannot be run as written; the message names the field."""


def parse_quantity(text: str | int | float) -> Decimal:
    """A Kubernetes quantity ("500m", "64Mi", "1.5", "2e3") as a number."""
    match = _QUANTITY.match(str(text).strip())
    if match is None or (match.group(2) and match.group(2) not in _SUFFIXES):
        raise SpecError(f"not a quantity: {text!r}")
    try:
        return Decimal(match.group(1)) * _SUFFIXES.get(match.group(2), Decimal(1))
    except InvalidOperation as exc:
        raise SpecError(f"not a quantity: {text!r}") from exc


def resources(container: dict[str, Any]) -> Resources:
    limits = (container.get("resources") or {}).get("limits") or {}
    requests = (container.get("resources") or {}).get("requests") or {}
    period = 100_000
    cpu_limit = parse_quantity(limits["cpu"]) if "cpu" in limits else None
    cpu_request = parse_quantity(requests["cpu"]) if "cpu" in requests else cpu_limit
    memory = int(parse_quantity(limits["memory"])) if "memory" in limits else 0
    return Resources(
        cpu_quota=int(cpu_limit * period) if cpu_limit is not None else 0,
        cpu_period=period if cpu_limit is not None else 0,
        cpu_shares=max(2, int(cpu_request * 1024)) if cpu_request is not None else 0,
        memory_limit_bytes=memory,
    )


def _decode(kind: str, obj: dict[str, Any]) -> dict[str, str]:
    if kind == "secret":
        out = {k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.get("data") or {}).items()}
        out.update(obj.get("stringData") or {})
        return out
    return dict(obj.get("data") or {})


def kubernetes_service_env(address: str) -> dict[str, str]:
    """The variables the kubelet sets for the ``kubernetes`` Service, pointing at ``address`` (host:port)."""
    if not address:
        return {}
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    url = f"tcp://{host}:{port}"
    return {
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": port,
        "KUBERNETES_SERVICE_PORT_HTTPS": port,
        "KUBERNETES_PORT": url,
        f"KUBERNETES_PORT_{port}_TCP": url,
        f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
        f"KUBERNETES_PORT_{port}_TCP_PORT": port,
        f"KUBERNETES_PORT_{port}_TCP_ADDR": host,
    }


async def environment(
    pod: dict[str, Any],
    container: dict[str, Any],
    lookup: Lookup,
    *,
    status: dict[str, str] | None = None,
    base: dict[str, str] | None = None,
) -> dict[str, str]:
    """``base`` (the kubernetes Service's variables), then ``envFrom``, then ``env`` (which wins), as the
    kubelet does; $(VAR) references in values are expanded against what came before. ``status`` holds the
    podIP/hostIP the node knows."""
    namespace = pod["metadata"].get("namespace", "default")
    env: dict[str, str] = dict(base or {})
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, ref in (("configmap", source.get("configMapRef")), ("secret", source.get("secretRef"))):
            if ref is None:
                continue
            obj = await lookup(kind, namespace, ref["name"])
            if obj is None:
                if ref.get("optional"):
                    continue
                raise SpecError(f"container {container['name']}: envFrom {kind} {namespace}/{ref['name']} not found")
            env.update({prefix + k: v for k, v in _decode(kind, obj).items()})
    for item in container.get("env") or []:
        if "value" in item or "valueFrom" not in item:
            env[item["name"]] = expand(item.get("value", ""), env)
            continue
        value = await _value_from(pod, container, item, lookup, status or {})
        if value is not None:
            env[item["name"]] = value
    return env


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: a defined variable is replaced, $$ is a literal $, anything else stays."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REFERENCE.sub(one, value)


async def _value_from(
    pod: dict[str, Any], container: dict[str, Any], item: dict[str, Any], lookup: Lookup, status: dict[str, str]
) -> str | None:
    source = item["valueFrom"]
    namespace = pod["metadata"].get("namespace", "default")
    for kind, key in (("configmap", "configMapKeyRef"), ("secret", "secretKeyRef")):
        ref = source.get(key)
        if ref is None:
            continue
        obj = await lookup(kind, namespace, ref["name"])
        data = _decode(kind, obj) if obj is not None else {}
        if ref["key"] in data:
            return data[ref["key"]]
        if ref.get("optional"):
            return None
        raise SpecError(
            f"container {container['name']}: env {item['name']}: {kind} {namespace}/{ref['name']} "
            f"has no key {ref['key']!r}"
            if obj is not None
            else f"container {container['name']}: env {item['name']}: {kind} {namespace}/{ref['name']} not found"
        )
    field_ref = source.get("fieldRef")
    if field_ref is not None:
        return field_value(pod, field_ref.get("fieldPath", ""), status)
    resource_ref = source.get("resourceFieldRef")
    if resource_ref is not None:
        return resource_value(
            pod,
            resource_ref.get("containerName") or container["name"],
            resource_ref.get("resource", ""),
            resource_ref.get("divisor"),
        )
    return None


def field_value(pod: dict[str, Any], path: str, status: dict[str, str]) -> str:
    """A downward-API ``fieldRef``; ``status`` has the podIP/hostIP the node knows (the pod's status is the
    edge's own and does not come down with the pod)."""
    metadata, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    simple = {
        "metadata.name": metadata.get("name"),
        "metadata.namespace": metadata.get("namespace"),
        "metadata.uid": metadata.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP"),
        "status.hostIPs": status.get("hostIP"),
        "status.podIP": status.get("podIP"),
        "status.podIPs": status.get("podIP"),
    }
    if path in simple:
        return str(simple[path] or "")
    match = re.match(r"^metadata\.(labels|annotations)\['(.+)'\]$", path)
    if match:
        return str((metadata.get(match.group(1)) or {}).get(match.group(2), ""))
    raise SpecError(f"unsupported fieldRef {path!r}")


# What an unset limit reads as through the downward API: the node's capacity, as the kubelet answers.
NODE_CAPACITY = {"cpu": Decimal(os.cpu_count() or 1), "memory": Decimal(0), "ephemeral-storage": Decimal(0)}


def resource_value(pod: dict[str, Any], container_name: str, resource: str, divisor: object) -> str:
    """A downward-API ``resourceFieldRef`` (limits.cpu, requests.memory, …) divided by ``divisor`` and rounded
    up, as the kubelet computes it; an unset limit is the node's capacity, an unset request 0 (cpu: the limit)."""
    spec = pod.get("spec") or {}
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    container = next((c for c in containers if c.get("name") == container_name), None)
    if container is None:
        raise SpecError(f"resourceFieldRef: no container {container_name!r} in the pod")
    which, _, name = resource.partition(".")
    if which not in ("limits", "requests") or name not in NODE_CAPACITY:
        raise SpecError(f"resourceFieldRef: unsupported resource {resource!r}")
    declared = (container.get("resources") or {}).get(which) or {}
    if name in declared:
        amount = parse_quantity(declared[name])
    elif which == "requests" and name in ((container.get("resources") or {}).get("limits") or {}):
        amount = parse_quantity(container["resources"]["limits"][name])  # a request defaults to the limit
    elif which == "limits":
        amount = NODE_CAPACITY[name] or Decimal(_memory_bytes() if name == "memory" else 0)
    else:
        amount = Decimal(0)
    by = parse_quantity(str(divisor)) if divisor not in (None, "", 0) else Decimal(1)
    if by == 0:  # the API server defaults an unset divisor to "0": it means 1, as in the kubelet
        by = Decimal(1)
    if by < 0:
        raise SpecError(f"resourceFieldRef: divisor must be positive, got {divisor!r}")
    return str(int((amount / by).to_integral_value(rounding=ROUND_CEILING)))


def _memory_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def mounts(container: dict[str, Any], volumes: dict[str, Path], env: dict[str, str] | None = None) -> list[Mount]:
    """The container's volumeMounts on the host: ``subPath`` (or ``subPathExpr``, expanded with the container's
    environment) names a directory inside the volume, created when missing, as the kubelet does."""
    out = []
    for mount in container.get("volumeMounts") or []:
        host = volumes.get(mount["name"])
        if host is None:
            raise SpecError(f"container {container['name']}: volumeMount {mount['name']!r} has no volume")
        sub = str(mount.get("subPath") or "")
        if mount.get("subPathExpr"):
            sub = expand(str(mount["subPathExpr"]), env or {})
        if sub:
            if Path(sub).is_absolute() or ".." in Path(sub).parts:
                raise SpecError(f"container {container['name']}: subPath {sub!r} must be relative, inside the volume")
            target = host / sub
            if not target.exists() and not target.is_symlink():
                target.mkdir(parents=True, exist_ok=True)
                # As the kubelet makes it: anyone may write, only owners delete (sticky), and the volume's group
                # (fsGroup) passes on when the volume's directory has set-group-ID.
                target.chmod(0o1777 | (host.stat().st_mode & 0o2000))
            elif os.path.realpath(target) != str(target.resolve()) or not str(target.resolve()).startswith(
                str(host.resolve())
            ):
                raise SpecError(f"container {container['name']}: subPath {sub!r} leads outside its volume")
            host = target
        out.append(Mount(str(host), mount["mountPath"], bool(mount.get("readOnly"))))
    return out
