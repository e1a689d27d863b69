"""The options of a VQ-VAE training run and their checks (no torch import: the CLI builds its flags
from them, and `run` checks a preset's `vqvae:` section with them before any stage starts)."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from ..core.config import Bound, above, at_least, check_limits, within
from ..core.errors import ConfigError

ASSIGNMENTS = ("nearest", "search")  # how a chunk gets its code: VQ, or the code its decoding fits best
OUTPUT_VOCABS = ("all", "data")  # what the decoder's vocabulary head scores: every id, or the traces' ids


@dataclass
class VQVAETrainConfig:
    """Every option of `token-assorted vqvae train` (YAML keys use the same names)."""

    task: str = ""  # task name: prontoqa, prosqa, keys-maze, gsm8k or qa (your own data: see --fields)
    task_options: dict[str, Any] = field(default_factory=dict)  # the generic task's (qa): fields, answer_match, ...
    data: str = ""  # training examples (JSONL or JSON list, Coconut schema)
    valid: str = ""  # validation examples; empty: validate on the first 200 training examples
    out: str = ""  # output directory (config.json, model.safetensors, tokenizer/, metrics.json, logs/, state/)
    chunk_size: int = 16  # L: text tokens per chunk
    compression: int = 16  # r: text tokens per latent token; L/r latents per chunk
    codebook_size: int = 64  # K: number of latent tokens (paper: 64 for the synthetic tasks, 1024 for math)
    steps: int = 2000  # optimizer steps
    batch_size: int = 32  # examples per optimizer step (all chunks of each), all processes together
    grad_accum: int = 1  # micro-batches per optimizer step and process
    lr: float = 1e-3  # peak learning rate (AdamW, linear warm-up then cosine to 10 %)
    warmup_steps: int = 100  # learning-rate warm-up steps
    weight_decay: float = 0.0  # AdamW weight decay
    grad_clip: float = 1.0  # gradient-norm clipping
    valid_every: int = 250  # validate, checkpoint and save resume state every N steps
    log_every: int = 10  # log the training loss every N steps
    seed: int = 0  # random seed (weights and data order)
    tokenizer: str = "word"  # "word": build one from the data; else a model dir, tokenizer dir, .gguf file or Hub id
    chat_template: bool = False  # render prompts with the tokenizer's chat template
    resume: bool = False  # continue the interrupted run in --out (same options required)
    d_model: int = 128  # transformer width
    heads: int = 4  # attention heads
    encoder_layers: int = 2  # chunk encoder layers
    decoder_layers: int = 2  # chunk decoder layers
    prompt_layers: int = 1  # prompt encoder layers
    codebook_dim: int = 32  # codebook vector dimension (0: d_model)
    commitment_weight: float = 0.25  # beta, the commitment loss weight
    ema_decay: float = 0.95  # EMA decay of the codebook
    dead_code_threshold: float = 0.5  # replace codes whose EMA usage falls below this
    max_prompt_len: int = 512  # prompts longer than this keep their last tokens
    max_trace_len: int = 8192  # traces longer than this (tokens) are skipped, with a count, before encoding
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
    max_examples: int = 0  # use only the first N training examples (0: all)
    stop_at: int = field(default=0, metadata={"help": argparse.SUPPRESS})  # stop after this step, state saved
    progress: bool = True  # show a progress bar
    device: str = "auto"  # "auto" (cuda when available, else cpu), "cpu", "cuda", "cuda:1", ...

    # The range of each numeric option (config.from_mapping checks them wherever options are read).
    LIMITS: ClassVar[dict[str, Bound]] = {
        # Sizes that allocate memory have an upper bound too, far above any real setting: a typo such as
        # --codebook-size 100000000 is refused at once, not after an allocation of gigabytes (issue 34).
        "chunk_size": within(1, 4096), "compression": at_least(1), "codebook_size": within(2, 65536),
        "steps": at_least(1), "batch_size": at_least(1), "grad_accum": at_least(1), "lr": Bound(0, 1, low_open=True),
        "warmup_steps": at_least(0), "weight_decay": at_least(0), "grad_clip": above(0),
        "valid_every": at_least(1), "log_every": at_least(1), "seed": at_least(0), "d_model": within(1, 16384),
        "heads": within(1, 1024), "encoder_layers": within(1, 256), "decoder_layers": within(1, 256),
        "prompt_layers": within(0, 256), "codebook_dim": within(0, 16384), "commitment_weight": at_least(0),
        "ema_decay": within(0, 1, high_open=True), "dead_code_threshold": at_least(0),
        "max_prompt_len": within(1, 131072), "max_trace_len": within(1, 1048576), "dropout": within(0, 1, high_open=True),
        "local_context": at_least(0),
        "search_candidates": at_least(1), "search_explore": at_least(0), "search_rerank": at_least(0),
        "encode_candidates": at_least(0),
        "max_examples": at_least(0), "stop_at": at_least(0),
    }


def check_options(config: VQVAETrainConfig, source: str = "vqvae train", prefix: str = "",
                  paths: bool = True) -> None:
    """Refuse options out of range or inconsistent with each other, naming the option.

    Errors read `SOURCE: PREFIXoption: ...`; `paths=False` skips the data/out paths (a
    preset's `vqvae:` section, checked before they exist, with prefix "vqvae.").
    """
    for name in ("data", "out") if paths else ():
        if not getattr(config, name):
            raise ConfigError(f"{source}: --{name} is required")
    check_limits(asdict(config), VQVAETrainConfig.LIMITS, source, prefix)
    where = f"{source}: {prefix}"
    if config.chunk_size % config.compression:
        raise ConfigError(f"{where}chunk_size: L={config.chunk_size} must be a multiple of "
                          f"compression r={config.compression}")
    if config.batch_size % config.grad_accum:
        raise ConfigError(f"{where}batch_size: {config.batch_size} is not divisible by grad_accum={config.grad_accum}")
    if config.d_model % config.heads:
        raise ConfigError(f"{where}d_model: {config.d_model} must be divisible by heads={config.heads} "
                          f"(each attention head gets d_model / heads dimensions)")
    if config.output_vocab not in OUTPUT_VOCABS:
        raise ConfigError(f"{where}output_vocab: must be one of {', '.join(OUTPUT_VOCABS)}, "
                          f"got {config.output_vocab!r}")
    if config.copy_prefix and not config.autoregressive:
        raise ConfigError(f"{where}copy_prefix: needs the autoregressive decoder")
    _check_assignment(config, where)


def _check_assignment(config: VQVAETrainConfig, where: str) -> None:
    if config.assignment not in ASSIGNMENTS:
        raise ConfigError(f"{where}assignment must be one of {', '.join(ASSIGNMENTS)}, "
                          f"got {config.assignment!r}")
    if config.assignment == "search":
        if config.compression != config.chunk_size:
            raise ConfigError(f"{where}assignment: 'search' needs one latent per chunk (compression r = "
                              f"chunk size L), got L={config.chunk_size}, r={config.compression}")
        if not 0 <= config.search_explore < config.search_candidates <= config.codebook_size:
            raise ConfigError(f"{where}search_candidates: search needs 0 <= search_explore "
                              f"({config.search_explore}) < search_candidates ({config.search_candidates}) "
                              f"<= codebook_size ({config.codebook_size})")
        if 0 < config.encode_candidates < config.codebook_size and config.search_rerank > config.encode_candidates:
            raise ConfigError(f"{where}search_rerank: re-ranks {config.search_rerank} codes, more than the "
                              f"encode_candidates ({config.encode_candidates}) scored; raise encode_candidates "
                              f"(0: all K)")
