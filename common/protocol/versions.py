"""Comparing Kubernetes resourceVersions without trusting their format.

They are etcd revisions (decimal integers) on every real API server, but the API promises only an opaque
string. Integers compare numerically; anything else counts as newer whenever it differs. Never raises.
"""

from __future__ import annotations


def _as_int(rv: str) -> int | None:
    # str.isdigit alone accepts "²" and int() accepts "1_0" and " 1": only plain ASCII digits are revisions.
    return int(rv) if rv.isascii() and rv.isdigit() else None


def is_newer(candidate: str, current: str | None) -> bool:
    """Whether ``candidate`` should replace ``current`` (``None``: nothing held yet)."""
    if current is None:
        return True
    if candidate == current:
        return False
    a, b = _as_int(candidate), _as_int(current)
    if a is not None and b is not None:
        return a > b
    return True
