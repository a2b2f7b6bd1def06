"""Weights between CloudCore and the local controller (common/fl.py): inline deliveries and their checks."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from common import fl
from common.messages import Message

BLOB = b"\x00weights" * 100
SHA = hashlib.sha256(BLOB).hexdigest()


def _delivery(**changes: object) -> Message:
    message = fl.Delivery("ns", "job", "update", "job-trainer-0", 3, SHA, BLOB).message(now_ms=0)
    return dataclasses.replace(message, content={**message.content, **changes})


def test_a_delivery_round_trips() -> None:
    parsed = fl.parse_delivery(_delivery())
    assert parsed == fl.Delivery("ns", "job", "update", "job-trainer-0", 3, SHA, BLOB)
    assert fl.is_delivery(_delivery())


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"kind": "steal"}, "kind must be one of"),
        ({"sha256": "0" * 64}, "does not match its sha256"),
        ({"blob": "not base64!"}, "is not base64"),
        ({"blob": "A" * (4 * fl.INLINE_MAX)}, "at most 65536 bytes"),
        ({"round": "3"}, "round must be an integer"),
        ({"worker": ""}, "needs its worker"),
    ],
)
def test_a_bad_delivery_is_refused_naming_the_problem(changes: dict[str, object], reason: str) -> None:
    with pytest.raises(fl.TransferError, match=reason):
        fl.parse_delivery(_delivery(**changes))
