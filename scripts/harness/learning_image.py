"""The federated workers' image, built without a registry: the host's Python (its interpreter, its standard
library without tests and tools, and the shared libraries they load), numpy from our environment and the
learning lib, on the busybox base of scripts/mkimage.py. Cached by the content of everything in it.

    localhost/kubage-learning:<version>   python3 -m learning.trainer | learning.aggregator | learning.datawait
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy

from scripts import mkimage
from scripts.harness.containerd import CACHE

ROOT = Path(__file__).resolve().parents[2]
REF = "localhost/kubage-learning:0.1"
SITE = "/opt/kubage/site"
# Not needed to run the lib: tests, GUIs, installers, the build configuration, other packages.
STDLIB_LEAVE_OUT = frozenset(
    {
        "test",
        "tests",
        "idle_test",
        "site-packages",
        "tkinter",
        "idlelib",
        "turtledemo",
        "ensurepip",
        "lib2to3",
        "pydoc_data",
        "config-3.11-x86_64-linux-gnu",
        "__phello__",
    }
)
NUMPY_LEAVE_OUT = frozenset({"tests", "testing", "f2py", "_pyinstaller"})


def _shared_libraries(files: list[Path]) -> dict[str, Path]:
    """Every library the ELF ``files`` load (by ldd), at the path the loader finds it on this host."""
    found: dict[str, Path] = {}
    for chunk in range(0, len(files), 200):
        out = subprocess.run(
            ["ldd", *map(str, files[chunk : chunk + 200])], capture_output=True, text=True, check=False
        ).stdout
        for line in out.splitlines():
            if line.rstrip().endswith(":"):  # ldd's header before each file's list
                continue
            parts = line.split()
            path = (
                parts[2]
                if "=>" in parts and len(parts) > 2
                else (parts[0] if parts and parts[0].startswith("/") else "")
            )
            if path.startswith("/") and not path.startswith(str(Path(numpy.__file__).parents[1])):
                found[path] = Path(path).resolve()
    return found


def contents() -> tuple[dict[str, tuple[Path, int]], dict[str, tuple[Path, frozenset[str]]], dict[str, str]]:
    """(files, trees, links) of the image."""
    python = Path(sys.executable).resolve()
    prefix = Path(sys.base_prefix)
    stdlib = Path(sysconfig.get_paths(vars={"installed_base": sys.base_prefix, "base": sys.base_prefix})["stdlib"])
    libpython = Path(sysconfig.get_config_var("LIBDIR") or prefix / "lib") / str(sysconfig.get_config_var("INSTSONAME"))
    site = Path(numpy.__file__).parents[1]
    files: dict[str, tuple[Path, int]] = {str(python): (python, 0o755)}
    if libpython.exists():
        files[str(libpython)] = (libpython, 0o755)
    elves = [python, *stdlib.joinpath("lib-dynload").glob("*.so"), *site.joinpath("numpy").rglob("*.so")]
    for path, real in _shared_libraries(elves).items():
        files.setdefault(path, (real, 0o755))
    trees = {
        str(stdlib): (stdlib, STDLIB_LEAVE_OUT),
        f"{SITE}/numpy": (site / "numpy", NUMPY_LEAVE_OUT),
        f"{SITE}/learning": (ROOT / "learning", frozenset()),
    }
    if (site / "numpy.libs").is_dir():
        trees[f"{SITE}/numpy.libs"] = (site / "numpy.libs", frozenset())
    links = {"/usr/local/bin/python3": str(python), "/usr/local/bin/python": str(python)}
    return files, trees, links


def _key(
    files: dict[str, tuple[Path, int]], trees: dict[str, tuple[Path, frozenset[str]]], links: dict[str, str]
) -> str:
    key = hashlib.sha256(Path(mkimage.__file__).read_bytes())
    key.update(repr(sorted(links.items())).encode())
    for dest, (source, mode) in sorted(files.items()):
        st = source.stat()
        key.update(f"{dest}:{mode}:{st.st_size}:{st.st_mtime_ns}".encode())
    for dest, (root, leave_out) in sorted(trees.items()):
        key.update(f"{dest}:{sorted(leave_out)}".encode())
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                key.update(f"{path.relative_to(root)}".encode() + hashlib.sha256(path.read_bytes()).digest())
    return key.hexdigest()[:16]


def build() -> Path:
    """The image tar, built once per content."""
    files, trees, links = contents()
    tar = CACHE / f"kubage-learning-{_key(files, trees, links)}.tar"
    if not tar.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        mkimage.build(
            tar,
            REF,
            ["python3", "-m", "learning.trainer"],
            extra=files,
            links=links,
            trees=trees,
            env={"PYTHONPATH": SITE, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"},
        )
    return tar


if __name__ == "__main__":
    print(build())
