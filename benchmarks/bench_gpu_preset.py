"""The `prosqa-scratch-gpt2` preset (formerly `gpu`) on ProsQA, ProntoQA and the Keys-Finding Maze, a few minutes per task on one GPU.

    python benchmarks/bench_gpu_preset.py prosqa                      # one task per device call
    python benchmarks/bench_gpu_preset.py prosqa prontoqa keys-maze --out /tmp/gpu-preset
    python benchmarks/bench_gpu_preset.py keys-maze --smoke           # CPU: a handful of questions
    python benchmarks/bench_gpu_preset.py prosqa --peers              # + Coconut and iCoT (paper scale)
    python benchmarks/bench_gpu_preset.py prosqa --peers --smoke      # CPU check of that section

Each task runs `token-assorted run --preset prosqa-scratch-gpt2 --task TASK`: the GPT-2-size model from
scratch (12 layers, 768 wide), the paper's chunking (L = r = 16, K = 64) and the VQ-VAE's
search recipe, Sol-Only, CoT and Token Assorted on the same data. The preset's full
schedule (20,000 VQ-VAE steps, 30 epochs per method) is cut to the step budgets below so
that a task fits one device call; the learning-rate schedules are fitted to those budgets.

Data. ProsQA and ProntoQA train on the project's own generated data of the official train
size and are scored on the official valid split (../shared/data or
$TOKEN_ASSORTED_SHARED/data; its questions are removed from the generated data), as in
bench_official_valid.py; without it, on a generated test split. The maze uses the
generator's `small` preset (7x7, 1-2 keys) and reports 1-Feasible-10 (top-k 10 sampling)
beside greedy accuracy. Table 4.1's figures are printed beside ours; its maze is 20x20.

Sizes are estimates, not yet measured on a GPU. The one H100 measurement so far
(BENCHMARKS.md, "bench_gsm8k_gpu.py on one H100") fine-tuned a 135 M model at 0.24 s per
step of 32 sequences of ~340 tokens; a GPT-2-size step of 128 ProsQA sequences (~260 tokens)
should take 0.2-0.7 s. The VQ-VAE's search steps and Token Assorted's encoding of every
training trace (a search over codes per chunk) were not timed on a GPU. Budget per task:
VQ-VAE 500 steps, 150 LM steps per method (about one ProsQA epoch), evaluation on at most
300 questions: about 4-8 minutes. Run one task per device call under `timeout`; rerunning
with the same --out reuses every finished stage, so a stopped call continues on a warm
machine. Raise the budgets with --set (e.g. --set train.max_steps=600) once timed.
Writes OUT/bench_gpu_preset.json (or --json) and prints one Markdown table.

The other latent-reasoning methods (--peers). Coconut and iCoT join Sol-Only, CoT and Token
Assorted on the same data and model (GPT-2 size, from scratch: the papers fine-tune a
pre-trained GPT-2, so ours start further back). Their schedules are curricula over epochs, so
the 150-step cut above would stop them at their first phase: they get whole epochs instead,
one per phase. Coconut: CoT for 1 epoch, then stages 1-6 (c = 1, Coconut's ProsQA/ProntoQA
max_latent_stage) for 1 epoch each, then one epoch with every step replaced (the final phase of
tasks whose traces run past 6 steps): 8 epochs, about 1,120 steps of 128 ProsQA questions, each
step 2 + s forward passes. iCoT: 8 tokens per epoch (Deng et al.), removed one at a time, 6
epochs, the last with no trace. Not timed on a GPU yet: a Coconut step should cost 3-5 CoT steps, so Coconut alone is
probably 3-6 minutes per task on one H100; run one task per call, and cut with
--set method_overrides.coconut.epochs=N if needed. The Coconut paper's Table 1 is printed
beside them (Coconut 97.0 % / 14.2 tokens and iCoT 98.2 % / 8.2 on ProsQA; 99.8 % / 9.0 and
99.8 % / 3.0 on ProntoQA), and every row has its seconds per optimizer step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from bench_official_valid import OFFICIAL_VALID, SHARED, TRAIN_SIZE, official_splits

TASKS = ("prosqa", "prontoqa", "keys-maze")
# Paper Table 4.1: accuracy % / average generated tokens (maze: 1-Feasible-10).
PAPER = {
    "keys-maze": {"sol-only": (3.0, 645), "cot": (43.0, 1312), "token-assorted": (62.8, 374.6)},
    "prontoqa": {"sol-only": (93.8, 3.0), "cot": (98.8, 92.5), "token-assorted": (100.0, 7.7)},
    "prosqa": {"sol-only": (76.7, 8.2), "cot": (77.5, 49.4), "token-assorted": (96.2, 10.9)},
}
GPU_BUDGET = {
    "vqvae.steps": 500, "vqvae.valid_every": 250, "vqvae.progress": False,
    "train.epochs": 100, "train.max_steps": 150, "train.validation.limit": 100, "train.progress": False,
    "eval.limit": 300, "explain_samples": 2,
}
# Small-preset mazes: traces up to ~580 words (BENCHMARKS.md, "Keys-Finding Maze generator").
MAZE = {"data.train": 4000, "data.valid": 100, "data.test": 300, "eval.samples": 10, "eval.top_k": 10,
        "train.max_length": 768}
# --smoke: the same path at toy sizes (the GPT-2 architecture at CPU scale), under a minute on a CPU.
SMOKE = {
    "data.train": 24, "data.valid": 2, "data.test": 3, "vqvae.steps": 2, "vqvae.batch_size": 4,
    "vqvae.valid_every": 2, "vqvae.warmup": 1, "vqvae.d_model": 32, "vqvae.heads": 2,
    "vqvae.encoder_layers": 1, "vqvae.decoder_layers": 1, "vqvae.prompt_layers": 1, "vqvae.codebook_dim": 8,
    "vqvae.search_candidates": 4, "vqvae.search_explore": 1, "vqvae.search_rerank": 2, "vqvae.progress": False,
    "train.model": "scratch-gpt2-tiny", "train.epochs": 1, "train.max_steps": 2, "train.batch_size": 2,
    "train.progress": False, "eval.batch_size": 4, "eval.max_new_tokens": 24, "explain_samples": 1, "threads": 2,
}
SMOKE_MAZE = {"eval.samples": 2}
PEERS = ("coconut", "icot")
# Coconut paper, Table 1 (pre-trained GPT-2): accuracy % / generated tokens.
PEER_PAPER = {"prosqa": {"coconut": (97.0, 14.2), "icot": (98.2, 8.2)},
              "prontoqa": {"coconut": (99.8, 9.0), "icot": (99.8, 3.0)}}
# Whole epochs, one per phase of each curriculum (the shared 150-step cut is lifted for them).
PEER_BUDGET = {
    "method_overrides.coconut": {"epochs": 8, "max_steps": None, "coconut_thoughts_per_step": 1,
                                 "coconut_stages": 6, "coconut_epochs_per_stage": 1, "coconut_cot_epochs": 1},
    "method_overrides.icot": {"epochs": 6, "max_steps": None, "icot_tokens_per_epoch": 8, "icot_final_epochs": 1},
}
SMOKE_PEERS = {
    "method_overrides.coconut": {"epochs": 2, "max_steps": None, "coconut_stages": 1,
                                 "coconut_epochs_per_stage": 0.5, "coconut_cot_epochs": 1},
    "method_overrides.icot": {"epochs": 2, "max_steps": None, "icot_tokens_per_epoch": 8, "icot_final_epochs": 1},
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tasks", nargs="+", choices=TASKS)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_gpu_preset"), help="work and run directory")
    parser.add_argument("--json", type=Path, default=None, help="result file (default: OUT/bench_gpu_preset.json)")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run that checks the script end to end")
    parser.add_argument("--peers", action="store_true", help="also train Coconut and iCoT (their own budgets)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra preset overrides, as for token-assorted run (e.g. train.max_steps=800)")
    return parser.parse_args()


def task_overrides(task: str, out: Path, smoke: bool) -> dict:
    """The preset overrides for `task`: the budget, the data files, the maze's sampling."""
    budget = SMOKE if smoke else GPU_BUDGET
    if task == "keys-maze":
        maze = {**MAZE, **SMOKE_MAZE} if smoke else MAZE
        return {"task": task, "data.options": {}, **maze, **budget}  # the smoke's sizes win
    overrides = {"task": task, "data.options": {}, **budget}
    folder, name = OFFICIAL_VALID[task]
    if not (SHARED / "data" / folder / name).exists():
        print(f"{task}: no official valid split under {SHARED / 'data'}; scoring on a generated test split")
        return overrides
    n_train, n_valid = (SMOKE["data.train"], SMOKE["data.valid"]) if smoke else (TRAIN_SIZE[task], 100)
    files = official_splits(task, out / "data", n_train, n_valid, limit=3 if smoke else 0, seed=0)
    return {**overrides, "data.train": 0, "data.valid": 0, "data.test": 0,
            "data.files": {split: str(path) for split, path in files.items()}}


def method_rows(task: str, results: dict, timings: dict) -> list[dict]:
    """Per method: our test figures, the paper's, and the wall times."""
    rows = []
    for name, summary in zip(results["details"]["methods"], results["methods"]):
        run = results["details"]["methods"][name]["runs"][0]
        accuracy = run["sampled_accuracy"] if task == "keys-maze" else summary["accuracy"]
        paper = PAPER[task].get(name) or PEER_PAPER.get(task, {}).get(name)
        rows.append({"task": task, "method": name, "accuracy": accuracy, "greedy_accuracy": summary["accuracy"],
                     "n": summary["n"], "avg_generated_tokens": summary["avg_generated_tokens"],
                     "avg_latent_tokens": summary["avg_latent_tokens"],
                     "seconds_per_example": summary["seconds_per_example"],
                     "paper_accuracy": paper[0] / 100 if paper else None, "paper_tokens": paper[1] if paper else None,
                     "train_seconds": round(timings.get(f"train {name}", 0.0), 1),
                     "train_seconds_per_step": run.get("train_seconds_per_step"),
                     "eval_seconds": round(timings.get(f"eval {name}", 0.0), 1)})
    return rows


def run_task(task: str, args: argparse.Namespace) -> dict:
    from token_assorted.core.config import parse_overrides
    from token_assorted.pipeline.preset import load_preset
    from token_assorted.pipeline.run import run_pipeline

    work = args.out / task
    peers = (SMOKE_PEERS if args.smoke else PEER_BUDGET) if args.peers else {}
    overrides = {**task_overrides(task, work, args.smoke), **peers, **parse_overrides(args.overrides)}
    config = load_preset("prosqa-scratch-gpt2", overrides)
    if args.peers:
        config.methods += [name for name in PEERS if name not in config.methods]
    started = time.perf_counter()
    outcome = run_pipeline(config, work / "run", "prosqa-scratch-gpt2")
    return {"task": task, "methods": method_rows(task, outcome.results, outcome.timings),
            "vqvae": outcome.results["vqvae"], "stage_seconds": {k: round(v, 1) for k, v in outcome.timings.items()},
            "wall_seconds": round(time.perf_counter() - started, 1),
            "overrides": {k: v for k, v in overrides.items() if k != "data.files"},
            "test": "official valid" if "data.files" in overrides else "generated"}


def markdown(tasks: list[dict]) -> str:
    lines = ["| task | method | accuracy | generated tokens (latent) | s / example | s / train step | paper |",
             "|---|---|---|---|---|---|---|"]
    for task in tasks:
        for row in task["methods"]:
            paper = (f"{100 * row['paper_accuracy']:.1f} % / {row['paper_tokens']}"
                     if row["paper_accuracy"] is not None else "–")
            lines.append(f"| {task['task']} | {row['method']} | {100 * row['accuracy']:.1f} % of {row['n']} | "
                         f"{row['avg_generated_tokens']:.1f} ({row['avg_latent_tokens']:.1f}) | "
                         f"{row['seconds_per_example']:.4f} | {row['train_seconds_per_step'] or 0:.3f} | {paper} |")
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: this benchmark is sized for one GPU; use --smoke to check it on CPU")
        return 1
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    tasks = []
    for task in args.tasks:
        tasks.append(run_task(task, args))
        result = {"benchmark": "gpu-preset", "smoke": args.smoke, "device": device,
                  "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "tasks": tasks}
        # Written after each task, so a call stopped at the device limit keeps the finished ones.
        path = args.json or args.out / "bench_gpu_preset.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(markdown(tasks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
