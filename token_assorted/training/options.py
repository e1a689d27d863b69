"""The optimisation options both stages share, declared once (no torch import: flags are made from them).

A stage's config inherits `OptimizationOptions`, so its keys and flags stay flat (`vqvae.lr`,
`--lr`) and every stage names, defaults and checks them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..core.config import Bound, at_least, check_bounds
from ..core.errors import OptionError


@dataclass
class OptimizationOptions:
    """How the optimizer steps: AdamW, a linear warm-up, gradient clipping."""

    batch_size: int = 32  # examples per optimizer step, all processes together (the effective batch)
    grad_accum: int = 1  # micro-batches per optimizer step and process
    lr: float = 1e-3  # peak learning rate (AdamW)
    weight_decay: float = 0.0  # AdamW weight decay
    warmup: float = 0.05  # learning-rate warm-up: < 1, a fraction of all optimizer steps; >= 1, a number of steps
    max_grad_norm: float = 1.0  # gradient-norm clipping (0: none)
    seed: int = 0  # random seed (initial weights, data order)
    log_every: int = 10  # log the training figures every N optimizer steps

    LIMITS: ClassVar[dict[str, Bound]] = {
        "batch_size": at_least(1), "grad_accum": at_least(1), "lr": Bound(0, 1, low_open=True),
        "weight_decay": at_least(0), "warmup": at_least(0), "max_grad_norm": at_least(0), "seed": at_least(0),
        "log_every": at_least(1)}

    def __post_init__(self) -> None:
        check_bounds(self, OptimizationOptions.LIMITS)
        if self.batch_size % self.grad_accum:
            raise OptionError("batch_size", f"{self.batch_size} is not divisible by grad_accum={self.grad_accum}")

    def warmup_steps(self, total_steps: int) -> int:
        """The warm-up in optimizer steps, of a run of `total_steps`."""
        return int(self.warmup * total_steps) if self.warmup < 1 else int(self.warmup)
