"""Typed configs: dataclasses filled from YAML/JSON mappings with strict key checks.

Unknown keys and wrongly typed values are errors that name the source and the key,
never silently ignored (a typo in a preset must not change an experiment quietly).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError
from .io import read_text

T = TypeVar("T")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with yaml.safe_load (never the unsafe loader)."""
    try:
        data = yaml.safe_load(read_text(path))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML{_yaml_where(exc)}: {getattr(exc, 'problem', None) or exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _yaml_where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""


def from_mapping(cls: type[T], mapping: dict[str, Any], source: str = "config") -> T:
    """Build dataclass `cls` from `mapping`, checking keys and simple types recursively."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{source}: expected a mapping, got {type(mapping).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {name: _coerce(hints[name], value, f"{source}.{name}") for name, value in mapping.items()}
    return cls(**values)


def replace(config: T, overrides: dict[str, Any], source: str = "override") -> T:
    """A copy of `config` with `overrides` applied (same checks as from_mapping)."""
    merged = {**dataclasses.asdict(config), **overrides}
    return from_mapping(type(config), merged, source)


def check_types(cls: type, mapping: dict[str, Any], source: str = "config") -> None:
    """Type-check a partial mapping of `cls`'s fields (keys are checked by the caller)."""
    hints = typing.get_type_hints(cls)
    for name, value in mapping.items():
        if name in hints:
            _coerce(hints[name], value, f"{source}.{name}")


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(hint):
        return from_mapping(hint, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(inner, item, f"{where}[{i}]") for i, item in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict or hint is Any:
        return value
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if hint in (int, str, bool) and not (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value
