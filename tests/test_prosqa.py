"""ProsQA: generated questions are well posed (one option reachable), traces are shortest
paths, the generator is seeded, and its statistics match the official valid split."""

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
from token_assorted.data.tasks.prosqa import ProsQA, distances, options_of, shortest_distance

TASK = ProsQA()
SMALL = dict(nodes=9.0, nodes_sd=1.0, min_steps=1, max_steps=3)


def full_output(example: Example, answer: str | None = None) -> str:
    return TASK.trace_text(example) + "### " + (example.answer if answer is None else answer)


def check_well_posed(example: Example) -> None:
    meta = example.meta
    symbols, root, target, neg = meta["idx_to_symbol"], meta["root"], meta["target"], meta["neg_target"]
    assert root in (0, 1) and symbols[root][0].isupper()
    assert all(0 <= a < b < len(symbols) for a, b in meta["edges"])  # acyclic: parents come first
    has_parent = {b for _, b in meta["edges"]}
    assert all(s[0].isupper() == (i not in has_parent) for i, s in enumerate(symbols))  # names are sources
    assert len(set(symbols)) == len(symbols)
    assert shortest_distance(example, target) == len(example.steps)
    assert shortest_distance(example, neg) is None  # the wrong option is unreachable
    parents = {a for a, _ in meta["edges"]}
    assert target not in parents and neg not in parents  # both options are leaves
    assert TASK.trace_is_shortest_path(example)
    assert example.answer == f"{symbols[root]} is a {symbols[target]}."
    assert example.question.endswith("?") and f"Is {symbols[root]} a " in example.question
    # one question sentence per edge
    assert example.question.count(".") == len(meta["edges"])


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), small=st.booleans())
def test_generated_questions_are_well_posed_and_verify(seed: int, small: bool) -> None:
    for example in TASK.generate(3, seed, **(SMALL if small else {})):
        check_well_posed(example)
        assert TASK.verify(example, full_output(example)).correct
        right, wrong = options_of(example)
        name = example.meta["idx_to_symbol"][example.meta["root"]]
        assert right == example.meta["idx_to_symbol"][example.meta["target"]]
        assert not TASK.verify(example, full_output(example, f"{name} is a {wrong}.")).correct
        assert TASK.looks_like(example.to_dict())


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_a_broken_trace_is_not_a_shortest_path(seed: int) -> None:
    example = TASK.generate(1, seed, **SMALL)[0]
    assert not TASK.trace_is_shortest_path(example, example.steps[:-1])  # stops short of the target
    assert not TASK.trace_is_shortest_path(example, example.steps[1:] or ["Every x is a y."])
    assert not TASK.trace_is_shortest_path(example, example.steps + example.steps[-1:])


def test_verify_accepts_the_right_option_named_and_rejects_both_or_wrong() -> None:
    example = Example("Every a is a b. Is Tom a lempus or scrompus?", ["Tom is a lempus."], "Tom is a lempus.")
    assert TASK.verify(example, "### Tom is a lempus.").correct
    assert TASK.verify(example, "### tom is a lempus .").correct
    assert TASK.verify(example, "Tom is a scrompus. ### lempus").correct
    assert not TASK.verify(example, "### Tom is a scrompus.").correct
    assert not TASK.verify(example, "### Tom is a lempus or scrompus.").correct
    assert not TASK.verify(example, "Tom is a lempus.").correct  # no solution marker


def test_same_seed_same_examples_and_different_seed_differs() -> None:
    first = [e.to_dict() for e in TASK.generate(20, 11)]
    assert first == [e.to_dict() for e in TASK.generate(20, 11)]
    assert first != [e.to_dict() for e in TASK.generate(20, 12)]


def test_small_variant_is_smaller_and_respects_step_bounds() -> None:
    small = TASK.generate(50, 0, nodes=8, nodes_sd=0, min_steps=2, max_steps=2)
    assert {len(e.steps) for e in small} == {2}
    assert {len(e.meta["idx_to_symbol"]) for e in small} == {8}


@pytest.mark.parametrize("nodes", [5.0, 22.7])
def test_both_options_are_concepts_never_a_persons_name(nodes: float) -> None:
    # In small graphs the other person is often childless, hence a "leaf"; as an option it
    # would give the answer away (a name can never be the right one).
    for example in TASK.generate(300, 4, nodes=nodes, nodes_sd=1.0, min_steps=2, max_steps=6):
        symbols = example.meta["idx_to_symbol"]
        options = {symbols[example.meta["target"]], symbols[example.meta["neg_target"]]}
        assert all(option[0].islower() for option in options), example.question


def test_same_depth_puts_the_wrong_option_as_far_from_its_person_as_the_right_one() -> None:
    def depth_from_other_person(example: Example) -> int:
        symbols, edges = example.meta["idx_to_symbol"], example.meta["edges"]
        children = [[c for p, c in edges if p == n] for n in range(len(symbols))]
        other = 1 - example.meta["root"]  # the generator's two seed persons are nodes 0 and 1
        return distances(children, other)[example.meta["neg_target"]]

    matched = TASK.generate(200, 5, nodes=6, nodes_sd=1.0, min_steps=2, max_steps=2, same_depth=True)
    assert {depth_from_other_person(e) for e in matched} == {2}
    # Without the option, small graphs often put the wrong option one step from its person.
    plain = TASK.generate(200, 5, nodes=6, nodes_sd=1.0, min_steps=2, max_steps=2)
    assert 1 in {depth_from_other_person(e) for e in plain}


def test_unsatisfiable_or_invalid_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="tries"):
        TASK.generate(1, 0, nodes=5, nodes_sd=0, min_steps=6, max_steps=6)
    with pytest.raises(ConfigError):
        TASK.generate(1, 0, min_steps=4, max_steps=3)
    with pytest.raises(ConfigError, match="lexicon"):
        TASK.generate(1, 0, nodes=60, nodes_sd=0, max_steps=60)


def test_registry_inference_and_lexicon() -> None:
    assert isinstance(get_task("prosqa"), ProsQA)
    examples = TASK.generate(30, 5)
    assert isinstance(infer_task(examples[0].to_dict()), ProsQA)
    lexicon = set(TASK.lexicon())
    for example in examples:
        text = " ".join([example.question, *example.steps, example.answer])
        assert set(re.findall(r"\w+|[^\w\s]", text)) <= lexicon


# --- against the official files (skipped without /work/shared) ----------------------------
def test_official_valid_loads_unchanged_and_is_well_posed() -> None:
    path = shared_file("prosqa/prosqa_valid.json")
    examples = TASK.load(path)
    assert [e.to_dict() for e in examples] == json.loads(path.read_text())
    for example in examples:
        check_well_posed(example)
        assert TASK.verify(example, full_output(example)).correct
    lexicon = set(TASK.lexicon())
    assert {w for e in examples for w in re.findall(r"\w+|[^\w\s]", e.question)} <= lexicon


def test_generated_statistics_match_the_official_valid_split() -> None:
    official = TASK.stats(TASK.load(shared_file("prosqa/prosqa_valid.json")))
    examples = TASK.generate(300, 0)
    ours = TASK.stats(examples)
    assert abs(ours["nodes_mean"] - official["nodes_mean"]) < 0.5
    assert abs(ours["nodes_sd"] - official["nodes_sd"]) < 0.5
    assert abs(ours["edges_mean"] - official["edges_mean"]) < 1.5
    assert abs(ours["shortest_path_mean"] - official["shortest_path_mean"]) < 0.2
    assert abs(ours["right_option_first_share"] - 0.5) < 0.1
    steps = Counter(len(e.steps) for e in examples)
    assert set(steps) <= {3, 4, 5, 6}
    # 3 binomial standard deviations of the difference of two 300-question shares
    for length, share in {3: 0.413, 4: 0.443, 5: 0.12, 6: 0.023}.items():
        tolerance = 3 * (2 * share * (1 - share) / 300) ** 0.5
        assert abs(steps[length] / len(examples) - share) < tolerance, length
    words = statistics.fmean(len(e.question.split()) for e in examples)
    assert abs(words / 180.5 - 1) < 0.10
