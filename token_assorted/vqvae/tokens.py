"""The text tokens' side of the VQ-VAE: embeddings in, the vocabulary head out, one table for both.

The vocabulary comes from the tokenizer (`TextVocab`), not from the user's options. Every part
reads tokens through `TokenEmbedding`: the chunk encoder their embeddings, the prompt memory and
the autoregressive decoder their embeddings in local context (with `local_context` = k, position i
also holds W_s e(token i-s) for s = 1..k), the copy prefix the same features shifted by one. The
vocabulary head shares the embedding table (tied logits, plus a bias). With an output vocabulary
(`output_vocab: data`) it scores only the ids in `output_ids`, its "slots": a big tokenizer's
vocabulary then costs nothing the traces do not use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class TextVocab:
    """What the tokenizer gives the VQ-VAE; saved in DIR/config.json under "vocab"."""

    size: int  # ids of the shared text tokenizer
    pad_id: int  # fills a trailing partial chunk and short prompts
    output_size: int = 0  # 0: the vocabulary head scores every id; else only `output_ids` (the traces' ids)

    def __post_init__(self) -> None:
        if not 0 <= self.pad_id < self.size:
            raise ValueError(f"pad id {self.pad_id} is not in the vocabulary of {self.size} ids")
        if not 0 <= self.output_size <= self.size:
            raise ValueError(f"output vocabulary of {self.output_size} ids must be in 0..{self.size}")


class TokenEmbedding(nn.Module):
    """Token embeddings, their local context, and the tied vocabulary head."""

    def __init__(self, vocab: TextVocab, width: int, local_context: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.table = nn.Embedding(vocab.size, width)
        nn.init.normal_(self.table.weight, std=0.02)  # small, as in GPT-2: tied logits start near uniform
        # One projection per offset 1..k: position i adds W_s e(token i-s).
        self.local_context = nn.ModuleList(nn.Linear(width, width, bias=False) for _ in range(local_context))
        self.output_bias = nn.Parameter(torch.zeros(vocab.size))
        if vocab.output_size:  # filled by `set_output_vocab`, saved with the weights
            self.register_buffer("output_ids", torch.arange(vocab.output_size))

    def forward(self, ids: Tensor) -> Tensor:
        """(...) ids -> (..., D) embeddings."""
        return self.table(ids)

    def in_context(self, ids: Tensor) -> Tensor:
        """(..., S) ids -> (..., S, D): each position's embedding plus projections of the k before it."""
        embedded = self.table(ids)
        out, span = embedded, embedded.shape[-2]
        for offset, project in enumerate(self.local_context, start=1):
            shifted = F.pad(embedded, (0, 0, offset, 0))[..., :span, :]  # position i holds e(token i-offset)
            out = out + project(shifted)
        return out

    def prefix_features(self, ids: Tensor) -> Tensor:
        """(..., S) ids -> (..., S, D): at i, `in_context` of the token before i (zeros at 0).

        What the autoregressive decoder reads at position i besides its position query, and
        what the copy prefix compares with the same features of a prompt position.
        """
        return F.pad(self.in_context(ids), (0, 0, 1, 0))[..., :ids.shape[-1], :]

    # --- the vocabulary head ------------------------------------------------------------
    def logits(self, hidden: Tensor) -> Tensor:
        """(..., D) decoder states -> (..., V') logits, one per output slot."""
        weight, bias = self.table.weight, self.output_bias
        if self.vocab.output_size:
            weight, bias = weight[self.output_ids], bias[self.output_ids]
        return F.linear(hidden, weight, bias)

    def slots_of(self, ids: Tensor) -> Tensor:
        """Token ids -> their output slots (the ids themselves without an output vocabulary; -1 if absent)."""
        if not self.vocab.output_size:
            return ids
        table = ids.new_full((self.vocab.size,), -1)
        table[self.output_ids] = torch.arange(self.vocab.output_size, device=ids.device)
        return table[ids]

    def ids_of(self, slots: Tensor) -> Tensor:
        """Output slots -> token ids (the inverse of `slots_of`)."""
        return self.output_ids[slots] if self.vocab.output_size else slots

    def set_output_vocab(self, ids: Sequence[int]) -> None:
        """Restrict the vocabulary head to `ids` (the pad id is always kept); needs `output_size` slots."""
        kept = sorted(set(int(i) for i in ids) | {self.vocab.pad_id})
        if len(kept) != self.vocab.output_size or not 0 <= kept[0] <= kept[-1] < self.vocab.size:
            raise ValueError(f"output vocabulary of {len(kept)} ids in 0..{self.vocab.size - 1} "
                             f"does not fit output_size={self.vocab.output_size}")
        self.output_ids.copy_(torch.tensor(kept))
