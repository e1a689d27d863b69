"""The VQ-VAE's options (`VQVAEConfig`) and their checks, declared once (no torch import).

These are the user's choices only: the vocabulary's size and pad id come from the tokenizer
and are given to the model beside them (`tokens.TextVocab`). `VQVAETrainConfig` (options.py)
inherits every field, so `vqvae train --chunk-size` and a preset's `vqvae.chunk_size` are these.
Saved in DIR/config.json under "model".
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

from ..core.config import Bound, at_least, check_bounds, within
from ..core.errors import OptionError

ASSIGNMENTS = ("nearest", "search")  # how a chunk gets its code: VQ, or the code its decoding fits best
OUTPUT_VOCABS = ("all", "data")  # what the decoder's vocabulary head scores: every id, or the traces' ids


@dataclass
class VQVAEConfig:
    """The VQ-VAE: its shape, its codebook and how chunks get their codes."""

    chunk_size: int = 16  # L: text tokens per chunk
    compression: int = 16  # r: text tokens per latent token; L/r latents per chunk
    codebook_size: int = 64  # K: number of latent tokens (paper: 64 for the synthetic tasks, 1024 for math)
    d_model: int = 128  # width of every transformer stack
    heads: int = 4  # attention heads
    encoder_layers: int = 2  # chunk encoder layers
    decoder_layers: int = 2  # chunk decoder layers
    prompt_layers: int = 1  # prompt encoder g(P) layers (0: embeddings only)
    codebook_dim: int = 32  # codebook vector dimension of the nearest-code quantizer (0: d_model)
    commitment_weight: float = 0.25  # beta, the commitment loss weight (assignment "nearest")
    ema_decay: float = 0.95  # EMA decay of the codebook (assignment "nearest")
    dead_code_threshold: float = 0.5  # replace codes whose EMA usage falls below this (assignment "nearest")
    max_prompt_len: int = 512  # prompts longer than this keep their last tokens (the question)
    max_chunks: int = 64  # chunk-index embeddings; later chunks of a trace share the last one
    dropout: float = 0.0  # dropout
    autoregressive: bool = False  # decode each chunk token by token (causal decoder, greedy), not in one pass
    local_context: int = 0  # prompt positions and AR decoder inputs also read the k tokens before them
    output_vocab: str = "all"  # the vocabulary head scores "all" ids, or only the "data" traces' (big vocabularies)
    assignment: str = "nearest"  # "nearest" codebook vector, or "search": the code whose decoding fits best (r = L)
    search_candidates: int = 16  # assignment "search", training: codes tried per chunk
    search_explore: int = 4  # ... of which drawn at random (the rest: the encoder's most probable)
    copy_prefix: bool = False  # AR decoder: the copy head also matches the tokens before a prompt word to the chunk's
    search_rerank: int = 0  # assignment "search", outside training: of the n most likely codes, keep the best decoded
    encode_candidates: int = 48  # assignment "search", outside training: only the encoder's N likeliest codes (0: all)

    # The range of each numeric option (checked on construction, and by config.from_mapping with its source).
    # Sizes that allocate memory have an upper bound too, far above any real setting: a typo such as
    # --codebook-size 100000000 is refused at once, not after an allocation of gigabytes.
    LIMITS: ClassVar[dict[str, Bound]] = {
        "chunk_size": within(1, 4096), "compression": at_least(1), "codebook_size": within(2, 65536),
        "d_model": within(1, 16384), "heads": within(1, 1024), "encoder_layers": within(1, 256),
        "decoder_layers": within(1, 256), "prompt_layers": within(0, 256), "codebook_dim": within(0, 16384),
        "commitment_weight": at_least(0), "ema_decay": within(0, 1, high_open=True), "dead_code_threshold": at_least(0),
        "max_prompt_len": within(1, 131072), "max_chunks": within(1, 65536), "dropout": within(0, 1, high_open=True),
        "local_context": at_least(0), "search_candidates": at_least(1), "search_explore": at_least(0),
        "search_rerank": at_least(0), "encode_candidates": at_least(0)}

    def __post_init__(self) -> None:
        """What one option cannot say alone; an OptionError names the option to change."""
        check_bounds(self, VQVAEConfig.LIMITS)
        if self.chunk_size % self.compression:
            raise OptionError("chunk_size", f"L={self.chunk_size} must be a multiple of compression "
                                            f"r={self.compression}")
        if self.d_model % self.heads:
            raise OptionError("d_model", f"{self.d_model} must be divisible by heads={self.heads} "
                                         f"(each attention head gets d_model / heads dimensions)")
        if self.output_vocab not in OUTPUT_VOCABS:
            raise OptionError("output_vocab", f"must be one of {', '.join(OUTPUT_VOCABS)}, got {self.output_vocab!r}")
        if self.copy_prefix and not self.autoregressive:
            raise OptionError("copy_prefix", "needs the autoregressive decoder (it matches the chunk's earlier "
                                             "tokens)")
        if self.assignment not in ASSIGNMENTS:
            raise OptionError("assignment", f"must be one of {', '.join(ASSIGNMENTS)}, got {self.assignment!r}")
        self._check_search()

    def _check_search(self) -> None:
        if self.assignment == "search":
            if self.latents_per_chunk != 1:  # K^(L/r) combinations: only one latent per chunk is searchable
                raise OptionError("assignment", f"'search' needs one latent per chunk (compression r = chunk "
                                                f"size L), got L={self.chunk_size}, r={self.compression}")
            if not 0 <= self.search_explore < self.search_candidates <= self.codebook_size:
                raise OptionError("search_candidates", f"search needs 0 <= search_explore ({self.search_explore}) "
                                                       f"< search_candidates ({self.search_candidates}) <= "
                                                       f"codebook_size ({self.codebook_size})")
        elif self.search_rerank > 1:
            raise OptionError("search_rerank", f"re-ranks the codes of assignment 'search'; assignment is "
                                               f"{self.assignment!r}")
        if self.search_rerank > self.codebook_size:
            raise OptionError("search_rerank", f"{self.search_rerank} is more than the codebook size K "
                                               f"({self.codebook_size})")
        if 0 < self.encode_candidates < self.codebook_size and self.search_rerank > self.encode_candidates:
            raise OptionError("search_rerank", f"re-ranks {self.search_rerank} codes, more than the "
                                               f"encode_candidates ({self.encode_candidates}) scored; raise "
                                               f"encode_candidates (0: all K)")

    @property
    def latents_per_chunk(self) -> int:
        return self.chunk_size // self.compression

    @classmethod
    def of(cls, options: Any) -> VQVAEConfig:
        """The VQ-VAE options of a config that holds them (a `VQVAETrainConfig`)."""
        return cls(**{field.name: getattr(options, field.name) for field in fields(cls)})
