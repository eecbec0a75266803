"""dl-driver: a storage benchmark for AI training that runs DLIO workloads unmodified.

The engine is Rust (``dl_driver._core``); this package is the Python face of it.
"""

from dl_driver import storage
from dl_driver._core import ConfigError, DlDriverError, StorageError, __version__
from dl_driver.config import Config, ConfigWarning, load_dlio_config, workloads

__all__ = [
    "Config",
    "ConfigError",
    "ConfigWarning",
    "DlDriverError",
    "StorageError",
    "__version__",
    "load_dlio_config",
    "storage",
    "workloads",
]
