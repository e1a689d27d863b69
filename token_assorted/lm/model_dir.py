"""A stage-2 model directory: a plain Hugging Face model folder plus `token_assorted.json`.

`save_model_dir` writes the unwrapped model (LoRA adapters merged), its tokenizer and the
metadata, each file replaced atomically; `load_model_dir` reads one back, refusing weights
that are not those of its `config.json` and latent-token metadata that is not its
tokenizer's. `MODEL_META` names the metadata file for every reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from ..core.devices import resolve_device
from ..core.errors import CheckpointError, ConfigError
from ..core.io import atomic_write_json, read_json
from ..core.outdir import save_pretrained_into
from ..core.weights import check_model_folder
from ..data.latent_tokens import LatentVocab, check_latent_vocab, latent_vocab_of
from ..data.tasks import Task, get_task
from ..data.tokenizer import load_tokenizer
from .lora import exportable

MODEL_META = "token_assorted.json"  # written by stage-2 training beside the HF files


def save_model_dir(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path,
                   meta: dict[str, Any]) -> None:
    """The unwrapped model as a plain HF directory; each file replaced atomically."""
    model = exportable(model)  # [lora] adapters merged into a copy: a plain transformers model
    generation = model.generation_config
    generation.eos_token_id = tokenizer.eos_token_id
    generation.pad_token_id = tokenizer.pad_token_id
    generation.bos_token_id = tokenizer.bos_token_id
    hf_logging.disable_progress_bar()  # one bar per save would drown the training bar
    save_pretrained_into(model, out)
    save_pretrained_into(tokenizer, out)
    atomic_write_json(out / MODEL_META, meta)


@dataclass
class LoadedModel:
    """A stage-2 model directory in memory."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    meta: dict[str, Any]
    latent_vocab: LatentVocab | None
    chat_template: bool
    task_name: str | None


def read_model_meta(model_dir: str | Path) -> dict[str, Any]:
    """`token_assorted.json` of a trained model dir ({} for a plain HF model dir)."""
    path = Path(model_dir) / MODEL_META
    if not path.is_file():
        return {}
    meta = read_json(path)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return meta


def recorded_max_chunks(loaded: LoadedModel) -> int:
    """The most latent chunks the model saw in training (the latency dial's limit), as recorded."""
    value = loaded.meta.get("max_latent_chunks")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CheckpointError(f"{MODEL_META}: no max_latent_chunks: a model saved by an older token-assorted, "
                              f"or not by token-assorted at all; retrain it with this version")
    return value


def load_model_dir(model_dir: str | Path, device: str = "auto") -> LoadedModel:
    """Load a trained model dir (weights via safetensors, never remote code) onto `device`.

    `device` is auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N.
    """
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    target = resolve_device(device)  # before loading: a missing GPU is a one-line error
    # Config, links and every weight file's header first: a pickle renamed .safetensors, or
    # weights that do not match config.json, are refused before any loader sees them.
    check_model_folder(model_dir)
    meta = read_model_meta(model_dir)
    tokenizer = load_tokenizer(model_dir)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), trust_remote_code=False,
                                                     use_safetensors=True)
    except (OSError, ValueError, SafetensorError) as exc:
        raise CheckpointError(f"{model_dir}: cannot load the model: {exc}") from None
    model.to(target).eval()
    latent_vocab = _latent_vocab(meta, tokenizer, model, model_dir / MODEL_META)
    return LoadedModel(model, tokenizer, meta, latent_vocab, bool(meta.get("chat_template", False)),
                       meta.get("task"))


def _latent_vocab(meta: dict[str, Any], tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel,
                  source: Path) -> LatentVocab | None:
    """The metadata's latent vocabulary, refused unless it is the tokenizer's and fits the model."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise CheckpointError(f"{source.parent}: the tokenizer has {len(tokenizer)} tokens, the model's "
                              f"embedding only {rows} rows")
    if meta.get("latent_vocab") is None:
        # The tokenizer's own latent tokens are the truth: metadata that lost its record of them must
        # not make 8 latent tokens count as 0 text, nor let a verifier read them.
        return latent_vocab_of(tokenizer)
    vocab = LatentVocab.from_dict(meta["latent_vocab"], source)
    check_latent_vocab(vocab, tokenizer, source)
    return vocab


def resolve_task(loaded: LoadedModel, task: str | Task | None, options: dict[str, Any] | None = None) -> Task:
    """The task given explicitly, else the one recorded in the model dir.

    Task options (the generic task's field mapping, answer match, step split) are the ones
    given, else those recorded with the model when it is the model's task: eval needs no flags.
    """
    if isinstance(task, Task):
        return task
    name = task or loaded.task_name
    if not name:
        raise ConfigError("the model dir records no task; pass --task")
    recorded = loaded.meta.get("task_options") if name == loaded.task_name else None
    return get_task(name, **{**(recorded or {}), **(options or {})})
