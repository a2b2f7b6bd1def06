"""GlobalManager: Sedna's global manager, as a CloudCore module.

It watches FederatedLearningJobs, Datasets and Models (and the jobs' pods, through CloudCore's pod informer),
creates each job's pods and keeps its status, and carries the weights between the job's nodes:

- a local controller announces a blob staged on its node (``fltransfer``, through the durable outbox); the
  manager fetches it over a stream and delivers it: a worker's update into the aggregator node's inbox, the
  aggregator's model to every training worker's node. Updates for an older round are not carried: the
  worker's node gets the newest model instead (it was away, or restarted). A ``join`` asks the same.
- every request rides a stream of its own (``StreamServer.request``), through whichever replica holds the
  node's session, so a 10 MB model never delays object sync or keepalives, and two replicas may hold a
  trainer and the aggregator.

Nothing here is the only copy of anything: pods and status are in Kubernetes, weights on the nodes and in the
aggregator's checkpoint. A restarted manager rebuilds from the informers and the next reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cloudcore.edgecontroller.upstream import Refused
from cloudcore.globalmanager.pods import AGGREGATOR, API_VERSION, JOB_LABEL, TRAINER, TYPE_LABEL, JobError, build_pods
from cloudcore.globalmanager.status import FINAL, job_status, model_metrics
from cloudcore.kube import MERGE_PATCH, Conflict, Kube, KubeError, NotFound
from common import fl
from common import upstream as contract
from common.hublink import now_ms
from common.logging import get_logger
from common.messages import Message, NodeName

log = get_logger(__name__)

DELETED = "DELETED"
SHA_HEADER = "X-Sedna-Sha256"
RELAYS_AT_ONCE = 8
Key = tuple[str, str]  # (namespace, job)


NodeRequest = Callable[..., Awaitable[Any]]  # StreamServer.request(node, method, path, body, headers)
Send = Callable[[NodeName, Message], Awaitable[bool]]  # CloudHub.send: False when the node is not connected here


@dataclass
class _Latest:
    round: int
    blob: bytes
    sha: str


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _key(obj: dict[str, Any]) -> Key:
    return obj["metadata"].get("namespace", "default"), obj["metadata"]["name"]


def _jobs_path(namespace: str, plural: str, name: str = "") -> str:
    return f"/apis/{API_VERSION}/namespaces/{namespace}/{plural}" + (f"/{name}" if name else "")


class GlobalManager:
    def __init__(self, kube: Kube, request: NodeRequest | None, send: Send | None = None) -> None:
        self._kube = kube
        self._request = request  # None: no stream server, so no weights can be carried
        self._send = send  # CloudHub.send: small blobs go down inline to the nodes connected here
        self.jobs: dict[Key, dict[str, Any]] = {}
        self.datasets: dict[Key, dict[str, Any]] = {}
        self.models: dict[Key, dict[str, Any]] = {}
        self.pods: dict[Key, dict[str, dict[str, Any]]] = {}  # job → pod name → pod
        self.reports: dict[Key, dict[str, Any]] = {}  # job → the aggregator's latest report
        self._latest: dict[Key, _Latest] = {}  # job → the newest model carried (to hand to joining workers)
        # (job, worker) → the sha256 of the update last delivered to the aggregator: a worker that sends the same
        # update again is waiting for a model, not asking for its 10 MB to be carried twice.
        self._delivered: dict[tuple[Key, str], str] = {}
        self._dirty: set[Key] = set()
        self._wake = asyncio.Event()
        # waiting to be carried: the newest transfer (and the node it waits on) per (job, worker, kind)
        self._relays: dict[tuple[Key, str, str], tuple[NodeName, contract.FlTransfer]] = {}
        self._relaying: set[tuple[Key, str, str]] = set()
        self._slots = asyncio.Semaphore(RELAYS_AT_ONCE)
        self._tasks: set[asyncio.Task[None]] = set()
        self.relayed = 0
        self.relay_failures = 0
        self.bytes_relayed = 0

    # --- informer handlers -------------------------------------------------------------------------------

    def _touch(self, key: Key) -> None:
        self._dirty.add(key)
        self._wake.set()

    def on_job(self, kind: str, job: dict[str, Any], before: dict[str, Any] | None) -> None:
        key = _key(job)
        if kind == DELETED:
            self.jobs.pop(key, None)
            self.reports.pop(key, None)
            self._latest.pop(key, None)
            for delivered in [d for d in self._delivered if d[0] == key]:
                del self._delivered[delivered]
        else:
            self.jobs[key] = job
        self._touch(key)

    def on_dataset(self, kind: str, dataset: dict[str, Any], before: dict[str, Any] | None) -> None:
        key = _key(dataset)
        if kind == DELETED:
            self.datasets.pop(key, None)
        else:
            self.datasets[key] = dataset
        for job_key, job in self.jobs.items():
            if job_key[0] == key[0] and (job.get("status") or {}).get("phase") not in FINAL:
                self._touch(job_key)

    def on_model(self, kind: str, model: dict[str, Any], before: dict[str, Any] | None) -> None:
        key = _key(model)
        if kind == DELETED:
            self.models.pop(key, None)
        else:
            self.models[key] = model
        for job_key in self.jobs:
            if job_key[0] == key[0]:
                self._touch(job_key)

    def on_pod(self, kind: str, pod: dict[str, Any], before: dict[str, Any] | None) -> None:
        job = (pod["metadata"].get("labels") or {}).get(JOB_LABEL)
        if not job or not any(
            r.get("kind") == "FederatedLearningJob" for r in pod["metadata"].get("ownerReferences") or []
        ):
            return
        key = (pod["metadata"].get("namespace", "default"), job)
        if kind == DELETED:
            self.pods.get(key, {}).pop(pod["metadata"]["name"], None)
        else:
            self.pods.setdefault(key, {})[pod["metadata"]["name"]] = pod
        self._touch(key)

    # --- reconciling -------------------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            for key in sorted(dirty):
                try:
                    await self._reconcile(key)
                except KubeError as exc:
                    log.warning("fl_reconcile_failed", job="/".join(key), error=str(exc))
                    self._dirty.add(key)
            if self._dirty:
                await asyncio.sleep(1)  # the API answered badly: try again soon, not at once
                self._wake.set()

    async def _reconcile(self, key: Key) -> None:
        job = self.jobs.get(key)
        if job is None:  # deleted (its pods go by garbage collection, and leave by their own events) or not yet listed
            return
        namespace = key[0]
        pods = [p for p in self.pods.get(key, {}).values() if self._owned(p, job)]
        error = ""
        final = (job.get("status") or {}).get("phase") in FINAL
        if not final:
            try:
                wanted = build_pods(
                    job,
                    {n: d for (ns, n), d in self.datasets.items() if ns == namespace},
                    {n: m for (ns, n), m in self.models.items() if ns == namespace},
                )
            except JobError as exc:
                error = str(exc)
                wanted = []
            have = {p["metadata"]["name"] for p in pods}
            for pod in wanted:
                if pod["metadata"]["name"] not in have:
                    await self._create_pod(namespace, pod)
        status = job_status(job, pods, self.reports.get(key), now=_now(), error=error)
        if status != (job.get("status") or {}):
            await self._write_status(job, status)
        if status.get("phase") == "Failed":
            await self._stop_active(namespace, pods)

    async def _stop_active(self, namespace: str, pods: list[dict[str, Any]]) -> None:
        """A failed job's workers would wait for a model that never comes: they are deleted, as a Job's are."""
        for pod in pods:
            if (pod.get("status") or {}).get("phase") in ("Pending", "Running") and not pod["metadata"].get(
                "deletionTimestamp"
            ):
                with contextlib.suppress(NotFound):
                    await self._kube.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}")
                    log.info("fl_pod_stopped", pod=f"{namespace}/{pod['metadata']['name']}", reason="job failed")

    @staticmethod
    def _owned(pod: dict[str, Any], job: dict[str, Any]) -> bool:
        return any(r.get("uid") == job["metadata"]["uid"] for r in pod["metadata"].get("ownerReferences") or [])

    async def _create_pod(self, namespace: str, pod: dict[str, Any]) -> None:
        try:
            await self._kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", body=pod)
            log.info("fl_pod_created", pod=f"{namespace}/{pod['metadata']['name']}", node=pod["spec"].get("nodeName"))
        except Conflict:
            pass  # another replica (or an earlier pass whose event has not come yet) made it

    async def _write_status(self, job: dict[str, Any], status: dict[str, Any]) -> None:
        namespace, name = _key(job)
        path = _jobs_path(namespace, "federatedlearningjobs", name) + "/status"
        try:
            updated = await self._kube.request("PATCH", path, body={"status": status}, content_type=MERGE_PATCH)
        except NotFound:
            return
        self.jobs[(namespace, name)] = updated  # the watch brings it too; until then, do not write it again
        old_phase = (job.get("status") or {}).get("phase")
        if status.get("phase") != old_phase:
            log.info(
                "fl_job_phase",
                job=f"{namespace}/{name}",
                phase=status.get("phase"),
                was=old_phase,
                round=status.get("currentRound"),
            )
        if status.get("phase") == "Succeeded" and old_phase != "Succeeded":
            await self._write_model_metrics(job, status)

    async def _write_model_metrics(self, job: dict[str, Any], status: dict[str, Any]) -> None:
        namespace = _key(job)[0]
        model = str((((job.get("spec") or {}).get("aggregationWorker") or {}).get("model") or {}).get("name") or "")
        if not model:
            return
        body = {"status": {"metrics": model_metrics(status), "updateTime": _now()}}
        with contextlib.suppress(NotFound):
            await self._kube.request(
                "PATCH", _jobs_path(namespace, "models", model) + "/status", body=body, content_type=MERGE_PATCH
            )

    # --- what nodes report -------------------------------------------------------------------------------

    def _pod_of(self, node: NodeName, key: Key, worker: str, kind: str) -> dict[str, Any]:
        """The job's pod named ``worker`` of ``kind``, if it is on ``node``; Refused otherwise."""
        pod = self.pods.get(key, {}).get(worker)
        if (
            pod is None
            or (pod.get("spec") or {}).get("nodeName") != node
            or (pod["metadata"].get("labels") or {}).get(TYPE_LABEL) != kind
        ):
            raise Refused(f"node {node} runs no {kind} worker {worker!r} of job {key[0]}/{key[1]}")
        return pod

    def _nodes_of(self, key: Key, kind: str) -> list[NodeName]:
        nodes = {
            NodeName(str((p.get("spec") or {}).get("nodeName") or ""))
            for p in self.pods.get(key, {}).values()
            if (p["metadata"].get("labels") or {}).get(TYPE_LABEL) == kind
        }
        return sorted(n for n in nodes if n)

    async def on_upstream(self, node: NodeName, request: contract.Request) -> None:
        match request:
            case contract.DatasetStatus():
                await self._dataset_status(node, request)
            case contract.WorkerReport():
                self._worker_report(node, request)
            case contract.FlTransfer():
                self._transfer(node, request)

    async def _dataset_status(self, node: NodeName, request: contract.DatasetStatus) -> None:
        dataset = self.datasets.get((request.namespace, request.name))
        if dataset is None or (dataset.get("spec") or {}).get("nodeName") != node:
            raise Refused(f"Dataset {request.namespace}/{request.name} is not bound to node {node}")
        status = {
            k: request.status[k]
            for k in ("phase", "message", "numberOfSamples", "sha256", "bytes", "progress", "updateTime")
            if k in request.status
        }
        path = _jobs_path(request.namespace, "datasets", request.name) + "/status"
        with contextlib.suppress(NotFound):
            await self._kube.request("PATCH", path, body={"status": status}, content_type=MERGE_PATCH)

    def _worker_report(self, node: NodeName, request: contract.WorkerReport) -> None:
        key = (request.namespace, request.job)
        kind = AGGREGATOR if request.kind == "aggregate" else TRAINER
        self._pod_of(node, key, request.worker, kind)
        if kind == AGGREGATOR:
            self.reports[key] = {"status": request.status, "ownerInfo": request.owner_info}
            self._touch(key)

    def _transfer(self, node: NodeName, request: contract.FlTransfer) -> None:
        key = (request.namespace, request.job)
        if request.kind == "model":
            pod = next(
                (
                    p
                    for p in self.pods.get(key, {}).values()
                    if (p["metadata"].get("labels") or {}).get(TYPE_LABEL) == AGGREGATOR
                ),
                None,
            )
            if pod is None or (pod.get("spec") or {}).get("nodeName") != node:
                raise Refused(f"node {node} runs no aggregation worker of job {key[0]}/{key[1]}")
        else:
            self._pod_of(node, key, request.worker, TRAINER)
        if self._request is None:
            log.warning(
                "fl_transfer_dropped", job="/".join(key), reason="the stream server is off (modules.cloudStream)"
            )
            return
        slot = (key, request.worker, request.kind)
        self._relays[slot] = (node, request)
        if slot not in self._relaying:
            self._relaying.add(slot)
            task = asyncio.get_running_loop().create_task(self._relay_loop(slot))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _relay_loop(self, slot: tuple[Key, str, str]) -> None:
        """Carry the newest transfer of one (job, worker, kind) until none is waiting."""
        try:
            while (waiting := self._relays.pop(slot, None)) is not None:
                node, request = waiting
                async with self._slots:
                    try:
                        await self._carry(node, request)
                    except Exception as exc:  # one failed relay must not end the others; the lib sends again
                        self.relay_failures += 1
                        log.warning(
                            "fl_relay_failed",
                            job=f"{request.namespace}/{request.job}",
                            kind=request.kind,
                            worker=request.worker,
                            error=str(exc),
                        )
        finally:
            self._relaying.discard(slot)

    async def _fetch(self, node: NodeName, path: str) -> tuple[bytes, str, int] | None:
        """(blob, sha256, the version its node says it is: X-Sedna-Round, or -1), None if the node has none."""
        assert self._request is not None
        answer = await self._request(node, "GET", path)
        if answer.status == 404:
            return None
        if answer.status != 200:
            raise RuntimeError(f"GET {path} on {node}: {answer.status} {answer.body[:200]!r}")
        sha = hashlib.sha256(answer.body).hexdigest()
        if answer.headers.header(SHA_HEADER) not in ("", sha):
            raise RuntimeError(f"GET {path} on {node}: the blob's sha256 does not match")
        round_header = answer.headers.header("X-Sedna-Round")
        return answer.body, sha, int(round_header) if round_header.lstrip("-").isdigit() else -1

    async def _deliver(self, node: NodeName, delivery: fl.Delivery) -> None:
        """A blob to a node's local controller: inline if it is small and the node's session is here (no
        connection to set up), else over a stream (through the replica holding the node, if need be)."""
        small = len(delivery.blob) <= fl.INLINE_MAX
        if small and self._send is not None and await self._send(node, delivery.message(now_ms=now_ms())):
            self.bytes_relayed += len(delivery.blob)
            return
        base = f"/sedna/fl/{delivery.namespace}/{delivery.job}"
        if delivery.kind == "model":
            await self._put(node, f"{base}/model?round={delivery.round}", delivery.blob, delivery.sha256)
        else:
            await self._put(node, f"{base}/inbox/{delivery.worker}", delivery.blob, delivery.sha256)

    async def _put(self, node: NodeName, path: str, blob: bytes, sha: str) -> None:
        assert self._request is not None
        answer = await self._request(node, "PUT", path, blob, {SHA_HEADER: sha})
        if answer.status not in (200, 204, 409):
            raise RuntimeError(f"PUT {path} on {node}: {answer.status} {answer.body[:200]!r}")
        self.bytes_relayed += len(blob)

    async def _carry(self, node: NodeName, request: contract.FlTransfer) -> None:
        key = (request.namespace, request.job)
        latest = self._latest.get(key)
        if request.kind == "model":
            fetched = await self._blob_of(node, request)
            if fetched is None or fetched[1] != request.sha256:
                return  # superseded on the node already: its newer announcement follows
            if latest is None or request.round >= latest.round:
                self._latest[key] = latest = _Latest(request.round, fetched[0], fetched[1])
            model = self._model_delivery(key, latest)
            targets = [n for n in self._nodes_of(key, TRAINER) if n != node]
            results = await asyncio.gather(*(self._deliver(n, model) for n in targets), return_exceptions=True)
            for target, result in zip(targets, results, strict=True):
                if isinstance(result, Exception):
                    log.info("fl_model_not_delivered", job="/".join(key), node=target, error=str(result))
            self.relayed += 1
            return
        if latest is None:
            latest = await self._newest_model(key)
        repeated = self._delivered.get((key, request.worker)) == request.sha256
        if request.kind == "join" or repeated or (latest is not None and request.round < latest.round):
            if latest is not None and request.round < latest.round:
                await self._deliver(node, self._model_delivery(key, latest))
            return
        aggregators = self._nodes_of(key, AGGREGATOR)
        if not aggregators:
            return
        fetched = await self._blob_of(node, request)
        if fetched is None:
            return
        update = fl.Delivery(key[0], key[1], "update", request.worker, request.round, fetched[1], fetched[0])
        await self._deliver(aggregators[0], update)
        self._delivered[(key, request.worker)] = request.sha256
        self.relayed += 1

    @staticmethod
    def _model_delivery(key: Key, latest: _Latest) -> fl.Delivery:
        return fl.Delivery(key[0], key[1], "model", "aggregator", latest.round, latest.sha, latest.blob)

    async def _blob_of(self, node: NodeName, request: contract.FlTransfer) -> tuple[bytes, str] | None:
        """The transfer's blob: in the message, or fetched from the node where it waits."""
        if request.blob is not None:
            return request.blob, request.sha256
        fetched = await self._fetch(node, f"/sedna/fl/{request.namespace}/{request.job}/outgoing/{request.id}")
        return (fetched[0], fetched[1]) if fetched is not None else None

    async def _newest_model(self, key: Key) -> _Latest | None:
        """After a restart of this CloudCore: the model the aggregator's node has."""
        for node in self._nodes_of(key, AGGREGATOR):
            with contextlib.suppress(Exception):
                fetched = await self._fetch(node, f"/sedna/fl/{key[0]}/{key[1]}/model")
                if fetched is not None and fetched[2] >= 0:
                    self._latest[key] = _Latest(fetched[2], fetched[0], fetched[1])
                    return self._latest[key]
        return None
