"""Stage-2 methods: the one registry of their names, and `method_for(config)`.

Every method a run can train is one row of `METHODS`: its name (the `strategy` option), its
name in reports, its kind, whether its model writes VQ-VAE codes or needs their chunk layout,
its chunk strategy (`mixing.py`) and the `Method` class that trains it (`base.py`: every chunk
strategy; `curriculum.py`: the ablation with stages; `coconut.py`, `icot.py`: the field's other
latent-reasoning methods; `coconut_pause.py`: Coconut's own pause control). Everything that
lists methods (the CLI's choices, a preset's checks, the report's names, which models are
probed) reads this table. The module imports no torch: the CLI and presets read it cheaply.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from ...core.errors import ConfigError

KINDS = ("baseline", "method", "ablation", "control", "peer")


@dataclass(frozen=True)
class MethodInfo:
    """One row of the registry."""

    display: str  # its name in reports
    kind: str  # baseline, method (Token Assorted), ablation (the paper's), control, peer (another method)
    codes: bool  # its model writes VQ-VAE codes: trained on a codes file, probed by replacing them
    layout: bool  # its sequences need the VQ-VAE's chunk layout (L, codes per chunk)
    strategy: str  # the chunk strategy of mixing.py its sequences follow
    method: str = "base:Method"  # "module:Class" of its Method in lm/methods/


METHODS: dict[str, MethodInfo] = {
    "sol-only": MethodInfo("Sol-Only", "baseline", codes=False, layout=False, strategy="sol-only"),
    "cot": MethodInfo("CoT", "baseline", codes=False, layout=False, strategy="cot"),
    "token-assorted": MethodInfo("Token Assorted", "method", codes=True, layout=True, strategy="token-assorted"),
    "all-replace": MethodInfo("All-Replace", "ablation", codes=True, layout=True, strategy="all-replace"),
    "curriculum": MethodInfo("Curriculum-Replace", "ablation", codes=True, layout=True, strategy="curriculum",
                             method="curriculum:CurriculumReplace"),
    "poisson": MethodInfo("Poisson-Replace", "ablation", codes=True, layout=True, strategy="poisson"),
    # TA-Pause: Token Assorted's sequences (its m draws) with one content-free <pause> in place of each code.
    "pause": MethodInfo("TA-Pause", "control", codes=False, layout=True, strategy="pause"),
    "coconut": MethodInfo("Coconut", "peer", codes=False, layout=False, strategy="cot", method="coconut:Coconut"),
    "icot": MethodInfo("iCoT", "peer", codes=False, layout=False, strategy="cot",
                       method="icot:StepwiseInternalization"),
    # Coconut's "pause as thought": its curriculum with inserted <pause> tokens in place of the thoughts.
    "coconut-pause": MethodInfo("Coconut-Pause", "peer", codes=False, layout=False, strategy="cot",
                                method="coconut_pause:CoconutPause"),
}
METHOD_NAMES = tuple(METHODS)


def names_of(kind: str) -> tuple[str, ...]:
    """The methods of one kind, in the registry's order."""
    return tuple(name for name, info in METHODS.items() if info.kind == kind)


def info(name: str) -> MethodInfo:
    """The registry's row of `name`; an unknown name is a ConfigError listing the known ones."""
    if name not in METHODS:
        raise ConfigError(f"unknown strategy {name!r}; choose one of: {', '.join(METHOD_NAMES)}")
    return METHODS[name]


def display_name(name: str) -> str:
    return METHODS[name].display if name in METHODS else name


def method_for(config: Any) -> Any:
    """The `Method` that trains a TrainConfig's `strategy` (imported when asked for: methods load torch)."""
    module, cls = info(config.strategy).method.split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)(config)
