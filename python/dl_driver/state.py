"""Checkpoints of real training state, whatever the framework: the state's structure pickled with every array
replaced by a reference into ``rank{r}-state.pkl``, the arrays' bytes one after another in ``rank{r}-tensors.bin``,
streamed from their memory through the core's writer (multipart, optional zstd, CRC-32C), the manifest written last
(docs/checkpointing.md). An :class:`ArrayKind` says how one framework's arrays are recognized, described, read from
and made; numpy's is built in (``dl_driver.torch`` adds torch's). Loading checks every file against the manifest
and unpickles only array references and a few builtins.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import pickle
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from dl_driver import _core
from dl_driver._core import CheckpointError, ConfigError
from dl_driver.checkpoint import list_checkpoints
from dl_driver.config import Config

#: Bytes of an array handed to the writer at a time (bounds the memory a save adds to the state's own).
WRITE_CHUNK = 8 << 20
#: What a checkpoint's pickled structure may name besides array references.
_ALLOWED = {("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex")}


class ArrayKind(Protocol):
    """One framework's arrays in a checkpoint."""

    #: The name in references (``"tensor"``, ``"ndarray"``).
    name: str

    def matches(self, obj: Any) -> bool: ...

    def describe(self, obj: Any) -> tuple[str, tuple[int, ...]]:
        """The array's dtype name and shape."""

    def memory(self, obj: Any) -> Any:
        """The array's bytes as a flat uint8 numpy array (a view where the array is already contiguous on the CPU)."""

    def make(self, dtype: str, shape: tuple[int, ...]) -> tuple[Any, Any]:
        """A new array of ``dtype`` and ``shape``, and its memory as a writable flat uint8 numpy array."""


def _numpy_dtype(name: str) -> np.dtype[Any]:
    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes  # bfloat16 and the float8s (JAX's numpy dtypes)

        found: np.dtype[Any] = np.dtype(getattr(ml_dtypes, name))
        return found


class NumpyArrays:
    """numpy arrays (and ml_dtypes' bfloat16 and float8 ones)."""

    name = "ndarray"

    def matches(self, obj: Any) -> bool:
        return isinstance(obj, np.ndarray)

    def describe(self, obj: Any) -> tuple[str, tuple[int, ...]]:
        if obj.dtype.hasobject:
            raise CheckpointError(
                f"a numpy array of Python objects ({obj.dtype}): only numeric arrays are checkpointed"
            )
        return obj.dtype.name, tuple(obj.shape)

    def memory(self, obj: Any) -> Any:
        return np.ascontiguousarray(obj).reshape(-1).view(np.uint8)

    def make(self, dtype: str, shape: tuple[int, ...]) -> tuple[Any, Any]:
        array = np.empty(shape, dtype=_numpy_dtype(dtype))
        return array, array.reshape(-1).view(np.uint8)


class _Pickler(pickle.Pickler):
    """Pickles a state's structure; each array becomes a reference (kind, index, dtype, shape) and joins ``arrays``."""

    def __init__(self, file: io.BytesIO, kinds: Sequence[ArrayKind], arrays: list[tuple[ArrayKind, Any]]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.kinds, self.arrays = kinds, arrays

    def persistent_id(self, obj: Any) -> Any:
        for kind in self.kinds:
            if kind.matches(obj):
                dtype, shape = kind.describe(obj)
                self.arrays.append((kind, obj))
                return (kind.name, len(self.arrays) - 1, dtype, shape)
        return None


class _Unpickler(pickle.Unpickler):
    """Rebuilds a state: each array reference is filled from the array file, in the order they were saved."""

    def __init__(self, file: io.BytesIO, kinds: Sequence[ArrayKind], reader: _core.StateReader, where: str) -> None:
        super().__init__(file)
        self.kinds = {k.name: k for k in kinds}
        self.reader, self.where, self.loaded = reader, where, 0

    def persistent_load(self, pid: Any) -> Any:
        name, index, dtype, shape = pid
        kind = self.kinds.get(name)
        if kind is None or index != self.loaded:
            raise CheckpointError(f"{self.where}: an unexpected array reference {pid!r} (kinds: {sorted(self.kinds)})")
        try:
            array, memory = kind.make(dtype, tuple(shape))
        except (TypeError, AttributeError, ImportError) as e:
            raise CheckpointError(f"{self.where}: array {index} has dtype '{dtype}', not one of {name}'s ({e})") from e
        _read_into(self.reader, memoryview(memory), self.where)
        self.loaded += 1
        return array

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise CheckpointError(f"{self.where}: names {module}.{name}, which a checkpoint may not load")
        return super().find_class(module, name)


def _read_into(reader: _core.StateReader, target: memoryview, where: str) -> None:
    """Fills ``target`` with the file's next bytes (a local file's straight into it)."""
    filled = reader.readinto(target) if len(target) else 0
    if filled < len(target):
        raise CheckpointError(
            f"{where}: a file ended {len(target) - filled} bytes early (truncated, or not this manifest's)"
        )


def _files(rank: int) -> tuple[str, str]:
    return f"rank{rank}-state.pkl", f"rank{rank}-tensors.bin"


def _fsync_local(uri: str, folder: str, names: Sequence[str]) -> None:
    """Flushes local files and their folder to the device (object stores make an upload durable on completion)."""
    scheme, _, path = uri.partition("://") if "://" in uri else ("file", "", uri)
    if scheme not in ("file", "direct"):
        return
    where = os.path.join(path, folder)
    for name in (*names, "."):
        fd = os.open(os.path.join(where, name), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save(
    uri: str,
    state: Any,
    kinds: Sequence[ArrayKind],
    *,
    step: int,
    epoch: int,
    compression: str,
    compression_level: int,
    rank: int,
    world_size: int,
    gather: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None,
    storage_options: dict[str, str] | None,
    fsync: bool = False,
) -> str:
    """Writes ``state`` as checkpoint ``global_epoch{epoch}_step{step}`` under ``uri``; returns its name. Every rank
    writes its own files; ``gather`` (every rank's entries, on every rank) joins them when ``world_size`` > 1, and
    rank 0 then writes the manifest. ``fsync`` flushes local files to the device before the manifest is written
    (DLIO's ``checkpoint.fsync``)."""
    if compression not in ("none", "zstd"):
        raise ConfigError(f"compression '{compression}': expected 'none' or 'zstd'")
    name = f"global_epoch{epoch}_step{step}"
    started = datetime.datetime.now().isoformat()
    arrays: list[tuple[ArrayKind, Any]] = []
    structure = io.BytesIO()
    _Pickler(structure, kinds, arrays).dump(state)
    level = compression_level if compression == "zstd" else None
    state_file, array_file = _files(rank)
    # With fsync, each local file starts its writeback part by part and is flushed, then its folder, as it completes.
    writer = _core.StateWriter(uri, f"{name}/{array_file}", rank, level, storage_options, fsync)
    for kind, array in arrays:
        flat = kind.memory(array)
        for at in range(0, flat.size, WRITE_CHUNK):
            writer.write(memoryview(flat[at : at + WRITE_CHUNK]))
    entries = [json.loads(writer.finish())]
    writer = _core.StateWriter(uri, f"{name}/{state_file}", rank, level, storage_options, fsync)
    writer.write(structure.getbuffer())
    entries.append(json.loads(writer.finish()))
    if world_size > 1:
        if gather is None:
            raise ConfigError(f"a checkpoint of {world_size} ranks needs a way to gather their files' entries")
        entries = gather(entries)
    if rank == 0:
        manifest = {
            "format": "dl-driver-checkpoint/1",
            "name": name,
            "epoch": epoch,
            "step": step,
            "world_size": world_size,
            "compression": compression,
            "compression_level": level,
            "started": started,
            "finished": datetime.datetime.now().isoformat(),
            "total_bytes": sum(e["bytes"] for e in entries),
            "stored_bytes": sum(e["stored_bytes"] for e in entries),
            "files": entries,
        }
        _core.checkpoint_write_manifest(uri, json.dumps(manifest), storage_options)
        if fsync:
            _fsync_local(uri, name, ("manifest.json",))
    return name


def load(
    uri: str, kinds: Sequence[ArrayKind], *, step: int | None, rank: int, storage_options: dict[str, str] | None
) -> Any:
    """This rank's state of the latest complete checkpoint under ``uri`` (or of ``step``), every file checked."""
    complete = [c["name"] for c in list_checkpoints(uri, **(storage_options or {})) if c["complete"]]
    if step is not None:
        complete = [n for n in complete if n.endswith(f"_step{step}")]
    if not complete:
        which = f" of step {step}" if step is not None else ""
        raise FileNotFoundError(f"{uri}: no complete checkpoint{which} (one has a manifest once its save finished)")
    name = complete[-1]
    manifest = json.loads(_core.checkpoint_read_manifest(uri, name, storage_options))
    compressed = manifest["compression"] == "zstd"
    entries = {e["name"]: e for e in manifest["files"] if e["rank"] == rank}
    state_file, array_file = _files(rank)
    if state_file not in entries or array_file not in entries:
        raise CheckpointError(f"{uri}/{name}: has no state of rank {rank} (saved by {manifest['world_size']} ranks)")

    def reader(file: str) -> _core.StateReader:
        return _core.StateReader(uri, f"{name}/{file}", json.dumps(entries[file]), compressed, storage_options)

    structure = bytearray(entries[state_file]["bytes"])
    state_reader = reader(state_file)
    _read_into(state_reader, memoryview(structure), f"{uri}/{name}/{state_file}")
    state_reader.finish()
    array_reader = reader(array_file)
    state = _Unpickler(io.BytesIO(structure), kinds, array_reader, f"{uri}/{name}").load()
    array_reader.finish()
    return state


class Schedule:
    """Where and when a training loop checkpoints its real state, from a workload's ``checkpoint`` section, with
    DLIO's rules (dlio.md §5): every ``steps_between_checkpoints`` global steps (1-based; the epoch a step falls in
    comes from the plan's steps per epoch), or after the epochs of ``checkpoint_after_epoch`` /
    ``epochs_between_checkpoints``; to ``checkpoint.checkpoint_folder`` (or ``uri``) with the workload's compression
    and storage options (``storage_options`` win)."""

    def __init__(
        self, cfg: Config, world_size: int, uri: str | None = None, storage_options: dict[str, str] | None = None
    ) -> None:
        plan = cfg.plan(world_size)
        checkpoint = plan["checkpoint"]
        self.trigger: str = checkpoint["trigger"]
        self.every_steps: int | None = checkpoint["every_steps"]
        self.steps_per_epoch = max(1, int(plan["train"]["steps_per_epoch"]))
        epochs = checkpoint["epochs"]
        self._epochs: tuple[int | None, int, int] = (epochs["first"], epochs["every"], epochs["count"])
        self.uri = uri or str(cfg.checkpoint.checkpoint_folder)
        self.compression = str(cfg.checkpoint.compression)
        self.level = int(cfg.checkpoint.compression_level)
        self.fsync = bool(cfg.checkpoint.fsync)
        given = {str(k): str(v) for k, v in cfg.storage.storage_options.to_dict().items()}
        self.options = {**given, **(storage_options or {})}

    def after_step(self, step: int) -> int | None:
        """The epoch of the checkpoint due after global step ``step``, or None."""
        if self.trigger != "step" or not self.every_steps or step % self.every_steps:
            return None
        return (step - 1) // self.steps_per_epoch + 1

    def after_epoch(self, epoch: int) -> bool:
        """Whether a checkpoint is due after (1-based) ``epoch``."""
        first, every, count = self._epochs
        if self.trigger != "epoch" or first is None or epoch < first:
            return False
        return (epoch - first) % every == 0 and (epoch - first) // every < count
