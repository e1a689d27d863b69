"""A preset, everything `token-assorted run` does, and every stage's config built from it.

Presets are YAML files (package data `token_assorted/presets/*.yaml`, or any path) parsed into
`PipelineConfig`; unknown keys are errors. The `vqvae:` and `train:` sections (and
`method_overrides:`) hold options of the stages' own configs, `VQVAETrainConfig` and
`TrainConfig`, less those the pipeline sets itself (the task, the data, the folders);
`eval:` is an `EvalConfig`. `vqvae_config` and `train_config` build the stages' configs from
a preset, and `load_preset` builds every one of them at once, with placeholder paths, and
runs each stage's own checks on it: a bad preset fails in seconds, naming the file and the
key, before the first stage runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from ..core.config import (Bound, at_least, check_types, from_mapping, load_yaml, parse_with_overrides, short_repr,
                           within, with_overrides)
from ..core.devices import check_precision
from ..core.errors import ConfigError
from ..data.tasks import Task, get_task
from ..evaluation.claims import ClaimThresholds
from ..evaluation.probes import ProbeSettings, check_settings
from ..generation.config import EvalConfig
from ..lm.config import TrainConfig, check_config
from ..lm.methods import METHOD_NAMES, names_of
from ..vqvae.options import VQVAETrainConfig

BASE_METHODS = (*names_of("baseline"), *names_of("method"))  # every run: Sol-Only, CoT, Token Assorted
# Keys the pipeline sets itself in the stage configs (a preset may not).
VQVAE_OWNED = ("task", "task_options", "data", "valid", "out")
TRAIN_OWNED = ("task", "task_options", "data", "valid", "out", "strategy", "vqvae", "codes", "seed")
EVAL_PROBES = ("intervene", "intervene_seed", "constant_code", "latent_chunks", "noise_scale")  # `probes:` sets them
PLACEHOLDER = Path("<run>")  # the output folder while a preset is only being checked


@dataclass
class DataSettings:
    """The generated splits (held-out questions never appear in train)."""

    train: int = 4000
    valid: int = 100  # per-epoch validation inside training (best epoch kept)
    test: int = 300  # the held-out set every method is scored on
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # the task generator's options
    # Tasks without a generator (gsm8k): user-supplied files {"train": PATH, "test": PATH,
    # "valid": PATH (optional)}; the sizes above then cap each split (0: all of it), and
    # without a valid file the last `valid` training examples become the valid split.
    files: dict[str, str] = field(default_factory=dict)
    # The generic task's options (qa: fields, answer_match, step_split), given to every stage
    # and recorded with the VQ-VAE and each model (run --fields/--answer-match/--step-split).
    task_options: dict[str, Any] = field(default_factory=dict)

    # Sizes of 0 mean "all of it" for given files; generated splits need >= 1 (check_preset).
    LIMITS: ClassVar[dict[str, Bound]] = {"train": at_least(0), "valid": at_least(0), "test": at_least(0),
                                          "seed": at_least(0)}


@dataclass
class PipelineConfig:
    """A preset: everything `token-assorted run` does."""

    task: str = "prosqa"
    description: str = ""
    data: DataSettings = field(default_factory=DataSettings)
    vqvae: dict[str, Any] = field(default_factory=dict)  # VQVAETrainConfig fields (not task/data/out)
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields shared by every method
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # per strategy
    methods: list[str] = field(default_factory=lambda: list(BASE_METHODS))
    seeds: int = 1
    eval: EvalConfig = field(default_factory=EvalConfig)  # max_new_tokens None: the longest test trace + 16
    probes: ProbeSettings = field(default_factory=ProbeSettings)  # interventions and dial of latent models
    claims: ClaimThresholds = field(default_factory=ClaimThresholds)  # the four checks of the paper's claim
    explain_samples: int = 3  # traces with decoded latents shown in report.md
    threads: int = 0  # torch intra-op threads (0: leave torch's default)
    parallel: int = 1  # models trained at once in worker processes of one thread each (CPU: cores)

    LIMITS: ClassVar[dict[str, Bound]] = {"seeds": within(1, 100), "explain_samples": at_least(0),
                                          "threads": at_least(0), "parallel": at_least(1)}


# --------------------------------------------------------------------------- the stages' configs
def tokenizer_spec(config: PipelineConfig) -> str:
    """What the tokenizer stage builds from: "word" (the data's words) or a model's tokenizer."""
    return config.vqvae.get("tokenizer", "word")


def vqvae_config(config: PipelineConfig, data: Path, tokenizer: Path, out: Path,
                 source: str = "preset") -> VQVAETrainConfig:
    """Stage 1's config: the preset's `vqvae:` section on the pipeline's data and tokenizer."""
    owned = {"task": config.task, "task_options": config.data.task_options, "data": str(data / "train.jsonl"),
             "valid": str(data / "valid.jsonl"), "out": str(out), "tokenizer": str(tokenizer)}
    return from_mapping(VQVAETrainConfig, {**config.vqvae, **owned}, source, "vqvae.")


def train_settings(config: PipelineConfig, method: str) -> dict[str, Any]:
    """The preset's options of one method: `train:` with its `method_overrides:` on top."""
    return {**config.train, **config.method_overrides.get(overrides_of(config, method), {})}


def overrides_of(config: PipelineConfig, method: str) -> str:
    """Whose `method_overrides` section a method takes: its own, or a control's model's (TA-Pause draws
    Token Assorted's m, Coconut-Pause follows Coconut's curriculum) when it has none."""
    mirrors = {"pause": "token-assorted", "coconut-pause": "coconut"}
    if method in mirrors and method not in config.method_overrides:
        return mirrors[method]
    return method


def train_config(config: PipelineConfig, method: str, seed_index: int, data: Path, codes: Path, out: Path,
                 source: str = "preset") -> TrainConfig:
    """Stage 2's config of one (method, seed): the preset's settings on the pipeline's data and codes."""
    settings = train_settings(config, method)
    section = overrides_of(config, method)
    prefix = f"method_overrides.{section}." if section in config.method_overrides else "train."
    return from_mapping(TrainConfig, {**settings, "task": config.task, "task_options": config.data.task_options,
                                      "strategy": method, "seed": seed_index, "data": str(data / "train.jsonl"),
                                      "valid": str(data / "valid.jsonl"), "out": str(out), "codes": str(codes)},
                        source, prefix)


def eval_config(config: PipelineConfig, max_new_tokens: int) -> EvalConfig:
    """The eval stage's config (the probes add their own fields), with the budget resolved."""
    return dataclasses.replace(config.eval, max_new_tokens=max_new_tokens)


# --------------------------------------------------------------------------- loading and checking
def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("token_assorted.pipeline.presets").iterdir()
                  if p.name.endswith(".yaml"))


def preset_path(spec: str | Path) -> Path:
    """A shipped preset by name, or a YAML file path."""
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.exists():  # a device or a folder: read_text names what it is
        return path
    candidate = resources.files("token_assorted.pipeline.presets") / f"{spec}.yaml"
    if not candidate.is_file():
        raise ConfigError(f"unknown preset {spec!r}; shipped presets: {', '.join(preset_names())} "
                          f"(or pass a YAML file)")
    return Path(str(candidate))


def load_preset(spec: str | Path, overrides: dict[str, Any] | None = None,
                labels: dict[str, str] | None = None) -> PipelineConfig:
    """Parse a preset (typed, limits checked, unknown keys rejected), apply dotted `overrides`, and
    build and check every stage's config.

    An error that only the overrides cause is blamed on the first override that causes it
    (`labels[key]`, default `--set KEY=VALUE`), not on the preset file.
    """
    path = preset_path(spec)
    mapping = load_yaml(path)
    if not mapping:  # an empty file (or comments only) would silently run the default experiment
        raise ConfigError(f"{path}: empty preset (no settings); start from a shipped one "
                          f"({', '.join(preset_names())}) or pass --preset NAME")

    def parse(applied: dict[str, Any], source: str) -> PipelineConfig:
        config = from_mapping(PipelineConfig, with_overrides(mapping, applied), source)
        check_preset(config, source)
        return config

    return parse_with_overrides(parse, overrides or {}, str(path), labels)


def check_preset(config: PipelineConfig, source: str = "preset") -> None:
    """Names, sections and every stage's config, checked by the stage's own checks."""
    task = get_task(config.task, **config.data.task_options)
    _check_data(config, task, source)
    for name in [*config.methods, *config.method_overrides]:
        if name not in METHOD_NAMES:
            raise ConfigError(f"{source}: unknown method {name!r}; choose from {', '.join(METHOD_NAMES)}")
    _check_section(config.vqvae, VQVAE_OWNED, VQVAETrainConfig, source, "vqvae.")
    vqvae_config(config, PLACEHOLDER, PLACEHOLDER, PLACEHOLDER, source)  # built, so checked by its own checks
    _check_section(config.train, TRAIN_OWNED, TrainConfig, source, "train.")
    for name, section in config.method_overrides.items():
        _check_section(section, TRAIN_OWNED, TrainConfig, source, f"method_overrides.{name}.")
    for method in dict.fromkeys([*config.methods, *config.method_overrides]):
        section = overrides_of(config, method)
        prefix = f"method_overrides.{section}." if section in config.method_overrides else "train."
        train = train_config(config, method, 0, PLACEHOLDER, PLACEHOLDER, PLACEHOLDER, source)
        check_config(train, source, prefix)
    taken = sorted(key for key in EVAL_PROBES if getattr(config.eval, key) != getattr(EvalConfig(), key))
    if taken:
        raise ConfigError(f"{source}: eval: {', '.join(taken)} set by the probes; use the probes: section")
    try:
        check_precision(config.eval.mixed_precision)
    except ConfigError as exc:
        raise ConfigError(f"{source}: eval.{exc}") from None
    codebook_size = config.vqvae.get("codebook_size", VQVAETrainConfig().codebook_size)
    check_settings(config.probes, codebook_size, source)


def _check_data(config: PipelineConfig, task: Task, source: str) -> None:
    options = task.generator_options()
    unknown = sorted(map(str, set(config.data.options) - set(options)))
    if unknown:
        raise ConfigError(f"{source}: unknown {config.task} generator option(s) {', '.join(unknown)}; "
                          f"valid: {', '.join(options) or 'none'}")
    for name, value in config.data.options.items():  # `nodes: six` fails here, not inside the generator
        kind, default = options[name][0], options[name][1]
        if value is None and default is None:
            ok = True  # "the generator's own default"
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind)
        if not ok:
            raise ConfigError(f"{source}: data.options.{name}: expected {'a number' if kind is float else kind.__name__}, "
                              f"got {short_repr(value)}")
    if task.has_generator and not config.data.files:  # with files, 0 means "all of it"
        for split in ("train", "valid", "test"):
            if getattr(config.data, split) < 1:
                raise ConfigError(f"{source}: data.{split}: must be >= 1 (examples to generate), "
                                  f"got {getattr(config.data, split)}")


def _check_section(section: dict[str, Any], owned: tuple[str, ...], cls: type, source: str, prefix: str) -> None:
    """A section's keys: none the pipeline sets, none the stage's config lacks; then their types."""
    where = f"{source}: {prefix.rstrip('.')}"
    taken = sorted(set(section) & set(owned))
    if taken:
        raise ConfigError(f"{where}: {', '.join(taken)} set by the pipeline itself; remove them")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: "
                          f"{', '.join(sorted(names - set(owned)))}")
    check_types(cls, section, source, prefix)


def model_specs(config: PipelineConfig) -> list[str]:
    """Every model and tokenizer a preset names (train.model, each method's, vqvae.tokenizer), once each."""
    specs = [config.train.get("model"), *(section.get("model") for section in config.method_overrides.values()),
             config.vqvae.get("tokenizer")]
    return list(dict.fromkeys(str(spec) for spec in specs if spec))


def check_models(config: PipelineConfig) -> None:
    """Make every Hub id the preset names available now (cached, or downloaded when allowed), so that
    one that is neither fails in one line before the first stage rather than after the VQ-VAE."""
    from ..core.model_source import is_hub_id, resolve_hub_model

    for spec in model_specs(config):
        if is_hub_id(spec):
            resolve_hub_model(spec)


def check_data_files(config: PipelineConfig, source: str = "preset") -> None:
    """Data files, when given, name existing train and test files; tasks with no generator need them."""
    from ..data.sources import exists

    files = config.data.files
    unknown = sorted(set(files) - {"train", "valid", "test"})
    if unknown:
        raise ConfigError(f"{source}: data.files: unknown split(s) {', '.join(unknown)}; use train, valid, test")
    if not files:
        if type(get_task(config.task, **config.data.task_options)).generate is Task.generate:
            raise ConfigError(f"{source}: task {config.task!r} has no generator; give its data files "
                              f"(token-assorted run --train FILE --test FILE [--valid FILE])")
        return
    for split in ("train", "test"):
        if not files.get(split):
            raise ConfigError(f"{source}: data.files needs a {split} file (--{split} FILE)")
    for split, path in files.items():
        if path and not exists(path):  # a file, a saved data set folder or hf:NAME (sources.py)
            raise ConfigError(f"{source}: {split} file {path} not found")
