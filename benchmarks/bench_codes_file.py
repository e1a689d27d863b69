"""The codes file at scale: size and load time of the safetensors format against the first format
(indented JSON, `token-assorted-codes/1`), for N traces with MetaMathQA-like code counts.

    python benchmarks/bench_codes_file.py [--traces 100000] [--codebook 1024] [--repeats 3]

Each trace gets between 3 and 40 codes (uniform; MetaMathQA's traces are about 50-600 tokens, one
code per 16), K = 1024 codes of a 64-wide codebook. The first format is written as it was
(`json.dumps(indent=2)`) and read as it was (strict JSON, then every code list checked to be
integers); the new one by `latents.write_codes_file` / `latents.from_codes_file`. Prints one
JSON line per format: bytes, write and load seconds (the best of --repeats), and whether the
codes read back are those written.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from token_assorted.core.io import read_json
from token_assorted.vqvae.codes import LatentCodes, from_codes_file, write_codes_file


def best_of(repeats: int, action) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = action()
        times.append(time.perf_counter() - started)
    return min(times), result


def old_write(path: Path, latents: LatentCodes, data: Path) -> None:
    record = {"format": "token-assorted-codes/1", "chunk_size": latents.chunk_size,
              "latents_per_chunk": latents.latents_per_chunk, "codebook_size": latents.codebook_size,
              "codes": latents.codes, "codebook": latents.codebook.tolist(), "tokenizer": None, "vqvae": None,
              "data": str(data), "data_fingerprint": "x", "skipped": []}
    path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")


def old_load(path: Path, n: int) -> list[list[int]]:
    record = read_json(path)
    codes = record["codes"]
    assert len(codes) == n
    for example_codes in codes:  # the first format's check of every list
        if not isinstance(example_codes, list) or not all(isinstance(z, int) and not isinstance(z, bool)
                                                          for z in example_codes):
            raise ValueError("bad codes")
    torch.tensor(record["codebook"], dtype=torch.float32)
    return codes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=100_000)
    parser.add_argument("--codebook", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 41, size=args.traces)
    codes = [rng.integers(0, args.codebook, size=int(n)).tolist() for n in lengths]
    latents = LatentCodes(16, 1, args.codebook, codes, torch.randn(args.codebook, 64))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.jsonl"
        data.write_text("{}\n")
        old, new = Path(tmp) / "train.json", Path(tmp) / "train.safetensors"
        write_old, _ = best_of(args.repeats, lambda: old_write(old, latents, data))
        write_new, _ = best_of(args.repeats, lambda: write_codes_file(new, latents, data, []))
        load_old, read_old = best_of(args.repeats, lambda: old_load(old, args.traces))
        load_new, read_new = best_of(args.repeats, lambda: from_codes_file(new, args.traces).codes)
        common = {"traces": args.traces, "codes": int(lengths.sum()), "threads": torch.get_num_threads(),
                  "cpu": os.cpu_count()}
        print(json.dumps({"format": "json (codes/1)", "bytes": old.stat().st_size, "write_s": round(write_old, 3),
                          "load_s": round(load_old, 3), "same": read_old == codes, **common}))
        print(json.dumps({"format": "safetensors (codes/2)", "bytes": new.stat().st_size,
                          "write_s": round(write_new, 3), "load_s": round(load_new, 3), "same": read_new == codes,
                          **common}))


if __name__ == "__main__":
    main()
