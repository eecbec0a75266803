"""Puts this VM's memory in one state before a timed run, so that runs of different tools compare."""

from __future__ import annotations


def warm_memory(nbytes: int) -> None:
    """Touches and frees `nbytes` of memory, just before a timed run.

    On this VM, memory left free for a few seconds is handed back to the host (free page reporting), and the first
    write to it afterwards runs several times slower: without this, a run's rate depends on what ran before it.
    """
    import numpy as np

    block = np.ones(nbytes, dtype=np.uint8)
    del block
