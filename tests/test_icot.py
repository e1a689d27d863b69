"""iCoT (stepwise internalization): the removal schedule, the smoothing draws, the sequences,
optimizer resets exactly when the removal count changes, and a model that answers without a trace."""

from __future__ import annotations

import json

import numpy as np
import pytest
import stage2_toy

from token_assorted.cli import main
from token_assorted.core.errors import ConfigError
from token_assorted.data.encoding import EncodedExample
from token_assorted.generation.config import GenerationConfig
from token_assorted.lm.config import TrainConfig
from token_assorted.lm.methods.icot import ALL_REMOVED, RemovalSchedule, internalized_sequence, smoothing_offset
from token_assorted.lm.mixing import IGNORE_INDEX, example_rng
from token_assorted.lm.train import train_lm

stage2_toy.register()
EXAMPLE = EncodedExample(prompt_ids=[1, 10, 11], trace_ids=list(range(20, 40)), solution_ids=[30, 2])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return stage2_toy.write_data(tmp_path_factory.mktemp("toy"))


def test_the_removed_count_follows_the_schedule():
    schedule = RemovalSchedule(tokens_per_epoch=8, epochs=6, final_epochs=2, smoothing_lambda=None)
    assert [schedule.scheduled(e) for e in range(6)] == [0, 8, 16, 24, ALL_REMOVED, ALL_REMOVED]
    rng = np.random.default_rng(0)
    assert [schedule.removed(20, e, rng) for e in range(6)] == [0, 8, 16, 20, 20, 20]  # at most the whole trace
    for epoch, removed in enumerate([0, 8, 16, 20, 20, 20]):
        sequence = internalized_sequence(EXAMPLE, schedule.removed(20, epoch, rng))
        assert sequence.input_ids == EXAMPLE.prompt_ids + EXAMPLE.trace_ids[removed:] + EXAMPLE.solution_ids
        assert sequence.labels == [IGNORE_INDEX] * 3 + EXAMPLE.trace_ids[removed:] + EXAMPLE.solution_ids


def test_smoothing_draws_are_reproducible_and_geometric():
    schedule = RemovalSchedule(tokens_per_epoch=4, epochs=10, final_epochs=1, smoothing_lambda=1.0)
    draws = [schedule.removed(100, 3, example_rng(0, 3, i)) for i in range(4000)]
    assert draws == [schedule.removed(100, 3, example_rng(0, 3, i)) for i in range(4000)]  # resume-exact
    assert draws != [schedule.removed(100, 3, example_rng(1, 3, i)) for i in range(4000)]  # another seed
    extra = np.array(draws) - 12
    assert extra.min() == 0 and extra.max() >= 3
    # P(o) ∝ exp(−λ o): P(0) = 1 − e^(−1) = 0.632, P(1) = 0.233
    assert abs((extra == 0).mean() - 0.632) < 0.03 and abs((extra == 1).mean() - 0.233) < 0.03
    # no smoothing before removal starts, and none in the final epochs (everything is gone)
    assert {schedule.removed(100, 0, example_rng(0, 0, i)) for i in range(200)} == {0}
    assert {schedule.removed(100, 9, example_rng(0, 9, i)) for i in range(200)} == {100}
    # the paper's lambda: about 98 % of sequences lose no extra token
    paper = [smoothing_offset(4.0, example_rng(0, 1, i)) for i in range(4000)]
    assert abs(np.mean(np.array(paper) == 0) - 0.982) < 0.01


def test_bad_schedules_are_config_errors():
    with pytest.raises(ConfigError, match="icot_tokens_per_epoch"):
        RemovalSchedule(0, 4, 1, None)
    with pytest.raises(ConfigError, match="icot_final_epochs"):
        RemovalSchedule(8, 4, 5, None)
    with pytest.raises(ConfigError, match="icot_smoothing_lambda"):
        RemovalSchedule(8, 4, 1, 0.0)


def test_optimizer_resets_when_the_count_changes_and_only_then(data, tmp_path):
    # phases 0, 2, 4, all, all: fresh moments at epochs 2, 3, 4 (1-based), not at 5
    out = train_lm(TrainConfig(task="toy", data=str(data["train"]), valid=str(data["valid"]), out=str(tmp_path / "m"),
                               strategy="icot", tokenizer=str(data["tokenizer"]), epochs=5, batch_size=16, lr=3e-3,
                               icot_tokens_per_epoch=2, icot_final_epochs=2, validation=GenerationConfig(limit=4),
                               progress=False))
    meta = json.loads((out / "token_assorted.json").read_text())
    assert [h.get("optimizer_reset", False) for h in meta["history"]] == [False, True, True, True, False]
    assert meta["best_epoch"] in (4, 5)  # only epochs without any trace may give the model
    assert meta["icot"] == {"tokens_per_epoch": 2, "final_epochs": 2, "smoothing_lambda": 4.0,
                            "removed_tokens": "all"}
    assert meta["latent_vocab"] is None  # a text method: no latent rows without a VQ-VAE


def test_cli_trains_and_evaluates_like_sol_only(data, tmp_path):
    out = tmp_path / "icot"
    assert main(["train", "--task", "toy", "--strategy", "icot", "--data", str(data["train"]), "--tokenizer",
                 str(data["tokenizer"]), "--out", str(out), "--epochs", "3", "--batch-size", "16",
                 "--icot-tokens-per-epoch", "3", "--no-progress"]) == 0
    assert main(["eval", "--model", str(out), "--data", str(data["valid"]), "--out", str(tmp_path / "r.json"),
                 "--max-new-tokens", "12"]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["avg_latent_tokens"] == 0 and result["n"] == 8


def test_resume_refuses_another_schedule(data, tmp_path):
    base = dict(task="toy", data=str(data["train"]), out=str(tmp_path / "m"), strategy="icot",
                tokenizer=str(data["tokenizer"]), epochs=2, batch_size=16, icot_tokens_per_epoch=2, progress=False,
                max_steps=4)  # one epoch of 4 steps: its state is saved
    train_lm(TrainConfig(**base))
    with pytest.raises(ConfigError, match="icot_tokens_per_epoch 2 there, 3 now"):
        train_lm(TrainConfig(**{**base, "icot_tokens_per_epoch": 3, "resume": True, "max_steps": None}))
