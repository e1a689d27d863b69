"""ProntoQA: the generator's examples verify, match the official files in shape, and are seeded."""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter

import pytest
from conftest import shared_file
from hypothesis import given, settings
from hypothesis import strategies as st

from token_assorted.core.errors import ConfigError
from token_assorted.data.schema import Example
from token_assorted.data.tasks import get_task, infer_task
from token_assorted.data.tasks.prontoqa import ProntoQA, parse_truth

TASK = ProntoQA()


def full_output(example: Example, answer: str | None = None) -> str:
    return TASK.trace_text(example) + TASK.solution_text(example) if answer is None else \
        TASK.trace_text(example) + "### " + answer


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), hops=st.integers(1, 6), distractors=st.booleans())
def test_generated_examples_verify_against_their_own_answer(seed: int, hops: int, distractors: bool) -> None:
    for example in TASK.generate(3, seed, hops=hops, distractors=distractors):
        assert len(example.steps) == hops + 1
        assert TASK.verify(example, full_output(example)).correct
        wrong = "False" if example.answer == "True" else "True"
        assert not TASK.verify(example, full_output(example, wrong)).correct
        # every rule a step quotes is stated in the question
        for step in example.steps[:-1]:
            assert step.split(". ", 1)[1] in example.question
        assert TASK.looks_like(example.to_dict())


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_answer_follows_from_the_chain(seed: int) -> None:
    # The answer is True exactly when the query's sign equals the sign the trace concludes.
    for example in TASK.generate(5, seed):
        query = example.question.rsplit("True or false: ", 1)[1]
        concluded = example.steps[-1]
        assert (query == concluded) == (example.answer == "True")


def test_same_seed_same_examples_and_different_seed_differs() -> None:
    first = [e.to_dict() for e in TASK.generate(20, 7)]
    assert first == [e.to_dict() for e in TASK.generate(20, 7)]
    assert first != [e.to_dict() for e in TASK.generate(20, 8)]


def test_options_out_of_range_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="hops"):
        TASK.generate(1, 0, hops=7)
    with pytest.raises(ConfigError, match="hops"):
        TASK.generate(1, 0, hops=0)
    assert len(TASK.generate(1, 0, hops=10, distractors=False)[0].steps) == 11


@pytest.mark.parametrize("text,expected", [("True", "True"), (" true.", "True"), ("FALSE", "False"),
                                           ("False.", "False"), ("maybe", None), ("", None)])
def test_parse_truth(text: str, expected: str | None) -> None:
    assert parse_truth(text) == expected


def test_verify_needs_the_marker_and_uses_the_last_one() -> None:
    example = Example("q True or false: Alex is happy.", ["Alex is happy."], "True")
    assert not TASK.verify(example, "Alex is happy. True").correct
    assert TASK.verify(example, "### False ### true").correct
    assert TASK.verify(example, "### True").predicted == "True"


def test_registry_and_inference() -> None:
    assert isinstance(get_task("prontoqa"), ProntoQA)
    assert isinstance(infer_task(TASK.generate(1, 0)[0].to_dict()), ProntoQA)


def test_lexicon_covers_every_generated_word() -> None:
    lexicon = set(TASK.lexicon())
    for example in TASK.generate(50, 3):
        text = " ".join([example.question, *example.steps, example.answer])
        assert set(re.findall(r"\w+|[^\w\s]", text)) <= lexicon


# --- against the official files (skipped without /work/shared) ----------------------------
def test_official_valid_loads_unchanged_and_verifies() -> None:
    path = shared_file("prontoqa/prontoqa_valid.json")
    examples = TASK.load(path)
    raw = json.loads(path.read_text())
    assert [e.to_dict() for e in examples] == raw
    assert all(TASK.verify(e, full_output(e)).correct for e in examples)
    lexicon = set(TASK.lexicon())
    for example in examples:
        assert set(re.findall(r"\w+|[^\w\s]", example.question + " ".join(example.steps))) <= lexicon


def _sentence_forms(examples: list[Example]) -> Counter:
    forms: Counter = Counter()
    for example in examples:
        for sentence in re.split(r"(?<=\.) ", example.question.split("True or false:")[0]):
            forms["every" if sentence.startswith("Every") else "each" if sentence.startswith("Each")
                  else "plural" if " are " in sentence else "entity"] += 1
            forms["not"] += " not " in sentence
    total = sum(v for k, v in forms.items() if k != "not")
    return Counter({k: v / total for k, v in forms.items()})


def test_generated_statistics_match_the_official_valid_split() -> None:
    official = TASK.load(shared_file("prontoqa/prontoqa_valid.json"))
    generated = TASK.generate(200, 2024)

    def question_words(examples: list[Example]) -> float:
        return statistics.fmean(len(e.question.split()) for e in examples)

    assert abs(question_words(generated) / question_words(official) - 1) < 0.10
    assert {len(e.steps) for e in generated} == {len(e.steps) for e in official} == {6}
    true_share = sum(e.answer == "True" for e in generated) / len(generated)
    assert abs(true_share - 0.5) < 0.1
    ours, theirs = _sentence_forms(generated), _sentence_forms(official)
    for form in ("every", "each", "plural", "entity", "not"):
        assert abs(ours[form] - theirs[form]) < 0.05, form
