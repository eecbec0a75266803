"""PyTorch input pipelines on dl-driver's reader (extra ``dl-driver[torch]``).

``DlioDataset(cfg)`` is an ``IterableDataset`` of one epoch's samples of a DLIO workload (or, with ``batch_size=N``,
of its batches), read by the Rust pipeline (the workload's storage, any backend; ``reader.read_threads`` reads in
flight and ``reader.prefetch_size`` batches ready ahead, in this process, the GIL released), sharded as DLIO shards
them: each rank reads its contiguous range of the epoch's seeded global order, and a DataLoader worker reads every
``num_workers``-th batch of its rank's, so ranks x workers are disjoint and together read the epoch. Samples come
decoded as the files hold them (:mod:`dl_driver.decode`: npy/npz arrays ``x`` and ``y``, tfrecord features, image
pixels) as tensors that share the pipeline's buffer (read-only: ``.clone()`` gives a writable one), or as one uint8
tensor of the sample's bytes with ``raw=True``; a batch's tensors are views of the batch's buffer too when its samples
have one layout (npy, stored npz), else stacked copies. ``make_dataloader(cfg)`` is a ``DataLoader`` of those batches
with DLIO's ``batch_size``: its reads run in the pipeline's threads, so it starts no worker processes unless
``num_workers`` asks (each worker then runs a pipeline over its share and hands its batches over through shared
memory, a copy). ``state_dict()`` / ``load_state_dict()`` resume mid-epoch (per worker, as torchdata's
``StatefulDataLoader`` asks its dataset); ``set_epoch(e)`` moves to another epoch's order. Each worker process builds
its own runtime (fork, spawn and forkserver alike).

Checkpoints of real training state go through the core's streaming writer (multipart on object stores, optional
zstd, CRC-32C per file, the manifest written last): :func:`save_checkpoint` pickles the state's structure with its
tensors replaced by references and streams each tensor's bytes from its memory into one file per rank;
:func:`load_checkpoint` returns the same structure with every tensor restored bit for bit (bf16 included), the
latest complete checkpoint by default. :class:`CheckpointPlugin` saves on the workload's checkpoint schedule, from
``DlioPyTorchDataset(cfg, plugins=[...]).training_step_hook(step, model_state)`` or on its own.

``StorageWriter(uri)`` / ``StorageReader(uri)`` are ``torch.distributed.checkpoint``'s file-system writer and reader
over dl-driver's stores, so ``dcp.save``, ``dcp.async_save`` and ``dcp.load`` work on ``file://``, ``direct://``,
``s3://`` and ``az://``: each file streams out as a multipart upload (visible only once complete) and is read back
with ranged reads.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from dl_driver import _core, launcher, state
from dl_driver import storage as dl_storage
from dl_driver._core import CheckpointError, ConfigError
from dl_driver.config import Config, as_config
from dl_driver.decode import batch_samples, decode

try:
    import torch
    from torch.distributed.checkpoint.filesystem import FileSystemBase, FileSystemReader, FileSystemWriter
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info
except ImportError as e:  # pragma: no cover - the extra is missing
    raise ImportError(f"dl_driver.torch needs PyTorch: pip install 'dl-driver[torch]' ({e})") from e

__all__ = [
    "CheckpointPlugin",
    "DlioDataset",
    "DlioPyTorchDataset",
    "StorageReader",
    "StorageWriter",
    "load_checkpoint",
    "make_dataloader",
    "save_checkpoint",
]


def _tensor(array: np.ndarray[Any, Any]) -> torch.Tensor:
    """The array as a tensor sharing its memory (the pipeline's buffers are read-only; torch warns about that)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _placement(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """The given rank and world size, else torch.distributed's when initialized, else the launcher's."""
    if rank is None and world_size is None and torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    size = launcher.world_size(world_size)
    return launcher.rank(rank, size), size


class DlioDataset(IterableDataset[Any]):
    """One epoch of ``split`` ('train' or 'valid') of a DLIO workload, sample by sample, or batch by batch with
    ``batch_size`` (which replaces the workload's batch size for the split; see the module's doc)."""

    def __init__(
        self,
        config: Config | str | dict[str, Any],
        split: str = "train",
        *,
        raw: bool = False,
        epoch: int = 1,
        rank: int | None = None,
        world_size: int | None = None,
        batch_size: int | None = None,
    ) -> None:
        cfg = as_config(config)
        if split not in ("train", "valid"):
            raise ConfigError(f"split '{split}': expected 'train' or 'valid'")
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ConfigError(f"batch_size {batch_size!r}: expected an integer >= 1, or None for single samples")
        self.split = split
        self.raw = raw
        self.batch_size = batch_size
        self.rank, self.world_size = _placement(rank, world_size)
        # Only plain values: the dataset is pickled to spawn and forkserver workers.
        document = json.loads(cfg.to_json(redact=False))
        if batch_size is not None:
            document["reader"]["batch_size" if split == "train" else "batch_size_eval"] = batch_size
        self._json = json.dumps(document)
        self._format = str(cfg.dataset.format)
        self._spf = int(cfg.dataset.num_samples_per_file)
        self.epoch = epoch
        # Where the next iteration starts: a step of this worker's share and samples of it already yielded.
        self._step = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Reads ``epoch``'s order from now on (DLIO's seeded shuffle changes with the epoch)."""
        if epoch < 1:
            raise ConfigError(f"epoch {epoch}: expected an epoch >= 1")
        self.epoch, self._step, self._skip = epoch, 0, 0

    def state_dict(self) -> dict[str, int]:
        """Where this iterator is: the epoch, the next step (of this worker's share) and the samples of it already
        yielded. A DataLoader's workers each hold their own (torchdata's ``StatefulDataLoader`` collects them)."""
        return {"epoch": self.epoch, "step": self._step, "sample": self._skip}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resumes where :meth:`state_dict` was taken: the next iteration yields exactly the rest of the epoch."""
        try:
            epoch, step, sample = int(state["epoch"]), int(state["step"]), int(state["sample"])
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"DlioDataset state {state!r}: expected integers epoch, step and sample ({e})") from e
        if epoch < 1 or step < 0 or sample < 0:
            raise ConfigError(f"DlioDataset state {state!r}: expected epoch >= 1, step >= 0, sample >= 0")
        self.epoch, self._step, self._skip = epoch, step, sample

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        batches = _core.Batches(
            self._json, self.split, self.epoch, self.rank, self.world_size, worker, workers, self._step
        )
        for batch in batches:
            if self.batch_size is not None:
                out = batch_samples(self._format, batch, f"{self.split}, epoch {self.epoch}", self.raw, self._spf)
                self._step, self._skip = batch.step + workers, 0
                if self.raw:
                    yield [_tensor(np.frombuffer(b, dtype=np.uint8)) for b in out]
                else:
                    yield {name: _tensor(a) if a.dtype != object else a for name, a in out.items()}
                continue
            data, rows = memoryview(batch.data), batch.arrays  # (each read of a batch's list builds it anew)
            skip, self._skip = (self._skip, 0) if batch.step == self._step else (0, 0)
            self._step = batch.step
            for i, ((start, end), sample) in enumerate(zip(batch.spans, batch.samples, strict=True)):
                if i < skip:
                    continue
                view = data[start:end]
                if self.raw:
                    item: Any = _tensor(np.frombuffer(view, dtype=np.uint8))
                else:
                    where = f"sample {sample} ({self.split}, epoch {self.epoch})"
                    arrays = decode(self._format, view, where, rows=rows[i], index=sample % self._spf)
                    item = {name: _tensor(a) if a.dtype != object else a for name, a in arrays.items()}
                self._skip = i + 1
                yield item
            # The batch is done: the next state starts at this worker's following step.
            self._step, self._skip = batch.step + workers, 0
        self._step, self._skip = 0, 0


def make_dataloader(
    config: Config | str | dict[str, Any],
    split: str = "train",
    *,
    raw: bool = False,
    epoch: int = 1,
    rank: int | None = None,
    world_size: int | None = None,
    **kwargs: Any,
) -> DataLoader[Any]:
    """A ``DataLoader`` of batches of :class:`DlioDataset` with DLIO's reader settings: ``reader.batch_size`` samples
    per batch (``batch_size=N`` another size, ``batch_size=None`` single samples), read by the Rust pipeline with
    ``reader.read_threads`` reads in flight and ``reader.prefetch_size`` batches ahead, in this process. Worker
    processes only with ``num_workers`` > 0 (their ``prefetch_factor`` defaults to ``reader.prefetch_size``); other
    ``kwargs`` go to DataLoader (a ``collate_fn`` receives whole batches, unless ``batch_size=None``). Batches are
    always full, as DLIO's (``drop_last=True`` is what it does; ``drop_last=False`` is refused)."""
    cfg = as_config(config)
    workload = int(cfg.reader.batch_size if split == "train" else cfg.reader.batch_size_eval)
    batch_size = kwargs.pop("batch_size", workload)
    if kwargs.pop("drop_last", True) is not True:
        raise ConfigError("make_dataloader: drop_last=False: DLIO's epochs are whole batches (the rest is dropped)")
    if kwargs.get("prefetch_factor") is not None and not kwargs.get("num_workers"):
        raise ConfigError(
            "make_dataloader: prefetch_factor applies to worker processes (num_workers > 0); the batches read ahead "
            "in this process are the workload's reader.prefetch_size"
        )
    dataset = DlioDataset(cfg, split, raw=raw, epoch=epoch, rank=rank, world_size=world_size, batch_size=batch_size)
    options: dict[str, Any] = {"batch_size": None, "num_workers": 0}
    options.update(kwargs)
    if options["num_workers"] > 0 and "prefetch_factor" not in kwargs:
        options["prefetch_factor"] = max(1, int(cfg.reader.prefetch_size))
    return DataLoader(dataset, **options)


class TorchTensors:
    """torch tensors in a checkpoint (dense ones, any dtype; a tensor on an accelerator is copied to the CPU)."""

    name = "tensor"

    def matches(self, obj: Any) -> bool:
        return isinstance(obj, torch.Tensor)

    def describe(self, obj: Any) -> tuple[str, tuple[int, ...]]:
        if obj.is_quantized or obj.is_sparse or obj.layout != torch.strided:
            raise CheckpointError(f"a {obj.layout} {obj.dtype} tensor: only dense tensors are checkpointed")
        return str(obj.dtype).removeprefix("torch."), tuple(obj.shape)

    def memory(self, obj: Any) -> Any:
        return obj.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()

    def make(self, dtype: str, shape: tuple[int, ...]) -> tuple[Any, Any]:
        found = getattr(torch, dtype, None)
        if not isinstance(found, torch.dtype):
            raise TypeError(f"torch has no dtype '{dtype}'")
        tensor = torch.empty(shape, dtype=found)
        return tensor, tensor.reshape(-1).view(torch.uint8).numpy()


#: What a PyTorch checkpoint holds: tensors, and numpy arrays beside them.
_KINDS = (TorchTensors(), state.NumpyArrays())


def _gather(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, entries)
    return [e for rank_entries in gathered for e in rank_entries]


def save_checkpoint(
    uri: str,
    model_state: Any,
    *,
    step: int,
    epoch: int = 1,
    compression: str = "none",
    compression_level: int = 3,
    rank: int | None = None,
    world_size: int | None = None,
    storage_options: dict[str, str] | None = None,
    fsync: bool = False,
) -> str:
    """Writes ``model_state`` (e.g. ``{"model": model.state_dict(), "optimizer": opt.state_dict()}``) as checkpoint
    ``global_epoch{epoch}_step{step}`` under ``uri``; returns its name. Every rank writes its own files; with
    several ranks (torch.distributed initialized) rank 0 writes the manifest once all are written. Until the manifest
    is there the checkpoint is incomplete: a save that dies leaves nothing :func:`load_checkpoint` would pick.
    ``storage_options`` are ``dl_driver.storage.open``'s; ``fsync`` flushes local files to the device (as
    ``torch.save`` + ``os.fsync`` would) before the manifest."""
    rank, size = _placement(rank, world_size)
    name = state.save(
        uri,
        model_state,
        _KINDS,
        step=step,
        epoch=epoch,
        compression=compression,
        compression_level=compression_level,
        rank=rank,
        world_size=size,
        gather=_gather,
        storage_options=storage_options,
        fsync=fsync,
    )
    if size > 1:
        torch.distributed.barrier()
    return name


def load_checkpoint(
    uri: str, step: int | None = None, *, rank: int | None = None, storage_options: dict[str, str] | None = None
) -> Any:
    """The state saved by :func:`save_checkpoint` under ``uri``: the latest complete checkpoint, or the one of
    ``step``; this rank's part. Every file's CRC-32C and size are checked; a mismatch raises ``CheckpointError``."""
    return state.load(uri, _KINDS, step=step, rank=_placement(rank, None)[0], storage_options=storage_options)


class CheckpointPlugin:
    """Saves real training state on a workload's checkpoint schedule (:class:`dl_driver.state.Schedule`):
    ``after_step(step, model_state)`` every ``steps_between_checkpoints`` global steps, ``after_epoch(epoch,
    model_state)`` on the epoch schedule. Each returns the checkpoint's name when it saved, else None."""

    def __init__(
        self,
        config: Config | str | dict[str, Any],
        *,
        uri: str | None = None,
        storage_options: dict[str, str] | None = None,
        world_size: int | None = None,
    ) -> None:
        self.schedule = state.Schedule(as_config(config), _placement(None, world_size)[1], uri, storage_options)

    def _save(self, model_state: Any, step: int, epoch: int) -> str:
        s = self.schedule
        return save_checkpoint(
            s.uri,
            model_state,
            step=step,
            epoch=epoch,
            compression=s.compression,
            compression_level=s.level,
            storage_options=s.options,
            fsync=s.fsync,
        )

    def after_step(self, step: int, model_state: Any) -> str | None:
        epoch = self.schedule.after_step(step)
        return None if epoch is None else self._save(model_state, step, epoch)

    def after_epoch(self, epoch: int, model_state: Any) -> str | None:
        if not self.schedule.after_epoch(epoch):
            return None
        return self._save(model_state, epoch * self.schedule.steps_per_epoch, epoch)


class StepPlugin(Protocol):
    def after_step(self, step: int, model_state: Any) -> Any: ...


class DlioPyTorchDataset(DlioDataset):
    """:class:`DlioDataset` with plugins called from the training loop: ``training_step_hook(step, model_state)``
    calls each plugin's ``after_step(step, model_state)`` (a :class:`CheckpointPlugin` saves on its schedule)."""

    def __init__(
        self,
        config: Config | str | dict[str, Any],
        split: str = "train",
        *,
        plugins: Sequence[StepPlugin] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(config, split, **kwargs)
        self.plugins = list(plugins)

    def training_step_hook(self, step: int, model_state: Any) -> list[Any]:
        return [plugin.after_step(step, model_state) for plugin in self.plugins]


#: Bytes a DCP stream gathers before handing them to the writer, and reads ahead.
_STREAM_CHUNK = 8 << 20


class _WriteStream(io.RawIOBase):
    """A DCP output file: gathered into chunks and streamed through a ``_core.StateWriter`` (a multipart upload);
    the file appears when the stream is finished, and not at all when it is discarded."""

    def __init__(self, writer: _core.StateWriter) -> None:
        self._writer, self._pending, self._written = writer, bytearray(), 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._written + len(self._pending)

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        if self._pending:
            room = _STREAM_CHUNK - len(self._pending)
            self._pending += view[:room]
            view = view[room:]
            if len(self._pending) >= _STREAM_CHUNK:
                self._hand(self._pending)
                self._pending = bytearray()
        # Large writes (a tensor's storage) go to the writer in chunks from their own memory, not gathered first.
        while len(view) >= _STREAM_CHUNK:
            self._hand(view[:_STREAM_CHUNK])
            view = view[_STREAM_CHUNK:]
        self._pending += view
        return size

    def _hand(self, chunk: Any) -> None:
        self._writer.write(chunk)
        self._written += len(chunk)

    def finish(self) -> None:
        if self._pending:
            self._writer.write(self._pending)
        self._writer.finish()


class _ReadStream(dl_storage.SeekableReader):
    """A DCP input file: seekable, read through ranged reads of ``_STREAM_CHUNK`` bytes."""

    def __init__(self, store: dl_storage.Store, key: str) -> None:
        super().__init__(store.head(key).size)
        self._store, self._key = store, key
        self._window_start, self._window = 0, memoryview(b"")

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        done = 0
        while done < len(target) and self._at < self._size:
            inside = self._at - self._window_start
            if not 0 <= inside < len(self._window):
                rest = min(len(target) - done, self._size - self._at)
                if rest >= _STREAM_CHUNK:  # a tensor's storage: straight into torch's memory
                    self._store.readinto(self._key, self._at, target[done : done + rest])
                    done += rest
                    self._at += rest
                    continue
                end = min(self._size, self._at + _STREAM_CHUNK)
                self._window = memoryview(self._store.get_range(self._key, self._at, end))
                self._window_start, inside = self._at, 0
            n = min(len(target) - done, len(self._window) - inside)
            target[done : done + n] = self._window[inside : inside + n]
            done += n
            self._at += n
        return done


class _StoreFileSystem(FileSystemBase):
    """DCP's file-system interface over dl-driver's stores: a path is a location URI and a file name in it."""

    def __init__(self, storage_options: dict[str, str] | None, fsync: bool = False) -> None:
        self._options = dict(storage_options or {})
        self._stores: dict[str, dl_storage.Store] = {}
        self._fsync = fsync

    def _split(self, path: str | os.PathLike[str]) -> tuple[str, str]:
        parent, _, name = str(path).rstrip("/").rpartition("/")
        return parent, name

    def _store(self, parent: str) -> dl_storage.Store:
        if parent not in self._stores:
            self._stores[parent] = dl_storage.open(parent, **self._options)
        return self._stores[parent]

    @contextlib.contextmanager
    def create_stream(self, path: str | os.PathLike[str], mode: str) -> Iterator[io.IOBase]:
        parent, name = self._split(path)
        if mode == "wb":
            stream = _WriteStream(self._writer(parent, name))
            yield stream  # an exception here drops the writer, which discards the upload
            stream.finish()
        elif mode == "rb":
            yield _ReadStream(self._store(parent), name)
        else:
            raise ConfigError(f"{path}: DCP asked for mode '{mode}' (dl-driver's stores write 'wb' and read 'rb')")

    def _writer(self, parent: str, name: str) -> _core.StateWriter:
        """A file's writer; with ``fsync``, a local file is on the device before it appears under its name."""
        return _core.StateWriter(parent, name, 0, None, self._options or None, self._fsync)

    def concat_path(self, path: str | os.PathLike[str], suffix: str) -> str:
        return f"{str(path).rstrip('/')}/{suffix}"

    def init_path(self, path: str | os.PathLike[str]) -> str:
        return str(path)

    def rename(self, path: str | os.PathLike[str], new_path: str | os.PathLike[str]) -> None:
        (parent, name), (new_parent, new_name) = self._split(path), self._split(new_path)
        store = self._store(parent)
        data = store.get(name)  # before the writer: a failed read leaves no upload behind
        writer = self._writer(new_parent, new_name)
        writer.write(data)
        writer.finish()
        store.delete(name)

    def mkdir(self, path: str | os.PathLike[str]) -> None:
        """Nothing to make: files appear under their location as they are written."""

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return str(checkpoint_id).split("://", 1)[0] in ("file", "direct", "s3", "az", "memory")

    def exists(self, path: str | os.PathLike[str]) -> bool:
        parent, name = self._split(path)
        return self._store(parent).exists(name)

    def rm_file(self, path: str | os.PathLike[str]) -> None:
        parent, name = self._split(path)
        self._store(parent).delete(name)


class StorageWriter(FileSystemWriter):
    """``dcp.save(state_dict, storage_writer=StorageWriter(uri))`` (and ``dcp.async_save``) into any dl-driver
    location; ``storage_options`` are ``dl_driver.storage.open``'s, other arguments FileSystemWriter's.
    ``sync_files`` (on by default, as FileSystemWriter's) puts each local file on the device before it appears under
    its name, ``.metadata`` last; an object store has a file once its upload completes."""

    def __init__(
        self, uri: str, *, storage_options: dict[str, str] | None = None, sync_files: bool = True, **kwargs: Any
    ) -> None:
        # DCP's own sync calls os.fsync(stream.fileno()), which our streams lack (it warns): they flush themselves.
        super().__init__(uri, sync_files=False, **kwargs)
        self.fs: Any = _StoreFileSystem(storage_options, fsync=sync_files)
        self.path = self.fs.init_path(uri)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return _StoreFileSystem.validate_checkpoint_id(checkpoint_id)


class StorageReader(FileSystemReader):
    """``dcp.load(state_dict, storage_reader=StorageReader(uri))`` from any dl-driver location."""

    def __init__(self, uri: str, *, storage_options: dict[str, str] | None = None) -> None:
        super().__init__(uri)
        self.fs: Any = _StoreFileSystem(storage_options)
        self.path = self.fs.init_path(uri)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return _StoreFileSystem.validate_checkpoint_id(checkpoint_id)
