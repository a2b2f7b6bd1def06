#!/usr/bin/env python3
"""Build a tiny OCI image tar from the host's static busybox, for a container runtime with no registry.

    scripts/mkimage.py OUT.tar REF [--add SRC:DEST[:MODE] ...] [--link PATH:TARGET ...] [--all-applets]
                       [--entrypoint PATH] [--user USER] [cmd ...]
    scripts/mkimage.py busybox.tar localhost/busybox:1.35 /bin/sh
    scripts/mkimage.py pause.tar localhost/pause:3.6 /bin/sh -c "trap 'exit 0' TERM; sleep 2147483647 & wait"
    scripts/mkimage.py kubectl.tar localhost/kubectl:1.32 --add /usr/bin/kubectl:/bin/kubectl /bin/kubectl
    scripts/mkimage.py agnhost.tar registry.k8s.io/e2e-test-images/agnhost:2.63.0 --add agnhost:/agnhost \
        --link /agnhost-2:agnhost --all-applets --entrypoint /agnhost
    ctr -a SOCK -n k8s.io images import busybox.tar

One layer: Debian's /bin/busybox (package busybox-static) with symlinks for the common applets, the usual
top-level directories and a minimal etc/passwd, etc/group and etc/hosts, plus any static binary given with
``--add`` (a test's in-cluster client, say). ``--all-applets`` links every applet this busybox has (the
e2e suite's busybox is a full one); ``--entrypoint`` sets the image's ENTRYPOINT, so that a pod giving only
``args`` runs it (agnhost's image works that way); ``--link`` adds a symbolic link; ``--user`` sets the
image's USER; an ``--add`` may give the file's mode in octal (``4755``: set-user-ID). The tar holds an OCI image layout
(oci-layout, index.json annotated with the image name, blobs/sha256/...) and a docker-style manifest.json,
so both `ctr images import` and `podman load` accept it. The output is byte-for-byte reproducible: same
busybox, same arguments, same tar. Standard library only.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

BUSYBOX = Path("/bin/busybox")
MTIME = 0  # every timestamp in the image, for reproducible digests
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Linked as /bin/<applet> when this busybox has the applet.
_APPLET_NAMES = """
    sh ash [ awk base64 basename cat chmod chown cp cut date dd df dirname dmesg du echo env expr false find
    free grep head gzip hostname httpd id ip kill less ln ls md5sum mkdir mktemp more mount mv nc netstat
    nslookup ping printenv printf ps pwd readlink realpath rm rmdir sed seq sha256sum sleep sort stat stty
    sync tail tar tee test timeout top touch tr true umount uname uniq uptime vi wc wget which whoami xargs
    yes
"""
APPLETS = frozenset(_APPLET_NAMES.split())
DIRS = ("bin", "dev", "etc", "home", "proc", "root", "run", "sbin", "sys", "tmp", "usr", "usr/bin", "usr/sbin", "var")
FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    "etc/group": "root:x:0:\nnobody:x:65534:\n",
    "etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
}

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def _info(name: str, kind: bytes, *, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.linkname = link
    info.mtime = MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    tar.addfile(_info(name, tarfile.REGTYPE, mode=mode, size=len(data)), io.BytesIO(data))


def available_applets(busybox: Path = BUSYBOX) -> set[str]:
    out = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def layer(
    busybox: Path = BUSYBOX,
    extra: dict[str, tuple[Path, int]] | None = None,
    *,
    all_applets: bool = False,
    links: dict[str, str] | None = None,
    trees: dict[str, tuple[Path, frozenset[str]]] | None = None,
) -> bytes:
    """The root filesystem as an uncompressed tar; ``extra`` maps paths in the image to host files, ``trees``
    paths in the image to host directories, each with the names left out wherever they occur (modes kept,
    ``__pycache__`` always left out)."""
    applets = available_applets(busybox)
    linked = applets - {"busybox"} if all_applets else APPLETS & applets
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in DIRS:
            tar.addfile(_info(d, tarfile.DIRTYPE, mode=0o1777 if d == "tmp" else 0o755))
        _add_file(tar, "bin/busybox", busybox.read_bytes(), mode=0o755)
        for applet in sorted(linked):
            tar.addfile(_info(f"bin/{applet}", tarfile.SYMTYPE, mode=0o777, link="busybox"))
        for name, text in FILES.items():
            _add_file(tar, name, text.encode())
        for name, (source, mode) in sorted((extra or {}).items()):
            _add_file(tar, name.lstrip("/"), source.resolve().read_bytes(), mode=mode)
        for name, target in sorted((links or {}).items()):
            tar.addfile(_info(name.lstrip("/"), tarfile.SYMTYPE, mode=0o777, link=target))
        added = {d for d in DIRS}
        for dest, (root, leave_out) in sorted((trees or {}).items()):
            _add_tree(tar, dest.strip("/"), root, leave_out | {"__pycache__"}, added)
    return buf.getvalue()


def _add_tree(tar: tarfile.TarFile, dest: str, root: Path, leave_out: frozenset[str], added: set[str]) -> None:
    parts = dest.split("/")
    for i in range(1, len(parts) + 1):  # the parent directories, once each
        parent = "/".join(parts[:i])
        if parent not in added:
            tar.addfile(_info(parent, tarfile.DIRTYPE, mode=0o755))
            added.add(parent)
    for path in sorted(root.rglob("*")):
        if leave_out.intersection(path.relative_to(root).parts):
            continue
        name = f"{dest}/{path.relative_to(root).as_posix()}"
        if name in added:
            continue
        added.add(name)
        if path.is_symlink():
            tar.addfile(_info(name, tarfile.SYMTYPE, mode=0o777, link=str(path.readlink())))
        elif path.is_dir():
            tar.addfile(_info(name, tarfile.DIRTYPE, mode=0o755))
        else:
            _add_file(tar, name, path.read_bytes(), mode=path.stat().st_mode & 0o7777)


def _gzip(data: bytes) -> bytes:
    buf = io.BytesIO()
    level = 9 if len(data) < 16 * 1024 * 1024 else 6  # a Python runtime's layer: 9 costs much more, saves little
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=MTIME, compresslevel=level) as gz:
        gz.write(data)
    return buf.getvalue()


def _json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _architecture() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(machine, machine)


def build(
    out: Path,
    ref: str,
    cmd: list[str],
    busybox: Path = BUSYBOX,
    extra: dict[str, tuple[Path, int]] | None = None,
    *,
    entrypoint: list[str] | None = None,
    all_applets: bool = False,
    links: dict[str, str] | None = None,
    user: str = "",
    trees: dict[str, tuple[Path, frozenset[str]]] | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Write the image tar to ``out``; returns the manifest digest."""
    if ":" not in ref.rsplit("/", 1)[-1]:
        raise ValueError(f"image reference {ref!r} needs a tag (e.g. localhost/busybox:1.35)")
    raw = layer(busybox, extra, all_applets=all_applets, links=links, trees=trees)
    image_env = [f"PATH={PATH}", *(f"{k}={v}" for k, v in sorted((env or {}).items()))]
    image_config: dict[str, Any] = {"Env": image_env, "Cmd": cmd, "WorkingDir": "/"}
    if entrypoint:
        image_config["Entrypoint"] = entrypoint
    if user:
        image_config["User"] = user
    compressed = _gzip(raw)
    arch = _architecture()
    config = _json(
        {
            "architecture": arch,
            "os": "linux",
            "created": "1970-01-01T00:00:00Z",
            "config": image_config,
            "rootfs": {"type": "layers", "diff_ids": [_digest(raw)]},
            "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "scripts/mkimage.py"}],
        }
    )
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": _digest(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": _digest(compressed), "size": len(compressed)}],
        }
    )
    index = _json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": _digest(manifest),
                    "size": len(manifest),
                    "platform": {"architecture": arch, "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": ref,
                        "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[1],
                    },
                }
            ],
        }
    )

    def blob(data: bytes) -> str:
        return "blobs/sha256/" + hashlib.sha256(data).hexdigest()

    docker_manifest = _json([{"Config": blob(config), "RepoTags": [ref], "Layers": [blob(compressed)]}])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_info("blobs", tarfile.DIRTYPE, mode=0o755))
        tar.addfile(_info("blobs/sha256", tarfile.DIRTYPE, mode=0o755))
        for data in (config, compressed, manifest):
            _add_file(tar, blob(data), data)
        _add_file(tar, "oci-layout", _json({"imageLayoutVersion": "1.0.0"}))
        _add_file(tar, "index.json", index)
        _add_file(tar, "manifest.json", docker_manifest)
    tmp.replace(out)
    return _digest(manifest)


def main(argv: list[str]) -> int:
    usage = (
        "usage: scripts/mkimage.py OUT.tar REF [--add SRC:DEST[:MODE] ...] [--link PATH:TARGET ...] [--all-applets]"
        " [--entrypoint PATH] [--user USER] [cmd ...]"
    )
    if len(argv) < 2 or argv[0] in ("-h", "--help"):
        print(usage, file=sys.stderr)
        return 2
    out, ref, rest = Path(argv[0]), argv[1], argv[2:]
    extra: dict[str, tuple[Path, int]] = {}
    entrypoint: list[str] = []
    links: dict[str, str] = {}
    user = ""
    all_applets = False
    while rest and rest[0] in ("--add", "--link", "--entrypoint", "--user", "--all-applets"):
        option = rest.pop(0)
        if option == "--all-applets":
            all_applets = True
            continue
        if not rest:
            print(f"{option} needs a value\n{usage}", file=sys.stderr)
            return 2
        value = rest.pop(0)
        if option == "--entrypoint":
            entrypoint.append(value)
        elif option == "--link":
            path, _, target = value.partition(":")
            links[path] = target
        elif option == "--user":
            user = value
        else:
            source, _, rest_of = value.partition(":")
            dest, _, mode = rest_of.partition(":")
            extra[dest or "/bin/" + Path(source).name] = (Path(source), int(mode, 8) if mode else 0o755)
    cmd = rest or ([] if entrypoint else ["/bin/sh"])
    digest = build(out, ref, cmd, extra=extra, entrypoint=entrypoint, all_applets=all_applets, links=links, user=user)
    print(f"{out}: {ref} {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
