"""The lib's side of the local controller's endpoint (``LC_SERVER``, as in Sedna: ``http://<node>:9100``).

Plain HTTP/1.1 on the node, standard library only. The local controller restarts with EdgeCore, so every call
retries connection failures until ``patience`` seconds have passed; an HTTP error answer is raised at once.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlencode

from learning.weights import digest

SHA_HEADER = "X-Sedna-Sha256"


class LCError(RuntimeError):
    """The local controller answered with an error, or could not be reached within the patience."""


class LCClient:
    def __init__(self, server: str, *, namespace: str, job: str, worker: str, patience: float = 600.0) -> None:
        self.server = server.rstrip("/")
        self.namespace = namespace
        self.job = job
        self.worker = worker
        self.patience = patience

    def _fl(self, tail: str, **params: object) -> str:
        path = f"/sedna/fl/{quote(self.namespace)}/{quote(self.job)}/{tail}"
        return path + (f"?{urlencode(params)}" if params else "")

    def _call(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None, wait: float = 0
    ) -> tuple[int, dict[str, str], bytes]:
        deadline = time.monotonic() + self.patience
        delay = 0.2
        while True:
            request = urllib.request.Request(  # noqa: S310 - LC_SERVER is the node's http endpoint
                self.server + path, data=body, method=method, headers=headers or {}
            )
            try:
                with urllib.request.urlopen(request, timeout=wait + 30) as answer:  # noqa: S310 - LC_SERVER is http(s)
                    return answer.status, dict(answer.headers.items()), answer.read()
            except urllib.error.HTTPError as exc:
                raise LCError(f"{method} {path}: {exc.code} {exc.read().decode(errors='replace').strip()}") from None
            except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as exc:
                if time.monotonic() + delay > deadline:
                    raise LCError(f"the local controller at {self.server} does not answer: {exc}") from None
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    # --- worker state, as Sedna's lib reports it ---------------------------------------------------------

    def report(self, kind: str, status: str, owner_info: dict[str, Any]) -> None:
        body = {
            "name": self.worker,
            "namespace": self.namespace,
            "ownerName": self.job,
            "ownerKind": "federatedlearningjob",
            "kind": kind,
            "status": status,
            "ownerInfo": owner_info,
        }
        self._call(
            "POST",
            f"/sedna/workers/{quote(self.worker)}/info",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )

    # --- datasets ----------------------------------------------------------------------------------------

    def dataset(self, name: str) -> dict[str, Any]:
        _, _, body = self._call("GET", f"/sedna/datasets/{quote(self.namespace)}/{quote(name)}")
        result: dict[str, Any] = json.loads(body)
        return result

    def dataset_bytes(self, name: str) -> tuple[bytes, str]:
        _, headers, body = self._call("GET", f"/sedna/datasets/{quote(self.namespace)}/{quote(name)}/data")
        return body, headers.get(SHA_HEADER, "")

    # --- rounds ------------------------------------------------------------------------------------------

    def join(self) -> None:
        self._call("POST", self._fl("join", worker=self.worker), b"")

    def put_update(self, blob: bytes, round_: int) -> None:
        self._call("PUT", self._fl(f"updates/{quote(self.worker)}", round=round_), blob, {SHA_HEADER: digest(blob)})

    def wait_model(self, *, after: int, wait: float) -> bytes | None:
        status, headers, body = self._call("GET", self._fl("model", after=after, wait=wait), wait=wait)
        if status == 204:
            return None
        if headers.get(SHA_HEADER) and digest(body) != headers[SHA_HEADER]:
            return None  # damaged on the way: the next poll fetches it again
        return body

    def publish_model(self, blob: bytes, round_: int) -> None:
        self._call("PUT", self._fl("model", round=round_), blob, {SHA_HEADER: digest(blob)})

    def members(self) -> list[str] | None:
        """The trainers of an elastic job as the global manager last told this node; None before any telling."""
        try:
            _, _, body = self._call("GET", self._fl("members"))
        except LCError as exc:
            if ": 404 " in str(exc):
                return None
            raise
        workers = json.loads(body).get("workers")
        return [str(w) for w in workers] if isinstance(workers, list) else None

    def next_update(self, *, wait: float) -> bytes | None:
        status, headers, body = self._call("GET", self._fl("inbox", wait=wait), wait=wait)
        if status == 204:
            return None
        if headers.get(SHA_HEADER) and digest(body) != headers[SHA_HEADER]:
            return None
        return body
