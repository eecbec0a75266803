#!/usr/bin/env python3
"""Checks the distributions that scripts/common.sh's install_wheel builds.

  check_dist.py sdist TARBALL        every tracked file the build needs is in the sdist
  check_dist.py unpack TARBALL DIR   unpacks the sdist into DIR, rewriting only the files whose bytes changed
  check_dist.py wheel WHEEL          the wheel carries the manylinux tag of pyproject.toml's [tool.maturin]
                                     compatibility, no linux_* tag, and `auditwheel show` agrees

`unpack` keeps the modification times of unchanged files: maturin writes every sdist member with one fixed old
time, so a plain extraction would make cargo take changed sources for unchanged ones (or rebuild everything).
"""

from __future__ import annotations

import platform
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What a build from the sdist reads: the workspace, both crates, the embedded workloads, the Python package.
NEEDED_FILES = ("Cargo.toml", "Cargo.lock", "pyproject.toml", "README.md")
NEEDED_TREES = ("crates/dl-driver-core", "crates/dl-driver-py", "configs/workload", "python/dl_driver")
# Legacy manylinux names -> PEP 600 names.
ALIASES = {"manylinux1": "manylinux_2_5", "manylinux2010": "manylinux_2_12", "manylinux2014": "manylinux_2_17"}
POLICY = re.compile(r"manylinux_(\d+)_(\d+)")


class DistError(Exception):
    pass


def expected_policy(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """pyproject.toml's [tool.maturin] compatibility as a PEP 600 name (manylinux_X_Y)."""
    with pyproject.open("rb") as f:
        compatibility = tomllib.load(f).get("tool", {}).get("maturin", {}).get("compatibility")
    if not compatibility:
        raise DistError(f"{pyproject}: [tool.maturin] has no compatibility")
    policy = ALIASES.get(compatibility, compatibility)
    if not POLICY.fullmatch(policy):
        raise DistError(f"{pyproject}: compatibility {compatibility!r} is not a manylinux policy")
    return policy


def glibc(policy: str) -> tuple[int, int]:
    match = POLICY.fullmatch(ALIASES.get(policy, policy))
    if not match:
        raise DistError(f"{policy!r} is not a manylinux policy")
    return int(match[1]), int(match[2])


def tracked_files(root: Path = ROOT) -> list[str]:
    """The files of NEEDED_TREES under version control (all files when there is no git checkout)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--", *NEEDED_TREES],
            capture_output=True,
            check=True,
            text=True,
        ).stdout
        files = [f for f in out.split("\0") if f and (root / f).is_file()]
    except (OSError, subprocess.CalledProcessError):
        files = [str(p.relative_to(root)) for t in NEEDED_TREES for p in (root / t).rglob("*") if p.is_file()]
    return [f for f in files if "__pycache__" not in f and not f.endswith(".so")]


def sdist_members(tarball: Path) -> set[str]:
    """Member paths relative to the sdist's top folder (name-version/)."""
    with tarfile.open(tarball) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) != 1:
        raise DistError(f"{tarball.name}: expected one top folder, found {sorted(tops)}")
    return {n.split("/", 1)[1] for n in names if "/" in n}


def check_sdist(tarball: Path, root: Path = ROOT) -> str:
    members = sdist_members(tarball)
    needed = [*NEEDED_FILES, *tracked_files(root)]
    missing = sorted(f for f in needed if f not in members)
    if missing:
        raise DistError(f"{tarball.name} lacks {len(missing)} file(s) a build needs: " + ", ".join(missing))
    if "PKG-INFO" not in members:
        raise DistError(f"{tarball.name} has no PKG-INFO")
    return f"{tarball.name}: {len(members)} files, all {len(needed)} that a build needs"


def unpack(tarball: Path, dest: Path) -> str:
    """Makes DEST hold exactly the sdist's files; files whose bytes did not change keep their mtime."""
    with tarfile.open(tarball) as tar:
        files = {}
        for m in tar.getmembers():
            if m.isfile() and "/" in m.name:
                rel = m.name.split("/", 1)[1]
                if ".." in Path(rel).parts or Path(rel).is_absolute():
                    raise DistError(f"{tarball.name}: unsafe member {m.name}")
                files[rel] = tar.extractfile(m).read()  # type: ignore[union-attr]
    dest.mkdir(parents=True, exist_ok=True)
    written = 0
    for rel, data in files.items():
        path = dest / rel
        if path.is_file() and path.read_bytes() == data:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written += 1
    removed = 0
    for path in sorted(dest.rglob("*"), reverse=True):
        rel = str(path.relative_to(dest))
        if path.is_file() and rel not in files:
            path.unlink()
            removed += 1
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    return f"{dest}: {len(files)} files, {written} written, {removed} removed"


def wheel_platforms(wheel: Path) -> list[str]:
    """The platform tags of the file name (name-version-python-abi-platform.whl), which must match WHEEL's."""
    parts = wheel.name.removesuffix(".whl").split("-")
    if len(parts) not in (5, 6) or not wheel.name.endswith(".whl"):
        raise DistError(f"{wheel.name} is not a wheel file name")
    python, abi, platforms = parts[-3], parts[-2], parts[-1].split(".")
    name_tags = {f"{p}-{a}-{plat}" for p in python.split(".") for a in abi.split(".") for plat in platforms}
    with zipfile.ZipFile(wheel) as z:
        wheel_files = [n for n in z.namelist() if n.endswith(".dist-info/WHEEL")]
        if len(wheel_files) != 1:
            raise DistError(f"{wheel.name}: expected one .dist-info/WHEEL, found {wheel_files}")
        text = z.read(wheel_files[0]).decode()
    file_tags = {line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Tag:")}
    if file_tags != name_tags:
        raise DistError(f"{wheel.name}: WHEEL says {sorted(file_tags)}, the file name {sorted(name_tags)}")
    return platforms


def auditwheel_policy(wheel: Path) -> str:
    """The platform tag `auditwheel show` finds the wheel consistent with."""
    result = subprocess.run(
        [sys.executable, "-m", "auditwheel", "show", str(wheel)], capture_output=True, text=True, check=False
    )
    text = " ".join((result.stdout + result.stderr).split())
    match = re.search(r'consistent with the following platform tag: "([^"]+)"', text)
    if result.returncode != 0 or not match:
        raise DistError(f"auditwheel show {wheel.name} failed (exit {result.returncode}): {text}")
    return match[1]


def check_wheel(wheel: Path, policy: str, audit: bool = True) -> str:
    arch = platform.machine()
    platforms = wheel_platforms(wheel)
    plain = [p for p in platforms if p.startswith("linux_")]
    if plain:
        raise DistError(f"{wheel.name} is tagged {plain[0]}: a local-only wheel, not {policy}_{arch}")
    if f"{policy}_{arch}" not in platforms:
        raise DistError(f"{wheel.name} is not tagged {policy}_{arch} (its platform tags: {', '.join(platforms)})")
    if not audit:
        return f"{wheel.name}: tagged {policy}_{arch}"
    found = auditwheel_policy(wheel)
    if not POLICY.fullmatch(found.removesuffix(f"_{arch}")) or glibc(found.removesuffix(f"_{arch}")) > glibc(policy):
        raise DistError(f"auditwheel show: {wheel.name} is only consistent with {found}, not {policy}_{arch}")
    return f"{wheel.name}: tagged {policy}_{arch}; auditwheel show: consistent with {found}"


def main(argv: list[str]) -> int:
    try:
        match argv:
            case ["sdist", tarball]:
                print(check_sdist(Path(tarball)))
            case ["unpack", tarball, dest]:
                print(unpack(Path(tarball), Path(dest)))
            case ["wheel", wheel]:
                print(check_wheel(Path(wheel), expected_policy()))
            case _:
                print(__doc__, file=sys.stderr)
                return 2
    except DistError as e:
        print(f"check_dist: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
