"""The chunk decoder run by hand: the prompt's keys and values projected once, and a step cache.

Every decoder pass projects the prompt memory (B, P, D) to keys and values in each layer's
cross-attention. The search scores every chunk under many codes and greedy decoding runs
the decoder once per chunk position: the same projection each time. `MemoryKV` projects
the memory once per layer. `run_decoder` is `nn.TransformerDecoder`'s forward for the
pre-norm layers the VQ-VAE builds, reading those keys and values (the training search's
scoring; training's own forward keeps the library's stack). `run_grouped` runs the layers
over g variants of each memory row (the codes tried for one chunk, or the chunks of one
trace): their self-attention stays apart, their cross-attention reads the row's keys and
values without copying them, and with a `StepCache` it runs a few new positions after
cached ones (greedy decoding, one position per step). It computes no dropout in self-attention:
it serves decoding and the search, which run in eval mode.
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

    def select(self, rows: Tensor, length: int | None = None) -> MemoryKV:
        """The memory of the given rows (e.g. each chunk's example), cut to its first `length` positions."""
        return MemoryKV(tuple(t[rows, :, :length] for t in self.keys), tuple(t[rows, :, :length] for t in self.values),
                        self.mask[rows, ..., :length])

    def _map(self, along_batch: Callable[[Tensor], Tensor]) -> MemoryKV:
        return MemoryKV(tuple(map(along_batch, self.keys)), tuple(map(along_batch, self.values)),
                        along_batch(self.mask))


@dataclass(frozen=True)
class StepCache:
    """Self-attention keys and values of the positions decoded so far: per layer (R, H, S, D/H)."""

    keys: tuple[Tensor, ...]
    values: tuple[Tensor, ...]

    @classmethod
    def empty(cls, stack: nn.TransformerDecoder, rows: int, span: int, like: Tensor) -> StepCache:
        attention = stack.layers[0].self_attn
        shape = (rows, attention.num_heads, span, attention.embed_dim // attention.num_heads)
        return cls(*(tuple(like.new_zeros(shape) for _ in stack.layers) for _ in range(2)))


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


def run_grouped(stack: nn.TransformerDecoder, x: Tensor, memory: MemoryKV, allowed: Tensor,
                cache: StepCache | None = None, start: int = 0) -> Tensor:
    """The decoder over (M, g, T, D): g variants of each of M memory rows, T positions each.

    `allowed` (T, start + T) is True where a position may attend; with `cache` the T positions
    come after `start` cached ones, and their keys and values are cached in turn.
    """
    rows, variants, span, width = x.shape
    x = x.reshape(rows * variants, span, width)
    for index, layer in enumerate(stack.layers):
        x = x + _cached_self_attention(layer.self_attn, layer.norm1(x), allowed, cache, index, start)
        shared = layer.norm2(x).view(rows, variants * span, width)  # the variants of a row read one memory
        x = x + _cross_attention(layer.multihead_attn, shared, memory.keys[index], memory.values[index],
                                 memory.mask).view(rows * variants, span, width)
        x = x + layer._ff_block(layer.norm3(x))
    return stack.norm(x).view(rows, variants, span, width)


def _cached_self_attention(attention: nn.MultiheadAttention, x: Tensor, allowed: Tensor, cache: StepCache | None,
                           layer: int, start: int) -> Tensor:
    rows, span, width = x.shape
    heads = attention.num_heads
    projected = F.linear(x, attention.in_proj_weight, attention.in_proj_bias)  # (R, T, 3D)
    query, key, value = projected.view(rows, span, 3, heads, width // heads).permute(2, 0, 3, 1, 4)  # (R, H, T, D/H)
    if cache is not None:
        cache.keys[layer][:, :, start:start + span] = key
        cache.values[layer][:, :, start:start + span] = value
        key, value = cache.keys[layer][:, :, :start + span], cache.values[layer][:, :, :start + span]
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=allowed)
    return attention.out_proj(out.transpose(1, 2).reshape(rows, span, width))


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
