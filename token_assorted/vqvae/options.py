"""The options of every `vqvae` subcommand (no torch import: the CLI builds its flags from them, and
`run` checks a preset's `vqvae:` section with them before any stage starts).

`VQVAETrainConfig` is the VQ-VAE's options (`VQVAEConfig`) and the optimisation options both
stages share (`OptimizationOptions`), inherited so that keys and flags stay flat, plus what only
a training run has. Each class checks its own fields when it is built (`__post_init__`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..core.config import Bound, at_least, check_bounds, within
from ..core.errors import ConfigError
from ..training.options import OptimizationOptions
from .config import VQVAEConfig

# The range of each option only a training run has.
RUN_LIMITS: dict[str, Bound] = {"steps": at_least(1), "valid_every": at_least(1), "max_trace_len": within(1, 1048576),
                                "max_examples": at_least(0), "stop_at": at_least(0)}


@dataclass
class VQVAETrainConfig(VQVAEConfig, OptimizationOptions):
    """A training run: its data and folder (`token-assorted vqvae train`; YAML keys use the same names)."""

    task: str = ""  # task name: prontoqa, prosqa, keys-maze, gsm8k or qa (your own data: see --fields)
    task_options: dict[str, Any] = field(default_factory=dict)  # the generic task's (qa): fields, answer_match, ...
    data: str = ""  # training examples (JSONL or JSON list, Coconut schema)
    valid: str = ""  # validation examples; empty: validate on the first 200 training examples
    out: str = ""  # output directory (config.json, model.safetensors, tokenizer/, metrics.json, logs/, state/)
    steps: int = 2000  # optimizer steps (lr: linear warm-up, then cosine down to 10 %)
    valid_every: int = 250  # validate, checkpoint and save resume state every N steps
    tokenizer: str = "word"  # "word": build one from the data; else a model dir, tokenizer dir, .gguf file or Hub id
    chat_template: bool = False  # render prompts with the tokenizer's chat template
    max_trace_len: int = 8192  # traces longer than this (tokens) are skipped, with a count, before encoding
    max_examples: int = 0  # use only the first N training examples (0: all)
    resume: bool = False  # continue the interrupted run in --out (same options required)
    stop_at: int = field(default=0, metadata={"help": argparse.SUPPRESS})  # stop after this step, state saved
    progress: bool = True  # show a progress bar
    device: str = "auto"  # where to train: "auto" (cuda when available, else cpu), "cpu", "cuda", "cuda:1", ...

    LIMITS: ClassVar[dict[str, Bound]] = {**VQVAEConfig.LIMITS, **OptimizationOptions.LIMITS, **RUN_LIMITS}

    def __post_init__(self) -> None:
        OptimizationOptions.__post_init__(self)
        VQVAEConfig.__post_init__(self)
        check_bounds(self, RUN_LIMITS)


def check_paths(config: VQVAETrainConfig, source: str = "vqvae train") -> None:
    """The data and output folder a run cannot start without (a preset's section gets them from `run`)."""
    for name in ("data", "out"):
        if not getattr(config, name):
            raise ConfigError(f"{source}: --{name} is required")


@dataclass
class EncodeOptions:
    """A trained VQ-VAE put to use: `vqvae encode` (traces -> codes file) and `vqvae evaluate`."""

    vqvae: str = field(default="", metadata={"required": True})  # trained VQ-VAE directory
    data: str = field(default="", metadata={"required": True})  # examples whose traces to encode
    task: str = ""  # task name (default: the VQ-VAE's task)
    out: str = ""  # encode: the codes file to write (what `train --codes` reads); evaluate: also the metrics here
    batch_size: int = 64  # examples per batch
    # Unset: the VQ-VAE's own settings (they change how a search model picks codes, not its weights).
    search_rerank: int | None = None  # search: decode the N likeliest codes, keep the best (default: the VQ-VAE's)
    encode_candidates: int | None = None  # search: score the N likeliest codes, 0: all K (default: the VQ-VAE's)
    max_trace_len: int | None = None  # encode: skip (and count) longer traces, in tokens (default: the VQ-VAE's)

    LIMITS: ClassVar[dict[str, Bound]] = {"batch_size": at_least(1), "max_trace_len": within(1, 1048576)}


@dataclass
class DecodeOptions:
    """`vqvae decode`: the text a sequence of latent tokens stands for."""

    vqvae: str = field(default="", metadata={"required": True})  # trained VQ-VAE directory
    prompt: str = field(default="", metadata={"required": True})  # the question the codes were encoded under
    codes: list[int] = field(default_factory=list, metadata={"required": True})  # codebook indices, e.g. 12,7,40
    task: str = ""  # task name (default: the VQ-VAE's task)
