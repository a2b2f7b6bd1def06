"""A digest of what an object means to the edge, so a reconnect can skip objects whose rv moved on
without anything the edge uses changing (a pod's status written back by the edge itself, say).

The digest covers the object without ``status`` and without the fields the API server rewrites on every
write (``metadata.resourceVersion``, ``metadata.managedFields``). Cloud and edge compute it with this one
function over the same JSON, so equal digests mean equal content.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

VOLATILE_METADATA = ("resourceVersion", "managedFields")


def stable_content(obj: Any) -> Any:
    """``obj`` without status and volatile metadata: what the edge is sent for pods, and what is digested."""
    if not isinstance(obj, dict):
        return obj
    out = {k: v for k, v in obj.items() if k != "status"}
    metadata = out.get("metadata")
    if isinstance(metadata, dict):
        out["metadata"] = {k: v for k, v in metadata.items() if k not in VOLATILE_METADATA}
    return out


def content_digest(obj: Any) -> str:
    return hashlib.sha256(orjson.dumps(stable_content(obj), option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]
