"""Checkpoints under a location: list them (complete = has a manifest), verify them against their manifest, delete
them. Storage options are the same as ``dl_driver.storage.open``'s."""

from __future__ import annotations

import json
from typing import TypedDict

from dl_driver import _core


class CheckpointInfo(TypedDict):
    """A checkpoint folder as listed: complete when its manifest is there (it is written last)."""

    name: str
    complete: bool
    objects: int
    stored_bytes: int


def list_checkpoints(uri: str, **options: str) -> list[CheckpointInfo]:
    """``[{name, complete, objects, stored_bytes}]``, oldest step first; incomplete ones have no manifest."""
    listed: list[CheckpointInfo] = json.loads(_core.checkpoint_list(uri, options or None))
    return listed


def verify(uri: str, name: str, **options: str) -> int:
    """Reads every file of checkpoint ``name`` and checks sizes, CRC-32Cs and decompression; returns bytes read.

    Raises CheckpointError on a mismatch or a missing manifest (FileNotFoundError when the manifest is absent).
    """
    return _core.checkpoint_verify(uri, name, options or None)


def delete(uri: str, name: str, **options: str) -> int:
    """Deletes checkpoint ``name`` (its manifest first); returns the number of objects deleted."""
    return _core.checkpoint_delete(uri, name, options or None)
