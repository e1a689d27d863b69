"""Where a model runs, and in what precision, named the same way by every command.

`auto` means the first CUDA GPU when there is one, else the CPU, so that the same command
uses the GPU on a GPU machine without a flag (a pretrained model's test set is many times
slower to generate on the CPU).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, ContextManager

from .errors import ConfigError

if TYPE_CHECKING:  # torch is imported where a device is made: the CLI and configs load without it
    import torch

PRECISIONS = ("auto", "no", "bf16")


def resolve_device(name: str = "auto") -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:N` as a torch device; a GPU asked for but absent is an error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {name!r}; use auto, cpu or cuda[:N]")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but no CUDA GPU is available")
    return device


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"mixed_precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def uses_bf16(precision: str, device: torch.device) -> bool:
    """`auto` is bf16 autocast on a CUDA GPU that supports it (as in training), full fp32 elsewhere."""
    import torch

    check_precision(precision)
    if precision == "no":
        return False
    supported = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "bf16" and not supported:
        raise ConfigError(f"bf16 asked for, but {device} does not support it; use 'no' or 'auto'")
    return supported


def autocast(precision: str, device: torch.device) -> ContextManager:
    """bf16 autocast when `uses_bf16`, else a no-op context."""
    import torch

    if uses_bf16(precision, device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_accelerator(mixed_precision: str = "auto", device: str = "auto"):
    """accelerate's Accelerator for training: bf16 on a CUDA GPU that has it under "auto".

    `device` auto lets accelerate pick (one GPU per process under torchrun); cpu keeps a GPU
    machine's training on the CPU; cuda:N trains a single process on GPU N.
    """
    import os

    import torch
    from accelerate import Accelerator

    target = resolve_device(device)  # a GPU asked for but absent: a one-line error
    if target.type == "cuda" and target.index is not None:
        torch.cuda.set_device(target)
    if mixed_precision == "auto":
        mixed_precision = "bf16" if target.type == "cuda" and torch.cuda.is_bf16_supported() else "no"
    # accelerate only sets up gloo DDP for CPU processes when told cpu=True; on one process
    # under "auto" cpu stays False so mps/cuda are still picked automatically.
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(mixed_precision=mixed_precision, cpu=target.type == "cpu" and (device == "cpu" or several))
