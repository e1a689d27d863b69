"""The four checks of the paper's claim (claims.py): each can hold, fail or be unmeasured; Sol-Only's gap
to CoT is information only."""

from __future__ import annotations

import pytest

from token_assorted.core.config import from_mapping
from token_assorted.core.errors import ConfigError
from token_assorted.evaluation.claims import ClaimThresholds, check_claims, claims_lines, claims_section


def method(name: str, accuracy: float, tokens: float, **extra) -> dict:
    return {"name": name, "accuracy": accuracy, "avg_generated_tokens": tokens, **extra}


def passing() -> list[dict]:
    return [method("Sol-Only", 0.60, 3.0), method("CoT", 0.90, 30.0),
            method("Token Assorted", 0.92, 12.0, latent_reliance=0.35), method("TA-Pause", 0.62, 12.0)]


def test_a_run_that_supports_the_claim_passes_all_four():
    checks = check_claims(passing(), ClaimThresholds())
    assert [c.passed for c in checks] == [True, True, True, True, None]
    assert [c.information for c in checks] == [False] * 4 + [True]
    assert "40 % of CoT's tokens" in checks[0].measured
    assert checks[4].measured == "+30.0 points"  # CoT − Sol-Only: reported, never a check


def test_the_paper_s_own_prosqa_row_passes_where_sol_only_ties_cot():
    # Coconut's Table 1 / Token Assorted's Table 4.1 on ProsQA: Sol-Only 76.7, CoT 77.5 (49.4 tokens),
    # Token Assorted 96.2 in 10.9 tokens: its claim holds though Sol-Only is within a point of CoT.
    methods = [method("Sol-Only", 0.767, 8.2), method("CoT", 0.775, 49.4),
               method("Token Assorted", 0.962, 10.9, latent_reliance=0.3), method("TA-Pause", 0.70, 10.9)]
    checks = check_claims(methods, ClaimThresholds(cot_accuracy=0.75))
    assert [c.passed for c in checks[:4]] == [True, True, True, True]


@pytest.mark.parametrize("index, name, changes", [
    (0, "Token Assorted", {"accuracy": 0.89}),  # below CoT
    (0, "Token Assorted", {"avg_generated_tokens": 16.0}),  # 53 % of CoT's tokens
    (1, "Sol-Only", {"accuracy": 0.92}),  # Sol-Only as good: the codes buy nothing over answering directly
    (2, "Token Assorted", {"latent_reliance": 0.05}),  # random codes cost too little
    (2, "TA-Pause", {"accuracy": 0.95}),  # the content-free control does better
    (3, "CoT", {"accuracy": 0.80}),  # CoT below 85 %
])
def test_each_check_fails_on_its_own_quantity(index, name, changes):
    methods = passing()
    next(m for m in methods if m["name"] == name).update(changes)
    checks = check_claims(methods, ClaimThresholds())
    assert checks[index].passed is False
    assert all(c.passed for i, c in enumerate(checks[:4]) if i != index)


def test_unmeasured_checks_are_never_reported_as_holding():
    methods = [m for m in passing() if m["name"] != "TA-Pause"]
    del methods[2]["latent_reliance"]
    checks = check_claims(methods, ClaimThresholds())
    assert checks[2].passed is None and "no probes" in checks[2].measured
    methods[2]["latent_reliance"] = 0.3
    checks = check_claims(methods, ClaimThresholds())
    assert checks[2].passed is None and "TA-Pause not run" in checks[2].measured
    methods[2]["latent_reliance"] = 0.02  # too little reliance fails whether or not TA-Pause ran
    assert check_claims(methods, ClaimThresholds())[2].passed is False
    methods[2]["latent_reliance"] = 0.3
    checks = check_claims(methods, ClaimThresholds())
    only_cot = check_claims([method("CoT", 0.9, 30.0)], ClaimThresholds())
    assert [c.passed for c in only_cot] == [None, None, None, True] and len(only_cot) == 4  # no gap line
    lines = "\n".join(claims_section(checks) + claims_lines(checks))
    assert "not measured" in lines and "| – |" in lines and "(information)" in lines


def test_thresholds_are_a_preset_section_with_limits():
    assert check_claims(passing(), ClaimThresholds(token_ratio=0.35))[0].passed is False
    with pytest.raises(ConfigError, match=r"claims: unknown key"):
        from_mapping(ClaimThresholds, {"sol_only_gap": 0.15}, "preset.yaml", "claims.")
    with pytest.raises(ConfigError, match=r"claims\.token_ratio: must be in"):
        from_mapping(ClaimThresholds, {"token_ratio": 1.5}, "preset.yaml", "claims.")
