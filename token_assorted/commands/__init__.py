"""CLI subcommands; each module exposes `register(subparsers)`."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# --- the generic task's options (qa), shared by train, vqvae, eval, explain and run ----------
TASK_FLAGS = ("fields", "answer_match", "step_split")


def parse_fields(text: str) -> dict[str, str]:
    """argparse type of --fields: `question=problem,steps=solution,answer=final_answer`."""
    mapping = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        ours, sep, theirs = item.partition("=")
        if not sep or not ours.strip() or not theirs.strip():
            raise argparse.ArgumentTypeError(f"expected OURS=YOURS pairs separated by commas, got {item!r}")
        mapping[ours.strip()] = theirs.strip()
    return mapping


def add_task_flags(parser: argparse.ArgumentParser) -> None:
    """--fields, --answer-match and --step-split: the options of the generic task `qa`."""
    from ..data.tasks.qa import ANSWER_MATCHES, FIELD_ROLES, STEP_SPLITS

    group = parser.add_argument_group("generic task options (--task qa); recorded with the model")
    group.add_argument("--fields", type=parse_fields, default=None, metavar="OURS=YOURS,...",
                       help=f"the data's field names for ours ({', '.join(FIELD_ROLES)}), "
                            "e.g. question=problem,steps=solution,answer=final_answer")
    group.add_argument("--answer-match", dest="answer_match", choices=ANSWER_MATCHES, default=None,
                       help="how answers are compared: exact (normalised text), numeric (math equivalence) "
                            "or choice (one of the record's options)")
    group.add_argument("--step-split", dest="step_split", choices=STEP_SPLITS, default=None,
                       help="a steps field that is one text is cut into its lines or its sentences")


def task_options_from_args(args: argparse.Namespace, base: dict | None = None) -> dict:
    """`base` task options with the task flags given on the command line on top."""
    options = dict(base or {})
    options.update({name: getattr(args, name) for name in TASK_FLAGS if getattr(args, name, None) is not None})
    return options


def non_negative_int(text: str) -> int:
    """argparse type: an integer of at least 0 (a seed: random.Random(-5) would equal Random(5))."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value
