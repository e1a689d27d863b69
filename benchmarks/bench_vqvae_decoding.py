"""Stage-1 benchmark: a saved VQ-VAE's reconstruction under each way of choosing its codes.

    python benchmarks/bench_vqvae_decoding.py --vqvae DIR --task prosqa --rerank 0 4   # search models
    python benchmarks/bench_vqvae_decoding.py --vqvae DIR --task prontoqa --n 100

The valid split defaults to the official one in ../shared/data (or $TOKEN_ASSORTED_SHARED/data);
`--data FILE` evaluates another file. `--rerank N` (search models) changes the codes: of each
chunk's N most likely codes, the one whose greedy decoding misses the fewest tokens. Prints one
JSON object per setting: the metrics and the seconds the evaluation took.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from token_assorted.data.tasks import get_task
from token_assorted.vqvae import evaluate_reconstruction, load_vqvae

SHARED = Path(os.environ.get("TOKEN_ASSORTED_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
# GSM8K: the first 200 test questions, as bench_vqvae.py validates on.
VALID = {"prosqa": "prosqa/prosqa_valid.json", "prontoqa": "prontoqa/prontoqa_valid.json",
         "gsm8k": "gsm8k/test.jsonl"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vqvae", required=True, metavar="DIR", help="trained VQ-VAE directory")
    parser.add_argument("--task", required=True, choices=sorted(VALID))
    parser.add_argument("--data", help="examples to evaluate (default: the task's official valid split)")
    parser.add_argument("--rerank", type=int, nargs="+", default=[-1],
                        help="search models: codes re-ranked by their decoding (0: none; default: as saved)")
    parser.add_argument("--n", type=int, default=0, help="first N examples only (0: all)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = get_task(args.task)
    examples = task.load(args.data or SHARED / "data" / VALID[args.task])
    examples = examples[:200] if args.task == "gsm8k" and not args.data else examples
    examples = examples[:args.n] if args.n else examples
    for rerank in args.rerank:
        loaded = load_vqvae(args.vqvae, search_rerank=None if rerank < 0 else rerank)
        started = time.perf_counter()
        metrics = evaluate_reconstruction(loaded, task, examples, batch_size=args.batch_size)
        seconds = time.perf_counter() - started
        print(json.dumps({"vqvae": args.vqvae, "task": args.task, "examples": len(examples),
                          "search_rerank": loaded.config.search_rerank, "threads": args.threads,
                          "seconds": round(seconds, 1), **metrics}), flush=True)


if __name__ == "__main__":
    main()
