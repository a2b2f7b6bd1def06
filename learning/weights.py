"""Weights on the wire: one self-describing blob, checksummed, compact.

``KFL1`` | 4-byte big-endian length of the JSON header | JSON header | the arrays' raw little-endian float32
bytes, one after the other. The header says what the blob is (``meta``: kind, round, worker, samples, metrics,
…) and the arrays' shapes. Raw float32 is the model's own size (Sedna's nested JSON lists are 5.3 times that); the
sha256 of the whole blob travels beside it (``X-Sedna-Sha256``) and is checked by every hop.
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any

import numpy as np

from learning.estimator import Weights

MAGIC = b"KFL1"
MAX_HEADER = 1 << 20


class BlobError(ValueError):
    """Bytes that are not a weights blob, or one whose checksum does not match."""


def encode(weights: Weights, meta: dict[str, Any]) -> bytes:
    arrays = [np.ascontiguousarray(w, dtype="<f4") for w in weights]
    header = json.dumps(
        {"meta": meta, "shapes": [list(a.shape) for a in arrays], "dtype": "float32"}, separators=(",", ":")
    ).encode()
    return b"".join([MAGIC, struct.pack(">I", len(header)), header, *(a.tobytes() for a in arrays)])


def decode(blob: bytes, *, sha256: str = "") -> tuple[Weights, dict[str, Any]]:
    if sha256 and digest(blob) != sha256:
        raise BlobError(f"checksum mismatch: the blob's sha256 is {digest(blob)}, not {sha256}")
    if len(blob) < 8 or blob[:4] != MAGIC:
        raise BlobError("not a weights blob (no KFL1 magic)")
    (size,) = struct.unpack(">I", blob[4:8])
    if size > MAX_HEADER or 8 + size > len(blob):
        raise BlobError(f"weights blob header of {size} bytes does not fit the blob of {len(blob)}")
    try:
        header = json.loads(blob[8 : 8 + size])
        shapes = [tuple(int(d) for d in s) for s in header["shapes"]]
        meta = dict(header["meta"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise BlobError(f"weights blob header is malformed: {exc}") from None
    offset, weights = 8 + size, []
    for shape in shapes:
        count = int(np.prod(shape)) if shape else 1
        end = offset + 4 * count
        if end > len(blob):
            raise BlobError(f"weights blob is truncated: {len(blob)} bytes, the shapes need {end}")
        weights.append(np.frombuffer(blob[offset:end], dtype="<f4").reshape(shape).astype(np.float32))
        offset = end
    if offset != len(blob):
        raise BlobError(f"weights blob has {len(blob) - offset} bytes after its arrays")
    return weights, meta


def digest(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()
