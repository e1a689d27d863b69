"""The chunk encoder f_enc: a chunk of L tokens, under its prompt, -> L/r continuous latents.

    [L/r query slots ; L token embeddings] --ChunkStack(. | memory, chunk index)--> the slots' states

The encoder summarises a chunk through L/r learned query slots placed before its tokens; the
slots' final states are the latents the quantizer turns into codes (with assignment "search",
the first slot's state is also the encoder's K-way classifier input, quantizer.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import VQVAEConfig
from .stack import ChunkStack


class ChunkEncoder(ChunkStack):
    """f_enc: (B, N, L, D) chunk token embeddings -> (B, N, L/r, D) latents, one per query slot."""

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__(config, config.encoder_layers)
        self.latent_queries = nn.Parameter(torch.randn(config.latents_per_chunk, config.d_model) * 0.02)

    def forward(self, embedded: Tensor, memory: Tensor, memory_pad: Tensor) -> Tensor:
        batch, n_chunks = embedded.shape[:2]
        slots = self.latent_queries.expand(batch, n_chunks, -1, -1)  # (B, N, L/r, D)
        hidden = self.run(torch.cat([slots, embedded], dim=2), memory, memory_pad)  # (B, N, L/r + L, D)
        return hidden[:, :, :self.latents_per_chunk]
