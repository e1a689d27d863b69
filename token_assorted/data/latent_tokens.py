"""The latent-token vocabulary of a stage-2 model, and how a trace's chunks map onto it.

Latent tokens `<latent_0>` … `<latent_{K-1}>` and the delimiters `<boLatent>`,
`<eoLatent>` are added tokens with contiguous ids, so a codebook index z maps to token
id `first_code_id + z`. They are not "special": a server that decodes with
skip_special_tokens=True still writes them, so the latent spans can be explained.
The pause control (strategy `pause`) appends one more such token, `<pause>`, after them:
only pause models have it, so every other model's vocabulary is unchanged.

`ChunkLayout` says how a trace maps onto codes (L text tokens -> L / r codes); training
(mixing) and evaluation (the probes) both read it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from tokenizers import AddedToken
from transformers import PreTrainedTokenizerFast

from ..core.errors import CheckpointError

LATENT_BEGIN, LATENT_END = "<boLatent>", "<eoLatent>"


PAUSE = "<pause>"  # the pause control's one content-free latent token


def latent_token(code: int) -> str:
    """The vocabulary string of codebook index `code`."""
    return f"<latent_{code}>"


@dataclass(frozen=True)
class LatentVocab:
    """Where the K latent tokens and two delimiters live in an extended vocabulary."""

    codebook_size: int  # K
    begin_id: int  # <boLatent>
    end_id: int  # <eoLatent>
    first_code_id: int  # id of <latent_0>; <latent_z> = first_code_id + z
    pause_id: int | None = None  # <pause> of a pause-control model, written where the codes would be

    def code_to_id(self, code: int) -> int:
        return self.first_code_id + code

    def id_to_code(self, token_id: int) -> int | None:
        code = token_id - self.first_code_id
        return code if 0 <= code < self.codebook_size else None

    def is_latent(self, token_id: int) -> bool:
        """A code, a delimiter or the pause token: never text, never read by a verifier."""
        return self.id_to_code(token_id) is not None or token_id in (self.begin_id, self.end_id, self.pause_id)

    def to_dict(self) -> dict[str, int]:
        # pause_id: pause-control models only
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, record: Any, source: str | Path) -> LatentVocab:
        """The `latent_vocab` of a model's metadata; a wrong shape is a CheckpointError naming `source`."""
        required = [f.name for f in fields(cls) if f.name != "pause_id"]  # pause_id: pause models only
        allowed = [*required, "pause_id"]
        if not isinstance(record, dict) or not set(required) <= set(record) <= set(allowed) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in record.values()):
            raise CheckpointError(f"{source}: latent_vocab must be an object of non-negative integers "
                                  f"{', '.join(required)} (and pause_id); got {record!r:.100}")
        return cls(**record)


def add_latent_tokens(tokenizer: PreTrainedTokenizerFast, codebook_size: int) -> LatentVocab:
    """Add `<boLatent>`, `<eoLatent>` and K latent tokens (idempotent); return their ids."""
    tokens = [LATENT_BEGIN, LATENT_END] + [latent_token(z) for z in range(codebook_size)]
    vocab = tokenizer.get_vocab()
    missing = [t for t in tokens if t not in vocab]
    if missing and len(missing) != len(tokens):
        raise CheckpointError(f"tokenizer has only part of the latent vocabulary "
                              f"({len(tokens) - len(missing)} of {len(tokens)} tokens); was it extended "
                              f"with a different codebook size?")
    if missing:
        # Ordinary (non-special) added tokens: servers decode with skip_special_tokens=True
        # (`transformers serve` always does, vLLM by default), which would drop special ones
        # from the text they return. Matched on the raw text either way (normalized=False).
        tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in tokens])
    elif latent_token(codebook_size) in vocab:
        raise CheckpointError(f"tokenizer holds more than K={codebook_size} latent tokens")
    ids = tokenizer.convert_tokens_to_ids(tokens)
    first = ids[2]
    if ids[2:] != list(range(first, first + codebook_size)):
        raise CheckpointError("latent token ids are not contiguous in this tokenizer")
    return LatentVocab(codebook_size, ids[0], ids[1], first)


def add_pause_token(tokenizer: PreTrainedTokenizerFast, vocab: LatentVocab) -> LatentVocab:
    """Append `<pause>` after the latent tokens (idempotent); return `vocab` with its id."""
    if PAUSE not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(PAUSE, special=False, normalized=False)])  # as the latent tokens
    return dataclasses.replace(vocab, pause_id=tokenizer.convert_tokens_to_ids(PAUSE))


def check_latent_vocab(vocab: LatentVocab, tokenizer: PreTrainedTokenizerFast, source: str | Path) -> None:
    """Refuse metadata whose latent ids are not the tokenizer's own latent tokens.

    A model dir's `latent_vocab` says where `<boLatent>`, `<eoLatent>` and `<latent_0..K-1>`
    live; if it disagrees with the tokenizer, latent tokens would be counted, stripped and
    decoded at the wrong ids without any sign, so it must name exactly the tokenizer's ids.
    """
    actual = _latent_ids(tokenizer)
    if actual is None or actual.codebook_size != vocab.codebook_size:
        found = "no latent tokens" if actual is None else f"{actual.codebook_size} latent tokens"
        raise CheckpointError(f"{source}: latent_vocab has codebook_size {vocab.codebook_size}, but the "
                              f"tokenizer holds {found}")
    if actual != dataclasses.replace(vocab, pause_id=None):
        raise CheckpointError(f"{source}: latent_vocab {vocab.to_dict()} does not match the tokenizer's "
                              f"latent token ids {actual.to_dict()}")
    if vocab.pause_id is not None and tokenizer.get_vocab().get(PAUSE) != vocab.pause_id:
        raise CheckpointError(f"{source}: latent_vocab's pause_id {vocab.pause_id} is not the tokenizer's "
                              f"{PAUSE} id ({tokenizer.get_vocab().get(PAUSE)})")


def _latent_ids(tokenizer: PreTrainedTokenizerFast) -> LatentVocab | None:
    """Where the tokenizer's latent tokens are, if it has a contiguous set <latent_0..K-1>."""
    vocab = tokenizer.get_vocab()
    size = 0
    while latent_token(size) in vocab:
        size += 1
    if not size or LATENT_BEGIN not in vocab or LATENT_END not in vocab:
        return None
    first = vocab[latent_token(0)]
    if [vocab[latent_token(z)] for z in range(size)] != list(range(first, first + size)):
        raise CheckpointError("the tokenizer's latent token ids are not contiguous")
    return LatentVocab(size, vocab[LATENT_BEGIN], vocab[LATENT_END], first)


def latent_vocab_of(tokenizer: PreTrainedTokenizerFast) -> LatentVocab | None:
    """The latent vocabulary a tokenizer holds (its <pause> token included), or None."""
    vocab = _latent_ids(tokenizer)
    if vocab is None:
        return None
    pause = tokenizer.get_vocab().get(PAUSE)
    return dataclasses.replace(vocab, pause_id=pause) if pause is not None else vocab


@dataclass(frozen=True)
class ChunkLayout:
    """How a trace maps onto latent codes: L text tokens -> latents_per_chunk codes."""

    chunk_size: int  # L
    latents_per_chunk: int  # L / r
    vocab: LatentVocab

    def n_chunks(self, trace_length: int) -> int:
        """Chunks of a trace of `trace_length` tokens (a trailing partial chunk counts)."""
        return -(-trace_length // self.chunk_size)
