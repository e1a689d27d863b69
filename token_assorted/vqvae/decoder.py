"""The chunk decoder f_dec: L/r code vectors, under the prompt, -> the hidden states of L tokens.

    [L/r code vectors ; L position queries] --ChunkStack(. | memory, chunk index)--> the queries' states

The decoder reads L learned position queries after the code vectors: in one pass, every
position at once, or (`autoregressive`) causally, position i also reading the chunk's token
before it (`TokenEmbedding.prefix_features`: its embedding in local context), so that it
sees the code vectors and the tokens < i only. Teacher-forced here; the output distribution
over these states is the copy head's mixture (copy_head.py), greedy decoding decoding.py's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import VQVAEConfig
from .prompt import MemoryKV
from .stack import ChunkStack


class ChunkDecoder(ChunkStack):
    """f_dec: (B, N, L/r, D) code vectors -> (B, N, L, D) hidden states of the chunk's tokens."""

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__(config, config.decoder_layers)
        self.output_queries = nn.Parameter(torch.randn(config.chunk_size, config.d_model) * 0.02)
        self.autoregressive = config.autoregressive

    def forward(self, quantized: Tensor, memory: Tensor, memory_pad: Tensor, previous: Tensor | None = None,
                memory_kv: MemoryKV | None = None, chunk_index: Tensor | None = None) -> Tensor:
        """`previous` (B, N, L, D): the autoregressive decoder's reading of the tokens before each position.
        `memory_kv`: the memory's keys and values already projected (`memory_kv`), for callers that
        decode under it many times. `chunk_index` (B, N): each chunk's place in its trace."""
        x = torch.cat([quantized, self.queries(previous, *quantized.shape[:2])], dim=2)  # (B, N, L/r + L, D)
        hidden = self.run(x, memory, memory_pad, self.autoregressive, memory_kv, chunk_index)
        return hidden[:, :, self.latents_per_chunk:]

    def queries(self, previous: Tensor | None, *grid: int) -> Tensor:
        """The inputs at the L token positions, (*grid, L, D): position queries, plus with the
        autoregressive decoder `previous`, what each position reads of the tokens before it."""
        queries = self.output_queries.expand(*grid, -1, -1)  # (..., L, D)
        if not self.autoregressive:
            return queries
        if previous is None:
            raise ValueError("the autoregressive decoder reads the chunk's earlier tokens: pass `previous`")
        return queries + previous

    def memory_kv(self, memory: Tensor, memory_pad: Tensor) -> MemoryKV:
        """The cross-attention keys and values of a (B, P, D) memory, to pass to `forward`."""
        return MemoryKV.of(self.transformer, memory, memory_pad)
