"""`token-assorted vqvae train|encode|decode|evaluate`: stage 1 from the command line.

    vqvae train    --task T --data TRAIN --valid VALID --out DIR [options | --config FILE.yaml] [--resume]
    vqvae encode   --vqvae DIR --data FILE --task T --out CODES.jsonl [--search-rerank N]
    vqvae decode   --vqvae DIR --prompt TEXT --codes 12,7,40
    vqvae evaluate --vqvae DIR --data FILE [--task T] [--search-rerank N] [--out METRICS.json]

Options given on the command line override those of --config, which override the defaults.
Several GPUs: launch `vqvae train` with `torchrun --nproc_per_node N -m token_assorted.cli vqvae
train ...` (or `accelerate launch`); the effective batch stays --batch-size.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys

from ..errors import ConfigError
from . import add_task_flags, positive_int, task_options_from_args

HELP = {
    "task": "task name: prontoqa, prosqa, keys-maze, gsm8k or qa (your own data: see --fields)",
    "data": "training examples (JSONL or JSON list, Coconut schema)",
    "valid": "validation examples (default: the first 200 training examples)",
    "out": "output directory (config.json, model.safetensors, tokenizer/, metrics.json, logs/, state/)",
    "chunk_size": "L: text tokens per chunk (default 16)",
    "compression": "r: text tokens per latent token; L/r latents per chunk (default 16)",
    "codebook_size": "K: number of latent tokens (default 64; the paper uses 1024 for math)",
    "steps": "optimizer steps", "batch_size": "examples per step (each with all its chunks), all processes together",
    "grad_accum": "micro-batches per optimizer step and process",
    "lr": "peak learning rate (AdamW, linear warm-up then cosine to 10%%)",
    "warmup_steps": "learning-rate warm-up steps", "weight_decay": "AdamW weight decay",
    "grad_clip": "gradient-norm clipping", "valid_every": "validate, checkpoint and save resume state every N steps",
    "log_every": "log training loss every N steps", "seed": "random seed (weights and data order)",
    "tokenizer": "'word' (build a word-level tokenizer from the data) or a model dir, tokenizer dir or .gguf file",
    "chat_template": "render prompts with the tokenizer's chat template",
    "resume": "continue the interrupted run in --out (same options required)",
    "d_model": "transformer width", "heads": "attention heads", "encoder_layers": "chunk encoder layers",
    "decoder_layers": "chunk decoder layers", "prompt_layers": "prompt encoder layers",
    "codebook_dim": "codebook vector dimension (0: d_model)", "commitment_weight": "beta, the commitment loss weight",
    "ema_decay": "EMA decay of the codebook", "dead_code_threshold": "replace codes whose EMA usage falls below this",
    "max_prompt_len": "prompts longer than this keep their last tokens", "dropout": "dropout",
    "max_trace_len": "examples whose trace has more tokens than this are skipped (with a count) before encoding",
    "autoregressive": "decode each chunk token by token (causal decoder, greedy) instead of in one pass",
    "local_context": "prompt positions (and autoregressive decoder inputs) also read the k tokens before them",
    "output_vocab": "what the decoder's vocabulary head scores: 'all' ids, or only the 'data' (the ids the "
                    "training traces use; prompt tokens stay copyable); 'data' makes large vocabularies cheap",
    "assignment": "how a chunk gets its code: 'nearest' (VQ: the nearest codebook vector) or 'search' (the code "
                  "under which the decoder finds the chunk most likely; one latent per chunk only)",
    "search_candidates": "assignment 'search', training: codes tried per chunk",
    "search_explore": "assignment 'search', training: of the codes tried, how many are drawn at random",
    "copy_prefix": "autoregressive decoder: the copy head also matches the tokens before each prompt word with the "
                   "chunk's last tokens (a built-in induction head)",
    "search_rerank": "assignment 'search', encoding and validation: greedy-decode the N most likely codes and keep "
                     "the one whose text misses the fewest of the chunk's tokens (0: the most likely code)",
    "max_examples": "use only the first N training examples (0: all)",
    "progress": "show a progress bar",
    "device": "auto (cuda when available, else cpu), cpu, cuda or cuda:N",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("vqvae", help="stage 1: train the VQ-VAE, encode traces, decode codes",
                                   description="Stage 1: the VQ-VAE over reasoning-trace chunks.")
    commands = parser.add_subparsers(dest="vqvae_command", metavar="SUBCOMMAND", required=True)
    _register_train(commands)
    _register_encode(commands)
    _register_decode(commands)
    _register_evaluate(commands)


def _register_train(commands: argparse._SubParsersAction) -> None:
    from ..vqvae.options import VQVAETrainConfig  # no torch import: keeps --help fast

    parser = commands.add_parser("train", help="train a VQ-VAE on a task's traces")
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of options (same names, with _)")
    add_task_flags(parser)  # [qa] task_options come from --fields, --answer-match, --step-split
    for field in dataclasses.fields(VQVAETrainConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.name == "task_options":
            continue
        if field.name == "stop_at":
            parser.add_argument(flag, type=int, default=None, help=argparse.SUPPRESS)
        elif field.type in (bool, "bool") and field.default:
            parser.add_argument("--no-" + flag[2:], dest=field.name, action="store_const", const=False,
                                default=None, help=f"turn off: {HELP[field.name]}")
        elif field.type in (bool, "bool"):
            parser.add_argument(flag, action="store_const", const=True, default=None, help=HELP[field.name])
        else:
            kind = {"int": int, "float": float, "str": str}[str(field.type) if isinstance(field.type, str)
                                                           else field.type.__name__]
            parser.add_argument(flag, type=kind, default=None, help=f"{HELP[field.name]} (default: {field.default})",
                                metavar=field.name.upper())
    parser.add_argument("--force", action="store_true",
                        help="write into --out even if it is a non-empty folder that is not a VQ-VAE run")
    parser.set_defaults(func=_train)


def _register_encode(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("encode", help="write the latent codes of every trace in a data file")
    parser.add_argument("--vqvae", required=True, metavar="DIR", help="trained VQ-VAE directory")
    parser.add_argument("--data", required=True, metavar="FILE", help="examples to encode")
    parser.add_argument("--task", help="task name (default: the VQ-VAE's task)")
    parser.add_argument("--out", required=True, metavar="CODES.jsonl",
                        help='output: one {"index", "codes", "trace_tokens"} per line')
    parser.add_argument("--batch-size", type=positive_int, default=64, help="examples per batch")
    parser.add_argument("--search-rerank", type=int, metavar="N", help=RERANK_HELP)
    add_task_flags(parser)
    parser.add_argument("--max-trace-len", type=positive_int, metavar="N",
                        help="skip (and count) examples whose trace has more tokens than this, before encoding "
                             "(default: the VQ-VAE's max_trace_len)")
    parser.set_defaults(func=_encode)


def _register_decode(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("decode", help="print the text a sequence of latent tokens stands for")
    parser.add_argument("--vqvae", required=True, metavar="DIR", help="trained VQ-VAE directory")
    parser.add_argument("--prompt", required=True, help="the question the codes were encoded under")
    parser.add_argument("--codes", required=True, help="comma-separated codebook indices, e.g. 12,7,40")
    parser.add_argument("--task", help="task name (default: the VQ-VAE's task)")
    add_task_flags(parser)
    parser.set_defaults(func=_decode)


RERANK_HELP = ("assignment 'search': greedy-decode the N most likely codes of a chunk and keep the one whose "
               "text misses the fewest tokens (default: the VQ-VAE's saved setting; 0: the most likely code)")


def _register_evaluate(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("evaluate", help="reconstruction accuracy and codebook use of a saved VQ-VAE")
    parser.add_argument("--vqvae", required=True, metavar="DIR", help="trained VQ-VAE directory")
    parser.add_argument("--data", required=True, metavar="FILE", help="examples whose traces to reconstruct")
    parser.add_argument("--task", help="task name (default: the VQ-VAE's task)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="examples per batch")
    parser.add_argument("--search-rerank", type=int, metavar="N", help=RERANK_HELP)
    parser.add_argument("--out", metavar="METRICS.json", help="also write the metrics here (JSON)")
    add_task_flags(parser)
    parser.set_defaults(func=_evaluate)


def train_config_from_args(args: argparse.Namespace):
    """Defaults <- --config YAML <- command-line flags."""
    from ..config import from_mapping, load_yaml, replace
    from ..vqvae.options import VQVAETrainConfig

    config = VQVAETrainConfig()
    if args.config:
        config = from_mapping(VQVAETrainConfig, load_yaml(args.config), args.config)
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(VQVAETrainConfig)
             if getattr(args, f.name, None) is not None}
    given["task_options"] = task_options_from_args(args, config.task_options)
    return replace(config, given, "command line")


def _task_of(args: argparse.Namespace, loaded):
    """The task given (or the VQ-VAE's), with the VQ-VAE's recorded task options under the flags."""
    from ..tasks import get_task

    name = args.task or loaded.task
    recorded = loaded.task_options if name == loaded.task else {}
    return get_task(name, **task_options_from_args(args, recorded))


def _train(args: argparse.Namespace) -> int:
    from ..outdir import claimed
    from ..vqvae import train_vqvae

    config = train_config_from_args(args)
    if not config.out:
        raise ConfigError("vqvae train: --out is required")
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun: one claim, one line
    with claimed(config.out, "vqvae", force=args.force) if main_process else contextlib.nullcontext():
        out = train_vqvae(config)
    if main_process:
        print(f"VQ-VAE saved in {out} (metrics: {out / 'metrics.json'})")
    return 0


def _encode(args: argparse.Namespace) -> int:
    from ..io import atomic_write_jsonl
    from ..terminal import printable
    from ..vqvae import encode_examples, load_vqvae
    from ..vqvae.chunks import chunk_examples
    from ..vqvae.store import trace_limit

    loaded = load_vqvae(args.vqvae, search_rerank=args.search_rerank)
    task = _task_of(args, loaded)
    examples = task.load(args.data)
    items = chunk_examples(loaded.tokenizer, task, examples, loaded.config.chunk_size, loaded.chat_template)
    # The length check comes first: one very long trace would ask the encoder for hundreds of GB.
    limit = args.max_trace_len or trace_limit(args.vqvae)
    kept = [i for i, item in enumerate(items) if item.trace_length <= limit]
    codes = encode_examples(loaded, task, [examples[i] for i in kept], batch_size=args.batch_size)
    atomic_write_jsonl(args.out, ({"index": i, "codes": c, "trace_tokens": items[i].trace_length}
                                  for i, c in zip(kept, codes)))
    latents = sum(len(c) for c in codes)
    skipped = f" ({len(items) - len(kept)} skipped: trace longer than {limit} tokens)" if len(kept) < len(items) else ""
    print(printable(f"{len(codes)} traces, {latents} latent tokens for {sum(items[i].trace_length for i in kept)} "
                    f"text tokens -> {args.out}{skipped}"), file=sys.stderr)
    return 0


def _decode(args: argparse.Namespace) -> int:
    from ..terminal import printable
    from ..vqvae import decode_codes, load_vqvae, prompt_ids_for

    try:
        codes = [int(part) for part in args.codes.replace(" ", "").split(",") if part]
    except ValueError:
        raise ConfigError(f"--codes must be comma-separated integers, got {args.codes!r}") from None
    loaded = load_vqvae(args.vqvae)
    task = _task_of(args, loaded)
    print(printable(decode_codes(loaded, prompt_ids_for(loaded, task, args.prompt), codes)))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from ..io import atomic_write_json
    from ..vqvae import evaluate_reconstruction, load_vqvae

    loaded = load_vqvae(args.vqvae, search_rerank=args.search_rerank)
    task = _task_of(args, loaded)
    metrics = evaluate_reconstruction(loaded, task, task.load(args.data), batch_size=args.batch_size)
    result = {"data": args.data, "search_rerank": loaded.config.search_rerank, **metrics}
    if args.out:
        atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return 0
