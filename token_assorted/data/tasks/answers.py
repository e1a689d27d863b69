"""Math answers: pulling the final answer out of a solution and comparing two answers.

`extract_answer` reads, in order of trust: a `#### N` (GSM8K) or `### N` (this project's
solution marker) line, the last `\\boxed{…}` (MATH; nested braces), a "The answer is …"
sentence (MetaMathQA), and finally the last number in the text. `answers_match` compares
numerically when both sides read as one number with optional currency, percent sign,
units or trailing words ("$1,000.00", "18 dollars", "3/4", "\\frac{3}{4}"), and as
normalised strings otherwise (so "\\frac{\\sqrt3}{2}" is never mistaken for the number 3).

`check_math_answer` is what the math task scores with, and says which rule it used:

- ``numeric`` when the gold answer is one number (every GSM8K answer): `answers_match`,
  exact for integers;
- ``math-verify`` otherwise (MATH-style LaTeX: ``\\frac{\\sqrt3}{2}``, ``(0, 1]``,
  ``\\{1, 2\\}``, ``x = 5``, ``2\\pi``, ``10\\text{ cm}``): both answers parsed to SymPy by
  the `math-verify` package (HuggingFace's, used by lighteval and open-r1) and compared
  symbolically; equal normalised text counts too, so nothing the string rule accepted is lost.

Nothing here raises on any string: a model's output is arbitrary text.
"""

from __future__ import annotations

import functools
import re
import threading
from fractions import Fraction
from typing import Any

_MARKER = re.compile(r"#{3,}[ \t]*([^\n#]*)")
_ANSWER_IS = re.compile(r"answer is[ \t]*:?[ \t]*([^\n]*)", re.IGNORECASE)
_LAST_NUMBER = re.compile(r"-?[0-9][0-9,]*(?:\.[0-9]+)?|-?\.[0-9]+")
_NUMBER = r"(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]*)?|\.[0-9]+"
_NUMERIC = re.compile(rf"(-?)\s*({_NUMBER})(?:\s*/\s*({_NUMBER}))?(.*)", re.DOTALL)
_TAIL_OK = re.compile(r"[A-Za-z\s.,:;!?']*")  # units or words after the number, nothing mathematical
_FRAC = re.compile(r"\\[dt]?frac\{(-?[0-9.,]+)\}\{(-?[0-9.,]+)\}")
_TEXT_COMMAND = re.compile(r"\\(?:text|textbf|mathrm|mbox|mathbf)\{([^{}]*)\}")
_ASSIGNMENT = re.compile(r"^[A-Za-z]\s*=\s*")
_TOLERANCE = Fraction(1, 10**12)
_MAX_DIGITS = 1000  # longer "numbers" are noise; int() refuses beyond ~4300 digits anyway
NUMERIC, MATH_VERIFY = "numeric", "math-verify"  # the rules `check_math_answer` names
_MATH_VERIFY_SECONDS = 5  # per parse and per comparison: SymPy can hang on a hostile answer
_MAX_LATEX = 2000  # longer "answers" are rambling, not an answer; parsing them costs seconds


def extract_answer(text: str) -> str | None:
    """The final answer written in `text`, or None when there is none."""
    if not isinstance(text, str):
        return None
    markers = _MARKER.findall(text)
    if markers and markers[-1].strip():
        return _clean(markers[-1])
    boxed = last_boxed(text)
    if boxed is not None and boxed.strip():
        return _clean(boxed)
    stated = _ANSWER_IS.findall(text)
    if stated and stated[-1].strip():
        return _clean(stated[-1])
    numbers = _LAST_NUMBER.findall(text)
    return _clean(numbers[-1]) if numbers else None


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{…}` (or `\\fbox{…}`), nested braces included."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        rest = text[start:].split(None, 1)  # `\boxed 5` without braces
        return rest[1].split("$")[0] if len(rest) == 2 else None
    depth = 0
    for position in range(brace, len(text)):
        depth += {"{": 1, "}": -1}.get(text[position], 0)
        if depth == 0:
            return text[brace + 1:position]
    return None  # unbalanced: the model stopped mid-answer


def _clean(answer: str) -> str:
    answer = answer.strip()
    if answer.startswith("\\boxed") or answer.startswith("$\\boxed"):
        answer = last_boxed(answer) or answer
    return answer.strip().strip("$").strip().rstrip(".").strip()


def parse_number(answer: str) -> Fraction | None:
    """`answer` as an exact number when it is one number (with unit-like text), else None."""
    if not isinstance(answer, str) or len(answer) > 10 * _MAX_DIGITS:
        return None
    text = _strip_latex(answer)
    text = _ASSIGNMENT.sub("", text.strip())
    text = text.replace("\u2212", "-").lstrip("$").strip()
    match = _NUMERIC.fullmatch(text)
    if match is None or not _TAIL_OK.fullmatch(match.group(4)):
        return None
    sign, numerator, denominator, _ = match.groups()
    try:
        value = _fraction(numerator)
        if denominator is not None:
            below = _fraction(denominator)
            if below == 0:
                return None
            value /= below
    except (ValueError, ZeroDivisionError):
        return None
    return -value if sign else value


def _fraction(number: str) -> Fraction:
    digits = number.replace(",", "")
    if len(digits) > _MAX_DIGITS:
        raise ValueError("too many digits")
    return Fraction(digits.rstrip(".") or "0")


def _strip_latex(text: str) -> str:
    text = _TEXT_COMMAND.sub(r" \1", text)
    text = _FRAC.sub(r"\1/\2", text)
    for token in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\ ", "\\$", "\\%", "%", "$",
                  "^\\circ", "^{\\circ}", "\\circ"):
        text = text.replace(token, " " if token in ("\\ ", "\\,", "\\;") else "")
    return text


def normalize_answer(answer: str) -> str:
    """A canonical string of a non-numeric answer: LaTeX spacing and wrappers removed."""
    text = _strip_latex(answer.strip())
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = re.sub(r"\s+", "", text).rstrip(".").lower()
    return _ASSIGNMENT.sub("", text)


def numbers_equal(a: str, b: str) -> bool:
    """Whether `a` and `b` are the same number: exactly, or up to float rounding for decimals."""
    x, y = parse_number(a), parse_number(b)
    if x is None or y is None:
        return False
    if x == y:
        return True
    # Integers compare exactly (1000000001 is not 1000000000); decimals may carry float noise
    # such as 0.30000000000000004.
    both_integers = x.denominator == 1 and y.denominator == 1
    return not both_integers and abs(x - y) <= _TOLERANCE * max(1, abs(y))


def answers_match(predicted: str | None, gold: str | None) -> bool:
    """Whether a predicted answer equals the gold one, numerically or as normalised text."""
    if not isinstance(predicted, str) or not isinstance(gold, str):
        return False
    predicted, gold = _clean(predicted), _clean(gold)
    if not predicted or not gold:
        return False
    if parse_number(gold) is not None:
        return numbers_equal(predicted, gold)
    return normalize_answer(predicted) == normalize_answer(gold)


def answer_rule(gold: str) -> str:
    """Which rule checks answers against `gold`: numeric for one number, math-verify otherwise."""
    return NUMERIC if parse_number(_clean(gold)) is not None else MATH_VERIFY


def check_math_answer(predicted: str | None, gold: str) -> tuple[bool, str]:
    """Whether `predicted` equals `gold`, and the rule that decided it (`answer_rule`)."""
    rule = answer_rule(gold)
    if rule == NUMERIC:
        return answers_match(predicted, gold), rule
    return math_verify_match(predicted, gold), rule


def math_verify_match(predicted: str | None, gold: str | None) -> bool:
    """Symbolic equivalence by `math-verify` (or equal normalised text), for LaTeX answers."""
    if not isinstance(predicted, str) or not isinstance(gold, str):
        return False
    predicted, gold = _clean(predicted), _clean(gold)
    if not predicted or not gold or len(predicted) > _MAX_LATEX:
        return False
    if normalize_answer(predicted) == normalize_answer(gold):
        return True
    from math_verify import verify

    expected, given = _parsed(gold), _parsed(predicted)
    if not expected or not given:
        return False
    try:
        # gold first: math-verify's comparison is not symmetric (an equation may answer a number)
        return bool(verify(list(expected), list(given), timeout_seconds=_timeout()))
    except Exception:  # noqa: BLE001 - SymPy raises many types on odd input; not equal, then
        return False


@functools.lru_cache(maxsize=4096)
def _parsed(answer: str) -> tuple[Any, ...]:
    """`answer` (LaTeX or plain) as math-verify's parsed forms; a gold answer is parsed once."""
    from math_verify import LatexExtractionConfig, parse

    try:
        # Boxed, so the extraction takes the whole answer rather than hunting for one in it.
        return tuple(parse(f"\\boxed{{{answer}}}", extraction_config=[LatexExtractionConfig()],
                           parsing_timeout=_timeout()))
    except Exception:  # noqa: BLE001 - as above
        return ()


def _timeout() -> int | None:
    # math-verify times out with SIGALRM, which only the main thread may set; elsewhere it runs unbounded.
    return _MATH_VERIFY_SECONDS if threading.current_thread() is threading.main_thread() else None
