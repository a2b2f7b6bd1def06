"""Flower's side of the federated benchmark: the same FedAvg job as ours, run by a real Flower server and clients.

Runs in Flower's own venv (benchmarks/flower_env.py; flwr pins protobuf<7, we need protobuf>=7.36), with
``PYTHONPATH`` at the repo root so that it trains our model::

    PYTHONPATH=. "$(.venv/bin/python -m benchmarks.flower_env)" benchmarks/flower_side.py --rounds 30 --workers 4 --iid

The job matches ours: ``learning.estimator.MLP`` (sizes ``--model-sizes``, lr 0.1, batch 10), the global model
starts as ``MLP(seed=0)``, worker i trains an ``MLP(seed=i + 1)`` (its seed drives the shuffling; its weights are
the global model's each round) for ``--epochs`` on shard i of ``learning.data.shards(digits(seed=0)[0], workers,
iid=..., seed=0)``; FedAvg weighted by sample count over all workers every round; the global model is evaluated on
the 360-sample test set on the server after each round.

This process runs the server and a byte-counting TCP proxy (an asyncio loop in a thread) in front of it; each
client is a child process connecting through the proxy, so the bytes of each round are counted on the wire (HTTP/2
framing, protobuf and all), and ``--rtt-ms`` delays each direction by half the RTT. Server and clients are
Flower's legacy standalone ones, ``flwr.server.start_server`` and ``flwr.client.start_client`` (gRPC
bidirectional streaming): deprecated since flwr 1.13 but still shipped in 1.42, and, unlike a SuperLink with
SuperNodes, they need no packaged Flower App nor ``flwr run``, and the strategy is an object in this process.

Per round it records the global model's test accuracy, the seconds from sending the round's model to aggregating
the updates (evaluation excluded), and the bytes each way. Stdout gets one JSON object at the end (``rounds``,
``flwr_version``, ``total_seconds`` from the first round's start to the last evaluation, ``setup_seconds`` before
that: imports, data, clients connecting); everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

# Read by flwr at import time: no usage reports sent from a benchmark run.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from flwr import __version__ as FLWR_VERSION  # type: ignore[import-not-found]
from flwr.client import NumPyClient, start_client  # type: ignore[import-not-found]
from flwr.common import ndarrays_to_parameters  # type: ignore[import-not-found]
from flwr.server import ServerConfig, start_server  # type: ignore[import-not-found]
from flwr.server.strategy import FedAvg  # type: ignore[import-not-found]

from learning import data
from learning.estimator import MLP, Weights

LEARNING_RATE = 0.1
BATCH_SIZE = 10
DATA_SEED = 0
GLOBAL_MODEL_SEED = 0
HOST = "127.0.0.1"
CONNECT_TIMEOUT_S = 120  # for all clients to connect (each imports flwr and scikit-learn first)
ROUND_TIMEOUT_S = 300.0  # a client that has not answered by then counts as failed, which fails the run
CLIENT_EXIT_TIMEOUT_S = 10.0
CHUNK_BYTES = 1 << 16


def log(text: str) -> None:
    print(f"# flower: {text}", file=sys.stderr, flush=True)


def model(sizes: tuple[int, ...], seed: int) -> MLP:
    return MLP(sizes, lr=LEARNING_RATE, batch_size=BATCH_SIZE, seed=seed)


# --- the byte-counting proxy ---------------------------------------------------------------------------------------


class CountingProxy:
    """A TCP proxy from ``HOST:port`` to the server that counts the bytes it forwards each way and delays each
    direction by ``one_way_delay_s`` (latency only: chunks are timestamped on arrival and written out once their
    delay is up, so several can be in flight and the bandwidth is not throttled)."""

    def __init__(self, upstream_port: int, *, one_way_delay_s: float) -> None:
        self.upstream_port = upstream_port
        self.one_way_delay_s = one_way_delay_s
        self.port = 0
        self._bytes_up = 0  # client → server
        self._bytes_down = 0  # server → client
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), name="proxy", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the proxy did not start listening")

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(5)

    def totals(self) -> tuple[int, int]:
        """(bytes up, bytes down) forwarded so far."""
        with self._lock:
            return self._bytes_up, self._bytes_down

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._connection, HOST, 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stopping.wait()

    async def _connection(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(HOST, self.upstream_port)
        except OSError:
            client_writer.close()  # the server is not up yet: the client retries
            return
        # asyncio sets TCP_NODELAY on its sockets, so small gRPC frames are not held back by Nagle
        await asyncio.gather(
            self._pipe(client_reader, server_writer, upstream=True),
            self._pipe(server_reader, client_writer, upstream=False),
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool) -> None:
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def receive() -> None:
            with contextlib.suppress(ConnectionError):
                while chunk := await reader.read(CHUNK_BYTES):
                    chunks.put_nowait((loop.time() + self.one_way_delay_s, chunk))
            chunks.put_nowait((loop.time() + self.one_way_delay_s, b""))  # the end, delivered in order too

        async def deliver() -> None:
            try:
                while True:
                    due, chunk = await chunks.get()
                    if (wait := due - loop.time()) > 0:
                        await asyncio.sleep(wait)
                    if not chunk:
                        break
                    # counted before it is written, so the server never acts on bytes the counters do not show yet
                    with self._lock:
                        if upstream:
                            self._bytes_up += len(chunk)
                        else:
                            self._bytes_down += len(chunk)
                    writer.write(chunk)
                    await writer.drain()
            except ConnectionError:
                pass
            finally:
                writer.close()

        await asyncio.gather(receive(), deliver())


# --- the client ----------------------------------------------------------------------------------------------------


class ShardClient(NumPyClient):  # type: ignore[misc]  # flwr is not installed where mypy runs
    """Worker ``worker``: our MLP on its shard. The one instance lives for the whole run, so its RNG (the
    shuffling) advances from round to round as our workers' does."""

    def __init__(self, worker: int, shard: data.Data, sizes: tuple[int, ...]) -> None:
        self.worker = worker
        self.x, self.y = shard
        self.model = model(sizes, seed=worker + 1)

    def get_parameters(self, config: dict[str, Any]) -> Weights:
        return self.model.get_weights()

    def fit(self, parameters: Weights, config: dict[str, Any]) -> tuple[Weights, int, dict[str, Any]]:
        self.model.set_weights(list(parameters))
        self.model.train(self.x, self.y, epochs=int(config["epochs"]))
        return self.model.get_weights(), len(self.y), {"worker": self.worker}


def run_client(args: argparse.Namespace) -> int:
    train, _ = data.digits(seed=DATA_SEED)
    shard = data.shards(train, args.workers, iid=args.iid, seed=DATA_SEED)[args.worker]
    client = ShardClient(args.worker, shard, args.model_sizes)
    start_client(
        server_address=args.client_of, client=client.to_client(), insecure=True, max_wait_time=CONNECT_TIMEOUT_S
    )
    return 0


# --- the server ----------------------------------------------------------------------------------------------------


@dataclass
class RoundRecord:
    round: int
    accuracy: float = 0.0
    seconds: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0


class MeasuredFedAvg(FedAvg):  # type: ignore[misc]  # flwr is not installed where mypy runs
    """Flower's FedAvg over all ``workers`` every round, evaluating the global model on ``test`` after each round
    (server side), timing each round and reading the proxy's counters at its edges.

    A round runs from the end of ``configure_fit`` (all clients connected; the model is about to be sent) to the
    end of ``aggregate_fit``. The bytes of a round are those forwarded since the previous round's aggregation (the
    first round's start for round 1), so the few trailing bytes of a round (HTTP/2 acks, window updates) that cross
    during the server's evaluation count in the next one rather than in none."""

    def __init__(
        self, proxy: CountingProxy, *, workers: int, epochs: int, sizes: tuple[int, ...], test: data.Data
    ) -> None:
        super().__init__(
            fraction_fit=1.0,
            min_fit_clients=workers,
            min_available_clients=workers,
            fraction_evaluate=0.0,  # no federated evaluation: the server evaluates the global model itself
            evaluate_fn=self.evaluate_global,
            on_fit_config_fn=lambda _round: {"epochs": epochs},
            accept_failures=False,
            initial_parameters=ndarrays_to_parameters(model(sizes, seed=GLOBAL_MODEL_SEED).get_weights()),
        )
        self.proxy = proxy
        self.workers = workers
        self.sizes = sizes
        self.test = test
        self.records: dict[int, RoundRecord] = {}
        self.first_round_started = 0.0
        self.last_round_evaluated = 0.0
        self._round_started = 0.0
        self._bytes_before = (0, 0)

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list[Any]:
        # FedAvg's sampling would wait a day for missing clients; a client that died at start must fail the run
        if not client_manager.wait_for(self.workers, timeout=CONNECT_TIMEOUT_S):
            raise RuntimeError(f"only {client_manager.num_available()} of {self.workers} clients connected")
        instructions: list[Any] = super().configure_fit(server_round, parameters, client_manager)
        self._round_started = time.perf_counter()
        if server_round == 1:
            self.first_round_started = self._round_started
            self._bytes_before = self.proxy.totals()
        return instructions

    def aggregate_fit(self, server_round: int, results: list[Any], failures: list[Any]) -> tuple[Any, dict[str, Any]]:
        if failures or len(results) != self.workers:
            raise RuntimeError(f"round {server_round}: {len(results)} updates, {len(failures)} failures")
        # Results come in the order the clients finished; summing float32 in a fixed order keeps runs repeatable
        ordered = sorted(results, key=lambda result: int(result[1].metrics["worker"]))
        aggregated: tuple[Any, dict[str, Any]] = super().aggregate_fit(server_round, ordered, failures)
        bytes_now = self.proxy.totals()
        record = self._record(server_round)
        record.seconds = time.perf_counter() - self._round_started
        record.bytes_up = bytes_now[0] - self._bytes_before[0]
        record.bytes_down = bytes_now[1] - self._bytes_before[1]
        self._bytes_before = bytes_now
        return aggregated

    def evaluate_global(
        self, server_round: int, weights: Weights, config: dict[str, Any]
    ) -> tuple[float, dict[str, Any]]:
        global_model = model(self.sizes, seed=GLOBAL_MODEL_SEED)
        global_model.set_weights(list(weights))
        metrics = global_model.evaluate(*self.test)
        if server_round > 0:  # round 0 is the initial model
            self._record(server_round).accuracy = metrics.accuracy
            self.last_round_evaluated = time.perf_counter()
            log(f"round {server_round}: test accuracy {metrics.accuracy:.4f}")
        return metrics.loss, {"accuracy": metrics.accuracy}

    def _record(self, server_round: int) -> RoundRecord:
        return self.records.setdefault(server_round, RoundRecord(server_round))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def spawn_clients(args: argparse.Namespace, proxy_port: int) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "FLWR_LOG_LEVEL": os.environ.get("FLWR_CLIENT_LOG_LEVEL", "WARNING")}
    common = [
        "--workers",
        str(args.workers),
        "--iid" if args.iid else "--non-iid",
        "--model-sizes",
        ",".join(map(str, args.model_sizes)),
    ]
    return [
        # stdout to our stderr: our stdout carries only the JSON
        subprocess.Popen(
            [sys.executable, __file__, "--client-of", f"{HOST}:{proxy_port}", "--worker", str(worker), *common],
            stdout=sys.stderr,
            env=env,
        )
        for worker in range(args.workers)
    ]


def wait_for_clients(clients: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for client in clients:
        with contextlib.suppress(subprocess.TimeoutExpired):
            client.wait(max(0.0, deadline - time.monotonic()))


def stop_clients(clients: list[subprocess.Popen[bytes]]) -> None:
    for client in clients:
        if client.poll() is None:
            log(f"stopping client pid {client.pid}")
            client.terminate()
    wait_for_clients(clients, 5)
    for client in clients:
        if client.poll() is None:
            client.kill()
            client.wait()


def interrupted(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops the clients


def run_server(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    signal.signal(signal.SIGTERM, interrupted)  # until start_server installs flwr's handler, which also exits
    _, test = data.digits(seed=DATA_SEED)
    server_port = free_port()
    proxy = CountingProxy(server_port, one_way_delay_s=args.rtt_ms / 2000)
    proxy.start()
    log(f"flwr {FLWR_VERSION}: server on {HOST}:{server_port}, proxy on {HOST}:{proxy.port}, RTT {args.rtt_ms} ms")
    strategy = MeasuredFedAvg(proxy, workers=args.workers, epochs=args.epochs, sizes=args.model_sizes, test=test)
    # Started before the server, which blocks until the run is over; they retry until it listens.
    clients = spawn_clients(args, proxy.port)
    try:
        start_server(
            server_address=f"{HOST}:{server_port}",
            config=ServerConfig(num_rounds=args.rounds, round_timeout=ROUND_TIMEOUT_S),
            strategy=strategy,
        )
        wait_for_clients(clients, CLIENT_EXIT_TIMEOUT_S)  # they leave by themselves once the server says goodbye
    except SystemExit as exit_:
        # flwr's handler exits 0 on SIGINT/SIGTERM ("graceful"), but a run cut short has no results
        raise SystemExit(exit_.code or 130) from exit_
    finally:
        stop_clients(clients)
        proxy.stop()
    failed = [client.pid for client in clients if client.returncode != 0]
    if failed:
        log(f"clients {failed} exited with an error")
    rounds = [asdict(strategy.records[r]) for r in sorted(strategy.records)]
    if len(rounds) != args.rounds:
        raise RuntimeError(f"{len(rounds)} of {args.rounds} rounds recorded")
    print(
        json.dumps(
            {
                "rounds": rounds,
                "flwr_version": FLWR_VERSION,
                "total_seconds": strategy.last_round_evaluated - strategy.first_round_started,
                "setup_seconds": strategy.first_round_started - started,
            }
        ),
        flush=True,
    )
    return 1 if failed else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--workers", type=int, default=4)
    split = parser.add_mutually_exclusive_group(required=True)
    split.add_argument("--iid", dest="iid", action="store_true")
    split.add_argument("--non-iid", dest="iid", action="store_false")
    parser.add_argument(
        "--model-sizes", type=lambda text: tuple(int(size) for size in text.split(",")), default=(64, 32, 10)
    )
    parser.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    parser.add_argument("--rtt-ms", type=float, default=0.0, help="round-trip time the proxy adds")
    # The client processes this script starts run it again with these
    parser.add_argument("--client-of", help=argparse.SUPPRESS)
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    return run_client(args) if args.client_of else run_server(args)


if __name__ == "__main__":
    sys.exit(main())
