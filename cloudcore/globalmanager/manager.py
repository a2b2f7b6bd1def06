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
from typing import Any

from cloudcore.edgecontroller.upstream import Refused
from cloudcore.globalmanager import training
from cloudcore.globalmanager.pods import AGGREGATOR, API_VERSION, JOB_LABEL, TRAINER, TYPE_LABEL, JobError, build_pods
from cloudcore.globalmanager.spec import distributed_of
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
        self.training_jobs: dict[Key, dict[str, Any]] = {}  # job → the operator's job running its trainers
        self._members: dict[Key, list[str]] = {}  # job → the trainers its aggregator was last told of
        self.reports: dict[Key, dict[str, Any]] = {}  # job → the aggregator's latest report
        self._latest: dict[Key, fl.Delivery] = {}  # job → the newest model carried (to hand to joining workers)
        # (job, worker) → the sha256 of the update last delivered to the aggregator: a worker that sends the same
        # update again is waiting for a model, not asking for its 10 MB to be carried twice. Forgotten for the
        # whole job whenever the aggregator offers a model (again): a restarted aggregator, or one retrying a
        # round, may have lost what its inbox held, and wants those updates once more.
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
            self._members.pop(key, None)
            self._forget_deliveries(key)
        else:
            self.jobs[key] = job
        self._touch(key)

    def _forget_deliveries(self, key: Key) -> None:
        for delivered in [d for d in self._delivered if d[0] == key]:
            del self._delivered[delivered]

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
            r.get("kind") in ("FederatedLearningJob", training.KIND)
            for r in pod["metadata"].get("ownerReferences") or []
        ):
            return
        key = (pod["metadata"].get("namespace", "default"), job)
        if kind == DELETED:
            self.pods.get(key, {}).pop(pod["metadata"]["name"], None)
        else:
            self.pods.setdefault(key, {})[pod["metadata"]["name"]] = pod
        self._touch(key)

    def on_training_job(self, kind: str, obj: dict[str, Any], before: dict[str, Any] | None) -> None:
        """The operator's jobs (PyTorchJob) this manager created: labelled with their job's name."""
        job = (obj["metadata"].get("labels") or {}).get(JOB_LABEL)
        if not job or not any(
            r.get("kind") == "FederatedLearningJob" for r in obj["metadata"].get("ownerReferences") or []
        ):
            return
        key = (obj["metadata"].get("namespace", "default"), job)
        if kind == DELETED:
            self.training_jobs.pop(key, None)
        else:
            self.training_jobs[key] = obj
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
        operated = self._operated(key, job)
        pods = [p for p in self.pods.get(key, {}).values() if self._owned(p, job, operated)]
        error = ""
        final = (job.get("status") or {}).get("phase") in FINAL
        wanted_job: dict[str, Any] | None = None
        if not final:
            datasets = {n: d for (ns, n), d in self.datasets.items() if ns == namespace}
            try:
                wanted = build_pods(job, datasets, {n: m for (ns, n), m in self.models.items() if ns == namespace})
                wanted_job = training.build_training_job(job, datasets)
            except JobError as exc:
                error = str(exc)
                wanted = []
            have = {p["metadata"]["name"] for p in pods}
            for pod in wanted:
                if pod["metadata"]["name"] not in have:
                    await self._create_pod(namespace, pod)
            if wanted_job is not None:
                await self._run_training_job(key, operated, wanted_job)
                self._tell_members(key, pods)
        operator = (
            training.summary(operated, self._placement(key, job, pods)) if wanted_job is not None or operated else None
        )
        status = job_status(
            job,
            pods,
            self.reports.get(key),
            now=_now(),
            error=error,
            operator=operator,
            gave_up=training.failed(operated),
        )
        if status != (job.get("status") or {}):
            await self._write_status(job, status)
        if status.get("phase") == "Failed":
            await self._stop_active(namespace, [p for p in pods if not self._of_operator(p)])
            if operated is not None:
                await self._suspend(operated)

    async def _stop_active(self, namespace: str, pods: list[dict[str, Any]]) -> None:
        """A failed job's workers would wait for a model that never comes: they are deleted, as a Job's are."""
        for pod in pods:
            if (pod.get("status") or {}).get("phase") in ("Pending", "Running") and not pod["metadata"].get(
                "deletionTimestamp"
            ):
                with contextlib.suppress(NotFound):
                    await self._kube.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}")
                    log.info("fl_pod_stopped", pod=f"{namespace}/{pod['metadata']['name']}", reason="job failed")

    def _operated(self, key: Key, job: dict[str, Any]) -> dict[str, Any] | None:
        found = self.training_jobs.get(key)
        if found is None or not any(
            r.get("uid") == job["metadata"]["uid"] for r in found["metadata"].get("ownerReferences") or []
        ):
            return None
        return found

    async def _run_training_job(self, key: Key, operated: dict[str, Any] | None, wanted: dict[str, Any]) -> None:
        """Create the operator's job, or bring its worker count to the job's replicas (the user scales the
        FederatedLearningJob, not the PyTorchJob it owns)."""
        namespace, name = key
        path = f"/apis/{training.API_VERSION}/namespaces/{namespace}/{training.PLURAL}"
        if operated is None:
            try:
                created = await self._kube.request("POST", path, body=wanted)
                self.training_jobs[key] = created
                log.info("fl_training_job_created", job=f"{namespace}/{name}", kind=training.KIND)
            except Conflict:
                pass  # made already (by another replica, or before this manager restarted): its event follows
            return
        replicas = training.worker_replicas(wanted)
        if training.worker_replicas(operated) != replicas and not training.failed(operated):
            body = {"spec": {"pytorchReplicaSpecs": {"Worker": {"replicas": replicas}}}}
            updated = await self._kube.request("PATCH", f"{path}/{name}", body=body, content_type=MERGE_PATCH)
            self.training_jobs[key] = updated
            log.info("fl_training_job_scaled", job=f"{namespace}/{name}", replicas=replicas)

    async def _suspend(self, operated: dict[str, Any]) -> None:
        """A failed job's workers would wait for models that never come; the operator would restart any pod
        deleted under it, so it is told to stop them itself. (A job that succeeded ends its workers: they exit
        on the final model.)"""
        run_policy = (operated.get("spec") or {}).get("runPolicy") or {}
        conditions = (operated.get("status") or {}).get("conditions") or []
        if run_policy.get("suspend") or any(
            c.get("type") in ("Succeeded", "Failed") and c.get("status") == "True" for c in conditions
        ):
            return
        namespace, name = _key(operated)
        path = f"/apis/{training.API_VERSION}/namespaces/{namespace}/{training.PLURAL}/{name}"
        with contextlib.suppress(NotFound):
            updated = await self._kube.request(
                "PATCH", path, body={"spec": {"runPolicy": {"suspend": True}}}, content_type=MERGE_PATCH
            )
            self.training_jobs[(namespace, (operated["metadata"].get("labels") or {})[JOB_LABEL])] = updated
            log.info("fl_training_job_suspended", job=f"{namespace}/{name}", reason="the federated job failed")

    def _placement(self, key: Key, job: dict[str, Any], pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each operator worker: its node and the Dataset it trains on there (the job's one on its node)."""
        try:
            plan = distributed_of(job.get("spec") or {})
        except JobError:
            plan = None
        names = set(plan.datasets) if plan is not None else set()
        by_node = {
            str((d.get("spec") or {}).get("nodeName") or ""): name
            for (ns, name), d in self.datasets.items()
            if ns == key[0] and name in names
        }
        workers = []
        for pod in sorted(pods, key=lambda p: str(p["metadata"]["name"])):
            if not self._of_operator(pod):
                continue
            node = str((pod.get("spec") or {}).get("nodeName") or "")
            workers.append(
                {
                    "name": pod["metadata"]["name"],
                    "node": node,
                    "dataset": by_node.get(node, ""),
                    "phase": str((pod.get("status") or {}).get("phase") or "Pending"),
                    "restarts": sum(
                        int(s.get("restartCount") or 0)
                        for s in (pod.get("status") or {}).get("containerStatuses") or []
                    ),
                }
            )
        return workers

    def _tell_members(self, key: Key, pods: list[dict[str, Any]]) -> None:
        """The aggregator of an elastic job expects an update from every trainer there is now: tell it when
        they change (a worker added, removed, or gone to be restarted)."""
        members = sorted(
            p["metadata"]["name"]
            for p in pods
            if self._of_operator(p)
            and (p.get("status") or {}).get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")
        )
        aggregators = self._nodes_of(key, AGGREGATOR)
        if not aggregators or self._members.get(key) == members or (self._request is None and self._send is None):
            return
        self._members[key] = members
        delivery = fl.members_delivery(key[0], key[1], members, generation=now_ms())
        task = asyncio.get_running_loop().create_task(self._deliver_members(aggregators[0], key, delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver_members(self, node: NodeName, key: Key, delivery: fl.Delivery) -> None:
        try:
            await self._deliver(node, delivery)
            log.info("fl_members_told", job="/".join(key), node=node, members=len(fl.members_of(delivery.blob)))
        except Exception as exc:  # told again at the next change, or when the aggregator reports other members
            self._members.pop(key, None)
            log.info("fl_members_not_told", job="/".join(key), node=node, error=str(exc))

    @staticmethod
    def _owned(pod: dict[str, Any], job: dict[str, Any], operated: dict[str, Any] | None) -> bool:
        owners = {job["metadata"]["uid"], *([operated["metadata"]["uid"]] if operated else [])}
        return any(r.get("uid") in owners for r in pod["metadata"].get("ownerReferences") or [])

    @staticmethod
    def _of_operator(pod: dict[str, Any]) -> bool:
        return any(r.get("kind") == training.KIND for r in pod["metadata"].get("ownerReferences") or [])

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
            told = self._members.get(key)
            if told is not None and request.owner_info.get("members") not in (None, told):
                self._members.pop(key, None)  # the telling was lost on the way: tell it again
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
        elif delivery.kind == fl.MEMBERS:
            await self._put(node, f"{base}/members?generation={delivery.round}", delivery.blob, delivery.sha256)
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
                self._latest[key] = latest = self._model(key, request.round, *fetched)
            self._forget_deliveries(key)
            targets = [n for n in self._nodes_of(key, TRAINER) if n != node]
            results = await asyncio.gather(*(self._deliver(n, latest) for n in targets), return_exceptions=True)
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
                await self._deliver(node, latest)
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
    def _model(key: Key, round_: int, blob: bytes, sha: str) -> fl.Delivery:
        return fl.Delivery(key[0], key[1], "model", "aggregator", round_, sha, blob)

    async def _blob_of(self, node: NodeName, request: contract.FlTransfer) -> tuple[bytes, str] | None:
        """The transfer's blob: in the message, or fetched from the node where it waits."""
        if request.blob is not None:
            return request.blob, request.sha256
        base = f"/sedna/fl/{request.namespace}/{request.job}"
        path = f"{base}/model" if request.id == fl.MODEL_FILE else f"{base}/outgoing/{request.id}"
        fetched = await self._fetch(node, path)
        return (fetched[0], fetched[1]) if fetched is not None else None

    async def _newest_model(self, key: Key) -> fl.Delivery | None:
        """After a restart of this CloudCore: the model the aggregator's node has."""
        for node in self._nodes_of(key, AGGREGATOR):
            with contextlib.suppress(Exception):
                fetched = await self._fetch(node, f"/sedna/fl/{key[0]}/{key[1]}/model")
                if fetched is not None and fetched[2] >= 0:
                    self._latest[key] = self._model(key, fetched[2], fetched[0], fetched[1])
                    return self._latest[key]
        return None
