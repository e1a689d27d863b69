"""What a ProsQA VQ-VAE's latent codes say about their trace: bits of information per trace feature.

    python benchmarks/code_content.py --vqvae RUN/vqvae [--shuffles 20]

Encodes the official ProsQA valid split (../shared/data or $TOKEN_ASSORTED_SHARED) and, for
the codes of each trace's first chunk, estimates the mutual information I(feature; codes) =
H(feature) - H(feature | codes) in bits for features a decoder needs:

- subject: the person the question is about (the prompt names it too);
- concept1, concept2: the first and second concepts the trace names ("Tom is a X.",
  "Every X is a Y.");
- rank1: which of the subject's parents (by order in the prompt) the trace takes;
- n_steps: the trace's number of steps; answer: the answer concept.

With 300 questions, the plug-in estimate of H(feature | codes) is biased low (few questions
per code), so the same estimate with the codes shuffled across questions is printed beside
it: only information above that baseline is real. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence

import torch
from bench_vqvae import SHARED  # same folder: benchmarks/ is on sys.path

from token_assorted.data.tasks import get_task
from token_assorted.vqvae import encode_examples, load_vqvae


def entropy(values: Sequence[Hashable]) -> float:
    counts, n = Counter(values), len(values)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def conditional_entropy(values: Sequence[Hashable], given: Sequence[Hashable]) -> float:
    groups: dict[Hashable, list[Hashable]] = defaultdict(list)
    for value, key in zip(values, given):
        groups[key].append(value)
    return sum(len(group) / len(values) * entropy(group) for group in groups.values())


def parent_rank(record: dict) -> int:
    """Position, among the prompt's "SUBJECT is a X." sentences, of the one the trace starts with."""
    subject, first = record["steps"][0].split()[0], record["steps"][0].rstrip(".").split()[-1]
    sentences = [s.strip() for s in record["question"].split(".")]
    parents = [s.split()[-1] for s in sentences if s.startswith(f"{subject} is a ")]
    return parents.index(first)


def features(records: list[dict]) -> dict[str, list[Hashable]]:
    def concept(step: str) -> str:
        return step.rstrip(".").split()[-1]
    return {"subject": [r["steps"][0].split()[0] for r in records],
            "concept1": [concept(r["steps"][0]) for r in records],
            "concept2": [concept(r["steps"][1]) for r in records],
            "rank1": [parent_rank(r) for r in records],
            "n_steps": [len(r["steps"]) for r in records],
            "answer": [concept(r["answer"]) for r in records]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vqvae", required=True, help="a VQ-VAE directory trained on ProsQA")
    parser.add_argument("--shuffles", type=int, default=20, help="shuffled-code baselines to average")
    args = parser.parse_args()
    torch.set_num_threads(1)
    path = SHARED / "data" / "prosqa" / "prosqa_valid.json"
    records = json.loads(path.read_text())
    task = get_task("prosqa")
    loaded = load_vqvae(args.vqvae)
    codes = encode_examples(loaded, task, task.load(path))
    first = [tuple(c[:loaded.config.latents_per_chunk]) for c in codes]
    rng = random.Random(0)
    result = {"vqvae": args.vqvae, "questions": len(records), "distinct_first_chunk_codes": len(set(first)),
              "code_entropy_bits": round(entropy(first), 2), "features": {}}
    for name, values in features(records).items():
        shuffled = []
        for _ in range(args.shuffles):
            permuted = first[:]
            rng.shuffle(permuted)
            shuffled.append(entropy(values) - conditional_entropy(values, permuted))
        result["features"][name] = {
            "entropy_bits": round(entropy(values), 2),
            "information_bits": round(entropy(values) - conditional_entropy(values, first), 2),
            "shuffled_codes_bits": round(sum(shuffled) / len(shuffled), 2)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
