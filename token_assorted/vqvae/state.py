"""Resume state of a VQ-VAE run: weights, optimizer, scheduler, step and RNG, in DIR/state/.

Each file is written atomically and carries the step it belongs to; `state.json` is
written last, so a run killed while saving leaves the previous complete state (or a
mismatch we detect) rather than a torn one. The optimizer/scheduler file is a
`torch.save` of tensors and plain numbers, read back with `weights_only=True` only.
The data order needs no state: it is a pure function of (seed, step).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..errors import CheckpointError
from ..io import atomic_open, atomic_write_json, read_json
from .store import load_weights, save_weights

STATE_DIR = "state"


@dataclass
class TrainerState:
    step: int  # optimizer steps completed
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: torch.Tensor  # torch CPU generator state (k-means init and dead-code sampling draw from it)
    cuda_rng: list[torch.Tensor] = dataclasses.field(default_factory=list)  # per-GPU generator states


def save_state(directory: Path, model: torch.nn.Module, state: TrainerState) -> None:
    folder = directory / STATE_DIR
    save_weights(folder / "model.safetensors", model, {"step": str(state.step)})
    with atomic_open(folder / "trainer.pt", "wb") as handle:
        torch.save({"step": state.step, "optimizer": state.optimizer, "scheduler": state.scheduler,
                    "rng": state.rng, "cuda_rng": state.cuda_rng}, handle)
    atomic_write_json(folder / "state.json", {"step": state.step})


def load_state(directory: Path, model: torch.nn.Module) -> TrainerState:
    """Restore the model's weights in place and return the trainer state beside them."""
    folder = directory / STATE_DIR
    if not (folder / "state.json").is_file():
        raise CheckpointError(f"{folder}: no resume state (state.json missing); cannot --resume")
    step = read_json(folder / "state.json").get("step")
    try:
        trainer = torch.load(folder / "trainer.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling refusal or corruption is a bad checkpoint
        raise CheckpointError(f"{folder / 'trainer.pt'}: unreadable resume state ({exc})") from None
    weights = load_weights(folder / "model.safetensors")
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        weights_step = (handle.metadata() or {}).get("step")
    if trainer.get("step") != step or weights_step != str(step):
        raise CheckpointError(f"{folder}: resume files belong to different steps "
                              f"({trainer.get('step')} vs {step}); the state is torn")
    model.load_state_dict(weights)
    return TrainerState(step, trainer["optimizer"], trainer["scheduler"], trainer["rng"],
                        list(trainer.get("cuda_rng", [])))
