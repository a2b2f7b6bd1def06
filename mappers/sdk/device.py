"""One device: a single task that initialises its driver, collects and reports each property on its cycles,
applies desired values, and reports the device's online/offline state.

The task never touches MQTT: reports go to the outbox, which the broker connection drains when it can, so
collecting goes on while the broker is away. Desired values arrive through ``desire`` and are coalesced per
property (the newest wins); a write that fails for a reason worth retrying is retried on the next collect.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

from common.devices import MAX_VALUE_BYTES, state_update, twin_update
from common.logging import get_logger
from common.protocol.backoff import backoff_delays
from mappers.sdk.driver import DeviceDriver
from mappers.sdk.errors import InvalidConfig
from mappers.sdk.outbox import Outbox
from mappers.sdk.plan import DevicePlan, Member, PropertyPlan
from mappers.sdk.values import Value, check_range, format_value, parse_value

ONLINE = "online"
OFFLINE = "offline"
HEALTH_CYCLE_S = 1.0  # for a device without properties, whose state is all there is to report


def now_ms() -> int:
    return int(time.time() * 1000)


def event_id() -> str:
    return str(uuid.uuid4())


class DeviceTask:
    def __init__(
        self,
        member: Member,
        plan: DevicePlan,
        driver: DeviceDriver,
        outbox: Outbox,
        *,
        call_timeout: float = 10.0,
        init_delays: Iterator[float] | None = None,
    ) -> None:
        self.member = member
        self.plan = plan
        self.state = ""  # "" until the first health check: nothing to report yet
        self._driver = driver
        self._outbox = outbox
        self._call_timeout = call_timeout
        self._init_delays = init_delays if init_delays is not None else backoff_delays(initial=1.0, cap=60.0)
        self._desired: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._actual: dict[str, tuple[str, int]] = {}  # property → (wire value, timestamp ms)
        self._failing: set[str] = set()  # properties whose last read failed: log transitions, not every cycle
        self._log = get_logger(__name__, device=plan.id, protocol=plan.protocol)

    def desire(self, values: dict[str, str]) -> None:
        """Queue desired values (from a twin delta). Unknown and read-only properties are refused here."""
        for name, value in values.items():
            prop = self.plan.property(name)
            if prop is None:
                self._log.warning("desired_unknown_property", property=name)
            elif not prop.writable:
                self._log.warning("desired_read_only_property", property=name)
            else:
                self._desired[name] = value
        if self._desired:
            self._wake.set()

    def request_stop(self) -> None:
        """Stop at the next step, before or besides cancelling the task.

        Cancelling alone is not enough: Python 3.11's ``asyncio.wait_for``, which drivers' libraries use
        (pymodbus), drops a cancellation that arrives as its inner future completes, and the task runs on.
        """
        self._stopping = True
        self._wake.set()

    def republish_state(self) -> None:
        """Queue the current state again: periodically, and whenever EdgeCore may have missed it."""
        if self.state:
            self._publish_state()

    async def run(self) -> None:
        try:
            await self._init()
            if self._stopping:
                return
            for prop in self.plan.properties:
                if prop.desired is not None and prop.writable:
                    self._desired.setdefault(prop.name, prop.desired)
            await self._serve()
        finally:
            try:
                async with asyncio.timeout(self._call_timeout):
                    await self._driver.stop()
            except Exception as exc:  # a driver that fails to stop must not hide why we stopped
                self._log.warning("driver_stop_failed", error=repr(exc))
            self._log.info("device_stopped")

    async def _init(self) -> None:
        while not self._stopping:
            try:
                async with asyncio.timeout(self._call_timeout):
                    await self._driver.init(self.member)
            except Exception as exc:  # any init failure is retried; the reason is logged
                self._set_state(OFFLINE)
                delay = next(self._init_delays)
                self._log.warning("driver_init_failed", error=repr(exc), retry_in_s=round(delay, 3))
                self._wake.clear()  # a desired value is kept for later; it must not cut the backoff short
                if not self._stopping:
                    await self._pause(delay)
            else:
                self._log.info("device_started", properties=[p.name for p in self.plan.properties])
                return

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        next_collect = {p.name: start for p in self.plan.properties}
        next_report = dict(next_collect)  # the first reading is reported as soon as it is taken
        health_s = min((p.report_s for p in self.plan.properties), default=HEALTH_CYCLE_S)
        next_health = start
        next_state = start + self.plan.state_report_s
        while not self._stopping:
            self._wake.clear()
            written = await self._apply_desired()
            if written:
                self._report(written)  # at once, off the grid: the cycles keep their phase
            for prop in self.plan.properties:
                if next_collect[prop.name] <= loop.time():
                    await self._read(prop)
                    next_collect[prop.name] = _advance(next_collect[prop.name], prop.collect_s, loop.time())
            now = loop.time()
            due = [p for p in self.plan.properties if next_report[p.name] <= now]
            if due:
                self._report(due)
                for prop in due:
                    next_report[prop.name] = _advance(next_report[prop.name], prop.report_s, now)
            if next_health <= now:
                await self._check_health()
                next_health = _advance(next_health, health_s, loop.time())
            if next_state <= now:
                self.republish_state()
                next_state = _advance(next_state, self.plan.state_report_s, now)
            deadline = min([*next_collect.values(), *next_report.values(), next_health, next_state])
            await self._pause(deadline - loop.time())

    async def _pause(self, delay: float) -> None:
        """Sleep up to ``delay`` seconds; a desired value or a stop request ends it early."""
        try:
            async with asyncio.timeout(max(0.0, delay)):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _apply_desired(self) -> list[PropertyPlan]:
        """Write what is desired; return the properties written (and read back)."""
        written = []
        for name, text in list(self._desired.items()):
            prop = self.plan.property(name)
            assert prop is not None  # desire() admits only known properties
            del self._desired[name]
            try:
                check_range(parse_value(text, prop.type), prop.minimum, prop.maximum)
                async with asyncio.timeout(self._call_timeout):
                    await self._driver.write(prop.name, prop.visitor, text)
            except ValueError as exc:
                self._log.warning("desired_value_refused", property=name, value=text[:64], reason=str(exc))
                continue
            except Exception as exc:  # the device may come back: retry on the next collect
                self._desired.setdefault(name, text)
                self._log.warning("desired_write_failed", property=name, error=repr(exc))
                continue
            self._log.info("desired_value_written", property=name, value=text[:64])
            await self._read(prop)
            written.append(prop)
        return written

    async def _read(self, prop: PropertyPlan) -> None:
        try:
            async with asyncio.timeout(self._call_timeout):
                value = await self._driver.read(prop.name, prop.visitor)
            text = _wire_value(value, prop)
        except Exception as exc:  # a failed read leaves the property out of reports until it reads again
            self._actual.pop(prop.name, None)
            if prop.name not in self._failing:
                self._failing.add(prop.name)
                self._log.warning("property_read_failed", property=prop.name, error=repr(exc))
            return
        if prop.name in self._failing:
            self._failing.discard(prop.name)
            self._log.info("property_read_recovered", property=prop.name)
        self._actual[prop.name] = (text, now_ms())

    def _report(self, due: list[PropertyPlan]) -> None:
        twin: dict[str, Any] = {}
        for prop in due:
            reading = self._actual.get(prop.name)
            if reading is None or not prop.report_to_cloud:
                continue
            value, stamp = reading
            twin[prop.name] = {
                "actual": {"value": value, "metadata": {"timestamp": stamp}},
                "metadata": {"type": prop.type},
            }
        if twin:
            self._outbox.put(twin_update(self.plan.id), {"event_id": event_id(), "timestamp": now_ms(), "twin": twin})

    async def _check_health(self) -> None:
        try:
            async with asyncio.timeout(self._call_timeout):
                healthy = await self._driver.health()
        except Exception as exc:  # a health check that fails is an unhealthy device
            self._log.debug("health_check_failed", error=repr(exc))
            healthy = False
        self._set_state(ONLINE if healthy else OFFLINE)

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self._log.info("device_state_changed", state=state, was=self.state or None)
            self.state = state
            self._publish_state()

    def _publish_state(self) -> None:
        self._outbox.put(
            state_update(self.plan.id), {"event_id": event_id(), "timestamp": now_ms(), "state": self.state}
        )


def _wire_value(value: Value, prop: PropertyPlan) -> str:
    text = format_value(value, prop.type)
    if len(text.encode()) > MAX_VALUE_BYTES:
        raise InvalidConfig(f"a value of {len(text.encode())} bytes exceeds the twin limit of {MAX_VALUE_BYTES}")
    return text


def _advance(deadline: float, cycle: float, now: float) -> float:
    """The next deadline on the cycle's grid; ticks missed while a slow call ran are skipped, not bunched."""
    deadline += cycle
    return deadline if deadline > now else now + cycle
