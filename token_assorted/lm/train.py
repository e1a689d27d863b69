"""Stage 2: train a causal LM on mixed latent/text traces, on one device or many (accelerate).

setup (`setup.py`: data, tokenizer, latent codes, model) -> fit (`training/fit.py`, the
skeleton both stages share: epochs of optimizer steps here) -> validate (greedy accuracy and
answer length, every epoch) -> save (the best model as a plain Hugging Face directory plus
`token_assorted.json`, `model_dir.py`).

Batching. `batch_size` is the EFFECTIVE batch of one optimizer step, whatever the number
of processes (the skeleton shares it out over grad_accum and processes). The epoch's example
order is a permutation seeded by (seed, epoch), padded by wrapping so every step is full
(with `group_by_length`, rearranged into batches of similar lengths; `training/order.py`); step s
takes its slice of it, process r its share of that slice. The mixed sequence of an example
is a function of (seed, epoch, example index) only (`mixing.build_sequence`), so order and
draws are identical on every process and after a resume, and m is redrawn every epoch.

What a method changes (Coconut's thoughts, iCoT's removal schedule, a curriculum's stages)
comes from its `Method` (`methods/`): its batches and loss, the steps whose phase change
resets the optimizer's moments, its final phase (only models of it are kept: a curriculum never
saves an earlier stage), its learning-rate schedule, and how validation answers. The kept
model's epoch, stage and whether it is final go into `token_assorted.json` ("checkpoint").

Baselines with a VQ-VAE. `cot` and `sol-only` never need codes; when a VQ-VAE (or a codes
file) is given they still get the latent vocabulary (`latent_vocab_for_baselines`, on by
default) so every method's model has the same size and tokenizer.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..core.devices import make_accelerator, uses_bf16
from ..core.errors import ConfigError
from ..core.io import atomic_write_json, read_json
from ..generation.scoring import default_max_new_tokens
from ..training.fit import After, Fit, Optimization, Stage
from ..training.order import epoch_order, group_by_length, micro_indices, text_lengths
from ..training.sharding import full_state, is_sharded
from ..vqvae.codes import LatentCodes, check_layout, layout_of
from .config import TrainConfig
from .levers import use_fused_adamw
from .model_dir import MODEL_META, save_model_dir
from .setup import Setup, setup

# Options a resumed run may change: they cannot change its weights (where it writes, how much it
# prints, how often it saves a state it resumes from exactly). Every other option must be the saved run's.
RESUME_FREE = ("out", "resume", "progress", "log_every", "save_every", "abspaths")
PATH_KEYS = ("data", "valid", "codes", "vqvae", "tokenizer", "model")


# --------------------------------------------------------------------------- validation
def validation_metrics(model, run: Setup, config: TrainConfig, accelerator) -> dict[str, float]:
    """Greedy accuracy and answer length on the valid split, shared out over the processes.

    The lengths make a learning curve of tokens as well as accuracy: how soon a mixed
    model starts answering in latent tokens is half of what Token Assorted is about.
    """
    from ..generation.config import EvalConfig
    from ..generation.scoring import evaluate

    settings = config.validation
    examples = run.valid[: settings.limit] if settings.limit is not None else run.valid
    rank, world = accelerator.process_index, accelerator.num_processes
    synced = world > 1 and is_sharded(model)
    if synced:  # FSDP: every rank takes part in every forward, so equal shares (a repeat pads, uncounted)
        per = -(-len(examples) // world)
        shard = examples[rank * per:(rank + 1) * per]
        real = len(shard)
        shard = shard + [examples[0]] * (per - real)
    else:
        shard = examples[rank::world]
        real = len(shard)
    sums = [0.0, 0.0, 0.0]  # correct answers, generated tokens, latent tokens
    if shard:
        # Room for the longest all-text trace and solution of the first 200: a model rambling past it is wrong.
        budget = settings.max_new_tokens or default_max_new_tokens(run.tokenizer, run.task, examples[:200])
        eval_config = EvalConfig(batch_size=settings.batch_size, progress=False, max_new_tokens=budget,
                                 mixed_precision=config.mixed_precision)
        generate, vocab = run.method.generation(run.step, run.latent_vocab)  # Coconut: its own loop
        result = evaluate(model, run.tokenizer, run.task, shard, eval_config, vocab, config.chat_template,
                          generate=generate)
        sums = [result.accuracy * result.n, result.avg_generated_tokens * result.n,
                result.avg_latent_tokens * result.n]
        if synced:
            kept = result.predictions[:real]
            sums = [float(sum(p.correct for p in kept)), float(sum(p.n_tokens for p in kept)),
                    float(sum(p.n_latent_tokens for p in kept))]
    totals = torch.tensor([*sums, float(real)], device=accelerator.device)
    totals = accelerator.reduce(totals, reduction="sum")
    n = totals[3].clamp_min(1)
    return {"accuracy": float(totals[0] / n), "avg_generated_tokens": float(totals[1] / n),
            "avg_latent_tokens": float(totals[2] / n)}


def model_meta(config: TrainConfig, run: Setup, history: list[dict[str, Any]], step: int = 0) -> dict[str, Any]:
    """`token_assorted.json`: what a saved model is (the model of optimizer step `step`, 0-based), for eval,
    explain, the probes and the report."""
    latents = run.latents
    return {
        "task": run.task.name, "task_options": run.task.options(), "strategy": config.strategy,
        "vqvae": config.vqvae or (latents.vqvae if latents else None), "codes": config.codes,
        "codebook_size": latents.codebook_size if latents else None,
        "chunk_size": latents.chunk_size if latents else None,
        "latents_per_chunk": latents.latents_per_chunk if latents else None,
        "latent_vocab": run.latent_vocab.to_dict() if run.latent_vocab else None,
        "max_latent_chunks": run.max_latent_chunks,
        "pause_id": run.latent_vocab.pause_id if run.latent_vocab else None,
        "chat_template": config.chat_template, "data": config.data, "valid": config.valid,
        "model": config.model, "skipped_too_long": run.skipped, "config": dataclasses.asdict(config),
        "history": history, "checkpoint": run.method.checkpoint(step), "lr_schedule": run.method.lr_schedule(),
        **run.method.meta(step),
    }


# --------------------------------------------------------------------------- the learning rate
def final_phase_cosine(warmup: int, final_start: int, total: int) -> Callable[[torch.optim.Optimizer], Any]:
    """Warm-up, the peak rate until the final phase begins, then cosine decay to zero over it.

    The multiplier follows transformers' `get_cosine_schedule_with_warmup` (linear warm-up, then
    0.5 (1 + cos(pi progress))), with the decay's start moved to the final phase: a curriculum's
    final phase trains at the rates a one-phase method's whole run does, instead of the tail of one
    decay over every stage.
    """
    start = max(warmup, final_start)

    def multiplier(step: int) -> float:
        if step < warmup:
            return float(step) / float(max(1, warmup))
        if step < start:
            return 1.0
        progress = float(step - start) / float(max(1, total - start))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)


# --------------------------------------------------------------------------- the stage
class LMStage(Stage):
    """Stage 2 on the training skeleton: epochs of the method's batches, validated at each epoch's end."""

    def __init__(self, config: TrainConfig, run: Setup, validate: Callable) -> None:
        self.config, self.run, self.validate = config, run, validate
        self.model = run.model  # what is saved and validated; `module()` is what the method's loss calls
        self.out = Path(config.out)
        self.steps_per_epoch = math.ceil(len(run.encoded) / config.batch_size)
        total = config.epochs * self.steps_per_epoch
        self.total = total if config.max_steps is None else min(total, config.max_steps)
        self.lengths = text_lengths(run.encoded) if config.group_by_length else []
        self.order: tuple[int, list[int]] = (-1, [])  # (epoch, its example order)
        self.best: float | None = None
        self.history: list[dict[str, Any]] = []
        self.resets: dict[str, int] = {}  # epoch (1-based, as a JSON key) -> optimizer resets before its steps
        run.method.plan(run, self.steps_per_epoch, self.total)  # the schedule on the kept data (or a ConfigError)

    def optimization(self, device: torch.device) -> Optimization:
        config = self.config
        # < 1: a fraction of all optimizer steps; >= 1: a number of steps
        warmup = int(config.warmup * self.total) if config.warmup < 1 else int(config.warmup)
        return Optimization(self.total, config.batch_size, config.lr, warmup, self.run.method.lr_schedule(),
                            grad_accum=config.grad_accum, weight_decay=config.weight_decay, betas=(0.9, 0.95),
                            max_grad_norm=config.max_grad_norm, fused=use_fused_adamw(config, device))

    def scheduler(self, optimization: Optimization) -> Callable[[torch.optim.Optimizer], Any] | None:
        """The "final-cosine" schedule of a method with earlier phases (None: a transformers schedule by name)."""
        if optimization.schedule != "final-cosine":
            return None
        return final_phase_cosine(optimization.warmup_steps, self.run.method.final_start(), optimization.total_steps)

    def module(self) -> torch.nn.Module:
        return self.run.method.wrap(self.run.model)

    def epoch_order(self, epoch: int) -> list[int]:
        if self.order[0] != epoch:
            config = self.config
            order = epoch_order(len(self.run.encoded), self.steps_per_epoch * config.batch_size, config.seed, epoch)
            if config.group_by_length:
                order = group_by_length(order, self.lengths, config.batch_size, config.seed, epoch)
            self.order = (epoch, order)
        return self.order[1]

    def begin_step(self, fit: Fit, step: int) -> None:
        """Fresh optimizer moments before a step whose phase differs from the previous step's (a
        curriculum's stage, iCoT's removal count, Coconut's epoch); the learning-rate schedule goes on.
        A resumed run makes the reset here, before the step it resumes with."""
        method = self.run.method
        if step > 0 and method.phase(step) != method.phase(step - 1):
            fit.optimizer.state.clear()  # AdamW re-creates each parameter's state at its next step
            key = str(step // self.steps_per_epoch + 1)
            self.resets[key] = self.resets.get(key, 0) + 1

    def micro_batch(self, fit: Fit, step: int, index: int) -> dict[str, torch.Tensor]:
        epoch, within = divmod(step, self.steps_per_epoch)
        indices = micro_indices(self.epoch_order(epoch), within, self.config.batch_size, fit.micro, index,
                                fit.rank, fit.world)
        return self.run.method.batch(self.run, indices, self.config.seed, epoch, step)

    def loss_items(self, batch: dict[str, torch.Tensor]) -> int:
        return self.run.method.loss_items(batch)

    def loss(self, module: torch.nn.Module, batch: dict[str, torch.Tensor], total: float) -> torch.Tensor:
        return self.run.method.loss(module, batch, total)

    def postfix(self) -> dict[str, Any]:
        return {"epoch": self.order[0] + 1}

    def end_step(self, fit: Fit, step: int, loss: float) -> After:
        if step % self.steps_per_epoch == 0:
            self.end_epoch(fit, step // self.steps_per_epoch - 1, loss)
            return After(save=True)
        return After(save=bool(self.config.save_every) and step % self.config.save_every == 0)

    def end_epoch(self, fit: Fit, epoch: int, loss: float) -> None:
        """Validate, and save the model when it is the best so far of the method's final phase."""
        fit.require_finite()  # never validate, let alone save, a diverged model (the loss: per step)
        record: dict[str, Any] = {"epoch": epoch + 1, "step": fit.step, "train_loss": loss}
        if self.resets.get(str(epoch + 1)):
            record["optimizer_resets"] = self.resets[str(epoch + 1)]
        last = fit.step - 1  # the step whose model this is
        eligible = self.run.method.final(last)  # a curriculum never keeps an earlier stage's model
        if self.run.method.stage(last) is not None:
            record["stage"], record["final_stage"] = self.run.method.stage(last), eligible
        if self.run.valid:
            self.run.epoch, self.run.step = epoch, last  # a curriculum answers at the stage it trained
            metrics = self.validate(self.model, self.run, self.config, fit.acc)
            if not isinstance(metrics, dict):
                metrics = {"accuracy": float(metrics)}  # a custom validate may return accuracy alone
            record.update({f"valid_{name}": value for name, value in metrics.items()})
            fit.log("valid", metrics)
            accuracy = metrics["accuracy"]
            improved = eligible and (self.best is None or accuracy >= self.best)
        else:
            accuracy, improved = None, eligible  # no valid split: keep the latest model
        self.history.append(record)
        if improved:
            self.best = accuracy
            self.save_model(fit, {**model_meta(self.config, self.run, self.history, last), "best_epoch": epoch + 1,
                                  "best_valid_accuracy": accuracy})
        fit.print(f"epoch {epoch + 1}/{self.config.epochs}: loss {loss:.4f}"
                  + (f", valid accuracy {accuracy:.3f}" if accuracy is not None else ""))

    # -- the saved state -----------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        config = dataclasses.asdict(self.config)
        config["abspaths"] = {key: os.path.abspath(config[key]) for key in PATH_KEYS if config.get(key)}
        return {"best": self.best, "history": self.history, "config": config,
                "latents": layout_of(self.run.latents), "resets": self.resets}

    def check_resume(self, record: dict[str, Any]) -> None:
        # A VQ-VAE of another K or L swapped in: named here, not as a size-mismatch traceback.
        check_layout(record, self.run.latents, self.config.vqvae or self.config.codes)
        differing = resume_differences(record.get("config"), self.config)
        if differing:
            raise ConfigError("--resume: the saved run was trained with other settings: " + "; ".join(
                f"{key} {saved!r} there, {given!r} now" for key, saved, given in differing)
                + "; resume with the run's own settings, or start a new run in another --out")

    def restore(self, record: dict[str, Any]) -> None:
        self.best, self.history, self.resets = record["best"], record["history"], dict(record.get("resets") or {})

    def save_model(self, fit: Fit, meta: dict[str, Any]) -> None:
        """The model as a plain HF folder, written once by the main process. Under FSDP every
        rank takes part in gathering the whole state first (rank 0 receives it)."""
        state = full_state(self.model) if fit.sharded else None
        if fit.is_main:
            save_model_dir(self.model, self.run.tokenizer, self.out, {**meta, "world_size": fit.world}, state)
        fit.acc.wait_for_everyone()

    def finish(self, fit: Fit) -> None:
        cost = {"train_seconds_per_step": sum(fit.step_seconds) / len(fit.step_seconds)} if fit.step_seconds else {}
        within = fit.step % self.steps_per_epoch
        # Every process decides alike (the main one alone could see a folder the others have not yet).
        saved = [bool((self.out / "config.json").is_file())]
        if fit.world > 1:
            import torch.distributed as dist

            dist.broadcast_object_list(saved, src=0)
        if within and (not self.run.valid or not saved[0]):
            # Stopped mid-epoch by max_steps: save what was trained.
            fit.require_finite()
            self.save_model(fit, {**model_meta(self.config, self.run, self.history, fit.step - 1), **cost})
        elif not fit.is_main:
            return
        elif (self.out / MODEL_META).is_file():
            # The best epoch's directory was written when it was best; give it the whole
            # learning curve, the epochs after it included.
            meta = read_json(self.out / MODEL_META)
            atomic_write_json(self.out / MODEL_META, {**meta, "history": self.history, **cost})


def resume_differences(saved: Any, config: TrainConfig) -> list[tuple[str, Any, Any]]:
    """(key, saved value, given value) of every option that differs from the saved run's and could
    change the result; a key the saved record lacks (an option added since) counts as its default."""
    saved = saved if isinstance(saved, dict) else {}
    defaults = dataclasses.asdict(TrainConfig())
    given = dataclasses.asdict(config)

    def same(key: str, before: Any, now: Any) -> bool:
        if key in PATH_KEYS and isinstance(before, str) and isinstance(now, str):
            # The same file named from another folder or spelled another way (./data.jsonl) is the same file.
            return os.path.normpath(before) == os.path.normpath(now) or \
                saved.get("abspaths", {}).get(key) == os.path.abspath(now)
        return before == now

    return [(key, saved.get(key, defaults[key]), value) for key, value in given.items()
            if key not in RESUME_FREE and not same(key, saved.get(key, defaults[key]), value)]


def refuse_trained_model(out: Path) -> None:
    """A fresh run must not replace a trained model or a saved run without --force (or --resume)."""
    found = [name for name in (MODEL_META, "model.safetensors", "state") if (out / name).exists()]
    if found:
        raise ConfigError(f"{out}: already holds a trained model or a training run ({', '.join(found)}); pass "
                          f"--resume to continue it, choose another --out, or pass --force to replace it")


def train_lm(config: TrainConfig, *, latents: LatentCodes | None = None,
             validate: Callable | None = None) -> Path:
    """Train one stage-2 model; return its output directory (a plain HF model dir).

    `latents` supplies codes directly (tests, notebooks) instead of `vqvae`/`codes`;
    `validate(model, run, config, accelerator)` replaces the default greedy-generation
    validation; it returns the accuracy, or a dict of metrics holding "accuracy".
    """
    out = Path(config.out)
    if not config.resume and (out / "state" / "latest.json").exists():
        raise ConfigError(f"{out} already holds a training run; pass --resume to continue it "
                          f"or choose another --out")
    accelerator = make_accelerator(config.mixed_precision)
    run = setup(config, latents)
    out.mkdir(parents=True, exist_ok=True)
    stage = LMStage(config, run, validate or validation_metrics)
    # FSDP on a GPU computes in bf16 through its own policy (reductions in fp32), not accelerate's autocast.
    optimization = stage.optimization(accelerator.device)
    fit = Fit(stage, optimization, accelerator, out, log_every=config.log_every, progress=config.progress,
              scheduler=stage.scheduler(optimization), sharding=config.sharding,
              bf16=uses_bf16(config.mixed_precision, accelerator.device))
    try:
        if config.resume and not fit.restore():
            fit.print(f"no training state in {out}; starting from scratch")
        if run.skipped:
            fit.print(f"skipped {run.skipped} training examples longer than max_length={config.max_length}")
        fit.fit()
    finally:
        fit.close()
    return out
