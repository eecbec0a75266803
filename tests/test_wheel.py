"""The installed dl-driver is the distributable wheel: tagged with pyproject.toml's manylinux policy, its extension
needing no newer glibc than that policy allows; and scripts/check_dist.py, which install_wheel runs, rejects the
wheels and sdists it must reject."""

from __future__ import annotations

import io
import platform
import sys
import tarfile
import time
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

import dl_driver._core

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import check_dist  # noqa: E402

POLICY = check_dist.expected_policy()
ARCH = platform.machine()
# The libraries a manylinux2014 (and later) wheel may link against without bundling them (PEP 599).
ALLOWED_LIBS = {
    "libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1", "libutil.so.1", "libgcc_s.so.1",
    "libstdc++.so.6", "libnsl.so.1", "libcrypt.so.1", f"ld-linux-{ARCH.replace('_', '-')}.so.2",
}


def installed_tags() -> list[str]:
    text = metadata.distribution("dl-driver").read_text("WHEEL") or ""
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Tag:")]


def test_installed_wheel_is_tagged_with_the_manylinux_policy() -> None:
    platforms = {tag.rsplit("-", 1)[1] for tag in installed_tags()}
    assert platforms, "the installed dl-driver has no WHEEL tags"
    assert not {p for p in platforms if p.startswith("linux_")}, f"a local-only wheel is installed: {platforms}"
    assert f"{POLICY}_{ARCH}" in platforms


def test_installed_extension_is_the_wheels_and_needs_no_newer_glibc() -> None:
    elffile = pytest.importorskip("elftools.elf.elffile")
    gnuversions = pytest.importorskip("elftools.elf.gnuversions")
    dist = metadata.distribution("dl-driver")
    so = Path(dl_driver._core.__file__).resolve()
    assert so in {Path(dist.locate_file(f)).resolve() for f in dist.files or []}, f"{so} is not the wheel's"
    needed, versions = set(), set()
    with so.open("rb") as f:
        elf = elffile.ELFFile(f)
        for section in elf.iter_sections():
            if section.header.sh_type == "SHT_DYNAMIC":
                needed |= {tag.needed for tag in section.iter_tags() if tag.entry.d_tag == "DT_NEEDED"}
            if isinstance(section, gnuversions.GNUVerNeedSection):
                for _, auxes in section.iter_versions():
                    versions |= {aux.name for aux in auxes}
    assert needed <= ALLOWED_LIBS, f"links libraries outside the manylinux set: {needed - ALLOWED_LIBS}"
    glibc = {tuple(int(x) for x in v.removeprefix("GLIBC_").split(".")[:2]) for v in versions if v.startswith("GLIBC_2")}
    assert glibc, versions
    assert max(glibc) <= check_dist.glibc(POLICY), f"needs GLIBC_{'.'.join(map(str, max(glibc)))}, above {POLICY}"


def fake_wheel(tmp_path: Path, platform_tag: str) -> Path:
    wheel = tmp_path / f"dl_driver-0.1.0-cp311-abi3-{platform_tag}.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("dl_driver-0.1.0.dist-info/WHEEL", f"Wheel-Version: 1.0\nTag: cp311-abi3-{platform_tag}\n")
    return wheel


@pytest.mark.parametrize("platform_tag", [f"linux_{ARCH}", f"manylinux_2_34_{ARCH}"])
def test_check_dist_rejects_a_wheel_without_the_policys_tag(tmp_path: Path, platform_tag: str) -> None:
    with pytest.raises(check_dist.DistError, match=platform_tag if platform_tag.startswith("linux") else POLICY):
        check_dist.check_wheel(fake_wheel(tmp_path, platform_tag), POLICY, audit=False)


def test_check_dist_rejects_a_wheel_whose_name_and_wheel_file_disagree(tmp_path: Path) -> None:
    wheel = fake_wheel(tmp_path, f"linux_{ARCH}")
    renamed = wheel.rename(tmp_path / f"dl_driver-0.1.0-cp311-abi3-{POLICY}_{ARCH}.whl")
    with pytest.raises(check_dist.DistError, match="WHEEL says"):
        check_dist.check_wheel(renamed, POLICY, audit=False)


def sdist(tmp_path: Path, drop: str) -> Path:
    """An sdist of the tracked files the build needs, less those under `drop`."""
    tarball = tmp_path / "dl_driver-0.1.0.tar.gz"
    files = [*check_dist.NEEDED_FILES, "PKG-INFO", *check_dist.tracked_files()]
    with tarfile.open(tarball, "w:gz") as tar:
        for name in files:
            if not name.startswith(drop):
                info = tarfile.TarInfo(f"dl_driver-0.1.0/{name}")
                tar.addfile(info, io.BytesIO(b""))
    return tarball


def test_check_dist_accepts_a_complete_sdist_and_names_what_one_lacks(tmp_path: Path) -> None:
    assert "all" in check_dist.check_sdist(sdist(tmp_path, drop="no such path"))
    with pytest.raises(check_dist.DistError, match=r"configs/workload/quickstart\.yaml"):
        check_dist.check_sdist(sdist(tmp_path, drop="configs/"))


def test_unpack_rewrites_only_changed_files(tmp_path: Path) -> None:
    def tarball(files: dict[str, bytes]) -> Path:
        path = tmp_path / "s.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(f"p-1/{name}")
                info.size, info.mtime = len(data), 1153704088  # maturin's fixed member time
                tar.addfile(info, io.BytesIO(data))
        return path

    dest = tmp_path / "src"
    check_dist.unpack(tarball({"a.rs": b"a", "b/c.rs": b"c", "old.rs": b"o"}), dest)
    old = {p: (dest / p).stat().st_mtime_ns for p in ("a.rs", "b/c.rs")}
    time.sleep(0.05)  # past the file system's timestamp granularity
    check_dist.unpack(tarball({"a.rs": b"a", "b/c.rs": b"changed"}), dest)
    assert (dest / "a.rs").stat().st_mtime_ns == old["a.rs"]
    assert (dest / "b/c.rs").read_bytes() == b"changed"
    assert (dest / "b/c.rs").stat().st_mtime_ns > old["b/c.rs"] > 1153704088 * 10**9
    assert not (dest / "old.rs").exists()
