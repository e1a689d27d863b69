"""How many bits must one latent token carry? A count over ProsQA's official valid graphs.

A ProsQA trace is a path in the question's graph, written as the prompt's own sentences:
"Tom is a terpus. Every terpus is a brimpus. Every brimpus is a lempus." A chunk decoder
that reads the prompt and knows the chunk's index, and can copy any prompt sentence and
follow the graph's edges, but does not search the graph for the path to the asked concept,
can still not tell the true chunk apart from the same-position windows of every other path
that starts at the question's subject. Those windows are counted here, per chunk:

    candidates(chunk k) = distinct token windows [kL, (k+1)L) over all paths from the root
                          (every prefix of a path is a possible trace; a short one pads)

One latent token of a K-code book can single out one of at most K candidates, so a chunk
with more than K candidates needs a decoder that searches the graph itself (or more than
one latent per chunk, r < L). The script prints, for each L, how many chunks fit in K = 64
and the median of log2(candidates).

    python benchmarks/chunk_information.py                    # ../shared/data/prosqa/prosqa_valid.json
    python benchmarks/chunk_information.py --chunk-sizes 8 16 --codebook-size 64
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
from collections.abc import Iterator
from pathlib import Path

from token_assorted.data.schema import Example
from token_assorted.data.tasks import get_task
from token_assorted.data.tokenizer import build_word_tokenizer

SHARED = Path(os.environ.get("TOKEN_ASSORTED_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
MAX_PATHS = 200_000  # a guard: official graphs have far fewer paths from the root


def paths_from(root: int, children: dict[int, list[int]]) -> Iterator[list[int]]:
    """Every path (as a node list, length >= 2) that starts at `root`; the graphs are DAGs."""
    stack = [[root, child] for child in children.get(root, [])]
    while stack:
        path = stack.pop()
        yield path
        stack.extend(path + [child] for child in children.get(path[-1], []) if child not in path)


def path_steps(path: list[int], names: list[str]) -> list[str]:
    """The trace sentences of a path, in the official wording."""
    steps = [f"{names[path[0]]} is a {names[path[1]]}."]
    steps += [f"Every {names[a]} is a {names[b]}." for a, b in zip(path[1:], path[2:])]
    return steps


def chunk_candidates(record: dict, tokenize, chunk_size: int) -> list[int]:
    """Candidates of each chunk of this record's true trace (see the module docstring)."""
    task = get_task("prosqa")
    names, root = record["idx_to_symbol"], record["root"]
    children: dict[int, list[int]] = {}
    for parent, child in record["edges"]:
        children.setdefault(parent, []).append(child)
    true_ids = tokenize(task.trace_text(Example(record["question"], record["steps"], record["answer"])))
    n_chunks = math.ceil(len(true_ids) / chunk_size)
    windows: list[set[tuple[int, ...]]] = [set() for _ in range(n_chunks)]
    for count, path in enumerate(paths_from(root, children)):
        if count >= MAX_PATHS:
            raise SystemExit(f"more than {MAX_PATHS} paths from the root; raise MAX_PATHS")
        ids = tokenize(task.trace_text(Example(record["question"], path_steps(path, names), "")))
        for k in range(min(n_chunks, math.ceil(len(ids) / chunk_size))):
            windows[k].add(tuple(ids[k * chunk_size:(k + 1) * chunk_size]))
    return [len(found) for found in windows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED / "data" / "prosqa" / "prosqa_valid.json"),
                        help="ProsQA file in the Coconut schema (with idx_to_symbol, edges, root)")
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--codebook-size", type=int, default=64)
    args = parser.parse_args()
    records = json.loads(Path(args.data).read_text())
    texts = [r["question"] + "\n" + "\n".join(r["steps"]) for r in records]
    tokenizer = build_word_tokenizer(texts)

    def tokenize(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False).input_ids

    report = {"data": args.data, "questions": len(records), "K": args.codebook_size, "by_chunk_size": []}
    for chunk_size in args.chunk_sizes:
        counts = [c for record in records for c in chunk_candidates(record, tokenize, chunk_size)]
        bits = [math.log2(c) for c in counts]
        report["by_chunk_size"].append({
            "L": chunk_size, "chunks": len(counts),
            "share_within_K": round(sum(c <= args.codebook_size for c in counts) / len(counts), 3),
            "median_bits": round(statistics.median(bits), 2), "max_bits": round(max(bits), 2),
            "mean_candidates": round(statistics.fmean(counts), 1)})
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
