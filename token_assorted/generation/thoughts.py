"""Continuous thoughts: the passes that make them, Coconut's batched generation loop, interventions.

`think` runs prompt ⊕ `<bot>` in one pass, then one pass per thought on the growing KV cache,
each thought the previous position's last hidden state fed back as the next input embedding;
`continue_with` reads tokens after them on that cache. Training (`coconut.CoconutForward`) and
answering share them.

A Coconut model cannot be run by `model.generate`: its thoughts are vectors, not tokens. The
generation loop does what training does, batched and on the KV cache (the public Coconut code answers
one question at a time and recomputes the prefix for every token): prompt ⊕ `<bot>` left-padded
in one pass, the trained number of thoughts (one pass each, `think`), `<eot>` forced,
then greedy (or top-k sampled) text one token per pass until eos or `max_new_tokens` text
tokens.

What it returns is what `evaluate` scores: per question the ids `<bot> <thought>×n <eot>
text… eos`. The thoughts count as generated positions, latent ones with the two markers
(as Token Assorted's latent tokens and delimiters do), so token counts compare fairly; the
verifier reads the text only. The text after `<eot>` gets the whole `max_new_tokens` budget.

Interventions ask whether the thoughts carry the answer (METHOD.md, "Do latents reason, or
only buffer?"): ``noise`` adds to every thought a random direction scaled to `noise_scale` ×
the thought's own norm (Cui et al. 2026 use 4), seeded per (seed, question, thought), so the
batch and its order do not change it; ``zero`` feeds the zero vector instead; ``none`` changes
nothing. A model's latent reliance is accuracy(none) − accuracy(noise). The latency dial
(`latent_chunks` K, `interventions.py` for code models) gives the model K steps' worth of
thoughts, K × c: K = 0 answers straight after `<bot><eot>` (Cui et al.'s "zero latent steps"),
`all` the trained count; more stages than the model was trained with are refused.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.devices import autocast
from ..core.errors import CheckpointError, ConfigError
from ..data.latent_tokens import LatentVocab
# The same batches, padding and output as plain generation.
from .generate import Generated, check_context, generate_ids, left_pad, mask_unused
from .interventions import ALL_CHUNKS, INTERVENTIONS, THOUGHT_INTERVENTIONS, parse_latent_chunks

Transform = Callable[[torch.Tensor, int], torch.Tensor]  # (thought (B, D), its index) -> the vector fed back


# --------------------------------------------------------------------------- the passes
@dataclass
class ThoughtState:
    """What the passes over prompt ⊕ <bot> ⊕ thoughts leave for the next input."""

    cache: Any  # the KV cache of every position so far
    mask: torch.Tensor  # (B, A + n) attention mask so far
    position: torch.Tensor  # (B, 1) position id of the next input
    logits: torch.Tensor  # (B, V) the prediction after the last position (its label: <eot>)
    thoughts: list[torch.Tensor]  # the n vectors fed back, each (B, D)


def _base(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps LoRA models


def cache_argument(model: torch.nn.Module) -> str:
    """The forward's name of the KV cache: `cache` in transformers 5, `past_key_values` before."""
    parameters = inspect.signature(type(_base(model)).forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def cache_of(output: Any) -> Any:
    return output["cache"] if "cache" in output.keys() else output["past_key_values"]


def think(lm: torch.nn.Module, head_ids: torch.Tensor, head_mask: torch.Tensor, n_thoughts: int,
          transform: Transform | None = None) -> ThoughtState:
    """Prompt ⊕ <bot> in one pass, then one pass per continuous thought on the growing KV cache.

    `transform(thought, k)` (interventions) changes the k-th thought before it is fed back.
    """
    key = cache_argument(lm)
    positions = (head_mask.cumsum(-1) - 1).clamp_min(0)  # (B, A): left padding does not shift positions
    out = lm(input_ids=head_ids, attention_mask=head_mask, position_ids=positions, use_cache=True,
             output_hidden_states=True, logits_to_keep=1)
    mask, position, thoughts = head_mask, positions[:, -1:] + 1, []
    for k in range(n_thoughts):
        thought = out.hidden_states[-1][:, -1]  # (B, D) last layer, after the final norm: what the head reads
        if transform is not None:
            thought = transform(thought, k)
        thoughts.append(thought)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)  # (B, A + k + 1)
        out = lm(inputs_embeds=thought[:, None], attention_mask=mask, position_ids=position, use_cache=True,
                 output_hidden_states=True, logits_to_keep=1, **{key: cache_of(out)})
        position = position + 1
    return ThoughtState(cache_of(out), mask, position, out.logits[:, -1], thoughts)


def continue_with(lm: torch.nn.Module, state: ThoughtState, ids: torch.Tensor, mask: torch.Tensor, **options):
    """A pass over tokens `ids` (B, T) after the thoughts, on their cache (`mask`: their own (B, T))."""
    positions = state.position + torch.arange(ids.shape[1], device=ids.device)  # (B, T)
    return lm(input_ids=ids, attention_mask=torch.cat([state.mask, mask], dim=1), position_ids=positions,
              use_cache=True, **{cache_argument(lm): state.cache}, **options)


# --------------------------------------------------------------------------- interventions

def noise_direction(seed: int, index: int, position: int, width: int) -> torch.Tensor:
    """A unit vector for question `index`'s thought `position`: the same whatever the batch."""
    direction = np.random.default_rng([seed, index, position]).standard_normal(width)
    return torch.from_numpy(direction / np.linalg.norm(direction)).float()  # (D,)


def intervention(mode: str | None, rows: Sequence[int], seed: int = 0, scale: float = 4.0) -> Transform | None:
    """The change made to each thought of the questions `rows` (None: none)."""
    if mode in (None, "none"):
        return None
    if mode == "zero":
        return lambda thought, k: torch.zeros_like(thought)
    if mode != "noise":
        raise ConfigError(f"--intervene {mode!r}: a Coconut model's continuous thoughts take "
                          f"{', '.join(THOUGHT_INTERVENTIONS)}")

    def add_noise(thought: torch.Tensor, k: int) -> torch.Tensor:  # thought: (B, D)
        directions = torch.stack([noise_direction(seed, i, k, thought.shape[-1]) for i in rows])  # (B, D)
        norms = thought.float().norm(dim=-1, keepdim=True)  # (B, 1)
        return (thought.float() + scale * norms * directions.to(thought.device)).to(thought.dtype)

    return add_noise


def _next_tokens(logits: torch.Tensor, config: Any, sample: bool) -> torch.Tensor:
    """Greedy, or top-k sampling at the configured temperature (the maze's 1-Feasible-N)."""
    if not sample:
        return logits.argmax(-1)  # (B,)
    top, where = logits.float().topk(min(config.top_k, logits.shape[-1]), dim=-1)  # (B, k)
    probabilities = torch.softmax(top / config.temperature, dim=-1)
    return where.gather(-1, torch.multinomial(probabilities, 1)).squeeze(-1)


def generate_batch(model: Any, head_ids: torch.Tensor, head_mask: torch.Tensor, n_thoughts: int,
                   vocab: LatentVocab, eos_id: int, pad_id: int, config: Any, sample: bool = False,
                   transform: Transform | None = None) -> list[list[int]]:
    """One left-padded batch of prompt ⊕ <bot>: thoughts, <eot>, then text; ids per row, cut after eos."""
    state = think(model, head_ids, head_mask, n_thoughts, transform)
    rows = head_ids.shape[0]
    tokens = torch.full((rows, 1), vocab.end_id, device=head_ids.device)  # (B, 1): <eot> is forced
    written: list[list[int]] = [[vocab.begin_id, *[vocab.first_code_id] * n_thoughts, vocab.end_id]
                                for _ in range(rows)]
    done = torch.zeros(rows, dtype=torch.bool, device=head_ids.device)
    for _ in range(config.max_new_tokens):
        out = continue_with(model, state, tokens, torch.ones_like(tokens), logits_to_keep=1)
        # The cache grew in place by one position; the mask and the next position follow it.
        state.mask = torch.cat([state.mask, torch.ones_like(tokens)], dim=1)  # (B, T + 1)
        state.position = state.position + 1
        chosen = _next_tokens(mask_unused(model, out.logits[:, -1]), config, sample)  # (B,)
        chosen = torch.where(done, torch.full_like(chosen, pad_id), chosen)  # finished rows idle on pad
        for row, (token, finished) in enumerate(zip(chosen.tolist(), done.tolist())):
            if not finished:
                written[row].append(token)
        done |= chosen == eos_id
        if bool(done.all()):
            break
        tokens = chosen[:, None]
    return written


def generate_thoughts(model: Any, tokenizer: Any, prompts: list[list[int]], config: Any, *, sample: bool = False,
                      desc: str = "generate", n_thoughts: int, vocab: LatentVocab):
    """`evaluate.generate_ids` for a Coconut model: the same batches (longest prompts first), timing and output."""
    check_context(model, prompts, config.max_new_tokens + n_thoughts + 2)  # <bot>, thoughts, <eot>
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    outputs: list[list[int]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    for begin in tqdm(range(0, len(order), config.batch_size), desc=desc, unit="batch",
                      disable=not config.progress, leave=False):
        rows = order[begin: begin + config.batch_size]
        head_ids, head_mask = left_pad([prompts[i] + [vocab.begin_id] for i in rows], pad_id)
        transform = intervention(config.intervene, rows, config.intervene_seed, config.noise_scale)
        with torch.inference_mode(), autocast(config.mixed_precision, device):
            written = generate_batch(model, head_ids.to(device), head_mask.to(device), n_thoughts, vocab, eos_id,
                                     pad_id, config, sample, transform)
        for index, ids in zip(rows, written):
            outputs[index] = ids
    seconds = time.perf_counter() - start
    model.train(was_training)
    return Generated(outputs, seconds)


def thought_generation(vocab: LatentVocab, n_thoughts: int):
    """A generate function (evaluate.generate_ids's signature) answering with `n_thoughts` thoughts."""
    def generate(model, tokenizer, prompts, config, *, sample=False, desc="generate"):
        return generate_thoughts(model, tokenizer, prompts, config, sample=sample, desc=desc,
                                 n_thoughts=n_thoughts, vocab=vocab)

    return generate


def pause_generation(vocab: LatentVocab, n_pauses: int):
    """A generate function for a coconut-pause model: `<bot>`, `n_pauses` × `<pause>` and `<eot>` forced
    after the prompt (inserted, as in training), then `generate_ids` on the extended prompts; the forced
    tokens lead each output, so they count as generated (latent) positions as Coconut's thoughts do."""
    forced = [vocab.begin_id, *[vocab.first_code_id] * n_pauses, vocab.end_id]

    def generate(model, tokenizer, prompts, config, *, sample=False, desc="generate"):
        check_context(model, prompts, config.max_new_tokens + len(forced))
        out = generate_ids(model, tokenizer, [list(p) + forced for p in prompts], config, sample=sample, desc=desc)
        return Generated([forced + ids for ids in out.ids], out.seconds)

    return generate


def saved_generation(record: dict[str, Any], config: Any = None, pause: bool = False) -> tuple[Any, LatentVocab]:
    """How a saved Coconut model answers: its recorded thought count (or the dial's), its thought tokens.
    `pause`: a coconut-pause model (its `coconut_pause` record): the same count of forced `<pause>` tokens."""
    vocab = saved_vocab(record)
    n_thoughts = record.get("thoughts")
    if not isinstance(n_thoughts, int) or n_thoughts < 0:
        raise ConfigError(f"token_assorted.json: coconut.thoughts must be an integer >= 0, got {n_thoughts!r}")
    mode = getattr(config, "intervene", None)
    if pause and mode not in (None, "none"):
        raise ConfigError(f"--intervene {mode}: a coconut-pause model's <pause> tokens are fixed inputs with no "
                          f"content to change")
    if mode in INTERVENTIONS and mode not in THOUGHT_INTERVENTIONS:
        raise ConfigError(f"--intervene {mode}: a Coconut model writes no latent codes; its continuous thoughts "
                          f"take {', '.join(THOUGHT_INTERVENTIONS)}")
    steps = parse_latent_chunks(getattr(config, "latent_chunks", None))
    if steps is not None and steps != ALL_CHUNKS:
        if steps > record.get("stages", 0):
            raise ConfigError(f"--latent-chunks {steps}: the Coconut model was trained with at most "
                              f"{record.get('stages')} stages of thoughts (coconut.stages in token_assorted.json)")
        n_thoughts = steps * int(record.get("thoughts_per_step", 1))
    return (pause_generation if pause else thought_generation)(vocab, n_thoughts), vocab


def saved_vocab(record: dict[str, Any]) -> LatentVocab:
    """The thought tokens a saved model's `token_assorted.json` records under "coconut"."""
    try:
        return LatentVocab(**{k: int(record[k]) for k in ("codebook_size", "begin_id", "end_id", "first_code_id")})
    except (KeyError, TypeError, ValueError):
        raise CheckpointError("token_assorted.json: the 'coconut' record lacks its token ids") from None
