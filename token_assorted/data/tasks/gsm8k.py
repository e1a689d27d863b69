"""GSM8K and MATH-style math data: loaders for every common format, answer checking.

`GSM8K().load(path)` recognises, record by record or line by line:

* the original GSM8K JSONL — `{"question", "answer": "…<<48/2=24>>24 …\\n#### 72"}`:
  steps are the solution's lines, the answer is the number after `####`;
* the iCoT text format — one `question||<<48/2=24>> <<48+24=72>> #### 72` per line:
  steps are the `<<…>>` equations (as in Coconut's GSM8K-Aug files);
* the Coconut JSON schema — `{"question", "steps", "answer"}`, steps already split;
* MATH-style records — `problem`/`query` with `solution`/`response` (MATH, MetaMathQA,
  DART-Math): steps are the solution's lines (sentences when it is one paragraph), the
  answer is the last `\\boxed{…}` or the "The answer is: …" sentence.

Records also come from tables and the Hub (`hf:openai/gsm8k@main:test`,
`hf:meta-math/MetaMathQA`, `hf:HuggingFaceH4/MATH-500:test`; `sources.read_table`). Answers are
checked by `answers.check_math_answer`: a number numerically (GSM8K), anything else (MATH's
LaTeX) by math-verify; `answer_rule_of` names the rule a report prints.

Calculator annotations `<<a*b=c>>` in original GSM8K solutions are dropped by default:
each one repeats the equation already written in the sentence (they exist for a calculator
tool we never call), so keeping them lengthens traces by about a third with no new content.
`GSM8K(keep_annotations=True)` keeps them, for comparisons with setups that train on them.
"""

from __future__ import annotations

import re
from pathlib import Path
from statistics import mean
from typing import Any

from ...core.errors import DataError
from ...core.io import read_records, read_text, split_lines
from ..schema import Example
from .answers import answer_rule, check_math_answer, extract_answer, last_boxed, parse_number
from .base import Task, Verdict

_ANNOTATION = re.compile(r"<<[^<>]*>>")
_ANSWER_IS = re.compile(r"^\s*the answer is\s*:?\s*(.+?)\s*$", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\\$(])")
PROMPT_FIELDS = ("problem", "query", "question", "instruction")
SOLUTION_FIELDS = ("solution", "response", "output")


class GSM8K(Task):
    """Grade-school (and competition) math: the answer is a number or a boxed expression."""

    name = "gsm8k"

    def __init__(self, keep_annotations: bool = False) -> None:
        self.keep_annotations = keep_annotations

    # --- loading -------------------------------------------------------------------
    def load(self, path: str | Path) -> list[Example]:
        """Examples of a GSM8K / iCoT / Coconut / MATH-style file (format detected), or of any table
        `sources.read_table` reads: parquet, CSV, a saved data set, `hf:REPO[@CONFIG][:SPLIT]`."""
        from ..sources import HUB_PREFIX, TABLE_BUILDERS, read_table

        if str(path).startswith(HUB_PREFIX) or Path(path).suffix.lower() in TABLE_BUILDERS or Path(path).is_dir():
            table = read_table(path)
            return [self.from_record(record, f"{table.source}, {table.unit} {where}") for where, record in table.records]
        text = read_text(path)
        if text.lstrip()[:1] in ("{", "["):
            return [self.from_record(record, path, line) for line, record in read_records(path)]
        return load_icot_lines(text, path)

    def from_record(self, record: dict[str, Any], path: str | Path | None = None,
                    line: int | None = None) -> Example:
        """One JSON record in any of the JSON formats above."""
        if "steps" in record:
            return Example.from_dict(record, path=path, line=line, allow_empty_steps=True)
        if "question" in record and "answer" in record and "solution" not in record:
            return gsm8k_example(record, path, line, keep_annotations=self.keep_annotations)
        if any(f in record for f in PROMPT_FIELDS) and any(f in record for f in SOLUTION_FIELDS):
            return math_example(record, path, line)
        raise DataError(path, f"unrecognised math record with fields {sorted(record)[:8]}; expected "
                        "question+answer (GSM8K), question+steps+answer (Coconut) or "
                        "problem/query+solution/response (MATH-style)", line=line)

    # --- checking ------------------------------------------------------------------
    def answer_rule_of(self, example: Example) -> str:
        """"numeric" for a number (GSM8K), "math-verify" for any other answer (MATH's LaTeX)."""
        return answer_rule(example.answer)

    def verify(self, example: Example, generated: str) -> Verdict:
        """Extract the final answer (after `###`, boxed, stated or last number) and compare it
        by the example's rule (`answers.check_math_answer`)."""
        predicted = extract_answer(generated)
        return Verdict(check_math_answer(predicted, example.answer)[0], predicted)

    def stats(self, examples: list[Example]) -> dict[str, Any]:
        if not examples:
            return {}
        return {"mean_steps": round(mean(len(ex.steps) for ex in examples), 2),
                "mean_trace_words": round(mean(sum(len(s.split()) for s in ex.steps) for ex in examples), 1),
                "numeric_answers": round(mean(parse_number(ex.answer) is not None for ex in examples), 3)}

    @staticmethod
    def looks_like(record: dict[str, Any]) -> bool:
        answer = record.get("answer")
        if "question" in record and isinstance(answer, str) and "####" in answer:
            return True
        if ("problem" in record and "solution" in record) or ("query" in record and "response" in record):
            return True
        return ("steps" in record and isinstance(answer, str) and parse_number(answer) is not None
                and "walls" not in record)


# --- the formats -------------------------------------------------------------------
def gsm8k_example(record: dict[str, Any], path: str | Path | None = None, line: int | None = None,
                  keep_annotations: bool = False) -> Example:
    """An original GSM8K record: solution lines, then `#### N`."""
    question, solution = _string(record, "question", path, line), _string(record, "answer", path, line)
    if "####" not in solution:
        raise DataError(path, "no '#### <answer>' line in the solution", line=line, field="answer")
    body, final = solution.rsplit("####", 1)
    if not keep_annotations:
        body = _ANNOTATION.sub("", body)
    steps = [step.strip() for step in body.splitlines() if step.strip()]
    return Example(question.strip(), steps, _final_number(final, path, line), _extra(record, ("question", "answer")))


def load_icot_lines(text: str, path: str | Path | None = None) -> list[Example]:
    """The iCoT text format: `question||<<eq>> <<eq>> #### N`, one example per line."""
    examples = []
    for number, raw in enumerate(split_lines(text), start=1):
        if not raw.strip():
            continue
        if "||" not in raw:
            raise DataError(path, "expected 'question||equations #### answer'", line=number, field="question")
        question, rest = raw.rsplit("||", 1)
        if not question.strip():
            raise DataError(path, "empty question", line=number, field="question")
        if "####" not in rest:
            raise DataError(path, "no '#### <answer>' after the equations", line=number, field="answer")
        equations, final = rest.rsplit("####", 1)
        examples.append(Example(question.strip(), equations.split(), _final_number(final, path, number)))
    if not examples:
        raise DataError(path, "file is empty")
    return examples


def math_example(record: dict[str, Any], path: str | Path | None = None, line: int | None = None) -> Example:
    """A MATH / MetaMathQA / DART-Math record: the answer is boxed or stated at the end."""
    prompt_field = next(f for f in PROMPT_FIELDS if f in record)
    solution_field = next(f for f in SOLUTION_FIELDS if f in record)
    question, solution = _string(record, prompt_field, path, line), _string(record, solution_field, path, line)
    answer = _math_answer(record, solution)
    if answer is None:
        raise DataError(path, "no final answer: expected \\boxed{...} or 'The answer is: ...'", line=line,
                        field=solution_field)
    steps = solution_steps(solution)
    stated = _ANSWER_IS.match(steps[-1]) if steps else None
    if stated and len(steps) > 1:
        steps = steps[:-1]  # MetaMathQA's closing "The answer is: X" is the solution S itself
    return Example(question.strip(), steps, answer, _extra(record, (prompt_field, solution_field, "answer")))


def solution_steps(solution: str) -> list[str]:
    """The lines of a solution, or its sentences when it is written as one paragraph."""
    lines = [line.strip() for line in solution.splitlines() if line.strip()]
    if len(lines) == 1:
        lines = [s.strip() for s in _SENTENCE_END.split(lines[0]) if s.strip()]
    return lines


def _math_answer(record: dict[str, Any], solution: str) -> str | None:
    given = record.get("answer")
    if isinstance(given, (int, float)) and not isinstance(given, bool):
        return str(given)
    if isinstance(given, str) and given.strip():
        return given.strip()
    boxed = last_boxed(solution)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    for line in reversed(solution.splitlines()):
        stated = _ANSWER_IS.match(line)
        if stated:
            return stated.group(1).rstrip(".").strip() or None
    return None


def _final_number(final: str, path, line) -> str:
    answer = final.strip().splitlines()[0].strip() if final.strip() else ""
    if not answer:
        raise DataError(path, "empty answer after '####'", line=line, field="answer")
    # "1,000" and "1000" are one answer; store the plain form the models will be taught.
    return answer.replace(",", "") if parse_number(answer) is not None else answer


def _string(record: dict[str, Any], field: str, path, line) -> str:
    value = record.get(field)
    if not isinstance(value, str) or not value.strip():
        raise DataError(path, "must be a non-empty string", line=line, field=field)
    return value


def _extra(record: dict[str, Any], used: tuple[str, ...]) -> dict[str, Any]:
    # Fields we do not read (MATH's level/type, MetaMathQA's original_question) ride along.
    return {k: v for k, v in record.items() if k not in used and k not in ("question", "steps", "answer")}
