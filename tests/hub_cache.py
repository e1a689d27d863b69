"""Test helpers: tiny models in the layouts the Hub ships, inside a throwaway Hugging Face cache.

`save_official_gpt2` writes a GPT-2 folder the way `openai-community/gpt2` is laid out: weights
without the `transformer.` prefix and without `lm_head.weight` (tied to the input embedding),
plus each layer's `attn.bias` causal mask (a buffer transformers ignores on load),
a byte-level BPE tokenizer (`vocab.json`, `merges.txt`, `tokenizer.json`) whose only special
token is `<|endoftext|>`, and a `tokenizer_config.json` that names no class (transformers
picks GPT-2's from `config.json`). `save_official_llama` writes one as `meta-llama/Llama-3.2-1B`
is: `model.`-prefixed weights, tied embeddings stored once, `<|begin_of_text|>` /
`<|end_of_text|>` and no pad token.

`fill_cache(cache, repo_id, folder, revision)` copies a folder into `cache` in
huggingface_hub's own layout (`models--ORG--NAME/blobs/<hash>`, `snapshots/<revision>/FILE`
linked to the blob, `refs/main` naming the revision), which is what `hf download` leaves.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

GPT2_TOKEN = "<|endoftext|>"
LLAMA_BOS, LLAMA_EOS = "<|begin_of_text|>", "<|end_of_text|>"
REVISION = "0123456789abcdef0123456789abcdef01234567"  # a commit hash, as the Hub names snapshots


def byte_bpe(texts: list[str], specials: list[str], size: int = 600) -> Tokenizer:
    """A byte-level BPE over `texts` (GPT-2's scheme, at a test's size)."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(texts, trainer=trainer)
    return core


def save_official_gpt2(directory: Path, texts: list[str], width: int = 48, seed: int = 0) -> Path:
    """A random GPT-2 of `width` in the official openai-community/gpt2 layout (see the module doc)."""
    directory.mkdir(parents=True, exist_ok=True)
    core = byte_bpe(texts, [GPT2_TOKEN])
    config = GPT2Config(vocab_size=core.get_vocab_size(), n_embd=width, n_layer=2, n_head=4, n_positions=1024,
                        n_ctx=1024, bos_token_id=core.token_to_id(GPT2_TOKEN),
                        eos_token_id=core.token_to_id(GPT2_TOKEN), architectures=["GPT2LMHeadModel"])
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    state = {name.removeprefix("transformer."): tensor.contiguous() for name, tensor in model.state_dict().items()
             if name != "lm_head.weight"}
    for layer in range(config.n_layer):  # the causal-mask buffers the official file still stores
        state[f"h.{layer}.attn.bias"] = torch.tril(torch.ones(1024, 1024)).view(1, 1, 1024, 1024)
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(directory))
    core.save(str(directory / "tokenizer.json"))
    core.model.save(str(directory))  # vocab.json and merges.txt, as the official repo has them
    (directory / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1024}))
    return directory


def save_official_llama(directory: Path, texts: list[str], width: int = 48, seed: int = 0) -> Path:
    """A random Llama of `width` laid out as meta-llama/Llama-3.2-1B (see the module doc)."""
    directory.mkdir(parents=True, exist_ok=True)
    core = byte_bpe(texts, [LLAMA_BOS, LLAMA_EOS])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=LLAMA_BOS, eos_token=LLAMA_EOS)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
                         architectures=["LlamaForCausalLM"])
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items() if name != "lm_head.weight"}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


def fill_cache(cache: Path, repo_id: str, folder: Path, revision: str = REVISION, ref: str | None = "main") -> Path:
    """Put `folder`'s files into the HF cache `cache` as revision `revision` of `repo_id`; the snapshot."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / file.name)
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(revision)
    return snapshot
