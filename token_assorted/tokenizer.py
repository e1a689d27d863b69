"""The shared text tokenizer and the latent-token vocabulary.

Stage 1 and stage 2 use one tokenizer, saved as a standard Hugging Face tokenizer
(`tokenizer.json`, loadable by `AutoTokenizer`). Models trained from scratch get a
word-level tokenizer built from the task data: the synthetic tasks are made of a few
hundred words, so one token per word gives the shortest traces (a ProsQA step is 6
tokens, not the ~12 of GPT-2's BPE) and the fastest CPU training, with no unknown words
on generated data. Pretrained models keep their own tokenizer.

Latent tokens `<latent_0>` … `<latent_{K-1}>` and the delimiters `<boLatent>`,
`<eoLatent>` are added tokens with contiguous ids, so a codebook index z maps to token
id `first_code_id + z`. They are not "special": a server that decodes with
skip_special_tokens=True still writes them, so the latent spans can be explained.
The pause control (strategy `pause`) appends one more such token, `<pause>`, after them:
only pause models have it, so every other model's vocabulary is unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from .errors import CheckpointError

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
LATENT_BEGIN, LATENT_END = "<boLatent>", "<eoLatent>"
PAUSE = "<pause>"  # the pause control's one content-free latent token


def latent_token(code: int) -> str:
    """The vocabulary string of codebook index `code`."""
    return f"<latent_{code}>"


def build_word_tokenizer(texts: Iterable[str], min_frequency: int = 1) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `texts`: words and punctuation runs are tokens."""
    core = Tokenizer(models.WordLevel(unk_token=UNK))
    core.normalizer = normalizers.NFKC()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=[PAD, UNK, BOS, EOS], min_frequency=min_frequency)
    core.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, unk_token=UNK,
                                        bos_token=BOS, eos_token=EOS)
    tokenizer.model_max_length = 1_000_000
    return tokenizer


def ensure_special_tokens(tokenizer: PreTrainedTokenizerFast, source: str | Path = "the tokenizer"
                          ) -> PreTrainedTokenizerFast:
    """Give a pretrained tokenizer the pad/eos tokens the pipeline relies on (its ids checked first)."""
    check_contiguous_ids(tokenizer, source)
    if tokenizer.eos_token is None:
        raise CheckpointError(f"{source}: the tokenizer has no end-of-sequence token; generation cannot stop")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_contiguous_ids(tokenizer: PreTrainedTokenizerFast, source: str | Path = "the tokenizer") -> None:
    """Refuse a tokenizer whose ids do not run 0 .. len-1: embeddings have len(tokenizer) rows, and
    the latent tokens added after the vocabulary would take ids it already uses."""
    largest = max(tokenizer.get_vocab().values(), default=-1)
    if largest >= len(tokenizer):
        raise CheckpointError(f"{source}: token ids have gaps (the largest id is {largest}, but the tokenizer holds "
                              f"{len(tokenizer)} tokens); its ids must run from 0 to {len(tokenizer) - 1}, so renumber "
                              f"its vocabulary")


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
        # Without a pause token the record stays as it was before the pause control existed.
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


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a saved tokenizer directory: never remote code, never a file from outside it."""
    from transformers import AutoTokenizer

    from .io import read_json
    from .safety import refuse_outside_links

    path = Path(path)
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise CheckpointError(f"{path}: no tokenizer found (expected tokenizer.json)")
    refuse_outside_links(path)
    config_path = path / "tokenizer_config.json"
    config = read_json(config_path) if config_path.is_file() else {}
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object")
    if config.get("auto_map"):
        raise CheckpointError(f"{config_path}: needs custom code (auto_map); code shipped with a model is "
                              f"never executed — use a tokenizer transformers implements")
    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - tokenizers raises bare Exceptions for malformed files
        raise CheckpointError(f"{path}: cannot load the tokenizer: {type(exc).__name__}: {exc}") from None


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """A short hash of the base vocabulary, to refuse a VQ-VAE trained with another tokenizer."""
    import hashlib

    vocab = tokenizer.get_vocab()
    base = sorted((tok, idx) for tok, idx in vocab.items() if not tok.startswith("<latent_")
                  and tok not in (LATENT_BEGIN, LATENT_END, PAUSE))
    return hashlib.sha256(json.dumps(base).encode()).hexdigest()[:16]


def build_task_tokenizer(texts: Iterable[str], extra_words: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """The word-level tokenizer of a task: its data's words plus the task's whole lexicon.

    `extra_words` (a generator's word lists) make the vocabulary closed over everything
    the generator can emit, so official files of the same task have no unknown words.
    """
    extra = " ".join(sorted(set(extra_words)))
    return build_word_tokenizer([*texts, extra] if extra else texts)
