"""PyTorch input pipelines on dl-driver's reader (extra ``dl-driver[torch]``).

``DlioDataset(cfg)`` is an ``IterableDataset`` of one epoch's samples of a DLIO workload, read by the Rust pipeline
(the workload's storage, any backend), sharded as DLIO shards them: each rank reads its contiguous range of the
epoch's seeded global order, and a DataLoader worker reads every ``num_workers``-th batch of its rank's, so ranks x
workers are disjoint and together read the epoch. Samples come decoded as the files hold them
(:mod:`dl_driver.decode`: npy/npz arrays ``x`` and ``y``, tfrecord features, image pixels) as tensors that share the
pipeline's buffer (read-only: ``.clone()`` gives a writable one), or as one uint8 tensor of the sample's bytes with
``raw=True``. ``make_dataloader(cfg)`` is a ``DataLoader`` over it with DLIO's batch size, ``read_threads`` workers and
``prefetch_size``. ``state_dict()`` / ``load_state_dict()`` resume mid-epoch (per worker, as torchdata's
``StatefulDataLoader`` asks its dataset); ``set_epoch(e)`` moves to another epoch's order. Each worker process builds
its own runtime (fork, spawn and forkserver alike).

Checkpoints of real training state go through the core's streaming writer (multipart on object stores, optional
zstd, CRC-32C per file, the manifest written last): :func:`save_checkpoint` pickles the state's structure with its
tensors replaced by references and streams each tensor's bytes from its memory into one file per rank;
:func:`load_checkpoint` returns the same structure with every tensor restored bit for bit (bf16 included), the
latest complete checkpoint by default. :class:`CheckpointPlugin` saves on the workload's checkpoint schedule, from
``DlioPyTorchDataset(cfg, plugins=[...]).training_step_hook(step, model_state)`` or on its own.
"""

from __future__ import annotations

import datetime
import io
import json
import pickle
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from dl_driver import _core, launcher
from dl_driver._core import CheckpointError, ConfigError
from dl_driver.checkpoint import list_checkpoints
from dl_driver.config import Config, load_dlio_config
from dl_driver.decode import decode

try:
    import torch
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info
except ImportError as e:  # pragma: no cover - the extra is missing
    raise ImportError(f"dl_driver.torch needs PyTorch: pip install 'dl-driver[torch]' ({e})") from e

__all__ = [
    "CheckpointPlugin",
    "DlioDataset",
    "DlioPyTorchDataset",
    "load_checkpoint",
    "make_dataloader",
    "save_checkpoint",
]


def _tensor(array: np.ndarray[Any, Any]) -> torch.Tensor:
    """The array as a tensor sharing its memory (the pipeline's buffers are read-only; torch warns about that)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _config(config: Config | str | dict[str, Any]) -> Config:
    return config if isinstance(config, Config) else load_dlio_config(config)


def _placement(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """The given rank and world size, else torch.distributed's when initialized, else the launcher's."""
    if rank is None and world_size is None and torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    size = launcher.world_size(world_size)
    return launcher.rank(rank, size), size


class DlioDataset(IterableDataset[Any]):
    """One epoch of ``split`` ('train' or 'valid') of a DLIO workload, sample by sample (see the module's doc)."""

    def __init__(
        self,
        config: Config | str | dict[str, Any],
        split: str = "train",
        *,
        raw: bool = False,
        epoch: int = 1,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        cfg = _config(config)
        if split not in ("train", "valid"):
            raise ConfigError(f"split '{split}': expected 'train' or 'valid'")
        self.split = split
        self.raw = raw
        self.rank, self.world_size = _placement(rank, world_size)
        # Only plain values: the dataset is pickled to spawn and forkserver workers.
        self._json = cfg.to_json(redact=False)
        self._format = str(cfg.dataset.format)
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
            data = memoryview(batch.data)
            skip, self._skip = (self._skip, 0) if batch.step == self._step else (0, 0)
            self._step = batch.step
            for i, ((start, end), sample) in enumerate(zip(batch.spans, batch.samples, strict=True)):
                if i < skip:
                    continue
                view = data[start:end]
                if self.raw:
                    item: Any = _tensor(np.frombuffer(view, dtype=np.uint8))
                else:
                    arrays = decode(self._format, view, f"sample {sample} ({self.split}, epoch {self.epoch})")
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
    """A ``DataLoader`` over :class:`DlioDataset` with DLIO's ``reader.batch_size``, ``reader.read_threads`` workers
    and ``reader.prefetch_size`` (prefetch per worker) unless ``kwargs`` say otherwise; ``kwargs`` go to DataLoader."""
    cfg = _config(config)
    dataset = DlioDataset(cfg, split, raw=raw, epoch=epoch, rank=rank, world_size=world_size)
    reader = cfg.reader
    options: dict[str, Any] = {"batch_size": int(reader.batch_size), "num_workers": int(reader.read_threads)}
    options.update(kwargs)
    if options["num_workers"] > 0 and "prefetch_factor" not in kwargs:
        options["prefetch_factor"] = max(1, int(reader.prefetch_size))
    return DataLoader(dataset, **options)


#: Bytes of a tensor handed to the writer at a time (bounds the memory a save adds to the state's own).
_WRITE_CHUNK = 8 << 20
#: What a checkpoint's pickled structure may name besides our tensor references.
_ALLOWED = {("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex")}


def _files(rank: int) -> tuple[str, str]:
    return f"rank{rank}-state.pkl", f"rank{rank}-tensors.bin"


class _Pickler(pickle.Pickler):
    """Pickles a state's structure; each tensor becomes a reference (index, dtype, shape) and joins ``tensors``."""

    def __init__(self, file: io.BytesIO, tensors: list[torch.Tensor]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.tensors = tensors

    def persistent_id(self, obj: Any) -> Any:
        if not isinstance(obj, torch.Tensor):
            return None
        if obj.is_quantized or obj.is_sparse or obj.layout != torch.strided:
            raise CheckpointError(f"a {obj.layout} {obj.dtype} tensor: only dense tensors are checkpointed")
        self.tensors.append(obj.detach())
        return ("tensor", len(self.tensors) - 1, str(obj.dtype).removeprefix("torch."), tuple(obj.shape))


class _Unpickler(pickle.Unpickler):
    """Rebuilds a state: each tensor reference is filled from the tensor file, in the order they were saved."""

    def __init__(self, file: io.BytesIO, reader: _core.StateReader, where: str) -> None:
        super().__init__(file)
        self.reader, self.where, self.loaded = reader, where, 0

    def persistent_load(self, pid: Any) -> Any:
        kind, index, dtype, shape = pid
        if kind != "tensor" or index != self.loaded or not hasattr(torch, dtype):
            raise CheckpointError(f"{self.where}: an unexpected tensor reference {pid!r}")
        tensor = torch.empty(shape, dtype=getattr(torch, dtype))
        if tensor.numel():
            memory: Any = tensor.reshape(-1).view(torch.uint8).numpy()  # a view of the tensor's memory
            self.reader.readinto(memoryview(memory))
        self.loaded += 1
        return tensor

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise CheckpointError(f"{self.where}: names {module}.{name}, which a checkpoint may not load")
        return super().find_class(module, name)


def save_checkpoint(
    uri: str,
    state: Any,
    *,
    step: int,
    epoch: int = 1,
    compression: str = "none",
    compression_level: int = 3,
    rank: int | None = None,
    world_size: int | None = None,
    storage_options: dict[str, str] | None = None,
) -> str:
    """Writes ``state`` (e.g. ``{"model": model.state_dict(), "optimizer": opt.state_dict()}``) as checkpoint
    ``global_epoch{epoch}_step{step}`` under ``uri``; returns its name. Every rank writes its own files; with
    several ranks (torch.distributed initialized) rank 0 writes the manifest once all are written. Until the manifest
    is there the checkpoint is incomplete: a save that dies leaves nothing :func:`load_checkpoint` would pick.
    ``storage_options`` are ``dl_driver.storage.open``'s."""
    options = storage_options
    if compression not in ("none", "zstd"):
        raise ConfigError(f"compression '{compression}': expected 'none' or 'zstd'")
    rank, size = _placement(rank, world_size)
    name = f"global_epoch{epoch}_step{step}"
    started = datetime.datetime.now().isoformat()
    tensors: list[torch.Tensor] = []
    structure = io.BytesIO()
    _Pickler(structure, tensors).dump(state)
    level = compression_level if compression == "zstd" else None
    state_file, tensor_file = _files(rank)
    writer = _core.StateWriter(uri, f"{name}/{tensor_file}", rank, level, options)
    for tensor in tensors:
        flat: Any = tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy()  # the tensor's memory
        for at in range(0, flat.size, _WRITE_CHUNK):
            writer.write(memoryview(flat[at : at + _WRITE_CHUNK]))
    entries = [json.loads(writer.finish())]
    writer = _core.StateWriter(uri, f"{name}/{state_file}", rank, level, options)
    writer.write(structure.getbuffer())
    entries.append(json.loads(writer.finish()))
    if size > 1:
        gathered: list[Any] = [None] * size
        torch.distributed.all_gather_object(gathered, entries)
        entries = [e for rank_entries in gathered for e in rank_entries]
    if rank == 0:
        manifest = {
            "format": "dl-driver-checkpoint/1",
            "name": name,
            "epoch": epoch,
            "step": step,
            "world_size": size,
            "compression": compression,
            "compression_level": level,
            "started": started,
            "finished": datetime.datetime.now().isoformat(),
            "total_bytes": sum(e["bytes"] for e in entries),
            "stored_bytes": sum(e["stored_bytes"] for e in entries),
            "files": entries,
        }
        _core.checkpoint_write_manifest(uri, json.dumps(manifest), options)
    if size > 1:
        torch.distributed.barrier()
    return name


def load_checkpoint(
    uri: str, step: int | None = None, *, rank: int | None = None, storage_options: dict[str, str] | None = None
) -> Any:
    """The state saved by :func:`save_checkpoint` under ``uri``: the latest complete checkpoint, or the one of
    ``step``; this rank's part. Every file's CRC-32C and size are checked; a mismatch raises ``CheckpointError``."""
    rank, _ = _placement(rank, None)
    options = storage_options or None
    complete = [c["name"] for c in list_checkpoints(uri, **(options or {})) if c["complete"]]
    if step is not None:
        complete = [n for n in complete if n.endswith(f"_step{step}")]
    if not complete:
        which = f" of step {step}" if step is not None else ""
        raise FileNotFoundError(f"{uri}: no complete checkpoint{which} (one has a manifest once its save finished)")
    name = complete[-1]
    manifest = json.loads(_core.checkpoint_read_manifest(uri, name, options))
    compressed = manifest["compression"] == "zstd"
    entries = {e["name"]: e for e in manifest["files"] if e["rank"] == rank}
    state_file, tensor_file = _files(rank)
    if state_file not in entries or tensor_file not in entries:
        raise CheckpointError(f"{uri}/{name}: has no state of rank {rank} (saved by {manifest['world_size']} ranks)")

    def reader(file: str) -> _core.StateReader:
        return _core.StateReader(uri, f"{name}/{file}", json.dumps(entries[file]), compressed, options)

    structure = bytearray(entries[state_file]["bytes"])
    state_reader = reader(state_file)
    state_reader.readinto(structure)
    state_reader.finish()
    tensor_reader = reader(tensor_file)
    state = _Unpickler(io.BytesIO(structure), tensor_reader, f"{uri}/{name}").load()
    tensor_reader.finish()
    return state


class CheckpointPlugin:
    """Saves real training state on a workload's checkpoint schedule, as DLIO's checkpoint rules say (dlio.md §5):
    ``after_step(step, model_state)`` every ``checkpoint.steps_between_checkpoints`` global steps (1-based; the epoch
    in the name is the one the step falls in, from the plan's steps per epoch), ``after_epoch(epoch, model_state)``
    on the epoch schedule (``checkpoint_after_epoch``, ``epochs_between_checkpoints``), to
    ``checkpoint.checkpoint_folder`` with the workload's compression and storage options. Each returns the
    checkpoint's name when it saved, else None."""

    def __init__(
        self,
        config: Config | str | dict[str, Any],
        *,
        uri: str | None = None,
        storage_options: dict[str, str] | None = None,
        world_size: int | None = None,
    ) -> None:
        cfg = _config(config)
        plan = cfg.plan(_placement(None, world_size)[1])
        schedule = plan["checkpoint"]
        self.trigger: str = schedule["trigger"]
        self.every_steps: int | None = schedule["every_steps"]
        self.steps_per_epoch = max(1, int(plan["train"]["steps_per_epoch"]))
        epochs = schedule["epochs"]
        self._epochs: tuple[int | None, int, int] = (epochs["first"], epochs["every"], epochs["count"])
        self.uri = uri or str(cfg.checkpoint.checkpoint_folder)
        self.compression = str(cfg.checkpoint.compression)
        self.level = int(cfg.checkpoint.compression_level)
        given = {str(k): str(v) for k, v in cfg.storage.storage_options.to_dict().items()}
        self.options = {**given, **(storage_options or {})}

    def _save(self, state: Any, step: int, epoch: int) -> str:
        return save_checkpoint(
            self.uri,
            state,
            step=step,
            epoch=epoch,
            compression=self.compression,
            compression_level=self.level,
            storage_options=self.options,
        )

    def after_step(self, step: int, model_state: Any) -> str | None:
        if self.trigger != "step" or not self.every_steps or step % self.every_steps:
            return None
        return self._save(model_state, step, (step - 1) // self.steps_per_epoch + 1)

    def after_epoch(self, epoch: int, model_state: Any) -> str | None:
        first, every, count = self._epochs
        if self.trigger != "epoch" or first is None or epoch < first or (epoch - first) % every:
            return None
        if (epoch - first) // every >= count:
            return None
        return self._save(model_state, epoch * self.steps_per_epoch, epoch)


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
