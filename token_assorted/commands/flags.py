"""Command-line flags made from the typed configs: every option is declared once, in its dataclass.

`add_config_flags(parser, cls)` gives each field of `cls` a flag: `field_name` -> `--field-name`,
its type from the annotation (a bool: `--name` / `--no-name`; a list: values separated by
commas; a nested config such as `lora`: one `--lora-FIELD` flag per field of it), its help
from the comment after the field in the source (or `metadata={"help": ...}`; argparse.SUPPRESS
hides a flag). Every flag defaults to None, so a flag not given leaves the value of `--config`
or the dataclass's own default, and `given(args, cls)` gathers the flags given into a mapping of
the dataclass's keys, which `config.from_mapping` checks like any config file.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from functools import lru_cache
from typing import Any

# `    name: type = default  # help`: the comment of a field's line in its class's source
_FIELD_LINE = re.compile(r"^\s+(\w+)\s*:[^#]*#\s*(.+?)\s*$")


@lru_cache(maxsize=None)
def field_help(cls: type) -> dict[str, str]:
    """Each field's help: its `metadata["help"]`, else the comment after it in the source of the class
    that declares it (a field inherited from a shared block keeps its one help text)."""
    comments: dict[str, str] = {}
    for declaring in (klass for klass in cls.__mro__ if dataclasses.is_dataclass(klass)):
        for line in inspect.getsource(declaring).splitlines():
            match = _FIELD_LINE.match(line)
            if match:
                comments.setdefault(match[1], match[2])
    return {f.name: f.metadata.get("help", comments.get(f.name, "")) for f in dataclasses.fields(cls)}


def _declared_by(cls: type) -> dict[str, type]:
    """Each field of `cls` -> the class that declares it (the nearest in the MRO)."""
    owner: dict[str, type] = {}
    for klass in cls.__mro__:
        for name in inspect.get_annotations(klass):
            owner.setdefault(name, klass)
    return owner


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _inner(hint: Any) -> tuple[Any, ...]:
    """The types of a hint without None: `int | None` -> (int,)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(arg for arg in typing.get_args(hint) if arg is not type(None))
    return (hint,)


def _items(kind: type):
    """argparse type of a list flag: `0,72,128` (or spaces) -> [0, 72, 128]."""
    def parse(text: str) -> list[Any]:
        try:
            return [kind(part) for part in text.replace(",", " ").split()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__} values separated by commas, "
                                             f"got {text!r}") from None
    return parse


def _int_or_text(text: str) -> int | str:
    """argparse type of an `int | str` option (the dial's K or "all")."""
    return int(text) if text.strip().isdigit() else text


def add_config_flags(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (),
                     prefix: str = "") -> None:
    """A flag for each field of dataclass `cls` (nested configs: `--NAME-FIELD`), default None.

    Inherited fields are listed under the docstring of the class that declares them (the
    VQ-VAE's options, the optimisation's), after the class's own; `metadata={"required": True}`
    makes a flag required.
    """
    hints, helps, owner = typing.get_type_hints(cls), field_help(cls), _declared_by(cls)
    groups: dict[type, Any] = {cls: parser}
    for field in sorted(dataclasses.fields(cls), key=lambda f: owner[f.name] is not cls):
        if field.name in skip:
            continue
        declared = owner[field.name]
        if declared not in groups:
            groups[declared] = parser.add_argument_group(inspect.getdoc(declared).splitlines()[0].rstrip("."))
        kinds, dest = _inner(hints[field.name]), prefix + field.name
        help_text = helps[field.name]
        if help_text is not argparse.SUPPRESS:
            help_text = help_text.replace("%", "%%")  # argparse formats help with %
            if field.default not in (dataclasses.MISSING, None):
                help_text = f"{help_text} (default: {field.default})" if help_text else f"default: {field.default}"
        options: dict[str, Any] = {"dest": dest, "default": None, "help": help_text}
        if field.metadata.get("required"):
            options["required"] = True
        add = groups[declared].add_argument
        if len(kinds) == 1 and dataclasses.is_dataclass(kinds[0]):
            add_config_flags(parser, kinds[0], prefix=f"{dest}.")
            continue
        if kinds == (bool,):
            add(_flag(dest.replace(".", "_")), action=argparse.BooleanOptionalAction, **options)
            continue
        origin = typing.get_origin(kinds[0])
        if origin is dict:
            continue  # mappings have flags of their own (the task options) or come from --config
        if origin is list:
            options["type"] = _items(typing.get_args(kinds[0])[0])
        elif set(kinds) == {int, str}:
            options["type"] = _int_or_text
        else:
            options["type"] = kinds[0]
            options["metavar"] = field.name.upper()
        add(_flag(dest.replace(".", "_")), **options)


def given(args: argparse.Namespace, cls: type, prefix: str = "") -> dict[str, Any]:
    """The flags of `cls` given on the command line, as a mapping of its keys (nested configs nested)."""
    values: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        kinds, dest = _inner(hints[field.name]), prefix + field.name
        if len(kinds) == 1 and dataclasses.is_dataclass(kinds[0]):
            nested = given(args, kinds[0], f"{dest}.")
            if nested:
                values[field.name] = nested
        elif getattr(args, dest, None) is not None:
            values[field.name] = getattr(args, dest)
    return values


def merge(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """`base` (a --config file's mapping) with `values` on top; nested configs merged key by key."""
    merged = dict(base)
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            value = merge(base[key], value)
        merged[key] = value
    return merged
