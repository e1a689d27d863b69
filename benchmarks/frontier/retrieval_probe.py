"""How soon does a tiny LM trained from scratch learn to retrieve the trace's facts from the prompt?

A diagnostic of the issue-25 sweep. It trains one scratch Llama on CoT (or Sol-Only) sequences,
one thread, a plain AdamW loop with warm-up and cosine decay, and every `--every` steps prints,
for the first valid question's trace, the teacher-forced accuracy (over 200 valid questions) of
each content word position, and the share of questions whose whole target is predicted right.
A retrieval the model has learned shows as a position near 100 %; one it guesses among the
concepts that could fit the template (the right depth, a leaf) stays near 1 / (candidates).

    python benchmarks/frontier/retrieval_probe.py DATA_DIR TOKENIZER_DIR --steps 6000 [--layers 3]

DATA_DIR holds train.jsonl and valid.jsonl (ProsQA format), TOKENIZER_DIR a tokenizer saved by
a run (for instance OUT/vqvae of `token-assorted run` on the same data).
"""
from __future__ import annotations

import argparse
import collections
import math
import random
import time

import torch
from transformers import AutoModelForCausalLM

from token_assorted.data.encoding import encode_example
from token_assorted.data.tasks import get_task
from token_assorted.data.tokenizer import load_tokenizer
from token_assorted.lm.models import Preset, scratch_config

FILLER = {"is", "a", ".", "Every", "###", "<eos>"}  # template words, predictable without the prompt


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data")
    parser.add_argument("tokenizer")
    parser.add_argument("--task", default="prosqa")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=0.05, help="fraction of the steps")
    parser.add_argument("--sol", action="store_true", help="train on the solution only (Sol-Only)")
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = arguments()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    tokenizer, task = load_tokenizer(args.tokenizer), get_task(args.task)
    train = [encode_example(tokenizer, task, e) for e in task.load(f"{args.data}/train.jsonl")]
    valid = [encode_example(tokenizer, task, e) for e in task.load(f"{args.data}/valid.jsonl")][:200]
    preset = Preset("llama", args.layers, args.width, args.heads, 4 * args.width)
    model = AutoModelForCausalLM.from_config(scratch_config(preset, tokenizer, 512))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    warm = max(1, int(args.warmup * args.steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps))))

    def sequence(example):
        target = example.solution_ids if args.sol else example.trace_ids + example.solution_ids
        return example.prompt_ids + target, [-100] * len(example.prompt_ids) + target

    def batch(items):
        pairs = [sequence(e) for e in items]
        width = max(len(ids) for ids, _ in pairs)
        ids = torch.full((len(pairs), width), tokenizer.pad_token_id)
        labels = torch.full((len(pairs), width), -100)
        mask = torch.zeros((len(pairs), width), dtype=torch.long)
        for row, (x, y) in enumerate(pairs):  # right padding: positions match the unpadded sequence
            ids[row, :len(x)], labels[row, :len(y)], mask[row, :len(x)] = torch.tensor(x), torch.tensor(y), 1
        return ids, labels, mask

    def probe() -> tuple[str, float]:
        model.eval()
        hits, whole = collections.defaultdict(list), []
        with torch.no_grad():
            for example in valid:
                ids, _ = sequence(example)
                guess = model(torch.tensor([ids])).logits[0].argmax(-1).tolist()
                start = len(example.prompt_ids)
                right = [guess[pos - 1] == ids[pos] for pos in range(start, len(ids))]
                for j, ok in enumerate(right):
                    hits[j].append(ok)
                whole.append(all(right))
        model.train()
        ids, _ = sequence(valid[0])
        words = tokenizer.convert_ids_to_tokens(ids[len(valid[0].prompt_ids):])
        return " ".join(f"{w}:{100 * sum(hits[j]) / len(hits[j]):.0f}"
                        for j, w in enumerate(words) if w not in FILLER), sum(whole) / len(whole)

    rng, order, began = random.Random(args.seed), [], time.time()
    for step in range(args.steps):
        if len(order) < args.batch:  # a fresh permutation of the training set each pass
            order += rng.sample(range(len(train)), len(train))
        ids, labels, mask = batch([train[order.pop()] for _ in range(args.batch)])
        loss = model(input_ids=ids, labels=labels, attention_mask=mask).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if (step + 1) % args.every == 0:
            positions, whole = probe()
            print(f"step {step + 1} loss {loss.item():.3f} whole-target {whole:.2f} | {positions} | "
                  f"{time.time() - began:.0f}s", flush=True)


if __name__ == "__main__":
    main()
