"""Evaluation: batched generation with the KV cache, parsing, scoring and timing.

A trained model is a plain causal LM, so evaluation is `model.generate` on the prompt
ids the model was trained on (`encoding.encode_prompt`), left padded, greedy by default.
The generated ids are counted twice — latent tokens (codes and the two delimiters) and
text tokens — and the text tokens alone are decoded and handed to `Task.verify`, so a
latent token can never leak into a parsed answer.

For the maze's 1-Feasible-10 metric, `samples=N` adds N top-k samples per question: the
question is solved when any sample is feasible (greedy figures are reported beside it).

`intervene` and `latent_chunks` probe whether the latent tokens carry the reasoning: the
codes the model writes are replaced as they are written, or the answer is forced to open
with exactly K chunks of codes (`interventions.py`; greedy only).

A Coconut model answers through its own loop (its thoughts are vectors, not tokens):
`evaluate_loaded` picks it from the model's `token_assorted.json` (`generation_of`),
the loop applies the thought interventions and the thought count itself (`thoughts.py`),
and everything after generation (parsing, scoring, counting, timing) is shared.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..core.config import check_limits
from ..core.devices import check_precision
from ..core.errors import ConfigError
from ..data.encoding import encode_example, encode_prompt
from ..data.latent_tokens import ChunkLayout, LatentVocab
from ..data.schema import Example
from ..data.tasks import Task, Verdict
from .config import EvalConfig
from .generate import Generated, check_context, generate_ids
from .interventions import (
    check_probe_settings,
    probe_processors,
)


@dataclass
class Prediction:
    """One question's greedy output (and samples when asked for)."""

    index: int
    question: str
    answer: str  # the reference answer
    generated: str  # decoded with latent tokens kept
    generated_ids: list[int]  # the ids themselves (explain reads them: text need not re-tokenize the same)
    parsed: str | None  # what the verifier parsed from the text tokens
    correct: bool
    n_tokens: int  # generated tokens up to and including eos
    n_latent_tokens: int  # of which latent tokens (codes and delimiters)
    used_latent: bool  # whether the output opened a latent span
    details: dict[str, Any] = field(default_factory=dict)  # task-specific verdict details
    samples_solved: bool | None = None  # any of the samples solved it (samples > 0 only)


@dataclass
class EvalResult:
    """Aggregate figures of one evaluation run plus every prediction."""

    task: str
    n: int
    accuracy: float  # greedy exact-match / verifier accuracy
    avg_generated_tokens: float
    avg_latent_tokens: float
    avg_text_tokens: float
    latent_span_share: float  # share of answers whose output contains a latent span
    seconds_per_example: float  # greedy generation wall time / n
    tokens_per_second: float  # greedy generated tokens / generation wall time
    sampled_accuracy: float | None = None  # any-of-N solved (1-Feasible-N) when samples > 0
    details: dict[str, float] = field(default_factory=dict)  # means of boolean verdict details
    answer_rules: dict[str, int] = field(default_factory=dict)  # how many answers each rule checked
    predictions: list[Prediction] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The figures without the predictions (what results files store)."""
        data = asdict(self)
        data.pop("predictions")
        return data


# --------------------------------------------------------------------------- decoding
def text_ids(ids: list[int], tokenizer: PreTrainedTokenizerBase, latent_vocab: LatentVocab | None) -> list[int]:
    """The ids the verifier may read: latent tokens and special tokens removed."""
    special = set(tokenizer.all_special_ids)
    return [t for t in ids if t not in special and not (latent_vocab and latent_vocab.is_latent(t))]


def decode_for_display(ids: list[int], tokenizer: PreTrainedTokenizerBase) -> str:
    """The generated text with latent tokens visible (pad and eos dropped)."""
    drop = {tokenizer.pad_token_id, tokenizer.eos_token_id}
    return tokenizer.decode([t for t in ids if t not in drop], skip_special_tokens=False)


def count_latent(ids: list[int], latent_vocab: LatentVocab | None) -> int:
    return 0 if latent_vocab is None else sum(latent_vocab.is_latent(t) for t in ids)


def default_max_new_tokens(tokenizer: PreTrainedTokenizerBase, task: Task, examples: list[Example]) -> int:
    """A generation budget: the longest reference trace and solution of `examples`, plus 16 tokens
    (a model that rambles past the longest reference is wrong anyway)."""
    longest = max(len(e.trace_ids) + len(e.solution_ids) for e in (encode_example(tokenizer, task, ex)
                                                                  for ex in examples))
    return longest + 16


# --------------------------------------------------------------------------- scoring
def _sample_solved(verdict: Verdict) -> bool:
    # 1-Feasible-N counts a feasible plan as solved (the maze reports it in details).
    return bool(verdict.details.get("feasible", verdict.correct))


def _predict(index: int, example: Example, ids: list[int], task: Task, tokenizer: PreTrainedTokenizerBase,
             latent_vocab: LatentVocab | None) -> Prediction:
    verdict = task.verify(example, tokenizer.decode(text_ids(ids, tokenizer, latent_vocab)))
    used = latent_vocab is not None and latent_vocab.begin_id in ids
    return Prediction(index=index, question=example.question, answer=example.answer,
                      generated=decode_for_display(ids, tokenizer), generated_ids=list(ids), parsed=verdict.predicted,
                      correct=verdict.correct, n_tokens=len(ids),
                      n_latent_tokens=count_latent(ids, latent_vocab), used_latent=used,
                      details=dict(verdict.details))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _detail_means(predictions: list[Prediction]) -> dict[str, float]:
    keys = sorted({k for p in predictions for k, v in p.details.items() if isinstance(v, bool)})
    return {f"greedy_{k}": _mean([float(bool(p.details.get(k, False))) for p in predictions]) for k in keys}


def evaluate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task, examples: list[Example],
             config: EvalConfig | None = None, latent_vocab: LatentVocab | None = None,
             chat_template: bool = False, layout: ChunkLayout | None = None,
             generate: Callable[..., Generated] | None = None) -> EvalResult:
    """Generate for every example with an in-memory model and score the outputs.

    `layout` (the model's chunk size and codes per chunk) is needed by the latency dial only.
    `generate` replaces `generate_ids` (same signature): a Coconut model's loop (thoughts.py),
    which applies the probes itself.
    """
    config = config or EvalConfig()
    check_limits(asdict(config), EvalConfig.LIMITS, "eval")
    check_precision(config.mixed_precision)
    probing = generate is None and (config.intervene is not None or config.latent_chunks is not None)
    if probing:
        check_probe_settings(config, latent_vocab, layout)
    examples = examples[: config.limit] if config.limit is not None else examples
    if not examples:
        raise ConfigError("nothing to evaluate: no examples")
    if config.max_new_tokens is None:
        budget = default_max_new_tokens(tokenizer, task, examples[:500])
        built = getattr(model.config, "max_position_embeddings", None)  # one very long reference must not
        if isinstance(built, int) and built > 0:  # give every question a budget beyond the model's positions
            budget = min(budget, built)
        config = replace(config, max_new_tokens=budget)
    prompts = [encode_prompt(tokenizer, task, ex, chat_template) for ex in examples]
    check_context(model, prompts, config.max_new_tokens)
    if generate is not None:
        greedy = generate(model, tokenizer, prompts, config, desc=f"eval {task.name}")
    else:
        processors = probe_processors(model, tokenizer, task, examples, prompts, config, latent_vocab,
                                      layout) if probing else None
        greedy = generate_ids(model, tokenizer, prompts, config, desc=f"eval {task.name}", processors=processors)
    predictions = [_predict(i, ex, ids, task, tokenizer, latent_vocab)
                   for i, (ex, ids) in enumerate(zip(examples, greedy.ids))]
    sampled_accuracy = _score_samples(model, tokenizer, task, examples, prompts, config, latent_vocab,
                                      predictions, generate or generate_ids) if config.samples > 0 else None
    total = sum(p.n_tokens for p in predictions)
    latent = sum(p.n_latent_tokens for p in predictions)
    n = len(predictions)
    return EvalResult(
        task=task.name, n=n, accuracy=_mean([float(p.correct) for p in predictions]),
        avg_generated_tokens=total / n, avg_latent_tokens=latent / n, avg_text_tokens=(total - latent) / n,
        latent_span_share=_mean([float(p.used_latent) for p in predictions]),
        seconds_per_example=greedy.seconds / n,
        tokens_per_second=total / greedy.seconds if greedy.seconds > 0 else math.inf,
        sampled_accuracy=sampled_accuracy, details=_detail_means(predictions), predictions=predictions,
        answer_rules=answer_rules(task, examples))


def answer_rules(task: Task, examples: list[Example]) -> dict[str, int]:
    """How many of `examples` each of the task's answer rules checks (math: numeric / math-verify)."""
    counts: dict[str, int] = {}
    for example in examples:
        rule = task.answer_rule_of(example)
        counts[rule] = counts.get(rule, 0) + 1
    return dict(sorted(counts.items()))


def _score_samples(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task,
                   examples: list[Example], prompts: list[list[int]], config: EvalConfig,
                   latent_vocab: LatentVocab | None, predictions: list[Prediction],
                   generate: Callable[..., Generated] = generate_ids) -> float:
    """Any-of-N accuracy: each prompt repeated N times, sampled with top-k."""
    torch.manual_seed(config.seed)
    repeated = [p for p in prompts for _ in range(config.samples)]
    sampled = generate(model, tokenizer, repeated, config, sample=True, desc=f"sample x{config.samples}")
    for i, (example, prediction) in enumerate(zip(examples, predictions)):
        outputs = sampled.ids[i * config.samples: (i + 1) * config.samples]
        prediction.samples_solved = any(
            _sample_solved(task.verify(example, tokenizer.decode(text_ids(ids, tokenizer, latent_vocab))))
            for ids in outputs)
    return _mean([float(bool(p.samples_solved)) for p in predictions])
