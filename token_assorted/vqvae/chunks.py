"""Cutting traces into chunks of L tokens and batching them with their prompts.

Every example becomes its prompt ids and its trace's chunks; a batch holds whole
examples, so each prompt is encoded once however many chunks its trace has. A trailing
partial chunk is padded with the pad token (see model.py for why).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from ..data.encoding import encode_example
from ..data.schema import Example
from ..data.tasks.base import Task


@dataclass(frozen=True)
class ChunkedExample:
    prompt_ids: list[int]
    chunks: list[list[int]]  # each exactly L ids; the last one padded
    trace_length: int  # text tokens in the trace (pads not counted)


@dataclass
class ChunkBatch:
    prompt_ids: Tensor  # (B, P) right-padded
    prompt_pad: Tensor  # (B, P) True at padding
    chunk_ids: Tensor  # (B, N, L) each example's chunks, N = most chunks in the batch
    chunk_present: Tensor  # (B, N) True for real chunks, False for batch padding

    def to(self, device: torch.device | str) -> ChunkBatch:
        return ChunkBatch(*(getattr(self, name).to(device) for name in self.__dataclass_fields__))

    @property
    def targets(self) -> Tensor:
        """(C, L) the real chunks, in the order the model returns them."""
        return self.chunk_ids[self.chunk_present]


def split_trace(trace_ids: Sequence[int], chunk_size: int, pad_id: int) -> list[list[int]]:
    """Chunks of `chunk_size` ids; the trailing partial chunk is padded with `pad_id`."""
    chunks = [list(trace_ids[start:start + chunk_size]) for start in range(0, len(trace_ids), chunk_size)]
    if chunks:
        chunks[-1] += [pad_id] * (chunk_size - len(chunks[-1]))
    return chunks


def chunk_example(tokenizer: PreTrainedTokenizerBase, task: Task, example: Example, chunk_size: int,
                  chat_template: bool = False) -> ChunkedExample:
    encoded = encode_example(tokenizer, task, example, chat_template)
    return ChunkedExample(encoded.prompt_ids, split_trace(encoded.trace_ids, chunk_size, tokenizer.pad_token_id),
                          len(encoded.trace_ids))


def chunk_examples(tokenizer: PreTrainedTokenizerBase, task: Task, examples: Sequence[Example],
                   chunk_size: int, chat_template: bool = False) -> list[ChunkedExample]:
    return [chunk_example(tokenizer, task, example, chunk_size, chat_template) for example in examples]


def collate(items: Sequence[ChunkedExample], pad_id: int, max_prompt_len: int) -> ChunkBatch:
    """One batch of whole examples; prompts longer than `max_prompt_len` keep their end."""
    prompts = [item.prompt_ids[-max_prompt_len:] for item in items]
    width = max(len(prompt) for prompt in prompts)
    n_chunks = max(len(item.chunks) for item in items)
    chunk_size = max((len(item.chunks[0]) for item in items if item.chunks), default=0)
    prompt_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    prompt_pad = torch.ones((len(items), width), dtype=torch.bool)
    chunk_ids = torch.full((len(items), n_chunks, chunk_size), pad_id, dtype=torch.long)
    chunk_present = torch.zeros((len(items), n_chunks), dtype=torch.bool)
    for row, (prompt, item) in enumerate(zip(prompts, items)):
        prompt_ids[row, :len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        prompt_pad[row, :len(prompt)] = False
        if item.chunks:
            chunk_ids[row, :len(item.chunks)] = torch.tensor(item.chunks, dtype=torch.long)
            chunk_present[row, :len(item.chunks)] = True
    return ChunkBatch(prompt_ids, prompt_pad, chunk_ids, chunk_present)
