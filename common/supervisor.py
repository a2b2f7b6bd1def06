"""Run a process's modules in one TaskGroup and shut them down in order, within a time limit.

Modules start in the order given and stop in reverse (the hub that feeds the controllers stops after them).
SIGTERM or SIGINT starts the graceful shutdown; a second signal abandons it. A module that raises is logged
with its traceback and then handled by its restart policy: restarted after a backoff delay, or, for a
module the process cannot live without, the whole process shuts down with exit code 1.
"""

from __future__ import annotations

import asyncio
import enum
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass

from common.logging import get_logger
from common.loop import run as run_loop
from common.protocol.backoff import backoff_delays

log = get_logger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1


class Restart(enum.Enum):
    ON_FAILURE = "on-failure"  # log the crash, wait a backoff delay, run it again
    NEVER = "never"  # a crash shuts the whole process down with EXIT_FAILURE


@dataclass(frozen=True)
class Module:
    """A long-running part of a process. ``run`` returns when its work is done or raises CancelledError
    when asked to stop; cleanup belongs in its ``finally`` blocks."""

    name: str
    run: Callable[[], Awaitable[None]]
    restart: Restart = Restart.ON_FAILURE


class Supervisor:
    def __init__(
        self,
        modules: Sequence[Module],
        *,
        shutdown_timeout: float = 10.0,
        restart_delays: Callable[[], Iterator[float]] = backoff_delays,
        stable_after: float = 30.0,
    ) -> None:
        names = [m.name for m in modules]
        if len(set(names)) != len(names):
            raise ValueError(f"module names must be unique: {names}")
        self._modules = list(modules)
        self._shutdown_timeout = shutdown_timeout
        self._restart_delays = restart_delays
        self._stable_after = stable_after  # a module that ran this long starts its backoff afresh
        self._stop_requested = asyncio.Event()
        self._force = asyncio.Event()
        self._running = 0
        self.exit_code = EXIT_OK
        self.clean = True  # False when the time limit ran out or a second signal cut the shutdown short

    def request_shutdown(self, reason: str) -> None:
        """First call: begin the ordered shutdown. A further call: stop waiting for it."""
        if self._stop_requested.is_set():
            log.warning("shutdown_forced", reason=reason)
            self._force.set()
            return
        log.info("shutdown_requested", reason=reason)
        self._stop_requested.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_shutdown, sig.name)

    async def run(self) -> int:
        """Run until every module has finished or a shutdown completes; return the exit code."""
        loop = asyncio.get_running_loop()
        modules = asyncio.create_task(self._run_modules(), name="supervisor.modules")
        stop = asyncio.create_task(self._stop_requested.wait(), name="supervisor.stop")
        await asyncio.wait({modules, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not modules.done():
            deadline = loop.time() + self._shutdown_timeout
            force = asyncio.create_task(self._force.wait(), name="supervisor.force")
            await asyncio.wait({modules, force}, timeout=self._shutdown_timeout, return_when=asyncio.FIRST_COMPLETED)
            force.cancel()
            if not modules.done():
                self.clean = False
                self.exit_code = EXIT_FAILURE
                why = "second_signal" if self._force.is_set() else "time_limit"
                log.error(
                    "shutdown_incomplete",
                    why=why,
                    limit_s=self._shutdown_timeout,
                    overrun_s=round(max(0.0, loop.time() - deadline), 3),
                )
                modules.cancel()  # cancels every module at once; nothing waits for them any more
                return self.exit_code
        stop.cancel()
        await modules
        log.info("shutdown_complete", exit_code=self.exit_code)
        return self.exit_code

    async def _run_modules(self) -> None:
        async with asyncio.TaskGroup() as group:
            tasks = []
            for module in self._modules:
                self._running += 1
                tasks.append(group.create_task(self._supervise(module), name=f"module.{module.name}"))
                log.info("module_started", module=module.name)
            await self._stop_requested.wait()
            for module, task in reversed(list(zip(self._modules, tasks, strict=True))):
                if task.done():
                    continue
                task.cancel()
                await asyncio.wait({task})
                log.info("module_stopped", module=module.name)

    async def _supervise(self, module: Module) -> None:
        loop = asyncio.get_running_loop()
        delays = self._restart_delays()
        try:
            while True:
                started = loop.time()
                try:
                    await module.run()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("module_crashed", module=module.name, restart=module.restart.value)
                    if module.restart is Restart.NEVER:
                        self.exit_code = EXIT_FAILURE
                        self.request_shutdown(f"module {module.name} crashed")
                        return
                    if loop.time() - started >= self._stable_after:
                        delays = self._restart_delays()
                    delay = next(delays)
                    log.info("module_restarting", module=module.name, delay_s=round(delay, 3))
                    await asyncio.sleep(delay)
                else:
                    log.info("module_finished", module=module.name)
                    return
        finally:
            self._running -= 1
            if self._running == 0 and not self._stop_requested.is_set():
                self.request_shutdown("all modules finished")


Build = Callable[[], Awaitable[tuple[Sequence[Module], Callable[[], Awaitable[None]]]]]


def run_process(modules: Sequence[Module] | Build, *, shutdown_timeout: float = 10.0) -> int:
    """Run modules as the whole process: signals handled, uvloop if available.

    ``modules`` may be an async ``build()`` returning the modules and a ``close()`` to await after they
    stopped, for set-up that needs the loop (clients, servers). If the shutdown could not finish in time,
    exit at once: the loop's own cleanup would wait on exactly the modules that refused to stop.
    """

    async def main() -> int:
        loop = asyncio.get_running_loop()
        early = asyncio.Event()  # a signal during set-up: build, then stop at once
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, early.set)
        close: Callable[[], Awaitable[None]] | None
        parts, close = await modules() if callable(modules) else (modules, None)
        supervisor = Supervisor(parts, shutdown_timeout=shutdown_timeout)
        supervisor.install_signal_handlers()
        if early.is_set():
            supervisor.request_shutdown("signal during start-up")
        code = await supervisor.run()
        if not supervisor.clean:
            sys.stderr.flush()
            os._exit(code)
        if close is not None:
            await close()
        return code

    return run_loop(main())
