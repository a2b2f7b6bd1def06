"""The harness's port picker: a test's services each get a port of their own."""

from __future__ import annotations

from scripts.harness.procs import free_port


def test_free_port_never_hands_out_a_port_twice() -> None:
    # The kernel picks bind(0) ports at random from the ephemeral range and may offer one again as soon as
    # the probe is closed: over 2,000 picks a repeat is all but certain without the picker's memory (a
    # CloudCore once got the same port for its monitor and its CloudHub).
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)
