"""Stage 2 sequences: prompt ⊕ trace-with-latent-chunks ⊕ solution, one strategy per class.

A trace C = (c_1 … c_t) is cut into chunks of L text tokens (the VQ-VAE's chunk size);
chunk j has `latents_per_chunk` = L / r codes z. Replacing a run of chunks puts
`<boLatent> z … z <eoLatent>` where their text was. Every strategy reduces to one core
function, `replace_chunks`, given which chunks to replace; the paper's method and its
ablations only differ in how they pick that chunk mask:

- ``token-assorted`` (the method): the first m trace tokens, m drawn afresh each time
  the example is seen. m is rounded DOWN to whole chunks (m = 72, L = 16 -> 4 chunks);
  an m at or beyond the trace length replaces the whole trace (the trailing partial chunk
  too). Default draw for synthetic tasks: a number of whole chunks uniform over
  {0, 1, …, n_chunks}, so every split point is equally likely whatever the trace length;
  pass ``m_values`` (e.g. the paper's math set {0, 72, 128, 160, 192, 224, 256}) to
  draw m uniformly from that set instead.
- ``cot``: m = 0 always (plain text). ``sol-only``: no trace at all.
- ``all-replace``: the whole trace latent.
- ``curriculum``: at epoch e the stage is k = e // epochs_per_stage and the first
  min(k, cap) chunks are replaced (stage 0 is plain CoT, as in Coconut/iCoT).
- ``poisson``: each chunk is replaced independently with probability p (0.5); runs of
  consecutive replaced chunks share ONE latent span, so the sequence never shows
  `<eoLatent><boLatent>` back to back.
- ``pause`` (a control, not in the paper): Token Assorted exactly — the same chunk masks
  from the same m draws, the same delimiters — except that every latent code is replaced
  by one `<pause>` token. A pause sequence has Token Assorted's length and shape, with
  compute slots that carry no content; it needs the chunk layout but no codes.

Labels are -100 on the prompt and cover everything after it: latent tokens, delimiters,
text trace and solution (the model learns when to open and close a latent span).

Random draws come from a NumPy generator seeded with (seed, epoch, example index): the
same triple always gives the same sequence (reproducible, exactly resumable, identical
on every process), and a new epoch redraws.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..core.errors import CheckpointError, ConfigError
from ..data.encoding import EncodedExample
from ..data.latent_tokens import ChunkLayout
from .methods import METHODS

IGNORE_INDEX = -100  # label of positions the loss skips (the prompt, padding)


@dataclass(frozen=True)
class MixedSequence:
    """One training sequence and its loss labels (same length)."""

    input_ids: list[int]
    labels: list[int]
    n_replaced: int  # chunks replaced by latent codes


def replace_chunks(trace_ids: Sequence[int], codes: Sequence[int] | None, mask: Sequence[bool],
                   layout: ChunkLayout, filler: int | None = None) -> list[int]:
    """The trace with every run of chunks marked in `mask` replaced by one latent span.

    `codes` holds `latents_per_chunk` codes per chunk, in chunk order; `mask[j]` says
    whether chunk j is replaced. A prefix mask [True]*n + [False]*… is the method's
    "replace the first n chunks". With `filler` (the pause token's id) every code position
    holds that id instead, and `codes` is not read.
    """
    L, per = layout.chunk_size, layout.latents_per_chunk
    out: list[int] = []
    in_span = False
    for j in range(layout.n_chunks(len(trace_ids))):
        if j < len(mask) and mask[j]:
            if not in_span:
                out.append(layout.vocab.begin_id)
                in_span = True
            if filler is not None:
                out.extend([filler] * per)
            else:
                out.extend(layout.vocab.code_to_id(z) for z in codes[j * per:(j + 1) * per])
            continue
        if in_span:
            out.append(layout.vocab.end_id)
            in_span = False
        out.extend(trace_ids[j * L:(j + 1) * L])
    if in_span:
        out.append(layout.vocab.end_id)
    return out


def prefix_mask(n_chunks: int, n_replaced: int) -> list[bool]:
    """Replace the first `n_replaced` of `n_chunks` chunks."""
    n_replaced = max(0, min(n_replaced, n_chunks))
    return [True] * n_replaced + [False] * (n_chunks - n_replaced)


def chunks_for_m(m: int, trace_length: int, chunk_size: int) -> int:
    """Whole chunks covered by the first m trace tokens (rounded down; m >= t -> all)."""
    if m >= trace_length:
        return -(-trace_length // chunk_size)
    return m // chunk_size


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one (seed, epoch, example) draw: reproducible and redrawn per epoch."""
    return np.random.default_rng([seed, epoch, index])


class Strategy(ABC):
    """How the chunks to replace are chosen; `None` drops the trace (sol-only)."""

    name: str = ""
    writes_pause: bool = False  # the pause control: `<pause>` where the codes would be

    @property
    def needs_codes(self) -> bool:
        """Whether its sequences hold VQ-VAE codes (the registry says, lm/methods/__init__.py)."""
        return METHODS[self.name].codes

    @abstractmethod
    def chunk_mask(self, n_chunks: int, trace_length: int, chunk_size: int, epoch: int,
                   rng: np.random.Generator) -> list[bool] | None:
        """Which of the trace's chunks become latent this time the example is seen."""

    @abstractmethod
    def most_replaced(self, n_chunks: int, trace_length: int, chunk_size: int, epochs: int) -> int:
        """The most chunks of this trace any draw can replace in `epochs` epochs (the dial's limit)."""


class TokenAssorted(Strategy):
    """The method: the first m tokens (whole chunks) latent, m redrawn every time."""

    name = "token-assorted"

    def __init__(self, m_values: Sequence[int] | None = None) -> None:
        if m_values is not None and (not m_values or any(m < 0 for m in m_values)):
            raise ConfigError(f"m_values must be a non-empty list of non-negative ints, got {m_values!r}")
        self.m_values = None if m_values is None else [int(m) for m in m_values]

    def chunk_mask(self, n_chunks, trace_length, chunk_size, epoch, rng):
        if self.m_values is None:
            n = int(rng.integers(0, n_chunks + 1))  # uniform over whole-chunk split points
        else:
            m = self.m_values[int(rng.integers(0, len(self.m_values)))]
            n = chunks_for_m(m, trace_length, chunk_size)
        return prefix_mask(n_chunks, n)

    def most_replaced(self, n_chunks, trace_length, chunk_size, epochs):
        if self.m_values is None:
            return n_chunks
        return min(n_chunks, max(chunks_for_m(m, trace_length, chunk_size) for m in self.m_values))


class Pause(TokenAssorted):
    """Control: Token Assorted's masks and delimiters, one `<pause>` token in place of each code."""

    name, writes_pause = "pause", True


class CoT(Strategy):
    """Baseline: the whole trace as text."""

    name = "cot"

    def chunk_mask(self, n_chunks, trace_length, chunk_size, epoch, rng):
        return prefix_mask(n_chunks, 0)

    def most_replaced(self, n_chunks, trace_length, chunk_size, epochs):
        return 0


class SolutionOnly(Strategy):
    """Baseline: prompt then solution, no trace."""

    name = "sol-only"

    def chunk_mask(self, n_chunks, trace_length, chunk_size, epoch, rng):
        return None

    def most_replaced(self, n_chunks, trace_length, chunk_size, epochs):
        return 0


class AllReplace(Strategy):
    """Ablation: every chunk of the trace latent."""

    name = "all-replace"

    def chunk_mask(self, n_chunks, trace_length, chunk_size, epoch, rng):
        return prefix_mask(n_chunks, n_chunks)

    def most_replaced(self, n_chunks, trace_length, chunk_size, epochs):
        return n_chunks


class Curriculum(Strategy):
    """Ablation: stage k = epoch // epochs_per_stage replaces the first min(k, cap) chunks."""

    name = "curriculum"

    def __init__(self, epochs_per_stage: int = 1, max_chunks: int | None = None) -> None:
        if epochs_per_stage < 1:
            raise ConfigError(f"curriculum epochs_per_stage must be >= 1, got {epochs_per_stage}")
        self.epochs_per_stage = epochs_per_stage
        self.max_chunks = max_chunks

    def stage(self, epoch: int) -> int:
        stage = epoch // self.epochs_per_stage
        return stage if self.max_chunks is None else min(stage, self.max_chunks)

    def chunk_mask(self, n_chunks, trace_length, chunk_size, epoch, rng):
        return prefix_mask(n_chunks, self.stage(epoch))

    def most_replaced(self, n_chunks, trace_length, chunk_size, epochs):
        return min(n_chunks, self.stage(max(epochs - 1, 0)))  # the last epoch's stage is the furthest


class PoissonReplace(Strategy):
    """Ablation: each chunk latent independently with probability p."""

    name = "poisson"

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"poisson probability must be in [0, 1], got {p}")
        self.p = p

    def chunk_mask(self, n_chunks, trace_length, chunk_size, epoch, rng):
        return [bool(x) for x in rng.random(n_chunks) < self.p]

    def most_replaced(self, n_chunks, trace_length, chunk_size, epochs):
        return n_chunks if self.p > 0 else 0


def make_strategy(name: str, *, m_values: Sequence[int] | None = None, poisson_p: float = 0.5,
                  curriculum_epochs: int = 1, curriculum_max_chunks: int | None = None) -> Strategy:
    """The strategy called `name` with its options (unknown names are a ConfigError)."""
    if name == "token-assorted":
        return TokenAssorted(m_values)
    if name == "pause":
        return Pause(m_values)
    if name == "curriculum":
        return Curriculum(curriculum_epochs, curriculum_max_chunks)
    if name == "poisson":
        return PoissonReplace(poisson_p)
    simple = {cls.name: cls for cls in (CoT, SolutionOnly, AllReplace)}
    if name not in simple:
        raise ConfigError(f"{name!r} is not a chunk strategy; choose one of: "
                          f"{', '.join(sorted({info.strategy for info in METHODS.values()}))}")
    return simple[name]()


def check_codes(trace_length: int, codes: Sequence[int], layout: ChunkLayout, where: str = "") -> None:
    """Refuse codes that do not match the trace (a VQ-VAE with another tokenizer or L)."""
    expected = layout.n_chunks(trace_length) * layout.latents_per_chunk
    if len(codes) != expected:
        raise CheckpointError(f"{where}latent codes do not match the trace: {len(codes)} codes for "
                              f"{trace_length} tokens, expected {expected} (L={layout.chunk_size}, "
                              f"{layout.latents_per_chunk} per chunk); was the VQ-VAE trained with "
                              f"this tokenizer?")
    bad = [z for z in codes if not 0 <= z < layout.vocab.codebook_size]
    if bad:
        raise CheckpointError(f"{where}latent code {bad[0]} outside the codebook (K={layout.vocab.codebook_size})")


def build_sequence(strategy: Strategy, encoded: EncodedExample, codes: Sequence[int] | None,
                   layout: ChunkLayout | None, *, seed: int, epoch: int, index: int) -> MixedSequence:
    """prompt ⊕ (trace with the strategy's chunks latent) ⊕ solution, with loss labels."""
    trace = encoded.trace_ids
    if strategy.needs_codes and (layout is None or codes is None):
        raise ConfigError(f"strategy {strategy.name!r} needs latent codes (a VQ-VAE)")
    if strategy.writes_pause and (layout is None or layout.vocab.pause_id is None):
        raise ConfigError(f"strategy {strategy.name!r} needs a VQ-VAE's chunk layout and a <pause> token")
    n_chunks = layout.n_chunks(len(trace)) if layout is not None else 0
    chunk_size = layout.chunk_size if layout is not None else 1
    mask = strategy.chunk_mask(n_chunks, len(trace), chunk_size, epoch, example_rng(seed, epoch, index))
    if mask is None:
        middle: list[int] = []
    elif not any(mask):
        middle = list(trace)  # plain text: the common CoT case skips the chunk walk
    else:
        middle = replace_chunks(trace, codes, mask, layout,
                                filler=layout.vocab.pause_id if strategy.writes_pause else None)
    n_replaced = 0 if mask is None else sum(mask)
    target = middle + list(encoded.solution_ids)
    input_ids = list(encoded.prompt_ids) + target
    labels = [IGNORE_INDEX] * len(encoded.prompt_ids) + target
    return MixedSequence(input_ids, labels, n_replaced)


def max_latent_chunks(strategy: Strategy, encoded: Sequence[EncodedExample], layout: ChunkLayout | None,
                      epochs: int) -> int:
    """The largest number of chunks any training sequence of these examples could replace.

    Recorded beside a trained model: the latency dial refuses to force more chunks than
    the model ever saw latent (0 for cot and sol-only).
    """
    if layout is None:
        return 0
    return max((strategy.most_replaced(layout.n_chunks(len(e.trace_ids)), len(e.trace_ids), layout.chunk_size,
                                    epochs) for e in encoded), default=0)


def max_sequence_length(encoded: EncodedExample, layout: ChunkLayout | None) -> int:
    """An upper bound on the length of any mixed sequence of this example."""
    trace = len(encoded.trace_ids)
    if layout is not None:
        # Each chunk becomes either its text (<= L tokens) or at most its codes plus two delimiters.
        per_chunk = max(layout.chunk_size, layout.latents_per_chunk + 2)
        trace = max(trace, layout.n_chunks(trace) * per_chunk)
    return len(encoded.prompt_ids) + trace + len(encoded.solution_ids)


def collate(sequences: list[MixedSequence], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence; padding is masked out of attention and loss."""
    width = max(len(s.input_ids) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)  # (B, T)
    for row, seq in enumerate(sequences):
        input_ids[row, :len(seq.input_ids)] = torch.tensor(seq.input_ids)
        labels[row, :len(seq.labels)] = torch.tensor(seq.labels)
        attention[row, :len(seq.input_ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}
