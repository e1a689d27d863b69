"""The four checks of the paper's claim (claims.py): each can hold, fail or be unmeasured."""

from __future__ import annotations

import pytest

from token_assorted.core.config import from_mapping
from token_assorted.core.errors import ConfigError
from token_assorted.evaluation.claims import ClaimThresholds, check_claims, claims_lines, claims_section


def method(name: str, accuracy: float, tokens: float, **extra) -> dict:
    return {"name": name, "accuracy": accuracy, "avg_generated_tokens": tokens, **extra}


def passing() -> list[dict]:
    return [method("Sol-Only", 0.60, 3.0), method("CoT", 0.90, 30.0),
            method("Token Assorted", 0.92, 12.0, latent_reliance=0.35), method("Pause", 0.62, 12.0)]


def test_a_run_that_supports_the_claim_passes_all_four():
    checks = check_claims(passing(), ClaimThresholds())
    assert [c.passed for c in checks] == [True, True, True, True]
    assert "40 % of CoT's tokens" in checks[2].measured


@pytest.mark.parametrize("index, name, changes", [
    (0, "Sol-Only", {"accuracy": 0.80}),  # only 10 points below CoT: a shortcut answers it
    (1, "CoT", {"accuracy": 0.80}),  # CoT below 85 %
    (2, "Token Assorted", {"accuracy": 0.89}),  # below CoT
    (2, "Token Assorted", {"avg_generated_tokens": 16.0}),  # 53 % of CoT's tokens
    (3, "Token Assorted", {"latent_reliance": 0.05}),  # random codes cost too little
    (3, "Pause", {"accuracy": 0.95}),  # the content-free control does better
])
def test_each_check_fails_on_its_own_quantity(index, name, changes):
    methods = passing()
    next(m for m in methods if m["name"] == name).update(changes)
    checks = check_claims(methods, ClaimThresholds())
    assert checks[index].passed is False
    assert all(c.passed for i, c in enumerate(checks) if i != index)


def test_unmeasured_checks_are_never_reported_as_holding():
    methods = [m for m in passing() if m["name"] != "Pause"]
    del methods[2]["latent_reliance"]
    checks = check_claims(methods, ClaimThresholds())
    assert checks[3].passed is None and "no probes" in checks[3].measured
    methods[2]["latent_reliance"] = 0.3
    checks = check_claims(methods, ClaimThresholds())
    assert checks[3].passed is None and "Pause not run" in checks[3].measured
    methods[2]["latent_reliance"] = 0.02  # too little reliance fails whether or not Pause ran
    assert check_claims(methods, ClaimThresholds())[3].passed is False
    methods[2]["latent_reliance"] = 0.3
    checks = check_claims(methods, ClaimThresholds())
    assert check_claims([method("CoT", 0.9, 30.0)], ClaimThresholds())[2].passed is None
    lines = "\n".join(claims_section(checks) + claims_lines(checks))
    assert "not measured" in lines and "| – |" in lines


def test_thresholds_are_a_preset_section_with_limits():
    assert check_claims(passing(), ClaimThresholds(token_ratio=0.35))[2].passed is False
    with pytest.raises(ConfigError, match=r"claims\.token_ratio: must be in"):
        from_mapping(ClaimThresholds, {"token_ratio": 1.5}, "preset.yaml", "claims.")
