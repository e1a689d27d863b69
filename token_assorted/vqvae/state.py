"""Resume state of a VQ-VAE run: weights, optimizer, scheduler, step and RNG, in DIR/state/.

Each save goes into a fresh `state/step-NNNNNNNN/` folder (weights as safetensors, the
optimizer/scheduler/RNG record as `trainer.pt`); only when both files are written and
fsynced is the pointer `state/state.json` (`{"step": N, "dir": "step-…"}`) replaced by one
atomic rename. A run killed at any moment of a save therefore leaves the previous state
in force; older step folders are removed after the switch. `trainer.pt` is a `torch.save`
of tensors and plain numbers, read back with `weights_only=True` only. The data order
needs no state: it is a pure function of (seed, step).
"""

from __future__ import annotations

import dataclasses
import io
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..errors import CheckpointError
from ..io import atomic_open, atomic_write_json, read_json
from .store import load_weights, save_weights

STATE_DIR = "state"
POINTER = "state.json"


@dataclass
class TrainerState:
    step: int  # optimizer steps completed
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: torch.Tensor  # torch CPU generator state (k-means init and dead-code sampling draw from it)
    cuda_rng: list[torch.Tensor] = dataclasses.field(default_factory=list)  # per-GPU generator states


def save_state(directory: Path, model: torch.nn.Module, state: TrainerState) -> None:
    """Write the state into its own step folder, then switch the pointer to it atomically."""
    root = directory / STATE_DIR
    folder = root / f"step-{state.step:08d}"
    if folder.exists():  # left by a run killed mid-save at this step; never pointed at
        shutil.rmtree(folder)
    save_weights(folder / "model.safetensors", model, {"step": str(state.step)})
    # Serialised in memory, then written: on a full disk torch.save reports only "unexpected pos",
    # a plain write the OS's reason (a WriteError naming the file).
    buffer = io.BytesIO()
    torch.save({"step": state.step, "optimizer": state.optimizer, "scheduler": state.scheduler,
                "rng": state.rng, "cuda_rng": state.cuda_rng}, buffer)
    with atomic_open(folder / "trainer.pt", "wb") as handle:
        handle.write(buffer.getbuffer())
    atomic_write_json(root / POINTER, {"step": state.step, "dir": folder.name})  # the commit
    _prune(root, keep=folder.name)


def _prune(root: Path, keep: str) -> None:
    # Only after the commit: until then the previous state must stay loadable.
    for old in root.glob("step-*"):
        if old.is_dir() and old.name != keep:
            shutil.rmtree(old, ignore_errors=True)


def _committed_folder(root: Path) -> tuple[Path, Any]:
    pointer = root / POINTER
    if not pointer.is_file():
        raise CheckpointError(f"{root}: no resume state ({POINTER} missing); cannot --resume")
    record = read_json(pointer)
    if not isinstance(record, dict):
        raise CheckpointError(f"{pointer}: expected a JSON object")
    name = record.get("dir")
    if name is None:
        raise CheckpointError(f"{pointer}: names no step folder (a layout from before step folders); cannot --resume")
    folder = root / str(name)
    if not isinstance(name, str) or "/" in name or "\\" in name or not folder.is_dir():
        raise CheckpointError(f"{pointer}: points at a missing state folder {folder}")
    return folder, record.get("step")


def load_state(directory: Path, model: torch.nn.Module) -> TrainerState:
    """Restore the model's weights in place and return the trainer state beside them."""
    folder, step = _committed_folder(directory / STATE_DIR)
    try:
        trainer = torch.load(folder / "trainer.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling refusal or corruption is a bad checkpoint
        raise CheckpointError(f"{folder / 'trainer.pt'}: unreadable resume state ({exc})") from None
    weights = load_weights(folder / "model.safetensors")
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        weights_step = (handle.metadata() or {}).get("step")
    if not isinstance(trainer, dict) or trainer.get("step") != step or weights_step != str(step):
        raise CheckpointError(f"{folder}: resume files belong to different steps "
                              f"({trainer.get('step') if isinstance(trainer, dict) else None} vs {step}); "
                              f"the state is torn")
    model.load_state_dict(weights)
    return TrainerState(step, trainer["optimizer"], trainer["scheduler"], trainer["rng"],
                        list(trainer.get("cuda_rng", [])))
