"""Type stubs of the Rust extension module ``dl_driver._core`` (thin bindings of dl-driver-core).

Every name the module exports is here, with the argument names and defaults of its ``#[pyo3(signature)]``;
tests/test_typing.py runs mypy's stubtest against the built module to keep it so. Arguments that PyO3 extracts
as a ``Vec`` are typed ``list``: PyO3 also takes a tuple, but refuses a ``str``, which ``Sequence[str]`` would let
through. The classes cannot be subclassed (``@final``), and those without a constructor are made only by the module.
"""

import builtins
from typing import ClassVar, Self, final

from typing_extensions import Buffer as BytesLike

__all__ = [
    "FREE_FORM_KEYS",
    "Batches",
    "Buffer",
    "CheckpointError",
    "Comm",
    "ConfigError",
    "DlDriverError",
    "FormatError",
    "LoadResult",
    "ObjectInfo",
    "PyBatch",
    "StateReader",
    "StateWriter",
    "StorageError",
    "Store",
    "__version__",
    "builtin_workloads",
    "checkpoint_delete",
    "checkpoint_list",
    "checkpoint_read_manifest",
    "checkpoint_verify",
    "checkpoint_write_manifest",
    "config_yaml",
    "generate",
    "is_secret_key",
    "json_to_yaml",
    "load_config",
    "plan_json",
    "redacted_config_json",
    "run_benchmark",
    "save_run_config",
    "yaml_to_json",
]

__version__: str
FREE_FORM_KEYS: list[str]
"""Config keys whose values are free-form maps (their contents are not checked)."""

class DlDriverError(Exception):
    """Base class of every dl-driver error."""

class ConfigError(DlDriverError):
    """A workload config is malformed or inconsistent; the message names the source, key path, value and expectation."""

class StorageError(DlDriverError):
    """A storage operation failed; the message names the URI and never a credential."""

class FormatError(DlDriverError):
    """A dataset file could not be encoded or decoded."""

class CheckpointError(DlDriverError):
    """A checkpoint is incomplete, corrupt or cannot be written."""

@final
class LoadResult:
    """What ``load_config`` returns."""

    @property
    def config_json(self) -> str:
        """The resolved config as JSON text."""
    @property
    def warnings(self) -> list[str]: ...
    @property
    def source_name(self) -> str: ...
    @property
    def overrides(self) -> list[str]: ...

def load_config(
    source: str,
    kind: str,
    overrides: list[str],
    typed_overrides_json: str,
    config_dir: str | None,
    strict: bool,
) -> LoadResult:
    """Loads and validates a workload; ``kind`` is ``name``, ``file`` or ``json``; typed overrides are ``[[path, value]]``."""

def plan_json(config_json: str, source_name: str, world_size: int, run: bool = False) -> str:
    """The derived plan of a resolved config for ``world_size`` processes, as JSON; with ``run``, also checked for a
    run (every phase that runs has a step)."""

def config_yaml(config_json: str, redact: bool = True) -> str:
    """The canonical YAML of a resolved config; credentials shown as ``***`` when ``redact``."""

def redacted_config_json(config_json: str) -> str:
    """The canonical JSON of a resolved config with credentials shown as ``***``."""

def json_to_yaml(text: str) -> str:
    """Any JSON text rendered as YAML."""

def yaml_to_json(text: str, source: str) -> str:
    """YAML text as JSON text; ConfigError naming ``source`` with line and column on a syntax error."""

def is_secret_key(key: str) -> bool:
    """Whether an option key names a credential."""

def builtin_workloads() -> list[str]:
    """Names of the built-in workloads."""

def generate(
    config_json: str,
    rank: int = 0,
    world_size: int = 1,
    skip_existing: bool = False,
    threads: int | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Generates one rank's share of a resolved config's dataset: ``{files_written, files_skipped, bytes_written, seconds}``."""

def run_benchmark(
    config_json: str,
    source_name: str,
    overrides: list[str],
    rank: int = 0,
    world_size: int = 1,
    console: bool = True,
    progress: bool = False,
    plugins: list[object] = ...,
    comm: Comm | None = None,
) -> tuple[str, str, bool]:
    """Runs the workload with the plugins its config asks for and ``plugins``, as ``comm``'s rank (else as ``rank``
    of ``world_size`` alone): (summary JSON, report JSON, interrupted)."""

def save_run_config(config_json: str, source_name: str, overrides: list[str], rank: int) -> None:
    """Writes Hydra's config.yaml, hydra.yaml and overrides.yaml for the run (rank 0; others do nothing)."""

@final
class Comm:
    """The ranks of a launched job joined by a backend (``dl_driver.distributed`` builds it)."""

    def __new__(cls, backend: object, timeout_seconds: float) -> Self: ...
    @property
    def rank(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def node(self) -> int | None: ...
    @property
    def local_size(self) -> int | None: ...
    def barrier(self) -> None:
        """Returns when every rank has called it."""
    def all_gather(self, value: str) -> list[str]:
        """Every rank's ``value``, in rank order."""
    def fail(self, message: str) -> None:
        """Tells the other ranks this one failed (MPI), without blocking."""

def checkpoint_write_manifest(uri: str, manifest_json: str, options: dict[str, str] | None = None) -> None:
    """Writes a checkpoint's manifest (JSON, as ``checkpoint_read_manifest`` returns it): what makes it complete."""

def checkpoint_read_manifest(uri: str, name: str, options: dict[str, str] | None = None) -> str:
    """The manifest of checkpoint ``name`` under ``uri``, as JSON."""

@final
class StateWriter:
    """One checkpoint file written from buffers (zstd when asked, CRC-32C of what is stored)."""

    def __new__(
        cls,
        uri: str,
        key: str,
        rank: int = 0,
        zstd_level: int | None = None,
        options: dict[str, str] | None = None,
        fsync: bool = False,
    ) -> Self: ...
    def write(self, data: BytesLike) -> None:
        """Appends the bytes of ``data`` (any buffer of bytes)."""
    def finish(self) -> str:
        """Completes the file (a local one on the device, with ``fsync``); returns its manifest entry as JSON."""

@final
class StateReader:
    """One checkpoint file read back into buffers and checked against its manifest entry."""

    def __new__(
        cls, uri: str, key: str, entry_json: str, compressed: bool, options: dict[str, str] | None = None
    ) -> Self: ...
    def readinto(self, target: BytesLike) -> int:
        """Fills the writable, contiguous ``target`` with the file's next bytes (local files straight into it, several
        reads at once); how many, fewer only at the end of the file. The GIL is released meanwhile."""
    def finish(self) -> None:
        """Reads what is left and checks the file against its manifest entry."""

def checkpoint_list(uri: str, options: dict[str, str] | None = None) -> str:
    """The checkpoints under ``uri`` as JSON: ``[{name, complete, objects, stored_bytes}]``."""

def checkpoint_verify(uri: str, name: str, options: dict[str, str] | None = None) -> int:
    """Reads checkpoint ``name`` and verifies every file against its manifest; returns the bytes read."""

def checkpoint_delete(uri: str, name: str, options: dict[str, str] | None = None) -> int:
    """Deletes checkpoint ``name`` (manifest first); returns the objects deleted."""

@final
class Buffer:
    """Bytes read from storage, shared without a copy through the buffer protocol (memoryview, numpy, bytes())."""

    __hash__: ClassVar[None]  # type: ignore[assignment]  # unhashable at runtime, as it defines __eq__
    def __buffer__(self, flags: int, /) -> memoryview: ...
    def __len__(self) -> int: ...
    def __bytes__(self) -> bytes:
        """A copy as ``bytes``."""
    def __eq__(self, value: object, /) -> bool: ...

@final
class PyBatch:
    """One batch: its step in the rank's epoch, the sample ids, and their bytes back to back (sample ``i`` at
    ``spans[i]``)."""

    @property
    def step(self) -> int: ...
    @property
    def samples(self) -> list[int]: ...
    @property
    def spans(self) -> list[tuple[int, int]]: ...
    @property
    def data(self) -> Buffer: ...
    @property
    def bytes_read(self) -> int: ...
    @property
    def arrays(self) -> list[tuple[list[str], str, list[int]] | None]:
        """Per sample, when its file is hdf5 with mapped rows: the datasets (a row of each, back to back), numpy's
        dtype and the row's shape; else None."""

@final
class Batches:
    """An epoch of one phase read through the pipeline, batch by batch."""

    def __new__(
        cls,
        config_json: str,
        split: str = "train",
        epoch: int = 1,
        rank: int = 0,
        world_size: int = 1,
        worker: int = 0,
        workers: int = 1,
        start: int = 0,
    ) -> Self: ...
    def __iter__(self) -> Self: ...
    def __next__(self) -> PyBatch: ...

@final
class ObjectInfo:
    """An object as listed: its key relative to the store's location, size in bytes, POSIX modification time."""

    @property
    def key(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def last_modified(self) -> float:
        """POSIX timestamp in seconds."""

@final
class Store:
    """An open storage location; every call releases the GIL and can be interrupted with Ctrl-C."""

    def __new__(cls, uri: str, options: dict[str, str] | None = None) -> Self: ...
    @property
    def uri(self) -> str:
        """The location, as a URI."""
    def get(self, key: str) -> Buffer:
        """The whole object; FileNotFoundError when missing."""
    def get_range(self, key: str, start: int, end: int) -> Buffer:
        """Bytes ``start..end`` of the object."""
    def readinto(self, key: str, start: int, target: BytesLike) -> None:
        """Fills the writable, contiguous ``target`` with the object's bytes from ``start`` (within the object; local
        files straight into it, several reads at once). The GIL is released meanwhile."""
    def put(self, key: str, data: bytes | bytearray) -> None:
        """Writes the object (multipart above the part size); visible only once complete."""
    def list(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        """Objects below ``prefix``, sorted by key."""
    def head(self, key: str) -> ObjectInfo:
        """Size and modification time; FileNotFoundError when missing."""
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None:
        """Deletes the object; a missing object is not an error."""
    def read_objects(self, keys: builtins.list[str], concurrency: int = 1) -> dict[str, float]:
        """Reads every object once into reused page-aligned buffers (data discarded): ``{objects, bytes, seconds}``."""
