"""Code assignment by search (`assignment: search`): each chunk gets the code its decoding fits best.

With one latent per chunk there are only K possible codes, so try them (hard EM, "analysis by
synthesis"). In training the encoder proposes candidates (its most probable codes plus a few
random ones, `SearchCodebook.candidates`); the decoder, teacher-forced, scores the chunk under
each, and the most likely is the chunk's code. The decoder trains on it and the encoder, a
K-way classifier over its latent slot, learns to predict it. Outside training
(`best_fitting_codes`) the encoder's `encode_candidates` likeliest codes are scored, or all K
(0: the exact search). With `search_rerank: n` the n most likely are then decoded greedily and
the chunk gets the one whose text misses the fewest of its L tokens (the more likely on a tie),
since greedy decoding reads its own tokens, not the chunk's.

Where the likeliest code gives each of the chunk's tokens more than half the probability,
teacher-forced, greedy decoding writes the chunk back (every token is the argmax, and the
tokens it reads are the chunk's): no code can miss fewer tokens, so that chunk is settled
without decoding (`_sure`). With N < K candidates this also splits the scoring in two rounds:
the encoder's 4 likeliest for every chunk, the other N - 4 only for the chunks not settled.

Encoding scores many chunks' codes in batched decoder calls: the real chunks only (no batch
padding), in blocks of similar prompt length with the prompts cut to the block's longest, each
chunk's prompt keys and values read by all its codes (`run_grouped`), and the code-independent
half of the output distribution computed once per chunk (`chunk_side`). BENCHMARKS.md, "Stage 1",
measures the speed and the codes' reconstruction against the number of candidates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .copy_head import ChunkSide
from .decoding import greedy_tokens
from .parts import VQVAEParts
from .prompt import MemoryKV
from .stack import run_grouped

SEARCH_SEQUENCES = 256  # training: decoder sequences scored at once (candidates x examples)
ENCODE_ROWS = 512  # encoding: (chunk, code) pairs scored in one decoder call (more spill out of the caches)
CHUNK_BLOCK = 32  # encoding: chunks whose prompts are cut to one length
FIRST_ROUND = 4  # encoding with N < K candidates: the likeliest scored first
SURE = math.log(0.51)  # a token given more than half the probability is the argmax (0.01 spare for rounding)


@torch.no_grad()
def training_codes(model: VQVAEParts, prompt_ids: Tensor, prompt_pad: Tensor, chunk_ids: Tensor, present: Tensor,
                   memory: Tensor, candidates: Tensor) -> Tensor:
    """(C,) the candidate (B, N, G) under which each real chunk's teacher-forced log likelihood is highest."""
    batch = prompt_ids.shape[0]
    # Once, not once per candidate: the copy head's keys and the decoder's keys and values of the
    # prompts, and what each position reads of the chunk's tokens before it (the copy prefix too).
    keys, memory_kv = model.copy_keys(memory, prompt_ids), model.memory_kv(memory, prompt_pad)
    previous = model.previous(chunk_ids)  # (B, N, L, D) or None

    def score(codes: Tensor) -> Tensor:  # (g*B, N) codes -> (g, C) log likelihoods
        g = codes.shape[0] // batch
        mem, pad, ids, chunks, real, key, before = (
            t.repeat(g, *[1] * (t.dim() - 1)) if t is not None else None
            for t in (memory, prompt_pad, prompt_ids, chunk_ids, present, keys, previous))
        hidden = model.decoder(model.quantizer.vectors(codes)[:, :, None], mem, pad, before, memory_kv.repeat(g))
        prefix = before if model.config.copy_prefix else None
        return model.copy_head.target_log_probs(model.tokens, hidden, mem, pad, ids, chunks[real], real, prefix,
                                                key).sum(-1).view(g, -1)

    was_training = model.training
    model.eval()  # score as decoding will run: no dropout
    try:
        return best_codes(score, candidates, present, max(1, SEARCH_SEQUENCES // batch))
    finally:
        model.train(was_training)


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


def encoding_candidates(logits: Tensor, size: int) -> Tensor:
    """(C, K) encoder logits -> (C, N) the codes encoding scores: the N likeliest, most likely first,
    or all K in code order when `size` is 0 or at least K (the exact search)."""
    n_chunks, codebook_size = logits.shape
    if 0 < size < codebook_size:
        return logits.topk(size, dim=-1).indices
    return torch.arange(codebook_size, device=logits.device).expand(n_chunks, -1)


@dataclass(frozen=True)
class _Encoding:
    """A batch's real chunks and the prompt side their codes are scored against."""

    chunks: Tensor  # (C, L)
    owner: Tensor  # (C,) each chunk's example
    index: Tensor  # (C,) its place in its trace
    lengths: Tensor  # (C,) its prompt's length (prompts are right-padded)
    memory: Tensor  # (B, P, D)
    prompt_pad: Tensor  # (B, P)
    prompt_ids: Tensor  # (B, P)
    memory_kv: MemoryKV  # the decoder's keys and values of the prompts, projected once
    keys: Tensor  # the copy head's side of the prompts (`copy_keys`)

    def prompts(self, chunks: Tensor) -> tuple[Tensor, Tensor, Tensor, MemoryKV, Tensor]:
        """Memory, pad, ids, decoder keys/values and copy keys of the given chunks' prompts, one row
        per chunk, cut to the longest of them (the rest is padding)."""
        rows, width = self.owner[chunks], int(self.lengths[chunks].max())
        return (self.memory[rows, :width], self.prompt_pad[rows, :width], self.prompt_ids[rows, :width],
                self.memory_kv.select(rows, width), self.keys[rows, :width])


@torch.no_grad()
def best_fitting_codes(model: VQVAEParts, prompt_ids: Tensor, prompt_pad: Tensor, chunk_ids: Tensor,
                       present: Tensor, memory: Tensor, candidates: Tensor) -> Tensor:
    """(C,) every real chunk's code among its (C, N) candidates (`encoding_candidates`): the most
    likely, or with `search_rerank` the best decoded."""
    owner, index = present.nonzero().unbind(1)  # each real chunk's example and place in its trace
    # The prompt side once per example, read by all the codes of each of its chunks.
    batch = _Encoding(chunk_ids[present], owner, index, (~prompt_pad).sum(-1)[owner], memory, prompt_pad, prompt_ids,
                      model.memory_kv(memory, prompt_pad), model.copy_keys(memory, prompt_ids))
    everyone = torch.arange(len(owner), device=owner.device)
    if not FIRST_ROUND < candidates.shape[1] < model.config.codebook_size:  # one round: all K, or a few
        return _pick(model, batch, candidates, _log_likelihoods(model, batch, everyone, candidates))
    # Two rounds: the encoder's likeliest few first; a chunk whose likeliest of them writes it
    # back (`_sure`) stops there, the others are scored under the rest of their candidates.
    log_p = memory.new_full((*candidates.shape, batch.chunks.shape[1]), float("-inf"))  # (C, N, L)
    log_p[:, :FIRST_ROUND] = _log_likelihoods(model, batch, everyone, candidates[:, :FIRST_ROUND])
    doubt = (~_sure(log_p, log_p.sum(-1).argmax(-1))).nonzero()[:, 0]
    if len(doubt):
        log_p[doubt, FIRST_ROUND:] = _log_likelihoods(model, batch, doubt, candidates[doubt, FIRST_ROUND:])
    return _pick(model, batch, candidates, log_p)


def _sure(log_p: Tensor, likeliest: Tensor) -> Tensor:
    """(C,) True where the likeliest code (column `likeliest` of the (C, N, L) token log p) gives each
    of the chunk's tokens more than half the probability: greedy decoding under it then writes the
    chunk back, and no code misses fewer of its tokens."""
    return log_p[torch.arange(len(likeliest), device=log_p.device), likeliest].min(-1).values > SURE


def _log_likelihoods(model: VQVAEParts, batch: _Encoding, chunks: Tensor, candidates: Tensor) -> Tensor:
    """(c, n, L) the teacher-forced log p of the given chunks' tokens under their (c, n) candidates."""
    log_p = batch.memory.new_empty(*candidates.shape, batch.chunks.shape[1])
    # Chunks in blocks of similar prompt length, each block's prompts cut to its longest: the
    # cross-attention and the copy head then skip most of the batch padding.
    for block in batch.lengths[chunks].argsort(descending=True).split(CHUNK_BLOCK):
        memory, pad, ids, memory_kv, keys = batch.prompts(chunks[block])
        side = model.copy_head.chunk_side(model.tokens, memory, pad, ids, batch.chunks[chunks[block]], keys)
        log_p[block] = token_log_likelihoods(model, batch.chunks[chunks[block]], batch.index[chunks[block]],
                                             memory_kv, side, candidates[block])
    return log_p


def _pick(model: VQVAEParts, batch: _Encoding, candidates: Tensor, log_p: Tensor) -> Tensor:
    """(C,) each chunk's code given its candidates' (C, N, L) token log p (-inf: not scored)."""
    scores, rerank = log_p.sum(-1), model.config.search_rerank  # (C, N)
    likeliest = scores.argmax(-1)  # the first of equal maxima, as in training
    picked = candidates.gather(1, likeliest[:, None])[:, 0]
    doubt = (~_sure(log_p, likeliest)).nonzero()[:, 0] if rerank > 1 else likeliest[:0]
    if len(doubt):  # decode the n likeliest codes of the other chunks
        likely = candidates[doubt].gather(1, scores[doubt].topk(rerank, dim=-1).indices)  # (c, n), likeliest first
        memory, pad, ids, memory_kv, keys = batch.prompts(doubt)
        vectors = model.quantizer.vectors(likely)[:, :, None]  # (c, n, 1, D)
        decoded = greedy_tokens(model, vectors, batch.index[doubt, None].expand(-1, rerank), memory, pad, ids,
                                memory_kv, keys)  # (c, n, L)
        first_fewest = (decoded != batch.chunks[doubt, None]).sum(-1).argmin(-1)  # the first of equal minima
        picked[doubt] = likely.gather(1, first_fewest[:, None])[:, 0]
    return picked


def token_log_likelihoods(model: VQVAEParts, chunks: Tensor, index: Tensor, memory_kv: MemoryKV,
                          side: ChunkSide, candidates: Tensor | None = None) -> Tensor:
    """(C, N, L): the teacher-forced log p of each chunk's L tokens under each of its (C, N)
    candidate codes (default: all K, in code order).

    `chunks` (C, L) with their places in their traces `index` (C,), the decoder's keys and
    values of their prompts and the mixture's side of them (`chunk_side`), one row per chunk.
    """
    n_chunks, length = chunks.shape
    if candidates is None:
        candidates = encoding_candidates(chunks.new_zeros(n_chunks, model.config.codebook_size), 0)
    vectors = model.quantizer.vectors(candidates)  # (C, N, D)
    decoder = model.decoder
    queries = decoder.queries(model.previous(chunks), n_chunks)  # (C, L, D): the same under every code
    position = decoder.position.weight[:length + 1]  # (S, D), S = 1 + L
    place = decoder.place(index)[:, None, None]  # (C, 1, 1, D)
    allowed = torch.ones(length + 1, length + 1, dtype=torch.bool, device=chunks.device)
    if model.config.autoregressive:  # the code sees itself, position i the code and positions <= i
        allowed = allowed.tril()
    log_p = []
    for codes in vectors.split(max(1, ENCODE_ROWS // n_chunks), dim=1):  # (C, g, D) codes at a time
        x = torch.cat([codes[:, :, None], queries[:, None].expand(-1, codes.shape[1], -1, -1)],
                      dim=2) + position + place  # (C, g, S, D)
        hidden = run_grouped(decoder.transformer, x, memory_kv, allowed)[:, :, 1:]  # (C, g, L, D)
        log_p.append(model.copy_head.code_log_likelihoods(model.tokens, hidden, side))
    return torch.cat(log_p, dim=1)
