"""The VQ-VAE's weights and its three transformer parts: prompt encoder, chunk encoder, chunk decoder.

    prompt P --g--> memory (P, D)                        `encode_prompt`, once per example
    chunk (L) --f_enc(. | memory, chunk index)--> L/r latents (D)      `encode`
    L/r code vectors --f_dec(. | memory, chunk index)--> L hidden states      `decode`

Every stack is a small pre-norm `nn.TransformerDecoder`: self-attention inside a chunk plus
cross-attention to g(P). The encoder summarises a chunk through L/r learned query slots
placed before its tokens. The decoder reads L learned position queries after the code
vectors: in one pass, or (`autoregressive`) causally, each position also reading the
chunk's earlier tokens. With `local_context` = k, every prompt position and decoder input
also holds projections of the k token embeddings before it. The output distribution these
states define is mixture.py's; `ChunkNetworks` only owns its weights, so that every weight
keeps its name in the checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import VQVAEConfig
from .memory_kv import MemoryKV, run_decoder
from .quantizer import build_quantizer


def _stack(config: VQVAEConfig, layers: int) -> nn.TransformerDecoder:
    layer = nn.TransformerDecoderLayer(config.d_model, config.heads, 4 * config.d_model, config.dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
    return nn.TransformerDecoder(layer, layers, norm=nn.LayerNorm(config.d_model))


class ChunkNetworks(nn.Module):
    """Every weight of a VQ-VAE, and the prompt encoder, chunk encoder and chunk decoder over them."""

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        # Created in a fixed order: a seed draws the same initial weights as in every earlier run.
        self.config = config
        d, n_latent = config.d_model, config.latents_per_chunk
        self.token_embedding = nn.Embedding(config.vocab_size, d)
        self.prompt_position = nn.Embedding(config.max_prompt_len, d)
        self.chunk_position = nn.Embedding(n_latent + config.chunk_size, d)
        self.chunk_index = nn.Embedding(config.max_chunks, d)
        self.latent_queries = nn.Parameter(torch.randn(n_latent, d) * 0.02)
        self.output_queries = nn.Parameter(torch.randn(config.chunk_size, d) * 0.02)
        if config.prompt_layers > 0:
            layer = nn.TransformerEncoderLayer(d, config.heads, 4 * d, config.dropout, activation="gelu",
                                               batch_first=True, norm_first=True)
            self.prompt_encoder: nn.Module = nn.TransformerEncoder(
                layer, config.prompt_layers, norm=nn.LayerNorm(d), enable_nested_tensor=False)
        else:
            self.prompt_encoder = nn.LayerNorm(d)
        self.encoder = _stack(config, config.encoder_layers)
        self.decoder = _stack(config, config.decoder_layers)
        self.quantizer = build_quantizer(config)
        self.output_bias = nn.Parameter(torch.zeros(config.vocab_size))  # the output layer shares the embeddings
        # One projection per offset 1..k: position i adds W_s e(token i-s) (see `with_local_context`).
        self.local_context = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(config.local_context))
        if config.output_vocab_size:  # filled by `set_output_vocab`, saved with the weights
            self.register_buffer("output_ids", torch.arange(config.output_vocab_size))
        self.copy_query = nn.Linear(d, d)
        self.copy_key = nn.Linear(d, d)
        self.copy_gate = nn.Linear(2 * d, 1)  # reads [decoder state; copied context]
        if config.copy_prefix:  # second query/key pair: what precedes the output position / the prompt position
            self.prefix_norm = nn.LayerNorm(d)  # the embeddings are small (std 0.02): unit scale for the match
            self.prefix_query = nn.Linear(d, d)
            self.prefix_key = nn.Linear(d, d)
        for embedding in (self.token_embedding, self.prompt_position, self.chunk_position, self.chunk_index):
            nn.init.normal_(embedding.weight, std=0.02)  # small, as in GPT-2: tied logits start near uniform
        self._clear_unused_buffers()

    def _clear_unused_buffers(self) -> None:
        # The library codebook allocates affine-parameter buffers with torch.empty even when the
        # affine option is off; zero them so checkpoints hold no uninitialised memory.
        for name, buffer in self.quantizer.named_buffers():
            if name.endswith(("codebook_mean", "codebook_variance")):
                buffer.zero_()

    def set_output_vocab(self, ids: Sequence[int]) -> None:
        """Restrict the vocabulary head to `ids` (the pad id is always kept); needs output_vocab_size slots."""
        kept = sorted(set(int(i) for i in ids) | {self.config.pad_id})
        if len(kept) != self.config.output_vocab_size or not 0 <= kept[0] <= kept[-1] < self.config.vocab_size:
            raise ValueError(f"output vocabulary of {len(kept)} ids in 0..{self.config.vocab_size - 1} "
                             f"does not fit output_vocab_size={self.config.output_vocab_size}")
        self.output_ids.copy_(torch.tensor(kept))

    # Chunks are laid out per example, (B, N, ...), and flattened to one sequence of N
    # blocks for the transformer stacks: a block-diagonal self-attention mask keeps every
    # chunk on its own, while the prompt's keys and values are computed once per example.
    def encode_prompt(self, prompt_ids: Tensor, prompt_pad: Tensor) -> Tensor:
        """g(P): (B, P) ids and pad mask -> (B, P, D) memory the chunks attend to."""
        positions = torch.arange(prompt_ids.shape[1], device=prompt_ids.device)
        x = self.with_local_context(self.token_embedding(prompt_ids)) + self.prompt_position(positions)  # (B, P, D)
        if isinstance(self.prompt_encoder, nn.TransformerEncoder):
            return self.prompt_encoder(x, src_key_padding_mask=prompt_pad)
        return self.prompt_encoder(x)

    def encode(self, chunk_ids: Tensor, memory: Tensor, memory_pad: Tensor) -> Tensor:
        """f_enc: (B, N, L) chunks -> (B, N, L/r, D) continuous latents, one per query slot."""
        batch, n_chunks, _ = chunk_ids.shape
        slots = self.latent_queries.expand(batch, n_chunks, -1, -1)  # (B, N, L/r, D)
        x = torch.cat([slots, self.token_embedding(chunk_ids)], dim=2)  # (B, N, S, D), S = L/r + L
        hidden = self._run(self.encoder, x, memory, memory_pad)  # (B, N, S, D)
        return hidden[:, :, :self.config.latents_per_chunk]

    def decode(self, quantized: Tensor, memory: Tensor, memory_pad: Tensor, chunk_ids: Tensor | None = None,
               memory_kv: MemoryKV | None = None, chunk_index: Tensor | None = None) -> Tensor:
        """f_dec, teacher-forced: (B, N, L/r, D) code vectors -> (B, N, L, D) hidden states of the chunk's tokens.

        The autoregressive decoder also reads `chunk_ids` (B, N, L) shifted right by one:
        position i sees the code vectors and tokens < i only. `memory_kv`: the memory's keys
        and values already projected (`memory_kv`), for callers that decode it many times.
        `chunk_index` (B, N): each chunk's index in its trace (default: its place n in the batch).
        """
        x = torch.cat([quantized, self.decoder_queries(chunk_ids, *quantized.shape[:2])], dim=2)  # (B, N, S, D)
        hidden = self._run(self.decoder, x, memory, memory_pad, self.config.autoregressive, memory_kv, chunk_index)
        return hidden[:, :, self.config.latents_per_chunk:]

    def decoder_queries(self, chunk_ids: Tensor | None, *grid: int) -> Tensor:
        """The decoder's inputs at the L token positions, (*grid, L, D): position queries (plus, with the
        autoregressive decoder, the local-context embedding of the token before each position)."""
        queries = self.output_queries.expand(*grid, -1, -1)  # (..., L, D)
        if not self.config.autoregressive:
            return queries
        previous = self.with_local_context(self.token_embedding(chunk_ids[..., :-1]))  # (..., L-1, D)
        return queries + F.pad(previous, (0, 0, 1, 0))  # position 0 sees no token

    def memory_kv(self, memory: Tensor, memory_pad: Tensor) -> MemoryKV:
        """The decoder's cross-attention keys and values of a (B, P, D) memory, to pass to `decode`."""
        return MemoryKV.of(self.decoder, memory, memory_pad)

    def with_local_context(self, embedded: Tensor) -> Tensor:
        """(..., S, D) token embeddings -> each position plus projections of the k before it (zeros before 0)."""
        out, span = embedded, embedded.shape[-2]
        for offset, project in enumerate(self.local_context, start=1):
            shifted = F.pad(embedded, (0, 0, offset, 0))[..., :span, :]  # position i holds e(token i-offset)
            out = out + project(shifted)
        return out

    def prefix_features(self, ids: Tensor) -> Tensor:
        """(..., S) token ids -> (..., S, D): at i, the local-context embedding of the tokens before i.

        The autoregressive decoder's input at i holds exactly this, and the copy prefix
        compares it with the same function of a prompt position's predecessors.
        """
        embedded = self.with_local_context(self.token_embedding(ids))
        return F.pad(embedded, (0, 0, 1, 0))[..., :ids.shape[-1], :]

    def prefix_of(self, chunk_ids: Tensor) -> Tensor | None:
        """The copy prefix's decoder side for (..., L) chunk tokens, None when the option is off."""
        return self.prefix_features(chunk_ids) if self.config.copy_prefix else None

    def _run(self, stack: nn.TransformerDecoder, x: Tensor, memory: Tensor, memory_pad: Tensor,
             causal: bool = False, memory_kv: MemoryKV | None = None, index: Tensor | None = None) -> Tensor:
        batch, n_chunks, span, width = x.shape
        index = torch.arange(n_chunks, device=x.device)[None] if index is None else index  # (1 or B, N)
        positions = torch.arange(span, device=x.device)
        x = x + self.chunk_position(positions)[None, None] + self.chunk_index(
            index.clamp(max=self.config.max_chunks - 1))[:, :, None]
        blocks = torch.arange(n_chunks * span, device=x.device) // span
        separate = blocks[:, None] != blocks[None, :]  # (N*S, N*S) True where attention is blocked
        if causal:  # token positions see the latents and earlier tokens of their own chunk
            offset = torch.arange(n_chunks * span, device=x.device) % span
            later_token = (offset[None, :] > offset[:, None]) & (offset[None, :] >= self.config.latents_per_chunk)
            separate = separate | later_token
        x = x.reshape(batch, n_chunks * span, width)
        if memory_kv is not None:
            hidden = run_decoder(stack, x, memory_kv, separate)
        else:
            hidden = stack(x, memory, tgt_mask=separate, memory_key_padding_mask=memory_pad)
        return hidden.view(batch, n_chunks, span, width)
