"""Where ``keadm join`` puts an edge node's files, under a root directory ("/" on a real gateway; a temp dir
in tests and ``make demo``, where nothing is installed into systemd)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def default_kubeconfig() -> str:
    """$KUBECONFIG (its first file, when it lists several), else ~/.kube/config, as kubectl looks."""
    first = next((p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p), "")
    return first or str(Path.home() / ".kube" / "config")


def deploy_dir() -> Path | None:
    """deploy/ (manifests, CRDs, the edgecore unit): inside the installed package (the wheel force-includes it
    as keadm/deploy), else the source checkout's, beside the keadm package. None when neither is there."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "deploy", here.parent / "deploy"):
        if (candidate / "crds").is_dir() and (candidate / "edgecore.service").is_file():
            return candidate
    return None


@dataclass(frozen=True)
class EdgeLayout:
    root: Path = Path("/")

    @property
    def installs_systemd(self) -> bool:
        """Only a join into the real root installs and starts the systemd unit."""
        return self.root.resolve() == Path("/")

    @property
    def etc(self) -> Path:
        return self.root / "etc" / "kubage"

    @property
    def config(self) -> Path:
        return self.etc / "edgecore.yaml"

    @property
    def ca_file(self) -> Path:
        return self.etc / "ca" / "rootCA.crt"

    @property
    def cert_file(self) -> Path:
        return self.etc / "certs" / "server.crt"

    @property
    def key_file(self) -> Path:
        return self.etc / "certs" / "server.key"

    @property
    def var(self) -> Path:
        return self.root / "var" / "lib" / "kubage"

    @property
    def database(self) -> Path:
        return self.var / "edgecore.db"

    @property
    def sedna_root(self) -> Path:
        """The local controller's Datasets and weights in transit."""
        return self.var / "sedna"

    @property
    def edged_root(self) -> Path:
        return self.var / "edged"

    @property
    def unit_file(self) -> Path:
        return self.root / "etc" / "systemd" / "system" / "edgecore.service"
