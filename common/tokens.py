"""Join tokens: ``<sha256 of the CA certificate, hex>.<claims>.<signature>``.

The first part is what KubeEdge's tokens start with too: the edge fetches ``/ca.crt`` without trusting anyone
yet and accepts the CA only if its hash matches, so a token pins the CA it was made for. The rest is signed
with an HMAC key derived from the CA's private key, so any CloudCore replica holding the CA can check it and
nobody without the CA can make one.

Claims: ``exp`` (Unix seconds), ``jti`` (a random id) and ``node`` (a node name, or null for a token any
node may use). That a node-bound token is used only once is CloudCore's business (it records the ``jti``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import orjson

from common.pki import CertificateAuthority

_KEY_CONTEXT = b"kubage join token v1\0"


class TokenError(Exception):
    """The token is refused; the message says why (expired, forged, for another node, malformed)."""


class WrongNodeToken(TokenError):
    """A valid token, bound to another node: the caller is known, and not allowed (403, not 401)."""


@dataclass(frozen=True)
class Claims:
    ca_hash: str
    exp: int
    jti: str
    node: str | None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _key(ca: CertificateAuthority) -> bytes:
    return hashlib.sha256(_KEY_CONTEXT + ca.key_pem).digest()


def issue(ca: CertificateAuthority, *, ttl_s: float, node: str | None = None, now: float | None = None) -> str:
    issued = time.time() if now is None else now
    claims = {"exp": int(issued + ttl_s), "jti": secrets.token_hex(8), "node": node}
    body = _b64(orjson.dumps(claims, option=orjson.OPT_SORT_KEYS))
    signature = _b64(hmac.digest(_key(ca), body.encode(), "sha256"))
    return f"{ca.fingerprint}.{body}.{signature}"


def ca_hash(token: str) -> str:
    """The CA hash a token pins, without checking anything else (the edge's first step)."""
    head = token.strip().split(".", 1)[0].lower()
    if len(head) != 64 or any(c not in "0123456789abcdef" for c in head):
        raise TokenError("malformed token: it must start with the 64 hex digits of the CA's sha256")
    return head


def verify(ca: CertificateAuthority, token: str, *, node: str, now: float | None = None) -> Claims:
    """Check a token presented by ``node``; raises TokenError naming the reason."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise TokenError(f"malformed token: expected 3 dot-separated parts, got {len(parts)}")
    head, body, signature = parts
    if ca_hash(head) != ca.fingerprint:
        raise TokenError("token was made for another CA (its CA hash does not match this CloudCore's)")
    try:
        given = _unb64(signature)
    except ValueError:
        raise TokenError("malformed token: the signature is not base64url") from None
    if not hmac.compare_digest(given, hmac.digest(_key(ca), body.encode(), "sha256")):
        raise TokenError("forged token: the signature does not match")
    try:
        claims = orjson.loads(_unb64(body))
        exp, jti, bound = int(claims["exp"]), str(claims["jti"]), claims.get("node")
    except (ValueError, KeyError, TypeError):
        raise TokenError("malformed token: unreadable claims") from None
    current = time.time() if now is None else now
    if current >= exp:
        ago = int(current - exp)
        raise TokenError(f"token expired {ago} s ago; get a new one with 'keadm gettoken'")
    if bound is not None and bound != node:
        raise WrongNodeToken(f"token is bound to node {bound!r}, not {node!r}")
    return Claims(head, exp, jti, bound)


def parse_duration(text: str) -> float:
    """``24h``, ``30m``, ``90s``, ``1h30m``, or plain seconds; as Go's durations are written."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0}
    text = text.strip()
    total, number = 0.0, ""
    for char in text:
        if char.isdigit() or char == ".":
            number += char
        elif char in units and number:
            total += float(number) * units[char]
            number = ""
        else:
            raise ValueError(f"invalid duration {text!r}: use e.g. 24h, 30m or 90s")
    if number and total == 0:
        total, number = float(number), ""  # plain seconds
    if number or total <= 0:
        raise ValueError(f"invalid duration {text!r}: use e.g. 24h, 30m or 90s")
    return total
