"""Resumable training state: written to a fresh step directory, committed by one atomic rename.

`OUT/state/step-NNNNNNNN/` holds the model weights (safetensors), the optimizer and
scheduler state, one RNG file per process and `trainer.json` (epoch, step, best score,
history, config). Nothing points at a step directory until `OUT/state/latest.json` is
replaced atomically (temp file + fsync + rename, `io.atomic_write_json`), after every file
of it is fsynced; a process killed mid-save leaves the previous state in force. Older
step directories are removed after the commit.

Only our own files are read back, and `torch.load` always runs with `weights_only=True`.
The data order is not stored: it is a function of (seed, epoch), so epoch and step fix it.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from .errors import CheckpointError
from .io import atomic_write_json, read_json

STATE_DIR = "state"
POINTER = "latest.json"


def state_root(out: str | Path) -> Path:
    return Path(out) / STATE_DIR


def step_dir(out: str | Path, global_step: int) -> Path:
    return state_root(out) / f"step-{global_step:08d}"


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict[str, Any]:
    """This process's random state (torch CPU, CUDA, Python)."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rank_files(directory: Path, rank: int) -> None:
    """Every process writes its own RNG state (dropout masks differ per process)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"rng_rank{rank}.pt"
    torch.save(rng_state(), path)
    _fsync_file(path)


def save_main_files(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, trainer: dict[str, Any]) -> None:
    """The main process writes weights, optimizer, scheduler and the trainer record."""
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, str(directory / "model.safetensors"))  # handles tied embeddings
    torch.save(optimizer.state_dict(), directory / "optimizer.pt")
    torch.save(scheduler.state_dict(), directory / "scheduler.pt")
    atomic_write_json(directory / "trainer.json", trainer)
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt"):
        _fsync_file(directory / name)


def commit(out: str | Path, directory: Path) -> None:
    """Point `latest.json` at `directory` (atomic), then drop older step directories."""
    atomic_write_json(state_root(out) / POINTER, {"dir": directory.name})
    for old in state_root(out).glob("step-*"):
        if old.is_dir() and old.name != directory.name:
            shutil.rmtree(old, ignore_errors=True)


def latest_state(out: str | Path) -> Path | None:
    """The committed step directory of `out`, or None when there is none."""
    pointer = state_root(out) / POINTER
    if not pointer.is_file():
        return None
    record = read_json(pointer)
    directory = state_root(out) / str(record.get("dir", ""))
    if not isinstance(record, dict) or not (directory / "trainer.json").is_file():
        raise CheckpointError(f"{pointer}: points at a missing or incomplete state {directory}")
    return directory


def _reason(exc: BaseException) -> str:
    """A short reason: torch's weights-only refusal names the offending global after its advice."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        detail = " ".join(text.split(marker, 1)[1].split()).split(". Please", 1)[0].split(" Check the", 1)[0]
        return f"not plain tensors and numbers, refused without executing it ({detail.rstrip('.')})"
    lines = text.strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _load_torch(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a refused unpickle (UnpicklingError) or any corruption
        # weights_only=True refuses anything but tensors and plain containers; a swapped or
        # tampered file ends here instead of being executed.
        raise CheckpointError(f"{path}: cannot read training state: {_reason(exc)}") from None


def load_state(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: Any, rank: int) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and this process's RNG; return trainer.json."""
    trainer = read_json(directory / "trainer.json")
    missing, unexpected = load_model(model, str(directory / "model.safetensors"), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise CheckpointError(f"{directory}: weights do not match the model "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    optimizer.load_state_dict(_load_torch(directory / "optimizer.pt"))
    scheduler.load_state_dict(_load_torch(directory / "scheduler.pt"))
    rng_path = directory / f"rng_rank{rank}.pt"
    if rng_path.is_file():
        set_rng_state(_load_torch(rng_path))
    return trainer
