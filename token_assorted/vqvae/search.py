"""Code assignment by search (`assignment: search`): each chunk gets the code its decoding fits best.

The default quantizer gives a chunk the codebook vector nearest to its encoder output and
trains the encoder through the straight-through estimator. On ProsQA at L = r = 16 the code
it learns names concepts but never which branch the path takes (BENCHMARKS.md, "Stage 1"):
the decoder would have to read a prompt-relative code ("the second child of terpus") that
gradient through a nearest-neighbour snap does not find.

Search turns the question around (hard EM, "analysis by synthesis"): with one latent per
chunk there are only K possible codes, so try them. In training the encoder proposes
candidates (its `size - explore` most probable codes plus `explore` random ones); the decoder,
teacher-forced, scores the chunk under each, and the most likely code is the chunk's code.
The decoder then trains on that code, and the encoder, a K-way classifier over its latent
slot, learns to predict it (cross-entropy, reported as `vq_loss`). Outside training every one
of the K codes is tried, so `codes_of` returns the code whose decoding is most likely to give
the chunk back: exact, at K decoder passes per chunk.

The most likely code is not always the one whose greedy decoding writes the chunk: the
decoder's own earlier tokens, not the chunk's, steer it. With `search_rerank: n` the n most
likely codes are decoded greedily and the chunk gets the one whose text misses the fewest
of its L tokens (the more likely on a tie): the encoder checks its code by decoding it, as
analysis-by-synthesis speech coders do. Training is unchanged; only `codes_of`, `vqvae
encode` and validation decode n times more. With n = 4 it lifted greedy reconstruction from
0.947 to 0.959 on ProsQA and from 0.834 to 0.886 on ProntoQA (BENCHMARKS.md, "Stage 1").

The codebook is a learned table of K vectors the decoder reads (`codebook`, with the same
interface stage 2 uses for the default quantizer's). A code no chunk has chosen for about
300 training steps is re-seeded as a noisy copy of a popular one, which then splits that
code's chunks between the two (the k-means remedy for empty clusters).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

USAGE_DECAY = 0.99  # per training step: a code's usage is an EMA of how many chunks chose it
DEAD_USAGE = 0.05  # starting at 1, an unchosen code falls below this after ~300 steps
SPLIT_NOISE = 0.1  # re-seeded code = popular code + this share of the table's spread as noise


class SearchCodebook(nn.Module):
    """K code vectors the decoder reads, the encoder's classifier over them, and their usage."""

    def __init__(self, codebook_size: int, dim: int) -> None:
        super().__init__()
        # Unit-scale vectors: different codes must change the decoder's output from the first
        # step, or every chunk ties and the search has nothing to choose between.
        self.codebook = nn.Parameter(torch.randn(codebook_size, dim))
        self.classifier = nn.Linear(dim, codebook_size)
        self.register_buffer("usage", torch.ones(codebook_size))

    def get_output_from_indices(self, codes: Tensor) -> Tensor:
        """Codes (...) -> the vectors the decoder reads (..., D)."""
        return self.codebook[codes]

    def candidates(self, logits: Tensor, size: int, explore: int) -> Tensor:
        """(..., K) encoder logits -> (..., size) codes to try: the most probable and random ones."""
        top = logits.detach().topk(size - explore, dim=-1).indices
        random = torch.randint(logits.shape[-1], (*logits.shape[:-1], explore), device=logits.device)
        return torch.cat([top, random], dim=-1)

    @torch.no_grad()
    def record(self, codes: Tensor) -> int:
        """Count one training step's chosen codes; re-seed codes long unused. Returns how many."""
        self.usage.mul_(USAGE_DECAY).add_(torch.bincount(codes.flatten(), minlength=len(self.usage)))
        dead = self.usage < DEAD_USAGE
        if not dead.any() or dead.all():
            return 0
        alive = (~dead).nonzero()[:, 0]
        source = alive[torch.multinomial(self.usage[alive], int(dead.sum()), replacement=True)]
        noise = torch.randn_like(self.codebook[dead]) * SPLIT_NOISE * self.codebook.std()
        self.codebook[dead] = self.codebook[source] + noise
        # The copy starts less likely than its source, so the encoder keeps its old choices
        # until the search finds chunks the copy fits better.
        self.classifier.weight[dead] = self.classifier.weight[source]
        self.classifier.bias[dead] = self.classifier.bias[source] - 1.0
        self.usage[dead] = 1.0
        return int(dead.sum())


@torch.no_grad()
def best_codes(score: Callable[[Tensor], Tensor], candidates: Tensor, present: Tensor, group: int) -> Tensor:
    """The candidate code with the highest score for every real chunk.

    `candidates` (B, N, G) holds G codes for every chunk slot and `present` (B, N) marks the
    real chunks; `score(codes)` takes (g*B, N) codes (g candidate columns stacked along the
    batch) and returns the real chunks' log likelihoods, (g, C). Columns are scored `group`
    at a time to bound memory. Returns (C,) codes in row-major (example, chunk) order.
    """
    best_score = best = None
    for start in range(0, candidates.shape[-1], group):
        columns = candidates[:, :, start:start + group].permute(2, 0, 1)  # (g, B, N)
        scores = score(columns.flatten(0, 1))  # (g, C)
        value, row = scores.max(dim=0)
        pick = columns[:, present].gather(0, row[None])[0]  # (C,)
        if best is None:
            best_score, best = value, pick
        else:
            better = value > best_score
            best_score, best = torch.where(better, value, best_score), torch.where(better, pick, best)
    return best


@torch.no_grad()
def most_likely_codes(score: Callable[[Tensor], Tensor], candidates: Tensor, present: Tensor, group: int,
                      keep: int) -> Tensor:
    """(C, keep): every real chunk's `keep` highest-scoring candidates, the highest first.

    Arguments as for `best_codes`; all G scores of a chunk are kept (G x C floats) to rank them.
    """
    scores, codes = [], []
    for start in range(0, candidates.shape[-1], group):
        columns = candidates[:, :, start:start + group].permute(2, 0, 1)  # (g, B, N)
        scores.append(score(columns.flatten(0, 1)))  # (g, C)
        codes.append(columns[:, present])  # (g, C)
    rows = torch.cat(scores).topk(keep, dim=0).indices  # (keep, C), sorted
    return torch.cat(codes).gather(0, rows).T
