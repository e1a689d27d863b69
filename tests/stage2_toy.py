"""A toy task and fake latent codes for the stage-2 tests (no VQ-VAE, no data files needed).

The task: "reverse c a b" -> steps "take b", "take a", "take c" -> "### b a c". The fake
codes are a fixed function of each chunk's token ids, so they carry information the way
VQ-VAE codes do, and they are computed with the same tokenizer as the training run.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from token_assorted.core.io import atomic_write_json
from token_assorted.data.encoding import encode_example
from token_assorted.data.schema import Example, save_examples
from token_assorted.data.tasks.base import Task
from token_assorted.data.tokenizer import build_task_tokenizer

LETTERS = "a b c d e f g h".split()


class ToyTask(Task):
    name = "toy"

    @staticmethod
    def looks_like(record):
        return bool(record.get("toy"))

    def generate(self, n, seed, **options):
        rng = random.Random(seed)
        examples = []
        for _ in range(n):
            items = [rng.choice(LETTERS) for _ in range(rng.randint(2, 4))]
            examples.append(Example(question="reverse " + " ".join(items),
                                    steps=[f"take {x}" for x in reversed(items)],
                                    answer=" ".join(reversed(items)), meta={"toy": True}))
        return examples


def register() -> None:
    """Make `get_task("toy")` work in this process."""
    from token_assorted.data.tasks import register_task

    sys.path.insert(0, str(Path(__file__).parent))
    register_task("toy", "stage2_toy:ToyTask")


def write_data(directory: Path, n_train: int = 64, n_valid: int = 8, chunk_size: int = 4,
               codebook_size: int = 16) -> dict[str, Path]:
    """Train/valid files, a tokenizer dir and a codes file for them, under `directory`."""
    task = ToyTask()
    train, valid = task.generate(n_train, 0), task.generate(n_valid, 1)
    paths = {"train": directory / "train.jsonl", "valid": directory / "valid.jsonl",
             "codes": directory / "codes.json", "tokenizer": directory / "tokenizer"}
    save_examples(paths["train"], train)
    save_examples(paths["valid"], valid)
    tokenizer = build_task_tokenizer(task.prompt_text(e) + task.trace_text(e) + task.solution_text(e)
                                     for e in train + valid)
    tokenizer.save_pretrained(paths["tokenizer"])
    codes = []
    for example in train:
        ids = encode_example(tokenizer, task, example).trace_ids
        codes.append([sum(ids[j:j + chunk_size]) % codebook_size for j in range(0, len(ids), chunk_size)])
    atomic_write_json(paths["codes"], {"chunk_size": chunk_size, "latents_per_chunk": 1,
                                       "codebook_size": codebook_size, "codes": codes,
                                       "tokenizer": "tokenizer"})
    return paths
