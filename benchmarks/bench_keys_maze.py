"""Keys-Finding Maze generator: speed per preset and the size of what it generates.

    python benchmarks/bench_keys_maze.py [--small 2000] [--paper 1000] [--seed 0]

Prints, per preset, mazes per second (one process, pure Python) and the generated
data's statistics; the paper preset's mean trace tokens is the figure to compare with
the paper's 1312 CoT tokens.
"""

from __future__ import annotations

import argparse
import json
import time

from token_assorted.data.tasks.keys_maze import KeysMaze


def measure(task: KeysMaze, preset: str, n: int, seed: int) -> dict:
    start = time.perf_counter()
    examples = task.generate(n, seed, preset=preset)
    seconds = time.perf_counter() - start
    return {"preset": preset, "mazes": n, "seconds": round(seconds, 2),
            "mazes_per_second": round(n / seconds, 1), **task.stats(examples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=2000, help="mazes of the small (CPU) preset")
    parser.add_argument("--paper", type=int, default=1000, help="mazes of the paper preset")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    args = parser.parse_args()
    task = KeysMaze()
    for preset, n in (("small", args.small), ("paper", args.paper)):
        if n > 0:
            print(json.dumps(measure(task, preset, n, args.seed)))


if __name__ == "__main__":
    main()
