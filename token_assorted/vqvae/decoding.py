"""Greedy decoding: code vectors -> the chunk text the decoder writes under them.

The one-pass decoder writes every position at once: the argmax of the output distribution
at each. The autoregressive decoder writes position i from the code vectors and the tokens
it wrote before i, one position per step; the self-attention keys and values of earlier
positions are cached (`StepCache`), so a step runs the decoder over one new position, and
the prompt's keys and values are projected once (`MemoryKV`). Greedy decoding was kept over
beam search: the most probable text under a code was the chunk less often once codes are
re-ranked by their greedy decoding (BENCHMARKS.md, "Stage 1").

Rows are laid out (M, g): g chunks, or g codes of one chunk, that share memory row m.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .parts import VQVAEParts
from .prompt import MemoryKV
from .stack import StepCache, run_grouped


@torch.no_grad()
def greedy_tokens(model: VQVAEParts, quantized: Tensor, chunk_index: Tensor, memory: Tensor, memory_pad: Tensor,
                  prompt_ids: Tensor, memory_kv: MemoryKV | None = None, keys: Tensor | None = None) -> Tensor:
    """(M, g, L/r, D) code vectors -> (M, g, L) decoded token ids (pads included).

    `chunk_index` (M, g): each chunk's index in its trace. `memory_kv`, `keys`: the decoder's
    and the copy head's side of the (M, P, D) memory, when the caller has them already.
    """
    keys = model.copy_keys(memory, prompt_ids) if keys is None else keys  # read at every position: once
    if not model.config.autoregressive:
        hidden = model.decoder(quantized, memory, memory_pad, chunk_index=chunk_index)  # (M, g, L, D)
        return model.copy_head.predict(model.tokens, hidden, memory, memory_pad, prompt_ids, keys=keys)
    memory_kv = model.memory_kv(memory, memory_pad) if memory_kv is None else memory_kv
    return _step_by_step(model, quantized, chunk_index, (memory, memory_pad, prompt_ids), memory_kv, keys)


def _step_by_step(model: VQVAEParts, quantized: Tensor, chunk_index: Tensor, prompt: tuple[Tensor, Tensor, Tensor],
                  memory_kv: MemoryKV, keys: Tensor) -> Tensor:
    """The autoregressive decoder's greedy tokens (M, g, L), one position per step with a cache."""
    decoder, rows, variants, n_latent = model.decoder, *quantized.shape[:3]
    span, length = n_latent + model.config.chunk_size, model.config.chunk_size
    cache = StepCache.empty(decoder.transformer, rows * variants, span, quantized)
    tokens = torch.full((rows, variants, length), model.vocab.pad_id, dtype=torch.long, device=quantized.device)
    place = decoder.place(chunk_index)[:, :, None]  # (M, g, 1, D)
    offsets = torch.arange(span, device=quantized.device)
    allowed = (offsets[None, :] <= offsets[:, None]) | (offsets[None, :] < n_latent)  # (S, S) causal past the codes
    for position in range(length):
        start = 0 if position == 0 else n_latent + position  # step 0 also runs the code vectors' positions
        end = n_latent + position + 1
        x = _step_inputs(model, quantized, tokens, position) + decoder.position.weight[start:end] + place
        hidden = run_grouped(decoder.transformer, x, memory_kv, allowed[start:end, :end], cache, start)[:, :, -1:]
        prefix = model.prefix_of(tokens[:, :, :position + 1])  # the copy prefix: the tokens written so far
        prefix = prefix[:, :, position:] if prefix is not None else None
        tokens[:, :, position] = model.copy_head.predict(model.tokens, hidden, *prompt, prefix, keys)[:, :, 0]
    return tokens


def _step_inputs(model: VQVAEParts, quantized: Tensor, tokens: Tensor, position: int) -> Tensor:
    """The decoder's new inputs at a step: (M, g, T, D), the code vectors too at position 0."""
    query = model.decoder.output_queries[position].expand(*tokens.shape[:2], 1, -1)  # (M, g, 1, D)
    if position == 0:  # position 0 sees no token
        return torch.cat([quantized, query], dim=2)
    return query + model.tokens.in_context(tokens[:, :, :position])[:, :, -1:]
