"""The paper's claim, checked on one run: four checks beside their thresholds, one line of information.

Token Assorted's claim (Su et al. 2025, sections 4.1-4.2 and Table 4.1) is that a model that
opens its answer with latent codes answers at least as accurately as CoT in far fewer tokens,
and better than answering directly: on ProsQA it reaches 96.2 % in 10.9 tokens, where CoT
gets 77.5 % in 49.4 and Sol-Only 76.7 % (Coconut's Table 1 rows, which the paper reuses).
`run` checks the claim in that shape:

1. Token Assorted ≥ CoT in at most `token_ratio` of CoT's generated tokens (the paper: 22 %);
2. Token Assorted beats Sol-Only (accuracy strictly higher);
3. the codes matter: Token Assorted loses at least `reliance` when its codes are replaced by
   random ones as it writes them (probes.py), and beats TA-Pause (the same positions with a
   content-free `<pause>`, strategy `pause`);
4. CoT learns the task: at least `cot_accuracy`.

Sol-Only's gap to CoT is reported beside them as information, not as a check: the paper's own
ProsQA rows have Sol-Only within a point of CoT, so "reasoning is needed" in the sense
"CoT − Sol-Only is large" is not part of its claim (check 2 is).

A check whose methods were not run (no TA-Pause, no probes) is reported as not measured, never
as passed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..core.config import Bound, within
from ..lm.methods import display_name

PAUSE_NAME = display_name("pause")  # TA-Pause


@dataclass
class ClaimThresholds:
    """The thresholds of the checks (a preset's `claims` section; fractions, not percent)."""

    token_ratio: float = 0.50  # Token Assorted's generated tokens at most this share of CoT's
    reliance: float = 0.10  # accuracy Token Assorted loses with random codes, at least
    cot_accuracy: float = 0.85  # CoT at least this accurate: the task is learnt

    LIMITS: ClassVar[dict[str, Bound]] = {name: within(0.0, 1.0) for name in
                                          ("token_ratio", "reliance", "cot_accuracy")}


@dataclass(frozen=True)
class Check:
    """One line: what was measured, the threshold, and whether it holds (None: not measured, or information)."""

    claim: str
    measured: str
    threshold: str
    passed: bool | None
    information: bool = False  # reported beside the checks, never counted as one


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def check_claims(methods: Sequence[dict[str, Any]], thresholds: ClaimThresholds) -> list[Check]:
    """The four checks and the information line on results.json's `methods` (display names)."""
    by_name = {m["name"]: m for m in methods}
    sol, cot, ta, pause = (by_name.get(n) for n in ("Sol-Only", "CoT", "Token Assorted", PAUSE_NAME))
    checks = [_claim(ta, cot, thresholds), _beats_sol_only(ta, sol), _codes_matter(ta, pause, thresholds)]
    if cot:
        checks.append(Check("CoT learns the task", _pct(cot["accuracy"]), f"≥ {_pct(thresholds.cot_accuracy)}",
                            cot["accuracy"] >= thresholds.cot_accuracy))
    else:
        checks.append(Check("CoT learns the task", "not run", "", None))
    if sol and cot:
        gap = cot["accuracy"] - sol["accuracy"]
        checks.append(Check("CoT − Sol-Only (information)", f"{100 * gap:+.1f} points", "", None, information=True))
    return checks


def _claim(ta: dict[str, Any] | None, cot: dict[str, Any] | None, thresholds: ClaimThresholds) -> Check:
    name = "Token Assorted ≥ CoT in few tokens"
    if not (ta and cot and cot["avg_generated_tokens"] > 0):
        return Check(name, "not run", "", None)
    ratio = ta["avg_generated_tokens"] / cot["avg_generated_tokens"]
    measured = (f"{_pct(ta['accuracy'])} vs CoT {_pct(cot['accuracy'])}, "
                f"in {100 * ratio:.0f} % of CoT's tokens")
    return Check(name, measured, f"≥ CoT, ≤ {100 * thresholds.token_ratio:.0f} % of its tokens",
                 ta["accuracy"] >= cot["accuracy"] and ratio <= thresholds.token_ratio)


def _beats_sol_only(ta: dict[str, Any] | None, sol: dict[str, Any] | None) -> Check:
    name = "Token Assorted beats Sol-Only"
    if not (ta and sol):
        return Check(name, "not run", "", None)
    margin = ta["accuracy"] - sol["accuracy"]
    return Check(name, f"{_pct(ta['accuracy'])} vs Sol-Only {_pct(sol['accuracy'])} ({100 * margin:+.1f} points)",
                 "> Sol-Only", margin > 0)


def _codes_matter(ta: dict[str, Any] | None, pause: dict[str, Any] | None, thresholds: ClaimThresholds) -> Check:
    name = "the codes matter (random codes; TA-Pause)"
    threshold = f"loses ≥ {100 * thresholds.reliance:.0f} points; > TA-Pause"
    reliance = None if ta is None else ta.get("latent_reliance")
    if reliance is None:
        return Check(name, "not measured (no probes)", threshold, None)
    measured = f"loses {100 * reliance:.1f} points"
    if pause is None:  # the reliance alone can already fail the check, never pass it
        failed = reliance < thresholds.reliance
        return Check(name, measured + "; TA-Pause not run (--strategies pause)", threshold,
                     False if failed else None)
    margin = ta["accuracy"] - pause["accuracy"]
    return Check(name, f"{measured}; {100 * margin:+.1f} points over TA-Pause ({_pct(pause['accuracy'])})",
                 threshold, reliance >= thresholds.reliance and margin > 0)


def _mark(check: Check) -> str:
    if check.information:
        return "(information)"
    return {True: "yes", False: "**no**", None: "–"}[check.passed]


def claims_section(checks: Sequence[Check]) -> list[str]:
    """report.md's section: the checks as a table."""
    lines = ["## The paper's claim on this run", "",
             "Token Assorted's claim is that latent codes let a model answer at least as accurately as CoT in "
             "far fewer tokens, and better than answering directly. Four checks, each beside its threshold (a "
             "preset's `claims` section), and Sol-Only's gap to CoT as information:", "",
             "| check | measured | threshold | holds |", "|---|---|---|---|"]
    lines += [f"| {c.claim} | {c.measured} | {c.threshold or '–'} | {_mark(c)} |" for c in checks]
    return lines + [""]


def claims_lines(checks: Sequence[Check]) -> list[str]:
    """The same lines for the terminal (what `run` prints last)."""
    word = {True: "holds", False: "FAILS", None: "not measured"}
    return [f"  {c.claim:<42} {c.measured}" + ("" if c.information else f"  [{c.threshold or '–'}: {word[c.passed]}]")
            for c in checks]
