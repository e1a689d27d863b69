"""Stage-1 benchmark: encoding with search when only the encoder's N likeliest codes are scored.

    python benchmarks/bench_encode_candidates.py --vqvae DIR --task prosqa --candidates 8 16 32 0

For each N (`encode_candidates`; 0 = all K, the exact search) it encodes the task's official
valid split (or `--data FILE`) and reports:
- `seconds_per_100`: CPU seconds of `encode_examples` per 100 questions (one thread by default;
  on a shared machine the process's CPU time is steadier than the wall time, also reported);
- `same_as_exact`: the share of chunks whose code is the exact search's (N = 0 is run first);
- the reconstruction of the codes, as `vqvae evaluate` computes it (greedy decoding, token and
  exact-chunk accuracy), with the standard error over the questions of each accuracy and of its
  difference from the exact search's (paired: the same questions under both).
Prints one JSON object per N.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

from token_assorted.data.tasks import get_task
from token_assorted.vqvae import LoadedVQVAE, encode_examples, load_vqvae
from token_assorted.vqvae.chunks import ChunkedExample, chunk_examples, collate

SHARED = Path(os.environ.get("TOKEN_ASSORTED_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
VALID = {"prosqa": "prosqa/prosqa_valid.json", "prontoqa": "prontoqa/prontoqa_valid.json"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vqvae", required=True, metavar="DIR", help="a VQ-VAE trained with assignment 'search'")
    parser.add_argument("--task", required=True, choices=sorted(VALID))
    parser.add_argument("--data", help="questions (default: the task's official valid split)")
    parser.add_argument("--candidates", type=int, nargs="+", default=[0, 8, 16, 32],
                        help="values of encode_candidates to compare (0: all K, the exact search)")
    parser.add_argument("--n", type=int, default=0, help="first N questions only (0: all)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = get_task(args.task)
    examples = task.load(args.data or SHARED / "data" / VALID[args.task])
    examples = examples[:args.n] if args.n else examples
    exact_codes = exact_accuracy = None
    for size in [0] + [n for n in args.candidates if n != 0]:  # the exact search first: the reference
        loaded = load_vqvae(args.vqvae, encode_candidates=size)
        started, cpu_started = time.perf_counter(), time.process_time()
        codes = encode_examples(loaded, task, examples)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        items = chunk_examples(loaded.tokenizer, task, examples, loaded.config.chunk_size, loaded.chat_template)
        accuracy = per_question_accuracy(loaded, items, codes)  # (Q, 2) token, exact-chunk
        exact_codes = codes if exact_codes is None else exact_codes
        exact_accuracy = accuracy if exact_accuracy is None else exact_accuracy
        flat, flat_exact = sum(codes, []), sum(exact_codes, [])
        print(json.dumps({
            "vqvae": args.vqvae, "questions": len(examples), "chunks": len(flat), "encode_candidates": size,
            "search_rerank": loaded.config.search_rerank, "threads": args.threads,
            "seconds_per_100": round(100 * cpu / len(examples), 2),
            "wall_per_100": round(100 * wall / len(examples), 2),
            "same_as_exact": round(sum(a == b for a, b in zip(flat, flat_exact)) / max(len(flat), 1), 4),
            **summary(accuracy, exact_accuracy, items)}), flush=True)


@torch.no_grad()
def per_question_accuracy(loaded: LoadedVQVAE, items: list[ChunkedExample], codes: list[list[int]],
                          batch_size: int = 32) -> torch.Tensor:
    """(Q, 4): per question, tokens right, tokens, chunks right, chunks (greedy decoding of its codes)."""
    model, config = loaded.model, loaded.config
    counts = torch.zeros(len(items), 4)
    rows = [i for i, item in enumerate(items) if item.chunks]
    for start in range(0, len(rows), batch_size):
        block = rows[start:start + batch_size]
        batch = collate([items[i] for i in block], model.vocab.pad_id, config.max_prompt_len)
        grid = torch.tensor(sum((codes[i] for i in block), [])).view(-1, config.latents_per_chunk)
        decoded = model.tokens_of(batch.prompt_ids, batch.prompt_pad, grid, batch.chunk_present)  # (C, L)
        targets, owner = batch.targets, batch.chunk_present.nonzero()[:, 0]
        real, hits = targets != model.vocab.pad_id, decoded == targets
        per_chunk = torch.stack([(hits & real).sum(-1), real.sum(-1), hits.all(-1), torch.ones_like(owner)], -1)
        counts.index_add_(0, torch.tensor(block)[owner], per_chunk.float())  # (C, 4) summed per question
    return counts


def summary(counts: torch.Tensor, reference: torch.Tensor, items: list[ChunkedExample]) -> dict[str, float]:
    """Token and exact-chunk accuracy, their standard errors over the questions (ratio estimator),
    and the paired standard error of their difference from the reference's."""
    kept = counts[:, 3] > 0
    out = {}
    for name, right, total in (("token_accuracy", 0, 1), ("exact_chunk_accuracy", 2, 3)):
        value, error = ratio(counts[kept, right], counts[kept, total])
        base, _ = ratio(reference[kept, right], counts[kept, total])
        _, paired = ratio(counts[kept, right] - reference[kept, right], counts[kept, total])
        out.update({name: round(value, 4), f"{name}_se": round(error, 4),
                    f"{name}_minus_exact": round(value - base, 4), f"{name}_minus_exact_se": round(paired, 4)})
    return out


def ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> tuple[float, float]:
    """sum(x) / sum(n) over questions, and its standard error (the delta method, questions i.i.d.)."""
    q, value = len(numerator), float(numerator.sum() / denominator.sum())
    residual = numerator - value * denominator
    return value, math.sqrt(float((residual ** 2).sum()) / (q * (q - 1))) / float(denominator.mean())


if __name__ == "__main__":
    main()
