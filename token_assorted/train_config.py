"""The options of a stage-2 run (`token-assorted train`, a preset's `train:` section) and their checks.

`TrainConfig` is the one place each option is declared: the command's flags are made from
its fields (`commands/flags.py`), a preset's `train:` and `method_overrides:` sections are
checked against it, and the resolved config is saved beside the model. `check_config` adds
what one field cannot say alone, the method's own settings included (`method_for`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from .config import Bound, above, at_least, check_limits, within
from .devices import check_precision
from .errors import ConfigError
from .lora import LoraSettings, check_lora

if TYPE_CHECKING:  # the methods load torch: this module stays light, the CLI builds its flags from it
    from .methods import Method


@dataclass
class TrainConfig:
    """Everything one stage-2 run depends on (saved beside the model, resolved)."""

    task: str = ""  # a task name (token_assorted.tasks.TASK_NAMES)
    task_options: dict[str, Any] = field(default_factory=dict)  # the generic task's (qa): fields, answer_match, ...
    data: str = ""  # training examples (JSONL / JSON list)
    out: str = ""  # output model directory
    valid: str | None = None  # validation examples: greedy accuracy every epoch, best kept
    strategy: str = "token-assorted"  # a chunk strategy (token-assorted, cot, ...), coconut, icot or coconut-pause
    vqvae: str | None = None  # stage-1 folder: its tokenizer and codebook, the codes computed in memory
    codes: str | None = None  # instead of vqvae: a codes file (`vqvae encode`, latents.py)
    model: str = "tiny"  # tiny | small | base | gpt2 | gpt2-tiny | a local HF model dir | FILE.gguf
    tokenizer: str | None = None  # tokenizer dir for runs without a VQ-VAE (default: built from data)
    embedding_init: str = "mean"  # new latent rows: "mean" or "codebook" (models.py)
    lora: LoraSettings | None = None  # LoRA adapters instead of full fine-tuning (lora.py); None: off
    latent_vocab_for_baselines: bool = True  # cot/sol-only with a VQ-VAE get the latent rows too
    epochs: int = 10  # training epochs
    batch_size: int = 32  # effective sequences per optimizer step (all processes together)
    grad_accum: int = 1  # micro-batches per optimizer step and process
    lr: float = 1e-3  # peak learning rate (AdamW)
    weight_decay: float = 0.0  # AdamW weight decay
    warmup: float = 0.05  # < 1: fraction of all optimizer steps; >= 1: a number of steps
    lr_schedule: str = "auto"  # auto | reference | final-cosine | cosine | constant (methods.LR_SCHEDULES)
    max_grad_norm: float = 1.0  # gradient-norm clipping (0: none)
    max_length: int = 512  # longer examples are skipped (with a count)
    group_by_length: bool = False  # batches of similar lengths: less padding (train.group_by_length)
    m_values: list[int] | None = None  # token-assorted: m drawn from this set; None: any whole chunks
    poisson_p: float = 0.5  # poisson: probability of replacing each chunk
    curriculum_epochs: int = 1  # curriculum: epochs per stage
    curriculum_max_chunks: int | None = None  # curriculum: cap on replaced chunks (None: whole trace)
    coconut_thoughts_per_step: int = 1  # coconut: c, continuous thoughts per replaced step (paper: 2 for math)
    coconut_stages: int | None = None  # coconut: last stage S (None: the most steps of a training trace)
    coconut_epochs_per_stage: float = 1.0  # coconut: epochs of each stage 1 … S (a fraction: in steps)
    coconut_cot_epochs: float | None = None  # coconut: epochs of stage 0, plain CoT (None: coconut_epochs_per_stage)
    icot_tokens_per_epoch: float = 8.0  # icot: trace tokens removed per epoch, one at a time (Deng et al.: 8)
    icot_smoothing_lambda: float | None = 4.0  # icot: P(o extra removed) ∝ exp(-λ o), count 0 too; None: none
    icot_remove_all_beyond: int | None = None  # icot: a scheduled count >= this removes the whole trace
    icot_final_epochs: int = 0  # icot: the run's last epochs train with the whole trace removed (not iCoT's own)
    seed: int = 0  # random seed (data order, m draws, initialisation)
    chat_template: bool = False  # wrap prompts in the tokenizer's chat template
    mixed_precision: str = "auto"  # "auto" (bf16 on CUDA, else none), "no", "bf16"
    eval_batch_size: int = 64  # prompts generated together in validation
    eval_limit: int | None = None  # validate on the first N examples only
    max_new_tokens: int | None = None  # validation's budget; None: longest valid trace + solution, plus 16
    save_every: int = 0  # optimizer steps between resume checkpoints (0: end of each epoch only)
    max_steps: int | None = None  # stop after this many optimizer steps in all
    log_every: int = 10  # optimizer steps between TensorBoard points
    resume: bool = False  # continue the run saved in --out
    progress: bool = True  # tqdm bar (main process only)

    # Each numeric option's range, checked wherever a config is read (a preset: before any stage runs).
    LIMITS: ClassVar[dict[str, Bound]] = {
        "epochs": at_least(1), "batch_size": at_least(1), "grad_accum": at_least(1), "lr": Bound(0, 1, low_open=True),
        "weight_decay": at_least(0), "warmup": at_least(0), "max_grad_norm": at_least(0), "max_length": at_least(2),
        "m_values": at_least(0), "poisson_p": within(0, 1), "curriculum_epochs": at_least(1), "seed": at_least(0),
        "curriculum_max_chunks": at_least(0), "eval_batch_size": at_least(1), "eval_limit": at_least(1),
        "max_new_tokens": at_least(1), "save_every": at_least(0), "max_steps": at_least(1), "log_every": at_least(0),
        "coconut_thoughts_per_step": at_least(1), "coconut_stages": at_least(1),
        "coconut_epochs_per_stage": above(0),
        "coconut_cot_epochs": at_least(0), "icot_tokens_per_epoch": above(0), "icot_smoothing_lambda": above(0),
        "icot_remove_all_beyond": at_least(1), "icot_final_epochs": at_least(0)}


def method_for(config: TrainConfig) -> Method:
    """The method of `config.strategy`: a chunk strategy of mixing.py (Curriculum-Replace with its
    stages), Coconut, Coconut's pause control or iCoT (each in its own module, subclassing methods.Method)."""
    from .coconut import Coconut
    from .coconut_pause import CoconutPause
    from .icot import StepwiseInternalization
    from .methods import LR_SCHEDULES, METHOD_NAMES, CurriculumReplace, Method

    if config.strategy not in METHOD_NAMES:
        raise ConfigError(f"unknown strategy {config.strategy!r}; choose one of: {', '.join(METHOD_NAMES)}")
    if config.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {config.lr_schedule!r}")
    methods = {"coconut": Coconut, "coconut-pause": CoconutPause, "icot": StepwiseInternalization,
               "curriculum": CurriculumReplace}
    return methods.get(config.strategy, Method)(config)


def check_config(config: TrainConfig, source: str = "train", prefix: str = "", have_latents: bool = False) -> None:
    """Refuse options out of range or inconsistent with each other: `SOURCE: PREFIXoption: ...`
    (a preset's section: prefix "train." or "method_overrides.NAME.")."""
    for name in ("task", "data", "out"):
        if not getattr(config, name):
            raise ConfigError(f"{source}: '{name}' is required")
    check_limits(dataclasses.asdict(config), TrainConfig.LIMITS, source, prefix)  # configs built in Python too
    if config.batch_size % config.grad_accum:
        raise ConfigError(f"{source}: {prefix}batch_size: {config.batch_size} is not divisible by "
                          f"grad_accum={config.grad_accum}")
    from .mixing import LAYOUT_STRATEGIES
    from .models import EMBEDDING_INITS

    try:
        method_for(config)  # the name, and the method's own settings (iCoT's final epochs within epochs)
        if config.strategy in LAYOUT_STRATEGIES and not (config.vqvae or config.codes or have_latents):
            raise ConfigError(f"strategy {config.strategy!r} replaces trace chunks by latent tokens: "
                              f"pass --vqvae DIR (or a codes file)")
        if config.embedding_init not in EMBEDDING_INITS:
            raise ConfigError(f"embedding_init must be one of {EMBEDDING_INITS}, got {config.embedding_init!r}")
        check_precision(config.mixed_precision)
        if config.lora is not None:
            check_lora(config.lora)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {prefix}{exc}" if prefix else str(exc)) from None
