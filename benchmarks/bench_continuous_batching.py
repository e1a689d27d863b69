"""Evaluation engines on the CPU: today's static batches (`generation.generate_ids`) against transformers'
continuous batching (`model.generate_batch`), on the same questions, greedy.

    python benchmarks/bench_continuous_batching.py --model MODEL_DIR --data FILE [--limit 200] [--batch-size 64]

Prints one JSON line per engine: wall seconds, generated tokens per second, and how many answers
are token for token those of `generate_ids` (the static batches' own answers: all of them).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from token_assorted.data.encoding import encode_prompt
from token_assorted.generation.config import EvalConfig
from token_assorted.generation.generate import _cut_at_eos, generate_ids
from token_assorted.generation.scoring import default_max_new_tokens
from token_assorted.lm.model_dir import load_model_dir, resolve_task


def continuous(model, tokenizer, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id)
    outputs = model.generate_batch(inputs=prompts, generation_config=config, progress_bar=False)
    # Request ids are "req_<i>" in the order of the prompts.
    ordered = sorted(outputs.values(), key=lambda out: int(str(out.request_id).rsplit("_", 1)[-1]))
    return [_cut_at_eos(list(out.generated_tokens), tokenizer.eos_token_id) for out in ordered]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    loaded = load_model_dir(args.model, device="cpu")
    task = resolve_task(loaded, None)
    examples = task.load(args.data)[: args.limit]
    prompts = [encode_prompt(loaded.tokenizer, task, ex, loaded.chat_template) for ex in examples]
    budget = default_max_new_tokens(loaded.tokenizer, task, examples)
    config = EvalConfig(batch_size=args.batch_size, progress=False, max_new_tokens=budget, mixed_precision="no")
    static = generate_ids(loaded.model, loaded.tokenizer, prompts, config)
    tokens = sum(map(len, static.ids))
    common = {"questions": len(prompts), "max_new_tokens": budget, "threads": 1}
    print(json.dumps({"engine": "generate_ids (static batches)", "batch_size": args.batch_size,
                      "seconds": round(static.seconds, 2), "tokens_per_second": round(tokens / static.seconds, 1),
                      "same_answers": len(prompts), **common}))
    try:
        started = time.perf_counter()
        answers = continuous(loaded.model, loaded.tokenizer, prompts, budget)
        seconds = time.perf_counter() - started
        same = sum(a == b for a, b in zip(answers, static.ids))
        print(json.dumps({"engine": "generate_batch (continuous batching)", "seconds": round(seconds, 2),
                          "tokens_per_second": round(sum(map(len, answers)) / seconds, 1), "same_answers": same,
                          **common}))
    except Exception as exc:
        print(json.dumps({"engine": "generate_batch (continuous batching)", "error": f"{type(exc).__name__}: {exc}"[:300],
                          **common}))


if __name__ == "__main__":
    main()
