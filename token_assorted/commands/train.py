"""`token-assorted train`: stage 2, an LM on mixed latent/text traces (or a baseline).

Options override a YAML `--config FILE` (keys of `train.TrainConfig`), which overrides the
defaults. Multi-GPU: launch the same command with `torchrun --nproc_per_node N -m
token_assorted.cli train ...` or `accelerate launch`; the effective batch stays `--batch-size`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from typing import Any

from . import add_task_flags, task_options_from_args


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


# flag -> (TrainConfig key, type, help); every default lives in TrainConfig.
OPTIONS: dict[str, tuple[str, Any, str]] = {
    "--task": ("task", str, "task name (prontoqa, prosqa, keys-maze, gsm8k, qa: your own data)"),
    "--strategy": ("strategy", str, "token-assorted (default), cot, sol-only, all-replace, curriculum, poisson, "
                                    "coconut (continuous thoughts), icot (stepwise internalization)"),
    "--data": ("data", str, "training examples (JSONL or JSON list)"),
    "--valid": ("valid", str, "validation examples: greedy accuracy every epoch; the best model is kept"),
    "--vqvae": ("vqvae", str, "stage-1 VQ-VAE directory (needed by the latent strategies)"),
    "--codes": ("codes", str, "precomputed codes JSON instead of --vqvae (see token_assorted/latents.py)"),
    "--out": ("out", str, "output model directory (a plain Hugging Face model dir)"),
    "--model": ("model", str, "tiny | small | base | gpt2 | gpt2-tiny | a local HF model dir | FILE.gguf"),
    "--tokenizer": ("tokenizer", str, "tokenizer dir for runs without a VQ-VAE (default: built from the data)"),
    "--embedding-init": ("embedding_init", str, "initialisation of the latent rows: mean or codebook"),
    "--epochs": ("epochs", int, "training epochs"),
    "--batch-size": ("batch_size", int, "effective batch per optimizer step, over all processes"),
    "--grad-accum": ("grad_accum", int, "micro-batches per optimizer step and process"),
    "--lr": ("lr", float, "peak learning rate (warmup then cosine decay)"),
    "--warmup": ("warmup", float, "warmup: a fraction of all steps if < 1, else a number of steps"),
    "--max-length": ("max_length", int, "longest training sequence; longer examples are skipped"),
    "--m-values": ("m_values", _int_list, "token-assorted: m drawn from these values, e.g. 0,72,128,160"
                   " (default: any number of whole chunks, uniformly)"),
    "--poisson-p": ("poisson_p", float, "poisson: probability of replacing each chunk"),
    "--curriculum-epochs": ("curriculum_epochs", int, "curriculum: epochs per stage"),
    "--curriculum-max-chunks": ("curriculum_max_chunks", int, "curriculum: cap on replaced chunks"),
    "--coconut-thoughts-per-step": ("coconut_thoughts_per_step", int, "coconut: continuous thoughts per step (c)"),
    "--coconut-stages": ("coconut_stages", int, "coconut: last stage (default: the most steps of a trace)"),
    "--coconut-epochs-per-stage": ("coconut_epochs_per_stage", int, "coconut: epochs of each stage"),
    "--coconut-cot-epochs": ("coconut_cot_epochs", int, "coconut: epochs of stage 0, plain CoT "
                             "(default: --coconut-epochs-per-stage)"),
    "--icot-tokens-per-epoch": ("icot_tokens_per_epoch", int, "icot: leading trace tokens removed per epoch"),
    "--icot-smoothing-lambda": ("icot_smoothing_lambda", float, "icot: removal smoothing lambda (4: the paper's)"),
    "--icot-final-epochs": ("icot_final_epochs", int, "icot: last epochs trained with the whole trace removed"),
    "--seed": ("seed", int, "random seed (data order, m draws, initialisation)"),
    "--mixed-precision": ("mixed_precision", str, "auto (bf16 on CUDA only), no or bf16"),
    "--eval-limit": ("eval_limit", int, "validate on the first N examples only"),
    "--eval-batch-size": ("eval_batch_size", int, "prompts generated together in validation"),
    "--max-new-tokens": ("max_new_tokens", int, "generation budget in validation"),
    "--save-every": ("save_every", int, "optimizer steps between resume checkpoints (0: every epoch)"),
    "--max-steps": ("max_steps", int, "stop after this many optimizer steps"),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="stage 2: train an LM on mixed latent/text traces (or a baseline)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of TrainConfig keys (options given here win)")
    for flag, (key, kind, text) in OPTIONS.items():
        parser.add_argument(flag, dest=key, type=kind, default=None, help=text)
    parser.add_argument("--chat-template", dest="chat_template", action="store_true", default=None,
                        help="wrap prompts in the tokenizer's chat template (pretrained chat models)")
    parser.add_argument("--no-latent-vocab-for-baselines", dest="latent_vocab_for_baselines",
                        action="store_false", default=None,
                        help="cot/sol-only with a VQ-VAE: do not add the latent tokens")
    parser.add_argument("--group-by-length", dest="group_by_length", action=argparse.BooleanOptionalAction,
                        default=None, help="batches of examples of similar length (less padding)")
    parser.add_argument("--resume", action="store_true", default=None, help="continue the run saved in --out")
    parser.add_argument("--force", action="store_true",
                        help="write into --out even if it is a non-empty folder that is not a training run")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                        help="no progress bar")
    parser.add_argument("--lora-r", dest="lora_r", type=int, default=None, metavar="R",
                        help="train LoRA adapters of rank R instead of every weight (the latent rows are trained "
                             "in full); alpha, dropout and target_modules: the `lora` key of --config")
    add_task_flags(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import from_mapping, load_yaml
    from ..outdir import claimed
    from ..train import train_lm
    from ..train_config import TrainConfig

    mapping = load_yaml(args.config) if args.config else {}
    if args.config:
        from_mapping(TrainConfig, mapping, args.config)  # the file alone first: its errors name it
    keys = [key for key, _, _ in OPTIONS.values()] + ["chat_template", "latent_vocab_for_baselines",
                                                       "group_by_length", "resume", "progress"]
    mapping.update({key: getattr(args, key) for key in keys if getattr(args, key) is not None})
    mapping["task_options"] = task_options_from_args(args, mapping.get("task_options"))
    if args.lora_r is not None:
        lora = mapping.get("lora") if isinstance(mapping.get("lora"), dict) else {}
        mapping["lora"] = {**lora, "r": args.lora_r}
    config = from_mapping(TrainConfig, mapping, "command line")
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun: one claim, one line
    with claimed(config.out, "train", force=args.force) if config.out and main_process else contextlib.nullcontext():
        out = train_lm(config)
    if main_process:
        print(f"model saved to {out}")
    return 0
