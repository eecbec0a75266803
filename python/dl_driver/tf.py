"""TensorFlow input and checkpoints on dl-driver (extra ``dl-driver[tensorflow]``).

``make_dataset(cfg)`` is a ``tf.data.Dataset`` of one epoch's batches of a DLIO workload, read by the Rust pipeline
(any backend) and sharded explicitly by rank as DLIO shards (tf.data's auto-sharding is off): each element is a dict
of the samples' arrays stacked (npy/npz ``x``/``y``, tfrecord features, image pixels; ``raw=True`` gives each
sample's bytes as a ``tf.string``). Its ``element_spec`` is known before the first element (one sample is read and
decoded when the dataset is made). The reads release the GIL, so two pipelines read in parallel; the generator that
stacks the batches runs in Python. The returned dataset carries ``get_state()`` / ``set_state(state)``: the next
batch the next iteration yields (tf.data's injected prefetch is off, so that is the consumer's position; a
``.prefetch`` added downstream runs the generator ahead of it).

``CheckpointCallback(cfg)`` is a Keras callback that saves the model's weights and the optimizer's variables on the
workload's checkpoint schedule through the same writer as ``dl_driver.torch``'s checkpoints (multipart, zstd,
CRC-32C, manifest last); ``load_weights(model, uri, step=None)`` restores them so ``get_weights()`` is equal.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from dl_driver import _core, launcher, state
from dl_driver._core import CheckpointError, ConfigError
from dl_driver.config import Config, as_config
from dl_driver.decode import batch_samples

try:
    import keras
    import tensorflow as tf
except ImportError as e:  # pragma: no cover - the extra is missing
    raise ImportError(f"dl_driver.tf needs TensorFlow: pip install 'dl-driver[tensorflow]' ({e})") from e

__all__ = ["CheckpointCallback", "load_weights", "make_dataset"]


class _Cursor:
    """Where the dataset's next iteration starts: a step of the rank's epoch."""

    def __init__(self, epoch: int) -> None:
        self.epoch, self.step = epoch, 0

    def get_state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "step": self.step}

    def set_state(self, value: dict[str, int]) -> None:
        try:
            epoch, step = int(value["epoch"]), int(value["step"])
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"dataset state {value!r}: expected integers epoch and step ({e})") from e
        if epoch < 1 or step < 0:
            raise ConfigError(f"dataset state {value!r}: expected epoch >= 1 and step >= 0")
        self.epoch, self.step = epoch, step


def make_dataset(
    config: Config | str | dict[str, Any],
    split: str = "train",
    *,
    raw: bool = False,
    epoch: int = 1,
    rank: int | None = None,
    world_size: int | None = None,
) -> tf.data.Dataset:
    """A ``tf.data.Dataset`` of ``split``'s batches (DLIO's ``reader.batch_size``) for this rank (see the module)."""
    cfg = as_config(config)
    if split not in ("train", "valid"):
        raise ConfigError(f"split '{split}': expected 'train' or 'valid'")
    size = launcher.world_size(world_size)
    rank = launcher.rank(rank, size)
    text, fmt = cfg.to_json(redact=False), str(cfg.dataset.format)
    spf = int(cfg.dataset.num_samples_per_file)
    varying = float(cfg.dataset.record_length_bytes_stdev or 0) > 0
    cursor = _Cursor(epoch)

    def stacked(batch: _core.PyBatch) -> Any:
        got = batch_samples(fmt, batch, f"{split}, epoch {cursor.epoch}", raw, spf)
        return np.array(got, dtype=object) if raw else got

    first = next(iter(_core.Batches(text, split, epoch, rank, size, 0, 1, 0)), None)
    if first is None:
        raise ConfigError(f"{split}: this rank has no batch in epoch {epoch} (check the dataset's size)")
    example = stacked(first)
    if raw:
        spec: Any = tf.TensorSpec(shape=(None,), dtype=tf.string)
    else:
        spec = {
            name: tf.TensorSpec(
                shape=(None, *([None] * (a.ndim - 1) if varying else a.shape[1:])), dtype=tf.as_dtype(a.dtype)
            )
            for name, a in example.items()
        }

    def batches() -> Iterator[Any]:
        for batch in _core.Batches(text, split, cursor.epoch, rank, size, 0, 1, cursor.step):
            cursor.step = batch.step + 1
            yield stacked(batch)
        cursor.step = 0

    dataset = tf.data.Dataset.from_generator(batches, output_signature=spec)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    # No prefetch tf.data would add on its own: the generator then runs only when a batch is asked for, so the state
    # is the consumer's (a .prefetch the caller adds runs it ahead again).
    options.experimental_optimization.inject_prefetch = False
    dataset = dataset.with_options(options)
    dataset.get_state = cursor.get_state
    dataset.set_state = cursor.set_state
    return dataset


#: Keras weights and optimizer variables are numpy arrays in the checkpoint.
_KINDS = (state.NumpyArrays(),)


def _optimizer_variables(model: Any) -> list[Any]:
    optimizer = getattr(model, "optimizer", None)
    return list(optimizer.variables) if optimizer is not None and getattr(optimizer, "built", False) else []


class CheckpointCallback(keras.callbacks.Callback):  # type: ignore[misc]
    """Saves the model's weights and its optimizer's variables on the workload's checkpoint schedule (as
    ``dl_driver.torch.CheckpointPlugin``: every ``steps_between_checkpoints`` global steps, or on the epoch
    schedule) to ``checkpoint.checkpoint_folder``. ``saved`` lists the checkpoints it wrote."""

    def __init__(
        self,
        config: Config | str | dict[str, Any],
        *,
        uri: str | None = None,
        storage_options: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        if launcher.world_size(None) > 1:
            raise CheckpointError("CheckpointCallback saves from one process; several ranks are not supported yet")
        self.schedule = state.Schedule(as_config(config), 1, uri, storage_options)
        self.step = 0
        self.saved: list[str] = []

    def _save(self, step: int, epoch: int) -> None:
        weights = {
            "weights": [np.asarray(w) for w in self.model.get_weights()],
            "optimizer": [np.asarray(v.numpy()) for v in _optimizer_variables(self.model)],
            "step": step,
        }
        s = self.schedule
        name = state.save(
            s.uri,
            weights,
            _KINDS,
            step=step,
            epoch=epoch,
            compression=s.compression,
            compression_level=s.level,
            rank=0,
            world_size=1,
            gather=None,
            storage_options=s.options,
            fsync=s.fsync,
        )
        self.saved.append(name)

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.step += 1
        epoch = self.schedule.after_step(self.step)
        if epoch is not None:
            self._save(self.step, epoch)

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        if self.schedule.after_epoch(epoch + 1):  # Keras counts epochs from 0
            self._save(self.step, epoch + 1)


def load_weights(
    model: Any, uri: str, step: int | None = None, *, storage_options: dict[str, str] | None = None
) -> int:
    """Restores the weights (and, when the model's optimizer is built, its variables) of the latest complete
    checkpoint under ``uri`` (or of ``step``) that :class:`CheckpointCallback` wrote; returns the checkpoint's step."""
    saved = state.load(uri, _KINDS, step=step, rank=launcher.rank(None), storage_options=storage_options)
    model.set_weights(saved["weights"])
    variables = _optimizer_variables(model)
    if variables and saved["optimizer"]:
        if len(variables) != len(saved["optimizer"]):
            raise CheckpointError(
                f"{uri}: the checkpoint has {len(saved['optimizer'])} optimizer variables, the model's optimizer "
                f"{len(variables)}"
            )
        for variable, value in zip(variables, saved["optimizer"], strict=True):
            variable.assign(value)
    return int(saved["step"])
