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
from dataclasses import asdict, dataclass
from pathlib import Path

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


def ensure_special_tokens(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """Give a pretrained tokenizer the pad/eos tokens the pipeline relies on."""
    if tokenizer.eos_token is None:
        raise CheckpointError("the tokenizer has no end-of-sequence token; generation cannot stop")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


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


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a saved tokenizer directory (never executing remote code)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise CheckpointError(f"{path}: no tokenizer found (expected tokenizer.json)")
    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)


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


def resolve_tokenizer(spec: str | Path) -> PreTrainedTokenizerFast:
    """A pretrained tokenizer from a model directory, a tokenizer directory, a .gguf file or an alias."""
    from .pretrained import resolve_model_path  # "smollm2-135m" -> the packaged GGUF file

    path = resolve_model_path(spec)
    if path.suffix == ".gguf":
        from transformers import AutoTokenizer

        if not path.is_file():
            raise CheckpointError(f"{path}: GGUF file not found")
        return ensure_special_tokens(AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name,
                                                                   trust_remote_code=False))
    return ensure_special_tokens(load_tokenizer(path))
