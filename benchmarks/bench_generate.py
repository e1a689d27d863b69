"""Generation throughput (examples/s, one core) of every task with a generator, and the
statistics of generated ProsQA / ProntoQA data next to the official files.

    python benchmarks/bench_generate.py [--n 2000] [--seed 0]

The official files are read from ../shared/data (or $TOKEN_ASSORTED_SHARED/data) when present.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import Counter
from pathlib import Path

from token_assorted.data.schema import Example
from token_assorted.data.tasks import TASK_NAMES, Task, get_task

SHARED = Path(os.environ.get("TOKEN_ASSORTED_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
OFFICIAL = {"prosqa": "prosqa/prosqa_valid.json", "prontoqa": "prontoqa/prontoqa_valid.json"}


def throughput(task: Task, n: int, seed: int) -> tuple[float, float, list[Example]]:
    """Examples per CPU second (robust to other jobs on a shared machine) and per wall second."""
    cpu, wall = time.process_time(), time.perf_counter()
    examples = task.generate(n, seed)
    return n / (time.process_time() - cpu), n / (time.perf_counter() - wall), examples


def profile(task: Task, examples: list[Example]) -> dict:
    """The figures compared with the official files."""
    steps = Counter(len(e.steps) for e in examples)
    return {
        "question_words_mean": round(statistics.fmean(len(e.question.split()) for e in examples), 1),
        "steps_share": {k: round(v / len(examples), 3) for k, v in sorted(steps.items())},
        **{k: round(v, 3) for k, v in task.stats(examples).items() if isinstance(v, float)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="examples generated per task")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name in TASK_NAMES:
        try:
            task = get_task(name)
        except ImportError:
            continue
        if type(task).generate is Task.generate:
            continue  # no generator (GSM8K)
        cpu_rate, wall_rate, examples = throughput(task, args.n, args.seed)
        print(f"{name}: {cpu_rate:,.0f} examples per CPU second, {wall_rate:,.0f} per wall second "
              f"({args.n} examples, seed {args.seed})")
        if name in OFFICIAL:
            print(f"  generated: {json.dumps(profile(task, examples))}")
            path = SHARED / "data" / OFFICIAL[name]
            if path.is_file():
                print(f"  official:  {json.dumps(profile(task, task.load(path)))}")


if __name__ == "__main__":
    main()
