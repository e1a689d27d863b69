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

from ..core.config import Bound, above, at_least, check_limits, within
from ..core.devices import check_precision
from ..core.errors import ConfigError
from ..generation.config import GenerationConfig
from ..training.options import OptimizationOptions
from .lora import LoraSettings, check_lora

if TYPE_CHECKING:  # the methods load torch: this module stays light, the CLI builds its flags from it
    from .methods.base import Method


@dataclass
class TrainConfig(OptimizationOptions):
    """Everything one stage-2 run depends on (saved beside the model, resolved). The optimisation
    options (batch_size, grad_accum, lr, weight_decay, warmup, max_grad_norm, seed, log_every) are
    stage 1's too, declared once in `OptimizationOptions`; the seed also draws Token Assorted's m."""

    task: str = ""  # a task name (token_assorted.data.tasks.TASK_NAMES)
    task_options: dict[str, Any] = field(default_factory=dict)  # the generic task's (qa): fields, answer_match, ...
    data: str = ""  # training examples (JSONL / JSON list)
    out: str = ""  # output model directory
    valid: str | None = None  # validation examples: greedy accuracy every epoch, best kept
    strategy: str = "token-assorted"  # a method of the registry (lm/methods/__init__.py's METHODS)
    vqvae: str | None = None  # stage-1 folder: its tokenizer and codebook, the codes computed in memory
    codes: str | None = None  # instead of vqvae: a codes file (`vqvae encode`, vqvae/codes.py)
    model: str = "scratch-tiny"  # scratch-tiny/-small/-base/-gpt2/-gpt2-tiny, a model folder, FILE.gguf or ORG/NAME[@REV]
    tokenizer: str | None = None  # tokenizer dir for runs without a VQ-VAE (default: built from data)
    embedding_init: str = "mean"  # new latent rows: "mean" or "codebook" (models.py)
    lora: LoraSettings | None = None  # LoRA adapters instead of full fine-tuning (lora.py); None: off
    latent_vocab_for_baselines: bool = True  # cot/sol-only with a VQ-VAE get the latent rows too
    epochs: int = 10  # training epochs
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
    chat_template: bool = False  # wrap prompts in the tokenizer's chat template
    mixed_precision: str = "auto"  # "auto" (bf16 on CUDA, else none), "no", "bf16"
    sharding: str = "ddp"  # ddp: a whole model per process; fsdp: weights, gradients, optimizer sharded (FSDP2)
    weights_dtype: str = "float32"  # float32, or bfloat16: weights and AdamW moments in bf16 (half the memory)
    gradient_checkpointing: bool = False  # recompute each layer's activations in backward (less memory, about a third slower)
    fused_adamw: bool | None = None  # torch's fused AdamW kernel; None: on a CUDA GPU, off elsewhere
    pad_vocab_to: int = 1  # embedding rows padded to a multiple of this after the latent rows (64 on GPUs)
    liger_kernel: bool = False  # liger-kernel's fused linear cross-entropy: no (B, T, V) logits (CUDA only)
    validation: GenerationConfig = field(default_factory=GenerationConfig)  # greedy answers on --valid each epoch
    save_every: int = 0  # optimizer steps between resume checkpoints (0: end of each epoch only)
    max_steps: int | None = None  # stop after this many optimizer steps in all
    resume: bool = False  # continue the run saved in --out
    progress: bool = True  # tqdm bar (main process only)

    # Each numeric option's range, checked wherever a config is read (a preset: before any stage runs).
    LIMITS: ClassVar[dict[str, Bound]] = {
        **OptimizationOptions.LIMITS, "epochs": at_least(1), "max_length": within(2, 131072),
        "m_values": at_least(0), "poisson_p": within(0, 1), "curriculum_epochs": at_least(1),
        "curriculum_max_chunks": at_least(0), "save_every": at_least(0), "max_steps": at_least(1),
        "coconut_thoughts_per_step": at_least(1), "coconut_stages": at_least(1),
        "coconut_epochs_per_stage": above(0),
        "coconut_cot_epochs": at_least(0), "icot_tokens_per_epoch": above(0), "icot_smoothing_lambda": above(0),
        "icot_remove_all_beyond": at_least(1), "icot_final_epochs": at_least(0),
        "pad_vocab_to": at_least(1)}


def check_config(config: TrainConfig, source: str = "train", prefix: str = "", have_latents: bool = False) -> Method:
    """Refuse options out of range or inconsistent with each other: `SOURCE: PREFIXoption: ...`
    (a preset's section: prefix "train." or "method_overrides.NAME."); return the method they describe,
    built once (its own settings are checked as it is built)."""
    for name in ("task", "data", "out"):
        if not getattr(config, name):
            raise ConfigError(f"{source}: '{name}' is required")
    check_limits(dataclasses.asdict(config), TrainConfig.LIMITS, source, prefix)  # configs built in Python too
    check_limits(dataclasses.asdict(config.validation), GenerationConfig.LIMITS, source, f"{prefix}validation.")
    from .methods import METHODS, method_for
    from .models import EMBEDDING_INITS, check_model_spec

    try:
        check_model_spec(config.model)  # a former preset name (gpt2, tiny): what it is called now
        method = method_for(config)  # the name, and the method's own settings (iCoT's final epochs within epochs)
        if METHODS[config.strategy].layout and not (config.vqvae or config.codes or have_latents):
            raise ConfigError(f"strategy {config.strategy!r} replaces trace chunks by latent tokens: "
                              f"pass --vqvae DIR (or a codes file)")
        if config.embedding_init not in EMBEDDING_INITS:
            raise ConfigError(f"embedding_init must be one of {EMBEDDING_INITS}, got {config.embedding_init!r}")
        check_precision(config.mixed_precision)
        if config.lora is not None:
            check_lora(config.lora)
        check_scale_options(config)
    except ConfigError as exc:
        # A message that names its option already (train.lora: ...) is not prefixed twice.
        message = str(exc).removeprefix("train.") if prefix else str(exc)
        raise ConfigError(f"{source}: {prefix}{message}" if prefix else message) from None
    return method


WEIGHT_DTYPES = ("float32", "bfloat16")


def check_scale_options(config: TrainConfig) -> None:
    """The memory levers and the sharding: known names, and no pair that cannot run together."""
    from ..training.sharding import SHARDINGS

    if config.sharding not in SHARDINGS:
        raise ConfigError(f"sharding must be one of {', '.join(SHARDINGS)}, got {config.sharding!r}")
    if config.weights_dtype not in WEIGHT_DTYPES:
        raise ConfigError(f"weights_dtype must be one of {', '.join(WEIGHT_DTYPES)}, got {config.weights_dtype!r}")
    if config.strategy == "coconut":
        # Its thoughts run on the KV cache, which recomputed layers do not keep; its answering loop
        # stops when its own rows are done, where FSDP needs every rank in every forward.
        for name, on in (("gradient_checkpointing", config.gradient_checkpointing),
                         ("sharding: fsdp", config.sharding == "fsdp"), ("liger_kernel", config.liger_kernel)):
            if on:
                raise ConfigError(f"strategy coconut cannot train with {name} (its continuous thoughts need the "
                                  f"KV cache and whole logits, and its answering loop is not synchronised)")
    if config.liger_kernel:
        check_liger()


def check_liger() -> None:
    """liger-kernel's Triton kernels need the package and a CUDA GPU: refused in one line otherwise."""
    import importlib.util

    if importlib.util.find_spec("liger_kernel") is None:
        raise ConfigError("liger_kernel needs the 'liger-kernel' package: pip install 'token-assorted[liger]'")
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("liger_kernel runs on a CUDA GPU only (Triton kernels); none is available here")
