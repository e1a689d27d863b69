"""Test helpers for "your own data and model": a 50-row data set and tiny local models.

The models are random, 2 layers and 64 wide, built on the spot with their own small
byte-level BPE tokenizer and saved with `save_pretrained`, as a user's model folder would be:
GPT-2 (learned positions, tied embeddings, no pad token: eos stands in) and Llama (rotary).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

GPT2_EOS = "<|endoftext|>"


def qa_records(n: int = 50, seed: int = 0) -> list[dict]:
    """Word problems in the user's own field names: problem, solution (one text), final_answer (a number)."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(2, 5)
        records.append({"problem": f"Ann has {a} pens and gets {b} more. She buys {c} times that. How many?",
                        "solution": f"Ann has {a} + {b} = {a + b} pens.\nThen {a + b} * {c} = {(a + b) * c}.",
                        "final_answer": (a + b) * c, "source": "synthetic"})
    return records


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _bpe(texts: list[str], specials: list[str]) -> Tokenizer:
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(texts, trainer=trainer)
    return core


def _texts(records: list[dict]) -> list[str]:
    return [f"{r['problem']}\n{r['solution']}\n### {r['final_answer']}" for r in records]


def save_tiny_gpt2(directory: Path, records: list[dict] | None = None, seed: int = 0) -> Path:
    """A GPT-2 folder as the hub ships it: one <|endoftext|> for bos, eos and unk, and no pad token."""
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=_bpe(_texts(records or qa_records()), [GPT2_EOS]),
                                        bos_token=GPT2_EOS, eos_token=GPT2_EOS, unk_token=GPT2_EOS)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_inner=128, n_positions=256,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


def save_tiny_llama(directory: Path, records: list[dict] | None = None, seed: int = 0,
                    tied: bool = False) -> Path:
    """A Llama-style folder: <s>/</s>/<pad>, rotary positions, an untied output layer by default."""
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=_bpe(_texts(records or qa_records()), ["<s>", "</s>", "<pad>"]),
                                        bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=tied)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory
