"""Code assignment by search (`assignment: search`): each chunk gets the code its decoding fits best.

With one latent per chunk there are only K possible codes, so try them (hard EM, "analysis by
synthesis"). In training the encoder proposes candidates (its most probable codes plus a few
random ones, `SearchCodebook.candidates`); the decoder, teacher-forced, scores the chunk under
each, and the most likely is the chunk's code. The decoder trains on it and the encoder, a
K-way classifier over its latent slot, learns to predict it. Outside training every one of
the K codes is scored (`best_fitting_codes`). With `search_rerank: n` the n most likely codes
are then decoded greedily and the chunk gets the one whose text misses the fewest of its L
tokens (the more likely on a tie), since greedy decoding reads its own tokens, not the chunk's.

Encoding scores the K codes of many chunks in batched decoder calls: the real chunks only (no
batch padding), in blocks of similar prompt length with the prompts cut to the block's
longest, each chunk's prompt keys and values read by all its codes (`run_grouped`), and the
code-independent half of the output distribution computed once per chunk (`chunk_side`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .decoding import greedy_tokens
from .memory_kv import MemoryKV, run_grouped
from .mixture import ChunkSide, chunk_side, code_log_likelihoods, copy_keys, target_log_probs
from .networks import ChunkNetworks

SEARCH_SEQUENCES = 256  # training: decoder sequences scored at once (candidates x examples)
ENCODE_ROWS = 512  # encoding: (chunk, code) pairs scored in one decoder call (more spill out of the caches)
CHUNK_BLOCK = 32  # encoding: chunks whose prompts are cut to one length


@torch.no_grad()
def training_codes(nets: ChunkNetworks, prompt_ids: Tensor, prompt_pad: Tensor, chunk_ids: Tensor, present: Tensor,
                   memory: Tensor, candidates: Tensor) -> Tensor:
    """(C,) the candidate (B, N, G) under which each real chunk's teacher-forced log likelihood is highest."""
    batch = prompt_ids.shape[0]
    # The prompt side once, not once per candidate: the copy head's keys, the decoder's memory.
    keys, memory_kv = copy_keys(nets, memory, prompt_ids), nets.memory_kv(memory, prompt_pad)
    prefix = nets.prefix_of(chunk_ids)

    def score(codes: Tensor) -> Tensor:  # (g*B, N) codes -> (g, C) log likelihoods
        g = codes.shape[0] // batch
        mem, pad, ids, chunks, real, key, pre = (
            t.repeat(g, *[1] * (t.dim() - 1)) if t is not None else None
            for t in (memory, prompt_pad, prompt_ids, chunk_ids, present, keys, prefix))
        hidden = nets.decode(nets.quantizer.get_output_from_indices(codes)[:, :, None], mem, pad, chunks,
                             memory_kv.repeat(g))
        return target_log_probs(nets, hidden, mem, pad, ids, chunks[real], real, pre, key).sum(-1).view(g, -1)

    was_training = nets.training
    nets.eval()  # score as decoding will run: no dropout
    try:
        return best_codes(score, candidates, present, max(1, SEARCH_SEQUENCES // batch))
    finally:
        nets.train(was_training)


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
def best_fitting_codes(nets: ChunkNetworks, prompt_ids: Tensor, prompt_pad: Tensor, chunk_ids: Tensor,
                       present: Tensor, memory: Tensor) -> Tensor:
    """(C,) every real chunk's code among all K: the most likely, or with `search_rerank` the best decoded."""
    owner, index = present.nonzero().unbind(1)  # each real chunk's example and place in its trace
    chunks = chunk_ids[present]  # (C, L)
    # The prompt side once per example, read by all K codes of each of its chunks.
    memory_kv, keys = nets.memory_kv(memory, prompt_pad), copy_keys(nets, memory, prompt_ids)
    # Chunks in blocks of similar prompt length, each block's prompts cut to its longest: the
    # cross-attention and the copy head then skip most of the batch padding.
    lengths = (~prompt_pad).sum(-1)[owner]  # (C,) prompts are right-padded
    scores = memory.new_empty(len(chunks), nets.config.codebook_size)
    for block in lengths.argsort(descending=True).split(CHUNK_BLOCK):
        rows, width = owner[block], int(lengths[block].max())
        side = chunk_side(nets, memory[rows, :width], prompt_pad[rows, :width], prompt_ids[rows, :width],
                          chunks[block])
        scores[block] = chunk_log_likelihoods(nets, chunks[block], index[block], memory_kv.select(rows, width), side)
    rerank = nets.config.search_rerank
    if rerank < 2:
        return scores.argmax(-1)  # the first of equal maxima, as in training
    likely = scores.topk(rerank, dim=-1).indices  # (C, n), the most likely first
    vectors = nets.quantizer.get_output_from_indices(likely)[:, :, None]  # (C, n, 1, D)
    decoded = greedy_tokens(nets, vectors, index[:, None].expand_as(likely), memory[owner], prompt_pad[owner],
                            prompt_ids[owner], memory_kv.select(owner), keys[owner])  # (C, n, L)
    first_fewest = (decoded != chunks[:, None]).sum(-1).argmin(-1)  # (C,) argmin returns the first of equal minima
    return likely.gather(1, first_fewest[:, None])[:, 0]


def chunk_log_likelihoods(nets: ChunkNetworks, chunks: Tensor, index: Tensor, memory_kv: MemoryKV,
                          side: ChunkSide) -> Tensor:
    """(C, K): each chunk's teacher-forced log likelihood under every code.

    `chunks` (C, L) with their places in their traces `index` (C,), the decoder's keys and
    values of their prompts and the mixture's side of them (`chunk_side`), one row per chunk.
    """
    n_chunks, length = chunks.shape
    vectors = nets.quantizer.get_output_from_indices(torch.arange(nets.config.codebook_size, device=chunks.device))
    queries = nets.decoder_queries(chunks, n_chunks)  # (C, L, D): the same under every code
    position = nets.chunk_position.weight[:length + 1]  # (S, D), S = 1 + L
    place = nets.chunk_index(index.clamp(max=nets.config.max_chunks - 1))[:, None, None]  # (C, 1, 1, D)
    allowed = torch.ones(length + 1, length + 1, dtype=torch.bool, device=chunks.device)
    if nets.config.autoregressive:  # the code sees itself, position i the code and positions <= i
        allowed = allowed.tril()
    scores = []
    for codes in vectors.split(max(1, ENCODE_ROWS // n_chunks)):  # (g, D) codes at a time
        x = torch.cat([codes[None, :, None].expand(n_chunks, -1, -1, -1),
                       queries[:, None].expand(-1, len(codes), -1, -1)], dim=2) + position + place  # (C, g, S, D)
        hidden = run_grouped(nets.decoder, x, memory_kv, allowed)[:, :, 1:]  # (C, g, L, D)
        scores.append(code_log_likelihoods(nets, hidden, side))
    return torch.cat(scores, dim=1)
