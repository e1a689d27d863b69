"""Math answer extraction and equivalence, including a fuzz test: no input makes them raise."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from token_assorted.data.schema import Example
from token_assorted.data.tasks import get_task
from token_assorted.data.tasks.answers import (
    answers_match,
    check_math_answer,
    extract_answer,
    last_boxed,
    normalize_answer,
    numbers_equal,
    parse_number,
)


@pytest.mark.parametrize("text, expected", [
    ("She makes 9 * 2 = $<<9*2=18>>18.\n#### 18", "18"),
    ("reasoning\n### 1,000", "1,000"),
    ("#### 5\nthen ### 7", "7"),
    ("so $x = \\boxed{\\frac{1}{\\sqrt{2}}}$.", "\\frac{1}{\\sqrt{2}}"),
    ("\\boxed{2} first, \\boxed{\\{1, 2\\}} last", "\\{1, 2\\}"),
    ("$\\boxed{ 42 }$", "42"),
    ("The answer is: 18", "18"),
    ("so the answer is $25.", "25"),
    ("He has 3 apples and gives 2 away, leaving 1.", "1"),
    ("it costs 1,250.", "1,250"),
    ("total -4.5", "-4.5"),
    ("no numbers here", None),
    ("", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_last_boxed_handles_nesting_and_truncation():
    assert last_boxed("x \\boxed{a{b{c}}d} y") == "a{b{c}}d"
    assert last_boxed("\\boxed{unclosed {") is None
    assert last_boxed("\\boxed 7$") == "7"
    assert last_boxed("plain") is None


@pytest.mark.parametrize("predicted, gold", [
    ("1,000", "1000"), ("$18.00", "18"), ("\\$18", "18"), ("50%", "50"), ("50\\%", "50"),
    ("18 dollars", "18"), ("18 dollars per day.", "18"), ("x = 5", "5"), ("5.0", "5"), ("5.", "5"),
    ("3/4", "0.75"), ("\\frac{3}{4}", ".75"), ("\\dfrac{6}{8}", "0.75"), ("-3", "-3"), ("\u22123", "-3"),
    ("90^\\circ", "90"), ("\\text{18 } cm", "18"),
    ("\\dfrac{\\pi}{2}", "\\frac{\\pi}{2}"), ("(1, 2)", "(1,2)"), ("\\left( 1,2 \\right)", "(1,2)"),
    ("\\text{Monday}", "monday"),
])
def test_equivalent_answers_match(predicted, gold):
    assert answers_match(predicted, gold)


@pytest.mark.parametrize("predicted, gold", [
    ("17", "18"), ("-3", "3"), ("0.7", "0.75"), ("1/0", "0"), ("\\frac{\\sqrt3}{2}", "3"), ("3 and 4", "3"),
    ("(1, 3)", "(1,2)"), ("", "5"), (None, "5"), ("5 cm^2", "5"), ("1,2", "12"),
])
def test_different_answers_do_not_match(predicted, gold):
    assert not answers_match(predicted, gold)


@given(st.integers(-10**12, 10**12))
@settings(max_examples=200, deadline=None)
def test_integers_survive_formatting(n):
    assert answers_match(f"{n:,}", str(n))
    assert answers_match(f"${n}.00", str(n)) if n >= 0 else True
    assert not answers_match(str(n + 1), str(n))


@given(st.integers(-999, 999), st.sampled_from([1, 2, 4, 5, 8, 10, 16, 20, 25, 40]))
@settings(max_examples=200, deadline=None)
def test_fractions_equal_their_decimals(p, q):
    decimal = str(float(Fraction(p, q)))  # exact: q has only the factors 2 and 5
    assert numbers_equal(f"{p}/{q}", decimal)
    assert answers_match(f"\\frac{{{p}}}{{{q}}}", decimal) if p >= 0 else True


FRAGMENTS = st.sampled_from(["\\boxed{", "\\fbox", "{", "}", "####", "###", "$", "\\$", "%", ",", ".", "/",
                             "-", "\u2212", "The answer is", ":", "\\frac{", "\\text{", "x =", "\n", " ",
                             "9" * 50, "1e5", "0", "²", "٣", "\\left(", "^\\circ"])
TEXT = st.lists(st.one_of(FRAGMENTS, st.text(max_size=8)), max_size=30).map("".join)


@given(TEXT, TEXT)
@settings(max_examples=400, deadline=None)
def test_nothing_raises_on_arbitrary_text(a, b):
    extracted = extract_answer(a)
    assert extracted is None or isinstance(extracted, str)
    assert isinstance(answers_match(a, b), bool)
    assert isinstance(answers_match(extracted, b), bool)
    assert isinstance(numbers_equal(a, b), bool)
    parse_number(a)
    normalize_answer(a)
    last_boxed(a)


def test_huge_numbers_do_not_raise():
    big = "9" * 5000  # beyond Python's int-from-string digit limit
    assert extract_answer(f"#### {big}") == big
    assert answers_match(big, big)  # compared as text when too long for a number
    assert not numbers_equal(big, "1")


# --------------------------------------------------------------------------- MATH-style answers: math-verify
@pytest.mark.parametrize("predicted, gold", [
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}"), ("\\sqrt{3}/2", "\\frac{\\sqrt3}{2}"),  # fractions and roots
    ("(0,1]", "(0, 1]"), ("\\{2, 1\\}", "\\{1,2\\}"),  # an interval, a set in another order
    ("y = 1 + 2x", "y=2x+1"), ("2 \\pi", "2\\pi"), ("6.283185307", "2\\pi"),  # an equation, pi
    ("5\\sqrt{2}", "5\\sqrt{2}\\text{ cm}"), ("5\\sqrt2 \\mbox{ inches}", "5\\sqrt{2}"),  # units
    ("\\frac{1}{2}", "\\dfrac12"), ("x \\in [1, \\infty)", "[1,\\infty)"),
])
def test_math_verify_accepts_equivalent_answers(predicted, gold):
    assert check_math_answer(predicted, gold) == (True, "math-verify")


@pytest.mark.parametrize("predicted, gold", [
    ("[0,1]", "(0, 1]"), ("\\{1,3\\}", "\\{1,2\\}"), ("y=2x-1", "y=2x+1"), ("6.28", "2\\pi"),
    ("3", "\\frac{\\sqrt3}{2}"), ("\\sqrt{2}", "\\frac{\\sqrt3}{2}"), ("4\\sqrt2", "5\\sqrt{2}\\text{ cm}"),
    (None, "2\\pi"), ("x" * 5000, "2\\pi"),
])
def test_math_verify_refuses_different_answers(predicted, gold):
    assert check_math_answer(predicted, gold) == (False, "math-verify")


def test_a_number_is_checked_numerically_and_the_rule_says_so():
    assert check_math_answer("1,000", "1000") == (True, "numeric")
    assert check_math_answer("1000000001", "1000000000") == (False, "numeric")  # integers are exact
    assert check_math_answer("10", "10\\text{ cm}") == (True, "numeric")  # one number with a unit
    task = get_task("gsm8k")
    gsm8k, math = Example("q", ["s"], "18"), Example("q", ["s"], "\\frac{\\sqrt3}{2}")
    assert [task.answer_rule_of(e) for e in (gsm8k, math)] == ["numeric", "math-verify"]
    assert task.verify(math, "so $\\boxed{\\frac{\\sqrt{3}}{2}}$").correct
    assert not task.verify(math, "### \\frac{\\sqrt{2}}{2}").correct
