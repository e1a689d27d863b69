"""What every task provides: text rendering, answer parsing, verification, statistics.

A task renders an `Example` as three texts the models read — prompt P, trace C and
solution S — and checks a model's generated solution against the example. The LM
sequence is always P ⊕ C ⊕ S, with the solution opened by `SOLUTION_MARKER`.
"""

from __future__ import annotations

import re
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...core.errors import ConfigError
from ..schema import Example, load_examples

SOLUTION_MARKER = "###"


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking one generated solution."""

    correct: bool
    predicted: str | None  # the parsed answer, None when nothing could be parsed
    details: dict[str, Any] = field(default_factory=dict)  # task-specific (maze: feasible, optimal)


def progress(iterable: Any, task: str, total: int | None = None) -> Any:
    """A generator's progress bar on stderr: shown on a terminal once it has run two seconds,
    so a large `data generate` says how far it is while a small one prints nothing."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=f"generate {task}", unit="example", file=sys.stderr, delay=2,
                disable=None, leave=False)


def normalize_text(text: str) -> str:
    """Collapse whitespace and drop spaces before punctuation (word-level decodes add them)."""
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"\s+([.,;:?!])", r"\1", text)


def extract_solution(generated: str) -> str | None:
    """The text after the last solution marker, or None when the model never wrote one."""
    if SOLUTION_MARKER not in generated:
        return None
    return generated.rsplit(SOLUTION_MARKER, 1)[1].strip()


class Task(ABC):
    """A reasoning task: render examples as text and verify generated solutions."""

    name: str = ""
    # How `verify` decides, in words a report prints ("Answers checked by"); see `answer_rule_of`.
    answer_rule: str = "exact match"

    # --- options (the generic `qa` task has some; the others take none) ----------------
    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Task:
        """The task configured by `options` (`get_task(name, **options)`)."""
        if options:
            raise ConfigError(f"task {cls.name!r} takes no task options (got {', '.join(sorted(options))}); "
                              f"they belong to the generic task qa")
        return cls()

    def options(self) -> dict[str, Any]:
        """The options this task was built with, as recorded beside a model ({} for none)."""
        return {}

    def answer_rule_of(self, example: Example) -> str:
        """The rule that checks answers to `example` (one per task, but math picks per answer)."""
        return self.answer_rule

    # --- rendering: the three texts of X = P ⊕ C ⊕ S -------------------------------
    def prompt_text(self, example: Example) -> str:
        return example.question + "\n"

    def trace_text(self, example: Example) -> str:
        return "\n".join(example.steps) + "\n"

    def solution_text(self, example: Example) -> str:
        return f"{SOLUTION_MARKER} {example.answer}"

    # --- checking ----------------------------------------------------------------
    def verify(self, example: Example, generated: str) -> Verdict:
        """Check generated text (trace and solution, or solution only) against `example`."""
        predicted = extract_solution(generated)
        if predicted is None:
            return Verdict(False, None)
        return Verdict(normalize_text(predicted) == normalize_text(example.answer), predicted)

    # --- data ----------------------------------------------------------------------
    def load(self, path: str | Path) -> list[Example]:
        """Load a file of this task (the Coconut schema; tasks with other official formats override)."""
        return load_examples(path)

    def to_record(self, example: Example) -> dict[str, Any]:
        """An example as a record this task's `load` reads back (the pipeline's data stage writes these)."""
        return example.to_dict()

    def generate(self, n: int, seed: int, **options: Any) -> list[Example]:
        raise NotImplementedError(f"task {self.name!r} has no generator; load its official files")

    @property
    def has_generator(self) -> bool:
        """Whether the task can generate data (GSM8K cannot: its data are the official files)."""
        return type(self).generate is not Task.generate

    def generator_options(self) -> dict[str, tuple[type, Any, str]]:
        """CLI options of the generator: name -> (type, default, help)."""
        return {}

    def lexicon(self) -> list[str]:
        """Every word the generator can emit, so a word-level tokenizer covers unseen data ([] if open-ended)."""
        return []

    def stats(self, examples: list[Example]) -> dict[str, Any]:
        """Task-specific figures for `data stats` (the common ones are computed elsewhere)."""
        return {}

    @staticmethod
    @abstractmethod
    def looks_like(record: dict[str, Any]) -> bool:
        """Whether a raw record belongs to this task (used to infer a file's task)."""
