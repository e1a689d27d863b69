"""Step time of token-assorted vs cot on the same model and data, measured interleaved.

Both strategies train the same tiny model on the same toy data (tests/stage2_toy.py);
steps alternate A, B, A, B… so machine noise hits both alike. Reported: median step
time (batch building + forward + backward + optimizer) and the time of building the
batch alone (the mixing itself). The mixing overhead should stay within 3 %.

    python benchmarks/bench_mixing_step.py [--steps 60] [--batch-size 32] [--model tiny]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import stage2_toy  # noqa: E402

from token_assorted.lm.config import TrainConfig
from token_assorted.lm.mixing import make_strategy
from token_assorted.lm.setup import setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", default="scratch-tiny")
    args = parser.parse_args()
    torch.set_num_threads(1)
    stage2_toy.register()
    with tempfile.TemporaryDirectory() as tmp:
        paths = stage2_toy.write_data(Path(tmp), n_train=512)
        run = setup(TrainConfig(task="toy", data=str(paths["train"]), out=str(Path(tmp) / "out"),
                                codes=str(paths["codes"]), model=args.model))
        layout = run.layout
    strategies = {"cot": make_strategy("cot"), "token-assorted": make_strategy("token-assorted")}
    optimizer = torch.optim.AdamW(run.model.parameters(), lr=1e-4)
    step_times = {name: [] for name in strategies}
    build_times = {name: [] for name in strategies}
    n = len(run.encoded)
    for step in range(args.steps + 5):
        for name, strategy in strategies.items():
            run.strategy, run.layout = strategy, layout
            indices = [(step * args.batch_size + i) % n for i in range(args.batch_size)]
            start = time.perf_counter()
            batch = run.method.batch(run, indices, seed=0, epoch=step)
            built = time.perf_counter()
            loss = run.model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step >= 5:  # warm-up steps are dropped
                step_times[name].append(time.perf_counter() - start)
                build_times[name].append(built - start)
    for name in strategies:
        print(f"{name:15s} step {1000 * statistics.median(step_times[name]):7.2f} ms  "
              f"batch building {1000 * statistics.median(build_times[name]):6.3f} ms")
    mixing = statistics.median(build_times["token-assorted"]) - statistics.median(build_times["cot"])
    step = statistics.median(step_times["cot"])
    print(f"mixing overhead (token-assorted batch building - cot batch building) / cot step: "
          f"{100 * mixing / step:.2f} %")
    print("note: token-assorted sequences are shorter, so its full step is usually faster than cot's; "
          "the overhead figure isolates the cost of the mixing itself")


if __name__ == "__main__":
    main()
