"""Structured logging: structlog, a readable console on a TTY, one JSON object per line otherwise.

Event names are stable snake_case identifiers (``node_connected``, ``module_crashed``); context goes into
bound keys (``node``, ``conn``, ``msg_id``, ``resource``, ``rv``), never into the event string.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Hashable
from typing import Any, TextIO

import structlog

Logger = structlog.stdlib.BoundLogger


def configure_logging(level: str = "info", *, stream: TextIO | None = None, json: bool | None = None) -> None:
    """Configure structlog and the stdlib root logger once per process.

    ``json=None`` picks the renderer from the stream: console on a TTY, JSON otherwise (journald, CI).
    Third-party libraries logging through stdlib ``logging`` go through the same renderer.
    """
    stream = sys.stderr if stream is None else stream
    if json is None:
        json = not stream.isatty()
    numeric_level = logging.getLevelNamesMapping().get(level.upper())
    if numeric_level is None:
        raise ValueError(f"unknown log level {level!r}")

    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        # Below the level a call ends at once: a debug line in a hot path (one per twin update) otherwise got
        # its timestamp and logger name before the stdlib logger dropped it, 10 % of the device path's time.
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if json else _identity,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)


class Throttle:
    """At most ``burst`` lines per key at once, then one per ``interval`` seconds: what a peer can make us log
    stays bounded (one frame of 100,000 bad messages must not write 100,000 lines). ``admit`` says whether to
    log now and how many lines of the key were suppressed since the last one, for that line to report."""

    def __init__(self, *, burst: int = 10, interval: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._burst = burst
        self._interval = interval
        self._clock = clock
        self._state: dict[Hashable, tuple[float, float, int]] = {}  # key → (tokens, at, suppressed)

    def admit(self, key: Hashable) -> int | None:
        """None: suppress this line; else log it, reporting this many suppressed before it."""
        now = self._clock()
        tokens, at, suppressed = self._state.get(key, (float(self._burst), now, 0))
        tokens = min(float(self._burst), tokens + (now - at) / self._interval)
        if tokens < 1:
            self._state[key] = (tokens, now, suppressed + 1)
            return None
        self._state[key] = (tokens - 1, now, 0)
        if len(self._state) > 10_000:  # keys come and go with nodes: forget the quiet ones
            self._state = {k: v for k, v in self._state.items() if v[2] or now - v[1] < 60}
        return suppressed


def get_logger(name: str, **bound: Any) -> Logger:
    """A logger named after its module, with optional keys bound to every event."""
    logger: Logger = structlog.stdlib.get_logger(name)
    return logger.bind(**bound) if bound else logger


def _identity(_logger: Any, _name: str, event_dict: Any) -> Any:
    return event_dict
