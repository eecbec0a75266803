#!/usr/bin/env python3
"""Fails when the top-level modules of the core crate reference each other in a cycle, or a pure module does IO.

Counts `use crate::x...` lines, `use crate::{x, y::z}` groups and inline `crate::x::` paths in every
`.rs` file of a module (tests included), then prints the edges of every cycle it finds. The pure modules (PURE)
only compute: any file, socket, process or async-runtime API in them (or a reference to `storage`) is reported with
its file and line.
Usage: check_layers.py [SRC_DIR]   (default: crates/dl-driver-core/src)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

GROUP_START = re.compile(r"\bcrate::\{")
#: Modules that only compute (encode, decode, lay out, describe); their callers do the IO.
PURE = {"formats", "layout", "records", "uri"}
IO = re.compile(
    r"\b(std::(fs|net|process|os::unix::fs)\b|std::\{[^}]*\b(fs|net|process)\b|tokio::|object_store::|File::|crate::storage\b)"
)
PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")


def module_of(src: Path, file: Path) -> str:
    rel = file.relative_to(src)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def groups(text: str) -> list[str]:
    """The bodies of every `crate::{...}` group, nested braces and all."""
    bodies = []
    for match in GROUP_START.finditer(text):
        depth, start = 1, match.end()
        for end in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if depth == 0:
                bodies.append(text[start:end])
                break
    return bodies


def group_heads(body: str) -> set[str]:
    """Top-level names of a `{a, b::c, d::{e, f}}` group."""
    heads, depth, current = set(), 0, ""
    for ch in body + ",":
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            name = current.strip().split("::")[0].strip()
            if name:
                heads.add(name)
            current = ""
            continue
        if depth == 0:
            current += ch
    return heads


def edges(src: Path) -> dict[str, dict[str, list[str]]]:
    """module -> referenced module -> files (relative) that reference it."""
    graph: dict[str, dict[str, list[str]]] = {}
    modules = {module_of(src, f) for f in src.rglob("*.rs")} - {"lib", "main"}
    for file in sorted(src.rglob("*.rs")):
        this = module_of(src, file)
        if this not in modules:
            continue
        text = re.sub(r"//[^\n]*", "", file.read_text())
        targets = set(PATH.findall(text))
        for body in groups(text):
            targets |= group_heads(body)
        for target in targets & modules - {this}:
            graph.setdefault(this, {}).setdefault(target, []).append(str(file.relative_to(src)))
    for module in modules:
        graph.setdefault(module, {})
    return graph


def io_uses(src: Path) -> list[str]:
    """`file:line: what` for every IO API a pure module's files name."""
    found = []
    for file in sorted(src.rglob("*.rs")):
        if module_of(src, file) not in PURE:
            continue
        for number, line in enumerate(file.read_text().splitlines(), 1):
            code = line.split("//", 1)[0]
            found.extend(f"{file.relative_to(src)}:{number}: {match.group(0)}" for match in IO.finditer(code))
    return found


def cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def main(argv: list[str]) -> int:
    src = Path(argv[1]) if len(argv) > 1 else Path("crates/dl-driver-core/src")
    if not src.is_dir():
        print(f"check_layers: {src} is not a folder", file=sys.stderr)
        return 2
    graph = edges(src)
    found = cycles(graph)
    io = io_uses(src)
    for use in io:
        print(f"check_layers: pure module does IO (its callers should): {use}", file=sys.stderr)
    if not found and not io:
        print(
            f"check_layers: {len(graph)} top-level modules of {src}, no import cycle, no IO in {', '.join(sorted(PURE))}"
        )
        return 0
    for component in found:
        members = set(component)
        print(f"check_layers: import cycle among {', '.join(component)}:", file=sys.stderr)
        for module in component:
            for target, files in sorted(graph[module].items()):
                if target in members:
                    print(f"  {module} -> {target}  ({', '.join(files)})", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
