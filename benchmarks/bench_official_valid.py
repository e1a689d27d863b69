"""The three methods on the official ProsQA / ProntoQA valid splits, trained on generated data.

    python benchmarks/bench_official_valid.py prosqa --steps 3000 --out /tmp/ov-prosqa
    python benchmarks/bench_official_valid.py prontoqa --steps 3000 --out /tmp/ov-prontoqa

Generates an official-size training set (and a small valid split for per-epoch model
selection) with the project's own generator, then runs `token-assorted run --preset prosqa-scratch-small`
with the official valid file (../shared/data, or $TOKEN_ASSORTED_SHARED/data) as the test
split. The models are CPU-sized (`--model`, default the tiny Llama) and training stops after
`--steps` optimizer steps (the cosine schedule is fitted to that budget), so the result says
what a CPU budget buys at the official sizes, not what the paper's GPT-2 reaches.
Prints the run's results.json methods as a Markdown table and the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from token_assorted.data.schema import save_examples
from token_assorted.data.tasks import get_task

SHARED = Path(os.environ.get("TOKEN_ASSORTED_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
OFFICIAL_VALID = {"prosqa": ("prosqa", "prosqa_valid.json"), "prontoqa": ("prontoqa", "prontoqa_valid.json")}
TRAIN_SIZE = {"prosqa": 17886, "prontoqa": 9000}  # the official train split sizes


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=sorted(OFFICIAL_VALID))
    parser.add_argument("--out", type=Path, required=True, help="work and run directory")
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps per method")
    parser.add_argument("--vqvae-steps", type=int, default=300)
    parser.add_argument("--model", default="scratch-tiny", help="model preset (token_assorted.lm.models.PRESETS)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--valid", type=int, default=100, help="generated valid examples (model selection)")
    parser.add_argument("--limit", type=int, default=0, help="score only the first N official examples (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--codes", choices=["nearest", "search"], default="nearest",
                        help="the VQ-VAE's code assignment: nearest vector (what the runs in BENCHMARKS.md "
                             "used), or the paper preset's search (on a CPU, encoding the training traces "
                             "by search adds about an hour per task)")
    return parser.parse_args()


def official_splits(task_name: str, out: Path, n_train: int, n_valid: int, limit: int, seed: int) -> dict[str, Path]:
    """OUT/{train,valid,official_valid}.jsonl: generated train and valid, the official valid split as test.

    The official split's questions are removed from the generated ones, so none is trained on.
    """
    folder, name = OFFICIAL_VALID[task_name]
    official = SHARED / "data" / folder / name
    if not official.exists():
        raise SystemExit(f"{official}: the official valid split is not there (set TOKEN_ASSORTED_SHARED)")
    task = get_task(task_name)
    official_examples = task.load(official)[: limit or None]
    out.mkdir(parents=True, exist_ok=True)
    files = {"train": out / "train.jsonl", "valid": out / "valid.jsonl", "test": out / "official_valid.jsonl"}
    save_examples(files["test"], official_examples)
    held_out = {example.question for example in official_examples}
    generated = [e for e in task.generate(n_train + n_valid, seed) if e.question not in held_out]
    save_examples(files["train"], generated[n_valid:])
    save_examples(files["valid"], generated[:n_valid])
    return files


def main() -> None:
    args = parse_args()
    files = official_splits(args.task, args.out, TRAIN_SIZE[args.task], args.valid, args.limit, args.seed)
    train_file, valid_file, test_file = files["train"], files["valid"], files["test"]
    n_official = sum(1 for _ in open(test_file))

    overrides = {
        "data.train": 0, "data.valid": 0, "data.test": 0, "vqvae.steps": args.vqvae_steps,
        "vqvae.valid_every": args.vqvae_steps, "train.model": args.model, "train.batch_size": args.batch_size,
        "train.lr": args.lr, "train.epochs": 100, "train.max_steps": args.steps, "train.embedding_init": "codebook",
        "threads": 1, "parallel": 3,
    }
    if args.codes == "nearest":  # the paper preset trains with codes by search since 2026-11-28
        overrides.update({"vqvae.assignment": "nearest", "vqvae.copy_prefix": False, "vqvae.search_rerank": 0})
    command = [sys.executable, "-m", "token_assorted", "run", "--preset", "prosqa-scratch-small", "--task", args.task,
               "--out", str(args.out / "run"), "--train", str(train_file), "--valid", str(valid_file),
               "--test", str(test_file)]
    for key, value in overrides.items():
        command += ["--set", f"{key}={value}"]
    print("$ token-assorted", " ".join(command[3:]), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - started

    results = json.loads((args.out / "run" / "results.json").read_text())
    print(f"\n# {args.task}: official valid ({n_official} questions), {time.strftime('%Y-%m-%d %H:%M')}, "
          f"{platform.machine()}, {args.steps} steps of {args.batch_size}, model {args.model}, wall {wall:.0f} s")
    print("| method | accuracy | avg generated tokens | avg latent tokens | s / example |")
    print("|---|---|---|---|---|")
    for method in results["methods"]:
        print(f"| {method['name']} | {100 * method['accuracy']:.1f} % | {method['avg_generated_tokens']:.1f} | "
              f"{method['avg_latent_tokens']:.1f} | {method['seconds_per_example']:.4f} |")
    print(f"VQ-VAE: token accuracy {results['vqvae']['reconstruction_token_accuracy']:.3f}, "
          f"codebook usage {results['vqvae']['codebook_usage']:.3f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
