"""The paper's claim, checked on one run: four quantities beside their thresholds.

Token Assorted claims that, at equal model size and data, on a task where answering directly
fails, a model that opens its answer with latent codes answers at least as accurately as CoT
in far fewer tokens. A run can only support that when it also shows the task needs reasoning
and that the codes, not just the extra positions they occupy, do the work. So `run` reports:

1. reasoning is needed: Sol-Only at least `sol_only_gap` below CoT;
2. CoT learns the task: at least `cot_accuracy`;
3. the claim: Token Assorted at least as accurate as CoT in at most `token_ratio` of its tokens;
4. the codes matter: Token Assorted loses at least `reliance` when its codes are replaced by
   random ones as it writes them (probes.py), and beats the pause control (same positions,
   no content).

A check whose methods were not run (no Pause, no probes) is reported as not measured, never
as passed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..core.config import Bound, within


@dataclass
class ClaimThresholds:
    """The four thresholds (a preset's `claims` section; fractions, not percent)."""

    sol_only_gap: float = 0.15  # Sol-Only at least this far below CoT: reasoning is needed
    cot_accuracy: float = 0.85  # CoT at least this accurate: the task is learnt
    token_ratio: float = 0.50  # Token Assorted's generated tokens at most this share of CoT's
    reliance: float = 0.10  # accuracy Token Assorted loses with random codes, at least

    LIMITS: ClassVar[dict[str, Bound]] = {name: within(0.0, 1.0) for name in
                                          ("sol_only_gap", "cot_accuracy", "token_ratio", "reliance")}


@dataclass(frozen=True)
class Check:
    """One of the four: what was measured, the threshold, and whether it holds (None: not measured)."""

    claim: str
    measured: str
    threshold: str
    passed: bool | None


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def check_claims(methods: Sequence[dict[str, Any]], thresholds: ClaimThresholds) -> list[Check]:
    """The four checks on results.json's `methods` (display names: Sol-Only, CoT, Token Assorted, Pause)."""
    by_name = {m["name"]: m for m in methods}
    sol, cot, ta, pause = (by_name.get(n) for n in ("Sol-Only", "CoT", "Token Assorted", "Pause"))
    checks = []
    if sol and cot:
        gap = cot["accuracy"] - sol["accuracy"]
        checks.append(Check("reasoning is needed (CoT − Sol-Only)", f"{100 * gap:+.1f} points",
                            f"≥ {100 * thresholds.sol_only_gap:.0f} points", gap >= thresholds.sol_only_gap))
    else:
        checks.append(Check("reasoning is needed (CoT − Sol-Only)", "not run", "", None))
    if cot:
        checks.append(Check("CoT learns the task", _pct(cot["accuracy"]), f"≥ {_pct(thresholds.cot_accuracy)}",
                            cot["accuracy"] >= thresholds.cot_accuracy))
    else:
        checks.append(Check("CoT learns the task", "not run", "", None))
    checks.append(_claim(ta, cot, thresholds))
    checks.append(_codes_matter(ta, pause, thresholds))
    return checks


def _claim(ta: dict[str, Any] | None, cot: dict[str, Any] | None, thresholds: ClaimThresholds) -> Check:
    name = "Token Assorted ≥ CoT in fewer tokens"
    if not (ta and cot and cot["avg_generated_tokens"] > 0):
        return Check(name, "not run", "", None)
    ratio = ta["avg_generated_tokens"] / cot["avg_generated_tokens"]
    measured = (f"{_pct(ta['accuracy'])} vs CoT {_pct(cot['accuracy'])}, "
                f"in {100 * ratio:.0f} % of CoT's tokens")
    return Check(name, measured, f"≥ CoT, ≤ {100 * thresholds.token_ratio:.0f} % of its tokens",
                 ta["accuracy"] >= cot["accuracy"] and ratio <= thresholds.token_ratio)


def _codes_matter(ta: dict[str, Any] | None, pause: dict[str, Any] | None, thresholds: ClaimThresholds) -> Check:
    name = "the codes matter (random codes; Pause)"
    threshold = f"loses ≥ {100 * thresholds.reliance:.0f} points; > Pause"
    reliance = None if ta is None else ta.get("latent_reliance")
    if reliance is None:
        return Check(name, "not measured (no probes)", threshold, None)
    measured = f"loses {100 * reliance:.1f} points"
    if pause is None:  # the reliance alone can already fail the check, never pass it
        failed = reliance < thresholds.reliance
        return Check(name, measured + "; Pause not run (--strategies pause)", threshold, False if failed else None)
    margin = ta["accuracy"] - pause["accuracy"]
    return Check(name, f"{measured}; {100 * margin:+.1f} points over Pause ({_pct(pause['accuracy'])})",
                 threshold, reliance >= thresholds.reliance and margin > 0)


def _mark(passed: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "–"}[passed]


def claims_section(checks: Sequence[Check]) -> list[str]:
    """report.md's section: the four checks as a table."""
    lines = ["## The paper's claim on this run", "",
             "Token Assorted's claim is that, on a task where answering directly fails, latent codes let a "
             "model answer at least as accurately as CoT in far fewer tokens. Four checks, each beside its "
             "threshold (a preset's `claims` section):", "",
             "| check | measured | threshold | holds |", "|---|---|---|---|"]
    lines += [f"| {c.claim} | {c.measured} | {c.threshold or '–'} | {_mark(c.passed)} |" for c in checks]
    return lines + [""]


def claims_lines(checks: Sequence[Check]) -> list[str]:
    """The same four checks as terminal lines (what `run` prints last)."""
    word = {True: "holds", False: "FAILS", None: "not measured"}
    return [f"  {c.claim:<42} {c.measured}  [{c.threshold or '–'}: {word[c.passed]}]" for c in checks]
