"""dl-driver: a storage benchmark for AI training that runs DLIO workloads unmodified.

The engine is Rust (``dl_driver._core``); this package is the Python face of it.
"""

from dl_driver import checkpoint, storage
from dl_driver._core import CheckpointError, ConfigError, DlDriverError, FormatError, StorageError, __version__
from dl_driver.config import Config, ConfigWarning, load_dlio_config, workloads
from dl_driver.generation import generate
from dl_driver.runner import DlioRunner, Report, batches

__all__ = [
    "CheckpointError",
    "Config",
    "ConfigError",
    "ConfigWarning",
    "DlDriverError",
    "DlioRunner",
    "FormatError",
    "Report",
    "StorageError",
    "__version__",
    "batches",
    "checkpoint",
    "generate",
    "load_dlio_config",
    "storage",
    "workloads",
]
