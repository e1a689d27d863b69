"""The prompt memory g(P): what every chunk of a trace is encoded and decoded under.

    prompt P (B, P) --embeddings in local context + positions--> g --> memory (B, P, D)

g is a small pre-norm transformer encoder over the prompt (`prompt_layers`; 0: a LayerNorm of
the embeddings). The memory is computed once per example and read by the chunk encoder's and
decoder's cross-attention and by the copy head. The decoder reads it through keys and values
projected by each of its layers: `MemoryKV` holds those projections, made once per prompt for
callers that decode many chunks or codes under it (the search, greedy decoding).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import VQVAEConfig


class PromptMemory(nn.Module):
    """g(P): prompt embeddings (B, P, D) -> the memory (B, P, D) the chunks attend to."""

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        width = config.d_model
        self.position = nn.Embedding(config.max_prompt_len, width)
        nn.init.normal_(self.position.weight, std=0.02)
        if config.prompt_layers > 0:
            layer = nn.TransformerEncoderLayer(width, config.heads, 4 * width, config.dropout, activation="gelu",
                                               batch_first=True, norm_first=True)
            self.encoder: nn.Module = nn.TransformerEncoder(layer, config.prompt_layers, norm=nn.LayerNorm(width),
                                                            enable_nested_tensor=False)
        else:
            self.encoder = nn.LayerNorm(width)

    def forward(self, embedded: Tensor, prompt_pad: Tensor) -> Tensor:
        """(B, P, D) prompt token embeddings (in local context) and (B, P) pad mask -> (B, P, D) memory."""
        x = embedded + self.position(torch.arange(embedded.shape[1], device=embedded.device))
        if isinstance(self.encoder, nn.TransformerEncoder):
            return self.encoder(x, src_key_padding_mask=prompt_pad)
        return self.encoder(x)


@dataclass(frozen=True)
class MemoryKV:
    """Per decoder layer, the keys and values (B, H, P, D/H) of a memory; `mask` (B, 1, 1, P) is
    0 at real prompt tokens and -inf at padding."""

    keys: tuple[Tensor, ...]
    values: tuple[Tensor, ...]
    mask: Tensor

    @classmethod
    def of(cls, stack: nn.TransformerDecoder, memory: Tensor, memory_pad: Tensor) -> MemoryKV:
        """The cross-attention keys and values each layer of `stack` reads of a (B, P, D) memory."""
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
