"""scripts/mkimage.py: the locally built images carry what their Dockerfiles would (entrypoint, user, links,
file modes, every busybox applet), reproducibly."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from scripts import mkimage

pytestmark = pytest.mark.skipif(not mkimage.BUSYBOX.exists(), reason="needs /bin/busybox (busybox-static)")


def _read(tar_path: Path) -> tuple[dict[str, object], dict[str, tarfile.TarInfo]]:
    with tarfile.open(tar_path) as outer:
        manifest = json.loads(outer.extractfile("manifest.json").read())[0]  # type: ignore[union-attr]
        config = json.loads(outer.extractfile(manifest["Config"]).read())  # type: ignore[union-attr]
        layer = outer.extractfile(manifest["Layers"][0]).read()  # type: ignore[union-attr]
    with tarfile.open(fileobj=io.BytesIO(layer)) as inner:
        members = {m.name: m for m in inner.getmembers()}
    return config["config"], members


def test_an_agnhost_like_image_has_its_entrypoint_user_links_and_modes(tmp_path: Path) -> None:
    binary = tmp_path / "tool"
    binary.write_bytes(b"\x7fELF not really")
    out = tmp_path / "image.tar"
    code = mkimage.main(
        [str(out), "example.test/tool:1.0", "--add", f"{binary}:/tool", "--add", f"{binary}:/usr/local/bin/suid:4755",
         "--link", "/tool-2:tool", "--all-applets", "--entrypoint", "/tool", "--user", "1234", "pause"]
    )  # fmt: skip
    assert code == 0
    config, members = _read(out)
    assert config["Entrypoint"] == ["/tool"] and config["Cmd"] == ["pause"] and config["User"] == "1234"
    assert members["tool"].mode == 0o755 and members["usr/local/bin/suid"].mode == 0o4755
    assert members["tool-2"].issym() and members["tool-2"].linkname == "tool"
    assert set(mkimage.available_applets()) - {"busybox"} <= {n.removeprefix("bin/") for n in members}
    again = tmp_path / "again.tar"
    mkimage.main([str(again), "example.test/tool:1.0", "--add", f"{binary}:/tool", "--add",
                  f"{binary}:/usr/local/bin/suid:4755", "--link", "/tool-2:tool", "--all-applets", "--entrypoint",
                  "/tool", "--user", "1234", "pause"])  # fmt: skip
    assert again.read_bytes() == out.read_bytes()  # reproducible


def test_an_option_without_its_value_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert mkimage.main([str(tmp_path / "x.tar"), "example.test/x:1", "--user"]) == 2
    assert "--user needs a value" in capsys.readouterr().err
