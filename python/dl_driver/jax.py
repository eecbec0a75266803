"""JAX input and pytree checkpoints on dl-driver (extra ``dl-driver[jax]``).

``make_iterator(cfg)`` iterates one epoch's batches of a DLIO workload for one shard (by default
``jax.process_index()`` of ``jax.process_count()``, the rank's contiguous DLIO shard), as dicts of numpy arrays (the
samples' decoded arrays stacked; ``raw=True``: a list of each sample's bytes), optionally put on a device
(``device_put=True`` or a ``jax.Device``/``Sharding``). ``get_state()`` gives JSON bytes and ``set_state()`` takes
them: a new iterator resumes at the identical next batch (Grain's protocol, saved with the training state).

``save_pytree(uri, tree, step=)`` / ``load_pytree(uri, step=None)`` checkpoint a pytree of arrays (dtypes kept,
bfloat16 included) through the same writer as the other frameworks' checkpoints (multipart, zstd, CRC-32C,
manifest last). Containers are dicts, lists, tuples and None; leaves come back as ``jax.Array``s (``numpy=True``:
numpy arrays). Custom pytree node classes are not saved.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np

from dl_driver import _core, state
from dl_driver._core import ConfigError
from dl_driver.config import Config, as_config
from dl_driver.decode import batch_samples

try:
    import jax
    import jax.numpy as jnp
except ImportError as e:  # pragma: no cover - the extra is missing
    raise ImportError(f"dl_driver.jax needs JAX: pip install 'dl-driver[jax]' ({e})") from e

__all__ = ["DlioIterator", "load_pytree", "make_iterator", "save_pytree"]


class DlioIterator:
    """One shard's batches of an epoch (see the module's doc); ``get_state()`` / ``set_state()`` resume exactly."""

    def __init__(
        self,
        config: Config | str | dict[str, Any],
        split: str,
        epoch: int,
        shard_index: int,
        shard_count: int,
        raw: bool,
        device_put: Any,
    ) -> None:
        if split not in ("train", "valid"):
            raise ConfigError(f"split '{split}': expected 'train' or 'valid'")
        if not 0 <= shard_index < shard_count:
            raise ConfigError(f"shard {shard_index} of {shard_count}: expected 0 <= shard_index < shard_count")
        cfg = as_config(config)
        self._json, self._format = cfg.to_json(redact=False), str(cfg.dataset.format)
        self._spf = int(cfg.dataset.num_samples_per_file)
        self.split, self.raw, self.device_put = split, raw, device_put
        self.shard_index, self.shard_count = shard_index, shard_count
        self.epoch, self.step = epoch, 0
        self._batches: Any = None

    def get_state(self) -> bytes:
        """Where the next batch comes from, as JSON bytes."""
        return json.dumps(
            {"epoch": self.epoch, "step": self.step, "shard": [self.shard_index, self.shard_count]}
        ).encode()

    def set_state(self, value: bytes) -> None:
        """Resumes at the batch :meth:`get_state` named (the shard must be the same)."""
        try:
            saved = json.loads(value)
            epoch, step, shard = int(saved["epoch"]), int(saved["step"]), list(saved["shard"])
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"iterator state {value!r}: expected get_state()'s JSON ({e})") from e
        if shard != [self.shard_index, self.shard_count]:
            raise ConfigError(
                f"iterator state of shard {shard}: this iterator reads shard {[self.shard_index, self.shard_count]}"
            )
        self.epoch, self.step, self._batches = epoch, step, None

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._batches is None:
            self._batches = _core.Batches(
                self._json, self.split, self.epoch, self.shard_index, self.shard_count, 0, 1, self.step
            )
        try:
            batch = next(self._batches)
        except StopIteration:
            self._batches = None
            raise
        self.step = batch.step + 1
        out = batch_samples(self._format, batch, f"{self.split}, epoch {self.epoch}", self.raw, self._spf)
        if self.raw or self.device_put is False or self.device_put is None:
            return out
        target = None if self.device_put is True else self.device_put
        return {name: jax.device_put(a, target) for name, a in out.items()}


def make_iterator(
    config: Config | str | dict[str, Any],
    split: str = "train",
    *,
    shard_index: int | None = None,
    shard_count: int | None = None,
    epoch: int = 1,
    raw: bool = False,
    device_put: Any = False,
) -> DlioIterator:
    """An iterator over ``split``'s batches of epoch ``epoch`` for one shard (see the module's doc)."""
    index = jax.process_index() if shard_index is None else shard_index
    count = jax.process_count() if shard_count is None else shard_count
    return DlioIterator(config, split, epoch, index, count, raw, device_put)


def save_pytree(
    uri: str,
    tree: Any,
    *,
    step: int,
    epoch: int = 1,
    compression: str = "none",
    compression_level: int = 3,
    storage_options: dict[str, str] | None = None,
) -> str:
    """Writes ``tree``'s arrays and structure as checkpoint ``global_epoch{epoch}_step{step}`` under ``uri`` (this
    process's part: rank ``jax.process_index()``); returns its name."""
    if jax.process_count() > 1:
        raise ConfigError("save_pytree saves from one process; several JAX processes are not supported yet")
    arrays = jax.tree_util.tree_map(np.asarray, tree)
    return state.save(
        uri,
        arrays,
        (state.NumpyArrays(),),
        step=step,
        epoch=epoch,
        compression=compression,
        compression_level=compression_level,
        rank=0,
        world_size=1,
        gather=None,
        storage_options=storage_options,
    )


def load_pytree(
    uri: str, step: int | None = None, *, numpy: bool = False, storage_options: dict[str, str] | None = None
) -> Any:
    """The pytree :func:`save_pytree` wrote (the latest complete checkpoint, or ``step``'s), its leaves as
    ``jax.Array`` (``numpy=True``: numpy arrays), every file checked against the manifest."""
    arrays = state.load(uri, (state.NumpyArrays(),), step=step, rank=0, storage_options=storage_options)
    return arrays if numpy else jax.tree_util.tree_map(jnp.asarray, arrays)
