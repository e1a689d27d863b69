"""Stage-2 methods: the registry of names and `method_for(config)`.

`base.py` is every chunk strategy of `mixing.py` (Token Assorted, its baselines, ablations and
the pause control); `coconut.py` and `icot.py` are the field's other latent-reasoning methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...core.errors import ConfigError
from ..mixing import STRATEGY_NAMES

if TYPE_CHECKING:
    from .base import Method


PEER_METHODS = ("coconut", "icot")  # the other latent-reasoning methods, beside the chunk strategies
METHOD_NAMES = (*STRATEGY_NAMES, *PEER_METHODS)


def method_for(config: Any) -> Method:
    """The method of a TrainConfig's `strategy`: a chunk strategy of mixing.py, Coconut or iCoT (each in its
    own module, subclassing base.Method)."""
    from .base import Method
    from .coconut import Coconut
    from .icot import StepwiseInternalization

    if config.strategy not in METHOD_NAMES:
        raise ConfigError(f"unknown strategy {config.strategy!r}; choose one of: {', '.join(METHOD_NAMES)}")
    return {"coconut": Coconut, "icot": StepwiseInternalization}.get(config.strategy, Method)(config)
