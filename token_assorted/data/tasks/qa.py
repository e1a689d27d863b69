"""`qa`: a generic reasoning task over the user's own records, configured by options.

A record holds a question, the steps of a worked solution and a final answer, under the
user's field names (`fields`, e.g. `{"question": "problem", "steps": "solution",
"answer": "final_answer"}`) and, for multiple choice, a list of options (`fields["choices"]`).
Steps are a list of strings, or one text cut into steps by `step_split`: `lines` (its
non-empty lines) or `sentences` (its lines, each also cut after `.`, `!` or `?` and a space).

Rendered like every task (`Task.prompt_text` / `trace_text` / `solution_text`), e.g.

    prompt    "Which is larger?\\nOptions: (A) 3 (B) 5\\n"   (options only for `choice`)
    trace     "5 is more than 3.\\n"
    solution  "### 5"

and checked by `answer_match` on the text after `###`: `exact` (text equal after
normalising case, spaces and a final full stop), `numeric` (the math equivalence of
`answers.answers_match`: "1,000", "1000.0" and "$1000" are one answer) or `choice` (the
option the model names, by its text or its letter, is the record's answer).

Options travel with a model: `options()` is recorded in `token_assorted.json` and the
VQ-VAE's config, so `eval` of a saved model rebuilds the same task with no flags.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...core.errors import ConfigError, DataError
from ..schema import Example
from .answers import answers_match, parse_number
from .base import Task, Verdict, extract_solution, normalize_text

ANSWER_MATCHES = ("exact", "numeric", "choice")
STEP_SPLITS = ("lines", "sentences")
FIELD_ROLES = ("question", "steps", "answer", "choices")  # ours; `fields` maps them to the user's names
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LABEL = re.compile(r"^\(?([A-Z])\)?[.:]?$")  # "B", "(B)", "B." or "B:" names option B


@dataclass
class QAOptions:
    """How `qa` reads records and checks answers (CLI: --fields, --answer-match, --step-split)."""

    fields: dict[str, str] = field(default_factory=dict)  # question/steps/answer/choices -> the data's names
    answer_match: str = "exact"  # exact | numeric | choice
    step_split: str = "lines"  # a steps field that is one text: lines | sentences

    def name_of(self, role: str) -> str:
        """The user's field name for one of ours (itself when not mapped)."""
        return self.fields.get(role, role)


def check_options(options: QAOptions, source: str = "task_options") -> QAOptions:
    """Refuse unknown field roles, answer matches and step splits, naming the option."""
    unknown = sorted(set(options.fields) - set(FIELD_ROLES))
    if unknown:
        raise ConfigError(f"{source}.fields: unknown field(s) {', '.join(unknown)}; map {', '.join(FIELD_ROLES)}")
    if not all(isinstance(name, str) and name for name in options.fields.values()):
        raise ConfigError(f"{source}.fields: every mapped name must be a non-empty string")
    if options.answer_match not in ANSWER_MATCHES:
        raise ConfigError(f"{source}.answer_match: {options.answer_match!r} is not one of {', '.join(ANSWER_MATCHES)}")
    if options.step_split not in STEP_SPLITS:
        raise ConfigError(f"{source}.step_split: {options.step_split!r} is not one of {', '.join(STEP_SPLITS)}")
    return options


def normalize_exact(text: str) -> str:
    """Text as `exact` compares it: NFKC, case-folded, one space between words, no final stop."""
    text = normalize_text(unicodedata.normalize("NFKC", text)).casefold()
    return text.rstrip(".").strip().strip("\"'").strip()


def render_choices(choices: list[str]) -> str:
    return "Options: " + " ".join(f"({_LETTERS[i]}) {option}" for i, option in enumerate(choices))


class QATask(Task):
    """Any question / steps / answer data set; see the module docstring."""

    name = "qa"

    def __init__(self, options: QAOptions | None = None) -> None:
        self.settings = check_options(options or QAOptions())

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> QATask:
        from ...core.config import from_mapping

        return cls(from_mapping(QAOptions, options, "task_options"))

    def options(self) -> dict[str, Any]:
        return dataclasses.asdict(self.settings)

    # --- loading -------------------------------------------------------------------
    def load(self, path: str | Path) -> list[Example]:
        """Examples of any source `sources.read_table` reads (JSONL, JSON, parquet, CSV, saved, hub)."""
        from ..sources import read_table

        table = read_table(path)
        return [self.from_record(record, table.error, where) for where, record in table.records]

    def from_record(self, record: dict[str, Any], error: Any, where: int | None = None) -> Example:
        """One record; `error(message, where, field)` builds the DataError naming its place."""
        names = {role: self.settings.name_of(role) for role in FIELD_ROLES}

        def fail(message: str, role: str) -> DataError:
            return error(message, where, names[role])

        for role in ("question", "steps", "answer"):
            if record.get(names[role]) is None:  # absent, or an empty cell of a table
                raise fail("missing field", role)
        question = record[names["question"]]
        if not isinstance(question, str) or not question.strip():
            raise fail(f"must be a non-empty string, got {question!r:.40}", "question")
        steps = self._steps(record[names["steps"]], lambda m: fail(m, "steps"))
        answer = _answer_text(record[names["answer"]], lambda m: fail(m, "answer"))
        meta = {k: v for k, v in record.items() if k not in {names[r] for r in FIELD_ROLES}}
        if self.settings.answer_match == "numeric" and parse_number(answer) is None:
            raise fail(f"not a number: {answer!r:.40} (answer_match numeric)", "answer")
        if self.settings.answer_match == "choice":
            choices = _choices(record.get(names["choices"]), lambda m: fail(m, "choices"))
            answer = _resolve_choice(answer, choices)
            if answer is None:
                raise fail(f"{record[names['answer']]!r:.40} is none of the options {choices}", "answer")
            question = f"{question.strip()}\n{render_choices(choices)}"
            meta["choices"] = choices
        return Example(question.strip(), steps, answer, meta)

    def _steps(self, value: Any, fail: Any) -> list[str]:
        if isinstance(value, str):
            lines = [line.strip() for line in value.splitlines() if line.strip()]
            if self.settings.step_split == "sentences":
                lines = [s.strip() for line in lines for s in _SENTENCE_END.split(line) if s.strip()]
            steps = lines
        elif isinstance(value, list) and all(isinstance(step, str) for step in value):
            steps = [step.strip() for step in value if step.strip()]
        else:
            raise fail(f"must be a list of strings or one text, got {type(value).__name__}")
        if not steps:
            raise fail("empty reasoning trace")
        return steps

    def to_record(self, example: Example) -> dict[str, Any]:
        """An example under the user's field names again, so this task reads it back unchanged."""
        names = {role: self.settings.name_of(role) for role in FIELD_ROLES}
        meta = dict(example.meta)
        question = example.question
        choices = meta.pop("choices", None)
        if choices is not None:  # the options were appended to the question when it was read
            question = question.removesuffix("\n" + render_choices(choices))
        record = {names["question"]: question, names["steps"]: list(example.steps), names["answer"]: example.answer}
        if choices is not None:
            record[names["choices"]] = choices
        return {**meta, **record}

    # --- checking ------------------------------------------------------------------
    def answer_rule_of(self, example: Example) -> str:
        return self.settings.answer_match  # exact, numeric or choice

    def verify(self, example: Example, generated: str) -> Verdict:
        predicted = extract_solution(generated)
        if predicted is None:
            return Verdict(False, None)
        match = self.settings.answer_match
        if match == "numeric":
            return Verdict(answers_match(predicted, example.answer), predicted)
        if match == "choice":
            choices = example.meta.get("choices")
            named = _resolve_choice(predicted, choices) if isinstance(choices, list) else None
            return Verdict(named is not None and named == example.answer, predicted)
        return Verdict(normalize_exact(predicted) == normalize_exact(example.answer), predicted)

    def stats(self, examples: list[Example]) -> dict[str, Any]:
        if not examples:
            return {}
        return {"answer_match": self.settings.answer_match,
                "mean_steps": round(sum(len(e.steps) for e in examples) / len(examples), 2)}

    @staticmethod
    def looks_like(record: dict[str, Any]) -> bool:
        return False  # generic: never inferred from a record, always named (--task qa)


# --- field values ------------------------------------------------------------------------
def _answer_text(value: Any, fail: Any) -> str:
    """A reference answer as text: tables store numeric answers as numbers."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise fail(f"must be a string or a number, got {type(value).__name__}")
    text = value.strip() if isinstance(value, str) else str(value)
    if not text:
        raise fail("must be a non-empty string")
    return text


def _choices(value: Any, fail: Any) -> list[str]:
    if value is None:
        raise fail("missing field (answer_match choice needs the options)")
    if (not isinstance(value, list) or len(value) < 2 or len(value) > len(_LETTERS)
            or not all(isinstance(option, str) and option.strip() for option in value)):
        raise fail("must be a list of 2 to 26 non-empty strings")
    return [option.strip() for option in value]


def _resolve_choice(text: str, choices: list[str]) -> str | None:
    """The option `text` names: by its letter ("B", "(B)") or its text; None when it names none."""
    label = _LABEL.match(text.strip())
    if label and _LETTERS.index(label[1]) < len(choices):
        return choices[_LETTERS.index(label[1])]
    wanted = normalize_exact(text)
    found = [option for option in choices if normalize_exact(option) == wanted]
    return found[0] if found else None
