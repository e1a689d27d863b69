"""Do the latent tokens carry the reasoning? Interventions on the codes, and a latency dial.

A model that answers well after writing latent tokens may not use what they say: they can
act as extra compute slots whose content does not matter (METHOD.md, "Do latents reason, or
only buffer?"). Two probes ask, at inference. Both are `transformers` logits processors
passed to `model.generate`, so they run inside ordinary batched generation with the KV cache:

- **Interventions** (`CodeIntervention`). Inside a `<boLatent> … <eoLatent>` span, when the
  model's greedy choice is a latent code, the scores are masked so that a replacement code
  is chosen instead: the replacement is what is fed back, and generation continues from it.
  Delimiters and text are never replaced. Modes: ``none`` (nothing replaced: the ids of
  plain greedy evaluation), ``random`` (a uniform code, a pure function of (seed, question,
  code position), so batch size and order do not change it), ``shuffle`` (question i's k-th
  code becomes the k-th code question π(i) wrote in an unperturbed run, π a seeded cyclic
  permutation so no question keeps its own codes; a random code where π(i) wrote no k-th
  code), ``constant`` (one fixed code). A model's latent reliance is
  accuracy(none) − accuracy(random).
- **The latency dial** (`LatentChunkDial`). The answer is forced to open with `<boLatent>`,
  then exactly K × latents_per_chunk codes (the model's own greedy choice among the codes
  only), then `<eoLatent>`; after that every latent token is masked and the model goes on
  in text. K = 0 masks latent tokens throughout (text-only CoT from the same model);
  K = ``all`` forces, per question, as many chunks as its reference trace has.

Both are greedy only. A pause-control model (`<pause>` where the codes would be) has no
codes to intervene on; its dial forces pause tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from ..core.errors import ConfigError
from ..data.encoding import encode_example
from ..data.latent_tokens import ChunkLayout, LatentVocab
from ..data.schema import Example
from ..data.tasks import Task
from .generate import generate_ids

INTERVENTIONS = ("none", "random", "shuffle", "constant")
THOUGHT_INTERVENTIONS = ("none", "noise", "zero")  # a Coconut model's continuous thoughts (thoughts.py)
ALL_CHUNKS = "all"  # the dial's "as many chunks as the reference trace has"
Chooser = Callable[[int, int], "int | None"]  # (question index, code position) -> replacement code


# --------------------------------------------------------------------------- settings
def parse_latent_chunks(value: Any) -> int | str | None:
    """`--latent-chunks`: an integer K >= 0, "all", or None (no dial)."""
    if value is None or value == ALL_CHUNKS:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise ConfigError(f"--latent-chunks must be an integer >= 0 or '{ALL_CHUNKS}', got {value!r}")


def check_probe_options(config: Any) -> None:
    """Refuse, in one line, probe options that are wrong whatever the model (an EvalConfig)."""
    parse_latent_chunks(config.latent_chunks)
    if config.intervene is not None and config.intervene not in (*INTERVENTIONS, *THOUGHT_INTERVENTIONS):
        raise ConfigError(f"--intervene: unknown mode {config.intervene!r}; choose one of: "
                          f"{', '.join(INTERVENTIONS)} (latent codes), noise, zero (Coconut's thoughts)")
    if config.noise_scale < 0:
        raise ConfigError(f"--noise-scale must be >= 0, got {config.noise_scale}")
    if config.samples > 0 and (config.intervene is not None or config.latent_chunks is not None):
        raise ConfigError("--intervene and --latent-chunks are greedy only; drop --samples")
    if config.intervene_seed < 0:
        raise ConfigError(f"--intervene-seed must be >= 0, got {config.intervene_seed}")


def check_probe_settings(config: Any, vocab: LatentVocab | None, layout: ChunkLayout | None) -> None:
    """Refuse, in one line, an intervention or dial that cannot run on this model."""
    check_probe_options(config)
    if config.intervene is not None and config.intervene not in INTERVENTIONS:
        raise ConfigError(f"--intervene {config.intervene}: only a Coconut model's continuous thoughts take noise "
                          f"or zero; latent codes take {', '.join(INTERVENTIONS)}")
    if vocab is None:
        raise ConfigError("the model has no latent vocabulary: no latent tokens to intervene on or force")
    if config.intervene is not None and vocab.pause_id is not None:
        raise ConfigError("a pause model writes no latent codes to intervene on (--latent-chunks works)")
    if config.intervene == "constant" and not 0 <= config.constant_code < vocab.codebook_size:
        raise ConfigError(f"--constant-code {config.constant_code} outside the codebook "
                          f"(0..{vocab.codebook_size - 1})")
    if config.latent_chunks not in (None, 0) and layout is None:
        raise ConfigError("the model records no chunk layout (chunk_size, latents_per_chunk in "
                          "token_assorted.json): the dial cannot count chunks")


def check_dial_limit(latent_chunks: int | str | None, max_chunks: int | None) -> None:
    """Refuse a dial beyond what the model was trained to write (unknown limit: not checked)."""
    if latent_chunks is None or max_chunks is None:
        return
    if latent_chunks == ALL_CHUNKS and max_chunks == 0:
        raise ConfigError("--latent-chunks all: the model never saw a latent chunk in training "
                          "(max_latent_chunks 0 in token_assorted.json)")
    if isinstance(latent_chunks, int) and latent_chunks > max_chunks:
        plural = "" if max_chunks == 1 else "s"
        raise ConfigError(f"--latent-chunks {latent_chunks}: the model was trained with at most {max_chunks} "
                          f"latent chunk{plural} per answer (max_latent_chunks in token_assorted.json)")


def model_layout(meta: dict[str, Any], vocab: LatentVocab | None) -> ChunkLayout | None:
    """The chunk layout a trained model directory records (None without one)."""
    size, per = meta.get("chunk_size"), meta.get("latents_per_chunk")
    if vocab is None or not isinstance(size, int) or not isinstance(per, int):
        return None
    return ChunkLayout(size, per, vocab)


# --------------------------------------------------------------------------- replacement codes
def random_code(seed: int, index: int, position: int, codebook_size: int) -> int:
    """A uniform code for question `index`'s code number `position`: the same whatever the batch."""
    return int(np.random.default_rng([seed, index, position]).integers(codebook_size))


def cyclic_permutation(n: int, seed: int) -> list[int]:
    """A seeded permutation made of one cycle: for n >= 2 no question is its own partner."""
    order = np.random.default_rng(seed).permutation(n).tolist()
    partner = [0] * n
    for j, index in enumerate(order):
        partner[index] = order[(j + 1) % n]
    return partner


def span_codes(ids: Sequence[int], vocab: LatentVocab) -> list[int]:
    """The codes written inside latent spans, in order (the k-th is what shuffle hands on)."""
    codes, inside = [], False
    for token in ids:
        if token in (vocab.begin_id, vocab.end_id):
            inside = token == vocab.begin_id
        elif inside and vocab.id_to_code(token) is not None:
            codes.append(vocab.id_to_code(token))
    return codes


def chooser(mode: str, vocab: LatentVocab, seed: int, constant_code: int,
            baseline: Sequence[Sequence[int]] = ()) -> Chooser:
    """The replacement rule of `mode`; `baseline` holds each question's unperturbed codes (shuffle)."""
    size = vocab.codebook_size
    if mode == "none":
        return lambda index, position: None
    if mode == "constant":
        return lambda index, position: constant_code
    if mode == "random":
        return lambda index, position: random_code(seed, index, position, size)
    partner = cyclic_permutation(len(baseline), seed)

    def shuffled(index: int, position: int) -> int:
        source = baseline[partner[index]]
        return source[position] if position < len(source) else random_code(seed, index, position, size)

    return shuffled


# --------------------------------------------------------------------------- logits processors
class _Spans:
    """Each row's state in one batch: inside a latent span or not, and codes written so far."""

    def __init__(self, vocab: LatentVocab, batch: int) -> None:
        self.vocab = vocab
        self.inside = [False] * batch
        self.n_codes = [0] * batch
        self.seen: int | None = None  # columns read so far (the first call sees the prompt only)

    def update(self, input_ids: torch.Tensor) -> None:  # (B, T)
        if self.seen is None:
            self.seen = input_ids.shape[1]
            return
        for row, tokens in enumerate(input_ids[:, self.seen:].tolist()):
            for token in tokens:
                if token in (self.vocab.begin_id, self.vocab.end_id):
                    self.inside[row] = token == self.vocab.begin_id
                elif self.inside[row] and self.vocab.id_to_code(token) is not None:
                    self.n_codes[row] += 1
        self.seen = input_ids.shape[1]


class CodeIntervention(LogitsProcessor):
    """Replace the latent code each row is about to write inside a span by `choose`'s code."""

    def __init__(self, vocab: LatentVocab, rows: Sequence[int], choose: Chooser) -> None:
        self.vocab, self.rows, self.choose = vocab, list(rows), choose
        self.spans = _Spans(vocab, len(rows))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:  # (B, T), (B, V)
        self.spans.update(input_ids)
        out = scores
        for row, token in enumerate(scores.argmax(-1).tolist()):
            code = self.vocab.id_to_code(token)
            if code is None or not self.spans.inside[row]:
                continue
            replacement = self.choose(self.rows[row], self.spans.n_codes[row])
            if replacement is None or replacement == code:
                continue
            if out is scores:
                out = scores.clone()  # untouched rows keep their exact scores
            out[row] = -float("inf")
            out[row, self.vocab.code_to_id(replacement)] = scores[row, token]  # greedy now picks it
        return out


class LatentChunkDial(LogitsProcessor):
    """Force `<boLatent>`, exactly n span tokens per row, `<eoLatent>`, then text only."""

    def __init__(self, vocab: LatentVocab, n_codes: Sequence[int]) -> None:
        self.vocab, self.n_codes = vocab, list(n_codes)
        self.width: int | None = None  # the prompt's width: steps are counted from it
        self.masks: tuple[torch.Tensor, torch.Tensor] | None = None  # (span, latent), built on the first call

    def _masks(self, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        vocab = self.vocab
        codes = torch.arange(vocab.first_code_id, vocab.first_code_id + vocab.codebook_size, device=device)
        span = torch.zeros(size, dtype=torch.bool, device=device)  # (V,) what a forced span may hold
        if vocab.pause_id is not None:
            span[vocab.pause_id] = True  # a pause model's slots hold pause tokens
        else:
            span[codes] = True
        latent = span.clone()  # (V,) every non-text latent id
        latent[codes] = True
        latent[[vocab.begin_id, vocab.end_id]] = True
        return span, latent

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:  # (B, T), (B, V)
        if self.width is None:
            self.width = input_ids.shape[1]
            self.masks = self._masks(scores.shape[-1], scores.device)
        step = input_ids.shape[1] - self.width  # tokens generated so far, the same in every row
        span, latent = self.masks
        out = scores.clone()
        for row, n in enumerate(self.n_codes):
            if n > 0 and step in (0, n + 1):
                forced = self.vocab.begin_id if step == 0 else self.vocab.end_id
                out[row] = -float("inf")
                out[row, forced] = 0.0
            elif n > 0 and step <= n:
                out[row, ~span] = -float("inf")
            else:
                out[row, latent] = -float("inf")
        return out


# --------------------------------------------------------------------------- wiring
def dial_lengths(tokenizer: Any, task: Task, examples: Sequence[Example], latent_chunks: int | str,
                 layout: ChunkLayout | None) -> list[int]:
    """Span tokens the dial forces for each question (K x codes per chunk, or its trace's chunks)."""
    if latent_chunks == 0 or layout is None:
        return [0] * len(examples)
    if latent_chunks == ALL_CHUNKS:
        return [layout.n_chunks(len(encode_example(tokenizer, task, ex).trace_ids)) * layout.latents_per_chunk
                for ex in examples]
    return [int(latent_chunks) * layout.latents_per_chunk] * len(examples)


def probe_processors(model: Any, tokenizer: Any, task: Task, examples: Sequence[Example],
                     prompts: list[list[int]], config: Any, vocab: LatentVocab,
                     layout: ChunkLayout | None) -> Callable[[list[int]], LogitsProcessorList]:
    """A factory of each batch's processors (given its question indices) for `config`'s probes.

    ``shuffle`` first generates every question unperturbed (under the same dial) to learn
    the codes it hands on.
    """
    lengths = None
    if config.latent_chunks is not None:
        lengths = dial_lengths(tokenizer, task, examples, config.latent_chunks, layout)

    def dial_only(rows: list[int]) -> LogitsProcessorList:
        if lengths is None:
            return LogitsProcessorList()
        return LogitsProcessorList([LatentChunkDial(vocab, [lengths[i] for i in rows])])

    if config.intervene is None:
        return dial_only
    baseline: list[list[int]] = []
    if config.intervene == "shuffle":
        plain = generate_ids(model, tokenizer, prompts, config, desc="unperturbed codes",
                             processors=dial_only if lengths is not None else None)
        baseline = [span_codes(ids, vocab) for ids in plain.ids]
    choose = chooser(config.intervene, vocab, config.intervene_seed, config.constant_code, baseline)

    def factory(rows: list[int]) -> LogitsProcessorList:
        # The dial first: it narrows a span's choice to codes, which the intervention then replaces.
        return LogitsProcessorList([*dial_only(rows), CodeIntervention(vocab, rows, choose)])

    return factory
