"""Answer latency of trained models at batch 1 and batch 32, measured in one run.

Usage (model dirs from a `token-assorted run` output):

    python benchmarks/bench_latency.py --models runs/prosqa-cpu/models/cot \
        runs/prosqa-cpu/models/token-assorted --data runs/prosqa-cpu/data/test.jsonl --n 64

For each model: seconds per answer (wall time of greedy generation / questions) and
generated tokens per answer, at batch 1 and batch 32, on the same questions. Prints a
Markdown table; pass --threads to pin torch's intra-op threads (default 1).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", type=Path, required=True, help="trained model dirs")
    parser.add_argument("--data", type=Path, required=True, help="questions (JSONL)")
    parser.add_argument("--n", type=int, default=64, help="questions per measurement")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args()


def main() -> None:
    import torch

    from token_assorted.generation.config import EvalConfig
    from token_assorted.generation.scoring import evaluate
    from token_assorted.lm.model_dir import load_model_dir, resolve_task

    args = parse_args()
    torch.set_num_threads(args.threads)
    print(f"# answer latency ({time.strftime('%Y-%m-%d %H:%M:%S')}, {platform.processor() or platform.machine()}, "
          f"torch threads {args.threads}, device {args.device})\n")
    print("| model | batch | s / answer | generated tokens / answer | tokens / s | accuracy |")
    print("|---|---|---|---|---|---|")
    for model_dir in args.models:
        loaded = load_model_dir(model_dir, args.device)
        task = resolve_task(loaded, None)
        examples = task.load(args.data)[: args.n]
        warm = EvalConfig(batch_size=4, max_new_tokens=8, limit=4, progress=False)
        evaluate(loaded.model, loaded.tokenizer, task, examples, warm, loaded.latent_vocab, loaded.chat_template)
        for batch in args.batch_sizes:
            config = EvalConfig(batch_size=batch, max_new_tokens=args.max_new_tokens, progress=False)
            result = evaluate(loaded.model, loaded.tokenizer, task, examples, config, loaded.latent_vocab,
                              loaded.chat_template)
            print(f"| {model_dir.name} | {batch} | {result.seconds_per_example:.4f} | "
                  f"{result.avg_generated_tokens:.1f} | {result.tokens_per_second:.0f} | "
                  f"{100 * result.accuracy:.1f} |")


if __name__ == "__main__":
    main()
