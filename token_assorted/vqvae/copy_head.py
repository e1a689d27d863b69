"""The copy head, and the output distribution it mixes with the vocabulary head.

The concept names of ProsQA and ProntoQA traces are arbitrary words that only the prompt
supplies, so each output position also attends over the prompt's positions (one head:
queries from the decoder state, keys from g(P)); the weights are scattered onto those
positions' token ids and a learned gate p_gen = sigmoid(w . [h; context]) mixes the two
(pointer-generator style):

    p(w) = p_gen * softmax(logits)(w) + (1 - p_gen) * sum_{j : P_j = w} attention_j

It is computed in fp32 and in log space (logaddexp of the two log-weighted terms; an id no
prompt position holds gets an exact log 0, with a gradient-safe log). With `copy_prefix` a
second query/key pair (the prefix weights) scores how well the tokens before each prompt
position match the chunk's last tokens (`TokenEmbedding.prefix_features` of both): an
induction head built in, leaving the first pair to choose among the matches. The vocabulary
head is the token embeddings' (tokens.py), passed in as `tokens`. With an output vocabulary
it scores only its slots; a prompt token outside them can still be copied. Training then
takes only each target's probability (`target_log_probs`) and decoding only the argmax
(`predict`), so no tensor over the whole vocabulary is built; without it the loss is the NLL
of `log_probs`. The search scores a chunk under many codes with `code_log_likelihoods`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .tokens import TokenEmbedding

LOG_FLOOR = -30.0  # log p of a target the decoder cannot write at all (see `target_log_probs`)
UNWRITABLE = -1e4  # log of the vocabulary mass of an id outside the output vocabulary: exp() is exactly 0


def _safe_log(probabilities: Tensor) -> Tensor:
    """log, with an exact -inf (and no NaN gradient) where the probability is 0."""
    held = probabilities > 0
    return torch.where(held, probabilities.masked_fill(~held, 1.0).log(), float("-inf"))


@dataclass(frozen=True)
class ChunkSide:
    """What the mixture reads of C chunks and their prompts, the same under every code tried."""

    keys: Tensor  # (C, P, D) the copy head's keys
    prefix_scores: Tensor  # (C, L, P) the copy prefix's share of the copy scores (zeros without it)
    pad: Tensor  # (C, P) True at prompt padding
    copies: Tensor  # (C, L, P) 1 where prompt position p holds the chunk's token l
    gate_memory: Tensor  # (C, P) the gate's weight on the copied context, read at each prompt position
    slots: Tensor  # (C, L) the chunk's tokens' output slots (-1: outside the output vocabulary)


class CopyHead(nn.Module):
    """Attention over the prompt's positions, the gate p_gen, and the mixture they define."""

    def __init__(self, width: int, copy_prefix: bool) -> None:
        super().__init__()
        self.width, self.copy_prefix = width, copy_prefix
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.gate = nn.Linear(2 * width, 1)  # reads [decoder state; copied context]
        if copy_prefix:  # second query/key pair: what precedes the output position / the prompt position
            self.prefix_norm = nn.LayerNorm(width)  # the embeddings are small (std 0.02): unit scale for the match
            self.prefix_query = nn.Linear(width, width)
            self.prefix_key = nn.Linear(width, width)

    def keys(self, tokens: TokenEmbedding, memory: Tensor, prompt_ids: Tensor) -> Tensor:
        """The prompt side, fp32: (B, P, D), or (B, P, 2D) with the copy prefix's keys.

        It depends on the prompt alone, so callers that score many chunks, positions or codes
        against one prompt compute it once and pass it on as `keys`.
        """
        with torch.autocast(memory.device.type, enabled=False):
            key = self.key(memory.float())  # (B, P, D)
            if not self.copy_prefix:
                return key
            prompt_prefix = self.prefix_key(self.prefix_norm(tokens.prefix_features(prompt_ids).float()))
            return torch.cat([key, prompt_prefix], dim=-1)

    def attend(self, tokens: TokenEmbedding, hidden: Tensor, memory: Tensor, memory_pad: Tensor, prompt_ids: Tensor,
               prefix: Tensor | None, keys: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Attention over the prompt's positions (B, N, S, P) and the logit of p_gen (B, N, S, 1).

        With `copy_prefix`, `prefix` (B, N, S, D) holds `prefix_features` of the chunk's tokens: the
        two queries are concatenated to match `keys`, so one product sums both scores.
        """
        keys = self.keys(tokens, memory, prompt_ids) if keys is None else keys  # (B, P, D or 2D)
        query = self.query(hidden)  # (B, N, S, D)
        if self.copy_prefix:
            if prefix is None:
                raise ValueError("copy_prefix: pass the prefix features of the chunk's earlier tokens")
            query = torch.cat([query, self.prefix_query(self.prefix_norm(prefix.float()))], dim=-1)
        scores = torch.einsum("bnsd,bpd->bnsp", query, keys) / self.width ** 0.5  # (B, N, S, P)
        attention = scores.masked_fill(memory_pad[:, None, None], float("-inf")).softmax(dim=-1)
        context = torch.einsum("bnsp,bpd->bnsd", attention, memory)  # (B, N, S, D)
        return attention, self.gate(torch.cat([hidden, context], dim=-1))

    # --- the mixture -----------------------------------------------------------------------------
    def target_log_probs(self, tokens: TokenEmbedding, hidden: Tensor, memory: Tensor, memory_pad: Tensor,
                         prompt_ids: Tensor, targets: Tensor, present: Tensor, prefix: Tensor | None = None,
                         keys: Tensor | None = None) -> Tensor:
        """fp32 log p of each real chunk's (C, S) target tokens, floored at LOG_FLOOR.

        The floor only bites on a target no output slot and no prompt position holds (a token
        the training traces never used): its loss is capped and carries no gradient.
        """
        with torch.autocast(hidden.device.type, enabled=False):  # the mixture needs fp32 range
            log_vocab = F.log_softmax(tokens.logits(hidden[present]).float(), dim=-1)  # (C, S, V')
            slots = tokens.slots_of(targets)  # (C, S)
            picked = log_vocab.gather(-1, slots.clamp(min=0)[..., None])[..., 0]
            # A target outside the output vocabulary gets no vocabulary mass: a log far below the floor,
            # finite so that a target the copy head cannot write either gets no NaN gradient.
            picked = picked.masked_fill(slots < 0, UNWRITABLE)
            attention, gate = self.attend(tokens, hidden.float(), memory.float(), memory_pad, prompt_ids, prefix, keys)
            attention, gate = attention[present], gate[present][..., 0]  # (C, S, P), (C, S)
            owner_prompt = prompt_ids[present.nonzero()[:, 0]]  # (C, P) the prompt of each real chunk
            copied = (attention * (owner_prompt[:, None] == targets[..., None])).sum(-1)  # (C, S)
            picked = torch.logaddexp(F.logsigmoid(gate) + picked, F.logsigmoid(-gate) + _safe_log(copied))
            return picked.clamp(min=LOG_FLOOR)

    @torch.no_grad()
    def predict(self, tokens: TokenEmbedding, hidden: Tensor, memory: Tensor, memory_pad: Tensor,
                prompt_ids: Tensor, prefix: Tensor | None = None, keys: Tensor | None = None) -> Tensor:
        """(B, N, S, D) decoder states -> (B, N, S) the most probable token ids under the whole mixture."""
        with torch.autocast(hidden.device.type, enabled=False):
            probs = F.softmax(tokens.logits(hidden).float(), dim=-1)  # (B, N, S, V')
            attention, gate = self.attend(tokens, hidden.float(), memory.float(), memory_pad, prompt_ids, prefix, keys)
            p_gen = torch.sigmoid(gate)  # (B, N, S, 1)
            prompt = prompt_ids[:, None, None].expand(*attention.shape)  # (B, N, S, P)
            slots = tokens.slots_of(prompt_ids)[:, None, None].expand(*attention.shape)
            mixed = (p_gen * probs).scatter_add_(-1, slots.clamp(min=0), (1 - p_gen) * attention * (slots >= 0))
            best_value, best = mixed.max(-1)
            best = tokens.ids_of(best)
            if not tokens.vocab.output_size or (slots >= 0).all():
                return best
            # A prompt token outside the output vocabulary: all its probability is copied mass,
            # summed over the prompt positions that hold it.
            same = (prompt_ids[:, :, None] == prompt_ids[:, None, :]).float()  # (B, P, P)
            mass = (1 - p_gen) * torch.einsum("bnsp,bpq->bnsq", attention, same)  # (B, N, S, P)
            outside_value, outside = mass.masked_fill(slots >= 0, -1.0).max(-1)
            return torch.where(outside_value > best_value, prompt.gather(-1, outside[..., None])[..., 0], best)

    def log_probs(self, tokens: TokenEmbedding, hidden: Tensor, memory: Tensor, memory_pad: Tensor,
                  prompt_ids: Tensor, present: Tensor | None = None, prefix: Tensor | None = None,
                  keys: Tensor | None = None) -> Tensor:
        """(B, N, S, D) decoder states -> fp32 log p over the whole vocabulary, (B, N, S, V).

        With `present` (B, N), only the real chunks: (C, S, V). Ids outside the output vocabulary
        get only their copied mass.
        """
        keep = (lambda x: x[present]) if present is not None else (lambda x: x)
        with torch.autocast(hidden.device.type, enabled=False):
            log_slots = F.log_softmax(tokens.logits(keep(hidden)).float(), dim=-1)  # (C, S, V')
            log_vocab = log_slots
            if tokens.vocab.output_size:
                log_vocab = log_slots.new_full((*log_slots.shape[:-1], tokens.vocab.size), float("-inf"))
                log_vocab[..., tokens.output_ids] = log_slots
            attention, gate = self.attend(tokens, hidden.float(), memory.float(), memory_pad, prompt_ids, prefix, keys)
            attention, gate = keep(attention), keep(gate)  # (C, S, P), (C, S, 1)
            prompt = keep(prompt_ids[:, None, None].expand(-1, *hidden.shape[1:3], -1))  # (C, S, P)
            # Scatter: a word at several prompt positions gets the sum of their weights.
            copied = torch.zeros_like(log_vocab).scatter_add_(-1, prompt, attention)  # (C, S, V)
            return torch.logaddexp(F.logsigmoid(gate) + log_vocab, F.logsigmoid(-gate) + _safe_log(copied))

    # --- one chunk under many codes (the search) -------------------------------------------------
    @torch.no_grad()
    def chunk_side(self, tokens: TokenEmbedding, memory: Tensor, memory_pad: Tensor, prompt_ids: Tensor,
                   chunks: Tensor, keys: Tensor | None = None) -> ChunkSide:
        """The code-independent side of `code_log_likelihoods` for (C, L) chunks under (C, P) prompts.

        `keys`: the prompts' `keys` (C, P, D or 2D), when the caller has them already.
        """
        width = self.width
        with torch.autocast(memory.device.type, enabled=False):
            memory = memory.float()
            keys = self.keys(tokens, memory, prompt_ids) if keys is None else keys
            prefix_scores = memory.new_zeros(*chunks.shape, memory.shape[1])
            if self.copy_prefix:
                query = self.prefix_query(self.prefix_norm(tokens.prefix_features(chunks).float()))  # (C, L, D)
                prefix_scores = torch.einsum("cld,cpd->clp", query, keys[..., width:]) / width ** 0.5
            gate_memory = memory @ self.gate.weight[0, width:]  # (C, P)
            return ChunkSide(keys[..., :width], prefix_scores, memory_pad,
                             (prompt_ids[:, None] == chunks[..., None]).float(), gate_memory, tokens.slots_of(chunks))

    @torch.no_grad()
    def code_log_likelihoods(self, tokens: TokenEmbedding, hidden: Tensor, side: ChunkSide) -> Tensor:
        """(C, g, L, D) decoder states of C chunks under g codes -> (C, g, L) log p of each chunk token.

        `target_log_probs`, computed for many codes at once: the code-independent parts once per
        chunk (`ChunkSide`), and the gate's reading of the copied context as attention-weighted
        scalars (it is linear in the context), not as D-vectors.
        """
        with torch.autocast(hidden.device.type, enabled=False):
            hidden = hidden.float()
            log_vocab = F.log_softmax(tokens.logits(hidden), dim=-1)  # (C, g, L, V')
            slots = side.slots[:, None].expand(*hidden.shape[:3])  # (C, g, L)
            picked = log_vocab.gather(-1, slots.clamp(min=0)[..., None])[..., 0].masked_fill(slots < 0, UNWRITABLE)
            query = self.query(hidden)  # (C, g, L, D)
            scores = torch.einsum("cgld,cpd->cglp", query, side.keys) / self.width ** 0.5
            scores = (scores + side.prefix_scores[:, None]).masked_fill(side.pad[:, None, None], float("-inf"))
            attention = scores.softmax(dim=-1)  # (C, g, L, P)
            copied = torch.einsum("cglp,clp->cgl", attention, side.copies)
            weight, bias = self.gate.weight[0, :self.width], self.gate.bias[0]
            gate = hidden @ weight + torch.einsum("cglp,cp->cgl", attention, side.gate_memory) + bias  # (C, g, L)
            log_p = torch.logaddexp(F.logsigmoid(gate) + picked, F.logsigmoid(-gate) + _safe_log(copied))
            return log_p.clamp(min=LOG_FLOOR)
