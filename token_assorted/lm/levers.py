"""Stage 2's memory levers, each a `TrainConfig` field and a flag of `train`.

- `pad_vocab_to`: the embedding (and an untied head) padded with zero rows to a multiple of N
  after the latent rows (Llama-3's 128,256 + 1,026 rows = 129,282 is no multiple of 64: GPUs
  run matrix shapes that are multiples of 64 faster). The padding rows stand for no token, so
  they are never generated: they go into the model's `generation_config.suppress_tokens`,
  which `model.generate` masks to -inf (ours, and a plain `generate` of the saved folder,
  whose generation_config.json carries them), and a Coconut model's own loop masks them too;
- `weights_dtype: bfloat16`: weights, gradients and AdamW's moments in bf16 (half the memory of
  float32; updates below bf16's resolution are lost, so float32 stays the default). Under FSDP
  on a GPU the compute is bf16 whatever the weights (its mixed-precision policy);
- `gradient_checkpointing`: each decoder layer's activations recomputed in backward;
- `fused_adamw`: torch's fused AdamW kernel (None: on a CUDA GPU only, so CPU runs keep their bits);
- `liger_kernel`: liger-kernel's fused linear cross-entropy, which never builds the (B, T, V)
  logits (about 2.6 G values for a 32 x 640 micro-batch over Llama-3's vocabulary); CUDA only.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.errors import ConfigError


def pad_vocabulary(model: Any, multiple: int, n_tokens: int) -> list[int]:
    """Pad the embedding rows to a multiple of `multiple`; return the ids of the rows no token uses.

    Every row at or past `n_tokens` (the tokenizer's length) is suppressed in generation, the
    rows a pretrained model was already padded with included.
    """
    rows = model.get_input_embeddings().weight.shape[0]
    target = -(-max(rows, n_tokens) // multiple) * multiple
    if target > rows:
        with torch.random.fork_rng():  # resizing may draw from the global generator: leave it as it was
            model.resize_token_embeddings(target, mean_resizing=False)
        with torch.no_grad():
            model.get_input_embeddings().weight[rows:] = 0
            head = model.get_output_embeddings()
            if head is not None and head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
                head.weight[rows:] = 0
    unused = list(range(n_tokens, target))
    if unused:
        model.generation_config.suppress_tokens = unused
    return unused


def apply_levers(model: Any, config: Any) -> Any:
    """The dtype, checkpointing and loss kernel `config` asks for, applied to the plain HF model."""
    if config.weights_dtype == "bfloat16":
        model.to(torch.bfloat16)
    if config.gradient_checkpointing:
        # Non-reentrant: works with frozen inputs (LoRA) and with FSDP, and needs no input gradients.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        # transformers recomputes only layers in training mode, and a pretrained model loads in eval
        # mode: its decoder layers are switched (Llama's dropout is 0; a GPT-2's would come on).
        for module in model.modules():
            if getattr(module, "gradient_checkpointing", False) is True:
                module.train()
    if config.liger_kernel:
        apply_liger(model)
    return model


def apply_liger(model: Any) -> None:
    """Replace the model's logits + cross-entropy by liger-kernel's fused linear cross-entropy."""
    from .config import check_liger

    check_liger()
    from liger_kernel.transformers import _apply_liger_kernel_to_instance
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    kind = getattr(model.config, "model_type", None)
    if kind not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise ConfigError(f"liger_kernel: no liger kernels for model type {kind!r}; "
                          f"supported: {', '.join(sorted(MODEL_TYPE_TO_APPLY_LIGER_FN))}")
    # Only the loss changes: the other kernels (RMSNorm, RoPE, SwiGLU) would change the numbers too.
    _apply_liger_kernel_to_instance(model=model, fused_linear_cross_entropy=True, cross_entropy=False, rope=False,
                                    rms_norm=False, swiglu=False)


def use_fused_adamw(config: Any, device: torch.device) -> bool:
    """`fused_adamw`, where None means: on a CUDA GPU."""
    return device.type == "cuda" if config.fused_adamw is None else bool(config.fused_adamw)
