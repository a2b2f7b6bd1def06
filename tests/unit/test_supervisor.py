"""The supervisor: ordered graceful shutdown within a time limit, restart policies, and real signals."""

from __future__ import annotations

import asyncio
import itertools
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

from structlog.testing import capture_logs

from common.supervisor import EXIT_FAILURE, EXIT_OK, Module, Restart, Supervisor


def no_delay() -> itertools.repeat[float]:
    return itertools.repeat(0.0)


def recording_module(name: str, events: list[str]) -> Module:
    async def run() -> None:
        events.append(f"start {name}")
        try:
            await asyncio.Event().wait()
        finally:
            events.append(f"stop {name}")

    return Module(name, run)


async def run_until(supervisor: Supervisor, condition: Callable[[], bool]) -> asyncio.Task[int]:
    task = asyncio.create_task(supervisor.run())
    for _ in range(200):
        if condition():
            return task
        await asyncio.sleep(0.01)
    raise AssertionError("condition never became true")


async def test_modules_start_in_order_and_stop_in_reverse() -> None:
    events: list[str] = []
    sup = Supervisor([recording_module(n, events) for n in ("hub", "controller", "metrics")])
    task = await run_until(sup, lambda: len(events) == 3)
    assert events == ["start hub", "start controller", "start metrics"]
    sup.request_shutdown("test")
    assert await task == EXIT_OK
    assert events[3:] == ["stop metrics", "stop controller", "stop hub"]
    assert sup.clean


async def test_each_module_finishes_its_cleanup_before_the_next_one_stops() -> None:
    events: list[str] = []

    def slow_to_stop(name: str) -> Module:
        async def run() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                events.append(f"{name} cleanup begins")
                await asyncio.sleep(0.05)  # e.g. flushing a queue
                events.append(f"{name} cleanup done")

        return Module(name, run)

    sup = Supervisor([slow_to_stop("first"), slow_to_stop("second")])
    task = asyncio.create_task(sup.run())
    await asyncio.sleep(0.05)
    sup.request_shutdown("test")
    assert await task == EXIT_OK
    assert events == [
        "second cleanup begins",
        "second cleanup done",
        "first cleanup begins",
        "first cleanup done",
    ]


def stubborn_module(ignore_for: float) -> Module:
    """Swallows cancellation for ``ignore_for`` seconds: a module stuck in its cleanup."""

    async def run() -> None:
        deadline = time.monotonic() + ignore_for
        while True:
            try:
                await asyncio.sleep(deadline - time.monotonic())
                return
            except asyncio.CancelledError:
                if time.monotonic() >= deadline:
                    raise

    return Module("stubborn", run)


async def test_shutdown_gives_up_at_its_time_limit() -> None:
    events: list[str] = []
    sup = Supervisor([recording_module("hub", events), stubborn_module(ignore_for=1.5)], shutdown_timeout=0.3)
    task = asyncio.create_task(sup.run())
    await asyncio.sleep(0.05)
    started = time.monotonic()
    with capture_logs() as logs:
        sup.request_shutdown("test")
        code = await task
    elapsed = time.monotonic() - started
    assert code == EXIT_FAILURE
    assert not sup.clean
    assert 0.25 <= elapsed < 0.8
    incomplete = [e for e in logs if e["event"] == "shutdown_incomplete"]
    assert incomplete and incomplete[0]["why"] == "time_limit"


async def test_second_request_abandons_the_graceful_shutdown() -> None:
    sup = Supervisor([stubborn_module(ignore_for=1.5)], shutdown_timeout=30)
    task = asyncio.create_task(sup.run())
    await asyncio.sleep(0.05)
    started = time.monotonic()
    with capture_logs() as logs:
        sup.request_shutdown("SIGTERM")
        await asyncio.sleep(0.05)
        sup.request_shutdown("SIGINT")
        code = await task
    assert time.monotonic() - started < 0.5
    assert code == EXIT_FAILURE
    assert [e["why"] for e in logs if e["event"] == "shutdown_incomplete"] == ["second_signal"]


async def test_crashing_module_is_logged_and_restarted() -> None:
    runs = 0
    healthy = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise RuntimeError(f"broken pipe #{runs}")
        healthy.set()
        await asyncio.Event().wait()

    sup = Supervisor([Module("flaky", flaky, Restart.ON_FAILURE)], restart_delays=no_delay)
    with capture_logs() as logs:
        task = asyncio.create_task(sup.run())
        await asyncio.wait_for(healthy.wait(), 5)
        sup.request_shutdown("test")
        assert await task == EXIT_OK
    crashes = [e for e in logs if e["event"] == "module_crashed"]
    assert [e["module"] for e in crashes] == ["flaky", "flaky"]
    assert all(e["exc_info"] for e in crashes)
    assert runs == 3


async def test_crash_of_an_essential_module_stops_the_process_with_failure() -> None:
    events: list[str] = []

    async def essential() -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("database corrupt")

    sup = Supervisor([recording_module("hub", events), Module("store", essential, Restart.NEVER)])
    with capture_logs() as logs:
        code = await asyncio.wait_for(sup.run(), 5)
    assert code == EXIT_FAILURE
    assert events == ["start hub", "stop hub"]
    assert any(e["event"] == "module_crashed" and e["module"] == "store" for e in logs)


async def test_process_ends_when_every_module_has_finished() -> None:
    async def one_shot() -> None:
        await asyncio.sleep(0.01)

    sup = Supervisor([Module("a", one_shot), Module("b", one_shot)])
    assert await asyncio.wait_for(sup.run(), 5) == EXIT_OK


CHILD = textwrap.dedent("""
    import asyncio, sys, time
    from common.logging import configure_logging
    from common.supervisor import Module, run_process

    configure_logging("info", json=True)
    stubborn = sys.argv[1] == "stubborn"

    def module(name):
        async def run():
            print(f"started {name}", flush=True)
            try:
                await asyncio.Event().wait()
            finally:
                if stubborn and name == "b":
                    time.sleep(0)  # still cooperative here, but then refuses to finish:
                    while True:
                        try:
                            await asyncio.sleep(3600)
                        except asyncio.CancelledError:
                            pass
                print(f"stopped {name}", flush=True)
        return Module(name, run)

    sys.exit(run_process([module("a"), module("b")], shutdown_timeout=30))
""")


def spawn(mode: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    for expected in ("started a", "started b"):
        assert proc.stdout.readline().strip() == expected
    return proc


def test_sigterm_stops_a_real_process_in_order() -> None:
    proc = spawn("cooperative")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert out.split() == ["stopped", "b", "stopped", "a"]
    assert '"event": "shutdown_requested"' in err and '"reason": "SIGTERM"' in err


def test_second_signal_forces_exit_of_a_stuck_process() -> None:
    proc = spawn("stubborn")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    assert proc.poll() is None  # graceful shutdown is waiting on the stuck module
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert time.monotonic() - started < 5
    assert proc.returncode == EXIT_FAILURE
    assert '"event": "shutdown_forced"' in err
    assert "stopped b" not in out
