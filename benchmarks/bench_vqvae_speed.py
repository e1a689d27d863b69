"""Speed of a saved VQ-VAE: encoding questions to codes, and one training step.

    python benchmarks/bench_vqvae_speed.py --vqvae RUN/vqvae --task prosqa
    PYTHONPATH=/path/to/other/checkout python benchmarks/bench_vqvae_speed.py ...   # the same, another version

Encoding is what `vqvae encode` does (with `assignment: search`, the VQ-VAE's `encode_candidates`
codes are tried per chunk, or `--encode-candidates N`: 0 for all K; versions before the option
always try all K). Its wall time and its process CPU time are reported: on a machine shared with other
jobs the CPU time of a one-thread run is the steadier measure. The training step is a
forward pass (with search: over the encoder's candidates), backward and an AdamW step, on
batches of the same questions; its median over `--steps` steps (the first two are warm-up)
is reported. Weights are not saved. Questions default to the task's official valid split in
../shared/data (or $TOKEN_ASSORTED_SHARED/data). Prints one JSON object, with a hash of the
codes so that two versions can be checked to agree. The script runs against whichever
`token_assorted` is on PYTHONPATH (it needs only `load_vqvae`, `encode_examples` and the
chunking helpers, which older versions have too).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import time
from pathlib import Path

import torch

import token_assorted
from token_assorted.data.schema import Example
from token_assorted.data.tasks import get_task
from token_assorted.data.tasks.base import Task
from token_assorted.vqvae import LoadedVQVAE, encode_examples, load_vqvae
from token_assorted.vqvae.chunks import chunk_examples, collate

SHARED = Path(os.environ.get("TOKEN_ASSORTED_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
OFFICIAL_VALID = {"prosqa": "prosqa/prosqa_valid.json", "prontoqa": "prontoqa/prontoqa_valid.json"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vqvae", required=True, help="a `vqvae train` output directory")
    parser.add_argument("--task", required=True, choices=sorted(OFFICIAL_VALID))
    parser.add_argument("--data", default="", help="questions (default: the task's official valid split)")
    parser.add_argument("--n", type=int, default=100, help="questions to encode")
    parser.add_argument("--steps", type=int, default=12, help="training steps to time")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--encode-candidates", type=int, metavar="N",
                        help="override the VQ-VAE's encode_candidates (0: all K; not for versions without it)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = get_task(args.task)
    data = args.data or str(SHARED / "data" / OFFICIAL_VALID[args.task])
    examples = task.load(data)
    given = {} if args.encode_candidates is None else {"encode_candidates": args.encode_candidates}
    loaded = load_vqvae(args.vqvae, **given)

    started, cpu_started = time.perf_counter(), time.process_time()
    codes = encode_examples(loaded, task, examples[: args.n])
    encode_seconds, encode_cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started

    step_seconds, loss = train_steps(loaded, task, examples, args.steps, args.batch_size)
    print(json.dumps({
        "code": str(Path(token_assorted.__file__).parent), "vqvae": args.vqvae, "data": data, "threads": args.threads,
        "assignment": loaded.config.assignment, "copy_prefix": loaded.config.copy_prefix,
        "search_rerank": loaded.config.search_rerank,
        "encode_candidates": getattr(loaded.config, "encode_candidates", "all (no option)"),
        "encode_questions": args.n, "encode_seconds": round(encode_seconds, 2),
        "encode_cpu_seconds": round(encode_cpu_seconds, 2),
        "codes_md5": hashlib.md5(json.dumps(codes).encode()).hexdigest(),
        "train_steps": args.steps, "batch_size": args.batch_size,
        "median_step_seconds": round(statistics.median(step_seconds[2:] or step_seconds), 3),
        "last_loss": round(loss, 4)}, indent=2))


def train_steps(loaded: LoadedVQVAE, task: Task, examples: list[Example], steps: int,
                batch_size: int) -> tuple[list[float], float]:
    """Seconds of each of `steps` training steps on consecutive batches, and the last loss."""
    model = loaded.model.train()
    chunk_size = model.config.chunk_size
    items = [item for item in chunk_examples(loaded.tokenizer, task, examples, chunk_size, loaded.chat_template)
             if item.chunks]
    if len(items) < steps * batch_size:
        raise SystemExit(f"need {steps * batch_size} questions with a trace for {steps} steps, have {len(items)}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    torch.manual_seed(0)  # the search's random candidates
    seconds, loss = [], float("nan")
    for step in range(steps):
        pad_id = model.vocab.pad_id if hasattr(model, "vocab") else model.config.pad_id  # older versions
        batch = collate(items[step * batch_size:(step + 1) * batch_size], pad_id, model.config.max_prompt_len)
        started = time.perf_counter()
        output = model(batch.prompt_ids, batch.prompt_pad, batch.chunk_ids, batch.chunk_present)
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - started)
        loss = output.loss.item()
    return seconds, loss


if __name__ == "__main__":
    main()
