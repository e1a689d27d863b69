"""LoRA for stage 2 through `peft`: low-rank adapters, the latent rows trained in full, merged on export.

`train.lora: {r, alpha, dropout, target_modules}` (off by default) wraps the stage-2 model
after its vocabulary has grown by the latent tokens. The transformer's weights stay frozen
and learn through rank-r adapters, but the K latent tokens and the two delimiters are new
words the model has never seen: a low-rank update of a frozen embedding cannot give them
rows of their own. Their rows of the input embedding (and of an untied output layer) are
therefore trained in full with peft's `trainable_token_indices`, which keeps a trainable
delta for those rows only, instead of `modules_to_save` on the embedding: that would copy
and train the whole (V, D) matrix (49,152 x 576 on SmolLM2) with a gradient mask to keep
the old rows, the memory LoRA is meant to save. With tied embeddings (GPT-2, SmolLM2) peft
applies the same delta to the output layer.

`exportable(model)` merges the adapters and the token deltas into a copy of the weights
(`merge_and_unload`), so the saved directory is a plain Hugging Face model that
`AutoModelForCausalLM` loads with no peft installed; the model being trained keeps its
adapters, so training goes on after each saved epoch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core.errors import ConfigError

if TYPE_CHECKING:  # torch and transformers load where a model is wrapped: LoraSettings stays a light config
    import torch
    from transformers import PreTrainedModel

    from ..data.latent_tokens import LatentVocab


@dataclass
class LoraSettings:
    """LoRA of the stage-2 model (`train.lora` in a preset or --config file)."""

    r: int = 8  # adapter rank
    alpha: float = 16.0  # scale: the update is (alpha / r) * B A
    dropout: float = 0.0  # dropout on the adapters' input
    target_modules: list[str] | None = None  # module names; None: peft's default for the architecture


def check_lora(settings: LoraSettings) -> None:
    if settings.r < 1 or settings.alpha <= 0 or not 0.0 <= settings.dropout < 1.0:
        raise ConfigError(f"train.lora: r must be >= 1, alpha > 0 and dropout in [0, 1); got r={settings.r}, "
                          f"alpha={settings.alpha}, dropout={settings.dropout}")
    if settings.target_modules is not None and not settings.target_modules:
        raise ConfigError("train.lora.target_modules: name at least one module (or leave it out for the default)")


def _module_name(model: torch.nn.Module, module: torch.nn.Module | None) -> str | None:
    return next((name for name, candidate in model.named_modules() if candidate is module), None)


def latent_rows(model: PreTrainedModel, vocab: LatentVocab | None) -> dict[str, list[int]]:
    """The modules whose latent and delimiter rows are trained in full, with those row ids."""
    if vocab is None:
        return {}
    ids = [vocab.begin_id, vocab.end_id, *range(vocab.first_code_id, vocab.first_code_id + vocab.codebook_size)]
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    rows = {_module_name(model, embedding): ids}
    if head is not None and head.weight.data_ptr() != embedding.weight.data_ptr():
        rows[_module_name(model, head)] = ids  # an untied output layer needs its own delta
    return rows


def apply_lora(model: PreTrainedModel, settings: LoraSettings, vocab: LatentVocab | None, seed: int = 0):
    """`model` wrapped by peft: adapters on `target_modules`, latent rows trained in full."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("train.lora needs the 'peft' package: pip install peft") from None
    check_lora(settings)
    # GPT-2 stores its projections as Conv1D, (in, out) where Linear is (out, in).
    conv1d = any(type(module).__name__ == "Conv1D" for module in model.modules())
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=settings.target_modules, task_type="CAUSAL_LM", fan_in_fan_out=conv1d,
                        trainable_token_indices=latent_rows(model, vocab) or None)
    # The adapters' random initialisation gets a stream of its own, so a run repeats bit for bit.
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        try:
            return get_peft_model(model, config)
        except ValueError as exc:  # e.g. target modules the model does not have
            raise ConfigError(f"train.lora: {str(exc).splitlines()[0]}") from None


def is_lora(model: torch.nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def exportable(model: torch.nn.Module) -> torch.nn.Module:
    """The model to save: itself, or for LoRA a merged copy (plain transformers modules only)."""
    if not is_lora(model):
        return model
    merged = copy.deepcopy(model).merge_and_unload()
    # merge_and_unload may leave tied embeddings untied (it warns); tie them again when the
    # config says they are tied, so the saved folder stores one matrix, as the base model did.
    if getattr(merged.config, "tie_word_embeddings", False):
        merged.tie_weights()
    return merged


def trainable_count(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, all) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
