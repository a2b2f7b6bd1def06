"""From a pod spec to what the runtime needs: environment, volumes on disk, resource limits.

Configmaps and secrets come from the edge's own store (they arrived with the pod), so a pod restarts with
the right environment and files while the cloud is unreachable.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
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


async def environment(pod: dict[str, Any], container: dict[str, Any], lookup: Lookup) -> dict[str, str]:
    """``envFrom`` first, then ``env`` (which wins), as the kubelet does."""
    namespace = pod["metadata"].get("namespace", "default")
    env: dict[str, str] = {}
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
            env[item["name"]] = item.get("value", "")
            continue
        value = await _value_from(pod, container, item, lookup)
        if value is not None:
            env[item["name"]] = value
    return env


async def _value_from(
    pod: dict[str, Any], container: dict[str, Any], item: dict[str, Any], lookup: Lookup
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
        return _field(pod, field_ref.get("fieldPath", ""))
    return None


def _field(pod: dict[str, Any], path: str) -> str:
    metadata, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    simple = {
        "metadata.name": metadata.get("name"),
        "metadata.namespace": metadata.get("namespace"),
        "metadata.uid": metadata.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP"),
        "status.podIP": status.get("podIP"),
    }
    if path in simple:
        return str(simple[path] or "")
    match = re.match(r"^metadata\.(labels|annotations)\['(.+)'\]$", path)
    if match:
        return str((metadata.get(match.group(1)) or {}).get(match.group(2), ""))
    raise SpecError(f"unsupported fieldRef {path!r}")


async def prepare_volumes(pod: dict[str, Any], pod_dir: Path, lookup: Lookup) -> dict[str, Path]:
    """Write configmap, secret and projected volumes under ``pod_dir``; returns volume name → host path."""
    namespace = pod["metadata"].get("namespace", "default")
    paths: dict[str, Path] = {}
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        name = volume["name"]
        target = pod_dir / "volumes" / name
        if "hostPath" in volume:
            paths[name] = Path(volume["hostPath"]["path"])
            continue
        target.mkdir(parents=True, exist_ok=True)
        paths[name] = target
        sources: list[tuple[str, dict[str, Any]]] = []
        if "configMap" in volume:
            sources.append(("configmap", {**volume["configMap"], "name": volume["configMap"]["name"]}))
        if "secret" in volume:
            sources.append(("secret", {**volume["secret"], "name": volume["secret"]["secretName"]}))
        for source in (volume.get("projected") or {}).get("sources") or []:
            if "configMap" in source:
                sources.append(("configmap", source["configMap"]))
            if "secret" in source:
                sources.append(("secret", source["secret"]))
        for kind, ref in sources:
            obj = await lookup(kind, namespace, ref["name"])
            if obj is None:
                if ref.get("optional"):
                    continue
                raise SpecError(f"volume {name}: {kind} {namespace}/{ref['name']} not found")
            _write_files(target, _decode(kind, obj), ref.get("items"), secret=kind == "secret")
    return paths


def _write_files(target: Path, data: dict[str, str], items: list[dict[str, Any]] | None, *, secret: bool) -> None:
    chosen = [(i["key"], i.get("path", i["key"])) for i in items] if items else [(k, k) for k in data]
    for key, relative in chosen:
        if key not in data:
            continue
        path = (target / relative).resolve()
        if not path.is_relative_to(target.resolve()):
            raise SpecError(f"volume item path {relative!r} escapes the volume")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(data[key])
        tmp.chmod(0o600 if secret else 0o644)
        os.replace(tmp, path)  # readers never see half a file


def mounts(container: dict[str, Any], volumes: dict[str, Path]) -> list[Mount]:
    out = []
    for mount in container.get("volumeMounts") or []:
        host = volumes.get(mount["name"])
        if host is None:
            raise SpecError(f"container {container['name']}: volumeMount {mount['name']!r} has no volume")
        if mount.get("subPath"):
            host = host / mount["subPath"]
        out.append(Mount(str(host), mount["mountPath"], bool(mount.get("readOnly"))))
    return out
