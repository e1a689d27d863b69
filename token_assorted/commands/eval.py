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


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a trained model on a data file",
                                   description=__doc__)
    parser.add_argument("--model", required=True, type=Path, help="model dir written by `train`")
    parser.add_argument("--data", required=True, type=Path, help="JSONL / JSON file of examples")
    parser.add_argument("--task", default=None, help="task name (default: the one the model was trained on)")
    parser.add_argument("--out", required=True, type=Path, help="RESULTS.json to write")
    parser.add_argument("--samples", type=int, default=0,
                        help="also draw N top-k samples per question (1-Feasible-N); 0 = greedy only")
    parser.add_argument("--top-k", type=int, default=10, help="top-k of the samples (default 10)")
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per generate call")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="generation length cap")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N examples")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--device", default="auto", help="auto (a CUDA GPU when there is one), cpu, cuda or cuda:N")
    parser.add_argument("--mixed-precision", default="auto", choices=["auto", "no", "bf16"],
                        help="auto: bf16 autocast on CUDA (as in training), fp32 on CPU")
    add_task_flags(parser)
    parser.add_argument("--intervene", default=None, metavar="MODE",
                        help="replace each latent code the model writes: none, random, shuffle (other "
                             "questions' codes) or constant; a Coconut model's thoughts: noise (a random direction "
                             "of --noise-scale times each thought's norm added) or zero (the zero vector fed back)")
    parser.add_argument("--intervene-seed", type=int, default=0, help="seed of the random and shuffled codes "
                                                                      "and of the noise directions")
    parser.add_argument("--noise-scale", type=float, default=4.0,
                        help="the norm of --intervene noise, in multiples of each thought's own norm")
    parser.add_argument("--constant-code", type=int, default=0, help="the code of --intervene constant")
    parser.add_argument("--latent-chunks", default=None, metavar="K",
                        help="force the answer to open with exactly K chunks of latent codes, then text "
                             "only (0: text-only CoT; all: the reference trace's chunks)")
    parser.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from ..evaluate import EvalConfig, evaluate_loaded, save_result
    from ..model_dir import load_model_dir, resolve_task
    from ..interventions import check_probe_options, parse_latent_chunks
    from ..terminal import printable

    config = EvalConfig(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, samples=args.samples,
                        top_k=args.top_k, seed=args.seed, limit=args.limit,
                        mixed_precision=args.mixed_precision, intervene=args.intervene,
                        intervene_seed=args.intervene_seed, constant_code=args.constant_code,
                        latent_chunks=parse_latent_chunks(args.latent_chunks), noise_scale=args.noise_scale)
    check_probe_options(config)  # before any weights are read
    loaded = load_model_dir(args.model, args.device)
    task = resolve_task(loaded, args.task, task_options_from_args(args))
    examples = task.load(args.data)
    result = evaluate_loaded(loaded, task, examples, config, args.model)
    probes = {key: getattr(config, key) for key in ("intervene", "latent_chunks")
              if getattr(config, key) is not None}
    if config.intervene == "noise":
        probes["noise_scale"] = config.noise_scale
    preds = save_result(result, args.out, {"model": str(args.model), "data": str(args.data), **probes})
    line = (f"{task.name}: accuracy {result.accuracy:.3f} on {result.n} | generated tokens "
            f"{result.avg_generated_tokens:.1f} (latent {result.avg_latent_tokens:.1f}) | "
            f"{result.seconds_per_example * 1000:.1f} ms/example")
    if result.sampled_accuracy is not None:
        line += f" | any-of-{args.samples} {result.sampled_accuracy:.3f}"
    line += "".join(f" | {key.replace('_', '-')} {value}" for key, value in probes.items())
    print(printable(line))
    print(printable(f"wrote {args.out} and {preds}"))
    return 0

