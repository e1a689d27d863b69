"""Typed configs: dataclasses filled from YAML/JSON mappings with strict key checks.

Unknown keys, wrongly typed values, duplicated keys, non-finite numbers and values outside
a field's limits are errors that name the source and the key (`preset.yaml: train.epochs:
must be >= 1, got -1`), never silently ignored: a typo in a preset must not change an
experiment quietly, nor surface only after minutes of work. A dataclass declares its
limits in a `LIMITS` class variable (field name -> `Bound`); `from_mapping` checks them.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import reprlib
import types
import typing
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError, OptionError
from .io import read_text

T = TypeVar("T")


# --------------------------------------------------------------------------- YAML
class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (YAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` merges may override keys by design
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # SafeLoader itself refuses an unhashable key
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r:.60}",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


# YAML 1.2 reads 3e-4, 1e4 and 1.0e4 as numbers; PyYAML follows YAML 1.1, where a float needs a dot
# and a signed exponent, and gives the string '3e-4' (so `lr: 3e-4` was refused as "not a number").
_UniqueKeyLoader.yaml_implicit_resolvers = {key: list(value) for key, value in
                                            yaml.SafeLoader.yaml_implicit_resolvers.items()}
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))

MAX_YAML_VALUES = 100_000  # a preset has a few hundred; aliases of aliases ("billion laughs") have billions


class YAMLTooLarge(yaml.YAMLError):
    """A document whose aliases expand to more values than any config holds."""


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """How many values `node` stands for with every alias expanded (shared nodes counted once each time)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise YAMLTooLarge("an alias refers to the node that contains it (a recursive structure)")
    open_nodes.add(key)
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, sizes, open_nodes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, sizes, open_nodes) + _expanded_size(v, sizes, open_nodes)
                       for k, v in node.value)
    else:
        size = 1
    open_nodes.discard(key)
    if size > MAX_YAML_VALUES:
        raise YAMLTooLarge(f"expands to more than {MAX_YAML_VALUES:,} values through its aliases (&anchor / *alias)")
    sizes[key] = size
    return size


def safe_load_yaml(text: str) -> Any:
    """yaml.safe_load, refusing duplicated keys and alias bombs (never the unsafe loader): the size with
    every alias expanded is counted on the parsed nodes, before a single object is built."""
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {}, set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def short_repr(value: Any) -> str:
    """A value as an error message shows it: bounded, however large (or alias-expanded) it is."""
    return _SHORT.repr(value)


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxtuple = 2, 6, 6, 6
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 60


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping (safe loader only); every parse failure is one ConfigError line."""
    try:
        data = safe_load_yaml(read_text(path))
    except YAMLTooLarge as exc:
        raise ConfigError(f"{path}: refused: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML{_yaml_where(exc)}: {getattr(exc, 'problem', None) or exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply to read") from None
    except ValueError as exc:  # an integer of more than 4300 digits
        raise ConfigError(f"{path}: unreadable YAML value: {str(exc).split(';')[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _yaml_where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""


# --------------------------------------------------------------------------- --set KEY=VALUE
def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key.sub=value` strings (values parsed as YAML) into a dict."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = safe_load_yaml(value)
        except (yaml.YAMLError, ValueError, RecursionError) as exc:
            raise ConfigError(f"--set {item[:80]}: unreadable value: {' '.join(str(exc).split())[:200]}") from None
    return out


def with_overrides(mapping: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of `mapping` with dotted `overrides` (`train.epochs`) set in it."""
    mapping = copy.deepcopy(mapping)
    for dotted, value in overrides.items():
        keys, node = dotted.split("."), mapping
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {dotted}: {key} is not a section")
        node[keys[-1]] = value
    return mapping


def parse_with_overrides(parse: Callable[[dict[str, Any], str], T], overrides: dict[str, Any], source: str,
                         labels: dict[str, str] | None = None) -> T:
    """`parse(overrides, source)`; an error only an override causes blames that override.

    `labels[key]` says how the user gave an override (default `--set KEY=VALUE`), so the
    message reads `--set train.epoch=3: train: unknown key(s) epoch`, not the preset's name.
    The culprit is the override without which the rest parses: overrides can depend on each
    other (`--task qa` also clears the preset's generator options), so they are left out one
    at a time rather than applied one at a time.
    """
    try:
        return parse(overrides, source)
    except ConfigError:
        parse({}, source)  # the file alone: its own error, blaming the file
        for key, value in overrides.items():
            rest = {k: v for k, v in overrides.items() if k != key}
            try:
                parse(rest, source)
            except ConfigError:
                continue
            label = (labels or {}).get(key, f"--set {key}={value}")
            try:
                parse(overrides, label)
            except ConfigError as exc:
                message = str(exc)
                raise ConfigError(message if message.startswith(f"{label}: ") else f"{label}: {message}") from None
        raise


# --------------------------------------------------------------------------- limits
@dataclass(frozen=True)
class Bound:
    """The range a numeric field allows (None: unbounded on that side). None values pass:
    optional fields use None for "off" or "the default"."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the low end itself is excluded
    high_open: bool = False

    def problem(self, value: Any) -> str | None:
        """Why `value` is out of range, or None when it is fine (each item of a list is checked)."""
        if isinstance(value, (list, tuple)):
            return next((p for p in map(self.problem, value) if p), None)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return None  # types are checked elsewhere
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, got {value}"
        low_bad = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        high_bad = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        return f"must be {self.describe()}, got {value}" if low_bad or high_bad else None

    def describe(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high}"
        return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"


def at_least(low: float) -> Bound:
    return Bound(low=low)


def above(low: float) -> Bound:
    return Bound(low=low, low_open=True)


def within(low: float, high: float, *, high_open: bool = False) -> Bound:
    return Bound(low=low, high=high, high_open=high_open)


def check_limits(values: dict[str, Any], limits: dict[str, Bound], source: str, prefix: str = "") -> None:
    """Refuse the first value of `values` outside its field's Bound, naming source and key."""
    for name, bound in limits.items():
        problem = bound.problem(values.get(name))
        if problem:
            raise ConfigError(f"{source}: {prefix}{name}: {problem}")


def check_bounds(config: Any, limits: dict[str, Bound]) -> None:
    """A dataclass's own range check (from its `__post_init__`): OptionError for the first field out of
    range, so a config built in Python is checked as one read from a file is."""
    for name, bound in limits.items():
        problem = bound.problem(getattr(config, name))
        if problem:
            raise OptionError(name, problem)


# --------------------------------------------------------------------------- dataclasses
def from_mapping(cls: type[T], mapping: dict[str, Any], source: str = "config", prefix: str = "") -> T:
    """Build dataclass `cls` from `mapping`, checking keys, simple types and limits recursively.

    Errors read `SOURCE: PREFIX.key: what is wrong`; `prefix` names a nested section.
    """
    where = f"{source}: {prefix.rstrip('.')}" if prefix else source
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(mapping).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; valid keys: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {name: _coerce(hints[name], value, source, f"{prefix}{name}") for name, value in mapping.items()}
    check_limits(values, getattr(cls, "LIMITS", {}), source, prefix)
    try:
        return cls(**values)
    except OptionError as exc:  # a dataclass's own checks, naming the option
        raise ConfigError(f"{source}: {prefix}{exc.option}: {exc.message}") from None
    except (TypeError, ValueError) as exc:  # a dataclass's own __post_init__ checks
        raise ConfigError(f"{where}: {exc}") from None


def replace(config: T, overrides: dict[str, Any], source: str = "override") -> T:
    """A copy of `config` with `overrides` applied (same checks as from_mapping)."""
    merged = {**dataclasses.asdict(config), **overrides}
    return from_mapping(type(config), merged, source)


def check_types(cls: type, mapping: dict[str, Any], source: str = "config", prefix: str = "") -> None:
    """Type- and limit-check a partial mapping of `cls`'s fields (keys are checked by the caller)."""
    hints = typing.get_type_hints(cls)
    values = {name: _coerce(hints[name], value, source, f"{prefix}{name}")
              for name, value in mapping.items() if name in hints}
    check_limits(values, getattr(cls, "LIMITS", {}), source, prefix)


def _coerce(hint: Any, value: Any, source: str, key: str) -> Any:
    where = f"{source}: {key}"
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
                return _coerce(arg, value, source, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {short_repr(value)}")
    if dataclasses.is_dataclass(hint):
        return from_mapping(hint, value, source, f"{key}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {short_repr(value)}")
        inner = args[0] if args else Any
        items = [_coerce(inner, item, source, f"{key}[{i}]") for i, item in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        # `--set train=3` must be refused here, not fail later as a bug (`int` has no `.get`).
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping (KEY: VALUE lines), got {short_repr(value)}")
        inner = args[1] if len(args) == 2 else Any
        if inner is Any:
            return value
        return {name: _coerce(inner, item, source, f"{key}.{name}") for name, item in value.items()}
    if hint is Any:
        return value
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # nan/inf would train to NaN weights without a word
                raise ConfigError(f"{where}: must be a finite number, got {value}")
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {short_repr(value)}")
    if hint is int and isinstance(value, float) and math.isfinite(value) and value.is_integer() \
            and abs(value) < 2 ** 53:
        return int(value)  # 1e4 is a float in YAML 1.2; as a count it means 10000
    if hint in (int, str, bool) and not (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {short_repr(value)}")
    return value
