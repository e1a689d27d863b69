"""The pipeline's probes of each latent model: do its latent tokens carry the reasoning?

For every method whose model writes latent codes (`codes` in the method registry, lm/methods/), `token-assorted
run` scores the test split again with the codes replaced as they are written (`random`,
`shuffle`, `constant`; `none` is the plain evaluation, reused) and with the latency dial at
K = 0 … max_latent_chunks chunks (plus `all` where the test traces' own chunk counts differ
from that maximum; `dial_max` caps K). `interventions.py` does the work; `run_probes` runs every
probe of one model, as the pipeline's cached stage `OUT/probes/<model>/` (`stages.probe_stage`),
which holds every probe's results and predictions and `probes.json`, the summary that
results.json and report.md read:

    {"interventions": {"none": acc, "random": acc, ...}, "latent_reliance": none - random,
     "dial": [{"k": 0, "accuracy", "avg_generated_tokens", "avg_latent_tokens"}, ...]}

A Coconut model writes no codes: its continuous thoughts are probed instead (`thoughts.py`),
with `noise` (a random direction of `noise_scale` × each thought's norm added) and `zero`;
its latent reliance is none − noise, and its dial gives it K = 0 … S steps' worth of thoughts.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..generation.interventions import ALL_CHUNKS, INTERVENTIONS, THOUGHT_INTERVENTIONS

SUMMARY = "probes.json"
DIAL_FIELDS = ("accuracy", "avg_generated_tokens", "avg_latent_tokens")


@dataclass
class ProbeSettings:
    """What `run` asks of every latent model (the preset's `probes` section)."""

    interventions: list[str] = field(default_factory=lambda: ["random", "shuffle", "constant"])
    seed: int = 0  # of the random codes and of the shuffle's permutation
    constant_code: int = 0  # the code of the constant intervention
    dial: bool = True  # the latency dial for K = 0 … max_latent_chunks (and all)
    dial_max: int | None = None  # highest K of the dial (None: max_latent_chunks; long math traces need a cap)
    thought_interventions: list[str] = field(default_factory=lambda: ["noise", "zero"])  # a Coconut model's
    noise_scale: float = 4.0  # the noise's norm in multiples of each thought's norm (Cui et al. 2026: 4)


def check_settings(settings: ProbeSettings, codebook_size: int, source: str = "preset") -> None:
    """Refuse, before any stage runs, probes that would fail after training."""
    unknown = [mode for mode in settings.interventions if mode not in INTERVENTIONS]
    if unknown:
        raise ConfigError(f"{source}: probes.interventions: unknown mode {unknown[0]!r}; choose from "
                          f"{', '.join(INTERVENTIONS)}")
    unknown = [mode for mode in settings.thought_interventions if mode not in THOUGHT_INTERVENTIONS]
    if unknown or settings.noise_scale < 0:
        raise ConfigError(f"{source}: probes.thought_interventions must be among {', '.join(THOUGHT_INTERVENTIONS)} "
                          f"and probes.noise_scale >= 0")
    if settings.seed < 0 or (settings.dial_max is not None and settings.dial_max < 0):
        raise ConfigError(f"{source}: probes.seed and probes.dial_max must be >= 0")
    if not 0 <= settings.constant_code < codebook_size:
        raise ConfigError(f"{source}: probes.constant_code {settings.constant_code} outside the codebook "
                          f"(0..{codebook_size - 1})")


# --------------------------------------------------------------------------- one model's probes
def run_probes(model_dir: Path, test: list[Any], task: Any, base: Any, plain_accuracy: float,
               settings: ProbeSettings, out: Path) -> dict[str, Any]:
    """Every probe of one model on `test` (`base`: the plain evaluation's EvalConfig); write `out`."""
    from ..generation.interventions import dial_lengths, model_layout
    from ..lm.model_dir import load_model_dir, recorded_max_chunks
    from .evaluate import evaluate_loaded, save_result

    loaded = load_model_dir(model_dir)  # once for every probe
    thoughts = loaded.meta.get("coconut")  # a Coconut model: its continuous thoughts are probed, not codes
    summary: dict[str, Any] = {"interventions": {"none": plain_accuracy}}
    for mode in settings.thought_interventions if thoughts else settings.interventions:
        if mode == "none":
            continue  # the plain evaluation, already done
        config = dataclasses.replace(base, intervene=mode, intervene_seed=settings.seed,
                                     constant_code=settings.constant_code, noise_scale=settings.noise_scale)
        result = evaluate_loaded(loaded, task, test, config)
        save_result(result, out / f"intervene-{mode}.json", {"model": str(model_dir), "intervene": mode})
        summary["interventions"][mode] = result.accuracy
    reliance = "noise" if thoughts else "random"
    if reliance in summary["interventions"]:
        summary["latent_reliance"] = plain_accuracy - summary["interventions"][reliance]
    if settings.dial and thoughts:
        # K steps' worth of thoughts, K = 0 (straight from <bot><eot> to text) … the trained stages
        top = thoughts["stages"] if settings.dial_max is None else min(thoughts["stages"], settings.dial_max)
        summary["dial"] = []
        for k in range(top + 1):
            result = evaluate_loaded(loaded, task, test, dataclasses.replace(base, latent_chunks=k))
            save_result(result, out / f"dial-{k}.json", {"model": str(model_dir), "latent_chunks": k})
            summary["dial"].append({"k": k, **{name: getattr(result, name) for name in DIAL_FIELDS}})
    elif settings.dial:
        most = recorded_max_chunks(loaded)
        layout = model_layout(loaded.meta, loaded.latent_vocab)
        top = most if settings.dial_max is None else min(most, settings.dial_max)
        steps: list[int | str] = list(range(top + 1))
        per = layout.latents_per_chunk if layout else 1
        lengths = dial_lengths(loaded.tokenizer, task, test, ALL_CHUNKS, layout)
        if most > 0 and settings.dial_max is None and any(n != most * per for n in lengths):
            steps.append(ALL_CHUNKS)  # the test traces' own lengths are another point of the curve
        summary["dial"] = []
        for k in steps:
            result = evaluate_loaded(loaded, task, test, dataclasses.replace(base, latent_chunks=k))
            save_result(result, out / f"dial-{k}.json", {"model": str(model_dir), "latent_chunks": k})
            summary["dial"].append({"k": k, **{name: getattr(result, name) for name in DIAL_FIELDS}})
    return summary


# --------------------------------------------------------------------------- over seeds
def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(float(v) for v in values)


def summarize(per_seed: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One method's probe figures: means over its seeds (the results.json fields)."""
    if not per_seed:
        return {}
    out: dict[str, Any] = {}
    modes = [m for m in per_seed[0].get("interventions", {}) if all(m in s["interventions"] for s in per_seed)]
    if modes:
        out["interventions"] = {m: _mean([s["interventions"][m] for s in per_seed]) for m in modes}
    if all("latent_reliance" in s for s in per_seed):
        out["latent_reliance"] = _mean([s["latent_reliance"] for s in per_seed])
    if all("dial" in s for s in per_seed):
        out["dial"] = []
        for point in per_seed[0]["dial"]:
            same = [p for s in per_seed for p in s["dial"] if p["k"] == point["k"]]
            out["dial"].append({"k": point["k"], **{f: _mean([p[f] for p in same]) for f in DIAL_FIELDS}})
    return out
