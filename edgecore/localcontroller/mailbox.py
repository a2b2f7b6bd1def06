"""The weights in transit on one node, per federated job, on disk: what survives an EdgeCore restart.

- ``model``: the newest global model this node has (its version and blob). Trainers here wait on it.
- ``inbox``: updates brought here for the job's aggregator, oldest first; taking one removes it.
- ``members.json``: an elastic job's trainers, as the global manager last told this node (its generation and
  names), for the aggregator here.
- ``outgoing``: updates too big to travel inline, which a worker here handed in for the cloud to fetch (the
  latest of each worker), by transfer id. A big model is fetched from ``model`` itself.

Files are written to a temporary name and renamed, so a crash leaves the old value or the new, never half.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")  # a Kubernetes object name (DNS subdomain)


class MailboxError(ValueError):
    """A name that cannot be a path here; the message says which."""


def checked(kind: str, name: str) -> str:
    if not _NAME.fullmatch(name):
        raise MailboxError(f"{kind} {name[:80]!r} is not a valid Kubernetes name")
    return name


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


@dataclass(frozen=True)
class Staged:
    id: str
    path: Path


class JobBox:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._changed = asyncio.Condition()
        meta = self._read_json(root / "model.json")
        self.model_round = int(str(meta.get("round", -1))) if meta else -1
        self.model_sha = str(meta.get("sha256", "")) if meta else ""
        inbox = root / "inbox"
        self._inbox = sorted(p for p in inbox.glob("*.kfl")) if inbox.is_dir() else []
        self._seq = max((int(p.name.split("-", 1)[0]) for p in self._inbox), default=0)

    @staticmethod
    def _read_json(path: Path) -> dict[str, object] | None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            value = json.loads(path.read_text())
            return value if isinstance(value, dict) else None
        return None

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _wait(self, timeout: float) -> None:  # noqa: ASYNC109 - a long poll's own timeout
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._changed.wait()

    # --- the global model --------------------------------------------------------------------------------

    async def put_model(self, round_: int, blob: bytes, sha: str) -> bool:
        """Keep it if it is newer than (or, re-sent, the same version as) what is here."""
        if round_ < self.model_round:
            return False
        _write(self.root / "model.kfl", blob)
        _write(self.root / "model.json", json.dumps({"round": round_, "sha256": sha}).encode())
        self.model_round, self.model_sha = round_, sha
        await self._notify()
        return True

    def model(self) -> tuple[int, bytes, str] | None:
        try:
            return self.model_round, (self.root / "model.kfl").read_bytes(), self.model_sha
        except FileNotFoundError:
            return None

    async def wait_model(self, after: int, timeout: float) -> tuple[int, bytes, str] | None:  # noqa: ASYNC109
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.model_round <= after:
            left = deadline - loop.time()
            if left <= 0:
                return None
            await self._wait(left)
        return self.model()

    # --- an elastic job's trainers, for the aggregator -----------------------------------------------------

    def put_members(self, generation: int, blob: bytes) -> bool:
        """Keep a telling newer than the one here; ``blob`` is common/fl.py's members JSON, already checked."""
        current = self._read_json(self.root / "members.json")
        if current is not None and int(str(current.get("generation", -1))) > generation:
            return False
        workers = json.loads(blob)["workers"]
        _write(self.root / "members.json", json.dumps({"generation": generation, "workers": workers}).encode())
        return True

    def members(self) -> dict[str, object] | None:
        return self._read_json(self.root / "members.json")

    # --- the aggregator's inbox --------------------------------------------------------------------------

    async def deliver(self, worker: str, blob: bytes) -> None:
        self._seq += 1
        path = self.root / "inbox" / f"{self._seq:012d}-{worker}.kfl"
        _write(path, blob)
        self._inbox.append(path)
        await self._notify()

    async def take(self, timeout: float) -> bytes | None:  # noqa: ASYNC109
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._inbox:
            left = deadline - loop.time()
            if left <= 0:
                return None
            await self._wait(left)
        path = self._inbox.pop(0)
        blob = path.read_bytes()
        path.unlink(missing_ok=True)
        return blob

    @property
    def inbox_size(self) -> int:
        return len(self._inbox)

    # --- blobs for the cloud to fetch --------------------------------------------------------------------

    def stage(self, slot: str, blob: bytes) -> Staged:
        """Stage ``blob`` as the one for ``slot`` (a worker's update): the older one is dropped."""
        transfer = f"{slot}.{secrets.token_hex(8)}"
        outgoing = self.root / "outgoing"
        for old in outgoing.glob(f"{slot}.*.kfl") if outgoing.is_dir() else []:
            old.unlink(missing_ok=True)
        path = outgoing / f"{transfer}.kfl"
        _write(path, blob)
        return Staged(transfer, path)

    def staged(self, transfer: str) -> bytes | None:
        if "/" in transfer or transfer.startswith("."):
            return None
        try:
            return (self.root / "outgoing" / f"{transfer}.kfl").read_bytes()
        except FileNotFoundError:
            return None


class Mailbox:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._jobs: dict[tuple[str, str], JobBox] = {}

    def jobs(self) -> set[tuple[str, str]]:
        """Every job with weights on this node's disk."""
        if not self.root.is_dir():
            return set()
        return {
            (ns.name, job.name) for ns in self.root.iterdir() if ns.is_dir() for job in ns.iterdir() if job.is_dir()
        }

    def forget(self, namespace: str, name: str) -> None:
        self._jobs.pop((namespace, name), None)
        shutil.rmtree(self.root / namespace / name, ignore_errors=True)

    def job(self, namespace: str, name: str) -> JobBox:
        key = (checked("namespace", namespace), checked("job", name))
        box = self._jobs.get(key)
        if box is None:
            box = self._jobs[key] = JobBox(self.root / namespace / name)
        return box
