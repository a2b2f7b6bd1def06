"""A pod's and a container's securityContext, resolved as the kubelet resolves them, for the runtime.

Container fields override the pod's (``runAsUser``, ``runAsGroup``, ``runAsNonRoot``, ``seccompProfile``);
``supplementalGroups`` and ``fsGroup`` are pod-wide extra groups of every container. ``runAsNonRoot`` is
checked against the user the container will really run as (the spec's, else the image's), with the kubelet's
own refusals; sysctls are split into the safe set any pod may use and the rest, which need the node to allow
them. Pure: no runtime and no files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The kubelet's safe sysctls (namespaced, and isolated from the node): any pod may set them.
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
        "net.ipv4.tcp_rmem",
        "net.ipv4.tcp_wmem",
    }
)


class SecurityError(Exception):
    """The container may not run as its spec and image say; the message is the kubelet's reason."""


class Rejected(SecurityError):
    """The node refuses the whole pod (as the kubelet's admission does): it fails with ``reason``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Capabilities:
    add: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()


@dataclass(frozen=True)
class ContainerSecurity:
    """What the runtime applies to one container."""

    run_as_user: int | None = None
    run_as_group: int | None = None
    supplemental_groups: tuple[int, ...] = ()
    privileged: bool = False
    readonly_rootfs: bool = False
    no_new_privs: bool = False
    capabilities: Capabilities = field(default_factory=Capabilities)
    seccomp: str = "Unconfined"  # RuntimeDefault, Unconfined or Localhost (the kubelet's default is Unconfined)
    seccomp_localhost: str = ""
    host_pid: bool = False
    host_ipc: bool = False
    share_pid: bool = False  # shareProcessNamespace: one PID namespace for the pod


@dataclass(frozen=True)
class SandboxSecurity:
    """What the runtime applies to the pod's sandbox."""

    host_pid: bool = False
    host_ipc: bool = False
    share_pid: bool = False
    sysctls: dict[str, str] = field(default_factory=dict)
    run_as_user: int | None = None
    run_as_group: int | None = None
    supplemental_groups: tuple[int, ...] = ()
    privileged: bool = False  # any container privileged: the sandbox must be too


def _pod_context(pod: dict[str, Any]) -> dict[str, Any]:
    return dict((pod.get("spec") or {}).get("securityContext") or {})


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def fs_group(pod: dict[str, Any]) -> int | None:
    """The pod's fsGroup: the group that owns its volumes and that every container is a member of."""
    return _int_or_none(_pod_context(pod).get("fsGroup"))


def sandbox_security(pod: dict[str, Any], allowed_unsafe_sysctls: frozenset[str] = frozenset()) -> SandboxSecurity:
    """The sandbox's settings; Rejected for a pod this node refuses (another OS, a sysctl it does not allow)."""
    spec = pod.get("spec") or {}
    context = _pod_context(pod)
    wanted_os = str((spec.get("os") or {}).get("name") or "linux")
    if wanted_os != "linux":
        raise Rejected("PodOSNotSupported", "Failed to admit pod as the OS field doesn't match node OS")
    sysctls: dict[str, str] = {}
    for item in context.get("sysctls") or []:
        name, value = normalized_sysctl(str(item.get("name", ""))), str(item.get("value", ""))
        if name not in SAFE_SYSCTLS and not _allowed(name, allowed_unsafe_sysctls):
            raise Rejected("SysctlForbidden", f'Pod was rejected: forbidden sysctl: "{name}" not allowlisted')
        sysctls[name] = value
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    return SandboxSecurity(
        host_pid=bool(spec.get("hostPID")),
        host_ipc=bool(spec.get("hostIPC")),
        share_pid=bool(spec.get("shareProcessNamespace")),
        sysctls=sysctls,
        run_as_user=_int_or_none(context.get("runAsUser")),
        run_as_group=_int_or_none(context.get("runAsGroup")),
        supplemental_groups=_groups(context),
        privileged=any(bool((c.get("securityContext") or {}).get("privileged")) for c in containers),
    )


def normalized_sysctl(name: str) -> str:
    """``kernel/shm_rmid_forced`` → ``kernel.shm_rmid_forced``: with slashes as separators, a dot is part of a
    name (an interface's, ``eno2.100``), so the two swap, as the kubelet does."""
    if "/" not in name:
        return name
    return name.translate(str.maketrans("./", "/."))


def _allowed(name: str, allowed: frozenset[str]) -> bool:
    """``allowedUnsafeSysctls`` entries are names or prefixes ending in ``*`` (``kernel.msg*``)."""
    return any(name == a or (a.endswith("*") and name.startswith(a[:-1])) for a in allowed)


def _groups(context: dict[str, Any]) -> tuple[int, ...]:
    groups = [int(g) for g in context.get("supplementalGroups") or []]
    if context.get("fsGroup") is not None:
        groups.append(int(context["fsGroup"]))
    return tuple(dict.fromkeys(groups))


def container_security(
    pod: dict[str, Any], container: dict[str, Any], *, image_uid: int | None, image_user: str = ""
) -> ContainerSecurity:
    """The container's settings, the pod's as defaults; SecurityError when runAsNonRoot cannot hold.

    ``image_uid``/``image_user``: the user the image runs as (CRI ImageStatus: a uid, or a name)."""
    spec = pod.get("spec") or {}
    pod_context = _pod_context(pod)
    own = dict(container.get("securityContext") or {})

    def pick(key: str) -> Any:
        return own[key] if own.get(key) is not None else pod_context.get(key)

    run_as_user = _int_or_none(pick("runAsUser"))
    if pick("runAsNonRoot"):
        _check_non_root(pod, container, run_as_user, image_uid, image_user)
    privileged = bool(own.get("privileged"))
    escalation = own.get("allowPrivilegeEscalation")
    capabilities = own.get("capabilities") or {}
    seccomp = pick("seccompProfile") or {}
    return ContainerSecurity(
        run_as_user=run_as_user,
        run_as_group=_int_or_none(pick("runAsGroup")),
        supplemental_groups=_groups(pod_context),
        privileged=privileged,
        readonly_rootfs=bool(own.get("readOnlyRootFilesystem")),
        # The kubelet: no_new_privs unless escalation is allowed (unset counts as allowed) or the container is
        # privileged or has CAP_SYS_ADMIN.
        no_new_privs=escalation is False and not privileged,
        capabilities=Capabilities(
            add=tuple(str(c) for c in capabilities.get("add") or []),
            drop=tuple(str(c) for c in capabilities.get("drop") or []),
        ),
        seccomp=str(seccomp.get("type") or "Unconfined"),
        seccomp_localhost=str(seccomp.get("localhostProfile") or ""),
        host_pid=bool(spec.get("hostPID")),
        host_ipc=bool(spec.get("hostIPC")),
        share_pid=bool(spec.get("shareProcessNamespace")),
    )


def _check_non_root(
    pod: dict[str, Any], container: dict[str, Any], run_as_user: int | None, image_uid: int | None, image_user: str
) -> None:
    where = f"(pod: {_kubelet_pod_name(pod)}, container: {container.get('name', '')})"
    if run_as_user is not None:
        if run_as_user == 0:
            raise SecurityError(f"container's runAsUser breaks non-root policy {where}")
        return
    if image_uid is None and image_user and not image_user.isdigit():
        raise SecurityError(
            f"container has runAsNonRoot and image has non-numeric user ({image_user}), cannot verify user is "
            f"non-root {where}"
        )
    if image_uid is None or image_uid == 0:
        raise SecurityError(f"container has runAsNonRoot and image will run as root {where}")


def _kubelet_pod_name(pod: dict[str, Any]) -> str:
    m = pod.get("metadata") or {}
    return f"{m.get('name', '')}_{m.get('namespace', 'default')}({m.get('uid', '')})"
