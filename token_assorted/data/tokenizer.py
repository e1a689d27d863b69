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

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from ..core.errors import CheckpointError
from ..core.model_source import check_gguf, resolve_model_path
from .latent_tokens import LATENT_BEGIN, LATENT_END, PAUSE

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"


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


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a saved tokenizer directory: never remote code, never a file from outside it."""
    from transformers import AutoTokenizer

    from ..core.io import read_json
    from ..core.safety import refuse_outside_links

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


def resolve_tokenizer(spec: str | Path) -> PreTrainedTokenizerBase:
    """A pretrained tokenizer from a model directory, a tokenizer directory, a .gguf file or an alias."""
    path = resolve_model_path(spec)  # "smollm2-135m" -> the packaged GGUF file
    if path.suffix == ".gguf":
        from transformers import AutoTokenizer

        if not path.is_file():
            raise CheckpointError(f"{path}: GGUF file not found")
        check_gguf(path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, trust_remote_code=False)
        except Exception as exc:  # noqa: BLE001 - the gguf reader fails in many ways on a damaged file
            raise CheckpointError(f"{path}: cannot read its tokenizer: {type(exc).__name__}: {exc}") from None
        return ensure_special_tokens(tokenizer, path)
    return ensure_special_tokens(load_tokenizer(path), path)


def task_tokenizer(spec: str, task: Any, examples: Sequence[Any]) -> PreTrainedTokenizerBase:
    """The shared text tokenizer: "word" builds the word-level one of the examples' text and the
    task's lexicon; anything else is a model's (`resolve_tokenizer`)."""
    if spec != "word":
        return resolve_tokenizer(spec)
    texts = [task.prompt_text(e) + task.trace_text(e) + task.solution_text(e) for e in examples]
    return build_task_tokenizer(texts, task.lexicon())
