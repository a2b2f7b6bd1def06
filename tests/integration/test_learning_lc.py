"""The learning lib against a real local controller (EdgeCore's module, its HTTP endpoint on loopback),
without Kubernetes: the aggregator and four trainers share one node, and the cloud's part (fetching a staged
update and delivering it to the aggregator's inbox, which the global manager does over a stream) is played by
the test's ``relay``, calling the same routes the stream reaches. The whole path through CloudCore, pods and
the tunnel is tests/integration/test_federated.py."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import http.server
import threading
from pathlib import Path
from typing import Any

import pytest

from common import fl, httphead
from common.upstream import Upstream
from edgecore.localcontroller import LocalController
from learning import data
from learning.aggregation import FedAvg
from learning.client import LCClient
from learning.estimator import MLP, Metrics, Weights
from learning.rounds import RoundPolicy
from learning.server import AggregationServer
from learning.worker import FederatedLearning


class _Store:
    def __init__(self) -> None:
        self.objects: list[dict[str, Any]] = []

    async def list_kind(self, kind: str) -> list[Any]:
        return list(self.objects) if kind == "dataset" else []


def _head(method: str, target: str, headers: dict[str, str] | None = None) -> httphead.RequestHead:
    return httphead.RequestHead(method, target, "HTTP/1.1", list((headers or {}).items()))


async def _start(tmp_path: Path, published: list[Upstream], relay: Any = None) -> tuple[LocalController, int]:
    async def publish(*messages: Upstream) -> None:
        published.extend(messages)
        if relay is not None:
            for m in messages:
                await relay(m)

    lc = LocalController(
        node="edge-a", root=tmp_path, store=_Store(), publish=publish, host="127.0.0.1", port=0, max_body=1 << 26
    )
    task = asyncio.get_running_loop().create_task(lc.run())
    port = await lc.wait_listening()
    lc._task = task  # type: ignore[attr-defined]
    return lc, port


async def test_four_trainers_and_an_aggregator_finish_a_non_iid_job_through_the_local_controller(
    tmp_path: Path,
) -> None:
    published: list[Upstream] = []
    lc: LocalController | None = None

    async def relay(message: Upstream) -> None:  # the global manager's part, see the module docstring
        content = message.content
        if message.resource.split("/")[1] != "fltransfer" or content["kind"] != "update":
            return
        assert lc is not None
        if "blob" in content:  # small: it came inside the message, and goes down the same way
            body = fl.decode_blob(content["blob"], content["sha256"], "blob")
            delivery = fl.Delivery(
                "default", "job", "update", content["worker"], content["round"], content["sha256"], body
            )
            await lc.on_message(delivery.message(now_ms=0))
            return
        got = await lc.handle(_head("GET", f"/sedna/fl/default/job/outgoing/{content['id']}"), b"", from_cloud=True)
        assert got.status == 200
        body = got.body if isinstance(got.body, bytes) else got.body.encode()
        sha = hashlib.sha256(body).hexdigest()
        put = await lc.handle(
            _head("PUT", f"/sedna/fl/default/job/inbox/{content['worker']}", {"X-Sedna-Sha256": sha}),
            body,
            from_cloud=True,
        )
        assert put.status == 204

    lc, port = await _start(tmp_path, published, relay)
    train, test = data.digits()
    shards = data.shards(train, 4, iid=False)
    server_url = f"http://127.0.0.1:{port}"
    probe = MLP()

    def evaluate(weights: Weights) -> Metrics:
        probe.set_weights(weights)
        return probe.evaluate(*test)

    server = AggregationServer(
        FedAvg(),
        RoundPolicy(rounds=30, participants=4, min_workers=4, round_timeout_s=30),
        lc=LCClient(server_url, namespace="default", job="job", worker="job-aggregator"),
        initial_weights=MLP(seed=0).get_weights(),
        checkpoint_dir=tmp_path / "checkpoint",
        evaluate=evaluate,
    )

    def trainer(i: int) -> Any:
        client = LCClient(server_url, namespace="default", job="job", worker=f"job-trainer-{i}")
        return FederatedLearning(MLP(seed=i + 1), lc=client, poll_s=1).train(shards[i])

    try:
        outcome, *results = await asyncio.wait_for(
            asyncio.gather(asyncio.to_thread(server.run), *(asyncio.to_thread(trainer, i) for i in range(4))),
            timeout=120,
        )
    finally:
        lc._task.cancel()  # type: ignore[attr-defined]
    assert outcome.succeeded, outcome
    assert outcome.round == 30
    assert server.history[-1]["accuracy"] >= 0.9
    assert [r.final_round for r in results] == [30] * 4
    reports = [m for m in published if m.key.startswith("flworker/default/job/job-aggregator")]
    assert reports[-1].content["status"] == "completed"


async def test_the_endpoint_refuses_what_it_cannot_take_and_keeps_serving(tmp_path: Path) -> None:
    published: list[Upstream] = []
    lc, port = await _start(tmp_path, published)
    client = LCClient(f"http://127.0.0.1:{port}", namespace="default", job="job", worker="w", patience=2)
    try:
        bad = await lc.handle(
            _head("PUT", "/sedna/fl/default/job/updates/w?round=0", {"X-Sedna-Sha256": "0" * 64}),
            b"x",
            from_cloud=False,
        )
        assert bad.status == 400
        assert "sha256 does not match" in str(bad.body)
        traversal = await lc.handle(_head("POST", "/sedna/fl/default/..%2Fetc/join?worker=w"), b"", from_cloud=False)
        assert traversal.status == 400
        cloud_only = await lc.handle(_head("GET", "/sedna/fl/default/job/outgoing/x"), b"", from_cloud=False)
        assert cloud_only.status == 404  # a pod cannot take what waits for the cloud
        assert await asyncio.to_thread(client.wait_model, after=-1, wait=0.2) is None
        status = await asyncio.to_thread(client.dataset, "nothing")
        assert status["phase"] == "Pending"

        class _Writer:  # a connection from a neighbour on the node's network, not from the node itself
            def get_extra_info(self, name: str) -> Any:
                return ("10.9.9.9", 40000) if name == "peername" else None

        assert not lc._local_peer(_Writer())  # type: ignore[arg-type]
    finally:
        lc._task.cancel()  # type: ignore[attr-defined]
    assert published == []


@pytest.mark.parametrize("fmt", ["csv", "txt"])
async def test_the_data_loader_copies_checks_and_counts_a_dataset(tmp_path: Path, fmt: str) -> None:
    source = tmp_path / f"shard.{fmt}"
    source.write_text("f0,label\n1,2\n3,4\n5,6\n")
    published: list[Upstream] = []
    lc, port = await _start(tmp_path / "lc", published)
    store = lc._store
    assert isinstance(store, _Store)
    dataset = {
        "metadata": {"name": "shard", "namespace": "default", "uid": "u1"},
        "spec": {"url": str(source), "format": fmt, "nodeName": "edge-a"},
    }
    client = LCClient(f"http://127.0.0.1:{port}", namespace="default", job="job", worker="w", patience=2)
    try:
        store.objects = [dataset]
        lc.wake()
        for _ in range(100):
            status = await asyncio.to_thread(client.dataset, "shard")
            if status["phase"] == "Ready":
                break
            await asyncio.sleep(0.05)
        assert status["numberOfSamples"] == (3 if fmt == "csv" else 4)
        body, sha = await asyncio.to_thread(client.dataset_bytes, "shard")
        assert body == source.read_bytes()
        assert sha == hashlib.sha256(body).hexdigest()
        dataset["spec"]["checksum"] = "sha256:" + "0" * 64
        dataset["metadata"]["uid"] = "u2"
        lc.wake()
        for _ in range(100):
            status = await asyncio.to_thread(client.dataset, "shard")
            if status["phase"] == "Failed":
                break
            await asyncio.sleep(0.05)
        assert "spec.checksum" in status["message"]
    finally:
        lc._task.cancel()  # type: ignore[attr-defined]
    phases = [m.content["status"]["phase"] for m in published if m.key == "dataset/default/shard"]
    assert phases[:2] == ["Loading", "Ready"]
    assert phases[-1] == "Failed"


async def test_the_data_loader_fetches_an_http_url(tmp_path: Path) -> None:
    served = tmp_path / "www"
    served.mkdir()
    (served / "shard.csv").write_text("f0,label\n1,2\n3,4\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    published: list[Upstream] = []
    lc, port = await _start(tmp_path / "lc", published)
    store = lc._store
    assert isinstance(store, _Store)
    url = f"http://127.0.0.1:{server.server_address[1]}/shard.csv"
    store.objects = [
        {
            "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
            "spec": {"url": url, "format": "csv", "nodeName": "edge-a"},
        }
    ]
    client = LCClient(f"http://127.0.0.1:{port}", namespace="default", job="job", worker="w", patience=2)
    try:
        lc.wake()
        for _ in range(100):
            status = await asyncio.to_thread(client.dataset, "web")
            if status["phase"] in ("Ready", "Failed"):
                break
            await asyncio.sleep(0.05)
        assert (status["phase"], status["numberOfSamples"], status["progress"]) == ("Ready", 2, 100), status
        assert (await asyncio.to_thread(client.dataset_bytes, "web"))[0] == (served / "shard.csv").read_bytes()
    finally:
        lc._task.cancel()  # type: ignore[attr-defined]
        server.shutdown()
        server.server_close()


async def test_an_elastic_jobs_members_reach_the_aggregator_newest_first_and_bad_ones_are_refused(
    tmp_path: Path,
) -> None:
    published: list[Upstream] = []
    lc, port = await _start(tmp_path, published)
    client = LCClient(f"http://127.0.0.1:{port}", namespace="default", job="job", worker="agg", patience=2)
    try:
        assert await asyncio.to_thread(client.members) is None  # not told yet: the aggregator keeps its count
        newer = fl.members_delivery("default", "job", ["job-worker-1", "job-worker-0"], generation=20)
        await lc.on_message(newer.message(now_ms=0))  # inline, through the hub
        older = fl.members_delivery("default", "job", ["job-worker-0"], generation=10)
        await lc.on_message(older.message(now_ms=0))  # late: dropped
        assert await asyncio.to_thread(client.members) == ["job-worker-0", "job-worker-1"]
        blob = b'{"workers": [1, 2]}'
        bad = await lc.handle(
            _head(
                "PUT",
                "/sedna/fl/default/job/members?generation=30",
                {"X-Sedna-Sha256": hashlib.sha256(blob).hexdigest()},
            ),
            blob,
            from_cloud=True,
        )
        assert bad.status == 400
        assert "workers" in str(bad.body)
        from_a_pod = await lc.handle(
            _head("PUT", "/sedna/fl/default/job/members?generation=40"), b"{}", from_cloud=False
        )
        assert from_a_pod.status == 404  # only the cloud tells who the members are
        assert await asyncio.to_thread(client.members) == ["job-worker-0", "job-worker-1"]
    finally:
        lc._task.cancel()  # type: ignore[attr-defined]
