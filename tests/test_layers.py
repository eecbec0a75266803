"""The core crate's top-level modules form layers: scripts/check_layers.py passes on the tree and catches an upward import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "check_layers.py"
SRC = ROOT / "crates" / "dl-driver-core" / "src"


def check(src: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), str(src)], capture_output=True, text=True, check=False)


def check_with_line(tmp_path: Path, file: str, line: str) -> subprocess.CompletedProcess[str]:
    """Runs the check on a copy of the core's sources with `line` appended to `file`."""
    src = tmp_path / "src"
    shutil.copytree(SRC, src)
    target = src / file
    target.write_text(target.read_text() + "\n" + line + "\n")
    return check(src)


def test_core_modules_have_no_import_cycle() -> None:
    result = check(SRC)
    assert result.returncode == 0, result.stderr
    assert "no import cycle" in result.stdout


@pytest.mark.parametrize(
    ("file", "line", "edge"),
    [
        ("config/validate.rs", "use crate::plugins::BUILT_IN;", "config -> plugins"),
        ("formats/npy.rs", "use crate::{comm, generate::GenerateOptions};", "formats -> generate"),
        ("layout/shapes.rs", "use crate::{config::{self, Config}, sink::{data::{mix}}, runner};", "layout -> runner"),
        ("records.rs", "fn upward() { let _ = crate::report::timestamp; }", "records -> report"),
        ("storage/options.rs", "#[cfg(test)]\nmod t { use crate::pipeline::Pipeline; }", "storage -> pipeline"),
    ],
)
def test_an_upward_import_is_reported_with_its_edges(tmp_path: Path, file: str, line: str, edge: str) -> None:
    result = check_with_line(tmp_path, file, line)
    assert result.returncode == 1
    assert "import cycle" in result.stderr
    assert edge in result.stderr


@pytest.mark.parametrize(
    ("file", "line", "shown"),
    [
        ("formats/npy.rs", "fn save() { std::fs::write(\"x\", b\"\").unwrap(); }", "formats/npy.rs:"),
        ("formats/mod.rs", "use std::{fs, io::Read};", "std::{fs"),
        ("layout/mod.rs", "async fn later() { tokio::task::yield_now().await }", "tokio::"),
        ("formats/read.rs", "fn s(_: &crate::storage::Store) {}", "crate::storage"),
    ],
)
def test_io_in_a_pure_module_is_reported(tmp_path: Path, file: str, line: str, shown: str) -> None:
    result = check_with_line(tmp_path, file, line)
    assert result.returncode == 1
    assert "pure module does IO" in result.stderr and shown in result.stderr, result.stderr
