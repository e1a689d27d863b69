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
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

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
    """Refuse, before generating, a prompt that cannot fit with `max_new_tokens` after it; a rotary
    model (no hard limit) is refused a budget beyond the positions it was built for."""
    limit = position_limit(model)
    if limit is None:
        built = getattr(model.config, "max_position_embeddings", None)
        if isinstance(built, int) and 0 < built < max_new_tokens:
            raise ConfigError(f"max_new_tokens={max_new_tokens} exceeds the {built} positions the model was built "
                              f"for (max_position_embeddings); lower --max-new-tokens")
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
    # transformers' "friendly reminder" when a rotary model generates past its positions: checked above
    # (check_context) where it matters, a warning of many lines otherwise.
    hf_logging.get_logger("transformers.generation.stopping_criteria").setLevel(hf_logging.ERROR)
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
    # Greedy on the weights alone: generate() fills every setting we do not pass from the model's
    # generation_config.json (a repetition_penalty, suppress_tokens, a min_length ...); ours replaces it.
    shipped = _swap_generation_config(model, own_generation_config(model, eos_id, pad_id))
    start = time.perf_counter()
    batches = range(0, len(order), config.batch_size)
    try:
        for begin in tqdm(batches, desc=desc, unit="batch", disable=not config.progress, leave=False):
            rows = order[begin: begin + config.batch_size]
            input_ids, attention = left_pad([prompts[i] for i in rows], pad_id)
            steer = {} if processors is None else {"logits_processor": processors(rows)}
            with torch.inference_mode(), autocast(config.mixed_precision, device):
                out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                     **options, **steer)  # (B, T + new)
            for row, index in enumerate(rows):
                outputs[index] = _cut_at_eos(out[row, input_ids.shape[1]:].tolist(), eos_id)
    finally:
        _swap_generation_config(model, shipped)
    seconds = time.perf_counter() - start
    model.train(was_training)
    return Generated(outputs, seconds)


def _swap_generation_config(model: PreTrainedModel, config: Any) -> Any:
    """Put `config` on the model (and on the model a peft wrapper holds); return the one it had."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    previous = inner.generation_config
    for target in {id(model): model, id(inner): inner}.values():
        target.generation_config = config
    return previous


def own_generation_config(model: PreTrainedModel, eos_id: int | None, pad_id: int | None) -> GenerationConfig:
    """The generation settings we generate with: transformers' defaults and the tokenizer's eos and pad."""
    return GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id,
                            bos_token_id=getattr(model.generation_config, "bos_token_id", None))


# Settings of a generation_config.json that say nothing about what is generated.
_NEUTRAL = {"bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "transformers_version",
            "_from_model_config", "use_cache", "output_attentions", "output_hidden_states", "return_dict_in_generate",
            "output_scores", "output_logits", "max_length", "cache_implementation"}


def shipped_settings(model: PreTrainedModel) -> dict[str, Any]:
    """What a model's own generation_config.json sets that would change its outputs (all ignored here)."""
    config = getattr(model, "generation_config", None)
    if config is None:
        return {}
    defaults = GenerationConfig().to_dict()
    return {key: value for key, value in config.to_diff_dict().items()
            if key not in _NEUTRAL and value != defaults.get(key) and value is not None}
