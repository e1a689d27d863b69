"""Coconut, chain of continuous thought (Hao et al. 2024, arXiv 2412.06769), as strategy `coconut`.

A continuous thought is the last hidden state of the previous position (the vector the LM
head reads), fed back as the next input embedding instead of a token. Thoughts sit between
`<bot>` and `<eot>`, two tokens added to the vocabulary with a third, `<thought>`, the
placeholder id of a thought position (in sequences and in what `eval` reports; the model
never reads its embedding).

Curriculum (`StageSchedule`). Stage 0 is plain CoT, `prompt ⊕ <bot> ⊕ <eot> ⊕ trace ⊕
solution`, for `coconut_cot_epochs` epochs; then each stage s = 1 … S (`coconut_stages`)
lasts `coconut_epochs_per_stage` epochs (either may be a fraction of an epoch: the stage
boundaries are optimizer steps, rounded). At stage s the first s reasoning steps (whole
`Example.steps`, at most the example's own count) are replaced by c × s thoughts
(c = `coconut_thoughts_per_step`):

    prompt ⊕ <bot> ⊕ c·s thoughts ⊕ <eot> ⊕ steps s+1 … ⊕ solution

Stages after S stay at c × S thoughts and drop every remaining step, as Coconut's last
phase does (dataset.py:254-262). The count is c × s whatever the example's number of steps
(Coconut's `pad_latent_to_max`), so at stage S every example has c × S thoughts and inference
uses exactly that count: the trained count of the saved model's stage, recorded beside it.
The final phase is stage S when no training trace has more than S steps (stage S already
replaces every step), stage S + 1 otherwise; only its steps may give the saved model.

Loss: the remaining steps and the solution, as Coconut's `get_cot_latent_dataset`
(dataset.py:286-298) labels them: -100 on the question, on `<bot>`, on every thought and on
`<eot>`. Inference forces `<eot>` after the thoughts.

Forward (`CoconutForward`, `think`). Rows are left-padded so that every `<bot>` sits in the
same column, with position ids from the attention mask: one pass over prompt ⊕ `<bot>` fills
the KV cache, then one pass per thought feeds the last hidden state back as the input
embedding and extends the cache, and a last pass reads `<eot>` ⊕ the rest. Gradients flow
through the whole chain of thoughts (no detach, as in the paper). The thoughts of a batch
line up because a stage gives every row the same count.

Optimizer: a fresh one (its moments reset; the learning-rate schedule continues) at the start
of every epoch and at every stage change. Coconut's run.py creates a new AdamW at the start of
every epoch when `reset_optimizer` is set (run.py:312-319; True in every args/*_coconut.yaml),
although its README describes the flag as a reset "when switching training stages"; we follow
the code. Learning rate: Coconut's is constant (run.py:228-236, no scheduler); ours is every
method's (`Method.lr_schedule`): the peak rate until the final stage, cosine decay over it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import AddedToken

from ...core.errors import ConfigError
from ...data.encoding import EncodedExample, encode_example
from ...data.latent_tokens import LatentVocab
from ...generation.thoughts import continue_with, think, thought_generation
from ..mixing import IGNORE_INDEX, CoT, Strategy
from ..models import extend_vocabulary
from .base import Method

BEGIN_THOUGHT, END_THOUGHT, THOUGHT = "<bot>", "<eot>", "<thought>"


# --------------------------------------------------------------------------- vocabulary
def add_thought_tokens(tokenizer: Any, filler: str = THOUGHT) -> LatentVocab:
    """Add `<bot>`, `<eot>` and `filler` (`<thought>`; coconut-pause: `<pause>`), idempotent; their ids
    as a one-code LatentVocab.

    The filler is "code 0" of a vocabulary of one, so what counts latent tokens and strips them
    from the verified text (generation/scoring.py) treats `<bot> <thought>… <eot>` as it treats a
    latent span.
    """
    tokens = [BEGIN_THOUGHT, END_THOUGHT, filler]
    missing = [t for t in tokens if t not in tokenizer.get_vocab()]
    if missing:
        # Ordinary added tokens matched on their raw text, like the latent tokens (data/latent_tokens.py).
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in missing])
    begin, end, thought = tokenizer.convert_tokens_to_ids(tokens)
    return LatentVocab(codebook_size=1, begin_id=begin, end_id=end, first_code_id=thought)


# --------------------------------------------------------------------------- curriculum
@dataclass(frozen=True)
class StageSchedule:
    """Which stage an optimizer step trains, and what a stage replaces."""

    thoughts_per_step: int  # c
    stages: int  # S, the last stage that adds thoughts
    epochs_per_stage: float
    cot_epochs: float  # stage 0 (plain CoT) before stage 1
    steps_per_epoch: int = 1
    longest: int = 0  # the most steps of a training trace (the final phase: S when it is <= S, else S + 1)

    def __post_init__(self) -> None:
        if min(self.thoughts_per_step, self.stages) < 1 or self.epochs_per_stage <= 0 or self.cot_epochs < 0:
            raise ConfigError(f"coconut_thoughts_per_step and coconut_stages must be >= 1, coconut_epochs_per_stage "
                              f"> 0 and coconut_cot_epochs >= 0, got {self.thoughts_per_step}, {self.stages}, "
                              f"{self.epochs_per_stage} and {self.cot_epochs}")

    @property
    def cot_steps(self) -> int:
        return round(self.cot_epochs * self.steps_per_epoch)

    @property
    def stage_steps(self) -> int:
        return max(1, round(self.epochs_per_stage * self.steps_per_epoch))

    def stage(self, step: int) -> int:
        """0 for the CoT steps, then 1, 2, …; above S once the curriculum is over."""
        if step < self.cot_steps:
            return 0
        return 1 + (step - self.cot_steps) // self.stage_steps

    @property
    def final_stage(self) -> int:
        return self.stages if self.longest <= self.stages else self.stages + 1

    def phase(self, step: int) -> int:
        """The stage, capped at the final one (later stages train the same sequences)."""
        return min(self.stage(step), self.final_stage)

    def thoughts(self, stage: int) -> int:
        return self.thoughts_per_step * min(stage, self.stages)

    def replaced_steps(self, stage: int, n_steps: int) -> int:
        """Leading steps replaced at `stage`: s of them, all of them after the last stage."""
        return n_steps if stage > self.stages else min(stage, n_steps)


# --------------------------------------------------------------------------- sequences
@dataclass(frozen=True)
class SteppedExample(EncodedExample):
    """An encoded example that also knows its trace without its first k steps, k = 0 … n_steps."""

    step_traces: tuple[tuple[int, ...], ...] = ()  # step_traces[k]: trace ids of steps k+1 …


def encode_steps(tokenizer: Any, task: Any, example: Any, chat_template: bool = False) -> SteppedExample:
    """`encode_example` plus the token ids of every trace suffix of whole steps.

    A suffix is tokenized as a trace of its own (the task's `trace_text` of the remaining
    steps), which is how a trace is tokenized in every sequence: apart from the prompt and
    the solution.
    """
    encoded = encode_example(tokenizer, task, example, chat_template)
    suffixes = [tuple(encoded.trace_ids)]
    for k in range(1, len(example.steps)):
        rest = dataclasses.replace(example, steps=example.steps[k:])
        suffixes.append(tuple(tokenizer(task.trace_text(rest), add_special_tokens=False).input_ids))
    if example.steps:
        suffixes.append(())  # every step replaced: no text trace left
    return SteppedExample(encoded.prompt_ids, encoded.trace_ids, encoded.solution_ids, tuple(suffixes))


@dataclass(frozen=True)
class StageSequence:
    """One training sequence of a stage, in the three parts the forward reads."""

    head: list[int]  # prompt ⊕ <bot>
    n_thoughts: int
    rest: list[int]  # <eot> ⊕ remaining steps ⊕ solution
    labels: list[int]  # of `rest`: -100 on <eot>, then the remaining steps and the solution

    def token_ids(self, vocab: LatentVocab) -> list[int]:
        """The whole sequence with the placeholder (coconut-pause: `<pause>`) at thought positions."""
        return self.head + [vocab.first_code_id] * self.n_thoughts + self.rest

    def all_labels(self) -> list[int]:
        """The labels of `token_ids`: -100 on the question, `<bot>` and the thoughts, then `labels`."""
        return [IGNORE_INDEX] * (len(self.head) + self.n_thoughts) + self.labels


def stage_sequence(example: SteppedExample, stage: int, schedule: StageSchedule, vocab: LatentVocab) -> StageSequence:
    """The stage-`stage` sequence of `example`."""
    n_steps = len(example.step_traces) - 1
    trace = example.step_traces[schedule.replaced_steps(stage, n_steps)]
    rest = [vocab.end_id, *trace, *example.solution_ids]
    labels = [IGNORE_INDEX, *rest[1:]]  # no loss on <eot> (dataset.py:288-292), as on <bot> and the thoughts
    return StageSequence(list(example.prompt_ids) + [vocab.begin_id], schedule.thoughts(stage), rest, labels)


def collate_stage(sequences: Sequence[StageSequence], pad_id: int) -> dict[str, torch.Tensor]:
    """Heads left-padded (every <bot> in the last head column), rests right-padded."""
    if len({s.n_thoughts for s in sequences}) != 1:
        raise ValueError("a Coconut batch needs one thought count for every row")
    width, rest_width = max(len(s.head) for s in sequences), max(len(s.rest) for s in sequences)
    batch = {"head_ids": torch.full((len(sequences), width), pad_id),  # (B, A)
             "head_mask": torch.zeros((len(sequences), width), dtype=torch.long),  # (B, A)
             "rest_ids": torch.full((len(sequences), rest_width), pad_id),  # (B, R)
             "rest_mask": torch.zeros((len(sequences), rest_width), dtype=torch.long),  # (B, R)
             "rest_labels": torch.full((len(sequences), rest_width), IGNORE_INDEX),  # (B, R)
             "n_thoughts": torch.tensor(sequences[0].n_thoughts)}
    for row, seq in enumerate(sequences):
        batch["head_ids"][row, width - len(seq.head):] = torch.tensor(seq.head)
        batch["head_mask"][row, width - len(seq.head):] = 1
        batch["rest_ids"][row, :len(seq.rest)] = torch.tensor(seq.rest)
        batch["rest_mask"][row, :len(seq.rest)] = 1
        batch["rest_labels"][row, :len(seq.labels)] = torch.tensor(seq.labels)
    return batch


# --------------------------------------------------------------------------- the forward
class CoconutForward(torch.nn.Module):
    """The LM with Coconut's multi-pass forward: what the trainer prepares and calls.

    One module around the passes, so DDP sees one forward and one backward per micro-batch
    however many passes the thoughts take.
    """

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, head_ids: torch.Tensor, head_mask: torch.Tensor, rest_ids: torch.Tensor,
                rest_mask: torch.Tensor, rest_labels: torch.Tensor, n_thoughts: torch.Tensor,
                total: float | None = None) -> torch.Tensor:
        """The token losses summed over `total` (the supervised tokens of the whole step; None: this batch's mean)."""
        state = think(self.lm, head_ids, head_mask, int(n_thoughts))
        out = continue_with(self.lm, state, rest_ids, rest_mask)
        # rest[t] is predicted at rest[t-1]; rest[0] (<eot>), predicted at the last thought, carries no loss.
        labels = rest_labels[:, 1:].flatten()  # (B * (R - 1))
        logits = out.logits[:, :-1].flatten(0, 1).float()
        if total is None:
            return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
        return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum") / total


# --------------------------------------------------------------------------- the method
class Coconut(Method):
    """Strategy `coconut`: the stage curriculum of continuous thoughts."""

    filler = THOUGHT  # the token at thought positions (coconut-pause: <pause>)

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        # Checked now, before any weights load; the schedule itself needs the data (stages None, the steps).
        self.schedule = self._schedule(config.coconut_stages or 1, 1, 0)
        if config.coconut_stages is not None and config.coconut_stages < 1:
            raise ConfigError(f"coconut_stages must be >= 1 (or null: the most steps of a trace), "
                              f"got {config.coconut_stages}")

    def _schedule(self, stages: int, steps_per_epoch: int, longest: int) -> StageSchedule:
        config = self.config
        cot = config.coconut_epochs_per_stage if config.coconut_cot_epochs is None else config.coconut_cot_epochs
        return StageSchedule(config.coconut_thoughts_per_step, stages, config.coconut_epochs_per_stage, cot,
                             steps_per_epoch, longest)

    @staticmethod
    def chunk_strategy(config: Any) -> Strategy:
        return CoT()  # no VQ-VAE codes; the baselines' latent rows keep the model the others' size

    def prepare(self, tokenizer: Any, model: Any, examples: Sequence[Any]) -> None:
        longest = max((len(ex.steps) for ex in examples), default=1)
        self.schedule = self._schedule(self.config.coconut_stages or max(1, longest), 1, longest)
        self.vocab = add_thought_tokens(tokenizer, self.filler)
        # The mean rule (models.py) for all three rows; the placeholder's row is never read by Coconut.
        extend_vocabulary(model, self.vocab, "mean", seed=self.config.seed + 1)

    def plan(self, run: Any, steps_per_epoch: int, total_steps: int) -> None:
        longest = max((len(e.step_traces) - 1 for e in run.encoded), default=0)
        self.schedule = self._schedule(self.schedule.stages, steps_per_epoch, longest)
        super().plan(run, steps_per_epoch, total_steps)

    def too_short_hint(self) -> str:
        schedule = self.schedule
        first = schedule.cot_steps + (schedule.final_stage - 1) * schedule.stage_steps
        return (f"stage {schedule.final_stage} begins at step {first + 1}: raise epochs or lower coconut_stages, "
                f"coconut_epochs_per_stage or coconut_cot_epochs (fractions of an epoch are allowed)")

    def encode(self, tokenizer: Any, task: Any, example: Any, chat_template: bool) -> SteppedExample:
        return encode_steps(tokenizer, task, example, chat_template)

    def max_length(self, encoded: EncodedExample, layout: Any) -> int:
        longest = self.schedule.thoughts_per_step * self.schedule.stages + 2  # <bot>, thoughts, <eot>
        return len(encoded.prompt_ids) + longest + len(encoded.trace_ids) + len(encoded.solution_ids)

    # -- the schedule ---------------------------------------------------------------
    def stage(self, step: int) -> int:
        return self.schedule.phase(step)

    def final(self, step: int) -> bool:
        return self.schedule.stage(step) >= self.schedule.final_stage

    def phase(self, step: int) -> Hashable:
        return self.epoch(step), self.schedule.phase(step)  # a fresh optimizer every epoch and every stage

    # -- training -------------------------------------------------------------------
    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return CoconutForward(model)

    def sequences(self, run: Any, indices: Sequence[int], epoch: int, step: int | None) -> list[StageSequence]:
        stage = self.schedule.stage(epoch * self.steps_per_epoch if step is None else step)
        return [stage_sequence(run.encoded[i], stage, self.schedule, self.vocab) for i in indices]

    def batch(self, run: Any, indices: Sequence[int], seed: int, epoch: int,
              step: int | None = None) -> dict[str, torch.Tensor]:
        return collate_stage(self.sequences(run, indices, epoch, step), run.tokenizer.pad_token_id)

    def loss_items(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["rest_labels"][:, 1:] != IGNORE_INDEX).sum())  # the labels the loss reads (not rest[0])

    def loss(self, module: torch.nn.Module, batch: dict[str, torch.Tensor], total: float) -> torch.Tensor:
        return module(**batch, total=total)

    # -- answering ------------------------------------------------------------------
    def generation(self, step: int, vocab: LatentVocab | None):
        return thought_generation(self.vocab, self.schedule.thoughts(self.schedule.stage(step))), self.vocab

    def record(self, step: int) -> dict[str, Any]:
        schedule, stage = self.schedule, self.schedule.stage(step)
        return {**self.vocab.to_dict(), "thoughts_per_step": schedule.thoughts_per_step, "stages": schedule.stages,
                "epochs_per_stage": schedule.epochs_per_stage, "cot_epochs": schedule.cot_epochs,
                "stage": min(stage, schedule.stages + 1), "thoughts": schedule.thoughts(stage)}

    def meta(self, step: int) -> dict[str, Any]:
        return {"coconut": self.record(step)}
