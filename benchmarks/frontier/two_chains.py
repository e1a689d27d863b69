"""Sweep data for issue 25: ProsQA-format questions over two disjoint chains of "is a" facts.

Each question names two people, each at the root of its own chain of k concepts; the facts are
shuffled, and the question asks whether the first person is the end of their own chain or of the
other's. Unlike small ProsQA graphs, the wrong option is exactly as far from the question as the
right one and nothing about a concept's position in the prompt gives it away, so answering
directly is a coin flip unless the chain is followed. The trace is the k facts of the right chain.

    python benchmarks/frontier/two_chains.py OUT_DIR --steps 3                 # ch3
    python benchmarks/frontier/two_chains.py OUT_DIR --steps 3 --train-steps 1 2 3   # ch3mix

writes OUT_DIR/{train,valid,test}.jsonl (20,000 / 300 / 300 questions, disjoint prompts) in the
ProsQA file format that `token-assorted run` reads through `data.files`.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from token_assorted.data.tasks.lexicon import PROSQA_CONCEPTS, PROSQA_NAMES
from token_assorted.data.tasks.prosqa import edge_sentence


def question(rng: random.Random, steps: int) -> dict:
    """One two-chain question whose answer path has `steps` facts."""
    symbols = rng.sample(PROSQA_NAMES, 2) + rng.sample(PROSQA_CONCEPTS, 2 * steps)
    chains = [[person] + [2 + person * steps + i for i in range(steps)] for person in (0, 1)]
    edges = [[a, b] for chain in chains for a, b in zip(chain, chain[1:])]
    facts = [edge_sentence(symbols, a, b) for a, b in edges]
    rng.shuffle(facts)  # the order of the facts carries no hint
    target, neg_target = chains[0][-1], chains[1][-1]
    options = [symbols[target], symbols[neg_target]]
    rng.shuffle(options)
    return {"question": " ".join(facts + [f"Is {symbols[0]} a {options[0]} or {options[1]}?"]),
            "steps": [edge_sentence(symbols, a, b) for a, b in zip(chains[0], chains[0][1:])],
            "answer": f"{symbols[0]} is a {symbols[target]}.",
            "idx_to_symbol": symbols, "edges": edges, "root": 0, "target": target,
            "neg_target": neg_target}


def draw(n: int, seed: int, steps: list[int], seen: set[str], mixed: bool) -> list[dict]:
    """n questions with prompts not in `seen` (which grows), chain lengths drawn from `steps`.

    `mixed` draws each question's length even when `steps` has one value, as the sweep's mixed
    runs did, so that both kinds of file in BENCHMARKS.md come out byte for byte.
    """
    rng, rows = random.Random(seed), []
    while len(rows) < n:
        row = question(rng, rng.choice(steps) if mixed else steps[0])
        if row["question"] not in seen:
            seen.add(row["question"])
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=3, help="chain length of the valid and test questions")
    parser.add_argument("--train-steps", type=int, nargs="+", help="chain lengths of the training questions "
                        "(drawn uniformly; default: --steps)")
    parser.add_argument("--train", type=int, default=20000)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()  # test first, so that valid and train never repeat a test prompt
    splits = {"test": (300, 2, [args.steps]), "valid": (300, 1, [args.steps]),
              "train": (args.train, 0, args.train_steps or [args.steps])}
    for name, (n, seed, steps) in splits.items():
        rows = draw(n, seed, steps, seen, mixed=args.train_steps is not None)
        (args.out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"wrote {n} questions to {args.out / name}.jsonl")


if __name__ == "__main__":
    main()
