from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import textwrap

import structlog

from common.logging import Throttle, configure_logging


def test_json_lines_off_a_tty_with_stable_event_and_bound_keys() -> None:
    code = textwrap.dedent("""
        import logging
        from common.logging import configure_logging, get_logger
        configure_logging("info")
        get_logger("kubage.test", node="edge-1").info("node_connected", conn=7)
        get_logger("kubage.test").debug("too_verbose")
        logging.getLogger("websockets.server").warning("library message")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = [json.loads(line) for line in out.stderr.splitlines()]
    assert lines[0]["event"] == "node_connected"
    assert lines[0]["node"] == "edge-1" and lines[0]["conn"] == 7
    assert lines[0]["level"] == "info" and "timestamp" in lines[0]
    assert lines[1]["event"] == "library message" and lines[1]["logger"] == "websockets.server"
    assert len(lines) == 2  # debug is below the configured level


def test_a_debug_level_keeps_debug_lines() -> None:
    code = textwrap.dedent("""
        from common.logging import configure_logging, get_logger
        configure_logging("debug")
        get_logger("kubage.test").debug("verbose_now", n=1)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    (line,) = [json.loads(line) for line in out.stderr.splitlines()]
    assert (line["event"], line["level"], line["n"]) == ("verbose_now", "debug", 1)


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_console_rendering_on_a_tty() -> None:
    stream = FakeTTY()
    try:
        configure_logging("info", stream=stream)
        logging.getLogger("kubage.console").info("hello")
    finally:
        logging.getLogger().handlers.clear()
        structlog.reset_defaults()
    text = stream.getvalue()
    assert "hello" in text
    assert not text.lstrip().startswith("{")


def test_the_throttle_lets_a_burst_through_then_one_line_an_interval_reporting_what_it_suppressed() -> None:
    now = [0.0]
    throttle = Throttle(burst=3, interval=1.0, clock=lambda: now[0])
    admitted = [throttle.admit("flood") for _ in range(100)]
    assert admitted[:3] == [0, 0, 0] and admitted[3:] == [None] * 97
    assert throttle.admit("other") == 0  # keys are throttled apart
    now[0] = 1.0
    assert throttle.admit("flood") == 97
    assert throttle.admit("flood") is None
