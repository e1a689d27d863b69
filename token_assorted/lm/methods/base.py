"""Stage-2 methods as the training loop and the evaluator see them.

A method says how training examples become batches and a loss, when the optimizer state
is reset, which steps belong to its final phase (only those may give the saved model), which
learning-rate schedule it trains with, how the model answers, and what is recorded beside it.
`Method` itself is every chunk strategy of `mixing.py` (Token Assorted, its baselines and
ablations): one mixed sequence per example, right-padded, one forward pass whose loss the
model computes, `model.generate` at inference. `CurriculumReplace` (`curriculum.py`) adds the
stages of the `curriculum` ablation.

The field's other latent-reasoning methods run in the same loop through these hooks, each
in its own module:

- ``coconut`` (`coconut.py`, Hao et al. 2024): continuous thoughts, one forward pass per
  thought, a stage curriculum, its own generation loop (`generation/thoughts.py`);
- ``coconut-pause`` (`coconut_pause.py`): Coconut's curriculum with `<pause>` tokens in place
  of the thoughts (Coconut's "pause as thought" control);
- ``icot`` (`icot.py`, Deng et al. 2024): stepwise internalization, a text-only schedule
  that deletes more of the trace step by step.

They are text methods as far as latent codes go (their chunk strategy is CoT: no VQ-VAE
codes needed), so, like the baselines, they get the VQ-VAE's latent rows when one is given
and every method's model keeps the same size and base vocabulary.

Steps. The schedule hooks take `step`, the 0-based index of an optimizer step; the model after
`n` steps is the model of step `n - 1`. `plan` is told the steps per epoch and the run's total
before the first step, with the data known.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch

from ...core.errors import ConfigError
from ...data.encoding import EncodedExample, encode_example
from ...data.latent_tokens import LatentVocab
from ..mixing import IGNORE_INDEX, Strategy, build_sequence, collate, make_strategy, max_sequence_length

Generate = Callable[..., Any]  # evaluate.generate_ids's signature: (model, tokenizer, prompts, config, ...)



class Method:
    """The default: a chunk strategy's mixed sequences through one forward pass, one phase."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.strategy: Strategy = self.chunk_strategy(config)
        self.vocab: LatentVocab | None = None  # the method's own added tokens (LoRA trains their rows in full)
        self.steps_per_epoch, self.total_steps = 1, 0

    @staticmethod
    def chunk_strategy(config: Any) -> Strategy:
        """The mixing strategy whose rules (codes needed or not) the method's sequences follow."""
        return make_strategy(config.strategy, m_values=config.m_values, poisson_p=config.poisson_p,
                             curriculum_epochs=config.curriculum_epochs,
                             curriculum_max_chunks=config.curriculum_max_chunks)

    # -- set-up ---------------------------------------------------------------------
    def prepare(self, tokenizer: Any, model: Any, examples: Sequence[Any]) -> None:
        """Add the method's own tokens (after the latent rows) and settle data-dependent settings."""

    def encode(self, tokenizer: Any, task: Any, example: Any, chat_template: bool) -> EncodedExample:
        return encode_example(tokenizer, task, example, chat_template)

    def max_length(self, encoded: EncodedExample, layout: Any) -> int:
        """An upper bound on the length of any sequence of this example (longer ones are skipped)."""
        return max_sequence_length(encoded, layout)

    def plan(self, run: Any, steps_per_epoch: int, total_steps: int) -> None:
        """Settle the schedule on the kept data; refuse one whose final phase the run never reaches."""
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps
        if total_steps > 0 and not self.final(total_steps - 1):
            raise ConfigError(f"strategy {self.config.strategy!r}: its final stage is never reached in the "
                              f"run's {total_steps} optimizer steps ({steps_per_epoch} per epoch); "
                              f"{self.too_short_hint()}")

    def too_short_hint(self) -> str:
        return "give it more epochs"

    # -- the schedule ---------------------------------------------------------------
    def epoch(self, step: int) -> int:
        return step // self.steps_per_epoch

    def stage(self, step: int) -> int | None:
        """The curriculum stage of step `step` (None: a method without stages)."""
        return None

    def final(self, step: int) -> bool:
        """Whether step `step` trains the method's final phase (only those models may be kept)."""
        return True

    def final_start(self) -> int:
        """The first step of the final phase (the learning-rate schedule "final-cosine" decays from it)."""
        step = 0
        while step < self.total_steps and not self.final(step):
            step += 1
        return step

    def phase(self, step: int) -> Hashable:
        """The optimizer's moments are reset before a step whose phase differs from the previous step's."""
        return 0

    def lr_schedule(self) -> str:
        """Every method's schedule: warm-up, the peak rate until its final phase, cosine decay to zero
        over that phase ("final-cosine"); for a one-phase method that is the warm-up and cosine decay
        over the whole run ("cosine", transformers' own). Measured against each method's reference
        schedule (constant for Coconut and iCoT): BENCHMARKS.md, "Learning-rate schedules"."""
        return "final-cosine" if self.final_start() > 0 else "cosine"

    def checkpoint(self, step: int) -> dict[str, Any]:
        """What results.json records of a kept model: its epoch (1-based), stage and whether it is final."""
        return {"epoch": self.epoch(step) + 1, "stage": self.stage(step), "final_stage": self.final(step)}

    # -- training -------------------------------------------------------------------
    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the trainer prepares and calls (accelerate wraps it for DDP and autocast)."""
        return model

    def batch(self, run: Any, indices: Sequence[int], seed: int, epoch: int,
              step: int | None = None) -> dict[str, torch.Tensor]:
        """The sequences of `indices` at `step` of `epoch` (step None: the epoch's first)."""
        sequences = [build_sequence(run.strategy, run.encoded[i], None if run.codes is None else run.codes[i],
                                    run.layout, seed=seed, epoch=epoch, index=i) for i in indices]
        return collate(sequences, run.tokenizer.pad_token_id)

    def loss_items(self, batch: dict[str, torch.Tensor]) -> int:
        """Supervised tokens of `batch`: the labels a causal LM predicts (each from the one before)."""
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def loss(self, module: torch.nn.Module, batch: dict[str, torch.Tensor], total: float) -> torch.Tensor:
        """The summed token losses of `batch` over `total`, the supervised tokens of the whole step
        (transformers' num_items_in_batch: its cross-entropy sums, then divides by it)."""
        return module(**batch, num_items_in_batch=total).loss

    # -- answering ------------------------------------------------------------------
    def generation(self, step: int, vocab: LatentVocab | None) -> tuple[Generate | None, LatentVocab | None]:
        """How the model of step `step` answers in validation: a generate function (None:
        `model.generate`) and the vocabulary whose tokens count as latent."""
        return None, vocab

    def meta(self, step: int) -> dict[str, Any]:
        """What `token_assorted.json` records of the method for the model of step `step`."""
        return {}

