"""Batched generation on the KV cache: the prompts, left padded, longest first, cut after eos.

`generate_ids` is what evaluation, the probes and the explainer call on a plain causal LM;
`config` is an `evaluate.EvalConfig` (batch size, budget, sampling, precision, progress).
A Coconut model's loop (`thoughts.py`) uses the same padding, context check and output.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase

from ..core.devices import autocast
from ..core.errors import ConfigError


@dataclass
class Generated:
    """What a generate function returns (generate_ids, a Coconut model's loop)."""

    ids: list[list[int]]  # generated ids per prompt, cut after eos
    seconds: float


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)  # (B, T)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)  # (B, T)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        attention[row, width - len(prompt):] = 1
    return input_ids, attention


def _cut_at_eos(ids: list[int], eos_id: int) -> list[int]:
    return ids[: ids.index(eos_id) + 1] if eos_id in ids else ids


def position_limit(model: PreTrainedModel) -> int | None:
    """How many positions the model can index, when that is a hard limit (learned positions).

    A model with a learned position table (GPT-2) crashes past `max_position_embeddings`;
    a rotary model (Llama, Qwen) only extrapolates, so it gets no hard limit here.
    """
    config = model.config
    if getattr(config, "rope_parameters", None) or getattr(config, "rope_theta", None):
        return None
    limit = getattr(config, "max_position_embeddings", None)
    return limit if isinstance(limit, int) and limit > 0 else None


def check_context(model: PreTrainedModel, prompts: list[list[int]], max_new_tokens: int) -> None:
    """Refuse, before generating, a prompt that cannot fit with `max_new_tokens` after it."""
    limit = position_limit(model)
    if limit is None:
        return
    for index, prompt in enumerate(prompts):
        if len(prompt) + max_new_tokens > limit:
            raise ConfigError(f"example {index} (0-based) is too long for the model's context: prompt of "
                              f"{len(prompt)} tokens + max_new_tokens={max_new_tokens} > {limit} positions "
                              f"(max_position_embeddings); shorten the question or lower --max-new-tokens")


def generate_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]],
                 config: Any, *, sample: bool = False, desc: str = "generate",
                 processors: Callable[[list[int]], LogitsProcessorList] | None = None) -> Generated:
    """Generate for every prompt in batches (longest first, to waste little padding).

    `processors(rows)` gives the logits processors of the batch holding prompts `rows`.
    """
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    outputs: list[list[int]] = [[] for _ in prompts]
    options: dict[str, Any] = {"do_sample": sample, "max_new_tokens": config.max_new_tokens,
                               "eos_token_id": eos_id, "pad_token_id": pad_id, "use_cache": True}
    if sample:
        options.update(top_k=config.top_k, temperature=config.temperature, top_p=1.0)
    else:
        # Explicit values so a checkpoint's generation_config cannot turn greedy into sampling.
        options.update(top_k=None, temperature=None, top_p=None)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    batches = range(0, len(order), config.batch_size)
    for begin in tqdm(batches, desc=desc, unit="batch", disable=not config.progress, leave=False):
        rows = order[begin: begin + config.batch_size]
        input_ids, attention = left_pad([prompts[i] for i in rows], pad_id)
        steer = {} if processors is None else {"logits_processor": processors(rows)}
        with torch.inference_mode(), autocast(config.mixed_precision, device):
            out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                 **options, **steer)  # (B, T + new)
        for row, index in enumerate(rows):
            outputs[index] = _cut_at_eos(out[row, input_ids.shape[1]:].tolist(), eos_id)
    seconds = time.perf_counter() - start
    model.train(was_training)
    return Generated(outputs, seconds)
