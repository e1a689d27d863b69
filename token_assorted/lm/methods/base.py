"""Stage-2 methods as the training loop and the evaluator see them.

A method says how training examples become batches and a loss, when the optimizer state
is reset, which epochs may give the saved model, how the model answers, and what is
recorded beside it. `Method` itself is every chunk strategy of `mixing.py` (Token Assorted,
its baselines and ablations): one mixed sequence per example, right-padded, one forward
pass whose loss the model computes, `model.generate` at inference.

The field's other latent-reasoning methods run in the same loop through these hooks, each
in its own module:

- ``coconut`` (`coconut.py`, Hao et al. 2024): continuous thoughts, one forward pass per
  thought, a stage curriculum, its own generation loop (`thoughts.py`);
- ``icot`` (`icot.py`, Deng et al. 2024): stepwise internalization, a text-only schedule
  that deletes more of the trace every epoch.

Both are text methods as far as latent codes go (their chunk strategy is CoT: no VQ-VAE
codes needed), so, like the baselines, they get the VQ-VAE's latent rows when one is given
and every method's model keeps the same size and base vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ...data.encoding import EncodedExample, encode_example
from ...data.latent_tokens import LatentVocab
from ..mixing import Strategy, build_sequence, collate, make_strategy, max_sequence_length

Generate = Callable[..., Any]  # evaluate.generate_ids's signature: (model, tokenizer, prompts, config, ...)


class Method:
    """The default: a chunk strategy's mixed sequences through one forward pass."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.strategy: Strategy = self.chunk_strategy(config)
        self.vocab: LatentVocab | None = None  # the method's own added tokens (LoRA trains their rows in full)

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

    # -- training -------------------------------------------------------------------
    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the trainer prepares and calls (accelerate wraps it for DDP and autocast)."""
        return model

    def batch(self, run: Any, indices: Sequence[int], seed: int, epoch: int) -> dict[str, torch.Tensor]:
        sequences = [build_sequence(run.strategy, run.encoded[i], None if run.codes is None else run.codes[i],
                                    run.layout, seed=seed, epoch=epoch, index=i) for i in indices]
        return collate(sequences, run.tokenizer.pad_token_id)

    def loss(self, module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return module(**batch).loss

    def phase(self, epoch: int) -> int:
        """The optimizer state is reset at the start of an epoch whose phase differs from the last one's."""
        return 0

    def selectable(self, epoch: int) -> bool:
        """Whether the model of `epoch` may be kept as the best one (curricula: their final phase only)."""
        return True

    # -- answering ------------------------------------------------------------------
    def generation(self, epoch: int, vocab: LatentVocab | None) -> tuple[Generate | None, LatentVocab | None]:
        """How the model of `epoch` answers in validation: a generate function (None:
        `model.generate`) and the vocabulary whose tokens count as latent."""
        return None, vocab

    def meta(self, epoch: int) -> dict[str, Any]:
        """What `token_assorted.json` records of the method for the model of `epoch`."""
        return {}
