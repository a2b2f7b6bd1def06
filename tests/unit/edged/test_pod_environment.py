"""What a pod sees of its node: volumes (downward API, projected tokens, what is refused), DNS, /etc/hosts,
the bridge CNI configuration, service-account tokens kept for offline use, and the kubelet's events."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from common import upstream
from common.messages import Message, new_message
from common.upstream import Upstream
from edgecore.edged import network, volumes
from edgecore.edged.events import BURST, EventRecorder
from edgecore.edged.network import DnsSettings, NetworkSettings
from edgecore.edged.satokens import ServiceAccountTokens, TokenUnavailable
from edgecore.edged.spec import SpecError, environment, expand, kubernetes_service_env
from edgecore.metamanager.store import MetaStore


def pod(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "uid": "u1",
            "labels": {"app": "web", "tier": 'a"b'},
            "annotations": {"note": "x"},
        },
        "spec": {"containers": [{"name": "c", "image": "i", "resources": {"limits": {"cpu": "1500m"}}}], **spec},
    }


async def nothing(kind: str, namespace: str, name: str) -> Any:
    return None


# --- volumes -------------------------------------------------------------------------------------------------


async def test_downward_api_and_projected_token_files_follow_changes_and_drop_what_went(tmp_path: Path) -> None:
    tokens: list[str] = ["t1"]

    async def token(p: dict[str, Any], audience: str, seconds: int) -> str:
        assert (audience, seconds) == ("vault", 3607)
        return tokens[-1]

    projected = {
        "name": "api",
        "projected": {
            "sources": [
                {"serviceAccountToken": {"audience": "vault", "expirationSeconds": 3607, "path": "token"}},
                {"downwardAPI": {"items": [{"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
            ]
        },
    }
    downward: dict[str, Any] = {
        "name": "info",
        "downwardAPI": {
            "items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {"path": "ip", "fieldRef": {"fieldPath": "status.podIP"}},
                {"path": "cpu", "resourceFieldRef": {"containerName": "c", "resource": "limits.cpu", "divisor": "1m"}},
            ]
        },
    }
    p = pod(volumes=[projected, downward, {"name": "scratch", "emptyDir": {}}])
    paths = await volumes.prepare(p, tmp_path, nothing, token, status={"podIP": "10.244.1.5"})
    assert (paths["api"] / "token").read_text() == "t1" and (paths["api"] / "ns").read_text() == "shop"
    assert (paths["api"] / "token").stat().st_mode & 0o777 == 0o644  # Kubernetes' defaultMode 420
    assert (paths["info"] / "labels").read_text() == 'app="web"\ntier="a\\"b"'
    assert (paths["info"] / "ip").read_text() == "10.244.1.5"
    assert (paths["info"] / "cpu").read_text() == "1500"
    assert paths["scratch"].is_dir()
    # a rotated token and changed labels reach the files; an item no longer asked for goes
    tokens.append("t2")
    p["metadata"]["labels"] = {"app": "web2"}
    downward["downwardAPI"]["items"] = downward["downwardAPI"]["items"][:1]
    await volumes.prepare(p, tmp_path, nothing, token, status={"podIP": "10.244.1.5"})
    assert (paths["api"] / "token").read_text() == "t2"
    assert (paths["info"] / "labels").read_text() == 'app="web2"'
    assert not (paths["info"] / "ip").exists()


@pytest.mark.parametrize(
    ("volume", "message"),
    [
        ({"name": "d", "persistentVolumeClaim": {"claimName": "x"}}, "persistentVolumeClaim volumes are not supported"),
        ({"name": "d", "nfs": {"server": "s", "path": "/"}}, "nfs volumes are not supported"),
        ({"name": "d", "projected": {"sources": [{"clusterTrustBundle": {}}]}}, "projected clusterTrustBundle"),
        ({"name": "d", "configMap": {"name": "absent"}}, "configmap shop/absent not found"),
        ({"name": "d", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}, "no service-account"),
        (
            {"name": "d", "downwardAPI": {"items": [{"path": "../x", "fieldRef": {"fieldPath": "metadata.name"}}]}},
            "must be relative and stay inside the volume",
        ),
    ],
)
async def test_a_volume_the_edge_cannot_provide_is_refused_naming_why(
    tmp_path: Path, volume: dict[str, Any], message: str
) -> None:
    with pytest.raises(volumes.VolumeError, match=message):
        await volumes.prepare(pod(volumes=[volume]), tmp_path, nothing, None)


async def test_env_expands_references_and_reads_resources_and_the_kubernetes_service() -> None:
    container = {
        "name": "c",
        "env": [
            {"name": "A", "value": "one"},
            {"name": "B", "value": "$(A)-two-$(MISSING)-$$(A)"},
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "requests.memory"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        ],
    }
    p = pod()
    p["spec"]["containers"] = [{**container, "resources": {"limits": {"memory": "64Mi"}}}]
    env = await environment(
        p,
        p["spec"]["containers"][0],
        nothing,
        status={"podIP": "10.244.0.9"},
        base=kubernetes_service_env("10.9.9.9:6443"),
    )
    assert env["B"] == "one-two-$(MISSING)-$(A)"
    assert env["MEM"] == str(64 * 2**20)  # a request defaults to the limit
    assert env["IP"] == "10.244.0.9"
    assert env["KUBERNETES_SERVICE_HOST"] == "10.9.9.9" and env["KUBERNETES_PORT_6443_TCP_PORT"] == "6443"
    assert expand("$(A)", {}) == "$(A)"
    with pytest.raises(SpecError, match="unsupported resource"):
        await environment(
            p,
            {"name": "c", "env": [{"name": "X", "valueFrom": {"resourceFieldRef": {"resource": "limits.gpu"}}}]},
            nothing,
        )


# --- DNS and hosts -------------------------------------------------------------------------------------------


def test_dns_follows_the_pods_policy_as_the_kubelet_does(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 192.0.2.53\nsearch lan\noptions edns0\n")
    s = DnsSettings(cluster_dns=("10.0.0.10",), resolv_conf=resolv)
    first = network.dns_config(pod(), s)
    assert first.servers == ("10.0.0.10",)
    assert first.searches == ("shop.svc.cluster.local", "svc.cluster.local", "cluster.local", "lan")
    assert first.options == ("ndots:5",)
    assert network.dns_config(pod(hostNetwork=True), s).servers == ("192.0.2.53",)  # ClusterFirst → Default
    assert network.dns_config(pod(hostNetwork=True, dnsPolicy="ClusterFirstWithHostNet"), s).servers == ("10.0.0.10",)
    assert network.dns_config(pod(), DnsSettings(resolv_conf=resolv)).servers == ("192.0.2.53",)  # no cluster DNS
    none = network.dns_config(
        pod(
            dnsPolicy="None",
            dnsConfig={
                "nameservers": ["1.1.1.1"],
                "searches": ["a.example"],
                "options": [{"name": "ndots", "value": "1"}],
            },
        ),
        s,
    )
    assert (none.servers, none.searches, none.options) == (("1.1.1.1",), ("a.example",), ("ndots:1",))


def test_hosts_file_names_the_pod_and_its_aliases(tmp_path: Path) -> None:
    s = DnsSettings()
    p = pod(hostname="db-0", subdomain="db", hostAliases=[{"ip": "10.1.1.1", "hostnames": ["plc", "plc.local"]}])
    text = network.hosts_file(p, "10.244.3.4", s)
    assert text.startswith("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n")
    assert "10.244.3.4\tdb-0.db.shop.svc.cluster.local\tdb-0\n" in text
    assert text.endswith("# Entries added by HostAliases.\n10.1.1.1\tplc\tplc.local\n")
    host_hosts = tmp_path / "hosts"
    host_hosts.write_text("127.0.0.1 localhost\n192.0.2.1 gateway\n")
    assert "192.0.2.1 gateway" in network.hosts_file(pod(hostNetwork=True), "", s, host_hosts)
    assert network.hostname(pod()) == "web"


# --- the bridge CNI configuration ----------------------------------------------------------------------------


class Ready:
    def __init__(self) -> None:
        self.ready = (True, "")

    async def network_ready(self) -> tuple[bool, str]:
        return self.ready


async def test_bridge_mode_writes_its_config_from_the_node_cidr_and_leaves_an_existing_one_alone(
    tmp_path: Path,
) -> None:
    cidr = [""]

    async def node_cidr() -> str:
        return cidr[0]

    conf = tmp_path / "net.d"
    runtime = Ready()
    net = network.PodNetwork(NetworkSettings(cni_conf_dir=conf, ipam_dir=tmp_path / "ipam"), runtime, node_cidr)  # type: ignore[arg-type]
    assert "waiting for the node's pod CIDR" in await net.not_ready()
    cidr[0] = "10.244.7.0/24"
    assert await net.not_ready() == ""
    written = (conf / network.CONFIG_NAME).read_text()
    assert '"subnet": "10.244.7.0/24"' in written and '"type": "portmap"' in written
    runtime.ready = (False, "NetworkPluginNotReady: cni config uninitialized")
    assert "NetworkPluginNotReady" in await net.not_ready()
    runtime.ready = (True, "")
    (conf / network.CONFIG_NAME).unlink()
    (conf / "10-flannel.conflist").write_text("{}")
    assert await net.not_ready() == "" and not (conf / network.CONFIG_NAME).exists()
    off = network.PodNetwork(NetworkSettings(mode="none"), runtime, node_cidr)  # type: ignore[arg-type]
    assert "only hostNetwork pods run" in await off.not_ready()


def test_addresses_of_sandboxes_that_are_gone_are_freed(tmp_path: Path) -> None:
    ipam = tmp_path / network.NETWORK_NAME
    ipam.mkdir()
    (ipam / "10.244.0.2").write_text("live-sandbox\neth0")
    (ipam / "10.244.0.3").write_text("gone-sandbox\neth0")
    (ipam / "last_reserved_ip.0").write_text("10.244.0.3")
    (ipam / "lock").write_text("")
    net = network.PodNetwork(NetworkSettings(ipam_dir=tmp_path), Ready(), nothing)  # type: ignore[arg-type]
    assert net.release_leaked({"live-sandbox"}) == 1
    assert sorted(p.name for p in ipam.iterdir()) == ["10.244.0.2", "last_reserved_ip.0", "lock"]


# --- service-account tokens ----------------------------------------------------------------------------------


class Cloud:
    """What EdgeHub.request answers: a token valid for an hour from ``now``, or an error, or nothing."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.asked = 0
        self.offline = False

    async def __call__(self, message: Message, timeout: float) -> Message:  # noqa: ASYNC109
        self.asked += 1
        if self.offline:
            raise ConnectionError("not connected to CloudCore")
        expiry = upstream_time(self.clock[0] + 3600)
        return new_message(
            source="edgecontroller",
            group="resource",
            operation="response",
            now_ms=0,
            content={"status": {"token": f"token-{self.asked}", "expirationTimestamp": expiry}},
        )


def upstream_time(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_tokens_are_kept_renewed_at_80_percent_and_served_offline_until_they_expire(store: MetaStore) -> None:
    clock = [1_000_000.0]
    cloud = Cloud(clock)
    tokens = ServiceAccountTokens(store, cloud, clock=lambda: clock[0])
    assert await tokens.token(pod(), "", 3600) == "token-1"
    clock[0] += 0.79 * 3600
    assert await tokens.token(pod(), "", 3600) == "token-1" and cloud.asked == 1
    clock[0] += 0.02 * 3600  # past 80 %: a new one
    assert await tokens.token(pod(), "", 3600) == "token-2"
    cloud.offline = True
    clock[0] += 0.9 * 3600  # due again, the cloud unreachable: the kept one, still valid
    assert await tokens.token(pod(), "", 3600) == "token-2" and tokens.served_stale == 1
    clock[0] += 0.2 * 3600  # expired, offline: no token to serve
    with pytest.raises(TokenUnavailable, match="cannot ask CloudCore"):
        await tokens.token(pod(), "", 3600)
    await tokens.forget(set())
    assert await store.token_get("u1/default//3600") is None


# --- events --------------------------------------------------------------------------------------------------


class Outbox:
    def __init__(self) -> None:
        self.latest: dict[str, Upstream] = {}

    async def __call__(self, *messages: Upstream) -> None:
        for m in messages:
            self.latest[m.key] = m

    def pending(self) -> int:
        return len(self.latest)


async def test_events_are_counted_up_budgeted_per_object_and_bounded_while_offline() -> None:
    outbox, now = Outbox(), [0.0]
    recorder = EventRecorder(node="n1", publish=outbox, pending=outbox.pending, backlog=30, clock=lambda: now[0])
    for _ in range(3):
        await recorder.pod(pod(), "Warning", "BackOff", "Back-off restarting failed container c", container="c")
    [backoff] = outbox.latest.values()
    assert backoff.content["count"] == 3 and backoff.content["involvedObject"]["fieldPath"] == "spec.containers{c}"
    assert upstream.parse(_as_message(backoff)).involved.uid == "u1"  # type: ignore[union-attr]
    for i in range(BURST + 5):  # one object: a burst of 25 (3 taken already), then nothing for 5 minutes
        await recorder.pod(pod(), "Normal", "Started", f"Started container c{i}")
    assert recorder.throttled == 8 and len(outbox.latest) == BURST - 2
    other = {**pod(), "metadata": {**pod()["metadata"], "uid": "u2"}}
    for i in range(10):  # another object, while the backlog (30) fills up
        await recorder.pod(other, "Normal", "Started", f"Started container c{i}")
    assert len(outbox.latest) == 30 and recorder.dropped == 3


def _as_message(item: Upstream) -> Message:
    return new_message(
        source="edged",
        group=item.group,
        operation=item.operation,
        resource=item.resource,
        content=item.content,
        now_ms=0,
    )
