"""The batches of one epoch: a seeded example order, grouped by length, cut into micro-batches.

The order of an epoch is a function of (seed, epoch) only, so every process computes the same
one and a resumed run sees the same batches (`lm/train.py` explains the effective batch).
Stage 1 counts in steps (`step_indices`), stage 2 in epochs (`epoch_order`, `micro_indices`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch

from ..data.encoding import EncodedExample

LENGTH_WINDOW = 50  # batches sorted together by group_by_length: wide enough to group, narrow enough to mix


def epoch_order(n_examples: int, n_indices: int, seed: int, epoch: int) -> list[int]:
    """`n_indices` example indices for one epoch: a seeded permutation, wrapped to fill."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_examples, generator=generator).tolist()
    return (order * math.ceil(n_indices / n_examples))[:n_indices]


@lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> list[int]:
    return epoch_order(n, n, seed, epoch)


def step_indices(seed: int, step: int, batch_size: int, n: int) -> list[int]:
    """Examples of step `step` of a stage counted in steps (the VQ-VAE): the epochs' orders
    back to back, a batch running on into the next epoch; a pure function of its arguments."""
    positions = range(step * batch_size, (step + 1) * batch_size)
    return [_permutation(seed, p // n, n)[p % n] for p in positions]


def text_lengths(encoded: Sequence[EncodedExample]) -> list[int]:
    """Each example's all-text length, the key of group_by_length: it stands for the mixed
    length too, since latents shorten a trace by at most its own length."""
    return [len(e.prompt_ids) + len(e.trace_ids) + len(e.solution_ids) for e in encoded]


def group_by_length(order: list[int], lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                    window: int = LENGTH_WINDOW) -> list[int]:
    """`order` rearranged so that each batch holds examples of similar length.

    Batches are right-padded to their longest sequence, so mixing short and long examples
    wastes compute on padding (30 % of the tokens of the default ProsQA run). Windows of
    `window` batches of the shuffled order are sorted by length and cut into batches, and
    the batches are shuffled (seeded): every example still comes once per epoch, in an
    order that depends only on (seed, epoch), so a resumed run sees the same batches.
    `len(order)` must be a multiple of `batch_size` (epoch_order pads it so).

    Not transformers' `get_length_grouped_indices`: it sorts mega-batches longest first without
    shuffling the batches, moves the longest example to the front, sizes its mega-batches from
    the per-process batch (the grouping would change with the number of processes) and would
    reorder the default run's batches (its numbers would change).
    """
    span = window * batch_size
    batches = []
    for start in range(0, len(order), span):
        part = sorted(order[start:start + span], key=lambda i: lengths[i])
        batches += [part[b:b + batch_size] for b in range(0, len(part), batch_size)]
    # A stream of its own: epoch_order's seed of (seed, epoch + 1) must not reappear here.
    generator = torch.Generator().manual_seed(seed * 1_000_003 + 500_000 + epoch)
    return [i for b in torch.randperm(len(batches), generator=generator).tolist() for i in batches[b]]


def micro_indices(order: Sequence[int], step: int, batch_size: int, micro: int, accum_index: int,
                  rank: int, world: int) -> list[int]:
    """Process `rank`'s micro-batch `accum_index` of optimizer step `step`."""
    start = step * batch_size + (accum_index * world + rank) * micro
    return list(order[start:start + micro])


