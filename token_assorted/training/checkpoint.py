"""Resumable training state: written to a fresh step directory, committed by one atomic rename.

`OUT/state/step-NNNNNNNN/` holds the model weights (safetensors), the optimizer and
scheduler state, one RNG file per process and `trainer.json` (epoch, step, best score,
history, config). Nothing points at a step directory until `OUT/state/latest.json` is
replaced atomically (temp file + fsync + rename, `io.atomic_write_json`), after every file
of it is fsynced; a process killed mid-save leaves the previous state in force. Older
step directories are removed after the commit.

Only our own files are read back, and `torch.load` always runs with `weights_only=True`;
the pointer must name a step directory inside `OUT/state/` (a pointer edited to lead
elsewhere is refused), and the saved weights must fit the model being resumed (a VQ-VAE of
another codebook size swapped in is named, not a size-mismatch traceback). A write the
operating system refuses (disk full, read-only) is a `WriteError` naming the file.
The data order is not stored: it is a function of (seed, epoch), so epoch and step fix it.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from ..core.errors import CheckpointError
from ..core.io import atomic_write_json, new_file_mode, read_json, writing
from ..core.outdir import note_write
from ..core.weights import check_state_files

STATE_DIR = "state"
POINTER = "latest.json"
STEP_NAME = re.compile(r"step-\d{8}")
# What a save writes into a step folder (and the temp files of its atomic writes).
STATE_FILE = re.compile(r"(model\.safetensors|optimizer\.pt|scheduler\.pt|trainer\.json|rng_rank\d+\.pt"
                        r"|\.trainer\.json\.\w+\.tmp)")


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


def _save_torch(obj: Any, path: Path) -> None:
    # Serialised in memory first: torch.save writing to a full disk reports only "unexpected
    # pos", while a plain write gives the OS's reason (No space left on device).
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with writing(path):
        path.write_bytes(buffer.getbuffer())


def save_rank_files(directory: Path, rank: int) -> None:
    """Every process writes its own RNG state (dropout masks differ per process)."""
    with writing(directory):
        directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"rng_rank{rank}.pt"
    _save_torch(rng_state(), path)
    _fsync_file(path)


def save_main_files(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, trainer: dict[str, Any]) -> None:
    """The main process writes weights, optimizer, scheduler and the trainer record."""
    note_write(directory, folder=True)  # a fresh step folder: everything in it is ours (outdir.py)
    with writing(directory):
        directory.mkdir(parents=True, exist_ok=True)
    with writing(directory / "model.safetensors"):
        save_model(model, str(directory / "model.safetensors"))  # handles tied embeddings
        # safetensors creates its file 0600; every other output gets the usual mode.
        os.chmod(directory / "model.safetensors", new_file_mode())
    _save_torch(optimizer.state_dict(), directory / "optimizer.pt")
    _save_torch(scheduler.state_dict(), directory / "scheduler.pt")
    atomic_write_json(directory / "trainer.json", trainer)
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt"):
        _fsync_file(directory / name)


def commit(out: str | Path, directory: Path) -> None:
    """Point `latest.json` at `directory` (atomic), then drop older step directories."""
    atomic_write_json(state_root(out) / POINTER, {"dir": directory.name})
    for old in state_root(out).glob("step-*"):
        if old.is_dir() and not old.is_symlink() and STEP_NAME.fullmatch(old.name) and old.name != directory.name:
            _prune(old)


def _prune(directory: Path) -> None:
    """Delete an older step folder: the files a save writes there, and the folder once empty
    (a file of anyone else's stays, and so does the folder holding it)."""
    for path in directory.iterdir():
        if path.is_file() and not path.is_symlink() and STATE_FILE.fullmatch(path.name):
            with contextlib.suppress(OSError):
                path.unlink()
    with contextlib.suppress(OSError):
        directory.rmdir()


def latest_state(out: str | Path) -> Path | None:
    """The committed step directory of `out`, or None when there is none.

    The pointer must be `{"dir": "step-NNNNNNNN"}` naming a folder inside `OUT/state/`
    itself (checked after resolving links): resuming reads only this run's own files.
    """
    root = state_root(out)
    pointer = root / POINTER
    if not pointer.is_file():
        return None
    record = read_json(pointer)
    name = record.get("dir") if isinstance(record, dict) else None
    if not isinstance(name, str) or not STEP_NAME.fullmatch(name):
        raise CheckpointError(f"{pointer}: expected {{\"dir\": \"step-NNNNNNNN\"}}, got {record!r:.80}")
    directory = root / name
    if directory.resolve().parent != root.resolve():
        raise CheckpointError(f"{pointer}: {directory} leads outside {root}; refusing to resume from it")
    if not (directory / "trainer.json").is_file():
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
    check_state_files(directory / "model.safetensors", model)  # names and shapes, before loading
    load_model(model, str(directory / "model.safetensors"), strict=False)  # tied weights are stored once
    optimizer.load_state_dict(_load_torch(directory / "optimizer.pt"))
    scheduler.load_state_dict(_load_torch(directory / "scheduler.pt"))
    rng_path = directory / f"rng_rank{rank}.pt"
    if rng_path.is_file():
        set_rng_state(_load_torch(rng_path))
    return trainer
