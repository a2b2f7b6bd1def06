"""The installed console scripts: useful --help, clear config errors, honest 'not built yet' exits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

BIN = Path(sys.executable).parent


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize("command", ["cloudcore", "edgecore", "keadm"])
def test_help_exits_zero_and_describes_the_command(command: str) -> None:
    out = run(command, "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: {command}")
    assert len(out.stdout.splitlines()) > 5


@pytest.mark.parametrize("sub", ["init", "gettoken", "join", "reset", "diagnose"])
def test_every_keadm_subcommand_has_help(sub: str) -> None:
    out = run("keadm", sub, "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: keadm {sub}")


def test_keadm_join_takes_kubeedges_flags() -> None:
    out = run("keadm", "join", "--help")
    for flag in (
        "--cloudcore-ipport",
        "--token",
        "--edgenode-name",
        "--remote-runtime-endpoint",
        "--labels",
        "--certport",
    ):
        assert flag in out.stdout


def test_gettoken_without_a_kubeconfig_says_so(tmp_path: Path) -> None:
    out = run("keadm", "gettoken", "--kube-config", str(tmp_path / "nope"))
    assert out.returncode == 2
    assert f"kubeconfig {tmp_path / 'nope'} does not exist" in out.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--cloudcore-ipport", "cloud"], "--cloudcore-ipport must be HOST:PORT, got 'cloud'"),
        (["--token", "abc"], "--token: malformed token"),
        (["--edgenode-name", "Bad_Name"], "node name 'Bad_Name' is not a valid node name"),
        (["--labels", "site"], "--labels: 'site' is not key=value"),
        (["--set", "modules.edgeHub.nosuch=1"], "unknown key 'nosuch'"),
        (["--set", "modules.edgeHub.heartbeat=soon"], "modules.edgeHub.heartbeat: Input should be a valid number"),
    ],
)
def test_join_checks_its_flags_before_touching_anything(tmp_path: Path, flags: list[str], message: str) -> None:
    args = {"--cloudcore-ipport": "127.0.0.1:1", "--token": "a" * 64 + ".b.c", "--edgenode-name": "edge-1"}
    for flag, value in zip(flags[::2], flags[1::2], strict=True):
        args[flag] = value
    argv = [item for pair in args.items() for item in pair]
    out = run("keadm", "join", *argv, "--root-dir", str(tmp_path))
    assert out.returncode == 1, out.stdout
    assert message in out.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["cloudcore", "edgecore"])
def test_defaultconfig_is_valid_yaml_that_loads_back(command: str, tmp_path: Path) -> None:
    out = run(command, "--defaultconfig")
    assert out.returncode == 0, out.stderr
    assert "modules" in yaml.safe_load(out.stdout)
    path = tmp_path / f"{command}.yaml"
    path.write_text(out.stdout)
    again = run(command, "--config", str(path))
    # config accepted, and then what it needs is checked: the edge's certificates; the cloud's API server
    # (without a CA file, cloudcore takes its CA from the cluster)
    assert again.returncode == 2
    if command == "cloudcore":
        assert "kubeAPIConfig.kubeConfig is empty" in again.stderr and "KUBERNETES_SERVICE_HOST" in again.stderr
    else:
        assert "modules.edgeHub.tlsCaFile: /etc/kubage/ca/rootCA.crt does not exist" in again.stderr


def test_bad_config_file_names_key_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "edgecore.yaml"
    path.write_text("modules:\n  edgeHub:\n    heartbeat: soon\n")
    out = run("edgecore", "--config", str(path))
    assert out.returncode == 2
    assert out.stderr.startswith(f"edgecore: {path}: modules.edgeHub.heartbeat: ")


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    out = run("cloudcore", "--config", str(tmp_path / "absent.yaml"))
    assert out.returncode == 2
    assert "config file not found" in out.stderr
