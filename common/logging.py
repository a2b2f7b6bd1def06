"""Structured logging: structlog, a readable console on a TTY, one JSON object per line otherwise.

Event names are stable snake_case identifiers (``node_connected``, ``module_crashed``); context goes into
bound keys (``node``, ``conn``, ``msg_id``, ``resource``, ``rv``), never into the event string.
"""

from __future__ import annotations

import logging
import sys
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
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
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


def get_logger(name: str, **bound: Any) -> Logger:
    """A logger named after its module, with optional keys bound to every event."""
    logger: Logger = structlog.stdlib.get_logger(name)
    return logger.bind(**bound) if bound else logger


def _identity(_logger: Any, _name: str, event_dict: Any) -> Any:
    return event_dict
