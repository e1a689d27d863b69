"""Everything a preset names, found and checked before the first stage of a run starts.

`load_preset` checks a preset's keys, types and limits; this module checks what they point at:
each method's model (a preset name, the packaged SmolLM2, a .gguf file, a Hugging Face model
folder: config, remote code, causal LM head, safetensors weights of the config's shapes), every
tokenizer (loaded, so one that cannot be read, or whose ids have gaps, is named now), the
VQ-VAE's device, and LoRA's target modules (matched against the model's module names, built on
the meta device: no weight is loaded). An error names the preset (or the option that set the
value) and the key, before the data, VQ-VAE and codes stages have spent their minutes.
`run_inputs` lists the files and folders a run reads, for `outdir.check_outputs`.
"""

from __future__ import annotations

from typing import Any

from ..core.errors import CheckpointError, ConfigError, TokenAssortedError
from .preset import PipelineConfig, tokenizer_spec, train_settings


def run_inputs(config: PipelineConfig) -> dict[str, str]:
    """What a run reads from outside its folder: data files, model and tokenizer paths."""
    from ..core.model_source import is_hub_id
    from ..lm.models import is_preset

    def local(spec: object) -> bool:  # a preset name or a Hub id is no file of the user's
        return isinstance(spec, str) and bool(spec) and not is_preset(spec) and not is_hub_id(spec)

    inputs = {f"data.files.{split}": path for split, path in config.data.files.items() if path}
    if tokenizer_spec(config) != "word" and local(tokenizer_spec(config)):
        inputs["vqvae.tokenizer"] = tokenizer_spec(config)
    for method in _methods(config):
        settings = train_settings(config, method)
        for key in ("model", "tokenizer"):
            if local(settings.get(key)):
                inputs[f"train.{key} ({method})"] = settings[key]
    return inputs


def _methods(config: PipelineConfig) -> list[str]:
    return list(dict.fromkeys([*config.methods, *config.method_overrides]))


def check_resources(config: PipelineConfig, source: str = "preset", labels: dict[str, str] | None = None) -> None:
    """Resolve and check every model, tokenizer, device and LoRA target the preset names.

    An error names the option that set the value (`labels[key]`, as `load_preset` takes them, e.g.
    `--model X` for train.model), else the preset and the key."""
    from ..core.devices import resolve_device
    from ..lm.config import TrainConfig

    def named(key: str, check: Any) -> None:
        label = next((text for given, text in (labels or {}).items()
                      if given == key or given.startswith(f"{key}.") or key.startswith(f"{given}.")), None)
        try:
            check()
        except TokenAssortedError as exc:
            raise ConfigError(f"{label or f'{source}: {key}'}: {exc}") from None

    checked: set[str] = set()
    for method in _methods(config):
        settings = train_settings(config, method)
        prefix = f"method_overrides.{method}." if method in config.method_overrides else "train."
        model = settings.get("model", TrainConfig.model)
        if model not in checked:
            checked.add(model)
            named(f"{prefix}model", lambda: check_model_spec(model))
        if settings.get("tokenizer"):
            named(f"{prefix}tokenizer", lambda: check_tokenizer_spec(settings["tokenizer"]))
        lora = settings.get("lora")
        targets = lora.get("target_modules") if isinstance(lora, dict) else None
        if targets:
            named(f"{prefix}lora", lambda: check_lora_targets(model, targets))
    spec = tokenizer_spec(config)
    if spec != "word":
        named("vqvae.tokenizer", lambda: check_tokenizer_spec(spec))
    device = config.vqvae.get("device", "auto")
    named("vqvae.device", lambda: resolve_device(device))


def check_model_spec(spec: str) -> None:
    """A model preset name, the SmolLM2 alias, a .gguf file or a Hugging Face model folder that loads."""
    from pathlib import Path

    from ..core.model_source import check_gguf, resolve_model_path
    from ..core.weights import check_model_folder
    from ..lm.models import PRESETS, is_preset
    from ..lm.pretrained import check_model_dir

    if is_preset(spec):
        return
    path = resolve_model_path(spec)  # the alias: the packaged file, or how to install it
    if not Path(path).exists():
        raise CheckpointError(f"{spec}: no such model folder or .gguf file, and not a model preset "
                              f"({', '.join(PRESETS)})")
    if path.is_file():
        if path.suffix != ".gguf":
            raise CheckpointError(f"{path}: a model is a folder or a .gguf file")
        check_gguf(path)
        return
    check_model_dir(path)
    check_model_folder(path)


def check_tokenizer_spec(spec: str) -> None:
    """A tokenizer that loads (a model folder, a tokenizer folder, a .gguf file, the alias)."""
    from ..data.tokenizer import resolve_tokenizer

    resolve_tokenizer(spec)


def module_names(spec: str) -> list[str]:
    """The module names of model `spec`, from a model built on the meta device (no weights)."""
    import torch

    from ..core.model_source import resolve_model_path
    from ..core.weights import meta_model
    from ..lm.models import PRESETS, is_preset, scratch_config

    if is_preset(spec):
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(scratch_config(PRESETS[spec], _Sized(), 64))
    else:
        path = resolve_model_path(spec)
        if path.is_file():  # a .gguf: its config is in the file's metadata
            from transformers import AutoConfig, AutoModelForCausalLM

            try:
                config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name, trust_remote_code=False)
                with torch.device("meta"):
                    model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
            except Exception as exc:  # noqa: BLE001 - a damaged file is the file's fault
                raise CheckpointError(f"{path}: cannot read its model configuration: {exc}") from None
        else:
            model = meta_model(path)
    return [name for name, _ in model.named_modules() if name]


def check_lora_targets(spec: str, targets: list[str]) -> None:
    """Every target module name matches some module of the model (peft's rule: the name or its end)."""
    names = module_names(spec)
    for target in targets:
        if not any(name == target or name.endswith(f".{target}") for name in names):
            leaves = sorted({name.rsplit(".", 1)[-1] for name in names if not name.rsplit(".", 1)[-1].isdigit()})
            raise ConfigError(f"{target!r} is not a module of {spec}; its modules are named "
                              f"{', '.join(leaves[:20])}{', ...' if len(leaves) > 20 else ''}")


class _Sized:
    """A stand-in tokenizer for a preset's shapes: the module names do not depend on the vocabulary."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __len__(self) -> int:
        return 16
