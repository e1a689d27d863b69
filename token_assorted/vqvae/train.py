"""Training the stage-1 VQ-VAE: setup -> fit -> validate -> save, resumable exactly.

Loss = reconstruction cross-entropy + beta * commitment (the codebook itself moves by
EMA, not by gradients). Batches are whole examples drawn in an order that is a pure
function of (seed, step), so a resumed run sees the same batches; with the weights,
optimizer, scheduler and torch RNG restored it ends with the same weights as a run
that was never interrupted. Metrics go to a tqdm bar, TensorBoard (DIR/tb) and
DIR/log.jsonl; the final validation metrics to DIR/metrics.json.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from ..devices import resolve_device
from ..errors import CheckpointError, ConfigError
from ..io import atomic_write_json, atomic_write_jsonl
from ..schema import Example
from ..tasks import get_task
from ..tasks.base import Task
from ..pretrained import resolve_tokenizer
from ..tokenizer import build_task_tokenizer, load_tokenizer, tokenizer_fingerprint
from .chunks import ChunkedExample, chunk_examples, collate
from .config import VQVAEConfig, without_retired
from .metrics import reconstruction_metrics
from .model import VQVAE
from .options import VQVAETrainConfig, check_options
from .state import TrainerState, load_state, save_state
from .store import CONFIG, TOKENIZER_DIR, WEIGHTS, read_info, save_vqvae


# Options that may differ between a run and its resumption; those defining the
# checkpoint's shape are refused with a CheckpointError, any other with a ConfigError.
_VOLATILE = ("resume", "stop_at", "progress", "out", "device")
_SHAPE = ("chunk_size", "compression", "codebook_size", "tokenizer", "output_vocab", "assignment", "copy_prefix")


@dataclass
class _Run:
    config: VQVAETrainConfig
    out: Path
    task: Task
    tokenizer: PreTrainedTokenizerBase
    model: VQVAE
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_items: list[ChunkedExample]
    valid_items: list[ChunkedExample]
    start_step: int


def train_vqvae(config: VQVAETrainConfig, task: Task | None = None) -> Path:
    """Train (or resume) a VQ-VAE; returns the output directory. `task` overrides `config.task`."""
    run = _setup(config, task)
    return _fit(run)


# --- setup ---------------------------------------------------------------------------
def _setup(config: VQVAETrainConfig, task: Task | None) -> _Run:
    check_options(config)
    out = Path(config.out)
    info = _check_resume(config, out) if config.resume else _check_fresh(out)
    task = task or get_task(config.task, **config.task_options)
    examples = task.load(config.data)[: config.max_examples or None]
    valid = task.load(config.valid) if config.valid else examples[:200]
    tokenizer = _resume_tokenizer(config, out, info) if config.resume else _new_tokenizer(config, task, examples, out)
    # Traces over max_trace_len are dropped here, before any model sees them (a 5,000-step trace
    # would ask the encoder for hundreds of GB); the count is reported.
    chunked = chunk_examples(tokenizer, task, examples, config.chunk_size, config.chat_template)
    items = [item for item in chunked if item.chunks and item.trace_length <= config.max_trace_len]
    too_long = sum(item.trace_length > config.max_trace_len for item in chunked)
    if too_long:
        print(f"vqvae train: skipped {too_long} training examples whose trace is longer than "
              f"max_trace_len={config.max_trace_len} tokens", file=sys.stderr)
    if not items:
        raise ConfigError(f"{config.data}: no example has a non-empty trace; nothing to train on")
    torch.manual_seed(config.seed)
    model = _new_model(config, tokenizer, items)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.99),
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(config.warmup_steps, config.steps))
    start_step = _restore(out, model, optimizer, scheduler) if config.resume else 0
    valid_items = [item for item in chunk_examples(tokenizer, task, valid, config.chunk_size, config.chat_template)
                   if item.trace_length <= config.max_trace_len]
    return _Run(config, out, task, tokenizer, model, optimizer, scheduler, items, valid_items, start_step)


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
    saved, given = without_retired(info.get("train", {}), f"{out / CONFIG}:train"), _comparable(config)
    differing = sorted(k for k in given if k in saved and saved[k] != given[k])
    shape = [k for k in differing if k in _SHAPE]
    if shape:
        raise CheckpointError(f"{out}: checkpoint was trained with " + ", ".join(
            f"{k}={saved[k]!r}" for k in shape) + "; given " + ", ".join(f"{k}={given[k]!r}" for k in shape))
    if differing:
        raise ConfigError(f"{out}: --resume needs the options of the interrupted run; these differ: " + ", ".join(
            f"{k} (run: {saved[k]!r}, given: {given[k]!r})" for k in differing))
    return info


def _new_tokenizer(config: VQVAETrainConfig, task: Task, examples: list[Example],
                   out: Path) -> PreTrainedTokenizerBase:
    if config.tokenizer == "word":
        texts = [task.prompt_text(e) + task.trace_text(e) + task.solution_text(e) for e in examples]
        tokenizer = build_task_tokenizer(texts, task.lexicon())
    else:
        tokenizer = resolve_tokenizer(config.tokenizer)
    # Save beside the run, renamed into place so DIR/tokenizer/ is never half written.
    staging = out / ".tokenizer.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer.save_pretrained(str(staging))
    shutil.rmtree(out / TOKENIZER_DIR, ignore_errors=True)
    os.replace(staging, out / TOKENIZER_DIR)
    return tokenizer


def _resume_tokenizer(config: VQVAETrainConfig, out: Path, info: dict[str, Any]) -> PreTrainedTokenizerBase:
    tokenizer = load_tokenizer(out / TOKENIZER_DIR)
    if tokenizer_fingerprint(tokenizer) != info.get("tokenizer_fingerprint"):
        raise CheckpointError(f"{out / TOKENIZER_DIR}: tokenizer differs from the one the run was trained with")
    if config.tokenizer != "word" and tokenizer_fingerprint(resolve_tokenizer(config.tokenizer)) != \
            info.get("tokenizer_fingerprint"):
        raise CheckpointError(f"{config.tokenizer}: not the tokenizer this run was trained with")
    return tokenizer


def _new_model(config: VQVAETrainConfig, tokenizer: PreTrainedTokenizerBase,
               items: list[ChunkedExample]) -> VQVAE:
    shared = {f.name for f in dataclasses.fields(VQVAEConfig)} & {f.name for f in dataclasses.fields(config)}
    # "data": the vocabulary head scores only the ids the training traces use (pad included).
    trace_ids = {token for item in items for chunk in item.chunks for token in chunk} | {tokenizer.pad_token_id}
    model = VQVAE(VQVAEConfig(vocab_size=len(tokenizer), pad_id=tokenizer.pad_token_id,
                              output_vocab_size=len(trace_ids) if config.output_vocab == "data" else 0,
                              **{name: getattr(config, name) for name in shared}))
    if config.output_vocab == "data":
        model.set_output_vocab(sorted(trace_ids))
    return model.to(resolve_device(config.device))


def _warmup_cosine(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))  # floor at 10 % of lr
    return factor


def _restore(out: Path, model: VQVAE, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler) -> int:
    state = load_state(out, model)
    optimizer.load_state_dict(state.optimizer)
    scheduler.load_state_dict(state.scheduler)
    torch.set_rng_state(state.rng)
    if state.cuda_rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state.cuda_rng)
    return state.step


# --- data order --------------------------------------------------------------------
@lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def batch_indices(seed: int, step: int, batch_size: int, n: int) -> list[int]:
    """Examples of batch `step`: a fresh shuffle per epoch, a pure function of its arguments."""
    positions = range(step * batch_size, (step + 1) * batch_size)
    return [_epoch_order(seed, p // n, n)[p % n] for p in positions]


# --- the loop ----------------------------------------------------------------------
def _train_step(run: _Run, step: int) -> dict[str, float]:
    config, model = run.config, run.model
    items = [run.train_items[i] for i in batch_indices(config.seed, step, config.batch_size, len(run.train_items))]
    batch = collate(items, model.config.pad_id, model.config.max_prompt_len).to(next(model.parameters()).device)
    model.train()
    output = model(batch.prompt_ids, batch.prompt_pad, batch.chunk_ids, batch.chunk_present)
    run.optimizer.zero_grad(set_to_none=True)
    output.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    targets = batch.targets  # (C, L)
    real = targets != model.config.pad_id
    correct = ((output.predictions == targets) & real).sum()
    return {"loss": output.loss.item(), "recon_loss": output.recon_loss.item(), "vq_loss": output.vq_loss.item(),
            "token_accuracy": float(correct) / max(int(real.sum()), 1),
            "codes_in_batch": int(output.codes.unique().numel()), "lr": run.scheduler.get_last_lr()[0]}


def _fit(run: _Run) -> Path:
    config, out = run.config, run.out
    log = _open_log(out / "log.jsonl", run.start_step)
    writer = SummaryWriter(str(out / "tb"), purge_step=run.start_step if run.start_step else None)
    started, metrics = time.perf_counter(), None
    bar = tqdm(total=config.steps, initial=run.start_step, desc="vqvae", disable=not config.progress,
               dynamic_ncols=True)
    try:
        with _interrupt_flag() as interrupted:
            for step in range(run.start_step, config.steps):
                stats = _train_step(run, step)
                done = step + 1
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['token_accuracy']:.3f}")
                if done % config.log_every == 0:
                    _record(log, writer, done, "train", stats)
                if done % config.valid_every == 0 or done == config.steps:
                    metrics = reconstruction_metrics(run.model, run.valid_items, config.batch_size)
                    _record(log, writer, done, "valid", metrics)
                    _save(run, done, metrics)
                if interrupted() or done == config.stop_at:
                    if done % config.valid_every and done != config.steps:
                        _save(run, done, metrics)
                    if interrupted():
                        _print_resume_hint(out, done)
                        raise KeyboardInterrupt
                    return out
    finally:
        bar.close()
        writer.close()
        log.close()
    _write_metrics(run, metrics, time.perf_counter() - started)
    return out


def _save(run: _Run, step: int, metrics: dict[str, float] | None) -> None:
    info = {"train": _comparable(run.config) | {"out": str(run.out)}, "task": run.task.name,
            "task_options": run.task.options(),
            "chat_template": run.config.chat_template,
            "tokenizer_fingerprint": tokenizer_fingerprint(run.tokenizer), "step": step, "valid": metrics}
    save_vqvae(run.out, run.model, info)
    save_state(run.out, run.model, TrainerState(step, run.optimizer.state_dict(), run.scheduler.state_dict(),
                                                torch.get_rng_state(), _cuda_rng()))


def _cuda_rng() -> list[torch.Tensor]:
    return list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else []


def _write_metrics(run: _Run, metrics: dict[str, float] | None, seconds: float) -> None:
    if metrics is None:  # resumed a run that had already finished
        metrics = reconstruction_metrics(run.model, run.valid_items, run.config.batch_size)
    atomic_write_json(run.out / "metrics.json", {
        "split": "valid" if run.config.valid else "train[:200]", "steps": run.config.steps,
        "resumed_from_step": run.start_step, "train_seconds": round(seconds, 1),
        "chunk_size": run.config.chunk_size, "compression": run.config.compression,
        "codebook_size": run.config.codebook_size, **metrics})


def _open_log(path: Path, start_step: int):
    if start_step and path.is_file():
        # Drop lines a killed run wrote after its last saved state; they are redone now.
        kept = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        atomic_write_jsonl(path, [record for record in kept if record.get("step", 0) <= start_step])
    elif path.exists():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "a", encoding="utf-8")


def _record(log, writer: SummaryWriter, step: int, split: str, values: dict[str, float]) -> None:
    log.write(json.dumps({"step": step, "split": split, **values}) + "\n")
    log.flush()
    for name, value in values.items():
        writer.add_scalar(f"{split}/{name}", value, step)


@contextmanager
def _interrupt_flag() -> Iterator[Any]:
    """Turn the first Ctrl-C into a flag checked between steps (a second one stops at once)."""
    state = {"hit": False}
    if not _in_main_thread():
        yield lambda: False
        return

    def handler(signum, frame):  # noqa: ARG001
        if state["hit"]:
            raise KeyboardInterrupt
        state["hit"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: state["hit"]
    finally:
        signal.signal(signal.SIGINT, previous)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _print_resume_hint(out: Path, step: int) -> None:
    print(f"\nvqvae train: interrupted after step {step}; state saved in {out / 'state'}.\n"
          f"Resume with the same command plus --resume.", file=sys.stderr)
