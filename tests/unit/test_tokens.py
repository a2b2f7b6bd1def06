"""Join tokens: what they pin, and every way one is refused, named."""

from __future__ import annotations

import pytest

from common import tokens
from common.pki import CertificateAuthority

CA = CertificateAuthority.create("token-test-ca")
NOW = 1_800_000_000.0


def test_a_token_pins_the_ca_and_carries_its_node() -> None:
    token = tokens.issue(CA, ttl_s=60, node="gw-1", now=NOW)
    assert tokens.ca_hash(token) == CA.fingerprint
    claims = tokens.verify(CA, token, node="gw-1", now=NOW + 59)
    assert (claims.node, claims.exp) == ("gw-1", int(NOW + 60))
    shared = tokens.verify(CA, tokens.issue(CA, ttl_s=60, now=NOW), node="anyone", now=NOW)
    assert shared.node is None


@pytest.mark.parametrize(
    ("mangle", "node", "when", "error", "message"),
    [
        (lambda t: t, "gw-1", NOW + 60, tokens.TokenError, "token expired 0 s ago"),
        (lambda t: t, "gw-2", NOW, tokens.WrongNodeToken, "token is bound to node 'gw-1', not 'gw-2'"),
        (lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"), "gw-1", NOW, tokens.TokenError, "forged"),
        (lambda t: "f" * 64 + t[64:], "gw-1", NOW, tokens.TokenError, "made for another CA"),
        (lambda t: t.rsplit(".", 1)[0], "gw-1", NOW, tokens.TokenError, "expected 3 dot-separated parts, got 2"),
        (lambda t: "xyz" + t[3:], "gw-1", NOW, tokens.TokenError, "must start with the 64 hex digits"),
    ],
)
def test_refusals_say_why(mangle: object, node: str, when: float, error: type[Exception], message: str) -> None:
    token = tokens.issue(CA, ttl_s=60, node="gw-1", now=NOW)
    assert callable(mangle)
    with pytest.raises(error, match=message):
        tokens.verify(CA, mangle(token), node=node, now=when)


def test_another_ca_cannot_make_a_token_this_one_accepts() -> None:
    other = CertificateAuthority.create("token-test-ca")  # same name, other key
    forged = CA.fingerprint + tokens.issue(other, ttl_s=60, now=NOW)[64:]
    with pytest.raises(tokens.TokenError, match="forged"):
        tokens.verify(CA, forged, node="gw-1", now=NOW)


@pytest.mark.parametrize(
    ("text", "seconds"), [("24h", 86400), ("30m", 1800), ("1h30m", 5400), ("90", 90), ("1.5s", 1.5)]
)
def test_durations_read_as_go_writes_them(text: str, seconds: float) -> None:
    assert tokens.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "h", "10d", "0s", "0", "1h30"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        tokens.parse_duration(text)
