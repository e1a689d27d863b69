"""The task registry: ProntoQA, ProsQA, Keys-Finding Maze, GSM8K and the generic `qa`, by name."""

from __future__ import annotations

import importlib
from typing import Any

from ...core.errors import ConfigError
from .base import SOLUTION_MARKER, Task, Verdict, extract_solution, normalize_text

# name -> "module:Class"; imported lazily so `token-assorted data` stays fast.
_REGISTRY = {
    "prontoqa": "token_assorted.data.tasks.prontoqa:ProntoQA",
    "prosqa": "token_assorted.data.tasks.prosqa:ProsQA",
    "keys-maze": "token_assorted.data.tasks.keys_maze:KeysMaze",
    "gsm8k": "token_assorted.data.tasks.gsm8k:GSM8K",
    "qa": "token_assorted.data.tasks.qa:QATask",  # the user's own data, configured by task options
}
TASK_NAMES = tuple(_REGISTRY)


def get_task(name: str, **options: Any) -> Task:
    """The task called `name`, configured by `options` (only `qa` takes any: fields,
    answer_match, step_split); an unknown name or option is a ConfigError naming it."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown task {name!r}; choose one of: {', '.join(TASK_NAMES)}")
    module_name, class_name = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), class_name).from_options(options)


def register_task(name: str, spec: str) -> None:
    """Make `get_task(name)` build the class `spec` ("module:Class", a Task subclass imported when
    first asked for): a task of your own, without editing this package."""
    _REGISTRY[name] = spec


def infer_task(record: dict[str, Any]) -> Task | None:
    """The task a raw record belongs to, or None if no task recognises it."""
    for name in TASK_NAMES:
        task = get_task(name)
        if task.looks_like(record):
            return task
    return None


__all__ = ["SOLUTION_MARKER", "TASK_NAMES", "Task", "Verdict", "extract_solution", "get_task", "register_task",
           "infer_task", "normalize_text"]
