"""Evaluating a saved model folder: load it, answer the way its method answers, save the results.

`evaluate_dir` / `evaluate_loaded` read a stage-2 model folder (`lm/model_dir.py`) and
score it with `generation/scoring.py`'s `evaluate`; a Coconut model answers through its own
loop (`generation/thoughts.py`, picked by `generation_of` from its `token_assorted.json`).
`save_result` writes RESULTS.json and RESULTS.predictions.jsonl beside it; `fit_to_model` drops (and
counts) the examples longer than the model was trained to take.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..core.io import atomic_write_json, atomic_write_jsonl
from ..data.encoding import encode_example
from ..data.latent_tokens import LatentVocab
from ..data.schema import Example
from ..data.tasks import Task
from ..generation.config import EvalConfig
from ..generation.generate import Generated, position_limit
from ..generation.interventions import check_dial_limit, model_layout, parse_latent_chunks
from ..generation.scoring import EvalResult, evaluate
from ..generation.thoughts import saved_generation
from ..lm.model_dir import LoadedModel, load_model_dir, recorded_max_chunks, resolve_task


# --------------------------------------------------------------------------- saved models
def evaluate_loaded(loaded: LoadedModel, task: Task, examples: list[Example],
                    config: EvalConfig | None = None) -> EvalResult:
    """Evaluate a loaded model dir the way its method answers (a Coconut model: its own loop); a
    latency dial beyond the model's trained maximum is refused."""
    config = config or EvalConfig()
    generate, vocab = generation_of(loaded.meta, loaded.latent_vocab, config)
    if generate is not None:
        return evaluate(loaded.model, loaded.tokenizer, task, examples, config, vocab, loaded.chat_template,
                        generate=generate)
    if config.latent_chunks is not None:
        check_dial_limit(parse_latent_chunks(config.latent_chunks), recorded_max_chunks(loaded))
    return evaluate(loaded.model, loaded.tokenizer, task, examples, config, loaded.latent_vocab,
                    loaded.chat_template, model_layout(loaded.meta, loaded.latent_vocab))


def generation_of(meta: dict[str, Any], vocab: LatentVocab | None,
                  config: EvalConfig | None = None) -> tuple[Callable[..., Generated] | None, LatentVocab | None]:
    """How a saved model answers, from its `token_assorted.json`: a Coconut model's own loop and
    thought tokens, or `model.generate` (None) and its latent vocabulary."""
    if isinstance(meta.get("coconut"), dict):
        return saved_generation(meta["coconut"], config)
    if isinstance(meta.get("coconut_pause"), dict):  # Coconut's pause-as-thought control: forced <pause> tokens
        return saved_generation(meta["coconut_pause"], config, pause=True)
    return None, vocab


def evaluate_dir(model_dir: str | Path, examples: list[Example], config: EvalConfig | None = None,
                 task: str | Task | None = None) -> EvalResult:
    """Evaluate a trained model directory (reads its token_assorted.json)."""
    loaded = load_model_dir(model_dir)  # a GPU when there is one
    return evaluate_loaded(loaded, resolve_task(loaded, task), examples, config)


def predictions_path(results_path: str | Path) -> Path:
    """RESULTS.json -> RESULTS.predictions.jsonl, beside it."""
    path = Path(results_path)
    return path.with_name(f"{path.stem}.predictions.jsonl")


def save_result(result: EvalResult, results_path: str | Path, extra: dict[str, Any] | None = None,
                predictions: bool = True) -> Path | None:
    """Write the summary JSON and (unless told not to) the predictions JSONL beside it (both atomic)."""
    results_path = Path(results_path)
    atomic_write_json(results_path, {**result.summary(), **(extra or {})})
    if not predictions:
        return None
    preds = predictions_path(results_path)
    atomic_write_jsonl(preds, (asdict(p) for p in result.predictions))
    return preds


def fit_to_model(loaded: LoadedModel, task: Task, examples: list[Example]) -> tuple[list[Example], int, int | None]:
    """The examples a model can take, as training took them: question, trace and solution within the
    `max_length` it was trained with (and its position table); the rest are dropped and counted, so one
    5,000-step reference neither sets the generation budget nor reaches the model."""
    settings = loaded.meta.get("config")
    limit = settings.get("max_length") if isinstance(settings, dict) else None
    positions = position_limit(loaded.model)
    if positions is not None:
        limit = min(limit, positions) if isinstance(limit, int) else positions
    if not isinstance(limit, int) or limit < 1:
        return examples, 0, None
    encoded = (encode_example(loaded.tokenizer, task, ex, loaded.chat_template) for ex in examples)
    kept = [ex for ex, enc in zip(examples, encoded)
            if len(enc.prompt_ids) + len(enc.trace_ids) + len(enc.solution_ids) <= limit]
    if not kept and examples:
        raise ConfigError(f"every example is longer than the model takes ({limit} tokens: the max_length it was "
                          f"trained with)")
    return kept, len(examples) - len(kept), limit
