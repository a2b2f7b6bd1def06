"""Federated learning's weights between CloudCore and EdgeCore's local controller: the contract.

A blob of weights (a worker's update, or the aggregator's model; learning/weights.py's format, opaque here)
travels one of two ways (and so does the list of an elastic job's trainers, for its aggregator):

- up to ``INLINE_MAX`` bytes, inside the messages themselves: in the ``fltransfer`` upstream message
  (common/upstream.py) and in a best-effort ``deliver`` message down, base64, so a small model's round costs
  no connection set-up at all;
- bigger ones wait on their node for CloudCore to fetch them over a stream, and are delivered over a stream
  (``/sedna/...`` on the node's kubelet API), each on a connection of its own, so a 10 MB model never waits
  behind object sync or keepalives, nor delays them.

Either way the sha256 travels beside the blob and every hop checks it. Losing a best-effort message only
delays: the lib sends again (learning/worker.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from common.messages import Group, Message, MessageError, Resource, new_message

INLINE_MAX = 64 * 1024  # bytes of blob; a hub frame holds it easily beside the sync traffic
DELIVER = "deliver"  # the operation of a blob delivered down
MODEL_FILE = "model"  # the transfer id of a big model: the cloud fetches the node's model file itself
MEMBERS = "members"  # the trainers an elastic job's aggregator should expect: JSON, newest generation wins
KINDS = ("update", "model", MEMBERS)
MAX_MEMBERS = 1000
_B64_MAX = 4 * ((INLINE_MAX + 2) // 3)


class TransferError(ValueError):
    """A blob or a delivery that is not the contract's; the message says why."""


def encode_blob(blob: bytes) -> str:
    return base64.b64encode(blob).decode("ascii")


def decode_blob(text: object, sha256: str, where: str) -> bytes:
    """The blob of a base64 field, checked against its sha256."""
    if not isinstance(text, str) or len(text) > _B64_MAX:
        raise TransferError(f"{where} must be base64 of at most {INLINE_MAX} bytes")
    try:
        blob = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise TransferError(f"{where} is not base64") from None
    if hashlib.sha256(blob).hexdigest() != sha256:
        raise TransferError(f"{where} does not match its sha256")
    return blob


@dataclass(frozen=True, slots=True)
class Delivery:
    """A blob for the node's local controller: an update for the aggregator's inbox, or a model."""

    namespace: str
    job: str
    kind: str
    worker: str
    round: int
    sha256: str
    blob: bytes

    def message(self, *, now_ms: int) -> Message:
        return new_message(
            source="globalmanager",
            group=Group.SEDNA,
            operation=DELIVER,
            resource=str(Resource(self.namespace, "federatedlearningjob", self.job)),
            content={
                "kind": self.kind,
                "worker": self.worker,
                "round": self.round,
                "sha256": self.sha256,
                "blob": encode_blob(self.blob),
            },
            now_ms=now_ms,
        )


def is_delivery(message: Message) -> bool:
    return message.route.group == Group.SEDNA and message.route.operation == DELIVER


def parse_delivery(message: Message) -> Delivery:
    try:
        resource = Resource.parse(message.route.resource)
    except MessageError as exc:
        raise TransferError(str(exc)) from None
    content: Any = message.content
    if not isinstance(content, dict) or resource.namespace is None or resource.type != "federatedlearningjob":
        raise TransferError("a delivery is <namespace>/federatedlearningjob/<job> with an object as content")
    kind, worker, round_, sha = (content.get(k) for k in ("kind", "worker", "round", "sha256"))
    if kind not in KINDS:
        raise TransferError(f"a delivery's kind must be one of {list(KINDS)}, not {kind!r}")
    if not isinstance(worker, str) or not worker or not isinstance(sha, str) or len(sha) != 64:
        raise TransferError("a delivery needs its worker and a 64-digit sha256")
    if isinstance(round_, bool) or not isinstance(round_, int) or round_ < -1:
        raise TransferError("a delivery's round must be an integer of at least -1")
    return Delivery(
        resource.namespace, resource.name, kind, worker, round_, sha, decode_blob(content.get("blob"), sha, "blob")
    )


def members_delivery(namespace: str, job: str, members: list[str], *, generation: int) -> Delivery:
    """The trainers an elastic job has now, for its aggregator's node; ``generation`` orders the tellings."""
    blob = json.dumps({"workers": sorted(members)}).encode()
    return Delivery(namespace, job, MEMBERS, "globalmanager", generation, hashlib.sha256(blob).hexdigest(), blob)


def members_of(blob: bytes) -> list[str]:
    """The trainers in a members blob; TransferError if it is not one."""
    try:
        value = json.loads(blob)
    except ValueError:
        raise TransferError("a members blob must be JSON") from None
    workers = value.get("workers") if isinstance(value, dict) else None
    if (
        not isinstance(workers, list)
        or len(workers) > MAX_MEMBERS
        or not all(isinstance(w, str) and 0 < len(w) <= 253 for w in workers)
    ):
        raise TransferError(f'a members blob is {{"workers": [names]}} with at most {MAX_MEMBERS} names')
    return workers
