"""A model folder's weights checked against its config before anything is loaded.

transformers fills a weight that a checkpoint lacks with random numbers and drops one it
does not expect, with a log line at most: a `config.json` saying 3 layers over weights of
2 would be evaluated with a random third layer, and its accuracy reported as the model's.
So before loading, `check_model_files` compares the names and shapes in the safetensors
headers (read with `safe_open`; no tensor is loaded) with the state dict of the model the
config describes, built on the `meta` device (no memory, no initialisation). A missing or
unexpected key, or a shape that differs, is a `CheckpointError` naming the file and the
first offending key. `config.json` itself must be a JSON object with a `model_type`
transformers knows.

Every layout transformers itself loads is accepted, because names are read the way it reads
them (`loaded_names`): with or without the base model's prefix (the official
`openai-community/gpt2` stores `h.0.attn.c_attn.weight` where `GPT2LMHeadModel` has
`transformer.h.0.attn.c_attn.weight`), after its legacy renamings (`LayerNorm.gamma`) and
conversions (per-expert MoE weights merged on load, whose shapes are then its to check), and a
tied weight (an LM head sharing the input embedding) stored once or not at all. What
transformers would fill with random numbers or drop is still refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from .errors import CheckpointError
from .io import read_json

Shapes = dict[str, tuple[int, ...]]


def read_config(directory: Path) -> dict[str, Any]:
    """`config.json` as a JSON object naming a causal-LM `model_type` transformers knows."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a model directory (no config.json)")
    config = read_json(path)  # malformed JSON: a DataError naming the line
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(config).__name__}")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING_NAMES:
        raise CheckpointError(f"{path}: unknown model_type {model_type!r:.60} (not a model transformers knows)")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise CheckpointError(f"{path}: model_type {model_type!r} is not a causal language model "
                              f"transformers can load (AutoModelForCausalLM)")
    return config


def file_shapes(files: list[Path]) -> tuple[Shapes, dict[str, Path]]:
    """Every tensor's shape in `files` (headers only) and the file holding it."""
    shapes: Shapes = {}
    owner: dict[str, Path] = {}
    for path in files:
        try:
            with safe_open(str(path), "pt") as handle:
                for name in handle.keys():
                    if name in owner:
                        raise CheckpointError(f"{path}: tensor {name!r} is also in {owner[name]}")
                    shapes[name] = tuple(handle.get_slice(name).get_shape())
                    owner[name] = path
        except SafetensorError as exc:
            raise CheckpointError(f"{path}: unreadable safetensors file ({exc})") from None
    return shapes, owner


def meta_model(directory: Path) -> torch.nn.Module:
    """The model `directory/config.json` describes, on the meta device (shapes, no weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(directory), trust_remote_code=False)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - any inconsistent config (sizes, types) is the file's fault
        message = " ".join(str(exc).split())
        raise CheckpointError(f"{directory / 'config.json'}: does not describe a model transformers can "
                              f"build: {type(exc).__name__}: {message:.300}") from None


def expected_shapes(model: torch.nn.Module) -> tuple[Shapes, list[set[str]]]:
    """The state dict's shapes, and the groups of names that share one tensor (tied weights)."""
    state = model.state_dict(keep_vars=True)
    groups: dict[int, set[str]] = {}
    for name, tensor in state.items():
        groups.setdefault(id(tensor), set()).add(name)
    return {name: tuple(tensor.shape) for name, tensor in state.items()}, list(groups.values())


def loaded_names(names: list[str], model: torch.nn.Module, expected: Shapes) -> tuple[dict[str, str], set[str]]:
    """Each stored name as the model name transformers loads it into, and the names it converts.

    Through transformers' own renaming (`rename_source_key` with the model's conversion mapping
    and base-model prefix) where this version has it; otherwise the prefix rule alone: a name
    the model only has with `base_model_prefix.` in front gains it, and one it only has without
    loses it. Converted names (one of several tensors merged into a model weight) map to that
    weight, but their own shapes are not the model's.
    """
    prefix = getattr(model, "base_model_prefix", "") or ""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
        mapping = get_model_conversion_mapping(model) if hasattr(model, "config") else []
    except Exception:  # noqa: BLE001 - an older transformers: the prefix rule below is what it did
        return {name: _with_prefix(name, prefix, expected) for name in names}, set()
    renamings = [entry for entry in mapping if isinstance(entry, WeightRenaming)]
    converters = [entry for entry in mapping if isinstance(entry, WeightConverter)]
    present = dict.fromkeys(expected, True)  # what rename_source_key looks names up in
    renamed: dict[str, str] = {}
    converted: set[str] = set()
    for name in names:
        target, pattern = rename_source_key(name, renamings, converters, prefix or None, present)
        if target not in expected and name in expected:  # as transformers does: the name itself, prefixed
            target, pattern = rename_source_key(name, [], [], prefix or None, present)
        renamed[name] = target
        if pattern is not None:
            converted.add(name)
    return renamed, converted


def _with_prefix(name: str, prefix: str, expected: Shapes) -> str:
    if not prefix or name in expected:
        return name
    if f"{prefix}.{name}" in expected:
        return f"{prefix}.{name}"
    stripped = name.removeprefix(f"{prefix}.")
    return stripped if stripped in expected else name


def compare(found: Shapes, owner: dict[str, Path], model: torch.nn.Module, where: Path,
            against: str = "config.json", as_transformers_loads: bool = True) -> None:
    """Refuse weights whose names or shapes are not exactly those of `model` (described by `against`).

    Names are compared as transformers loads them (`loaded_names`), or exactly as stored when
    `as_transformers_loads` is off (our own training states); errors name them as stored.
    """
    expected, groups = expected_shapes(model)
    renamed, converted = (loaded_names(sorted(found), model, expected) if as_transformers_loads
                          else ({name: name for name in found}, set()))
    stored: dict[str, list[str]] = {}  # model name -> the stored names loaded into it
    for name in sorted(found):
        stored.setdefault(renamed[name], []).append(name)
    for target, names in stored.items():
        if len(names) > 1 and not set(names) <= converted:  # e.g. `h.0.ln_1.weight` and `transformer.h.0...`
            raise CheckpointError(f"{owner[names[0]]}: weight {target!r} is stored {len(names)} times "
                                  f"({', '.join(repr(n) for n in names)}); which one would load is undefined")
    # A converted name's shape is its piece of the weight, not the weight's: transformers checks it.
    shapes = {target: expected.get(target, found[names[0]]) if names[0] in converted else found[names[0]]
              for target, names in stored.items()}
    ignored = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_unexpected", None) or []]
    unexpected = sorted(stored[target][0] for target in shapes if target not in expected
                        and not any(p.search(target) for p in ignored))
    if unexpected:
        raise CheckpointError(f"{owner[unexpected[0]]}: unexpected weight {unexpected[0]!r} (the model of "
                              f"{against} has no such tensor; {len(unexpected)} unexpected in all)")
    missing = sorted(name for group in groups if not group & shapes.keys() for name in group)
    if missing:
        raise CheckpointError(f"{where}: weights lack {missing[0]!r}, which the model of {against} needs "
                              f"({len(missing)} missing in all); refusing to fill them with random numbers")
    embedding = _embedding_name(model)
    for target in sorted(shapes.keys() & expected.keys()):
        if shapes[target] != expected[target]:
            name = stored[target][0]
            detail = (f"{against} implies {expected[target][0]} rows (vocab_size), the weights have "
                      f"{shapes[target][0]}" if target == embedding else f"{against} implies {list(expected[target])}")
            raise CheckpointError(f"{owner[name]}: weight {name!r} has shape {list(shapes[target])}; {detail}")


def _embedding_name(model: torch.nn.Module) -> str | None:
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embedding, "weight", None)
    return next((name for name, tensor in model.state_dict(keep_vars=True).items() if tensor is weight), None)


def check_model_folder(directory: str | Path) -> list[Path]:
    """Refuse a model folder unless its config, links and safetensors weights are all in order.

    In this order: config.json (JSON object, known causal-LM model_type), no file linked
    from outside the folder, safetensors only (a pickle is refused unparsed), and weights
    exactly those of the model config.json describes. Returns the weight files.
    """
    from .safety import refuse_outside_links, refuse_pickle_dir

    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such model directory")
    read_config(directory)
    refuse_outside_links(directory)
    files = refuse_pickle_dir(directory)
    found, owner = file_shapes(files)
    compare(found, owner, meta_model(directory), directory)
    return files


def check_state_files(path: Path, model: torch.nn.Module) -> None:
    """Refuse a saved training state whose weights do not fit `model` (a swapped VQ-VAE changes K)."""
    found, owner = file_shapes([path])
    compare(found, owner, model, path, against="this run", as_transformers_loads=False)
