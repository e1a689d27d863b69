"""Bounded fuzzing: parsers and loaders meet arbitrary text, bytes and JSON.

A model's output is arbitrary text and a user's file is arbitrary bytes, so the answer
parsers, every task's `verify`, the maze plan checker and every loader must either
succeed or raise the documented `DataError` — never anything else. Each property runs
a fixed number of examples (no deadline) so the whole file stays within a few seconds.
"""

from __future__ import annotations

import json
import tempfile
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from token_assorted.core.errors import DataError
from token_assorted.core.io import read_records
from token_assorted.data.schema import Example, load_examples
from token_assorted.data.tasks import TASK_NAMES, Verdict, extract_solution, get_task
from token_assorted.data.tasks.answers import answers_match, extract_answer, normalize_answer, parse_number
from token_assorted.data.tasks.keys_maze import maze_from_meta, parse_plan
from token_assorted.data.tasks.maze_world import check_plan

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
FILES = settings(max_examples=60, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# Text a model might write: answer-ish fragments mixed with arbitrary unicode.
FRAGMENTS = st.sampled_from(["###", "####", "\\boxed{", "}", "{", "\\frac{1}{2}", "The answer is", ":", "$",
                             "-", ".", ",", "1,000", "3/4", "%", "plan", " ", "\n", "0", "7", "1e5",
                             "True", "False", "Yes", "No", "<latent_3>", "\\sqrt", "x = ", "9" * 30])
MODEL_TEXT = st.lists(st.one_of(FRAGMENTS, st.text(max_size=8)), max_size=25).map("".join)
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                max_size=4),
                    max_leaves=12)
# Records near the schema (so loaders get past the first check and into the task fields).
FIELD_NAMES = st.sampled_from(["question", "steps", "answer", "idx_to_symbol", "edges", "root", "target",
                               "neg_target", "width", "height", "walls", "keys", "doors", "start", "goal",
                               "problem", "solution", "query", "response"])
NEAR_RECORDS = st.dictionaries(FIELD_NAMES, JSON, max_size=12)


@pytest.fixture(scope="module")
def examples() -> dict[str, Example]:
    """One real example per task (GSM8K and qa have no generator: a hand-written one)."""
    found = {}
    for name in TASK_NAMES:
        task = get_task(name)
        if name in ("gsm8k", "qa"):
            found[name] = Example("Tom has 3 apples and buys 4. How many?", ["3 + 4 = 7"], "7")
        else:
            found[name] = task.generate(1, 0)[0]
    return found


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory)


# --- answers and verdicts -------------------------------------------------------------
@FUZZ
@given(text=MODEL_TEXT, gold=MODEL_TEXT)
@example(text="#### " + "9" * 5000, gold="9")
@example(text="\\boxed{" * 50, gold="{")
def test_answer_parsers_never_raise(text, gold):
    answer = extract_answer(text)
    assert answer is None or isinstance(answer, str)
    assert isinstance(answers_match(answer, gold), bool)
    assert isinstance(answers_match(text, gold), bool)
    number = parse_number(text)
    assert number is None or isinstance(number, Fraction)  # exact, never a float that could be NaN
    assert isinstance(normalize_answer(text), str)
    solution = extract_solution(text)
    assert solution is None or ("###" in text and isinstance(solution, str))


@FUZZ
@given(text=MODEL_TEXT, name=st.sampled_from(TASK_NAMES))
@example(text="### plan -1 0 plan 99 99", name="keys-maze")
def test_every_task_verify_returns_a_verdict(examples, text, name):
    task = get_task(name)
    example_ = examples[name]
    for generated in (text, "### " + text, task.trace_text(example_) + text):
        verdict = task.verify(example_, generated)
        assert isinstance(verdict, Verdict) and isinstance(verdict.correct, bool)


def test_maze_verify_survives_a_huge_number(examples):
    verdict = get_task("keys-maze").verify(examples["keys-maze"], "### plan " + "9" * 5000 + " 0")
    assert not verdict.correct


def test_every_task_accepts_its_own_solution(examples):
    # The fuzz above could pass with a verify that always says False; this pins the True side.
    for name, example_ in examples.items():
        task = get_task(name)
        assert task.verify(example_, task.trace_text(example_) + task.solution_text(example_)).correct, name


@FUZZ
@given(plan=st.lists(st.tuples(st.integers(-3, 12), st.integers(-3, 12)), max_size=40))
def test_maze_plan_checker_never_raises(examples, plan):
    maze = maze_from_meta(examples["keys-maze"].meta)
    reason = check_plan(maze, plan)
    assert reason is None or isinstance(reason, str)
    if plan and reason is None:
        assert plan[0] == maze.start and plan[-1] == maze.goal


@FUZZ
@given(text=MODEL_TEXT)
def test_plan_parser_never_raises(text):
    plan = parse_plan(text)
    assert plan is None or all(isinstance(x, int) and isinstance(y, int) for x, y in plan)


# --- loaders: only DataError -------------------------------------------------------------
def _load_everything(path: Path) -> None:
    """Every loader on one file; each may succeed or raise DataError, nothing else."""
    for loader in (read_records, load_examples, *(get_task(name).load for name in TASK_NAMES)):
        try:
            loaded = loader(path)
        except DataError as exc:
            assert str(path) in str(exc)
            continue
        assert isinstance(loaded, list)


def _verify_loaded(path: Path, text: str) -> None:
    # Examples that load are usable: verify() on them must not trip over their metadata.
    for name in TASK_NAMES:
        task = get_task(name)
        try:
            loaded = task.load(path)
        except DataError:
            continue
        for example_ in loaded:
            assert isinstance(task.verify(example_, text).correct, bool)


@FILES
@given(data=st.binary(max_size=300))
@example(data=b"\xff\xfe\x00")
@example(data=b"[1, 2]")
@example(data=b"[{}, ")
@example(data=b"\n\n   \n")
@example(data=b'{"question": "q", "steps": ["s"], "answer": "a"}\n\x80')
def test_random_bytes_give_data_errors_only(scratch, data):
    path = scratch / "bytes.jsonl"
    path.write_bytes(data)
    _load_everything(path)


@FILES
@given(records=st.lists(JSON, min_size=1, max_size=4), as_list=st.booleans())
def test_random_json_gives_data_errors_only(scratch, records, as_list):
    path = scratch / "random.json"
    text = json.dumps(records) if as_list else "\n".join(json.dumps(r) for r in records)
    path.write_text(text, encoding="utf-8")
    _load_everything(path)


@FILES
@given(records=st.lists(NEAR_RECORDS, min_size=1, max_size=3), text=MODEL_TEXT)
def test_near_schema_records_give_data_errors_only(scratch, records, text):
    path = scratch / "near.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    _load_everything(path)
    _verify_loaded(path, "### " + text)


@FILES
@given(examples_=st.lists(st.sampled_from(TASK_NAMES), min_size=1, max_size=3),
       field=FIELD_NAMES, value=JSON)
def test_one_corrupted_field_of_real_data_gives_data_errors_only(scratch, examples, examples_, field, value):
    # Real records of each task with one field swapped for random JSON: the typed checks.
    records = [{**examples[name].to_dict(), field: value} for name in examples_]
    path = scratch / "corrupt.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    _load_everything(path)
    _verify_loaded(path, "### Yes")
