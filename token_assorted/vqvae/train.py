"""Training the stage-1 VQ-VAE on the skeleton both stages share (training/fit.py), resumable exactly.

Loss = reconstruction cross-entropy + the quantizer's loss: beta * commitment for the nearest
code (the codebook itself moves by EMA, not by gradients), the encoder's classification of
the best-fitting code for assignment by search. Batches are whole examples in an order that
is a pure function of (seed, step) (`batches.step_indices`), each process taking its share of
a step's examples, so a resumed run, or one on several GPUs, sees the same batches. Every
`valid_every` steps the reconstruction metrics are logged and the VQ-VAE is saved to DIR
(`store.save_vqvae`) with the resume state; the last validation goes to DIR/metrics.json.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from ..core.devices import make_accelerator
from ..core.errors import CheckpointError, ConfigError, OutputDirError
from ..core.io import atomic_write_json
from ..core.outdir import not_ours, remove_ours, save_pretrained_into
from ..data.tasks import get_task
from ..data.tasks.base import Task
from ..data.tokenizer import load_tokenizer, resolve_tokenizer, task_tokenizer, tokenizer_fingerprint
from ..training.fit import After, Fit, Optimization, Stage, shard
from ..training.order import step_indices
from .chunks import ChunkBatch, ChunkedExample, chunk_examples, collate
from .config import VQVAEConfig
from .metrics import reconstruction_metrics
from .model import VQVAE
from .options import VQVAETrainConfig, check_paths
from .store import CONFIG, TOKENIZER_DIR, WEIGHTS, read_info, save_vqvae
from .tokens import TextVocab

# Options that may differ between a run and its resumption; those defining the
# checkpoint's shape are refused with a CheckpointError, any other with a ConfigError.
_VOLATILE = ("resume", "stop_at", "progress", "out", "device")
_SHAPE = ("chunk_size", "compression", "codebook_size", "tokenizer", "output_vocab", "assignment", "copy_prefix")


def train_vqvae(config: VQVAETrainConfig, task: Task | None = None) -> Path:
    """Train (or resume) a VQ-VAE; returns the output directory. `task` overrides `config.task`.

    Launched with `torchrun` (or `accelerate launch`), every process trains a share of each batch.
    """
    check_paths(config)
    # Before the model: vector-quantize-pytorch syncs its codebook across processes when DDP is on.
    accelerator = make_accelerator("no", config.device)
    out = Path(config.out)
    info = _check_resume(config, out) if config.resume else _check_fresh(out)
    task = task or get_task(config.task, **config.task_options)
    examples = task.load(config.data)[: config.max_examples or None]
    valid = task.load(config.valid) if config.valid else examples[:200]
    if config.resume:
        tokenizer = _resume_tokenizer(config, out, info)
    else:
        tokenizer = task_tokenizer(config.tokenizer, task, examples)
        if accelerator.is_main_process:
            _save_tokenizer(tokenizer, out)
    # Traces over max_trace_len are dropped here, before any model sees them (a 5,000-step trace
    # would ask the encoder for hundreds of GB); the count is reported.
    chunked = chunk_examples(tokenizer, task, examples, config.chunk_size, config.chat_template)
    items = [item for item in chunked if item.chunks and item.trace_length <= config.max_trace_len]
    too_long = sum(item.trace_length > config.max_trace_len for item in chunked)
    if too_long and accelerator.is_main_process:
        print(f"vqvae train: skipped {too_long} training examples whose trace is longer than "
              f"max_trace_len={config.max_trace_len} tokens", file=sys.stderr)
    if not items:
        raise ConfigError(f"{config.data}: no example has a non-empty trace; nothing to train on")
    torch.manual_seed(config.seed)
    model = _new_model(config, tokenizer, items)
    valid_items = [item for item in chunk_examples(tokenizer, task, valid, config.chunk_size, config.chat_template)
                   if item.trace_length <= config.max_trace_len]
    stage = VQVAEStage(config, task, tokenizer, model, items, valid_items)
    fit = Fit(stage, stage.optimization(), accelerator, out, log_every=config.log_every,
              progress=config.progress, desc="vqvae", scheduler=stage.schedule)
    if config.resume and not fit.restore():
        raise CheckpointError(f"{out}: no resume state (state/latest.json missing); cannot --resume")
    fit.fit()
    return out


# --- setup ---------------------------------------------------------------------------
def _check_fresh(out: Path) -> None:
    if (out / WEIGHTS).exists() or (out / "state").exists():
        raise ConfigError(f"{out}: already holds a VQ-VAE run; pass --resume to continue it "
                          f"or choose another --out")
    return None


def _comparable(config: VQVAETrainConfig) -> dict[str, Any]:
    values = {k: v for k, v in dataclasses.asdict(config).items() if k not in _VOLATILE}
    for name in ("data", "valid"):
        values[name] = str(Path(values[name]).resolve()) if values[name] else ""
    return values


def _check_resume(config: VQVAETrainConfig, out: Path) -> dict[str, Any]:
    if not (out / CONFIG).is_file():
        raise CheckpointError(f"{out}: nothing to resume (no {CONFIG}); run without --resume")
    info = read_info(out)
    saved, given = info["train"], _comparable(config)
    differing = sorted(k for k in given if k in saved and saved[k] != given[k])
    shape = [k for k in differing if k in _SHAPE]
    if shape:
        raise CheckpointError(f"{out}: checkpoint was trained with " + ", ".join(
            f"{k}={saved[k]!r}" for k in shape) + "; given " + ", ".join(f"{k}={given[k]!r}" for k in shape))
    if differing:
        raise ConfigError(f"{out}: --resume needs the options of the interrupted run; these differ: " + ", ".join(
            f"{k} (run: {saved[k]!r}, given: {given[k]!r})" for k in differing))
    return info


def _save_tokenizer(tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    """Save beside the run, each file renamed into place; a tokenizer folder of an unfinished run of
    ours is replaced, a file we did not write is never deleted (outdir.py)."""
    left = not_ours(out / TOKENIZER_DIR)
    if left:
        raise OutputDirError(f"{out / TOKENIZER_DIR}: holds files token-assorted did not write ({', '.join(left[:3])}); "
                             f"they are never deleted: move them out or choose another --out")
    remove_ours(out / TOKENIZER_DIR)
    save_pretrained_into(tokenizer, out / TOKENIZER_DIR)


def _resume_tokenizer(config: VQVAETrainConfig, out: Path, info: dict[str, Any]) -> PreTrainedTokenizerBase:
    tokenizer = load_tokenizer(out / TOKENIZER_DIR)
    if tokenizer_fingerprint(tokenizer) != info.get("tokenizer_fingerprint"):
        raise CheckpointError(f"{out / TOKENIZER_DIR}: tokenizer differs from the one the run was trained with")
    if config.tokenizer != "word" and tokenizer_fingerprint(resolve_tokenizer(config.tokenizer)) != \
            info.get("tokenizer_fingerprint"):
        raise CheckpointError(f"{config.tokenizer}: not the tokenizer this run was trained with")
    return tokenizer


def _new_model(config: VQVAETrainConfig, tokenizer: PreTrainedTokenizerBase, items: list[ChunkedExample]) -> VQVAE:
    # "data": the vocabulary head scores only the ids the training traces use (pad included).
    trace_ids = {token for item in items for chunk in item.chunks for token in chunk} | {tokenizer.pad_token_id}
    vocab = TextVocab(len(tokenizer), tokenizer.pad_token_id, len(trace_ids) if config.output_vocab == "data" else 0)
    model = VQVAE(VQVAEConfig.of(config), vocab)
    if config.output_vocab == "data":
        model.set_output_vocab(sorted(trace_ids))
    return model


def _warmup_cosine(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))  # floor at 10 % of lr
    return factor


# --- the stage -----------------------------------------------------------------------
class VQVAEStage(Stage):
    """Stage 1 on the training skeleton: batches of whole examples, validated every `valid_every` steps."""

    def __init__(self, config: VQVAETrainConfig, task: Task, tokenizer: PreTrainedTokenizerBase, model: VQVAE,
                 items: list[ChunkedExample], valid_items: list[ChunkedExample]) -> None:
        self.config, self.task, self.tokenizer, self.model = config, task, tokenizer, model
        self.items, self.valid_items = items, valid_items
        self.out = Path(config.out)
        self.metrics: dict[str, float] | None = None  # the last validation's
        self.figures: list[tuple[Any, ...]] = []  # this step's micro-batches: losses, correct and real tokens, codes
        self.start_step, self.started = 0, time.perf_counter()

    def optimization(self) -> Optimization:
        config = self.config
        return Optimization(config.steps, config.batch_size, config.lr, config.warmup_steps(config.steps),
                            grad_accum=config.grad_accum, weight_decay=config.weight_decay, betas=(0.9, 0.99),
                            max_grad_norm=config.max_grad_norm)

    def schedule(self, optimizer: torch.optim.Optimizer) -> Any:
        config = self.config
        return torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(config.warmup_steps(config.steps),
                                                                           config.steps))

    def begin_step(self, fit: Fit, step: int) -> None:
        self.figures = []
        self.model.train()  # validation leaves it in eval mode

    def micro_batch(self, fit: Fit, step: int, index: int) -> ChunkBatch:
        config = self.config
        indices = shard(step_indices(config.seed, step, config.batch_size, len(self.items)), fit.micro, index,
                        fit.rank, fit.world)
        return collate([self.items[i] for i in indices], self.model.vocab.pad_id, self.model.config.max_prompt_len)

    def loss(self, module: torch.nn.Module, batch: ChunkBatch) -> torch.Tensor:
        output = module(batch.prompt_ids, batch.prompt_pad, batch.chunk_ids, batch.chunk_present)
        targets = batch.targets  # (C, L)
        real = targets != self.model.vocab.pad_id
        self.figures.append((output.recon_loss.detach(), output.vq_loss.detach(),
                             int(((output.predictions == targets) & real).sum()), int(real.sum()), output.codes))
        return output.loss

    def train_stats(self) -> dict[str, float]:
        """This process's figures of the step just taken (its micro-batches together)."""
        recon, vq, correct, real, codes = zip(*self.figures)
        return {"recon_loss": float(torch.stack(recon).mean()), "vq_loss": float(torch.stack(vq).mean()),
                "token_accuracy": sum(correct) / max(sum(real), 1),
                "codes_in_batch": int(torch.cat([c.flatten() for c in codes]).unique().numel())}

    def postfix(self) -> dict[str, Any]:
        correct, real = sum(f[2] for f in self.figures), sum(f[3] for f in self.figures)
        return {"acc": f"{correct / max(real, 1):.3f}"}

    def end_step(self, fit: Fit, step: int, loss: float) -> After:
        config = self.config
        stop = step == config.stop_at  # as if interrupted there, without the error (tests, budgets)
        if step % config.valid_every and step != config.steps:
            return After(stop=stop)
        if fit.is_main:
            self.metrics = reconstruction_metrics(self.model, self.valid_items, config.batch_size)
            fit.log("valid", self.metrics)
        return After(save=True, stop=stop)

    def save(self, fit: Fit) -> None:
        """The VQ-VAE folder itself, beside each resume state: weights, then config.json."""
        info = {"train": _comparable(self.config) | {"out": str(self.out)}, "task": self.task.name,
                "task_options": self.task.options(), "chat_template": self.config.chat_template,
                "tokenizer_fingerprint": tokenizer_fingerprint(self.tokenizer), "step": fit.step,
                "valid": self.metrics}
        save_vqvae(self.out, self.model, info)

    def restore(self, record: dict[str, Any]) -> None:
        self.start_step = record["global_step"]

    def finish(self, fit: Fit) -> None:
        if not fit.is_main:
            return
        config = self.config
        if self.metrics is None:  # resumed a run that had already finished
            self.metrics = reconstruction_metrics(self.model, self.valid_items, config.batch_size)
        atomic_write_json(self.out / "metrics.json", {
            "split": "valid" if config.valid else "train[:200]", "steps": config.steps,
            "resumed_from_step": self.start_step, "train_seconds": round(time.perf_counter() - self.started, 1),
            "chunk_size": config.chunk_size, "compression": config.compression,
            "codebook_size": config.codebook_size, **self.metrics})
