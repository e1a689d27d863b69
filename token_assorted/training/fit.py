"""One training skeleton for both stages, on accelerate: setup -> fit -> validate -> save.

A stage (the VQ-VAE, `vqvae/train.py`; the LM, `lm/train.py`) hands the skeleton a `Stage`: its
model, the micro-batches of each optimizer step, the loss, and what it does after a step
(validate, save its own model, log its own figures). The skeleton does what both need, the
same way:

- optimizer steps: AdamW over the trainable weights, a `transformers.get_scheduler`
  learning-rate schedule, gradient clipping. `batch_size` is the EFFECTIVE batch of one
  optimizer step whatever the number of processes: each process runs `grad_accum`
  micro-batches of batch_size / (grad_accum x processes) examples, gradients synced on the
  last one only, so the step is the one a single process would take;
- devices: accelerate picks cuda -> mps -> cpu and, launched by `torchrun` or `accelerate
  launch`, wraps the model in DDP (gloo on CPU);
- state: every save goes to a fresh step folder, then a pointer is switched to it atomically
  (`checkpoint.py`); a resumed run restores weights, optimizer, schedule, RNG and the stage's
  record, and ends with the weights of a run that was never stopped;
- stopping: Ctrl-C (and SIGTERM, where the command made it an interrupt) lets the current
  step finish, saves the state and raises KeyboardInterrupt; a second Ctrl-C stops at once.
  A non-finite loss, or weights no longer finite when a save comes, stop training with a
  TrainingError; the last good state stays;
- logs: OUT/logs/ holds TensorBoard events and `log.jsonl` (one line per logged step and per
  validation; lines after the step a run resumes from are dropped); a tqdm bar.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.errors import ConfigError, TrainingError
from ..core.io import atomic_write_jsonl, read_json
from ..core.outdir import note_write
from .checkpoint import commit, latest_state, load_state, save_main_files, save_rank_files, step_dir

LOGS = "logs"
LOG_FILE = "log.jsonl"


@dataclass
class Optimization:
    """How a stage's optimizer steps (each stage fills it from its own options)."""

    total_steps: int  # optimizer steps in all
    batch_size: int  # effective examples per optimizer step, all processes together
    lr: float  # peak learning rate
    warmup_steps: int
    schedule: str = "cosine"  # a transformers.get_scheduler name
    schedule_options: dict[str, Any] = field(default_factory=dict)  # e.g. cosine_with_min_lr's min_lr_rate
    grad_accum: int = 1  # micro-batches per optimizer step and process
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = 0.0  # 0: no clipping


@dataclass
class After:
    """What a stage asks for after an optimizer step."""

    save: bool = False  # write the resume state now
    stop: bool = False  # end training here, the state saved (a planned stop, not an error)


class Stage:
    """What one stage supplies; the hooks it does not need do nothing."""

    model: torch.nn.Module  # what the state saves and validation reads (never the DDP wrapper)

    def module(self) -> torch.nn.Module:
        """The module accelerate prepares and `loss` calls (Coconut: its multi-pass forward)."""
        return self.model

    def micro_batch(self, fit: Fit, step: int, index: int) -> Any:
        """Micro-batch `index` of optimizer step `step` for this process (fit.rank of fit.world)."""
        raise NotImplementedError

    def loss(self, module: torch.nn.Module, batch: Any) -> torch.Tensor:
        raise NotImplementedError

    def begin_step(self, fit: Fit, step: int) -> None:
        """Before step `step` (0-based): a new epoch's order, an optimizer reset."""

    def end_step(self, fit: Fit, step: int, loss: float) -> After:
        """After `step` steps in all: log, validate, save the stage's model."""
        return After()

    def train_stats(self) -> dict[str, float]:
        """The stage's own figures of the step just taken, logged beside the loss every `log_every` steps."""
        return {}

    def postfix(self) -> dict[str, Any]:
        """What the progress bar shows beside the loss."""
        return {}

    def save(self, fit: Fit) -> None:
        """On the main process, just before the state is written (stage 1: its VQ-VAE folder)."""

    def record(self) -> dict[str, Any]:
        """The stage's part of the saved state (JSON)."""
        return {}

    def check_resume(self, record: dict[str, Any]) -> None:
        """Refuse a saved state this run cannot continue, before any of it is loaded."""

    def restore(self, record: dict[str, Any]) -> None:
        """Take back the stage's part of a saved state."""

    def finish(self, fit: Fit) -> None:
        """After the last step: the stage's final files."""


def micro_batch_size(batch_size: int, grad_accum: int, world: int) -> int:
    """Examples per micro-batch: the effective batch shared over accumulation steps and processes."""
    per_step = grad_accum * world
    if batch_size % per_step:
        raise ConfigError(f"batch size {batch_size} is not divisible by grad_accum x processes "
                          f"= {grad_accum} x {world}")
    return batch_size // per_step


def shard(indices: list[int], micro: int, index: int, rank: int, world: int) -> list[int]:
    """Process `rank`'s micro-batch `index` of one optimizer step's `indices`."""
    start = (index * world + rank) * micro
    return indices[start:start + micro]


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, dict):
        return {key: value.to(device) for key, value in batch.items()}
    return batch.to(device)


class Fit:
    """The optimizer, schedule, steps and state of one stage's training."""

    def __init__(self, stage: Stage, optimization: Optimization, accelerator: Any, out: str | Path, *,
                 log_every: int = 10, progress: bool = True, desc: str = "train",
                 scheduler: Callable[[torch.optim.Optimizer], Any] | None = None) -> None:
        from transformers import get_scheduler

        self.stage, self.opt, self.acc, self.out = stage, optimization, accelerator, Path(out)
        self.log_every, self.progress, self.desc = max(1, log_every), progress, desc
        self.micro = micro_batch_size(optimization.batch_size, optimization.grad_accum, accelerator.num_processes)
        stage.model.to(accelerator.device)
        # Only what trains: with LoRA the frozen weights get no optimizer state.
        trainable = [p for p in stage.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=optimization.lr, weight_decay=optimization.weight_decay,
                                           betas=optimization.betas)
        self.scheduler = scheduler(self.optimizer) if scheduler else get_scheduler(
            optimization.schedule, self.optimizer, num_warmup_steps=optimization.warmup_steps,
            num_training_steps=optimization.total_steps, scheduler_specific_kwargs=optimization.schedule_options)
        self.module = accelerator.prepare(stage.module())
        self.step = 0  # optimizer steps done
        self.saved_step = 0  # the step of the last state committed (kept if training diverges)
        self.step_seconds: list[float] = []  # wall time of each step this process took
        self.writer = self.log_file = None

    # -- who and where -----------------------------------------------------------------
    @property
    def rank(self) -> int:
        return self.acc.process_index

    @property
    def world(self) -> int:
        return self.acc.num_processes

    @property
    def is_main(self) -> bool:
        return self.acc.is_main_process

    @property
    def device(self) -> torch.device:
        return self.acc.device

    def print(self, message: str, file: Any = None) -> None:
        """A line on the main process (stdout unless `file` says otherwise)."""
        if self.is_main:
            print(message, file=file or sys.stdout)

    # -- the state ---------------------------------------------------------------------
    def restore(self) -> bool:
        """Continue from the committed state in OUT/state/; False when there is none."""
        directory = latest_state(self.out)
        if directory is None:
            return False
        record = read_json(directory / "trainer.json")
        self.stage.check_resume(record)
        load_state(directory, self.stage.model, self.optimizer, self.scheduler, self.rank)
        self.step = self.saved_step = int(record["global_step"])
        self.stage.restore(record)
        self.print(f"resumed from {directory} (step {self.step})")
        return True

    def save_state(self) -> None:
        self.require_finite()
        directory = step_dir(self.out, self.step)
        self.acc.wait_for_everyone()
        if self.is_main:
            self.stage.save(self)
            save_main_files(directory, self.stage.model, self.optimizer, self.scheduler,
                            {"global_step": self.step, **self.stage.record()})
        self.acc.wait_for_everyone()
        save_rank_files(directory, self.rank)
        self.acc.wait_for_everyone()
        if self.is_main:
            commit(self.out, directory)
        self.acc.wait_for_everyone()
        self.saved_step = self.step

    def require_finite(self, loss: float | None = None) -> None:
        """Stop before a non-finite loss or model is saved: the last good state and model stay."""
        if loss is None or math.isfinite(loss):
            tensors = self.stage.model.state_dict().values()
            if all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point()):
                return
            what = "the weights are no longer finite"
        else:
            what = f"the loss is {loss}"
        kept = f"the state of step {self.saved_step}" if self.saved_step else "no resume state"
        raise TrainingError(f"training diverged at step {self.step}: {what}; stopped without saving it "
                            f"({self.out} keeps {kept} and the last model saved, if any); lower the learning "
                            f"rate (lr, now {self.opt.lr}) or clip gradients harder")

    # -- the steps ---------------------------------------------------------------------
    def train_step(self) -> float:
        """One optimizer step: grad_accum micro-batches, gradients synced on the last only."""
        losses = []
        accum = self.opt.grad_accum
        for index in range(accum):
            batch = _to(self.stage.micro_batch(self, self.step, index), self.device)
            sync = contextlib.nullcontext() if index == accum - 1 else self.acc.no_sync(self.module)
            with sync:
                loss = self.stage.loss(self.module, batch)
                self.acc.backward(loss / accum)
            losses.append(loss.detach())
        if self.opt.max_grad_norm > 0:
            self.acc.clip_grad_norm_(self.module.parameters(), self.opt.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(self.acc.reduce(torch.stack(losses).mean(), reduction="mean"))

    def fit(self) -> None:
        """Train up to `total_steps`; the stage's `finish` runs unless training stopped early."""
        from tqdm.auto import tqdm

        self.open_logs()
        bar = tqdm(total=self.opt.total_steps, initial=self.step, desc=self.desc, unit="step", dynamic_ncols=True,
                   disable=not (self.is_main and self.progress))
        started, first = time.perf_counter(), self.step
        try:
            with interrupt_flag() as interrupted:
                while self.step < self.opt.total_steps:
                    self.stage.begin_step(self, self.step)
                    begun = time.perf_counter()
                    loss = self.train_step()
                    self.step_seconds.append(time.perf_counter() - begun)
                    self.step += 1
                    if not math.isfinite(loss):
                        self.require_finite(loss)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", **self.stage.postfix())
                    if self.step % self.log_every == 0:
                        rate = (self.step - first) / (time.perf_counter() - started)
                        self.log("train", {"loss": loss, "lr": self.scheduler.get_last_lr()[0],
                                           "steps_per_second": rate, **self.stage.train_stats()})
                    after = self.stage.end_step(self, self.step, loss)
                    stop = self.agree(interrupted())
                    if after.save or after.stop or stop:
                        self.save_state()
                    if stop:
                        # How to resume is the command's to say (cli.py): `run` resumes by itself.
                        self.print(f"\ninterrupted: training state saved at step {self.step} in "
                                   f"{self.out / 'state'}", sys.stderr)
                        raise KeyboardInterrupt
                    if after.stop:
                        return
        finally:
            bar.close()
            self.close_logs()
        self.stage.finish(self)
        self.acc.wait_for_everyone()

    def agree(self, flag: bool) -> bool:
        """Whether any process was interrupted: all stop after the same step (DDP would hang otherwise)."""
        if self.world == 1:
            return flag
        return bool(self.acc.reduce(torch.tensor(float(flag), device=self.device), reduction="sum") > 0)

    # -- logs ----------------------------------------------------------------------------
    def open_logs(self) -> None:
        if not self.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter

        folder = self.out / LOGS
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / LOG_FILE
        note_write(path)  # ours, in the record of the output folder (outdir.py)
        note_write(folder, pattern="events.out.tfevents.*")
        if self.step and path.is_file():
            # Lines a killed run wrote after its last saved state are redone now: drop them.
            kept = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            atomic_write_jsonl(path, [record for record in kept if record.get("step", 0) <= self.step])
        elif path.exists():
            path.unlink()
        self.log_file = open(path, "a", encoding="utf-8")
        self.writer = SummaryWriter(str(folder), purge_step=self.step or None)

    def close_logs(self) -> None:
        failing = sys.exc_info()[1] is not None  # called while an error propagates: that error is the one to report
        for handle in (self.writer, self.log_file):
            if handle is not None:
                try:
                    handle.close()
                except Exception:  # noqa: BLE001 - e.g. the disk that stopped training is full
                    if not failing:
                        raise
        self.writer = self.log_file = None

    def log(self, split: str, values: dict[str, float]) -> None:
        """One line of log.jsonl and one TensorBoard point per value (main process only)."""
        if self.log_file is None:
            return
        self.log_file.write(json.dumps({"step": self.step, "split": split, **values}) + "\n")
        self.log_file.flush()
        for name, value in values.items():
            self.writer.add_scalar(f"{split}/{name}", value, self.step)


@contextlib.contextmanager
def interrupt_flag() -> Iterator[Callable[[], bool]]:
    """Turn Ctrl-C (and SIGTERM, where the command made it an interrupt) into a flag read between
    steps, so the state is saved at a step's end; a second signal stops at once."""
    hit = {"value": False}
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum, frame):  # noqa: ARG001
        if hit["value"]:
            raise KeyboardInterrupt
        hit["value"] = True

    # SIGTERM only where the process already treats it as an interrupt (the CLI does): a pool
    # worker keeps the default, dying at once.
    signals = [signal.SIGINT] + [signal.SIGTERM] * callable(signal.getsignal(signal.SIGTERM))
    previous = {number: signal.signal(number, handler) for number in signals}
    try:
        yield lambda: hit["value"]
    finally:
        for number, old in previous.items():
            signal.signal(number, old)
