"""A pod's volumes on disk: what the kubelet's volume plugins would write, for the kinds an edge node runs.

Supported: ``emptyDir``, ``hostPath``, ``configMap``, ``secret``, ``downwardAPI`` and ``projected`` (its
``configMap``, ``secret``, ``downwardAPI`` and ``serviceAccountToken`` sources), which is every volume of a
pod written for a plain cluster, including the ``kube-api-access-*`` volume the ServiceAccount admission adds.
Anything else (a PVC, NFS, CSI, …) is refused with the kind named, so the pod says why it waits.

``prepare`` runs at every sync of a pod, not only before its containers start: files are rewritten only when
their content or mode changed (each by an atomic rename, so a reader never sees half a file) and files that
are no longer wanted are removed. That is how configmap and secret changes, labels and annotations of the
downward API, and rotated tokens reach running containers, as they do under the kubelet.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import ctypes.util
import functools
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecore.edged.spec import Lookup, SpecError, field_value, parse_quantity, resource_value

# (pod, audience, expirationSeconds) → token
TokenGetter = Callable[[dict[str, Any], str, int], Awaitable[str]]

SUPPORTED = ("emptyDir", "hostPath", "configMap", "secret", "downwardAPI", "projected")
# Volumes whose files the pod's fsGroup owns (the kubelet's ownership-managed plugins); hostPath is the node's.
OWNED = ("emptyDir", "configMap", "secret", "downwardAPI", "projected")
HOST_PATH_TYPES = ("", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket", "CharDevice", "BlockDevice")
PROJECTED_SOURCES = ("configMap", "secret", "downwardAPI", "serviceAccountToken")
DEFAULT_MODE = 0o644  # Kubernetes' defaultMode (420)
DEFAULT_TOKEN_SECONDS = 3600


class VolumeError(SpecError):
    """A volume the edge cannot provide (an unsupported kind, a source that is missing or not yet there)."""


@dataclass(frozen=True)
class File:
    content: bytes
    mode: int


async def prepare(
    pod: dict[str, Any],
    pod_dir: Path,
    lookup: Lookup,
    tokens: TokenGetter | None,
    *,
    status: dict[str, str] | None = None,
) -> dict[str, Path]:
    """Write every volume of ``pod`` under ``pod_dir``; volume name → host path. ``status`` holds the pod's
    podIP/hostIP as the node knows them (the downward API may ask for them)."""
    spec = pod.get("spec") or {}
    fs_group = (spec.get("securityContext") or {}).get("fsGroup")
    paths: dict[str, Path] = {}
    for volume in spec.get("volumes") or []:
        name = volume["name"]
        kind = next((k for k in SUPPORTED if k in volume), None)
        if kind is None:
            other = next((k for k in volume if k != "name"), "?")
            raise VolumeError(
                f"volume {name}: {other} volumes are not supported at the edge (supported: {', '.join(SUPPORTED)})"
            )
        if kind == "hostPath":
            paths[name] = _host_path(name, volume["hostPath"] or {})
            continue
        target = pod_dir / "volumes" / name
        fresh = not target.exists()
        if kind == "emptyDir":
            if fresh:
                target.mkdir(parents=True)
                target.chmod(0o777)  # as the kubelet makes it: any user of the pod may write
            if (volume["emptyDir"] or {}).get("medium") == "Memory":
                fresh |= _mount_tmpfs(name, target, (volume["emptyDir"] or {}).get("sizeLimit"))
            if not fresh:  # fsGroup was applied when it was made; the pod's own files since are the pod's business
                paths[name] = target
                continue
        else:
            target.mkdir(parents=True, exist_ok=True)
            files = await _files(
                pod, name, kind=kind, source=volume[kind], lookup=lookup, tokens=tokens, status=status or {}
            )
            _sync_dir(target, files, extra_mode=0o440 if fs_group is not None else 0)
        if fs_group is not None and kind in OWNED:
            _own(target, int(fs_group), readonly=kind != "emptyDir")
        paths[name] = target
    return paths


def release(pod_dir: Path) -> None:
    """Unmount the pod's memory-backed emptyDirs, so its directory can be removed."""
    volumes = pod_dir / "volumes"
    if not volumes.is_dir():
        return
    for target in volumes.iterdir():
        if os.path.ismount(target):
            _libc().umount2(os.fsencode(target), _MNT_DETACH)


def _host_path(name: str, source: dict[str, Any]) -> Path:
    """The node's path, created or checked as the volume's ``type`` says."""
    path = Path(str(source.get("path", "")))
    kind = str(source.get("type") or "")
    if kind not in HOST_PATH_TYPES:
        raise VolumeError(f"volume {name}: hostPath type {kind!r} is not one of {', '.join(HOST_PATH_TYPES[1:])}")
    if kind == "DirectoryOrCreate" and not path.exists():
        path.mkdir(parents=True, mode=0o755)
    elif kind == "FileOrCreate" and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o644)
    checks = {
        "Directory": path.is_dir,
        "File": path.is_file,
        "Socket": path.is_socket,
        "CharDevice": path.is_char_device,
        "BlockDevice": path.is_block_device,
    }
    if kind in checks and not checks[kind]():
        raise VolumeError(f"volume {name}: hostPath {path} is not a {kind}")
    return path


_MNT_DETACH = 2


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _mount_tmpfs(name: str, target: Path, size_limit: Any) -> bool:
    """``medium: Memory``: a tmpfs, ``sizeLimit`` its size (mount(2) directly: no mount binary needed); whether
    it was mounted now."""
    if os.path.ismount(target):
        return False
    options = "mode=0777"
    if size_limit:
        options += f",size={int(parse_quantity(size_limit))}"
    if _libc().mount(b"tmpfs", os.fsencode(target), b"tmpfs", 0, options.encode()) != 0:
        error = os.strerror(ctypes.get_errno())
        raise VolumeError(f"volume {name}: cannot mount a memory-backed emptyDir: {error}")
    return True


def _own(target: Path, gid: int, *, readonly: bool) -> None:
    """fsGroup, as the kubelet applies it: the group owns everything, may read (and write, unless the volume is
    read-only by nature), and directories pass the group on (setgid)."""
    mask = 0o440 if readonly else 0o660
    for path in [target, *target.rglob("*")]:
        try:
            info = path.lstat()
            if info.st_gid != gid:
                os.lchown(path, -1, gid)
            if path.is_symlink():
                continue
            wanted = (info.st_mode & 0o7777) | mask | (0o2110 if path.is_dir() else 0)
            if wanted != info.st_mode & 0o7777:
                path.chmod(wanted)
        except OSError:
            continue  # removed meanwhile


async def _files(
    pod: dict[str, Any],
    volume: str,
    *,
    kind: str,
    source: dict[str, Any],
    lookup: Lookup,
    tokens: TokenGetter | None,
    status: dict[str, str],
) -> dict[str, File]:
    default_mode = int(source.get("defaultMode", DEFAULT_MODE))
    if kind == "configMap":
        return await _referenced(
            pod,
            volume,
            kind="configmap",
            source=source,
            name=source.get("name", ""),
            lookup=lookup,
            default_mode=default_mode,
        )
    if kind == "secret":
        return await _referenced(
            pod,
            volume,
            kind="secret",
            source=source,
            name=source.get("secretName", ""),
            lookup=lookup,
            default_mode=default_mode,
        )
    if kind == "downwardAPI":
        return _downward(pod, volume, source.get("items") or [], status, default_mode)
    files: dict[str, File] = {}  # projected: the sources' files together
    for item in source.get("sources") or []:
        which = next((k for k in PROJECTED_SOURCES if k in item), None)
        if which is None:
            other = next(iter(item), "?")
            raise VolumeError(f"volume {volume}: projected {other} sources are not supported at the edge")
        part = item[which]
        if which == "configMap":
            files |= await _referenced(
                pod,
                volume,
                kind="configmap",
                source=part,
                name=part.get("name", ""),
                lookup=lookup,
                default_mode=default_mode,
            )
        elif which == "secret":
            files |= await _referenced(
                pod,
                volume,
                kind="secret",
                source=part,
                name=part.get("name", ""),
                lookup=lookup,
                default_mode=default_mode,
            )
        elif which == "downwardAPI":
            files |= _downward(pod, volume, part.get("items") or [], status, default_mode)
        else:
            if tokens is None:
                raise VolumeError(f"volume {volume}: no service-account tokens on this node")
            seconds = int(part.get("expirationSeconds") or DEFAULT_TOKEN_SECONDS)
            try:
                token = await tokens(pod, part.get("audience", ""), seconds)
            except Exception as exc:  # offline and never had one, or refused by the cloud
                raise VolumeError(f"volume {volume}: service-account token: {exc}") from exc
            files[_relative(volume, part.get("path", "token"))] = File(token.encode(), default_mode)
    return files


async def _referenced(
    pod: dict[str, Any],
    volume: str,
    *,
    kind: str,
    source: dict[str, Any],
    name: str,
    lookup: Lookup,
    default_mode: int,
) -> dict[str, File]:
    namespace = pod["metadata"].get("namespace", "default")
    obj = await lookup(kind, namespace, name)
    if obj is None:
        if source.get("optional"):
            return {}
        raise VolumeError(f"volume {volume}: {kind} {namespace}/{name} not found")
    data = _data(kind, obj)
    items = source.get("items")
    chosen = (
        [(i["key"], i.get("path", i["key"]), i.get("mode")) for i in items] if items else [(k, k, None) for k in data]
    )
    files = {}
    for key, relative, mode in chosen:
        if key not in data:
            if source.get("optional"):
                continue
            raise VolumeError(f"volume {volume}: {kind} {namespace}/{name} has no key {key!r}")
        files[_relative(volume, relative)] = File(data[key], int(mode) if mode is not None else default_mode)
    return files


def _data(kind: str, obj: dict[str, Any]) -> dict[str, bytes]:
    out = {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
    if kind == "secret":
        out = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        out |= {k: str(v).encode() for k, v in (obj.get("stringData") or {}).items()}
    else:
        out |= {k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()}
    return out


def _downward(
    pod: dict[str, Any], volume: str, items: list[dict[str, Any]], status: dict[str, str], default_mode: int
) -> dict[str, File]:
    files = {}
    for item in items:
        mode = int(item["mode"]) if item.get("mode") is not None else default_mode
        if "fieldRef" in item:
            path = item["fieldRef"].get("fieldPath", "")
            if path in ("metadata.labels", "metadata.annotations"):
                mapping = (pod.get("metadata") or {}).get(path.split(".")[1]) or {}
                value = "\n".join(f"{k}={_quoted(v)}" for k, v in sorted(mapping.items()))
            else:
                value = field_value(pod, path, status)
        elif "resourceFieldRef" in item:
            ref = item["resourceFieldRef"]
            value = resource_value(pod, ref.get("containerName", ""), ref.get("resource", ""), ref.get("divisor"))
        else:
            raise VolumeError(f"volume {volume}: downwardAPI item {item.get('path')!r} has no fieldRef")
        files[_relative(volume, item.get("path", ""))] = File(value.encode(), mode)
    return files


def _quoted(value: str) -> str:
    """As the kubelet writes label and annotation values: a Go-quoted string."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def _relative(volume: str, relative: str) -> str:
    parts = Path(relative).parts
    if not relative or Path(relative).is_absolute() or ".." in parts:
        raise VolumeError(f"volume {volume}: item path {relative!r} must be relative and stay inside the volume")
    return relative


def _sync_dir(target: Path, files: dict[str, File], *, extra_mode: int = 0) -> None:
    """Make ``target`` hold exactly ``files``: changed ones replaced atomically, unwanted ones removed.
    ``extra_mode``: permission bits fsGroup adds to every file."""
    for relative, given in files.items():
        path = target / relative
        wanted = File(given.content, given.mode | extra_mode)
        try:
            same = path.read_bytes() == wanted.content and (path.stat().st_mode & 0o777) == wanted.mode
        except OSError:
            same = False
        if same:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(wanted.content)
        tmp.chmod(wanted.mode)
        os.replace(tmp, path)  # readers never see half a file
    keep = {target / r for r in files}
    for path in sorted(target.rglob("*"), reverse=True):  # files first, then emptied directories
        if path.is_file() and path not in keep:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            with contextlib.suppress(OSError):
                path.rmdir()
