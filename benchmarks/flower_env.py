"""A private venv for Flower (``flwr``), which cannot share ours: flwr pins protobuf<7 and we need protobuf>=7.36.

``flower_python()`` builds it once, with uv, under ``~/.cache/kubage/flower-<version>/`` (``$XDG_CACHE_HOME``
is honoured) and returns its interpreter; benchmarks/flower_side.py runs in it. The venv is built in a temp
dir beside its final place and renamed into it only when complete, so an interrupted build leaves no
half-installed venv that a later call would take for a finished one. Standard library only: the caller may be
any Python.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLWR_VERSION = "1.42.0"
PACKAGES = (f"flwr=={FLWR_VERSION}", "numpy", "scikit-learn")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kubage"
VENV = CACHE / f"flower-{FLWR_VERSION}"


def _log(text: str) -> None:
    print(f"# flower venv: {text}", file=sys.stderr, flush=True)


def _uv() -> str:
    found = shutil.which("uv") or str(Path.home() / ".local" / "bin" / "uv")
    if not Path(found).exists():
        raise FileNotFoundError("uv is needed to build Flower's venv; install it with `pip install --user uv`")
    return found


def flower_python() -> Path:
    """The interpreter of the Flower venv, built first if it is not there yet."""
    python = VENV / "bin" / "python"
    if python.exists():
        return python
    CACHE.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{VENV.name}-", dir=CACHE))  # same filesystem: the rename is atomic
    uv = _uv()
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}  # the venv reuses this interpreter, never a download
    try:
        _log(f"building {VENV} ({' '.join(PACKAGES)})")
        # --relocatable: the venv is built at the staging path, and entry-point scripts must not point there
        subprocess.run(
            [uv, "venv", "--quiet", "--relocatable", "--python", sys.executable, str(staging)], check=True, env=env
        )
        subprocess.run(
            [uv, "pip", "install", "--quiet", "--python", str(staging / "bin" / "python"), *PACKAGES],
            check=True,
            env=env,
        )
        try:
            staging.rename(VENV)
        except OSError:
            if not python.exists():
                raise
            _log("another build finished first; using it")  # a concurrent caller won the rename
        else:
            _log("ready")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return python


if __name__ == "__main__":
    print(flower_python())
