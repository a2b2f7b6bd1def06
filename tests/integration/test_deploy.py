"""deploy/ is what `keadm init` (or `kubectl apply -f deploy/`) installs: every manifest must be accepted by a
real API server, agree with the others and with cloudcore.yaml's schema; the edge's systemd unit must keep
the watchdog and restart settings EdgeCore relies on."""

from __future__ import annotations

import configparser
import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloudcore import config as cloudcore_config
from cloudcore.certs import ensure_namespace
from cloudcore.kube import ApiError, Kube, KubeError
from keadm import init

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def documents() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, doc) for path in sorted(DEPLOY.rglob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc
    ]


def the(kind: str) -> dict[str, Any]:
    found = [doc for _, doc in documents() if doc["kind"] == kind and doc["metadata"]["name"] == "cloudcore"]
    assert len(found) == 1, f"expected one {kind} named cloudcore in deploy/"
    return found[0]


def test_keadm_init_installs_every_manifest_in_deploy() -> None:
    installed = {path for _, paths in init.manifest_files(DEPLOY) for path in paths}
    assert installed == set(DEPLOY.rglob("*.yaml")), "a manifest in deploy/ that keadm init would not apply"
    assert init.deploy_dir() == DEPLOY  # found from the source checkout


async def test_every_manifest_is_accepted_by_the_api_server(kube: Kube) -> None:
    # Namespaced objects cannot even be dry-run into a namespace that does not exist.
    await ensure_namespace(kube)
    applied = []
    for path, doc in documents():
        try:
            result = await init.apply(kube, doc, force=True, dry_run=True)
        except KubeError as exc:
            pytest.fail(f"{path.relative_to(ROOT)}: {init.describe(doc)} refused: {exc}")
        assert result["kind"] == doc["kind"]
        assert result["metadata"]["name"] == doc["metadata"]["name"]
        applied.append(init.describe(doc))
    kinds = {entry.split()[0] for entry in applied}
    assert {"Namespace", "CustomResourceDefinition", "ClusterRole", "Role", "Deployment", "Service"} <= kinds


@pytest.mark.parametrize(
    ("named", "breaks"),
    [
        (
            "containerPort",
            lambda d: d["spec"]["template"]["spec"]["containers"][0]["ports"][0].update(containerPort=70000),
        ),
        (".spec.replica", lambda d: d["spec"].update(replica=3)),  # a misspelt field
    ],
)
async def test_a_broken_manifest_is_refused(kube: Kube, named: str, breaks: Any) -> None:
    """The dry run really validates: without this, the test above would pass against a server accepting anything."""
    await ensure_namespace(kube)
    broken = copy.deepcopy(the("Deployment"))
    breaks(broken)
    with pytest.raises(ApiError) as refused:
        await init.apply(kube, broken, force=True, dry_run=True)
    # An invalid value is 422; an undeclared field in an apply patch comes back as 500 "field not declared in
    # schema" from this kube-apiserver. Either way the message names what is wrong.
    assert refused.value.status in (400, 422, 500)
    assert named in str(refused.value)


def test_cloudcore_yaml_in_the_configmap_is_a_valid_cloudcore_config(tmp_path: Path) -> None:
    text = the("ConfigMap")["data"]["cloudcore.yaml"]
    path = tmp_path / "cloudcore.yaml"
    path.write_text(text)
    loaded = cloudcore_config.load(path)  # unknown keys are refused, so a typo fails here
    hub = loaded.modules.cloud_hub
    # Probes come from outside the pod: loopback would make every pod fail its probes.
    assert loaded.common_config.monitor_server.bind_address.startswith("0.0.0.0:")
    assert loaded.kube_api_config.kube_config == ""
    # keadm init fills this in; it must start empty and in the form keadm edits.
    assert hub.advertise_address == []
    rendered = init.render(init.load_manifests(DEPLOY), advertise=["192.0.2.10"], image="r/cloudcore:1")
    configmap = next(o for g in rendered for o in g.objects if o["kind"] == "ConfigMap")
    path.write_text(configmap["data"]["cloudcore.yaml"])
    assert cloudcore_config.load(path).modules.cloud_hub.advertise_address == ["192.0.2.10"]


def test_the_deployment_agrees_with_the_config_and_the_service() -> None:
    deployment = the("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    settings = yaml.safe_load(the("ConfigMap")["data"]["cloudcore.yaml"])
    hub = settings["modules"]["cloudHub"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}

    # The config file CloudCore is told to read is the ConfigMap's.
    config_path = container["args"][container["args"].index("--config") + 1]
    assert mounts[config_path]["subPath"] == "cloudcore.yaml"
    assert volumes[mounts[config_path]["name"]]["configMap"]["name"] == "cloudcore"
    # CloudCore writes the CA and its serving certificate at start: each lands in a writable emptyDir, since
    # the root filesystem is read-only.
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    for key in ("tlsCAFile", "tlsCAKeyFile", "tlsCertFile", "tlsPrivateKeyFile"):
        directory = str(Path(hub[key]).parent)
        assert directory in mounts, f"{key} is not on a mounted volume"
        assert "emptyDir" in volumes[mounts[directory]["name"]]
        assert not mounts[directory].get("readOnly")

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["cloudhub"] == hub["websocket"]["port"]
    assert ports["https"] == hub["https"]["port"]
    monitor_port = int(settings["commonConfig"]["monitorServer"]["bindAddress"].rsplit(":", 1)[1])
    assert ports["monitor"] == monitor_port
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "monitor"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "monitor"}

    service = the("Service")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert {(p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        (10000, "cloudhub"),
        (10002, "https"),
        (10003, "stream"),
    }
    assert ports["stream"] == 10003  # modules.cloudStream.streamPort's default
    assert deployment["spec"]["replicas"] == 2
    assert pod["serviceAccountName"] == "cloudcore"
    assert pod["securityContext"]["runAsNonRoot"] is True

    # The image runs as the uid the Deployment demands.
    user = re.search(r"^USER (\d+)", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)
    assert user is not None
    assert int(user.group(1)) == pod["securityContext"]["runAsUser"]


def test_edgecore_unit_is_notify_with_watchdog_and_always_restarts() -> None:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    unit.read_string((DEPLOY / "edgecore.service").read_text())
    service = unit["Service"]
    # EdgeCore sends READY=1 and WATCHDOG=1 itself (common/systemd.py); with Type=simple neither is heard.
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    watchdog = re.fullmatch(r"(\d+)s?", service["WatchdogSec"])
    assert watchdog is not None
    assert 0 < int(watchdog.group(1)) <= 60
    assert service["Restart"] == "always"
    assert service["RestartSec"]
    # Pods' containers must survive an EdgeCore restart.
    assert service["KillMode"] == "process"
    assert service["ExecStart"].split() == ["/usr/local/bin/edgecore", "--config", "/etc/kubage/edgecore.yaml"]
    assert "network-online.target" in unit["Unit"]["After"].split()
    assert "containerd.service" in unit["Unit"]["After"].split()
    assert unit["Install"]["WantedBy"] == "multi-user.target"
