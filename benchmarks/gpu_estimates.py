"""Estimated wall time and memory of the paper's presets on one H100: the README's table, computed.

    python benchmarks/gpu_estimates.py

Nothing here runs a model: every figure is arithmetic on the assumptions below, so it is an
**estimate** until a GPU run measures it (BENCHMARKS.md). The assumptions:

- training FLOPs = 6 x parameters x trained tokens (each method's sequences: Sol-Only has no
  trace, Token Assorted replaces half of it on average by codes at 1/16 of its length);
- achieved throughput: 15 % of the H100's 989 bf16 TFLOP/s for GPT-2 size (small matrices),
  35 % for 1B-8B Llamas;
- the VQ-VAE: 100k steps (the paper's) at the 12 steps/s measured on one H100 for the GSM8K
  VQ-VAE (docs/LAB_NOTES.md, `bench_gsm8k_gpu.py`), times a task factor (codes by search, long traces);
- generation (the test split, the probes' evaluations, the per-epoch validation): every decoding step costs max(weights + KV cache bytes / 3.35 TB/s, 25 ms of
  `generate`'s per-token overhead), for the longest answer of each batch;
- memory: 16 bytes per parameter (fp32 weights, gradients, two AdamW moments), activations of
  34 bytes x tokens x width per layer (fused attention), logits of 6 bytes x tokens x vocabulary,
  for one micro-batch (batch_size / grad_accum sequences).
"""

from __future__ import annotations

from dataclasses import dataclass

PEAK_FLOPS = 989e12  # H100 SXM, dense bf16
HBM = 3.35e12  # bytes/s
STEP_FLOOR = 0.025  # s per generated token of a batch: generate's Python and launch overhead
VQVAE_STEPS_PER_S = 12.0  # measured: GSM8K VQ-VAE, batch 64, one H100


@dataclass
class Model:
    params: float
    layers: int
    width: int
    vocab: int
    kv_width: int  # key + value width per layer per token (GQA: fewer than 2 x width)


@dataclass
class Row:
    name: str
    model: Model
    mfu: float
    examples: int
    epochs: int
    tokens: dict[str, float]  # mean sequence tokens per method
    micro_batch: int
    vqvae_factor: float  # VQ-VAE step time against the measured GSM8K one
    test: int
    answer_tokens: dict[str, float]  # longest answer per batch, per method
    generations: int  # greedy + samples per question
    eval_batch: int
    evals_per_method: int  # the test set, plus the probes' evaluations (Token Assorted)
    valid: int  # questions validated after every epoch (greedy), in batches of eval_batch
    gpus: int = 1


GPT2 = Model(124e6, 12, 768, 50257, 2 * 768)
SCRATCH_GPT2 = Model(86e6, 12, 768, 600, 2 * 768)  # word vocabulary: embeddings are negligible
LLAMA = {"1B": Model(1.24e9, 16, 2048, 128256, 2 * 512), "3B": Model(3.21e9, 28, 3072, 128256, 2 * 1024),
         "8B": Model(8.03e9, 32, 4096, 128256, 2 * 1024)}
MATH_TOKENS = {"sol-only": 80, "cot": 300, "token-assorted": 170}  # MetaMathQA: query ~70, response ~230
MATH_ANSWERS = {"sol-only": 32, "cot": 1024, "token-assorted": 1024}


def rows() -> list[Row]:
    prosqa = {"sol-only": 280, "cot": 306, "token-assorted": 294}  # 181 + 17 + 4 words x ~1.5 BPE tokens
    pronto = {"sol-only": 150, "cot": 206, "token-assorted": 180}
    maze = {"sol-only": 620, "cot": 1950, "token-assorted": 1330}  # words: prompt 418, trace 1,327, plan 200
    return [
        Row("ProsQA, prosqa-gpt2", GPT2, 0.15, 17886, 50, prosqa, 128, 1.5, 500,
            {"sol-only": 12, "cot": 48, "token-assorted": 24}, 1, 250, 4, 300),
        Row("ProntoQA, prontoqa-gpt2", GPT2, 0.15, 9000, 50, pronto, 128, 1.0, 800,
            {"sol-only": 4, "cot": 70, "token-assorted": 20}, 1, 250, 4, 200),
        Row("Keys-Finding Maze, maze", SCRATCH_GPT2, 0.15, 50000, 20, maze, 32, 2.0, 500,
            {"sol-only": 300, "cot": 1700, "token-assorted": 1000}, 11, 128, 2, 100),
        *[Row(f"GSM8K, Llama-3.{'1' if size == '8B' else '2'}-{size}", model, 0.35, 395000, 1, MATH_TOKENS,
              {"1B": 16, "3B": 8, "8B": 16}[size], 1.0, 1319, MATH_ANSWERS, 1, 128, 7, 100, 4 if size == "8B" else 1)
          for size, model in LLAMA.items()],
    ]


def training_seconds(row: Row) -> float:
    tokens = sum(row.examples * row.epochs * n for n in row.tokens.values())
    return 6 * row.model.params * tokens / (row.mfu * PEAK_FLOPS * row.gpus)


def eval_seconds(row: Row) -> float:
    weights = 2 * row.model.params  # bf16
    total = 0.0
    for method, longest in row.answer_tokens.items():
        sequences = row.test * row.generations
        batches = -(-sequences // row.eval_batch)
        context = row.tokens[method] + longest / 2
        kv = 2 * row.model.layers * row.model.kv_width * context * row.eval_batch  # bf16 keys and values
        step = max((weights + kv) / HBM, STEP_FLOOR)
        runs = row.evals_per_method if method == "token-assorted" else 1
        total += runs * batches * longest * step
    return total


def validation_seconds(row: Row) -> float:
    """Greedy validation after every epoch of every method, at the generation floor."""
    batches = -(-row.valid // row.eval_batch)
    return sum(row.epochs * batches * longest * STEP_FLOOR for longest in row.answer_tokens.values())


def memory_gb(row: Row) -> float:
    states = 16 * row.model.params / row.gpus
    tokens = row.micro_batch * max(row.tokens.values())
    activations = 34 * tokens * row.model.width * row.model.layers
    logits = 6 * tokens * row.model.vocab
    return (states + activations + logits) / 1e9


def main() -> None:
    print("| row | training | validation | VQ-VAE (100k steps) | test and probes | peak memory per GPU |")
    print("|---|---|---|---|---|---|")
    for row in rows():
        vqvae = 100_000 / VQVAE_STEPS_PER_S * row.vqvae_factor
        gpus = f" on {row.gpus} GPUs" if row.gpus > 1 else ""
        print(f"| {row.name} | {training_seconds(row) / 3600:.1f} h{gpus} | {validation_seconds(row) / 3600:.1f} h | "
              f"{vqvae / 3600:.1f} h | "
              f"{eval_seconds(row) / 3600:.1f} h | {memory_gb(row):.0f} GB |")


if __name__ == "__main__":
    main()
