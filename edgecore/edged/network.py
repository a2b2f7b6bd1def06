"""Pod networking, DNS and /etc/hosts: what a pod outside the host network gets, as under the kubelet.

``modules.edged.network`` says who provides the network:

* ``bridge`` (the default): when the runtime's CNI directory holds no configuration of its own, EdgeCore
  writes one: a Linux bridge with host-local addresses from the node's pod CIDR (``Node.spec.podCIDR`` as the
  controller-manager allocates it, or ``modules.edged.podCIDR``) and the portmap plugin for ``hostPort``. The
  plugins are the standard ones (Debian's containernetworking-plugins); the runtime runs them.
* ``existing``: the operator's CNI (flannel, calico, …) is in place; EdgeCore only waits until the runtime
  reports it ready.
* ``none``: only host-network pods run; any other is refused with the reason.

Addresses are handed out by host-local under EdgeCore's own directory, so that an address left behind (its
sandbox gone while EdgeCore was down) can be found and freed at start (``release_leaked``).
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.logging import get_logger
from edgecore.edged.runtime import ContainerRuntime, DnsConfig

log = get_logger(__name__)

CONFIG_NAME = "10-kubage.conflist"
NETWORK_NAME = "kubage"
CONFIG_SUFFIXES = (".conf", ".conflist", ".json")
HOSTS_HEADER = "# Kubernetes-managed hosts file.\n"
LOCAL_HOSTS = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "fe00::0\tip6-mcastprefix\n"
    "fe00::1\tip6-allnodes\n"
    "fe00::2\tip6-allrouters\n"
)


@dataclass(frozen=True)
class NetworkSettings:
    mode: str = "bridge"  # bridge, existing or none
    cni_conf_dir: Path = Path("/etc/cni/net.d")
    pod_cidr: str = ""  # empty: Node.spec.podCIDR
    bridge_name: str = "kubage0"
    masquerade: bool = True
    ipam_dir: Path = Path("/var/lib/kubage/cni/networks")


class PodNetwork:
    """Whether a pod outside the host network can have a network now, making it so where EdgeCore can."""

    def __init__(
        self, settings: NetworkSettings, runtime: ContainerRuntime, node_cidr: Callable[[], Awaitable[str]]
    ) -> None:
        self.settings = settings
        self._runtime = runtime
        self._node_cidr = node_cidr
        self._announced = ""

    async def not_ready(self) -> str:
        """Why pods outside the host network cannot start now; empty when they can."""
        s = self.settings
        if s.mode == "none":
            return "pod networking is off on this node (modules.edged.network: none): only hostNetwork pods run"
        if s.mode == "bridge":
            waiting = await self._configure()
            if waiting:
                return waiting
        ready, why = await self._runtime.network_ready()
        if not ready:
            return f"the container runtime's network is not ready: {why}"
        return ""

    async def _configure(self) -> str:
        s = self.settings
        theirs = sorted(
            p.name
            for p in (s.cni_conf_dir.iterdir() if s.cni_conf_dir.is_dir() else [])
            if p.suffix in CONFIG_SUFFIXES and p.name != CONFIG_NAME
        )
        if theirs:  # the runtime has a CNI configuration of its own: it is used as it is
            self._announce(f"existing:{theirs[0]}", "cni_config_existing", file=theirs[0])
            return ""
        cidr = s.pod_cidr or await self._node_cidr()
        if not cidr:
            return "waiting for the node's pod CIDR (Node.spec.podCIDR, or set modules.edged.podCIDR)"
        wanted = json.dumps(bridge_config(s, cidr), indent=2) + "\n"
        path = s.cni_conf_dir / CONFIG_NAME
        try:
            current = path.read_text()
        except OSError:
            current = ""
        if current != wanted:
            s.cni_conf_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{CONFIG_NAME}.tmp")
            tmp.write_text(wanted)
            os.replace(tmp, path)  # the runtime watches the directory: it must never read half a file
            log.info("cni_config_written", path=str(path), subnet=cidr, bridge=s.bridge_name)
        self._announce(f"bridge:{cidr}", "pod_network", subnet=cidr)
        return ""

    def _announce(self, state: str, event: str, **fields: Any) -> None:
        if state != self._announced:
            self._announced = state
            log.info(event, **fields)

    def release_leaked(self, live_sandboxes: set[str]) -> int:
        """Free host-local addresses whose sandbox no longer exists (its teardown never ran); how many."""
        directory = self.settings.ipam_dir / NETWORK_NAME
        freed = 0
        for entry in directory.glob("*") if directory.is_dir() else []:
            try:
                ipaddress.ip_address(entry.name)
                owner = entry.read_text().split()[0] if entry.read_text().strip() else ""
            except (ValueError, OSError):
                continue  # the lock file, last_reserved_ip.*, or something not ours
            if owner and owner not in live_sandboxes:
                entry.unlink(missing_ok=True)
                freed += 1
        if freed:
            log.info("pod_addresses_released", count=freed, reason="their sandboxes are gone")
        return freed


def bridge_config(s: NetworkSettings, cidr: str) -> dict[str, Any]:
    return {
        "cniVersion": "0.4.0",
        "name": NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": s.bridge_name,
                "isGateway": True,  # the bridge has the subnet's first address: the node reaches its pods
                "ipMasq": s.masquerade,
                "hairpinMode": True,  # a pod reaches itself through its own hostPort
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(s.ipam_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


# --- DNS -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DnsSettings:
    cluster_dns: tuple[str, ...] = ()
    cluster_domain: str = "cluster.local"
    resolv_conf: Path = Path("/etc/resolv.conf")


@dataclass
class _Resolv:
    servers: list[str] = field(default_factory=list)
    searches: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)


def _host_resolv(path: Path) -> _Resolv:
    out = _Resolv()
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if words[0] == "nameserver" and len(words) > 1:
            out.servers.append(words[1])
        elif words[0] in ("search", "domain"):
            out.searches = words[1:]
        elif words[0] == "options":
            out.options.extend(words[1:])
    return out


def dns_config(pod: dict[str, Any], s: DnsSettings) -> DnsConfig:
    """The pod's resolv.conf by its dnsPolicy and dnsConfig, as the kubelet computes it."""
    spec = pod.get("spec") or {}
    host_network = bool(spec.get("hostNetwork"))
    policy = spec.get("dnsPolicy") or "ClusterFirst"
    if policy == "ClusterFirstWithHostNet":
        policy = "ClusterFirst"
    elif policy == "ClusterFirst" and host_network:
        policy = "Default"
    if policy == "ClusterFirst" and not s.cluster_dns:
        policy = "Default"  # no cluster DNS on this node: the kubelet falls back the same way
    resolv = _Resolv()
    if policy == "Default":
        resolv = _host_resolv(s.resolv_conf)
    elif policy == "ClusterFirst":
        namespace = pod["metadata"].get("namespace", "default")
        domain = s.cluster_domain
        host = _host_resolv(s.resolv_conf)
        resolv = _Resolv(
            list(s.cluster_dns), [f"{namespace}.svc.{domain}", f"svc.{domain}", domain, *host.searches], ["ndots:5"]
        )
    extra = spec.get("dnsConfig") or {}
    resolv.servers.extend(extra.get("nameservers") or [])
    for search in extra.get("searches") or []:
        if search not in resolv.searches:
            resolv.searches.append(search)
    options = {o.split(":", 1)[0]: o for o in resolv.options}
    for option in extra.get("options") or []:
        name, value = option.get("name", ""), option.get("value")
        if name:
            options[name] = f"{name}:{value}" if value is not None else name
    return DnsConfig(tuple(resolv.servers[:3]), tuple(resolv.searches[:32]), tuple(options.values()))


# --- /etc/hosts ------------------------------------------------------------------------------------------


def hostname(pod: dict[str, Any], cluster_domain: str = "cluster.local") -> str:
    """The pod's hostname: ``hostnameOverride``, else ``hostname`` or the pod's name (its FQDN with
    ``setHostnameAsFQDN`` and a subdomain), as the kubelet sets it."""
    spec = pod.get("spec") or {}
    if spec.get("hostnameOverride"):
        return str(spec["hostnameOverride"])
    name = str(spec.get("hostname") or pod["metadata"]["name"])[:63]
    if spec.get("setHostnameAsFQDN") and spec.get("subdomain"):
        return _fqdn(pod, name, cluster_domain)
    return name


def _fqdn(pod: dict[str, Any], name: str, domain: str) -> str:
    spec = pod.get("spec") or {}
    namespace = pod["metadata"].get("namespace", "default")
    return f"{name}.{spec['subdomain']}.{namespace}.svc.{domain}"


def hosts_file(pod: dict[str, Any], pod_ip: str, s: DnsSettings, host_hosts: Path = Path("/etc/hosts")) -> str:
    """The /etc/hosts the kubelet gives a pod: localhost, the pod's own names, then its hostAliases; a
    host-network pod gets the node's file instead of the first two."""
    spec = pod.get("spec") or {}
    if spec.get("hostNetwork"):
        try:
            base = "# Kubernetes-managed hosts file (host network).\n" + host_hosts.read_text()
        except OSError:
            base = "# Kubernetes-managed hosts file (host network).\n" + LOCAL_HOSTS
    else:
        name = hostname(pod, s.cluster_domain)
        own = name
        if spec.get("subdomain") and not spec.get("hostnameOverride"):
            short = str(spec.get("hostname") or pod["metadata"]["name"])[:63]
            own = f"{_fqdn(pod, short, s.cluster_domain)}\t{short}"
        base = HOSTS_HEADER + LOCAL_HOSTS + (f"{pod_ip}\t{own}\n" if pod_ip else "")
    aliases = spec.get("hostAliases") or []
    if aliases:
        base += "\n# Entries added by HostAliases.\n"
        for alias in aliases:
            base += f"{alias.get('ip', '')}\t{chr(9).join(alias.get('hostnames') or [])}\n"
    return base
