"""Stage 2: train a causal LM on mixed latent/text traces, on one device or many (accelerate).

setup (data, tokenizer, latent codes, model) -> fit (epochs of optimizer steps) ->
validate (greedy accuracy and answer length, every epoch) -> save (the best model as a plain
Hugging Face directory plus `token_assorted.json`).

Batching. `batch_size` is the EFFECTIVE batch of one optimizer step, whatever the number
of processes: each process runs micro-batches of batch_size / (grad_accum x processes)
sequences, grad_accum times, before the synchronised step; the result is the same batch
as one process with the same grad_accum (the per-process size must divide evenly).
The epoch's example order is a permutation seeded by (seed, epoch), padded by wrapping so
every step is full (with `group_by_length`, rearranged into batches of similar lengths);
step s takes its slice of it, process r its share of that slice. The
mixed sequence of an example is a function of (seed, epoch, example index) only
(`mixing.build_sequence`), so order and draws are identical on every process and after a
resume, and m is redrawn every epoch.

Devices. accelerate picks cuda -> mps -> cpu and sets up DDP when launched with
`torchrun` / `accelerate launch` (gloo on CPU); bf16 autocast on CUDA only.

Baselines with a VQ-VAE. `cot` and `sol-only` never need codes; when a VQ-VAE (or a codes
file) is given they still get the latent vocabulary (`latent_vocab_for_baselines`, on by
default) so every method's model has the same size and tokenizer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from .batches import LENGTH_WINDOW, collate, epoch_order, group_by_length, micro_indices, text_lengths  # noqa: F401
from .checkpoint import commit, latest_state, load_state, save_main_files, save_rank_files, step_dir
from .encoding import EncodedExample, encode_example
from .generation import position_limit
from .config import Bound, above, at_least, check_limits, within
from .devices import make_accelerator
from .errors import ConfigError, TrainingError
from .io import atomic_write_json, new_file_mode, read_json, writing
from .latents import LatentCodes, check_layout, layout_of, load_latent_codes
from .lora import LoraSettings, apply_lora, check_lora, exportable
from .coconut import Coconut
from .icot import StepwiseInternalization
from .methods import METHOD_NAMES, Method
from .mixing import LAYOUT_STRATEGIES, ChunkLayout, Strategy, check_codes, max_latent_chunks
from .models import EMBEDDING_INITS, add_pause_row, build_scratch_model, extend_vocabulary, is_preset
from .pretrained import load_pretrained_lm, resolve_tokenizer
from .schema import Example
from .tasks import Task, get_task
from .tokenizer import LatentVocab, add_latent_tokens, add_pause_token, build_task_tokenizer, tokenizer_fingerprint

MODEL_META = "token_assorted.json"


@dataclass
class TrainConfig:
    """Everything one stage-2 run depends on (saved beside the model, resolved)."""

    task: str = ""  # a task name (token_assorted.tasks.TASK_NAMES)
    task_options: dict[str, Any] = field(default_factory=dict)  # the generic task's (qa): fields, answer_match, ...
    data: str = ""  # training examples (JSONL / JSON list)
    out: str = ""  # output model directory
    valid: str | None = None  # validation examples: greedy accuracy every epoch, best kept
    strategy: str = "token-assorted"  # methods.METHOD_NAMES: mixing.STRATEGY_NAMES, coconut, icot
    vqvae: str | None = None  # stage-1 directory: tokenizer, codes, codebook
    codes: str | None = None  # instead of vqvae: a JSON file of precomputed codes (latents.py)
    model: str = "tiny"  # a preset (models.PRESETS), a local HF model dir or a .gguf file
    tokenizer: str | None = None  # tokenizer dir for runs without a VQ-VAE (default: built from data)
    embedding_init: str = "mean"  # new latent rows: "mean" or "codebook" (models.py)
    lora: LoraSettings | None = None  # LoRA adapters instead of full fine-tuning (lora.py); None: off
    latent_vocab_for_baselines: bool = True  # cot/sol-only with a VQ-VAE get the latent rows too
    epochs: int = 10
    batch_size: int = 32  # effective sequences per optimizer step (all processes together)
    grad_accum: int = 1  # micro-batches per optimizer step and process
    lr: float = 1e-3  # peak learning rate (AdamW)
    weight_decay: float = 0.0
    warmup: float = 0.05  # < 1: fraction of all optimizer steps; >= 1: a number of steps
    max_grad_norm: float = 1.0
    max_length: int = 512  # longer examples are skipped (with a count)
    group_by_length: bool = False  # batches of similar lengths: less padding (train.group_by_length)
    m_values: list[int] | None = None  # token-assorted: m drawn from this set; None: any whole chunks
    poisson_p: float = 0.5  # poisson: probability of replacing each chunk
    curriculum_epochs: int = 1  # curriculum: epochs per stage
    curriculum_max_chunks: int | None = None  # curriculum: cap on replaced chunks (None: whole trace)
    coconut_thoughts_per_step: int = 1  # coconut: c, continuous thoughts per replaced step (paper: 2 for math)
    coconut_stages: int | None = None  # coconut: last stage S (None: the most steps of a training trace)
    coconut_epochs_per_stage: int = 1  # coconut: epochs of each stage 1 … S
    coconut_cot_epochs: int | None = None  # coconut: epochs of stage 0, plain CoT (None: coconut_epochs_per_stage)
    icot_tokens_per_epoch: int = 8  # icot: leading trace tokens removed per epoch (Deng et al.: 8)
    icot_smoothing_lambda: float | None = 4.0  # icot: P(o extra removed) ∝ exp(-λ o); None: no smoothing
    icot_final_epochs: int = 1  # icot: the last epochs train with the whole trace removed
    seed: int = 0
    chat_template: bool = False  # wrap prompts in the tokenizer's chat template
    mixed_precision: str = "auto"  # "auto" (bf16 on CUDA, else none), "no", "bf16"
    eval_batch_size: int = 64
    eval_limit: int | None = None  # validate on the first N examples only
    max_new_tokens: int | None = None  # default: longest valid trace + solution, plus slack
    save_every: int = 0  # optimizer steps between resume checkpoints (0: end of each epoch only)
    max_steps: int | None = None  # stop after this many optimizer steps in all
    log_every: int = 10  # optimizer steps between TensorBoard points
    resume: bool = False
    progress: bool = True  # tqdm bar (main process only)

    # Each numeric option's range, checked wherever a config is read (a preset: before any stage runs).
    LIMITS: ClassVar[dict[str, Bound]] = {
        "epochs": at_least(1), "batch_size": at_least(1), "grad_accum": at_least(1), "lr": Bound(0, 1, low_open=True),
        "weight_decay": at_least(0), "warmup": at_least(0), "max_grad_norm": at_least(0), "max_length": at_least(2),
        "m_values": at_least(0), "poisson_p": within(0, 1), "curriculum_epochs": at_least(1), "seed": at_least(0),
        "curriculum_max_chunks": at_least(0), "eval_batch_size": at_least(1), "eval_limit": at_least(1),
        "max_new_tokens": at_least(1), "save_every": at_least(0), "max_steps": at_least(1), "log_every": at_least(0),
        "coconut_thoughts_per_step": at_least(1), "coconut_stages": at_least(1), "coconut_epochs_per_stage": at_least(1),
        "coconut_cot_epochs": at_least(0), "icot_tokens_per_epoch": at_least(1), "icot_smoothing_lambda": above(0),
        "icot_final_epochs": at_least(0)}


@dataclass
class Setup:
    """The prepared pieces of a run."""

    task: Task
    tokenizer: Any
    model: Any
    strategy: Strategy
    method: Method  # sequences, loss, optimizer phases, answers (methods.py)
    encoded: list[EncodedExample]  # training examples that fit max_length
    codes: list[list[int]] | None  # their latent codes (same order), None for text-only runs
    layout: ChunkLayout | None
    latent_vocab: LatentVocab | None
    latents: LatentCodes | None
    valid: list[Example] = field(default_factory=list)
    skipped: int = 0
    max_latent_chunks: int = 0  # the most chunks any training sequence could replace (the dial's limit)
    epoch: int = 0  # the epoch being trained (a curriculum validates at its current stage)


# --------------------------------------------------------------------------- setup
PEERS: dict[str, type[Method]] = {"coconut": Coconut, "icot": StepwiseInternalization}


def method_for(config: TrainConfig) -> Method:
    """The method of `config.strategy`: a chunk strategy of mixing.py, Coconut or iCoT."""
    if config.strategy not in METHOD_NAMES:
        raise ConfigError(f"unknown strategy {config.strategy!r}; choose one of: {', '.join(METHOD_NAMES)}")
    return PEERS.get(config.strategy, Method)(config)


def check_config(config: TrainConfig, have_latents: bool = False) -> None:
    for name in ("task", "data", "out"):
        if not getattr(config, name):
            raise ConfigError(f"train: '{name}' is required")
    check_limits(dataclasses.asdict(config), TrainConfig.LIMITS, "train")  # configs built in Python too
    method_for(config)  # the name, and the method's own settings (iCoT's final epochs within epochs)
    if config.strategy in LAYOUT_STRATEGIES and not (config.vqvae or config.codes or have_latents):
        raise ConfigError(f"strategy {config.strategy!r} replaces trace chunks by latent tokens: "
                          f"pass --vqvae DIR (or a codes file)")
    if config.embedding_init not in EMBEDDING_INITS:
        raise ConfigError(f"embedding_init must be one of {EMBEDDING_INITS}, got {config.embedding_init!r}")
    if config.mixed_precision not in ("auto", "no", "bf16"):
        raise ConfigError(f"mixed_precision must be auto, no or bf16, got {config.mixed_precision!r}")
    if config.lora is not None:
        check_lora(config.lora)


def _text_tokenizer(config: TrainConfig, task: Task, train: list[Example], latents: LatentCodes | None):
    """The tokenizer of a scratch model: the VQ-VAE's, a given one, or one built from the data."""
    if latents is not None and latents.tokenizer is not None:
        return latents.tokenizer
    if config.tokenizer:
        return resolve_tokenizer(config.tokenizer)
    texts = [task.prompt_text(ex) + task.trace_text(ex) + task.solution_text(ex) for ex in train]
    return build_task_tokenizer(texts, task.lexicon())


def _model_and_tokenizer(config: TrainConfig, task: Task, train: list[Example], latents: LatentCodes | None):
    if is_preset(config.model):
        tokenizer = _text_tokenizer(config, task, train, latents)
        return build_scratch_model(config.model, tokenizer, config.max_length, config.seed), tokenizer
    model, tokenizer = load_pretrained_lm(config.model)
    if latents is not None and latents.tokenizer is not None:
        if tokenizer_fingerprint(latents.tokenizer) != tokenizer_fingerprint(tokenizer):
            raise ConfigError(f"the VQ-VAE was trained with another tokenizer than {config.model}'s")
    return model, tokenizer


def setup(config: TrainConfig, latents: LatentCodes | None = None) -> Setup:
    """Load data, tokenizer, codes and model; add the latent vocabulary where needed."""
    check_config(config, latents is not None)
    task = get_task(config.task, **config.task_options)
    train = task.load(config.data)
    valid = task.load(config.valid) if config.valid else []
    method = method_for(config)
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
    if config.lora is not None:  # [lora] adapters, with the latent (or the method's own) rows trained in full
        model = apply_lora(model, config.lora, method.vocab or latent_vocab, config.seed)
    encoded = [method.encode(tokenizer, task, ex, config.chat_template) for ex in train]
    codes = latents.codes if latents is not None and strategy.needs_codes else None
    limit = _length_limit(config, model)
    keep = [i for i, enc in enumerate(encoded) if method.max_length(enc, layout) <= limit]
    if codes is not None:
        if len(codes) != len(encoded):
            raise ConfigError(f"{len(codes)} code lists for {len(encoded)} training examples")
        for i in keep:  # the VQ-VAE did not encode the examples too long to keep (latents.py)
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


# --------------------------------------------------------------------------- batches
def make_batch(run: Setup, indices: Sequence[int], seed: int, epoch: int) -> dict[str, torch.Tensor]:
    """The tensors of one micro-batch (the method's layout; batches.py has the order)."""
    return run.method.batch(run, indices, seed, epoch)


# --------------------------------------------------------------------------- validation
def validation_metrics(model, run: Setup, config: TrainConfig, accelerator) -> dict[str, float]:
    """Greedy accuracy and answer length on the valid split, shared out over the processes.

    The lengths make a learning curve of tokens as well as accuracy: how soon a mixed
    model starts answering in latent tokens is half of what Token Assorted is about.
    """
    from .evaluate import EvalConfig, evaluate

    examples = run.valid[: config.eval_limit] if config.eval_limit is not None else run.valid
    shard = examples[accelerator.process_index::accelerator.num_processes]
    sums = [0.0, 0.0, 0.0]  # correct answers, generated tokens, latent tokens
    if shard:
        eval_config = EvalConfig(batch_size=config.eval_batch_size, progress=False,
                                 max_new_tokens=config.max_new_tokens or _default_new_tokens(run, examples))
        generate, vocab = run.method.generation(run.epoch, run.latent_vocab)  # Coconut: its own loop
        result = evaluate(model, run.tokenizer, run.task, shard, eval_config, vocab, config.chat_template,
                          generate=generate)
        sums = [result.accuracy * result.n, result.avg_generated_tokens * result.n,
                result.avg_latent_tokens * result.n]
    totals = torch.tensor([*sums, float(len(shard))], device=accelerator.device)
    totals = accelerator.reduce(totals, reduction="sum")
    n = totals[3].clamp_min(1)
    return {"accuracy": float(totals[0] / n), "avg_generated_tokens": float(totals[1] / n),
            "avg_latent_tokens": float(totals[2] / n)}


def _default_new_tokens(run: Setup, examples: list[Example]) -> int:
    # Room for the longest all-text trace and solution: a model that rambles past it is wrong.
    longest = max(len(encode_example(run.tokenizer, run.task, ex).trace_ids)
                  + len(encode_example(run.tokenizer, run.task, ex).solution_ids) for ex in examples[:200])
    return longest + 16


# --------------------------------------------------------------------------- saving
def model_meta(config: TrainConfig, run: Setup, history: list[dict[str, Any]], epoch: int = 0) -> dict[str, Any]:
    latents = run.latents
    return {
        "task": run.task.name, "task_options": run.task.options(), "strategy": config.strategy, "vqvae": config.vqvae, "codes": config.codes,
        "codebook_size": latents.codebook_size if latents else None,
        "chunk_size": latents.chunk_size if latents else None,
        "latents_per_chunk": latents.latents_per_chunk if latents else None,
        "latent_vocab": run.latent_vocab.to_dict() if run.latent_vocab else None,
        "max_latent_chunks": run.max_latent_chunks,
        "pause_id": run.latent_vocab.pause_id if run.latent_vocab else None,
        "chat_template": config.chat_template, "data": config.data, "valid": config.valid,
        "model": config.model, "skipped_too_long": run.skipped, "config": dataclasses.asdict(config),
        "history": history, **run.method.meta(epoch),
    }


def save_model_dir(model, run: Setup, out: Path, meta: dict[str, Any]) -> None:
    """The unwrapped model as a plain HF directory; each file replaced atomically."""
    import shutil
    import tempfile

    model = exportable(model)  # [lora] adapters merged into a copy: a plain transformers model
    generation = model.generation_config
    generation.eos_token_id = run.tokenizer.eos_token_id
    generation.pad_token_id = run.tokenizer.pad_token_id
    generation.bos_token_id = run.tokenizer.bos_token_id
    from transformers.utils import logging as hf_logging

    with writing(out), tempfile.TemporaryDirectory(dir=out, prefix=".save-") as tmp:
        hf_logging.disable_progress_bar()  # one bar per save would drown the training bar
        model.save_pretrained(tmp)
        run.tokenizer.save_pretrained(tmp)
        for path in Path(tmp).iterdir():
            if path.is_file():
                path.chmod(new_file_mode())  # safetensors' temp files are 0600; results are shared
                shutil.move(str(path), out / (path.name + ".tmp"))
                (out / (path.name + ".tmp")).replace(out / path.name)
    atomic_write_json(out / MODEL_META, meta)


# --------------------------------------------------------------------------- the loop
def _micro_batch(config: TrainConfig, world: int) -> int:
    per_step = config.grad_accum * world
    if config.batch_size % per_step:
        raise ConfigError(f"batch size {config.batch_size} is not divisible by grad_accum x processes "
                          f"= {config.grad_accum} x {world}")
    return config.batch_size // per_step


def _warmup_steps(config: TrainConfig, total: int) -> int:
    return int(config.warmup * total) if config.warmup < 1 else int(config.warmup)


class _Trainer:
    """The state of one run's fit loop (kept small: setup, steps, checkpoints)."""

    def __init__(self, config: TrainConfig, run: Setup, accelerator, validate: Callable) -> None:
        from transformers import get_cosine_schedule_with_warmup

        self.config, self.run, self.acc, self.validate = config, run, accelerator, validate
        self.out = Path(config.out)
        self.micro = _micro_batch(config, accelerator.num_processes)
        self.steps_per_epoch = math.ceil(len(run.encoded) / config.batch_size)
        self.total = config.epochs * self.steps_per_epoch
        if config.max_steps is not None:
            self.total = min(self.total, config.max_steps)
        run.model.to(accelerator.device)
        # Only what trains: with LoRA the frozen weights get no optimizer state (the same list otherwise).
        trainable = [p for p in run.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=config.lr,
                                           weight_decay=config.weight_decay, betas=(0.9, 0.95))
        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, _warmup_steps(config, self.total),
                                                         self.total)
        self.lm = run.model  # what is saved and validated; `model` is what the method's forward calls
        self.model = accelerator.prepare(run.method.wrap(run.model))
        self.epoch, self.step, self.global_step = 0, 0, 0
        self.best: float | None = None
        self.history: list[dict[str, Any]] = []
        self.writer = None
        self.lengths = text_lengths(run.encoded) if config.group_by_length else []
        self.saved_step = 0  # the step of the last state committed (kept if training diverges)
        self.reset_at: int | None = None  # the epoch that began with fresh optimizer moments
        self.step_seconds: list[float] = []  # wall time of each optimizer step taken by this process

    # -- state -----------------------------------------------------------------
    def trainer_record(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "global_step": self.global_step, "best": self.best,
                "history": self.history, "config": dataclasses.asdict(self.config),
                "latents": layout_of(self.run.latents), "reset_at": self.reset_at}

    def require_finite(self, loss: float | None = None) -> None:
        """Stop before a non-finite loss or model is saved: the last good state and model stay."""
        if loss is None or math.isfinite(loss):
            if all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
                return
        what = f"the loss is {loss}" if loss is not None and not math.isfinite(loss) else "the weights are not finite"
        kept = f"the state of step {self.saved_step}" if self.saved_step else "no resume state"
        raise TrainingError(f"training diverged at step {self.global_step} (epoch {self.epoch + 1}): {what}; stopped "
                            f"without saving it ({self.out} keeps {kept} and the last model saved, if any); "
                            f"lower --lr (now {self.config.lr}) or max_grad_norm")

    def save_state(self) -> None:
        self.require_finite()
        directory = step_dir(self.out, self.global_step)
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            save_main_files(directory, self.lm, self.optimizer, self.scheduler,
                            self.trainer_record())
        self.acc.wait_for_everyone()
        save_rank_files(directory, self.acc.process_index)
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            commit(self.out, directory)
        self.acc.wait_for_everyone()
        self.saved_step = self.global_step

    def restore(self) -> None:
        directory = latest_state(self.out)
        if directory is None:
            self.acc.print(f"no training state in {self.out}; starting from scratch")
            return
        # A VQ-VAE of another K or L swapped in: named here, not as a size-mismatch traceback.
        check_layout(read_json(directory / "trainer.json"), self.run.latents, self.config.vqvae or self.config.codes)
        record = load_state(directory, self.lm, self.optimizer, self.scheduler,
                            self.acc.process_index)
        given = dataclasses.asdict(self.config)
        # A method's schedule (Coconut's stages, iCoT's removal) decides every sequence: it must match too.
        schedule = tuple(key for key in given if key.startswith(("coconut_", "icot_")))
        for key in ("strategy", "seed", "batch_size", "data", "task", "model", "task_options", "lora", *schedule):
            known = key in ("task_options", "lora") or key in schedule  # newer keys: absent means the default
            if record["config"].get(key, given[key] if known else None) != given[key]:
                raise ConfigError(f"--resume: {key} differs from the saved run "
                                  f"({record['config'].get(key)!r} vs {given[key]!r})")
        self.epoch, self.step, self.global_step = record["epoch"], record["step"], record["global_step"]
        self.reset_at = record.get("reset_at")
        self.best, self.history = record["best"], record["history"]
        self.saved_step = self.global_step
        self.acc.print(f"resumed from {directory} (epoch {self.epoch}, step {self.global_step})")

    # -- fitting -----------------------------------------------------------------
    def train_step(self, order: list[int]) -> float:
        """One optimizer step: grad_accum micro-batches, gradients synced on the last only."""
        losses = []
        accum = self.config.grad_accum
        for a in range(accum):
            indices = micro_indices(order, self.step, self.config.batch_size, self.micro, a,
                                    self.acc.process_index, self.acc.num_processes)
            batch = {k: v.to(self.acc.device) for k, v in
                     make_batch(self.run, indices, self.config.seed, self.epoch).items()}
            sync = contextlib.nullcontext() if a == accum - 1 else self.acc.no_sync(self.model)
            with sync:
                loss = self.run.method.loss(self.model, batch)
                self.acc.backward(loss / accum)
            losses.append(loss.detach())
        if self.config.max_grad_norm > 0:
            self.acc.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(self.acc.reduce(torch.stack(losses).mean(), reduction="mean"))

    def end_epoch(self, loss: float) -> None:
        self.require_finite()  # never validate, let alone save, a diverged model (the loss: per step)
        record: dict[str, Any] = {"epoch": self.epoch + 1, "step": self.global_step, "train_loss": loss}
        if self.reset_at == self.epoch:
            record["optimizer_reset"] = True
        # A curriculum's model may be kept from its final phase only (or its last epoch, if never reached).
        eligible = self.run.method.selectable(self.epoch) or self.epoch == self.config.epochs - 1
        if self.run.valid:
            self.run.epoch = self.epoch  # a curriculum answers at the stage it trained
            metrics = self.validate(self.lm, self.run, self.config, self.acc)
            if not isinstance(metrics, dict):
                metrics = {"accuracy": float(metrics)}  # a custom validate may return accuracy alone
            record.update({f"valid_{name}": value for name, value in metrics.items()})
            accuracy = metrics["accuracy"]
            improved = eligible and (self.best is None or accuracy >= self.best)
        else:
            accuracy, improved = None, eligible  # no valid split: keep the latest model
        self.history.append(record)
        if improved:
            self.best = accuracy
            if self.acc.is_main_process:
                save_model_dir(self.lm, self.run, self.out,
                               {**model_meta(self.config, self.run, self.history, self.epoch),
                                "best_epoch": self.epoch + 1,
                                "best_valid_accuracy": accuracy})
        self.acc.print(f"epoch {self.epoch + 1}/{self.config.epochs}: loss {loss:.4f}"
                       + (f", valid accuracy {accuracy:.3f}" if accuracy is not None else ""))
        if self.writer is not None:
            for name, value in record.items():
                if name.startswith("valid_"):
                    self.writer.add_scalar(f"valid/{name[6:]}", value, self.global_step)

    def start_epoch(self) -> None:
        """Fresh optimizer moments when the method's phase changes (Coconut's stage, iCoT's removal
        count); the learning-rate schedule goes on. At step 0 only: a run resumed mid-epoch has
        the reset in its saved optimizer state, one resumed at an epoch's start makes it here."""
        method = self.run.method
        if self.step == 0 and self.epoch > 0 and method.phase(self.epoch) != method.phase(self.epoch - 1):
            self.optimizer.state.clear()  # AdamW re-creates each parameter's state at its next step
            self.reset_at = self.epoch

    def cost(self) -> dict[str, float]:
        """Seconds per optimizer step of this process's steps (forward, backward, update: no validation)."""
        timed = self.step_seconds
        return {"train_seconds_per_step": sum(timed) / len(timed)} if timed else {}

    def epoch_order(self) -> list[int]:
        order = epoch_order(len(self.run.encoded), self.steps_per_epoch * self.config.batch_size,
                            self.config.seed, self.epoch)
        if self.config.group_by_length:
            order = group_by_length(order, self.lengths, self.config.batch_size, self.config.seed, self.epoch)
        return order

    def fit(self) -> None:
        from tqdm.auto import tqdm

        if self.acc.is_main_process:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.out / "logs"))
        bar = tqdm(total=self.total, initial=self.global_step, unit="step", dynamic_ncols=True,
                   disable=not (self.acc.is_main_process and self.config.progress))
        started, loss = time.perf_counter(), float("nan")
        try:
            while self.epoch < self.config.epochs and self.global_step < self.total:
                order = self.epoch_order()
                self.start_epoch()
                while self.step < self.steps_per_epoch and self.global_step < self.total:
                    begun = time.perf_counter()
                    loss = self.train_step(order)
                    self.step_seconds.append(time.perf_counter() - begun)
                    self.step += 1
                    self.global_step += 1
                    if not math.isfinite(loss):
                        self.require_finite(loss)
                    bar.update(1)
                    bar.set_postfix(epoch=self.epoch + 1, loss=f"{loss:.4f}")
                    self.log(loss, started)
                    if self.config.save_every and self.global_step % self.config.save_every == 0:
                        self.save_state()
                if self.step >= self.steps_per_epoch:
                    self.end_epoch(loss)
                    self.epoch, self.step = self.epoch + 1, 0
                    self.save_state()
        except KeyboardInterrupt:
            self.save_state()
            self.acc.print(f"\ninterrupted: training state saved at step {self.global_step}; resume with the "
                           f"same command plus --resume (out: {self.out})")
            raise
        finally:
            bar.close()
            if self.writer is not None:
                self.writer.close()
        if self.acc.is_main_process and self.step and (not self.run.valid
                                                       or not (self.out / "config.json").is_file()):
            # Stopped mid-epoch by max_steps: save what was trained.
            self.require_finite()
            save_model_dir(self.lm, self.run, self.out,
                           {**model_meta(self.config, self.run, self.history, self.epoch), **self.cost()})
        elif self.acc.is_main_process and (self.out / MODEL_META).is_file():
            # The best epoch's directory was written when it was best; give it the whole
            # learning curve, the epochs after it included.
            meta = read_json(self.out / MODEL_META)
            atomic_write_json(self.out / MODEL_META, {**meta, "history": self.history, **self.cost()})
        self.acc.wait_for_everyone()

    def log(self, loss: float, started: float) -> None:
        if self.writer is None or self.global_step % max(1, self.config.log_every):
            return
        self.writer.add_scalar("train/loss", loss, self.global_step)
        self.writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], self.global_step)
        self.writer.add_scalar("train/steps_per_second", self.global_step / (time.perf_counter() - started),
                               self.global_step)


def train_lm(config: TrainConfig, *, latents: LatentCodes | None = None,
             validate: Callable | None = None) -> Path:
    """Train one stage-2 model; return its output directory (a plain HF model dir).

    `latents` supplies codes directly (tests, notebooks) instead of `vqvae`/`codes`;
    `validate(model, run, config, accelerator)` replaces the default greedy-generation
    validation; it returns the accuracy, or a dict of metrics holding "accuracy".
    """
    out = Path(config.out)
    if not config.resume and (out / "state").exists():
        raise ConfigError(f"{out} already holds a training run; pass --resume to continue it "
                          f"or choose another --out")
    accelerator = make_accelerator(config.mixed_precision)
    run = setup(config, latents)
    out.mkdir(parents=True, exist_ok=True)
    trainer = _Trainer(config, run, accelerator, validate or validation_metrics)
    if config.resume:
        trainer.restore()
    if run.skipped:
        accelerator.print(f"skipped {run.skipped} training examples longer than max_length={config.max_length}")
    trainer.fit()
    return out
