"""The task registry: ProntoQA, ProsQA, Keys-Finding Maze, GSM8K and the generic `qa`, by name."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from ...core.errors import ConfigError, DataError
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


def check_data_task(task: Task, path: str | Path) -> None:
    """Refuse a JSONL data file whose first record another task recognises and `task` does not
    (a ProsQA model scored on keys-maze data would read every answer wrong without a word)."""
    import json

    path = Path(path)
    if task.name == "qa" or path.suffix != ".jsonl" or not path.is_file():
        return  # the generic task reads any fields; tables and folders are read by their own loaders
    try:
        with open(path, encoding="utf-8") as handle:
            line = next((text for text in handle if text.strip()), "")
        record = json.loads(line)
    except (OSError, ValueError, RecursionError):
        return  # unreadable: the task's own loader names the file and line
    if not isinstance(record, dict) or task.looks_like(record):
        return
    other = next((name for name in TASK_NAMES if name not in (task.name, "qa") and get_task(name).looks_like(record)),
                 None)
    if other is not None:
        raise DataError(path, f"its first record is a {other} record, not a {task.name} one; refusing to score "
                              f"{task.name} on it (use a model or VQ-VAE of {other}, or pass --task {other})")


__all__ = ["check_data_task", "SOLUTION_MARKER", "TASK_NAMES", "Task", "Verdict", "extract_solution", "get_task", "register_task",
           "infer_task", "normalize_text"]
