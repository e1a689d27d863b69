"""Turning an example into token ids: prompt P, trace C and solution S, separately.

Both stages read examples through this one function, so the VQ-VAE's chunks and the
LM's trace tokens are the same ids. The three pieces are tokenized separately (the
prompt text ends with a newline, so no token straddles the P|C or C|S boundary) and
concatenated by the caller: `[bos] P C S [eos]`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from .schema import Example
from .tasks.base import Task


@dataclass(frozen=True)
class EncodedExample:
    prompt_ids: list[int]  # starts with bos (or the chat template's opening)
    trace_ids: list[int]  # the reasoning trace C = (c_1 … c_t)
    solution_ids: list[int]  # the solution S, ending with eos


def encode_prompt(tokenizer: PreTrainedTokenizerBase, task: Task, example: Example,
                  chat_template: bool = False) -> list[int]:
    """The prompt ids a model is conditioned on, at training and at inference alike."""
    text = task.prompt_text(example)
    if chat_template and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text.strip()}],
                                            add_generation_prompt=True, tokenize=True)
        # transformers 5 returns a BatchEncoding (a Mapping, not a dict) from some tokenizers.
        return list(ids["input_ids"] if isinstance(ids, Mapping) else ids)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + tokenizer(text, add_special_tokens=False).input_ids


def encode_example(tokenizer: PreTrainedTokenizerBase, task: Task, example: Example,
                   chat_template: bool = False) -> EncodedExample:
    trace = tokenizer(task.trace_text(example), add_special_tokens=False).input_ids
    solution = tokenizer(task.solution_text(example), add_special_tokens=False).input_ids
    return EncodedExample(prompt_ids=encode_prompt(tokenizer, task, example, chat_template),
                          trace_ids=trace, solution_ids=solution + [tokenizer.eos_token_id])
