"""The one example schema every task reads and writes (Coconut's reference format).

`{"question": str, "steps": [str, ...], "answer": str}` plus task metadata (ProsQA:
`idx_to_symbol`, `edges`, `root`, `target`, `neg_target`; the maze: its grid). Official
Coconut files load unchanged, so results compare directly with published numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import DataError
from ..core.io import atomic_write_jsonl, read_records

CORE_FIELDS = ("question", "steps", "answer")


@dataclass
class Example:
    """One reasoning example: prompt P (question), trace C (steps), solution S (answer)."""

    question: str
    steps: list[str]
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"question": self.question, "steps": list(self.steps), "answer": self.answer, **self.meta}

    @classmethod
    def from_dict(cls, record: dict[str, Any], *, path: str | Path | None = None,
                  line: int | None = None, allow_empty_steps: bool = False) -> Example:
        """Validate one record; errors name the file, line and field."""
        for name in CORE_FIELDS:
            if name not in record:
                raise DataError(path, "missing field", line=line, field=name)
        question, steps, answer = record["question"], record["steps"], record["answer"]
        if not isinstance(question, str) or not question.strip():
            raise DataError(path, "must be a non-empty string", line=line, field="question")
        if not isinstance(answer, str) or not answer.strip():
            raise DataError(path, f"must be a non-empty string, got {answer!r:.40}", line=line, field="answer")
        if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
            raise DataError(path, "must be a list of strings", line=line, field="steps")
        if not allow_empty_steps and not any(s.strip() for s in steps):
            raise DataError(path, "empty reasoning trace", line=line, field="steps")
        meta = {k: v for k, v in record.items() if k not in CORE_FIELDS}
        return cls(question=question, steps=list(steps), answer=answer, meta=meta)


def load_examples(path: str | Path, *, allow_empty_steps: bool = False) -> list[Example]:
    """Load a JSONL file or a JSON list of examples, validating every record."""
    return [Example.from_dict(record, path=path, line=line, allow_empty_steps=allow_empty_steps)
            for line, record in read_records(path)]


def save_examples(path: str | Path, examples: list[Example]) -> None:
    """Write examples as JSONL, atomically."""
    atomic_write_jsonl(path, (example.to_dict() for example in examples))
