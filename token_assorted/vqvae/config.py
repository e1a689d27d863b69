"""The shape of a VQ-VAE (`VQVAEConfig`), saved in DIR/config.json under "model" (no torch import).

Options that were measured and dropped (BENCHMARKS.md, "Stage 1": "What was tried") are
`RETIRED`: a saved config may still name them with the value under which they changed
nothing, so every checkpoint of the kept recipe loads; any other value is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.errors import CheckpointError
from .options import ASSIGNMENTS

# Retired option -> the value under which a saved run computed what the code computes now.
RETIRED = {"tie_embeddings": True, "copy_head": True, "word_dropout": 0.0, "rotation_trick": False,
           "prefix_rank": 0}


@dataclass
class VQVAEConfig:
    """Shape of a VQ-VAE; saved in DIR/config.json under "model"."""

    vocab_size: int  # size of the shared text tokenizer
    pad_id: int  # pad token id (fills a trailing partial chunk and short prompts)
    chunk_size: int = 16  # L: text tokens per chunk
    compression: int = 16  # r: text tokens per latent token (L/r latents per chunk)
    codebook_size: int = 64  # K: number of latent tokens
    d_model: int = 128  # width of every transformer stack
    heads: int = 4  # attention heads
    encoder_layers: int = 2  # chunk encoder depth
    decoder_layers: int = 2  # chunk decoder depth
    prompt_layers: int = 1  # prompt encoder g(P) depth (0: embeddings only)
    codebook_dim: int = 32  # dimension of codebook vectors (0: d_model, no projection)
    commitment_weight: float = 0.25  # beta: pulls encoder outputs towards their codes
    ema_decay: float = 0.95  # EMA decay of codebook statistics
    dead_code_threshold: float = 0.5  # a code whose EMA usage falls below this is replaced
    max_prompt_len: int = 512  # longer prompts keep their last tokens (the question)
    max_chunks: int = 64  # chunk-index embeddings; later chunks share the last one
    dropout: float = 0.0
    autoregressive: bool = False  # decoder reads the chunk's earlier tokens (teacher forcing; greedy at decode)
    local_context: int = 0  # prompt tokens (and AR decoder inputs) also read the k tokens before them
    output_vocab_size: int = 0  # 0: the vocabulary head scores every id; else only the `output_ids`
    assignment: str = "nearest"  # "nearest": VQ (nearest codebook vector); "search": the best-fitting code
    search_candidates: int = 16  # assignment "search", training: codes tried per chunk
    search_explore: int = 4  # ... of which drawn at random (the rest: the encoder's most probable)
    copy_prefix: bool = False  # copy head also matches the tokens before each prompt position to the chunk's
    search_rerank: int = 0  # search, outside training: of the n likeliest codes, the best decoded
    encode_candidates: int = 48  # search, outside training: score the encoder's N likeliest codes (0 or >= K: all)

    def __post_init__(self) -> None:
        if self.chunk_size < 1 or self.compression < 1 or self.chunk_size % self.compression:
            raise ValueError(f"chunk size L={self.chunk_size} must be a positive multiple of "
                             f"the compression r={self.compression}")
        if self.codebook_size < 2:
            raise ValueError("codebook size K must be at least 2")
        if self.local_context < 0:
            raise ValueError(f"local_context={self.local_context} must be >= 0")
        if not 0 <= self.output_vocab_size <= self.vocab_size:
            raise ValueError(f"output_vocab_size={self.output_vocab_size} must be in 0..{self.vocab_size}")
        if self.copy_prefix and not self.autoregressive:
            raise ValueError("copy_prefix needs the autoregressive decoder (it matches the chunk's earlier tokens)")
        if self.assignment not in ASSIGNMENTS:
            raise ValueError(f"assignment={self.assignment!r} must be one of {', '.join(ASSIGNMENTS)}")
        if self.assignment == "search":
            if self.latents_per_chunk != 1:  # K^(L/r) combinations: only one latent per chunk is searchable
                raise ValueError(f"assignment 'search' needs one latent per chunk (r = L), "
                                 f"got L={self.chunk_size}, r={self.compression}")
            if not 0 <= self.search_explore < self.search_candidates <= self.codebook_size:
                raise ValueError(f"search needs 0 <= search_explore ({self.search_explore}) < search_candidates "
                                 f"({self.search_candidates}) <= codebook size K ({self.codebook_size})")
        if not 0 <= self.search_rerank <= self.codebook_size:
            raise ValueError(f"search_rerank={self.search_rerank} must be in 0..{self.codebook_size} "
                             f"(the codebook size K)")
        if self.encode_candidates < 0:
            raise ValueError(f"encode_candidates={self.encode_candidates} must be >= 0 (0: all K codes)")
        if 0 < self.encode_candidates < self.codebook_size and self.search_rerank > self.encode_candidates:
            raise ValueError(f"search_rerank={self.search_rerank} re-ranks more codes than the "
                             f"encode_candidates={self.encode_candidates} scored")
        if self.search_rerank > 1 and self.assignment != "search":
            raise ValueError(f"search_rerank={self.search_rerank} re-ranks the codes of assignment 'search'; "
                             f"assignment is {self.assignment!r}")

    @property
    def latents_per_chunk(self) -> int:
        return self.chunk_size // self.compression


def without_retired(saved: dict[str, Any], source: str) -> dict[str, Any]:
    """`saved` options less the retired ones; a retired option set to anything but its kept value is refused."""
    for name, kept in RETIRED.items():
        if name in saved and saved[name] != kept:
            raise CheckpointError(f"{source}: trained with {name}={saved[name]!r}, an option that was removed "
                                  f"(BENCHMARKS.md, Stage 1: it did not help); retrain with the current code")
    return {name: value for name, value in saved.items() if name not in RETIRED}
