"""The VQ-VAE's parts, each a module that owns its weights, and the passes through them.

    prompt P --tokens.in_context--> --prompt_memory g--> memory (B, P, D)          `encode_prompt`
    chunk (L) --tokens--> --encoder f_enc(. | memory)--> L/r latents (D)            `encode`
    L/r code vectors --decoder f_dec(. | memory)--> L hidden states (D)            `decode`
    hidden states --copy_head's mixture with the tokens' vocabulary head--> p(token)

The parts: the token embeddings and tied vocabulary head (tokens.py), the prompt memory g(P)
(prompt.py), the chunk encoder (encoder.py), the quantizer (quantizer.py), the chunk decoder
(decoder.py) and the copy head (copy_head.py). `VQVAE` (model.py) adds what uses them
together: the training pass, the codes of chunks (search.py) and greedy decoding (decoding.py),
which read the parts through this class.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .config import VQVAEConfig
from .copy_head import CopyHead
from .decoder import ChunkDecoder
from .encoder import ChunkEncoder
from .prompt import MemoryKV, PromptMemory
from .quantizer import build_quantizer
from .tokens import TextVocab, TokenEmbedding


class VQVAEParts(nn.Module):
    """The VQ-VAE's parts, each owning its weights, and the passes through them on token ids."""

    def __init__(self, config: VQVAEConfig, vocab: TextVocab) -> None:
        super().__init__()
        self.config, self.vocab = config, vocab
        self.tokens = TokenEmbedding(vocab, config.d_model, config.local_context)
        self.prompt_memory = PromptMemory(config)
        self.encoder = ChunkEncoder(config)
        self.quantizer = build_quantizer(config)
        self.decoder = ChunkDecoder(config)
        self.copy_head = CopyHead(config.d_model, config.copy_prefix)

    def encode_prompt(self, prompt_ids: Tensor, prompt_pad: Tensor) -> Tensor:
        """g(P): (B, P) ids and pad mask -> (B, P, D) memory the chunks attend to."""
        return self.prompt_memory(self.tokens.in_context(prompt_ids), prompt_pad)

    def encode(self, chunk_ids: Tensor, memory: Tensor, memory_pad: Tensor) -> Tensor:
        """f_enc: (B, N, L) chunks -> (B, N, L/r, D) continuous latents."""
        return self.encoder(self.tokens(chunk_ids), memory, memory_pad)

    def previous(self, chunk_ids: Tensor | None) -> Tensor | None:
        """What each position of (..., L) chunks reads of the tokens before it: the autoregressive
        decoder's input and the copy prefix's chunk side, (..., L, D); None for the one-pass decoder."""
        return self.tokens.prefix_features(chunk_ids) if self.config.autoregressive else None

    def prefix_of(self, chunk_ids: Tensor) -> Tensor | None:
        """The copy prefix's chunk side of (..., L) chunk tokens, None when the option is off."""
        return self.tokens.prefix_features(chunk_ids) if self.config.copy_prefix else None

    def decode(self, quantized: Tensor, memory: Tensor, memory_pad: Tensor, chunk_ids: Tensor | None = None,
               memory_kv: MemoryKV | None = None, chunk_index: Tensor | None = None) -> Tensor:
        """f_dec, teacher-forced: (B, N, L/r, D) code vectors -> (B, N, L, D) hidden states (the
        autoregressive decoder reads the chunks' (B, N, L) tokens before each position)."""
        return self.decoder(quantized, memory, memory_pad, self.previous(chunk_ids), memory_kv, chunk_index)

    def memory_kv(self, memory: Tensor, memory_pad: Tensor) -> MemoryKV:
        """The decoder's cross-attention keys and values of a (B, P, D) memory, to pass to `decode`."""
        return self.decoder.memory_kv(memory, memory_pad)

    def copy_keys(self, memory: Tensor, prompt_ids: Tensor) -> Tensor:
        """The copy head's side of the prompts, to compute once and pass on as `keys`."""
        return self.copy_head.keys(self.tokens, memory, prompt_ids)

    def set_output_vocab(self, ids: Sequence[int]) -> None:
        """Restrict the vocabulary head to `ids` (the pad id is always kept)."""
        self.tokens.set_output_vocab(ids)
