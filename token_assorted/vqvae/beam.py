"""Beam search for the autoregressive chunk decoder: the most probable text under a code.

Greedy decoding writes each token as the most probable one given those before it, so an
early token that is locally likely but leads to an unlikely chunk cannot be taken back.
The search code (`assignment: search`) is the one under which the decoder finds the whole
chunk most likely, so what a reader wants from a code is the chunk that maximises
log p(tokens | code, prompt): beam search keeps the `beams` most probable prefixes of every
chunk instead of one. Chunks have a fixed length of L tokens (pads included), so the
scores need no length normalisation.

The non-autoregressive decoder writes every position independently given the code; its
argmax already is the most probable chunk, and beams change nothing there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .model import VQVAE


@torch.no_grad()
def beam_tokens(model: VQVAE, quantized: Tensor, memory: Tensor, memory_pad: Tensor, prompt_ids: Tensor,
                beams: int) -> Tensor:
    """(B, N, L/r, D) quantized latents -> (B, N, L): each chunk's most probable of `beams` kept sequences."""
    if beams < 1:
        raise ValueError(f"beams must be at least 1; got {beams}")
    if beams == 1 or not model.config.autoregressive:
        return model.greedy_tokens(quantized, memory, memory_pad, prompt_ids)
    batch, n_chunks = quantized.shape[:2]
    length = model.config.chunk_size

    def per_beam(t: Tensor) -> Tensor:  # (B, ...) -> (B*W, ...): beam w of example b at row b*W + w
        return t.repeat_interleave(beams, dim=0)

    memory_kv = model.memory_kv(memory, memory_pad).repeat_interleave(beams)
    quantized, memory, memory_pad, prompt_ids = map(per_beam, (quantized, memory, memory_pad, prompt_ids))
    keys = model.copy_keys(memory, prompt_ids)  # the prompt side once, as in greedy decoding
    tokens = torch.full((batch * beams, n_chunks, length), model.config.pad_id, dtype=torch.long,
                        device=quantized.device)
    scores = torch.full((batch, n_chunks, beams), float("-inf"), device=quantized.device)
    scores[..., 0] = 0.0  # every beam starts as the same empty prefix: expand only one of them
    for position in range(length):
        hidden = model.decode(quantized, memory, memory_pad, tokens, memory_kv)[:, :, position:position + 1]
        prefix = model._prefix_of(tokens[:, :, :position + 1])
        prefix = prefix[:, :, position:] if prefix is not None else None
        log_p = model.log_probs(hidden, memory, memory_pad, prompt_ids, prefix=prefix, keys=keys)[:, :, 0]
        vocab = log_p.shape[-1]
        log_p = log_p.view(batch, beams, n_chunks, vocab).transpose(1, 2)  # (B, N, W, V)
        scores, index = (scores[..., None] + log_p).flatten(2).topk(beams, dim=-1)  # (B, N, W), sorted
        origin, token = index // vocab, index % vocab
        history = tokens.view(batch, beams, n_chunks, length).transpose(1, 2)  # (B, N, W, L)
        history = history.gather(2, origin[..., None].expand(-1, -1, -1, length)).clone()
        history[..., position] = token
        tokens = history.transpose(1, 2).reshape(batch * beams, n_chunks, length)
    return tokens.view(batch, beams, n_chunks, length)[:, 0]  # topk sorts: beam 0 scores highest
