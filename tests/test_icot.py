"""iCoT (stepwise internalization): the removal count at every step against the reference's rule, the
smoothing draws, the sequences, optimizer resets exactly when the count changes, only trace-free models
kept, and a model that answers without a trace."""

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
from token_assorted.lm.methods.icot import (
    ALL_REMOVED,
    RemovalSchedule,
    internalized_sequence,
    smoothing_distribution,
    smoothing_offset,
)
from token_assorted.lm.mixing import IGNORE_INDEX, example_rng
from token_assorted.lm.train import train_lm

stage2_toy.register()
EXAMPLE = EncodedExample(prompt_ids=[1, 10, 11], trace_ids=list(range(20, 40)), solution_ids=[30, 2])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return stage2_toy.write_data(tmp_path_factory.mktemp("toy"))


def reference_counts(steps_per_epoch: int, remove_per_epoch: float, steps: int) -> list[int]:
    """scheduled_to_remove at each batch, by the rule of Deng et al.'s src/train.py (lines 242-261,
    pretrain_epochs 0, remove_start_from 0), restated: a counter of batches since the last removal."""
    per_token = int(round(steps_per_epoch / remove_per_epoch))
    scheduled, counter, counts = 0, 0, []
    for _ in range(steps):
        if counter == per_token or per_token == 0:
            scheduled, counter = scheduled + 1, 0
        counter += 1
        counts.append(scheduled)
    return counts


@pytest.mark.parametrize("steps_per_epoch, per_epoch", [(625, 3), (20, 8), (10, 4), (100, 8), (3, 8), (7, 2.5)])
def test_the_removal_count_at_each_step_is_the_reference_s(steps_per_epoch, per_epoch):
    # (20, 8): 2.5 steps per token, rounded half to even as Python's round: 2; (3, 8): 0, one per step
    schedule = RemovalSchedule(per_epoch, None, steps_per_epoch=steps_per_epoch, total_steps=5 * steps_per_epoch)
    steps = 5 * steps_per_epoch
    assert [schedule.scheduled(b) for b in range(steps)] == reference_counts(steps_per_epoch, per_epoch, steps)


def test_the_count_grows_within_an_epoch_and_the_whole_trace_goes_past_the_threshold():
    schedule = RemovalSchedule(8, None, remove_all_beyond=20, steps_per_epoch=80, total_steps=400, longest=30)
    assert [schedule.scheduled(b) for b in (0, 9, 10, 79, 80, 199, 200)] == [0, 0, 1, 7, 8, 19, ALL_REMOVED]
    assert not schedule.final(199) and schedule.final(200)  # all removed, though 20 < the longest trace
    rng = np.random.default_rng(0)
    for step, removed in [(0, 0), (35, 3), (199, 19), (250, 20)]:  # a 20-token trace
        assert schedule.removed(20, step, rng) == removed
        sequence = internalized_sequence(EXAMPLE, removed)
        assert sequence.input_ids == EXAMPLE.prompt_ids + EXAMPLE.trace_ids[removed:] + EXAMPLE.solution_ids
        assert sequence.labels == [IGNORE_INDEX] * 3 + EXAMPLE.trace_ids[removed:] + EXAMPLE.solution_ids
    # the final epochs (our option) remove everything; without a threshold the count must reach the longest
    final = RemovalSchedule(8, None, final_epochs=1, steps_per_epoch=80, total_steps=400, longest=100)
    assert final.scheduled(319) == 31 and final.scheduled(320) == ALL_REMOVED and final.final(320)
    plain = RemovalSchedule(8, None, steps_per_epoch=80, total_steps=400, longest=30)
    assert [plain.final(b) for b in (299, 300)] == [False, True]  # 30 tokens after 300 steps


def test_smoothing_draws_are_the_reference_s_distribution_from_count_zero():
    schedule = RemovalSchedule(4, 1.0, steps_per_epoch=40, total_steps=400)
    draws = [schedule.removed(100, 30, example_rng(0, 3, i)) for i in range(4000)]  # count 3 at step 30
    assert draws == [schedule.removed(100, 30, example_rng(0, 3, i)) for i in range(4000)]  # resume-exact
    assert draws != [schedule.removed(100, 30, example_rng(1, 3, i)) for i in range(4000)]  # another seed
    extra = np.array(draws) - 3
    assert extra.min() == 0 and extra.max() >= 3
    # P(o) = (1 − e^−λ) e^−λo: P(0) = 0.632, P(1) = 0.233
    assert abs((extra == 0).mean() - 0.632) < 0.03 and abs((extra == 1).mean() - 0.233) < 0.03
    # smoothing at count 0 too, as the reference whenever lambda is finite (train.py:280)
    assert {schedule.removed(100, 0, example_rng(0, 0, i)) for i in range(200)} > {0, 1}
    assert {RemovalSchedule(4, None, steps_per_epoch=40).removed(100, 0, example_rng(0, 0, i)) for i in range(200)} == {0}
    # the support is o = 0 … 99, the mass beyond on 99 (train.py:25-35)
    distribution = smoothing_distribution(0.01)
    assert len(distribution) == 100 and abs(distribution.sum() - 1) < 1e-12
    assert distribution[-1] > distribution[-2] and abs(distribution[0] - (1 - np.exp(-0.01))) < 1e-12
    # the paper's lambda: about 98 % of sequences lose no extra token
    paper = [smoothing_offset(4.0, example_rng(0, 1, i)) for i in range(4000)]
    assert abs(np.mean(np.array(paper) == 0) - 0.982) < 0.01


def test_bad_schedules_are_config_errors(data, tmp_path):
    with pytest.raises(ConfigError, match="icot_tokens_per_epoch"):
        RemovalSchedule(0, None)
    with pytest.raises(ConfigError, match="icot_smoothing_lambda"):
        RemovalSchedule(8, 0.0)
    with pytest.raises(ConfigError, match="icot_remove_all_beyond"):
        RemovalSchedule(8, None, remove_all_beyond=0)
    # a run that never removes the whole longest trace is refused before its first step
    with pytest.raises(ConfigError, match="never reached.*icot_tokens_per_epoch"):
        train_lm(TrainConfig(task="toy", data=str(data["train"]), out=str(tmp_path / "m"), strategy="icot",
                             tokenizer=str(data["tokenizer"]), epochs=1, batch_size=16, icot_tokens_per_epoch=1,
                             progress=False))


def test_optimizer_resets_when_the_count_changes_and_only_then(data, tmp_path):
    # 4 steps per epoch, 2 tokens per epoch: one more token every 2 steps; the longest toy trace is gone
    # at count L, so resets happen before steps 2, 4, … 2L and none after
    out = train_lm(TrainConfig(task="toy", data=str(data["train"]), valid=str(data["valid"]), out=str(tmp_path / "m"),
                               strategy="icot", tokenizer=str(data["tokenizer"]), epochs=5, batch_size=16, lr=3e-3,
                               icot_tokens_per_epoch=2, icot_remove_all_beyond=7, validation=GenerationConfig(limit=4),
                               progress=False))
    meta = json.loads((out / "token_assorted.json").read_text())
    # counts 0,0,1,1 | 2,2,3,3 | 4,4,5,5 | 6,6,all,all | all: a reset at every change (7 of them), none after
    assert [h.get("optimizer_resets", 0) for h in meta["history"]] == [1, 2, 2, 2, 0]
    assert [h["final_stage"] for h in meta["history"]] == [False, False, False, True, True]
    assert meta["checkpoint"]["final_stage"] and meta["best_epoch"] in (4, 5)  # only trace-free models
    assert meta["icot"] == {"tokens_per_epoch": 2.0, "remove_all_beyond": 7, "final_epochs": 0,
                            "smoothing_lambda": 4.0, "removed_tokens": "all"}
    assert meta["latent_vocab"] is None  # a text method: no latent rows without a VQ-VAE


def test_cli_trains_and_evaluates_like_sol_only(data, tmp_path):
    out = tmp_path / "icot"
    assert main(["train", "--task", "toy", "--strategy", "icot", "--data", str(data["train"]), "--tokenizer",
                 str(data["tokenizer"]), "--out", str(out), "--epochs", "3", "--batch-size", "16",
                 "--icot-tokens-per-epoch", "8", "--no-progress"]) == 0
    assert main(["eval", "--model", str(out), "--data", str(data["valid"]), "--out", str(tmp_path / "r.json"),
                 "--max-new-tokens", "12"]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["avg_latent_tokens"] == 0 and result["n"] == 8


def test_resume_refuses_another_schedule(data, tmp_path):
    base = dict(task="toy", data=str(data["train"]), out=str(tmp_path / "m"), strategy="icot",
                tokenizer=str(data["tokenizer"]), epochs=2, batch_size=16, icot_tokens_per_epoch=2, progress=False,
                icot_remove_all_beyond=1, max_steps=4)  # one epoch of 4 steps: its state is saved
    train_lm(TrainConfig(**base))
    with pytest.raises(ConfigError, match="icot_tokens_per_epoch 2 there, 3 now"):
        train_lm(TrainConfig(**{**base, "icot_tokens_per_epoch": 3, "resume": True, "max_steps": None}))
