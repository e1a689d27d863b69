"""iCoT, stepwise internalization (Deng, Choi, Shieber 2024, arXiv 2405.14838), as strategy `icot`.

Training starts on the full chain of thought and deletes a growing number of trace tokens
from its start, so the model learns to do in its hidden states what the deleted text did:

    epoch e:   prompt ⊕ c_{k+1} … c_t ⊕ solution,   k = tokens_per_epoch × e (+ smoothing)

Deng et al. remove 8 tokens per epoch (`icot_tokens_per_epoch`). The last `icot_final_epochs`
epochs train with the whole trace removed, so the model ends up answering with no trace at
all; it is evaluated like Sol-Only (greedy, whatever it writes), and only those epochs may
give the saved model (an earlier epoch's model still writes part of a trace).

Removal smoothing. Once removal has started (k > 0), each time an example is seen o extra
tokens go too, with P(o) ∝ exp(−λ o) over o = 0 … 100 (λ = `icot_smoothing_lambda`, 4 in
the paper: 98 % of sequences lose none, 1.8 % one more). It is drawn from the example's own
generator (`mixing.example_rng(seed, epoch, index)`, as every strategy's draws), so the same
(seed, epoch, example) always loses the same tokens and a resumed run draws the same.

Optimizer. Its state is reset (fresh AdamW moments, the learning-rate schedule continuing)
at the start of every epoch whose scheduled count differs from the previous epoch's: the
method's phase (`methods.Method.phase`).

One deviation from the paper, which raises the count gradually within an epoch (one more
token every 1/8 of an epoch, resetting the optimizer each time): here the count changes
at epoch boundaries, so every epoch trains at one removal count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...core.errors import ConfigError
from ...data.encoding import EncodedExample
from ..mixing import IGNORE_INDEX, CoT, MixedSequence, Strategy, collate, example_rng
from .base import Method

ALL_REMOVED = -1  # the phase of the final epochs: the whole trace removed
SMOOTHING_SUPPORT = 101  # extra tokens o = 0 … 100 (Deng et al. truncate the distribution there too)


@dataclass(frozen=True)
class RemovalSchedule:
    """How many leading trace tokens an epoch removes."""

    tokens_per_epoch: int  # removed per epoch (Deng et al.: 8)
    epochs: int  # of the whole run
    final_epochs: int  # the last epochs remove the whole trace
    smoothing_lambda: float | None  # λ of the removal smoothing (None: off)

    def __post_init__(self) -> None:
        if self.tokens_per_epoch < 1:
            raise ConfigError(f"icot_tokens_per_epoch must be >= 1, got {self.tokens_per_epoch}")
        if not 0 <= self.final_epochs <= self.epochs:
            raise ConfigError(f"icot_final_epochs must be between 0 and epochs ({self.epochs}), "
                              f"got {self.final_epochs}")
        if self.smoothing_lambda is not None and self.smoothing_lambda <= 0:
            raise ConfigError(f"icot_smoothing_lambda must be > 0 (or null: no smoothing), "
                              f"got {self.smoothing_lambda}")

    def scheduled(self, epoch: int) -> int:
        """Tokens the schedule removes at `epoch`; ALL_REMOVED in the final epochs."""
        if epoch >= self.epochs - self.final_epochs:
            return ALL_REMOVED
        return self.tokens_per_epoch * epoch

    def removed(self, trace_length: int, epoch: int, rng: np.random.Generator) -> int:
        """Tokens removed from a trace of `trace_length` this time it is seen (smoothing included)."""
        scheduled = self.scheduled(epoch)
        if scheduled == ALL_REMOVED:
            return trace_length
        extra = smoothing_offset(self.smoothing_lambda, rng) if scheduled > 0 else 0
        return min(trace_length, scheduled + extra)


def smoothing_offset(smoothing_lambda: float | None, rng: np.random.Generator) -> int:
    """Extra tokens o >= 0 with P(o) ∝ exp(−λ o) (truncated at 100); 0 without smoothing."""
    if smoothing_lambda is None:
        return 0
    weights = np.exp(-smoothing_lambda * np.arange(SMOOTHING_SUPPORT))
    # Inverse CDF of one uniform draw: one number from the example's generator per sequence.
    cumulative = np.cumsum(weights / weights.sum())
    return int(min(np.searchsorted(cumulative, rng.random(), side="right"), SMOOTHING_SUPPORT - 1))


def internalized_sequence(encoded: EncodedExample, removed: int) -> MixedSequence:
    """prompt ⊕ the trace without its first `removed` tokens ⊕ solution; loss after the prompt."""
    target = list(encoded.trace_ids[removed:]) + list(encoded.solution_ids)
    return MixedSequence(list(encoded.prompt_ids) + target, [IGNORE_INDEX] * len(encoded.prompt_ids) + target, 0)


class StepwiseInternalization(Method):
    """Strategy `icot`: text sequences whose trace loses its first tokens epoch by epoch."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.schedule = RemovalSchedule(config.icot_tokens_per_epoch, config.epochs, config.icot_final_epochs,
                                        config.icot_smoothing_lambda)

    @staticmethod
    def chunk_strategy(config: Any) -> Strategy:
        return CoT()  # text only: no codes, the baselines' vocabulary

    def batch(self, run: Any, indices: Sequence[int], seed: int, epoch: int) -> dict:
        sequences = []
        for i in indices:
            trace = run.encoded[i].trace_ids
            removed = self.schedule.removed(len(trace), epoch, example_rng(seed, epoch, i))
            sequences.append(internalized_sequence(run.encoded[i], removed))
        return collate(sequences, run.tokenizer.pad_token_id)

    def phase(self, epoch: int) -> int:
        return self.schedule.scheduled(epoch)

    def selectable(self, epoch: int) -> bool:
        return self.schedule.scheduled(epoch) == ALL_REMOVED

    def meta(self, epoch: int) -> dict[str, Any]:
        scheduled = self.schedule.scheduled(epoch)
        return {"icot": {"tokens_per_epoch": self.schedule.tokens_per_epoch,
                         "final_epochs": self.schedule.final_epochs,
                         "smoothing_lambda": self.schedule.smoothing_lambda,
                         "removed_tokens": "all" if scheduled == ALL_REMOVED else scheduled}}
