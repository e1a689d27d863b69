"""Stage 2's setup: data, tokenizer, latent codes and model, with the latent vocabulary added.

`setup(config)` loads the training (and validation) examples, the latent codes (a codes file,
or a VQ-VAE that encodes the examples in memory), builds a model from scratch (with the
VQ-VAE's tokenizer) or loads a pretrained one, adds the latent tokens and the method's own,
encodes every example and drops, with a count, those longer than `max_length`. What it
returns (`Setup`) is all the training loop and the method's batches read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.errors import ConfigError
from ..data.encoding import EncodedExample
from ..data.latent_tokens import ChunkLayout, LatentVocab, add_latent_tokens, add_pause_token
from ..data.schema import Example
from ..data.tasks import Task, get_task
from ..data.tokenizer import task_tokenizer, tokenizer_fingerprint
from ..generation.generate import position_limit
from ..vqvae.codes import LatentCodes, load_latent_codes
from .config import TrainConfig, check_config
from .levers import apply_levers, pad_vocabulary
from .lora import apply_lora
from .methods.base import Method
from .mixing import Strategy, check_codes, max_latent_chunks
from .models import add_pause_row, build_scratch_model, check_model_spec, extend_vocabulary, is_preset
from .pretrained import load_pretrained_lm


@dataclass
class Setup:
    """The prepared pieces of a run."""

    task: Task
    tokenizer: Any
    model: Any
    strategy: Strategy
    method: Method  # sequences, loss, optimizer phases, answers (methods/)
    encoded: list[EncodedExample]  # training examples that fit max_length
    codes: list[list[int]] | None  # their latent codes (same order), None for text-only runs
    layout: ChunkLayout | None
    latent_vocab: LatentVocab | None
    latents: LatentCodes | None
    valid: list[Example] = field(default_factory=list)
    skipped: int = 0
    max_latent_chunks: int = 0  # the most chunks any training sequence could replace (the dial's limit)
    epoch: int = 0  # the epoch being trained (a curriculum validates at its current stage)
    step: int = 0  # the last optimizer step trained (0-based): the stage validation answers at


def _text_tokenizer(config: TrainConfig, task: Task, train: list[Example], latents: LatentCodes | None):
    """The tokenizer of a scratch model: the VQ-VAE's, a given one, or one built from the data."""
    if latents is not None and latents.tokenizer is not None:
        return latents.tokenizer
    return task_tokenizer(config.tokenizer or "word", task, train)


def _model_and_tokenizer(config: TrainConfig, task: Task, train: list[Example], latents: LatentCodes | None):
    check_model_spec(config.model)
    if is_preset(config.model):
        tokenizer = _text_tokenizer(config, task, train, latents)
        return build_scratch_model(config.model, tokenizer, config.max_length, config.seed), tokenizer
    import torch

    model, tokenizer = load_pretrained_lm(config.model, dtype=getattr(torch, config.weights_dtype))
    if latents is not None and latents.tokenizer is not None:
        if tokenizer_fingerprint(latents.tokenizer) != tokenizer_fingerprint(tokenizer):
            raise ConfigError(f"the VQ-VAE was trained with another tokenizer than {config.model}'s")
    return model, tokenizer


def setup(config: TrainConfig, latents: LatentCodes | None = None) -> Setup:
    """Load data, tokenizer, codes and model; add the latent vocabulary where needed."""
    method = check_config(config, have_latents=latents is not None)
    task = get_task(config.task, **config.task_options)
    train = task.load(config.data)
    valid = task.load(config.valid) if config.valid else []
    strategy = method.strategy
    if latents is None and (config.vqvae or config.codes):
        latents = load_latent_codes(config, task, train, need_codes=strategy.needs_codes)
    model, tokenizer = _model_and_tokenizer(config, task, train, latents)
    latent_vocab = layout = None
    wants_vocab = strategy.needs_codes or strategy.writes_pause or config.latent_vocab_for_baselines
    if latents is not None and wants_vocab:
        latent_vocab = add_latent_tokens(tokenizer, latents.codebook_size)
        extend_vocabulary(model, latent_vocab, config.embedding_init, latents.codebook, seed=config.seed)
        if strategy.writes_pause:  # appended after the latent tokens: other models' ids stay as they were
            latent_vocab = add_pause_token(tokenizer, latent_vocab)
            add_pause_row(model, latent_vocab, seed=config.seed)
        layout = ChunkLayout(latents.chunk_size, latents.latents_per_chunk, latent_vocab)
    method.prepare(tokenizer, model, train)  # its own tokens (Coconut's), after the latent rows
    model.config.pad_token_id = tokenizer.pad_token_id
    if config.pad_vocab_to > 1:  # after every added row: the padding rows are never generated
        pad_vocabulary(model, config.pad_vocab_to, len(tokenizer))
    model = apply_levers(model, config)  # bf16 weights, gradient checkpointing, liger's loss
    if config.lora is not None:  # [lora] adapters, with the latent (or the method's own) rows trained in full
        model = apply_lora(model, config.lora, method.vocab or latent_vocab, config.seed)
    encoded = [method.encode(tokenizer, task, ex, config.chat_template) for ex in train]
    codes = latents.codes if latents is not None and strategy.needs_codes else None
    limit = _length_limit(config, model)
    keep = [i for i, enc in enumerate(encoded) if method.max_length(enc, layout) <= limit]
    if codes is not None:
        if len(codes) != len(encoded):
            raise ConfigError(f"{len(codes)} code lists for {len(encoded)} training examples")
        for i in keep:  # the VQ-VAE did not encode the examples too long to keep (vqvae/codes.py)
            check_codes(len(encoded[i].trace_ids), codes[i], layout, where=f"{config.data}, example {i}: ")
    if not keep:
        raise ConfigError(f"every training example is longer than max_length={limit}")
    kept = [encoded[i] for i in keep]
    mixes = codes is not None or strategy.writes_pause  # the strategies that read the chunk layout
    return Setup(task, tokenizer, model, strategy, method, kept, None if codes is None else [codes[i] for i in keep],
                 layout if mixes else None, latent_vocab, latents, valid, len(encoded) - len(keep),
                 max_latent_chunks(strategy, kept, layout if mixes else None, config.epochs))


def _length_limit(config: TrainConfig, model) -> int:
    """max_length, capped by a learned position table (GPT-2's n_positions): past it, it crashes."""
    positions = position_limit(model)
    return min(config.max_length, positions) if positions else config.max_length
