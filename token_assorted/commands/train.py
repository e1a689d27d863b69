"""`token-assorted train`: stage 2, an LM on mixed latent/text traces (or a baseline).

Options override a YAML `--config FILE` (keys of `train.TrainConfig`), which overrides the
defaults. Multi-GPU: launch the same command with `torchrun --nproc_per_node N -m
token_assorted.cli train ...` or `accelerate launch`; the effective batch stays `--batch-size`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

from . import add_task_flags, task_options_from_args
from .flags import add_config_flags, given, merge


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..lm.config import TrainConfig

    parser = subparsers.add_parser(
        "train", help="stage 2: train an LM on mixed latent/text traces (or a baseline)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of TrainConfig keys (options given here win)")
    add_config_flags(parser, TrainConfig, skip=("task_options",))
    parser.add_argument("--force", action="store_true",
                        help="write into --out even if it holds files that are not those of a training run of "
                             "ours, or a trained model (ours are written over; a file we did not write is "
                             "never deleted)")
    add_task_flags(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..core.config import from_mapping, load_yaml
    from ..core.outdir import check_outputs, claimed, remove_ours
    from ..data.tasks import check_data_task, get_task
    from ..lm.config import TrainConfig
    from ..lm.train import refuse_trained_model, train_lm

    mapping = load_yaml(args.config) if args.config else {}
    if args.config:
        from_mapping(TrainConfig, mapping, args.config)  # the file alone first: its errors name it
    mapping = merge(mapping, given(args, TrainConfig))
    mapping["task_options"] = task_options_from_args(args, mapping.get("task_options"))
    config = from_mapping(TrainConfig, mapping, "command line")
    args.resolved_out = config.out or None  # for the interrupt message (cli.py)
    if config.out:
        check_outputs({"--out": config.out}, {"--data": config.data, "--valid": config.valid, "--codes": config.codes,
                                              "--vqvae": config.vqvae, "--tokenizer": config.tokenizer,
                                              "--model": config.model if Path(config.model).exists() else None},
                      folders=["--out"])
    if config.task and config.data:
        check_data_task(get_task(config.task, **config.task_options), config.data)
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun: one claim, one line
    with claimed(config.out, "train", force=args.force) if config.out and main_process else contextlib.nullcontext():
        if not config.resume and main_process and config.out:
            if args.force:  # start over: the saved state of ours goes (a file we did not write stays)
                remove_ours(Path(config.out) / "state")
            else:
                refuse_trained_model(Path(config.out))
        out = train_lm(config)
    if main_process:
        print(f"model saved to {out}")
    return 0
