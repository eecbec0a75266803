"""DLIO workload configs: load one by name, path or dict, read and change it by attribute, and every change is validated."""

from __future__ import annotations

import copy
import difflib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from dl_driver import _core
from dl_driver._core import ConfigError

Overrides = Mapping[str, Any] | Sequence[str] | str | None


class ConfigWarning(UserWarning):
    """A key the config model does not know (it is ignored, as DLIO ignores it)."""


def workloads() -> list[str]:
    """Names of the workloads built into dl-driver (usable as ``workload=NAME`` from any directory)."""
    return list(_core.builtin_workloads())


def as_config(config: Config | str | dict[str, Any]) -> Config:
    """``config`` itself when it is a Config, else :func:`load_dlio_config` of it (a name, a path or a dict)."""
    return config if isinstance(config, Config) else load_dlio_config(config)


def load_dlio_config(
    source: str | os.PathLike[str] | Mapping[str, Any] | Config,
    overrides: Overrides = None,
    config_dir: str | os.PathLike[str] | None = None,
    *,
    strict: bool = False,
) -> Config:
    """Loads a DLIO workload and validates it.

    Args:
        source: a workload name (``"unet3d_h100"`` or ``"workload=unet3d_h100"``), a YAML file path, a dict in either
            DLIO key dialect, or a Config.
        overrides: DLIO command-line overrides (``["++workload.train.epochs=1"]``) or a dict of dotted key paths to
            values (``{"dataset.num_files_train": 16}``).
        config_dir: like DLIO's ``--config-dir``: ``config_dir/workload/NAME.yaml`` is looked up before the built-ins.
        strict: unknown keys raise ConfigError instead of warning with ConfigWarning.

    Raises:
        ConfigError: the workload is malformed; the message names the file, the key path, the value and what was expected.
    """
    kind, text = _source(source)
    cli, typed = _split_overrides(overrides)
    result = _core.load_config(
        text, kind, cli, _dumps(typed, "overrides"), os.fspath(config_dir) if config_dir else None, strict
    )
    for warning in result.warnings:
        warnings.warn(f"{result.source_name}: {warning}", ConfigWarning, stacklevel=2)
    return Config._from_json(result.config_json, result.source_name, list(result.warnings), list(result.overrides))


def _source(source: object) -> tuple[str, str]:
    if isinstance(source, Config):
        return "json", _dumps(source.to_dict(), "config")
    if isinstance(source, Mapping):
        return "json", _dumps(dict(source), "the config dict")
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if text.startswith("workload="):
            return "name", text.removeprefix("workload=")
        if os.path.isfile(text) or text.endswith((".yaml", ".yml")) or os.sep in text:
            return "file", text
        return "name", text
    raise ConfigError(f"cannot load a config from {type(source).__name__}: expected a workload name, a path or a dict")


def _split_overrides(overrides: Overrides) -> tuple[list[str], list[list[Any]]]:
    if overrides is None:
        return [], []
    if isinstance(overrides, str):
        return [overrides], []
    if isinstance(overrides, Mapping):
        return [], [[str(k), v] for k, v in overrides.items()]
    if isinstance(overrides, Sequence) and all(isinstance(o, str) for o in overrides):
        return list(overrides), []
    raise ConfigError("overrides must be a dict of key paths to values or a list of '++workload.a.b=v' strings")


def _dumps(value: object, what: str) -> str:
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"{what} holds a value that is not plain data (str, int, float, bool, None, list, dict): {e}"
        ) from None


class Config:
    """A resolved, validated DLIO workload config (HEAD key dialect, DLIO's defaults filled in).

    Sections and keys read as attributes (``cfg.reader.batch_size``); assigning one re-validates the whole config and
    raises ConfigError, leaving the config unchanged, when the new value is wrong.
    """

    __slots__ = ("_data", "overrides", "source_name", "warnings")

    _data: dict[str, Any]
    source_name: str
    warnings: list[str]
    overrides: list[str]

    @classmethod
    def _from_json(cls, text: str, source_name: str, warnings: list[str], overrides: list[str]) -> Config:
        cfg = object.__new__(cls)
        object.__setattr__(cfg, "_data", json.loads(text))
        object.__setattr__(cfg, "source_name", source_name)
        object.__setattr__(cfg, "warnings", warnings)
        object.__setattr__(cfg, "overrides", overrides)
        return cfg

    def __getattr__(self, name: str) -> Any:
        return _read(self, (), name)

    def __setattr__(self, name: str, value: Any) -> None:
        self._assign((name,), value)

    def __dir__(self) -> list[str]:
        return sorted(set(self._data) | {"to_dict", "to_yaml", "to_json", "plan", "set", "source_name", "warnings"})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and other._data == self._data

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<dl_driver.Config {self._data['model']['name']!r} from {self.source_name}>"

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the resolved config as plain data (credentials included)."""
        return copy.deepcopy(self._data)

    def to_yaml(self, *, redact: bool = True) -> str:
        """The resolved config as YAML, which loads back to an equal Config; credentials show as ``***`` unless ``redact=False``."""
        return _core.config_yaml(json.dumps(self._data), redact)

    def to_json(self, *, redact: bool = True) -> str:
        """The resolved config as JSON; credentials show as ``***`` unless ``redact=False``."""
        if redact:
            return _core.redacted_config_json(json.dumps(self._data))
        return json.dumps(self._data)

    def plan(self, world_size: int = 1, *, run: bool = False) -> dict[str, Any]:
        """The derived plan for ``world_size`` processes: steps per epoch, samples per rank, dataset bytes, files,
        evaluation and checkpoint schedules, checkpoint size. With ``run``, ConfigError when the workload cannot run
        as its workflow says (a training or evaluation with 0 steps per epoch); generation alone is always planned."""
        if not isinstance(world_size, int) or not 1 <= world_size <= 2**32:
            raise ConfigError(f"world size {world_size!r}: expected a process count from 1 to 2**32")
        plan: dict[str, Any] = json.loads(_core.plan_json(json.dumps(self._data), self.source_name, world_size, run))
        return plan

    def set(self, path: str, value: Any) -> None:
        """Sets a dotted key path (``cfg.set("reader.batch_size", 8)``), validated like attribute assignment."""
        self.update({path: value})

    def update(self, changes: Mapping[str, Any]) -> None:
        """Sets several dotted key paths at once and validates the result once (for keys that must change together,
        like ``framework`` and ``reader.data_loader``); on error nothing changes."""
        data = copy.deepcopy(self._data)
        for path, value in changes.items():
            _put(data, tuple(path.removeprefix("workload.").split(".")), value)
        self._validate_and_keep(data, ", ".join(_shown(k, v) for k, v in changes.items()))

    def _assign(self, path: tuple[str, ...], value: Any) -> None:
        data = copy.deepcopy(self._data)
        _put(data, path, value)
        self._validate_and_keep(data, _shown(".".join(path), value))

    def _validate_and_keep(self, data: dict[str, Any], change: str) -> None:
        try:
            result = _core.load_config(_dumps(data, change), "json", [], "[]", None, True)
        except ConfigError as e:
            raise ConfigError(f"cannot set {change}: {e}") from None
        object.__setattr__(self, "_data", json.loads(result.config_json))


def _shown(path: str, value: Any) -> str:
    """``path = value`` for messages, with credentials hidden."""
    if any(_core.is_secret_key(part) for part in path.split(".")) or _redacted(value) != value:
        return f"{path} = ***"
    return f"{path} = {value!r}"


def _put(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    """Sets ``path`` in ``data``; every key on the way must exist, except inside free-form maps."""
    dotted = ".".join(path)
    parent: Any = data
    for depth, part in enumerate(path[:-1]):
        if not isinstance(parent, dict) or part not in parent:
            raise ConfigError(f"cannot set {dotted}: {'.'.join(path[: depth + 1])} {_unknown(parent, part)}")
        parent = parent[part]
    leaf = path[-1]
    free_form = ".".join(path[:-1]) in _core.FREE_FORM_KEYS
    if not isinstance(parent, dict) or (leaf not in parent and not free_form):
        raise ConfigError(f"cannot set {dotted}: {dotted} {_unknown(parent, leaf)}")
    parent[leaf] = value


def _unknown(parent: Any, key: str) -> str:
    if not isinstance(parent, dict):
        return "is below a value, not a section"
    close = difflib.get_close_matches(key, list(parent), n=1)
    return "is not a known key" + (f" (did you mean {close[0]}?)" if close else "")


def _read(cfg: Config, path: tuple[str, ...], name: str) -> Any:
    node: Any = cfg._data
    for part in path:
        node = node[part]
    if not isinstance(node, dict) or name not in node:
        dotted = ".".join((*path, name))
        raise AttributeError(f"{dotted} {_unknown(node, name)}")
    value = node[name]
    if isinstance(value, dict):
        return Section(cfg, (*path, name))
    return copy.deepcopy(value)


class Section:
    """A view of one section of a Config (``cfg.reader``); reads and assignments go to the Config."""

    __slots__ = ("_config", "_path")

    _config: Config
    _path: tuple[str, ...]

    def __init__(self, config: Config, path: tuple[str, ...]) -> None:
        object.__setattr__(self, "_config", config)
        object.__setattr__(self, "_path", path)

    def __getattr__(self, name: str) -> Any:
        return _read(self._config, self._path, name)

    def __setattr__(self, name: str, value: Any) -> None:
        self._config._assign((*self._path, name), value)

    def __dir__(self) -> list[str]:
        return sorted(set(self.to_dict()) | {"to_dict"})

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Section):
            return other.to_dict() == self.to_dict()
        return isinstance(other, Mapping) and dict(other) == self.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of this section as plain data."""
        node: Any = self._config._data
        for part in self._path:
            node = node[part]
        return copy.deepcopy(node)

    def __repr__(self) -> str:
        return f"<dl_driver.Config section {'.'.join(self._path)}: {_redacted(self.to_dict())!r}>"


def _redacted(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: "***" if _core.is_secret_key(str(k)) else _redacted(v) for k, v in node.items()}
    return node
