"""Type stubs of the Rust extension module ``dl_driver._core`` (thin bindings of dl-driver-core)."""

__version__: str
FREE_FORM_KEYS: list[str]
"""Config keys whose values are free-form maps (their contents are not checked)."""

class DlDriverError(Exception):
    """Base class of every dl-driver error."""

class ConfigError(DlDriverError):
    """A workload config is malformed or inconsistent; the message names the source, key path, value and expectation."""

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
