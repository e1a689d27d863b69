"""The `curriculum` ablation (Curriculum-Replace) as a method with stages.

Stage k = epoch // `curriculum_epochs` replaces the first min(k, cap) chunks of every trace
(`mixing.Curriculum`). As a curriculum it keeps only models of its final stage (the one that
replaces as many chunks as any training trace has, or the cap) and resets the optimizer's
moments at every stage change, as the curricula of Coconut (run.py:312-319) and iCoT
(src/train.py:262-268) reset theirs.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from ..mixing import Curriculum
from .base import Method


class CurriculumReplace(Method):
    """Strategy `curriculum`: stage k = epoch // curriculum_epochs replaces the first min(k, cap) chunks.

    Its final stage is the one that replaces as many chunks as any training trace has (or the cap).
    The optimizer's moments are reset at every stage change, as the curricula of Coconut
    (run.py:312-319) and iCoT (src/train.py:262-268) reset theirs.
    """

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.last = 0  # the final stage

    def plan(self, run: Any, steps_per_epoch: int, total_steps: int) -> None:
        strategy: Curriculum = self.strategy  # type: ignore[assignment]
        layout = run.layout
        most = max((layout.n_chunks(len(e.trace_ids)) for e in run.encoded), default=0) if layout else 0
        self.last = most if strategy.max_chunks is None else min(most, strategy.max_chunks)
        super().plan(run, steps_per_epoch, total_steps)

    def too_short_hint(self) -> str:
        return (f"stage {self.last} replaces every chunk, epoch {self.last * self.config.curriculum_epochs + 1}: "
                f"raise epochs or lower curriculum_epochs / curriculum_max_chunks")

    def stage(self, step: int) -> int:
        return min(self.strategy.stage(self.epoch(step)), self.last)  # type: ignore[attr-defined]

    def final(self, step: int) -> bool:
        return self.stage(step) >= self.last

    def phase(self, step: int) -> Hashable:
        return self.stage(step)
