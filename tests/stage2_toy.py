"""A toy task and fake latent codes for the stage-2 tests (no VQ-VAE, no data files needed).

The task: "reverse c a b" -> steps "take b", "take a", "take c" -> "### b a c". The fake
codes are a fixed function of each chunk's token ids, so they carry information the way
VQ-VAE codes do, and they are computed with the same tokenizer as the training run.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from token_assorted.data.encoding import encode_example
from token_assorted.data.schema import Example, save_examples
from token_assorted.data.tasks.base import Task
from token_assorted.data.tokenizer import build_task_tokenizer
from token_assorted.vqvae.codes import LatentCodes, write_codes_file

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
             "codes": directory / "codes.safetensors", "tokenizer": directory / "tokenizer"}
    save_examples(paths["train"], train)
    save_examples(paths["valid"], valid)
    tokenizer = build_task_tokenizer(task.prompt_text(e) + task.trace_text(e) + task.solution_text(e)
                                     for e in train + valid)
    tokenizer.save_pretrained(paths["tokenizer"])
    codes = []
    for example in train:
        ids = encode_example(tokenizer, task, example).trace_ids
        codes.append([sum(ids[j:j + chunk_size]) % codebook_size for j in range(0, len(ids), chunk_size)])
    write_codes_file(paths["codes"], LatentCodes(chunk_size, 1, codebook_size, codes), paths["train"], [],
                     tokenizer_dir=paths["tokenizer"])
    return paths


def read_codes_record(path: Path) -> dict:
    """A codes file as one dict: its header, "codes" as lists and "codebook" as rows (for tests to edit)."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as reader:
        header = json.loads(reader.metadata()["header"])
        tensors = {name: reader.get_tensor(name) for name in reader.keys()}
    flat, offsets = tensors["codes"].tolist(), tensors["offsets"].tolist()
    codes = [flat[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
    return {**header, "codes": codes, "codebook": tensors["codebook"].tolist() if "codebook" in tensors else None}


def write_codes_record(path: Path, record: dict, offsets: list[int] | None = None) -> Path:
    """`record` (read_codes_record's shape) written as a codes file as it is, hostile values included."""
    import json

    import torch
    from safetensors.torch import save_file

    from token_assorted.vqvae.codes import FORMAT

    codes = record["codes"]
    bounds = offsets if offsets is not None else [sum(len(c) for c in codes[:i]) for i in range(len(codes) + 1)]
    tensors = {"codes": torch.tensor([z for c in codes for z in c], dtype=torch.int64),
               "offsets": torch.tensor(bounds, dtype=torch.int64)}
    if record.get("codebook") is not None:
        tensors["codebook"] = torch.tensor(record["codebook"], dtype=torch.float32)
    header = {key: value for key, value in record.items() if key not in ("codes", "codebook")}
    save_file(tensors, str(path), metadata={"format": FORMAT, "header": json.dumps(header)})
    return path
