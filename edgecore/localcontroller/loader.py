"""The data loader: brings each Dataset bound to this node (``spec.nodeName``) into the local controller's
directory, checks it, counts it, and says how far it got in the Dataset's status.

``spec.url`` is a local path, a ``file://`` url or an ``http(s)://`` url; the copy is made beside its final
name and renamed once complete, so a reader sees the whole file or none. ``spec.checksum`` (ours, optional:
``sha256:<hex>``) must match, or the Dataset is Failed and nothing is served. Sedna's formats are counted as
Sedna's LC counts them: ``txt`` by lines, ``csv`` by rows after the header. A loaded Dataset is served from
its copy while the node is offline; the url is checked again every ``check_seconds``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import shutil
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from common.logging import get_logger

log = get_logger(__name__)

CHUNK = 1024 * 1024


class DatasetError(Exception):
    """The Dataset cannot be loaded; the message says why (and goes into its status)."""


@dataclass
class DatasetState:
    phase: str  # Pending, Loading, Ready, Failed
    message: str = ""
    file: str = ""  # the copy's name, inside the dataset's directory
    sha256: str = ""
    bytes: int = 0
    numberOfSamples: int = 0
    progress: int = 0  # percent of the copy made
    source_stamp: str = ""  # what the url looked like when copied (size/mtime or ETag), to notice changes
    uid: str = ""

    def status(self) -> dict[str, Any]:
        """The Dataset's status as the cloud writes it: Sedna's fields and ours."""
        return {
            "phase": self.phase,
            "message": self.message,
            "numberOfSamples": self.numberOfSamples,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "progress": self.progress,
            "updateTime": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


def count_samples(path: Path, fmt: str) -> int:
    lines = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            lines += chunk.count(b"\n")
        if path.stat().st_size and not _ends_with_newline(path):
            lines += 1
    return max(0, lines - 1) if fmt == "csv" else lines


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, 2)
        return f.read(1) == b"\n"


def _local_path(url: str) -> Path | None:
    parts = urlsplit(url)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    if parts.scheme == "" and url.startswith("/"):
        return Path(url)
    return None


def source_stamp(url: str) -> str:
    """What changes when the source changes (no download)."""
    if not url:
        raise DatasetError("spec.url is empty")
    local = _local_path(url)
    if local is not None:
        try:
            st = local.stat()
        except OSError as exc:
            raise DatasetError(f"{url}: {exc.strerror or exc}") from None
        return f"{st.st_size}/{st.st_mtime_ns}"
    request = urllib.request.Request(url, method="HEAD")  # noqa: S310 - http(s) checked by the caller
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
        return str(
            answer.headers.get("ETag") or answer.headers.get("Last-Modified") or answer.headers.get("Content-Length")
        )


def copy(url: str, target: Path, progress: Any) -> tuple[str, int]:
    """Copy the url to ``target`` (via a temporary name); returns (sha256, bytes). Blocking: run in a thread."""
    scheme = urlsplit(url).scheme
    local = _local_path(url)
    if local is None and scheme not in ("http", "https"):
        raise DatasetError(f"url {url!r}: only local paths, file:// and http(s):// urls can be loaded")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    digest, done = hashlib.sha256(), 0
    try:
        if local is not None:
            total = local.stat().st_size
            source = local.open("rb")
        else:
            answer = urllib.request.urlopen(url, timeout=60)  # noqa: S310 - scheme checked above
            total = int(answer.headers.get("Content-Length") or 0)
            source = answer
        with source, tmp.open("wb") as out:
            while chunk := source.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                progress(done, total)
        tmp.replace(target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"{url}: {getattr(exc, 'reason', None) or exc.strerror or exc}") from None
    return digest.hexdigest(), done


def _check(sha: str, checksum: str) -> None:
    if checksum and sha != checksum:
        raise DatasetError(f"the copy's sha256 is {sha}, not the {checksum} spec.checksum gives")


class DatasetLoader:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.states: dict[tuple[str, str], DatasetState] = {}
        for state_file in root.glob("*/*/state.json"):
            namespace, name = state_file.parent.parent.name, state_file.parent.name
            try:
                self.states[(namespace, name)] = DatasetState(**json.loads(state_file.read_text()))
            except (ValueError, TypeError):
                continue  # unreadable: loaded again

    def directory(self, namespace: str, name: str) -> Path:
        return self.root / namespace / name

    def state(self, namespace: str, name: str) -> DatasetState | None:
        return self.states.get((namespace, name))

    def data_path(self, namespace: str, name: str) -> Path | None:
        state = self.state(namespace, name)
        if state is None or state.phase != "Ready":
            return None
        return self.directory(namespace, name) / state.file

    def _save(self, namespace: str, name: str, state: DatasetState) -> None:
        self.states[(namespace, name)] = state
        path = self.directory(namespace, name) / "state.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(".state.json.tmp")
        tmp.write_text(json.dumps(asdict(state)))
        tmp.replace(path)

    def forget(self, namespace: str, name: str) -> None:
        self.states.pop((namespace, name), None)
        shutil.rmtree(self.directory(namespace, name), ignore_errors=True)

    async def load(self, dataset: dict[str, Any], report: Any) -> DatasetState:
        """Load (or check) one Dataset; ``report(state)`` is awaited at each change of phase."""
        meta, spec = dataset["metadata"], dataset.get("spec") or {}
        namespace, name, uid = meta.get("namespace", "default"), meta["name"], meta.get("uid", "")
        url, fmt = str(spec.get("url") or ""), str(spec.get("format") or "txt").lower()
        checksum = str(spec.get("checksum") or "").removeprefix("sha256:").lower()
        old = self.state(namespace, name)
        try:
            stamp = await asyncio.to_thread(source_stamp, url)
        except (DatasetError, OSError) as exc:
            if old is not None and old.phase == "Ready" and old.uid == uid:
                return old  # the source is out of reach (offline, say): the copy here still serves
            state = DatasetState("Failed", message=str(exc), uid=uid)
            self._save(namespace, name, state)
            await report(state)
            return state
        if old is not None and old.phase == "Ready" and old.uid == uid and old.source_stamp == stamp:
            return old
        file = Path(urlsplit(url).path).name or "data"
        loading = DatasetState("Loading", message=f"copying {url}", file=file, uid=uid)
        self._save(namespace, name, loading)
        await report(loading)
        loop = asyncio.get_running_loop()

        def progress(done: int, total: int) -> None:
            loading.bytes, loading.progress = done, int(100 * done / total) if total else 0

        try:
            sha, size = await asyncio.to_thread(copy, url, self.directory(namespace, name) / file, progress)
            _check(sha, checksum)
            samples = await loop.run_in_executor(None, count_samples, self.directory(namespace, name) / file, fmt)
        except DatasetError as exc:
            state = DatasetState("Failed", message=str(exc), file=file, uid=uid)
        else:
            state = DatasetState(
                "Ready",
                file=file,
                sha256=sha,
                bytes=size,
                numberOfSamples=samples,
                progress=100,
                source_stamp=stamp,
                uid=uid,
            )
        self._save(namespace, name, state)
        log.info(
            "dataset_loaded",
            dataset=f"{namespace}/{name}",
            phase=state.phase,
            samples=state.numberOfSamples,
            message=state.message,
        )
        await report(state)
        return state
