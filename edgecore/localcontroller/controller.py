"""LocalController: Sedna's LC on this node.

One set of routes, reached two ways:
- by the pods on this node, over plain HTTP at ``bindAddress:port`` (``LC_SERVER``): worker reports,
  Datasets and their data, and the rounds (join, hand in an update, wait for the model; the aggregator:
  publish the model, take the next update);
- by CloudCore, over a stream (``/sedna/...`` on the node's kubelet API, see edgestream): fetch a staged blob,
  deliver an update to the aggregator's inbox, deliver a model.

What a pod hands in is staged on disk and announced upstream (``fltransfer``, through the durable outbox);
the global manager fetches it and carries it on, so no pod and no edge opens a port to the outside, and
nothing waits on another node being connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote

import orjson

from common import fl, httphead
from common import upstream as contract
from common.httphead import HeadError, RequestHead
from common.logging import get_logger
from common.messages import Message
from common.streams import RELAY_CHUNK, Pipe
from edgecore.localcontroller.loader import DatasetLoader, DatasetState
from edgecore.localcontroller.mailbox import Mailbox, MailboxError, checked

log = get_logger(__name__)

SHA_HEADER = "X-Sedna-Sha256"
JOB_LABEL = "sedna.io/job-name"  # on the pods the global manager creates
MAX_WAIT_S = 30.0  # a long poll's longest wait


class Store(Protocol):  # what the local controller reads of EdgeCore's store
    async def list_kind(self, kind: str) -> list[Any]: ...


@dataclass
class Request:
    method: str
    parts: list[str]
    params: dict[str, list[str]]
    headers: RequestHead
    body: bytes = b""

    def param(self, name: str, default: str = "") -> str:
        values = self.params.get(name)
        return values[0] if values else default


@dataclass
class Response:
    status: int
    body: bytes | str = b""
    content_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        return httphead.response(self.status, self.body, content_type=self.content_type, headers=self.headers)


def _json(status: int, value: Any) -> Response:
    return Response(status, orjson.dumps(value), "application/json")


def _error(status: int, message: str) -> Response:
    return Response(status, message + "\n", "text/plain; charset=utf-8")


def _number(request: Request, name: str, default: float, low: float, high: float) -> float:
    try:
        value = float(request.param(name, str(default)))
    except ValueError:
        raise _Refused(400, f"{name} must be a number") from None
    return min(max(value, low), high)


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def _read_body(pipe: Pipe, size: int) -> bytes:
    chunks, got = [], 0
    while got < size:
        chunk = await pipe.read()
        if not chunk:
            raise _Refused(400, f"the body ended after {got} of {size} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)[:size]


class LocalController:
    def __init__(
        self,
        *,
        node: str,
        root: Path,
        store: Store,
        publish: Callable[..., Awaitable[None]],
        host: str,
        port: int,
        max_body: int,
        check_seconds: float = 60.0,
    ) -> None:
        self.node = node
        self.host = host
        self.port = port
        self.max_body = max_body
        self.check_seconds = check_seconds
        self._store = store
        self._publish = publish
        self.mailbox = Mailbox(root / "fl")
        self.loader = DatasetLoader(root / "datasets")
        self._wake = asyncio.Event()
        self._listening: asyncio.Future[int] | None = None
        self.served = 0

    def wake(self, *_: Any) -> None:
        """The store changed: look at this node's Datasets again."""
        self._wake.set()

    async def wait_listening(self) -> int:
        """The port the pods' endpoint listens on, once it does."""
        if self._listening is None:
            self._listening = asyncio.get_running_loop().create_future()
        return await asyncio.shield(self._listening)

    async def run(self) -> None:
        server = await asyncio.start_server(self._connection, self.host, self.port, limit=httphead.MAX_HEAD_BYTES)
        port = int(server.sockets[0].getsockname()[1])
        if self._listening is None:
            self._listening = asyncio.get_running_loop().create_future()
        self._listening.set_result(port)
        log.info("local_controller_listening", host=self.host, port=port)
        async with server:
            await self._load_datasets()

    # --- the data loader ---------------------------------------------------------------------------------

    async def _load_datasets(self) -> None:
        while True:
            datasets = [
                d for d in await self._store.list_kind("dataset") if (d.get("spec") or {}).get("nodeName") == self.node
            ]
            wanted = set()
            for dataset in datasets:
                meta = dataset["metadata"]
                namespace, name = meta.get("namespace", "default"), meta["name"]
                wanted.add((namespace, name))

                async def report(state: DatasetState, namespace: str = namespace, name: str = name) -> None:
                    await self._publish(contract.dataset_status(namespace, name, state.status()))

                await self.loader.load(dataset, report)
            for key in set(self.loader.states) - wanted:
                log.info("dataset_removed", dataset="/".join(key))
                self.loader.forget(*key)
            await self._forget_finished_jobs()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.check_seconds):
                    await self._wake.wait()

    async def _forget_finished_jobs(self) -> None:
        """The weights of jobs with no pod left on this node are of no more use here."""
        pods = await self._store.list_kind("pod")
        live = {
            (p["metadata"].get("namespace", "default"), job)
            for p in pods
            if (job := (p["metadata"].get("labels") or {}).get(JOB_LABEL))
        }
        for key in self.mailbox.jobs() - live:
            log.info("fl_job_forgotten", job="/".join(key))
            self.mailbox.forget(*key)

    # --- the pods' endpoint ------------------------------------------------------------------------------

    def _local_peer(self, writer: asyncio.StreamWriter) -> bool:
        """A connection from this node itself: its own address (a host-network pod) or loopback. The endpoint
        serves the node's pods, not its network neighbours."""
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if peer else ""
        return address in (self.host, "127.0.0.1", "::1") or address.startswith("127.")

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._local_peer(writer):
            peer = writer.get_extra_info("peername")
            log.warning("local_controller_refused", peer=str(peer[0]) if peer else "", reason="not from this node")
            with contextlib.suppress(ConnectionError):
                writer.write(_error(403, "the local controller serves only this node's pods").encode())
                await writer.drain()
            writer.close()
            return
        try:
            head = await httphead.read_head(reader, timeout=10)
            size = self._body_size(head)
            body = await reader.readexactly(size) if size else b""
            response = await self.handle(head, body, from_cloud=False)
        except HeadError as exc:
            response = _error(exc.status, str(exc))
        except _Refused as exc:
            response = _error(exc.status, str(exc))
        except (ConnectionError, asyncio.IncompleteReadError):
            writer.close()
            return
        with contextlib.suppress(ConnectionError):
            writer.write(response.encode())
            await writer.drain()
        writer.close()

    def _body_size(self, head: RequestHead) -> int:
        try:
            size = int(head.header("Content-Length") or 0)
        except ValueError:
            raise _Refused(400, "Content-Length must be a number") from None
        if size < 0 or size > self.max_body:
            raise _Refused(413, f"a body of {size} bytes is more than the {self.max_body} this node accepts")
        return size

    async def serve_cloud(self, head: RequestHead, pipe: Pipe) -> None:
        """A request CloudCore carried here on a stream: its body follows the head on the pipe."""
        try:
            body = await _read_body(pipe, self._body_size(head))
            response = await self.handle(head, body, from_cloud=True)
        except _Refused as exc:
            response = _error(exc.status, str(exc))
        data = response.encode()
        for start in range(0, len(data), RELAY_CHUNK):  # frames well below any frame limit
            await pipe.write(data[start : start + RELAY_CHUNK])

    async def handle(self, head: RequestHead, body: bytes, *, from_cloud: bool) -> Response:
        request = Request(head.method, [unquote(p) for p in head.path.split("/") if p], head.query, head, body)
        self.served += 1
        try:
            return await self._route(request, from_cloud=from_cloud)
        except _Refused as exc:
            return _error(exc.status, str(exc))
        except MailboxError as exc:
            return _error(400, str(exc))

    async def _route(self, r: Request, *, from_cloud: bool) -> Response:  # noqa: PLR0911, PLR0912 - a branch per route
        match (r.method, r.parts, from_cloud):
            case ("POST", ["sedna", "workers", worker, "info"], False):
                return await self._worker_info(r, worker)
            case ("GET", ["sedna", "datasets", namespace, name], False):
                return self._dataset(namespace, name)
            case ("GET", ["sedna", "datasets", namespace, name, "data"], False):
                return self._dataset_data(namespace, name)
            case ("POST", ["sedna", "fl", namespace, job, "join"], False):
                return await self._join(r, namespace, job)
            case ("PUT", ["sedna", "fl", namespace, job, "updates", worker], False):
                return await self._hand_in_update(r, namespace, job, worker)
            case ("GET", ["sedna", "fl", namespace, job, "model"], False):
                return await self._wait_model(r, namespace, job)
            case ("PUT", ["sedna", "fl", namespace, job, "model"], False):
                return await self._publish_model(r, namespace, job)
            case ("GET", ["sedna", "fl", namespace, job, "inbox"], False):
                return await self._take_update(r, namespace, job)
            case ("GET", ["sedna", "fl", namespace, job, "members"], False):
                members = self.mailbox.job(namespace, job).members()
                if members is None:
                    return _error(404, f"no members of {namespace}/{job} told to {self.node}")
                return _json(200, members)
            case ("GET", ["sedna", "fl", namespace, job, "outgoing", transfer], True):
                blob = self.mailbox.job(namespace, job).staged(transfer)
                if blob is None:
                    return _error(404, f"no staged transfer {transfer} for {namespace}/{job} on {self.node}")
                return Response(200, blob, headers={SHA_HEADER: hashlib.sha256(blob).hexdigest()})
            case ("GET", ["sedna", "fl", namespace, job, "model"], True):
                found = self.mailbox.job(namespace, job).model()
                if found is None:
                    return _error(404, f"node {self.node} has no model of {namespace}/{job} yet")
                version, blob, sha = found
                return Response(200, blob, headers={SHA_HEADER: sha, "X-Sedna-Round": str(version)})
            case ("PUT", ["sedna", "fl", namespace, job, "inbox", worker], True):
                await self.mailbox.job(namespace, job).deliver(checked("worker", worker), self._checked_body(r))
                return Response(204)
            case ("PUT", ["sedna", "fl", namespace, job, "members"], True):
                self._put_members(namespace, job, int(_number(r, "generation", 0, 0, 2**62)), self._checked_body(r))
                return Response(204)
            case ("PUT", ["sedna", "fl", namespace, job, "model"], True):
                round_ = int(_number(r, "round", -1, -1, contract.MAX_FL_ROUND))
                kept = await self.mailbox.job(namespace, job).put_model(
                    round_, self._checked_body(r), r.headers.header(SHA_HEADER)
                )
                return Response(204 if kept else 409)
            case _:
                return _error(404, f"{r.method} {r.headers.path} is not served by the local controller")

    def _checked_body(self, r: Request) -> bytes:
        sha = r.headers.header(SHA_HEADER)
        if not sha:
            raise _Refused(400, f"a blob needs its sha256 in {SHA_HEADER}")
        if hashlib.sha256(r.body).hexdigest() != sha.lower():
            raise _Refused(400, "the body's sha256 does not match " + SHA_HEADER)
        return r.body

    async def _worker_info(self, r: Request, worker: str) -> Response:
        try:
            report = orjson.loads(r.body)
        except orjson.JSONDecodeError as exc:
            raise _Refused(400, f"the report is not JSON: {exc}") from None
        if not isinstance(report, dict) or report.get("name") != worker:
            raise _Refused(400, "the report must be an object whose name is the worker's")
        namespace, job = str(report.get("namespace") or "default"), str(report.get("ownerName") or "")
        checked("namespace", namespace)
        checked("job", job)
        await self._publish(contract.worker_report(namespace, job, report))
        return Response(204)

    def _dataset(self, namespace: str, name: str) -> Response:
        state = self.loader.state(namespace, name)
        if state is None:
            return _json(
                200,
                {
                    "phase": "Pending",
                    "here": False,
                    "message": f"no Dataset {namespace}/{name} is bound to {self.node} yet",
                },
            )
        return _json(200, {**state.status(), "here": True, "file": state.file})

    def _dataset_data(self, namespace: str, name: str) -> Response:
        path = self.loader.data_path(namespace, name)
        state = self.loader.state(namespace, name)
        if path is None or state is None:
            return _error(404, f"Dataset {namespace}/{name} is not ready on {self.node}")
        return Response(200, path.read_bytes(), headers={SHA_HEADER: state.sha256})

    async def _join(self, r: Request, namespace: str, job: str) -> Response:
        worker = checked("worker", r.param("worker"))
        box = self.mailbox.job(namespace, job)
        await self._publish(contract.fl_transfer(namespace, job, kind="join", worker=worker, round_=box.model_round))
        return Response(204)

    async def _announce(
        self, namespace: str, job: str, *, kind: str, worker: str, round_: int, blob: bytes, sha: str
    ) -> None:
        """Tell the cloud a blob is here: inside the message if it is small, else for it to fetch: a model from
        the node's model file (the cloud's GET .../model), an update from where it is staged."""
        if len(blob) <= fl.INLINE_MAX:
            message = contract.fl_transfer(
                namespace, job, kind=kind, worker=worker, round_=round_, size=len(blob), sha256=sha, blob=blob
            )
        elif kind == "model":
            message = contract.fl_transfer(
                namespace,
                job,
                kind=kind,
                worker=worker,
                round_=round_,
                transfer=fl.MODEL_FILE,
                size=len(blob),
                sha256=sha,
            )
        else:
            staged = self.mailbox.job(namespace, job).stage(f"update-{checked('worker', worker)}", blob)
            message = contract.fl_transfer(
                namespace, job, kind=kind, worker=worker, round_=round_, transfer=staged.id, size=len(blob), sha256=sha
            )
        await self._publish(message)

    async def on_message(self, message: Message) -> None:
        """A blob the cloud delivered inline (common/fl.py): an update for the aggregator here, or a model."""
        try:
            delivery = fl.parse_delivery(message)
            box = self.mailbox.job(delivery.namespace, delivery.job)
            if delivery.kind == "update":
                await box.deliver(checked("worker", delivery.worker), delivery.blob)
            elif delivery.kind == fl.MEMBERS:
                self._put_members(delivery.namespace, delivery.job, delivery.round, delivery.blob)
            else:
                await box.put_model(delivery.round, delivery.blob, delivery.sha256)
        except (fl.TransferError, MailboxError, _Refused) as exc:
            log.warning("fl_delivery_refused", resource=message.route.resource[:200], reason=str(exc))

    def _put_members(self, namespace: str, job: str, generation: int, blob: bytes) -> None:
        try:
            fl.members_of(blob)
        except fl.TransferError as exc:
            raise _Refused(400, str(exc)) from None
        self.mailbox.job(namespace, job).put_members(generation, blob)

    async def _hand_in_update(self, r: Request, namespace: str, job: str, worker: str) -> Response:
        blob = self._checked_body(r)
        round_ = int(_number(r, "round", -1, -1, contract.MAX_FL_ROUND))
        sha = hashlib.sha256(blob).hexdigest()
        await self._announce(
            namespace, job, kind="update", worker=checked("worker", worker), round_=round_, blob=blob, sha=sha
        )
        return Response(204)

    async def _publish_model(self, r: Request, namespace: str, job: str) -> Response:
        blob = self._checked_body(r)
        round_ = int(_number(r, "round", 0, 0, contract.MAX_FL_ROUND))
        box = self.mailbox.job(namespace, job)
        sha = hashlib.sha256(blob).hexdigest()
        await box.put_model(round_, blob, sha)  # trainers here need not wait
        await self._announce(namespace, job, kind="model", worker="aggregator", round_=round_, blob=blob, sha=sha)
        return Response(204)

    async def _wait_model(self, r: Request, namespace: str, job: str) -> Response:
        after = int(_number(r, "after", -1, -1, contract.MAX_FL_ROUND))
        wait = _number(r, "wait", 0, 0, MAX_WAIT_S)
        found = await self.mailbox.job(namespace, job).wait_model(after, wait)
        if found is None:
            return Response(204)
        version, blob, sha = found
        return Response(200, blob, headers={SHA_HEADER: sha, "X-Sedna-Round": str(version)})

    async def _take_update(self, r: Request, namespace: str, job: str) -> Response:
        blob = await self.mailbox.job(namespace, job).take(_number(r, "wait", 0, 0, MAX_WAIT_S))
        if blob is None:
            return Response(204)
        return Response(200, blob, headers={SHA_HEADER: hashlib.sha256(blob).hexdigest()})
