"""Computed (not measured) peak GPU memory of stage 2 per GPU: Llama 1B / 3B / 8B x {DDP, FSDP on N GPUs} x {full, LoRA}.

    python benchmarks/memory_table.py [--gpus 8] [--micro-batch 4] [--tokens 640] [--codebook 1024]

The model after the vocabulary extension (K latent rows + 2 delimiters, padded to a multiple of 64).
Bytes per GPU, in GB (1e9), for the settings of a GPU run here: float32 weights (the optimizer's
master copy), bf16 compute (autocast under DDP, FSDP's mixed-precision policy), AdamW (two float32
moments per trainable weight), gradient checkpointing on, LoRA r = 8 on q_proj and v_proj (peft's
default for Llama) with the latent rows trained in full.

    states      DDP:  4 P + 16 P_t                      (weights; gradients, 2 moments of what trains)
                FSDP: (4 P + 16 P_t) / N + 2 (2 A + R)  (a shard of each; bf16 copies of the two decoder
                                                         layers in flight, A weights each, and of the root
                                                         group, R = embedding + untied head + final norm)
    activations b T (2 D L + 2 (4 D + 3 F))             (checkpointing: each layer's bf16 input kept; one
                                                         layer's bf16 attention and MLP recomputed)
    logits      10 b T V                                (bf16 logits, their float32 upcast in the loss, its
                                                         float32 gradient; 0 with --liger-kernel: chunked)

P: all parameters, P_t: trainable ones, b x T: the micro-batch, D: width, F: MLP width, L: layers,
V: padded vocabulary. Not counted: the CUDA context and allocator fragmentation (about 1-3 GB),
FSDP's float32 reduce-scatter buffers of one layer's gradients (4 A / N), attention workspaces.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class Llama:
    name: str
    vocab: int
    width: int  # D
    mlp: int  # F
    layers: int  # L
    heads: int
    kv_heads: int
    tied: bool


MODELS = (Llama("Llama-3.2-1B", 128_256, 2048, 8192, 16, 32, 8, True),
          Llama("Llama-3.2-3B", 128_256, 3072, 8192, 28, 24, 8, True),
          Llama("Llama-3.1-8B", 128_256, 4096, 14336, 32, 32, 8, False))


def counts(model: Llama, codebook: int, lora_rank: int = 8) -> dict[str, int]:
    vocab = -(-(model.vocab + codebook + 2) // 64) * 64
    d, head = model.width, model.width // model.heads
    kv = model.kv_heads * head
    layer = d * d + 2 * d * kv + d * d + 3 * d * model.mlp + 2 * d  # q, k and v, o, gate/up/down, 2 norms
    root = vocab * d * (1 if model.tied else 2) + d
    lora = model.layers * lora_rank * ((d + d) + (d + kv))  # A and B of q_proj and v_proj
    rows = (codebook + 2) * d * (1 if model.tied else 2)  # the latent rows, trained in full
    return {"P": model.layers * layer + root, "layer": layer, "root": root, "vocab": vocab, "lora": lora + rows}


def gb(value: float) -> str:
    return f"{value / 1e9:.1f}"


def table(gpus: int, micro: int, tokens: int, codebook: int) -> list[str]:
    lines = ["| model | params | sharding | tuning | states / GPU | activations | logits | total / GPU |",
             "|---|---|---|---|---|---|---|---|"]
    for model in MODELS:
        c = counts(model, codebook)
        bt = micro * tokens
        activations = bt * (2 * model.width * model.layers + 2 * (4 * model.width + 3 * model.mlp))
        logits = 10 * bt * c["vocab"]
        for sharding in ("DDP", f"FSDP x{gpus}"):
            for tuning in ("full", "LoRA"):
                trainable = c["P"] if tuning == "full" else c["lora"]
                states = 4 * c["P"] + 16 * trainable
                if sharding != "DDP":
                    states = states / gpus + 2 * (2 * c["layer"] + c["root"])
                lines.append(f"| {model.name} | {c['P'] / 1e9:.2f} B | {sharding} | {tuning} | {gb(states)} | "
                             f"{gb(activations)} | {gb(logits)} | {gb(states + activations + logits)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=640)
    parser.add_argument("--codebook", type=int, default=1024)
    args = parser.parse_args()
    print("\n".join(table(args.gpus, args.micro_batch, args.tokens, args.codebook)))


if __name__ == "__main__":
    main()
