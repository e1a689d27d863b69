"""iCoT, stepwise internalization (Deng, Choi, Shieber 2024, arXiv 2405.14838), as strategy `icot`.

Training starts on the full chain of thought and deletes a growing number of trace tokens
from its start, so the model learns to do in its hidden states what the deleted text did:

    step b:   prompt ⊕ c_{k+1} … c_t ⊕ solution,   k = scheduled(b) + o (removal smoothing)

The schedule is the reference's (da03/Internalize_CoT_Step_by_Step, src/train.py), counted in
optimizer steps:

- one more token every `round(steps_per_epoch / icot_tokens_per_epoch)` steps
  (train.py:243 and 256-261): scheduled(b) = b // that (b + 1 when it rounds to 0), so
  `icot_tokens_per_epoch` (8 in the paper) leave per epoch, progressively within it;
- once the count reaches `icot_remove_all_beyond` (train.py's `remove_all_when_remove_beyond`,
  default none) the whole trace goes (train.py:251-252, 269-270). Our `icot_final_epochs`
  (default 0) does the same for the run's last epochs: not in the reference;
- removal smoothing whenever λ is finite, count 0 included (train.py:280-284): o extra tokens
  with P(o) = (1 − e^−λ) e^−λo for o = 0 … 98 and the rest of the mass on o = 99
  (`compute_lambda_distribution`, train.py:25-35; λ = `icot_smoothing_lambda`, 4 in the paper;
  None: λ = ∞, no smoothing). Drawn from the example's own generator
  (`mixing.example_rng(seed, epoch, index)`), so a resumed run draws the same;
- a fresh optimizer (moments reset; the learning-rate schedule continuing) whenever the count
  changes (train.py:262-268), until every training trace is wholly removed (the reference stops
  once the previous batch had no trace left).

The final phase: every training trace wholly removed at the scheduled count. Only its steps may
give the saved model (the reference forgets its best accuracy whenever a batch still had
trace tokens, train.py:311-312), which then answers with no trace, and is evaluated like
Sol-Only (greedy, whatever it writes). The reference's learning rate is constant (train.py:231,
no scheduler); ours is every method's (`Method.lr_schedule`): the peak rate until the final
phase, cosine decay over it.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...core.errors import ConfigError
from ...data.encoding import EncodedExample
from ..mixing import IGNORE_INDEX, CoT, MixedSequence, Strategy, collate, example_rng
from .base import Method

ALL_REMOVED = -1  # the scheduled count once the whole trace goes
SMOOTHING_SUPPORT = 100  # extra tokens o = 0 … 99 (train.py:25, truncate_length=100)


@dataclass(frozen=True)
class RemovalSchedule:
    """How many leading trace tokens an optimizer step removes."""

    tokens_per_epoch: float  # removed per epoch (Deng et al.: 8)
    smoothing_lambda: float | None  # λ of the removal smoothing (None: off)
    remove_all_beyond: int | None = None  # a count at or past this removes the whole trace
    final_epochs: int = 0  # the run's last epochs remove the whole trace
    steps_per_epoch: int = 1
    total_steps: int = 0
    longest: int = 0  # the longest training trace, in tokens

    def __post_init__(self) -> None:
        if self.tokens_per_epoch <= 0:
            raise ConfigError(f"icot_tokens_per_epoch must be > 0, got {self.tokens_per_epoch}")
        if self.final_epochs < 0:
            raise ConfigError(f"icot_final_epochs must be >= 0, got {self.final_epochs}")
        if self.smoothing_lambda is not None and self.smoothing_lambda <= 0:
            raise ConfigError(f"icot_smoothing_lambda must be > 0 (or null: no smoothing), "
                              f"got {self.smoothing_lambda}")
        if self.remove_all_beyond is not None and self.remove_all_beyond < 1:
            raise ConfigError(f"icot_remove_all_beyond must be >= 1 (or null), got {self.remove_all_beyond}")

    @property
    def steps_per_token(self) -> int:
        """train.py:243: int(round(steps_per_epoch / remove_per_epoch)) (Python's round, half to even)."""
        return int(round(self.steps_per_epoch / self.tokens_per_epoch))

    def count(self, step: int) -> int:
        """The reference's scheduled_to_remove before step `step` (0-based), without the remove-all rules."""
        per = self.steps_per_token
        return step + 1 if per == 0 else step // per

    def scheduled(self, step: int) -> int:
        """Tokens the schedule removes at `step`; ALL_REMOVED once the whole trace goes."""
        if self.final_epochs and step >= self.total_steps - self.final_epochs * self.steps_per_epoch:
            return ALL_REMOVED
        count = self.count(step)
        if self.remove_all_beyond is not None and count >= self.remove_all_beyond:
            return ALL_REMOVED
        return count

    def removed(self, trace_length: int, step: int, rng: np.random.Generator) -> int:
        """Tokens removed from a trace of `trace_length` this time it is seen (smoothing included)."""
        scheduled = self.scheduled(step)
        if scheduled == ALL_REMOVED:
            return trace_length
        return min(trace_length, scheduled + smoothing_offset(self.smoothing_lambda, rng))

    def level(self, step: int) -> int:
        """The scheduled count capped at the longest trace: every trace gone at `longest`."""
        scheduled = self.scheduled(step)
        return self.longest if scheduled == ALL_REMOVED else min(scheduled, self.longest)

    def final(self, step: int) -> bool:
        return self.level(step) >= self.longest


def smoothing_distribution(smoothing_lambda: float) -> np.ndarray:
    """P(o) for o = 0 … 99: (1 − e^−λ) e^−λo, the mass beyond 99 added to o = 99 (train.py:25-35)."""
    positions = np.arange(SMOOTHING_SUPPORT)
    probabilities = (1 - math.exp(-smoothing_lambda)) * np.exp(-smoothing_lambda * positions)
    probabilities[-1] += 1 - probabilities.sum()
    return probabilities


def smoothing_offset(smoothing_lambda: float | None, rng: np.random.Generator) -> int:
    """Extra tokens o >= 0 drawn from `smoothing_distribution`; 0 without smoothing."""
    if smoothing_lambda is None:
        return 0
    cumulative = np.cumsum(smoothing_distribution(smoothing_lambda))
    # Inverse CDF of one uniform draw: one number from the example's generator per sequence.
    return int(min(np.searchsorted(cumulative, rng.random(), side="right"), SMOOTHING_SUPPORT - 1))


def internalized_sequence(encoded: EncodedExample, removed: int) -> MixedSequence:
    """prompt ⊕ the trace without its first `removed` tokens ⊕ solution; loss after the prompt."""
    target = list(encoded.trace_ids[removed:]) + list(encoded.solution_ids)
    return MixedSequence(list(encoded.prompt_ids) + target, [IGNORE_INDEX] * len(encoded.prompt_ids) + target, 0)


class StepwiseInternalization(Method):
    """Strategy `icot`: text sequences whose trace loses its first tokens step by step."""


    def __init__(self, config: Any) -> None:
        super().__init__(config)
        if config.icot_final_epochs > config.epochs:
            raise ConfigError(f"icot_final_epochs must be between 0 and epochs ({config.epochs}), "
                              f"got {config.icot_final_epochs}")
        self.schedule = self._schedule(1, 0, 0)

    def _schedule(self, steps_per_epoch: int, total_steps: int, longest: int) -> RemovalSchedule:
        config = self.config
        return RemovalSchedule(config.icot_tokens_per_epoch, config.icot_smoothing_lambda,
                               config.icot_remove_all_beyond, config.icot_final_epochs, steps_per_epoch,
                               total_steps, longest)

    @staticmethod
    def chunk_strategy(config: Any) -> Strategy:
        return CoT()  # text only: no codes, the baselines' vocabulary

    def plan(self, run: Any, steps_per_epoch: int, total_steps: int) -> None:
        longest = max((len(e.trace_ids) for e in run.encoded), default=0)
        self.schedule = self._schedule(steps_per_epoch, total_steps, longest)
        super().plan(run, steps_per_epoch, total_steps)

    def too_short_hint(self) -> str:
        return (f"the longest trace ({self.schedule.longest} tokens) is never wholly removed: raise "
                f"icot_tokens_per_epoch or set icot_remove_all_beyond or icot_final_epochs")

    def stage(self, step: int) -> int:
        return self.schedule.level(step)  # trace tokens removed (the longest trace's length: all)

    def final(self, step: int) -> bool:
        return self.schedule.final(step)

    def phase(self, step: int) -> Hashable:
        return self.schedule.level(step)

    def batch(self, run: Any, indices: Sequence[int], seed: int, epoch: int, step: int | None = None) -> dict:
        step = epoch * self.steps_per_epoch if step is None else step
        sequences = []
        for i in indices:
            trace = run.encoded[i].trace_ids
            removed = self.schedule.removed(len(trace), step, example_rng(seed, epoch, i))
            sequences.append(internalized_sequence(run.encoded[i], removed))
        return collate(sequences, run.tokenizer.pad_token_id)

    def meta(self, step: int) -> dict[str, Any]:
        scheduled = self.schedule.scheduled(step)
        return {"icot": {"tokens_per_epoch": self.schedule.tokens_per_epoch,
                         "remove_all_beyond": self.schedule.remove_all_beyond,
                         "final_epochs": self.schedule.final_epochs,
                         "smoothing_lambda": self.schedule.smoothing_lambda,
                         "removed_tokens": "all" if self.final(step) or scheduled == ALL_REMOVED else scheduled}}
