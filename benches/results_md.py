"""Saves one benchmark's results: the JSON under benches/results/ and its section of benches/RESULTS.md (between
``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``, appended when missing), shared by the benchmark scripts."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def save(name: str, result: dict, section: str) -> None:
    """Writes results/NAME.json and replaces (or appends) the NAME section of RESULTS.md; prints the section."""
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    path = HERE / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
    print(section)
