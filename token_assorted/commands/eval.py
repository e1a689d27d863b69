"""`token-assorted eval`: score a trained model dir on a data file.

Writes RESULTS.json (the figures) and RESULTS.predictions.jsonl (one line per question:
generated text with latent tokens, parsed answer, correctness, token counts).

Do the latent tokens carry the reasoning? `--intervene MODE` replaces every latent code the
model writes, as it writes it (random, shuffle, constant; none changes nothing), and
`--latent-chunks K` forces the answer to open with exactly K chunks of codes (0: text only;
all: as many as the question's reference trace has). Both are greedy only.

A Coconut model answers through its own loop (continuous thoughts are not tokens). Its
interventions change every thought it feeds back (noise, zero), and `--latent-chunks K`
gives it K steps' worth of thoughts (K x c; all: the count it was trained with).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import add_task_flags, task_options_from_args
from .flags import add_config_flags, given


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..generation.config import EvalConfig

    parser = subparsers.add_parser("eval", help="evaluate a trained model on a data file",
                                   description=__doc__)
    parser.add_argument("--model", required=True, type=Path, help="model dir written by `train`")
    parser.add_argument("--data", required=True, type=Path, help="JSONL / JSON file of examples")
    parser.add_argument("--task", default=None, help="task name (default: the one the model was trained on)")
    parser.add_argument("--out", required=True, type=Path, help="RESULTS.json to write")
    parser.add_argument("--device", default="auto", help="auto (a CUDA GPU when there is one), cpu, cuda or cuda:N")
    add_config_flags(parser, EvalConfig)
    add_task_flags(parser)
    parser.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    import sys

    from ..core.config import from_mapping
    from ..core.io import special_file
    from ..core.outdir import check_outputs, file_lock
    from ..core.terminal import printable
    from ..data.tasks import check_data_task
    from ..evaluation.evaluate import evaluate_loaded, fit_to_model, predictions_path, save_result
    from ..generation.config import EvalConfig
    from ..generation.generate import shipped_settings
    from ..generation.interventions import check_probe_options
    from ..lm.model_dir import load_model_dir, resolve_task

    config = from_mapping(EvalConfig, given(args, EvalConfig), "command line")
    check_probe_options(config)  # before any weights are read
    # A results file of a device or a pipe (/dev/null) is written in place, with no predictions file beside it.
    special = special_file(args.out)
    preds = None if special else predictions_path(args.out)
    check_outputs({"--out": None if special else args.out, "--out (its predictions file)": preds},
                  {"--data": args.data, "--model": args.model})
    loaded = load_model_dir(args.model, args.device)
    task = resolve_task(loaded, args.task, task_options_from_args(args))
    check_data_task(task, args.data)
    settings = shipped_settings(loaded.model)
    if settings:
        shown = ", ".join(f"{key}={value!r:.40}" for key, value in sorted(settings.items()))
        print(printable(f"note: {args.model}/generation_config.json sets {shown}; ignored: evaluation generates "
                        f"greedily from the weights"), file=sys.stderr)
    examples, skipped, limit = fit_to_model(loaded, task, task.load(args.data))
    if skipped:
        print(f"skipped {skipped} examples longer than the model takes ({limit} tokens as question, trace and "
              f"solution: max_length)", file=sys.stderr)
    with file_lock(args.out):
        result = evaluate_loaded(loaded, task, examples, config)
        probes = {key: getattr(config, key) for key in ("intervene", "latent_chunks")
                  if getattr(config, key) is not None}
        if config.intervene == "noise":
            probes["noise_scale"] = config.noise_scale
        extra = {"model": str(args.model), "data": str(args.data), **probes,
                 **({"skipped_too_long": skipped} if skipped else {})}
        written = save_result(result, args.out, extra, predictions=preds is not None)
    line = (f"{task.name}: accuracy {result.accuracy:.3f} on {result.n} | generated tokens "
            f"{result.avg_generated_tokens:.1f} (latent {result.avg_latent_tokens:.1f}) | "
            f"{result.seconds_per_example * 1000:.1f} ms/example")
    if result.sampled_accuracy is not None:
        line += f" | any-of-{config.samples} {result.sampled_accuracy:.3f}"
    line += "".join(f" | {key.replace('_', '-')} {value}" for key, value in probes.items())
    line += " | checked by " + ", ".join(f"{rule} ({count})" for rule, count in result.answer_rules.items())
    print(printable(line))
    print(printable(f"wrote {args.out} and {written}" if written else f"wrote {args.out} (a {special}: no "
                                                                       f"predictions file)"))
    return 0
