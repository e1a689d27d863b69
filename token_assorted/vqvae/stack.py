"""A transformer over chunks (the chunk encoder's and decoder's), and its layers run by hand.

Chunks are laid out per example, (B, N, S, D), and flattened to one sequence of N blocks: a
block-diagonal self-attention mask keeps every chunk on its own, while cross-attention reads
the prompt memory once per example. Each position adds its place in the chunk (`position`) and
the chunk's place in its trace (`chunk_index`). The layers are pre-norm `nn.TransformerDecoder`
layers: self-attention inside a chunk, cross-attention to g(P), a feed-forward block.

The search scores every chunk under many codes and greedy decoding runs the decoder once per
chunk position, each time against the same prompt. `run_grouped` runs the same layers over g
variants of each memory row (the codes tried for one chunk, or the chunks of one trace): their
self-attention stays apart, their cross-attention reads the row's keys and values (`MemoryKV`,
projected once) without copying them, and with a `StepCache` it runs a few new positions after
cached ones. It computes no dropout in self-attention: it serves decoding and the search, which
run in eval mode. `run_decoder` is the stack's own forward, reading projected keys and values
(the training search's scoring).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import VQVAEConfig
from .prompt import MemoryKV


class ChunkStack(nn.Module):
    """Pre-norm transformer layers over chunks, with their positions and chunk indices."""

    def __init__(self, config: VQVAEConfig, layers: int) -> None:
        super().__init__()
        width = config.d_model
        layer = nn.TransformerDecoderLayer(width, config.heads, 4 * width, config.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerDecoder(layer, layers, norm=nn.LayerNorm(width))
        self.position = nn.Embedding(config.latents_per_chunk + config.chunk_size, width)
        self.chunk_index = nn.Embedding(config.max_chunks, width)
        for embedding in (self.position, self.chunk_index):
            nn.init.normal_(embedding.weight, std=0.02)
        self.latents_per_chunk = config.latents_per_chunk

    def place(self, index: Tensor) -> Tensor:
        """(...) chunk indices in their traces -> (..., D); chunks past the last embedding share it."""
        return self.chunk_index(index.clamp(max=self.chunk_index.num_embeddings - 1))

    def run(self, x: Tensor, memory: Tensor, memory_pad: Tensor, causal: bool = False,
            memory_kv: MemoryKV | None = None, index: Tensor | None = None) -> Tensor:
        """(B, N, S, D) chunk inputs -> (B, N, S, D) hidden states.

        `causal`: the positions after the first L/r see the L/r and the earlier ones of their
        chunk only. `index` (B, N): each chunk's place in its trace (default: its place n).
        """
        batch, n_chunks, span, width = x.shape
        index = torch.arange(n_chunks, device=x.device)[None] if index is None else index  # (1 or B, N)
        x = x + self.position(torch.arange(span, device=x.device))[None, None] + self.place(index)[:, :, None]
        blocks = torch.arange(n_chunks * span, device=x.device) // span
        separate = blocks[:, None] != blocks[None, :]  # (N*S, N*S) True where attention is blocked
        if causal:  # token positions see the latents and earlier tokens of their own chunk
            offset = torch.arange(n_chunks * span, device=x.device) % span
            later_token = (offset[None, :] > offset[:, None]) & (offset[None, :] >= self.latents_per_chunk)
            separate = separate | later_token
        x = x.reshape(batch, n_chunks * span, width)
        if memory_kv is not None:
            hidden = run_decoder(self.transformer, x, memory_kv, separate)
        else:
            hidden = self.transformer(x, memory, tgt_mask=separate, memory_key_padding_mask=memory_pad)
        return hidden.view(batch, n_chunks, span, width)


# --- the layers run by hand ---------------------------------------------------------------------
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
