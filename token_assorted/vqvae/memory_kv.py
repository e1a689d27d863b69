"""The chunk decoder's cross-attention keys and values over a prompt, computed once and reused.

Every decoder pass projects the prompt memory (B, P, D) to keys and values in each layer's
cross-attention. Training runs the decoder once per batch, but the search scores every chunk
under many codes (the memory repeated once per candidate) and greedy decoding runs the
decoder once per chunk position: the same projection, recomputed each time. On ProsQA's
230-token prompts it took about a quarter of a search training step. `MemoryKV` projects the
memory once per layer; `run_decoder` is `nn.TransformerDecoder`'s forward for the pre-norm
layers the VQ-VAE builds, reading those keys and values instead of the memory. Training's
own forward keeps the library's stack (its results stay bit for bit what they were).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class MemoryKV:
    """Per decoder layer, the keys and values (B, H, P, D/H) of a memory; `mask` (B, 1, 1, P) is
    0 at real prompt tokens and -inf at padding."""

    keys: tuple[Tensor, ...]
    values: tuple[Tensor, ...]
    mask: Tensor

    @classmethod
    def of(cls, stack: nn.TransformerDecoder, memory: Tensor, memory_pad: Tensor) -> MemoryKV:
        keys, values = [], []
        for layer in stack.layers:
            attention = layer.multihead_attn
            width, heads = attention.embed_dim, attention.num_heads
            projected = F.linear(memory, attention.in_proj_weight[width:], attention.in_proj_bias[width:])
            key, value = projected.view(*memory.shape[:2], 2, heads, width // heads).permute(2, 0, 3, 1, 4)
            keys.append(key)
            values.append(value)
        mask = torch.zeros(memory_pad.shape, dtype=memory.dtype, device=memory.device)
        mask = mask.masked_fill(memory_pad, float("-inf"))[:, None, None]
        return cls(tuple(keys), tuple(values), mask)

    def repeat(self, times: int) -> MemoryKV:
        """The memory of `times` copies of the batch stacked (row g*B + b holds example b)."""
        return self._map(lambda t: t.repeat(times, *[1] * (t.dim() - 1)))

    def repeat_interleave(self, times: int) -> MemoryKV:
        """Each example repeated `times` times in place (row b*W + w holds example b)."""
        return self._map(lambda t: t.repeat_interleave(times, dim=0))

    def _map(self, along_batch: Callable[[Tensor], Tensor]) -> MemoryKV:
        return MemoryKV(tuple(map(along_batch, self.keys)), tuple(map(along_batch, self.values)),
                        along_batch(self.mask))


def run_decoder(stack: nn.TransformerDecoder, x: Tensor, memory: MemoryKV, tgt_mask: Tensor) -> Tensor:
    """`stack(x, memory, tgt_mask=tgt_mask, memory_key_padding_mask=pad)` for pre-norm layers,
    with the memory's keys and values already projected."""
    for layer, keys, values in zip(stack.layers, memory.keys, memory.values):
        if not layer.norm_first:
            raise ValueError("run_decoder implements pre-norm layers (norm_first=True) only")
        x = x + layer._sa_block(layer.norm1(x), tgt_mask, None)
        x = x + layer.dropout2(_cross_attention(layer.multihead_attn, layer.norm2(x), keys, values, memory.mask))
        x = x + layer._ff_block(layer.norm3(x))
    return stack.norm(x) if stack.norm is not None else x


def _cross_attention(attention: nn.MultiheadAttention, x: Tensor, keys: Tensor, values: Tensor,
                     mask: Tensor) -> Tensor:
    """`attention(x, memory, memory, key_padding_mask=...)` given the memory's projections."""
    batch, length, width = x.shape
    heads = attention.num_heads
    query = F.linear(x, attention.in_proj_weight[:width], attention.in_proj_bias[:width])
    query = query.view(batch, length, heads, width // heads).transpose(1, 2)  # (B, H, T, D/H)
    dropout = attention.dropout if attention.training else 0.0
    out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask.to(query.dtype), dropout_p=dropout)
    return attention.out_proj(out.transpose(1, 2).reshape(batch, length, width))
