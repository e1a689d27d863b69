"""Seconds per optimizer step of Coconut (at every stage), Coconut-Pause and iCoT against CoT, interleaved.

Each method trains its own copy of the preset's model (same initialisation) on the same
generated questions of the preset's task; steps alternate CoT, Coconut stage 0, 1, …, S,
iCoT, CoT, … so machine noise hits all alike, in one process on one thread. A step is what
the trainer times: building the batch, the forward (Coconut: one pass over prompt ⊕ <bot>, one
per thought, one over the rest), the backward and the AdamW update.

    python benchmarks/bench_peer_step.py                       # the default preset (cpu)
    python benchmarks/bench_peer_step.py --preset cpu-long --steps 40

Prints one Markdown table (median ms per step and the ratio to CoT's) and writes --json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from token_assorted.data.schema import save_examples
from token_assorted.data.tasks import get_task
from token_assorted.lm.config import TrainConfig
from token_assorted.lm.setup import setup
from token_assorted.pipeline.preset import load_preset, train_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per method (after 3 warm-up steps)")
    parser.add_argument("--examples", type=int, default=2000, help="generated training questions")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    preset = load_preset(args.preset)
    task = get_task(preset.task)
    with tempfile.TemporaryDirectory() as tmp:
        save_examples(Path(tmp) / "train.jsonl", task.generate(args.examples, 0, **preset.data.options))
        runs = {}
        for method in ("cot", "coconut", "icot", "coconut-pause"):
            settings = {k: v for k, v in train_settings(preset, method).items() if k != "embedding_init"}
            config = TrainConfig(**{**settings, "task": preset.task, "data": str(Path(tmp) / "train.jsonl"),
                                    "out": str(Path(tmp) / method), "strategy": method, "progress": False})
            run = setup(config)
            # the schedule of a run over the preset's training set size and epochs
            per_epoch = -(-preset.data.train // config.batch_size)
            run.method.plan(run, per_epoch, per_epoch * config.epochs)
            runs[method] = (run, run.method.wrap(run.model), torch.optim.AdamW(run.model.parameters(), lr=1e-4))
    coconut = runs["coconut"][0].method.schedule
    # (label, method, step): Coconut's first step of each stage, the final phases of Coconut-Pause and iCoT
    cases = [("CoT", "cot", 0)]
    cases += [(f"Coconut stage {s} ({coconut.thoughts(s)} thoughts)", "coconut",
               0 if s == 0 else coconut.cot_steps + (s - 1) * coconut.stage_steps)
              for s in range(coconut.final_stage + 1)]
    cases.append(("Coconut-Pause, final stage", "coconut-pause", runs["coconut-pause"][0].method.final_start()))
    cases.append(("iCoT, no trace (its final phase)", "icot", runs["icot"][0].method.final_start()))
    times: dict[str, list[float]] = {label: [] for label, _, _ in cases}
    batch_size = preset.train.get("batch_size", 32)
    for step in range(args.steps + 3):
        for label, method, at in cases:
            run, module, optimizer = runs[method]
            indices = [(step * batch_size + i) % len(run.encoded) for i in range(batch_size)]
            start = time.perf_counter()
            epoch = at // run.method.steps_per_epoch
            loss = run.method.loss(module, run.method.batch(run, indices, 0, epoch, at))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step >= 3:  # warm-up steps are dropped
                times[label].append(time.perf_counter() - start)
    cot = statistics.median(times["CoT"])
    rows = [{"case": label, "ms_per_step": 1000 * statistics.median(values),
             "x_cot": statistics.median(values) / cot} for label, values in times.items()]
    print(f"preset {args.preset}, batch {batch_size}, {args.steps} steps each, one thread, interleaved\n")
    print("| method | ms / step (median) | × CoT |\n|---|---|---|")
    for row in rows:
        print(f"| {row['case']} | {row['ms_per_step']:.1f} | {row['x_cot']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"preset": args.preset, "steps": args.steps, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
