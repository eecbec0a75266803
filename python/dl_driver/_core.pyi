"""Type stubs of the Rust extension module ``dl_driver._core`` (thin bindings of dl-driver-core)."""

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
) -> tuple[str, str, bool]: ...

class CheckpointError(DlDriverError):
    """A checkpoint is incomplete, corrupt or cannot be written."""

def checkpoint_list(uri: str, options: dict[str, str] | None = None) -> str: ...
def checkpoint_verify(uri: str, name: str, options: dict[str, str] | None = None) -> int: ...
def checkpoint_delete(uri: str, name: str, options: dict[str, str] | None = None) -> int: ...

class PyBatch:
    samples: list[int]
    spans: list[tuple[int, int]]
    data: Buffer
    bytes_read: int

class Batches:
    def __init__(
        self, config_json: str, split: str = "train", epoch: int = 1, rank: int = 0, world_size: int = 1
    ) -> None: ...
    def __iter__(self) -> Batches: ...
    def __next__(self) -> PyBatch: ...

class Buffer:
    """Bytes read from storage, shared without a copy through the buffer protocol (memoryview, numpy, bytes())."""

    def __len__(self) -> int: ...
    def __bytes__(self) -> bytes: ...
    def __buffer__(self, flags: int) -> memoryview: ...
    def __eq__(self, other: object) -> bool: ...

class ObjectInfo:
    """An object as listed: its key relative to the store's location, size in bytes, POSIX modification time."""

    key: str
    size: int
    last_modified: float

class Store:
    """An open storage location; every call releases the GIL and can be interrupted with Ctrl-C."""

    def __init__(self, uri: str, options: dict[str, str] | None = None) -> None: ...
    @property
    def uri(self) -> str: ...
    def get(self, key: str) -> Buffer:
        """The whole object; FileNotFoundError when missing."""
    def get_range(self, key: str, start: int, end: int) -> Buffer:
        """Bytes ``start..end`` of the object."""
    def put(self, key: str, data: bytes | bytearray) -> None:
        """Writes the object (multipart above the part size); visible only once complete."""
    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Objects below ``prefix``, sorted by key."""
    def head(self, key: str) -> ObjectInfo:
        """Size and modification time; FileNotFoundError when missing."""
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None:
        """Deletes the object; a missing object is not an error."""
    def read_objects(self, keys: list[str], concurrency: int = 1) -> dict[str, float]:
        """Reads every object once into reused page-aligned buffers (data discarded): ``{objects, bytes, seconds}``."""

class LoadResult:
    """What ``load_config`` returns."""

    config_json: str
    warnings: list[str]
    source_name: str
    overrides: list[str]

def load_config(
    source: str,
    kind: str,
    overrides: list[str],
    typed_overrides_json: str,
    config_dir: str | None,
    strict: bool,
) -> LoadResult:
    """Loads and validates a workload; ``kind`` is ``name``, ``file`` or ``json``; typed overrides are ``[[path, value]]``."""

def plan_json(config_json: str, source_name: str, world_size: int) -> str:
    """The derived plan of a resolved config for ``world_size`` processes, as JSON."""

def config_yaml(config_json: str, redact: bool = True) -> str:
    """The canonical YAML of a resolved config; credentials shown as ``***`` when ``redact``."""

def redacted_config_json(config_json: str) -> str:
    """The canonical JSON of a resolved config with credentials shown as ``***``."""

def json_to_yaml(text: str) -> str:
    """Any JSON text rendered as YAML."""

def is_secret_key(key: str) -> bool:
    """Whether an option key names a credential."""

def builtin_workloads() -> list[str]:
    """Names of the built-in workloads."""
