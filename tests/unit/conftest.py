"""Fixtures for the unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgecore.metamanager.store import MetaStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[MetaStore]:
    """EdgeCore's SQLite store, in a file of the test's own."""
    s = await MetaStore.open(tmp_path / "edge.db")
    try:
        yield s
    finally:
        await s.close()
