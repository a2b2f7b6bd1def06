"""CertRotator's schedule and the recovery of a rotation cut short, on real certificates (no server)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography import x509

from common.pki import CertificateAuthority, cert_pem, key_pem, write_pair
from edgecore.certmanager import CertRotator, complete_interrupted_rotation
from edgecore.certmanager.rotation import validity


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, CertificateAuthority]:
    ca = CertificateAuthority.create("test-ca")
    (tmp_path / "ca.crt").write_bytes(cert_pem(ca.cert))
    key, cert = ca.issue_node("edge-1", days=100)
    cert_file, key_file = write_pair(tmp_path, "server", key, cert)
    return cert_file, key_file, ca


@pytest.mark.parametrize(("draw", "fraction"), [(0.0, 0.7), (0.5, 0.8), (1.0, 0.9)])
def test_renewal_falls_at_70_to_90_percent_of_the_lifetime(
    pair: tuple[Path, Path, CertificateAuthority], draw: float, fraction: float
) -> None:
    cert_file, key_file, _ = pair
    rotator = CertRotator(
        node="edge-1",
        cert_file=cert_file,
        key_file=key_file,
        ca_file=cert_file.parent / "ca.crt",
        https_server="https://127.0.0.1:10002",
        ssl_context=ssl.create_default_context(),
        rng=lambda: draw,
    )

    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    start, end = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
    assert rotator.deadline() == pytest.approx(start + fraction * (end - start))


def test_a_bad_https_server_is_refused_at_start(pair: tuple[Path, Path, CertificateAuthority]) -> None:
    cert_file, key_file, _ = pair
    with pytest.raises(ValueError, match="httpServer must be https://HOST:PORT"):
        CertRotator(
            node="edge-1",
            cert_file=cert_file,
            key_file=key_file,
            ca_file=cert_file,
            https_server="127.0.0.1:10002",
            ssl_context=ssl.create_default_context(),
        )


def test_a_rotation_cut_after_the_key_moved_is_finished(pair: tuple[Path, Path, CertificateAuthority]) -> None:
    cert_file, key_file, ca = pair
    key, cert = ca.issue_node("edge-1")
    key_file.write_bytes(key_pem(key))  # the new key was renamed into place...
    cert_file.with_name(cert_file.name + ".new").write_bytes(cert_pem(cert))  # ...its certificate was not
    complete_interrupted_rotation(cert_file, key_file)
    ssl.create_default_context().load_cert_chain(cert_file, key_file)  # a matching pair again
    assert not cert_file.with_name(cert_file.name + ".new").exists()


def test_a_rotation_cut_before_any_rename_leaves_the_old_pair(pair: tuple[Path, Path, CertificateAuthority]) -> None:
    cert_file, key_file, ca = pair
    before = cert_file.read_bytes(), key_file.read_bytes()
    key, cert = ca.issue_node("edge-1")
    cert_file.with_name(cert_file.name + ".new").write_bytes(cert_pem(cert))
    key_file.with_name(key_file.name + ".new").write_bytes(key_pem(key))
    complete_interrupted_rotation(cert_file, key_file)
    assert (cert_file.read_bytes(), key_file.read_bytes()) == before
    assert list(cert_file.parent.glob("*.new")) == []


def test_validity_from_the_ssl_module_agrees_with_cryptography(pair: tuple[Path, Path, CertificateAuthority]) -> None:
    cert_file, _, _ = pair
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    # whole seconds: that is what certificates hold
    assert validity(cert_file) == (cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp())
