"""cloudcore.kubeconfig: what kubectl reads from a kubeconfig, and clear refusals for what it cannot use.

The happy path against a real API server is every integration test (the control plane's kubeconfig carries
inline client certificates); these cover the shapes that one does not."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloudcore.kubeconfig import KubeconfigError, from_kubeconfig, in_cluster
from common.pki import CertificateAuthority


def write(path: Path, cluster: dict[str, Any], user: dict[str, Any] | None = None, **top: Any) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user or {}}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "ctx",
        **top,
    }
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def ca_pem(tmp_path: Path) -> bytes:
    return CertificateAuthority.create("test-ca").cert_pem


def test_inline_ca_and_token(tmp_path: Path, ca_pem: bytes) -> None:
    data = base64.b64encode(ca_pem).decode()
    creds = from_kubeconfig(
        str(
            write(
                tmp_path / "kc",
                {"server": "https://10.0.0.1:6443/", "certificate-authority-data": data},
                {"token": "abc"},
            )
        )
    )
    assert creds.server == "https://10.0.0.1:6443"
    assert Path(creds.ca_file).read_bytes() == ca_pem  # written out: the stream server needs it as a file
    assert creds.authorization() == "Bearer abc"
    assert isinstance(creds.ssl_context, ssl.SSLContext)
    assert creds.ssl_context.verify_mode == ssl.CERT_REQUIRED


def test_relative_paths_and_token_file(tmp_path: Path, ca_pem: bytes) -> None:
    (tmp_path / "ca.crt").write_bytes(ca_pem)
    (tmp_path / "token").write_text("from-file\n")
    kc = write(tmp_path / "kc", {"server": "https://h:6443", "certificate-authority": "ca.crt"}, {"tokenFile": "token"})
    creds = from_kubeconfig(str(kc))
    assert creds.ca_file == str(tmp_path / "ca.crt")
    assert creds.authorization() == "Bearer from-file"


def test_insecure_skip_verify(tmp_path: Path) -> None:
    creds = from_kubeconfig(str(write(tmp_path / "kc", {"server": "https://h:6443", "insecure-skip-tls-verify": True})))
    assert creds.ssl_context is not None and creds.ssl_context.verify_mode == ssl.CERT_NONE
    assert creds.authorization() is None


@pytest.mark.parametrize(
    ("cluster", "user", "top", "message"),
    [
        ({"server": "https://h"}, {"exec": {"command": "aws"}}, {}, "authenticates with exec, not supported"),
        ({"server": "https://h"}, {"auth-provider": {"name": "gcp"}}, {}, "authenticates with auth-provider"),
        ({"server": ""}, {}, {}, "has no https:// server"),
        ({"server": "https://h", "certificate-authority": "missing.crt"}, {}, {}, "missing.crt does not exist"),
        ({"server": "https://h", "certificate-authority-data": "%%%"}, {}, {}, "is not base64"),
        ({"server": "https://h"}, {"client-certificate-data": "QUJD"}, {}, "without the other"),
        ({"server": "https://h"}, {}, {"current-context": "other"}, "no context named 'other'"),
    ],
)
def test_refusals_name_the_problem(
    tmp_path: Path, cluster: dict[str, Any], user: dict[str, Any], top: dict[str, Any], message: str
) -> None:
    with pytest.raises(KubeconfigError, match=message):
        from_kubeconfig(str(write(tmp_path / "kc", cluster, user, **top)))


def test_not_a_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "kc").write_text("- just\n- a list\n")
    with pytest.raises(KubeconfigError, match="not a kubeconfig"):
        from_kubeconfig(str(tmp_path / "kc"))
    with pytest.raises(KubeconfigError, match="No such file"):
        from_kubeconfig(str(tmp_path / "absent"))


def test_in_cluster_needs_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubeconfigError, match="not in a cluster"):
        in_cluster()
