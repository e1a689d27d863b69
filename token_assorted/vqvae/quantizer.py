"""q: the codebook a chunk's latent is turned into a code with, one per `assignment`.

- "nearest": `NearestCodebook`, vector-quantize-pytorch's `VectorQuantize`: the codebook vector
  nearest to the encoder output, with an EMA codebook, k-means initialisation on the first
  batch, dead-code replacement, a low-dimensional codebook (`codebook_dim`) and the
  straight-through estimator (under DDP the library syncs its statistics: the model is built
  after the process group).
- "search" (search.py): `SearchCodebook`, K learned vectors the decoder reads and the encoder's
  K-way classifier over them; the code is the one whose decoding fits the chunk best.

Both own their codebook and give `vectors(codes)`, the vectors the decoder reads, and
`codebook`, the (K, d) table stage 2 may start its latent rows from.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from vector_quantize_pytorch import VectorQuantize

from .config import VQVAEConfig

USAGE_DECAY = 0.99  # per training step: a code's usage is an EMA of how many chunks chose it
DEAD_USAGE = 0.05  # starting at 1, an unchosen code falls below this after ~300 steps
SPLIT_NOISE = 0.1  # re-seeded code = popular code + this share of the table's spread as noise


def build_quantizer(config: VQVAEConfig) -> NearestCodebook | SearchCodebook:
    """The codebook of `config.assignment`, over latents of width d_model."""
    if config.assignment == "search":
        return SearchCodebook(config.codebook_size, config.d_model)
    return NearestCodebook(config)


class NearestCodebook(nn.Module):
    """The nearest codebook vector (VQ): `forward` gives the quantized latents, codes and commitment loss."""

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        # The library defaults to the rotation trick; straight-through is what was measured best.
        self.vq = VectorQuantize(dim=config.d_model, codebook_size=config.codebook_size,
                                 codebook_dim=config.codebook_dim or None, decay=config.ema_decay, kmeans_init=True,
                                 threshold_ema_dead_code=config.dead_code_threshold,
                                 commitment_weight=config.commitment_weight, rotation_trick=False)
        # The library allocates affine-parameter buffers with torch.empty even when the affine
        # option is off; zero them so checkpoints hold no uninitialised memory.
        for name, buffer in self.vq.named_buffers():
            if name.endswith(("codebook_mean", "codebook_variance")):
                buffer.zero_()

    def forward(self, latents: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(C, L/r, D) latents -> quantized (C, L/r, D), codes (C, L/r), commitment loss."""
        # Nearest-code search and EMA statistics must stay in fp32 (bf16 distances tie and NaN).
        with torch.autocast(latents.device.type, enabled=False):
            return self.vq(latents.float())

    def vectors(self, codes: Tensor) -> Tensor:
        """Codes (...) -> the vectors the decoder reads (..., D)."""
        return self.vq.get_output_from_indices(codes)

    @property
    def codebook(self) -> Tensor:
        """(K, codebook_dim): the vectors codes are assigned with (the EMA's current codebook)."""
        return self.vq.codebook


class SearchCodebook(nn.Module):
    """K code vectors the decoder reads, the encoder's classifier over them, and their usage.

    A code no chunk has chosen for about 300 training steps is re-seeded as a noisy copy of a
    popular one, which then splits that code's chunks between the two (the k-means remedy
    for empty clusters).
    """

    def __init__(self, codebook_size: int, dim: int) -> None:
        super().__init__()
        # Unit-scale vectors: different codes must change the decoder's output from the first
        # step, or every chunk ties and the search has nothing to choose between.
        self.codebook = nn.Parameter(torch.randn(codebook_size, dim))
        self.classifier = nn.Linear(dim, codebook_size)
        self.register_buffer("usage", torch.ones(codebook_size))

    def vectors(self, codes: Tensor) -> Tensor:
        """Codes (...) -> the vectors the decoder reads (..., D)."""
        return self.codebook[codes]

    def candidates(self, logits: Tensor, size: int, explore: int) -> Tensor:
        """(..., K) encoder logits -> (..., size) codes to try: the most probable and random ones."""
        top = logits.detach().topk(size - explore, dim=-1).indices
        random = torch.randint(logits.shape[-1], (*logits.shape[:-1], explore), device=logits.device)
        return torch.cat([top, random], dim=-1)

    @torch.no_grad()
    def record(self, codes: Tensor) -> int:
        """Count one training step's chosen codes; re-seed codes long unused. Returns how many.

        Under DDP every process counts the codes of all processes, and the re-seeded rows are
        rank 0's: the processes' random draws differ, and the codebook must stay one.
        """
        counts = torch.bincount(codes.flatten(), minlength=len(self.usage))  # (K,)
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if distributed:
            dist.all_reduce(counts)
        self.usage.mul_(USAGE_DECAY).add_(counts)
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
        if distributed:
            for tensor in (self.codebook, self.classifier.weight, self.classifier.bias):
                dist.broadcast(tensor.data, src=0)
        return int(dead.sum())
