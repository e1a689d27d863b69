"""The options of generating answers: `GenerationConfig` (what training's validation and an evaluation
share) and `EvalConfig` (`token-assorted eval`, a preset's `eval:` section, the probes).

A module of its own, without torch: the commands build their flags from these fields. Each option
is declared once: `EvalConfig` extends `GenerationConfig`, and `TrainConfig.validation` holds one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..core.config import Bound, above, at_least, within

MAX_NEW_TOKENS = 32768  # a generation budget beyond any model here (and checked against the model's positions)


@dataclass
class GenerationConfig:
    """How many prompts at once, how long each answer may be, how many examples."""

    batch_size: int = 64  # prompts generated together (left padded)
    max_new_tokens: int | None = None  # generation budget; None: the longest reference trace + solution, plus 16
    limit: int | None = None  # only the first `limit` examples

    LIMITS: ClassVar[dict[str, Bound]] = {"batch_size": at_least(1), "max_new_tokens": within(1, MAX_NEW_TOKENS),
                                          "limit": at_least(1)}


@dataclass
class EvalConfig(GenerationConfig):
    """How to generate and score (`token-assorted eval`'s options, a preset's `eval:` section)."""

    samples: int = 0  # >0: also draw this many top-k samples per question (1-Feasible-N); 0: greedy only
    top_k: int = 10  # top-k of the sampled generations
    temperature: float = 1.0  # of the sampled generations
    seed: int = 0  # sampling seed
    progress: bool = True  # show a tqdm bar over batches
    mixed_precision: str = "auto"  # auto: bf16 autocast on CUDA (as in training), fp32 on CPU; no; bf16
    intervene: str | None = None  # change each code as written: random, shuffle, constant; Coconut: noise, zero
    intervene_seed: int = 0  # of the random codes, the shuffle's permutation and the noise directions
    constant_code: int = 0  # the code every written code becomes under intervene="constant"
    latent_chunks: int | str | None = None  # the latency dial: K chunks of codes, then text (all: the reference's)
    noise_scale: float = 4.0  # intervene="noise": the noise's norm, in multiples of the thought's own norm

    LIMITS: ClassVar[dict[str, Bound]] = {
        **GenerationConfig.LIMITS, "samples": within(0, 1000), "top_k": at_least(1), "temperature": above(0),
        "seed": at_least(0), "intervene_seed": at_least(0), "constant_code": at_least(0), "noise_scale": at_least(0)}
