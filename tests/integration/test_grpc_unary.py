"""Edged's unary gRPC client against grpcio's server, the reference implementation, on TCP and a unix socket.

The CRI side of the client is covered against containerd in test_cri.py; here the server is ours to shape:
errors with details, deadlines, flow control both ways, a message above the limit, a server restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import wrappers_pb2

from edgecore.edged import probes
from edgecore.edged.grpc_unary import RpcError, UnaryChannel, call_status, frame_message, timeout_header
from edgecore.edged.runtime import ExecResult


class Service:
    """test.Echo: Echo answers its request, Fail aborts with the request as details, Sleep outlives deadlines."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.deadlines: list[float | None] = []

    async def echo(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        self.deadlines.append(context.time_remaining())
        return request

    async def big(self, request: bytes, _: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return b"x" * int(request.decode())

    async def fail(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await context.abort(grpc.StatusCode.NOT_FOUND, request.decode())
        return b""  # pragma: no cover - abort raises

    async def sleep(self, _: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return b""  # pragma: no cover

    def handler(self) -> grpc.GenericRpcHandler:
        methods = {"Echo": self.echo, "Big": self.big, "Fail": self.fail, "Sleep": self.sleep}
        return grpc.method_handlers_generic_handler(
            "test.Echo", {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in methods.items()}
        )


async def _serve(service: Service, address: str) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 32 * 1024 * 1024)])
    server.add_generic_rpc_handlers((service.handler(),))
    port = server.add_insecure_port(address)
    await server.start()
    return server, port


@pytest.fixture
async def served() -> AsyncIterator[tuple[Service, str]]:
    service = Service()
    server, port = await _serve(service, "127.0.0.1:0")
    try:
        yield service, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def test_calls_answer_in_order_of_their_own_streams_and_carry_the_deadline(served: tuple[Service, str]) -> None:
    service, target = served
    async with UnaryChannel(target) as channel:
        replies = await asyncio.gather(
            *(channel.call("/test.Echo/Echo", f"hello {i}".encode(), deadline_s=5) for i in range(20))
        )
        assert replies == [f"hello {i}".encode() for i in range(20)]
        assert await channel.call("/test.Echo/Echo", b"", deadline_s=5) == b""
    # grpc-timeout reached the server: it saw (just under) the 5 s the caller gave
    assert all(d is not None and 4 < d <= 5 for d in service.deadlines)


async def test_a_failed_call_names_its_status_and_the_servers_details(served: tuple[Service, str]) -> None:
    _, target = served
    async with UnaryChannel(target) as channel:
        with pytest.raises(RpcError) as failed:
            await channel.call("/test.Echo/Fail", "no pod «web» at 100%".encode(), deadline_s=5)
        assert (failed.value.code, failed.value.details) == ("NOT_FOUND", "no pod «web» at 100%")
        with pytest.raises(RpcError, match=r"^UNIMPLEMENTED"):
            await channel.call("/test.Echo/Nope", b"", deadline_s=5)
        # the connection still serves the next call
        assert await channel.call("/test.Echo/Echo", b"ok", deadline_s=5) == b"ok"


async def test_a_deadline_fails_the_call_and_the_server_stops_working_on_it(served: tuple[Service, str]) -> None:
    service, target = served
    async with UnaryChannel(target) as channel:
        with pytest.raises(RpcError, match=r"^DEADLINE_EXCEEDED: no answer within 0\.3s"):
            await channel.call("/test.Echo/Sleep", b"", deadline_s=0.3)
        await asyncio.wait_for(service.cancelled.wait(), 5)
        assert await channel.call("/test.Echo/Echo", b"after", deadline_s=5) == b"after"


async def test_messages_beyond_the_flow_control_windows_pass_and_beyond_the_limit_are_refused(
    served: tuple[Service, str],
) -> None:
    _, target = served
    big = bytes(range(256)) * 4096  # 1 MiB: sixteen times the initial HTTP/2 window, both ways
    async with UnaryChannel(target, max_message=2 * 1024 * 1024) as channel:
        assert await channel.call("/test.Echo/Echo", big, deadline_s=10) == big
        assert len(await channel.call("/test.Echo/Big", b"2000000", deadline_s=10)) == 2_000_000
        with pytest.raises(RpcError, match=r"^RESOURCE_EXHAUSTED: the response is more than 2097152 bytes"):
            await channel.call("/test.Echo/Big", b"3000000", deadline_s=10)
        assert await channel.call("/test.Echo/Echo", b"still here", deadline_s=5) == b"still here"


async def test_a_restarted_server_on_a_unix_socket_is_dialled_again(tmp_path: Path) -> None:
    socket = tmp_path / "runtime.sock"
    service = Service()
    channel = UnaryChannel(f"unix://{socket}")
    try:
        with pytest.raises(RpcError, match=f"^UNAVAILABLE: cannot connect to unix://{socket}"):
            await channel.call("/test.Echo/Echo", b"", deadline_s=5)
        server, _ = await _serve(service, f"unix:{socket}")
        assert await channel.call("/test.Echo/Echo", b"one", deadline_s=5) == b"one"
        await server.stop(None)
        with pytest.raises(RpcError, match=r"^UNAVAILABLE"):
            await channel.call("/test.Echo/Echo", b"", deadline_s=5)
        server, _ = await _serve(service, f"unix:{socket}")
        try:
            assert await channel.call("/test.Echo/Echo", b"two", deadline_s=5) == b"two"
        finally:
            await server.stop(None)
    finally:
        await channel.close()


class _NoExec:
    async def exec_sync(self, container_id: str, cmd: list[str], timeout_s: int) -> ExecResult:
        raise AssertionError("a grpc probe does not exec")


async def test_grpc_health_probes_read_the_servers_verdict() -> None:
    long_name = "s" * 200  # a length above 127 takes two bytes on the wire
    status = {"": 1, "db": 2, long_name: 1}  # SERVING, NOT_SERVING

    async def check(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        service = wrappers_pb2.StringValue.FromString(request).value  # HealthCheckRequest's shape on the wire
        if service not in status:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {service}")
        return bytes([0x08, status[service]])

    server = grpc.aio.server()
    methods = {"Check": grpc.unary_unary_rpc_method_handler(check)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("grpc.health.v1.Health", methods),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        target = probes.Target("c1", "127.0.0.1", {"grpc": port})
        assert (await probes.run_action({"grpc": {"port": "grpc"}}, target, _NoExec(), 2)).ok
        assert (await probes.run_action({"grpc": {"port": port, "service": long_name}}, target, _NoExec(), 2)).ok
        unhealthy = await probes.run_action({"grpc": {"port": port, "service": "db"}}, target, _NoExec(), 2)
        assert not unhealthy.ok and unhealthy.message == 'service unhealthy (responded with "NOT_SERVING")'
        unknown = await probes.run_action({"grpc": {"port": port, "service": "cache"}}, target, _NoExec(), 2)
        assert unknown.message == "the health check failed: NOT_FOUND: unknown service cache"
    finally:
        await server.stop(None)
    refused = await probes.run_action({"grpc": {"port": port}}, target, _NoExec(), 2)
    assert refused.message.startswith(f"the health check failed: UNAVAILABLE: cannot connect to 127.0.0.1:{port}")


def test_the_wire_helpers() -> None:
    assert frame_message(b"abc") == b"\x00\x00\x00\x00\x03abc"
    assert timeout_header(30) == "30000m"
    assert timeout_header(0.0001) == "1m"
    assert timeout_header(10**6) == "1000000S"
    assert call_status({"grpc-status": "5", "grpc-message": "gone%20away"}) == ("NOT_FOUND", "gone away")
    assert call_status({"grpc-status": "99"}) == ("UNKNOWN", "")
    assert call_status({":status": "503"}) == ("UNAVAILABLE", "HTTP status 503")
    assert call_status({":status": "200"}) == ("UNKNOWN", "the response ended without a grpc-status")
