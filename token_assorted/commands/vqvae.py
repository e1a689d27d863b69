"""`token-assorted vqvae train|encode|decode|evaluate`: stage 1 from the command line.

    vqvae train    --task T --data TRAIN --valid VALID --out DIR [options | --config FILE.yaml] [--resume]
    vqvae encode   --vqvae DIR --data FILE --task T --out CODES.json [--search-rerank N] [--encode-candidates N]
    vqvae decode   --vqvae DIR --prompt TEXT --codes 12,7,40
    vqvae evaluate --vqvae DIR --data FILE [--task T] [--search-rerank N] [--encode-candidates N] [--out METRICS.json]

Options given on the command line override those of --config, which override the defaults.
Several GPUs: launch `vqvae train` with `torchrun --nproc_per_node N -m token_assorted.cli vqvae
train ...` (or `accelerate launch`); the effective batch stays --batch-size.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from ..core.errors import ConfigError
from . import add_task_flags, task_options_from_args
from .flags import add_config_flags, given


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("vqvae", help="stage 1: train the VQ-VAE, encode traces, decode codes",
                                   description="Stage 1: the VQ-VAE over reasoning-trace chunks.")
    commands = parser.add_subparsers(dest="vqvae_command", metavar="SUBCOMMAND", required=True)
    _register_train(commands)
    _register_encode(commands)
    _register_decode(commands)
    _register_evaluate(commands)


def _register_train(commands: argparse._SubParsersAction) -> None:
    from ..vqvae.options import VQVAETrainConfig

    parser = commands.add_parser("train", help="train a VQ-VAE on a task's traces")
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of options (same names, with _)")
    add_task_flags(parser)  # [qa] task_options come from --fields, --answer-match, --step-split
    add_config_flags(parser, VQVAETrainConfig, skip=("task_options",))
    parser.add_argument("--force", action="store_true",
                        help="write into --out even if it holds files that are not those of a VQ-VAE run of ours "
                             "(ours are written over; a file we did not write is never deleted)")
    parser.set_defaults(func=_train)


def _register_encode(commands: argparse._SubParsersAction) -> None:
    from ..vqvae.options import EncodeOptions

    parser = commands.add_parser("encode", help="write the codes file of a data file (what `train --codes` reads)")
    add_config_flags(parser, EncodeOptions)
    add_task_flags(parser)
    parser.set_defaults(func=_encode)


def _register_decode(commands: argparse._SubParsersAction) -> None:
    from ..vqvae.options import DecodeOptions

    parser = commands.add_parser("decode", help="print the text a sequence of latent tokens stands for")
    add_config_flags(parser, DecodeOptions)
    add_task_flags(parser)
    parser.set_defaults(func=_decode)


def _register_evaluate(commands: argparse._SubParsersAction) -> None:
    from ..vqvae.options import EncodeOptions

    parser = commands.add_parser("evaluate", help="reconstruction accuracy and codebook use of a saved VQ-VAE")
    add_config_flags(parser, EncodeOptions, skip=("max_trace_len",))
    add_task_flags(parser)
    parser.set_defaults(func=_evaluate)


def _options(args: argparse.Namespace, cls: type, source: str):
    """The subcommand's options from its flags, checked as a config file's would be."""
    from ..core.config import from_mapping

    return from_mapping(cls, given(args, cls), source)


def train_config_from_args(args: argparse.Namespace):
    """Defaults <- --config YAML <- command-line flags."""
    from ..core.config import from_mapping, load_yaml, replace
    from ..vqvae.options import VQVAETrainConfig

    config = VQVAETrainConfig()
    if args.config:
        config = from_mapping(VQVAETrainConfig, load_yaml(args.config), args.config)
    values = given(args, VQVAETrainConfig)
    values["task_options"] = task_options_from_args(args, config.task_options)
    return replace(config, values, "command line")


def _task_of(args: argparse.Namespace, loaded):
    """The task given (or the VQ-VAE's), with the VQ-VAE's recorded task options under the flags."""
    from ..data.tasks import get_task

    name = args.task or loaded.task
    recorded = loaded.task_options if name == loaded.task else {}
    return get_task(name, **task_options_from_args(args, recorded))


def _train(args: argparse.Namespace) -> int:
    from ..core.outdir import check_outputs, claimed
    from ..data.tasks import check_data_task, get_task
    from ..vqvae import train_vqvae

    config = train_config_from_args(args)
    if not config.out:
        raise ConfigError("vqvae train: --out is required")
    args.resolved_out = config.out  # for the interrupt message (cli.py)
    check_outputs({"--out": config.out}, {"--data": config.data, "--valid": config.valid,
                                          "--tokenizer": None if config.tokenizer == "word" else config.tokenizer},
                  folders=["--out"])
    check_data_task(get_task(config.task, **config.task_options), config.data)
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun: one claim, one line
    with claimed(config.out, "vqvae", force=args.force) if main_process else contextlib.nullcontext():
        out = train_vqvae(config)
    if main_process:
        print(f"VQ-VAE saved in {out} (metrics: {out / 'metrics.json'})")
    return 0


def _encode(args: argparse.Namespace) -> int:
    from ..core.outdir import check_outputs, file_lock
    from ..core.terminal import printable
    from ..data.tasks import check_data_task
    from ..vqvae import load_vqvae
    from ..vqvae.codes import encode_codes_file
    from ..vqvae.options import EncodeOptions

    options = _options(args, EncodeOptions, "vqvae encode")
    if not options.out:
        raise ConfigError("vqvae encode: --out is required (the codes file to write)")
    check_outputs({"--out": options.out}, {"--data": options.data, "--vqvae": options.vqvae})
    loaded = load_vqvae(options.vqvae, search_rerank=options.search_rerank,
                        encode_candidates=options.encode_candidates)
    task = _task_of(args, loaded)
    check_data_task(task, options.data)
    with file_lock(options.out):
        summary = encode_codes_file(loaded, task, options.data, options.out, options.max_trace_len,
                                    options.batch_size)
    print(printable(summary), file=sys.stderr)
    return 0


def _decode(args: argparse.Namespace) -> int:
    from ..core.terminal import printable
    from ..vqvae import decode_codes, load_vqvae, prompt_ids_for
    from ..vqvae.options import DecodeOptions
    from ..vqvae.store import trace_limit

    options = _options(args, DecodeOptions, "vqvae decode")
    if not options.codes:
        raise ConfigError("--codes: no codes given; pass comma-separated codebook indices, e.g. 12,7,40")
    loaded = load_vqvae(options.vqvae)
    # At most the codes of the longest trace the VQ-VAE takes, counted before any is decoded: 20,000
    # codes would ask the decoder for gigabytes.
    per_chunk, chunk_size = loaded.config.latents_per_chunk, loaded.config.chunk_size
    most = -(-trace_limit(options.vqvae) // chunk_size) * per_chunk
    if len(options.codes) > most:
        raise ConfigError(f"--codes: at most {most} codes ({most // per_chunk} chunks of {chunk_size} tokens, the "
                          f"VQ-VAE's max_trace_len), got {len(options.codes)}")
    task = _task_of(args, loaded)
    print(printable(decode_codes(loaded, prompt_ids_for(loaded, task, options.prompt), options.codes)))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from ..core.io import atomic_write_json
    from ..core.outdir import check_outputs, file_lock
    from ..data.tasks import check_data_task
    from ..vqvae import load_vqvae
    from ..vqvae.metrics import reconstruction_metrics
    from ..vqvae.options import EncodeOptions
    from ..vqvae.store import chunk_traces, trace_limit

    options = _options(args, EncodeOptions, "vqvae evaluate")
    if options.out:
        check_outputs({"--out": options.out}, {"--data": options.data, "--vqvae": options.vqvae})
    loaded = load_vqvae(options.vqvae, search_rerank=options.search_rerank,
                        encode_candidates=options.encode_candidates)
    task = _task_of(args, loaded)
    check_data_task(task, options.data)
    # Traces longer than the VQ-VAE takes are skipped and counted, as training and encoding do:
    # one 5,000-step trace would ask the encoder for hundreds of GB.
    limit = trace_limit(options.vqvae)
    items = chunk_traces(loaded, task, task.load(options.data))
    kept = [item for item in items if item.trace_length <= limit]
    if not kept:
        raise ConfigError(f"{options.data}: every trace is longer than the VQ-VAE's max_trace_len={limit} tokens")
    metrics = reconstruction_metrics(loaded.model, kept, options.batch_size)
    result = {"data": options.data, "search_rerank": loaded.config.search_rerank,
              "encode_candidates": loaded.config.encode_candidates, **metrics,
              **({"skipped_too_long": len(items) - len(kept)} if len(kept) < len(items) else {})}
    if len(kept) < len(items):
        print(f"vqvae evaluate: skipped {len(items) - len(kept)} examples whose trace is longer than "
              f"max_trace_len={limit} tokens", file=sys.stderr)
    if options.out:
        with file_lock(options.out):
            atomic_write_json(options.out, result)
    print(json.dumps(result, indent=2))
    return 0
