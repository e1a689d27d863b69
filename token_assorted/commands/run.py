"""`token-assorted run`: the whole experiment in one command.

Generates the task's data, trains the VQ-VAE, trains Sol-Only, CoT and Token Assorted
LMs of the same size on the same data, scores them on the same held-out split, probes
whether the latent tokens carry the reasoning (interventions, latency dial) and writes
OUT/results.json, OUT/report.md, OUT/tokens_vs_accuracy.png and OUT/latency_dial.png.
Rerunning with the same OUT reuses every finished stage; a changed preset recomputes what
it changes.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from . import add_task_flags, positive_int, task_options_from_args

MAX_SEEDS = 100  # preset.PipelineConfig's limit, checked by argparse already


PRESET_PACKAGE = "token_assorted.pipeline.presets"


def preset_lines() -> str:
    """Every shipped preset with its `description`, for --help (read as plain YAML: no torch import)."""
    from importlib import resources

    import yaml

    entries = sorted((p for p in resources.files(PRESET_PACKAGE).iterdir() if p.name.endswith(".yaml")),
                     key=lambda p: p.name[:-5])
    lines = []
    for entry in entries:
        try:
            description = (yaml.safe_load(entry.read_text(encoding="utf-8")) or {}).get("description", "")
        except yaml.YAMLError:
            description = "(unreadable)"
        lines.append(f"  {entry.name[:-5]:<22} {description}")
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="the full experiment: data, VQ-VAE, 3 methods, eval, report",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog="presets (--preset NAME; README.md, \"Presets\"):\n" + preset_lines())
    parser.add_argument("--task", default=None,
                        help="task (default: the preset's, prosqa for cpu); qa: your own data (--fields ...)")
    parser.add_argument("--preset", default="cpu",
                        help="a shipped preset (listed below; cpu: the default, 2 CPU cores, ~15 min; the paper's "
                             "own setups: prosqa-gpt2, prontoqa-gpt2, maze, math-llama) or a YAML file")
    parser.add_argument("--strategies", nargs="*", default=[], metavar="NAME",
                        help="methods to add to sol-only/cot/token-assorted: the ablations all-replace, "
                             "curriculum, poisson, the control pause (TA-Pause: Token Assorted with <pause> in place "
                             "of its codes), 'all' (those four), the other latent-reasoning methods coconut and icot, "
                             "and coconut-pause (Coconut's curriculum with <pause> in place of its thoughts)")
    parser.add_argument("--seeds", type=positive_int, default=None,
                        help=f"repeat each method with N seeds (mean ± std), at most {MAX_SEEDS}")
    parser.add_argument("--out", type=Path, default=None, help="output dir (default: runs/<task>-<preset>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a preset value, e.g. --set train.epochs=3 --set data.train=500")
    parser.add_argument("--train", type=Path, default=None, metavar="FILE",
                        help="training examples, for tasks without a generator (gsm8k: the GSM8K JSONL, "
                             "iCoT text or MATH-style files); replaces generated data")
    parser.add_argument("--valid", type=Path, default=None, metavar="FILE",
                        help="validation examples (default: held out from the end of --train)")
    parser.add_argument("--test", type=Path, default=None, metavar="FILE", help="the held-out test examples")
    parser.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                        help="a folder holding train.jsonl and test.jsonl (and valid.jsonl); "
                             "the same as --train/--valid/--test for the files it holds")
    parser.add_argument("--model", default=None, metavar="MODEL",
                        help="the LM of every method: a Hub id ORG/NAME[@REVISION] (from the HF cache; downloaded "
                             "only with HF_HUB_OFFLINE=0), a local Hugging Face model folder, a .gguf file or a "
                             "random-init size (scratch-tiny, scratch-gpt2, ...); a pretrained model's tokenizer is "
                             "the VQ-VAE's too")
    add_task_flags(parser)
    parser.add_argument("--force", action="store_true",
                        help="write into --out even if it holds files that are not those of a run of ours "
                             "(ours are written over; a file we did not write is never deleted)")
    parser.add_argument("--resume", action="store_true",
                        help="accepted for symmetry with train: a rerun with the same --out always resumes "
                             "(finished stages are reused, training continues from its last checkpoint)")
    parser.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    from ..core.config import parse_overrides
    from ..core.devices import is_main_process
    from ..core.errors import ConfigError
    from ..core.outdir import check_outputs, claimed
    from ..lm.methods import names_of
    from ..lm.models import is_preset
    from ..pipeline.preset import check_data_files, check_models, load_preset, preset_path
    from ..pipeline.resources import check_resources, run_inputs
    from ..pipeline.run import run_pipeline

    overrides = parse_overrides(args.overrides)
    labels = {}  # how the user gave each override, for errors that only it causes
    if args.task and args.task != load_preset(args.preset).task:
        # The preset's generator options belong to its own task.
        overrides = {"task": args.task, "data.options": {}, **overrides}
        labels.update({"task": f"--task {args.task}", "data.options": f"--task {args.task}"})
    files = {split: str(getattr(args, split)) for split in ("train", "valid", "test") if getattr(args, split)}
    if args.data_dir is not None:
        found = {split: str(args.data_dir / f"{split}.jsonl") for split in ("train", "valid", "test")
                 if (args.data_dir / f"{split}.jsonl").is_file()}
        if "train" not in found or "test" not in found:
            raise ConfigError(f"--data-dir {args.data_dir}: expected train.jsonl and test.jsonl in it")
        files = {**found, **files}
    if files:
        overrides["data.files"] = files
        labels["data.files"] = "--train/--valid/--test/--data-dir"
    if args.seeds is not None:
        overrides["seeds"] = args.seeds
        labels["seeds"] = f"--seeds {args.seeds}"
    if args.model is not None:
        overrides["train.model"] = args.model
        labels["train.model"] = f"--model {args.model}"
        if not is_preset(args.model):  # the VQ-VAE must read traces with the LM's own tokenizer
            overrides["vqvae.tokenizer"] = args.model
            labels["vqvae.tokenizer"] = f"--model {args.model}"
    for name, value in task_options_from_args(args).items():  # one key each: a preset's others stay
        overrides[f"data.task_options.{name}"] = value
        labels[f"data.task_options.{name}"] = f"--{name.replace('_', '-')}"
    config = load_preset(args.preset, overrides, labels)
    known, peers = (*names_of("ablation"), *names_of("control")), names_of("peer")
    extra = list(known) if "all" in args.strategies else args.strategies
    for name in extra:
        if name not in (*known, *peers) and name not in config.methods:
            raise ConfigError(f"--strategies: unknown method {name!r}; choose from "
                              f"{', '.join((*known, *peers))} or all ({', '.join(known)})")
        if name not in config.methods:
            config.methods.append(name)
    preset_name = Path(args.preset).stem
    out = args.out or Path("runs") / f"{config.task}-{preset_name}"
    check_data_files(config, preset_name)
    check_models(config)  # a Hub id neither cached nor downloadable: one line, before any stage
    # Everything the preset names (models, tokenizers, devices, LoRA targets) before any stage runs.
    check_resources(config, str(preset_path(args.preset)), {**{key: f"--set {key}={value}" for key, value in
                                                               parse_overrides(args.overrides).items()}, **labels})
    check_outputs({"--out": out}, run_inputs(config), folders=["--out"])
    # A user's own folder is never written over, and a second command writing into the same
    # folder is refused while the first holds its lock. Under torchrun the main process claims
    # and locks; the others follow it (pipeline/run.py).
    with claimed(out, "run", force=args.force, preset=preset_name, task=config.task) if is_main_process() \
            else contextlib.nullcontext():
        run_pipeline(config, out, preset_name)
    return 0
