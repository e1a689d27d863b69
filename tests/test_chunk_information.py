"""benchmarks/chunk_information.py: the candidate count that BENCHMARKS.md cites."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "chunk_information.py"


def load_script():
    spec = importlib.util.spec_from_file_location("chunk_information", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RECORD = {  # Tom -> wumpus -> lempus (the trace), Tom -> yimpus -> lempus, wumpus -> rorpus
    "question": "Tom is a wumpus. Tom is a yimpus. Every wumpus is a lempus. Every yimpus is a lempus. "
                "Every wumpus is a rorpus. Is Tom a lempus or rorpus?",
    "steps": ["Tom is a wumpus.", "Every wumpus is a lempus."], "answer": "Tom is a lempus.",
    "idx_to_symbol": ["Tom", "wumpus", "yimpus", "lempus", "rorpus"],
    "edges": [[0, 1], [0, 2], [1, 3], [2, 3], [1, 4]], "root": 0,
}


def test_paths_from_the_root_are_all_prefixes():
    module = load_script()
    children = {0: [1, 2], 1: [3, 4], 2: [3]}
    assert sorted(module.paths_from(0, children)) == [[0, 1], [0, 1, 3], [0, 1, 4], [0, 2], [0, 2, 3]]


def test_candidates_count_the_distinct_windows_of_every_path():
    module = load_script()
    words = {w: i for i, w in enumerate("Tom is a wumpus yimpus lempus rorpus Every .".split())}

    def tokenize(text: str) -> list[int]:
        return [words[w] for w in text.replace(".", " .").split()]

    # Trace: "Tom is a wumpus . Every wumpus is a lempus ." = 11 tokens, 3 chunks of L = 4.
    # chunk 0 "Tom is a X": X in {wumpus, yimpus}; chunk 1: ". Every wumpus is", ". Every yimpus is"
    # or "." (the one-step paths end there); chunk 2: "a lempus ." (twice) or "a rorpus .".
    assert module.chunk_candidates(RECORD, tokenize, 4) == [2, 3, 2]
    assert module.chunk_candidates(RECORD, tokenize, 16) == [5]  # every path is its own window
