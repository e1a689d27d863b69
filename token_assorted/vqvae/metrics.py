"""Reconstruction metrics the paper omits: how well codes give back the trace, how many codes live.

- token accuracy: decoded token equals the original, over non-pad positions;
- exact-chunk accuracy: all L positions of a chunk right (pads included, so the decoded
  text has exactly the original tokens);
- codebook usage: fraction of the K codes used at least once, and the perplexity
  exp(entropy) of the code distribution (K when all codes are used equally);
- compression: text tokens per latent token over the whole data (a trailing partial
  chunk makes it fall below r).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .chunks import ChunkedExample, collate
from .model import VQVAE


@torch.no_grad()
def reconstruction_metrics(model: VQVAE, items: Sequence[ChunkedExample], batch_size: int = 32) -> dict[str, float]:
    """Evaluate `model` (in eval mode, restored afterwards) on chunked examples."""
    config = model.config
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    items = [item for item in items if item.chunks]
    counts = torch.zeros(config.codebook_size, dtype=torch.long)
    tokens = correct = chunks = exact = 0
    loss_sum = 0.0
    for start in range(0, len(items), batch_size):
        batch = collate(items[start:start + batch_size], model.vocab.pad_id, config.max_prompt_len).to(device)
        output = model(batch.prompt_ids, batch.prompt_pad, batch.chunk_ids, batch.chunk_present)
        targets = batch.targets  # (C, L)
        real = targets != model.vocab.pad_id
        # Accuracy of free (greedy) decoding, never teacher-forced: the one-pass decoder's predictions
        # already are its decoding.
        predicted = (model.tokens_of(batch.prompt_ids, batch.prompt_pad, output.codes, batch.chunk_present)
                     if config.autoregressive else output.predictions)
        hits = predicted == targets
        tokens += int(real.sum())
        correct += int((hits & real).sum())
        chunks += targets.shape[0]
        exact += int(hits.all(dim=1).sum())
        loss_sum += float(output.recon_loss) * targets.shape[0]
        counts += torch.bincount(output.codes.flatten().cpu(), minlength=config.codebook_size)
    model.train(was_training)
    return _summary(counts, tokens, correct, chunks, exact, loss_sum, items)


def _summary(counts: torch.Tensor, tokens: int, correct: int, chunks: int, exact: int, loss_sum: float,
             items: Sequence[ChunkedExample]) -> dict[str, float]:
    total = int(counts.sum())
    probabilities = counts[counts > 0].double() / max(total, 1)
    entropy = float(-(probabilities * probabilities.log()).sum()) if total else 0.0
    latents = total
    trace_tokens = sum(item.trace_length for item in items)
    return {
        "token_accuracy": correct / max(tokens, 1),
        "exact_chunk_accuracy": exact / max(chunks, 1),
        "recon_loss": loss_sum / max(chunks, 1),
        "codebook_usage": int((counts > 0).sum()) / len(counts),
        "codebook_perplexity": math.exp(entropy),
        "compression_rate": trace_tokens / max(latents, 1),
        "chunks": chunks,
        "trace_tokens": trace_tokens,
        "latent_tokens": latents,
    }
