"""CLI subcommands; each module exposes `register(subparsers)`."""

from __future__ import annotations

import argparse
import typing


class OneLineParser(argparse.ArgumentParser):
    """argparse with a one-line error (`token-assorted train: error: argument --lr: ...`), exit 2,
    instead of the usage block; every subcommand's parser is one too (add_subparsers takes the class)."""

    def error(self, message: str) -> typing.NoReturn:
        from ..core.terminal import one_line

        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text[:40]!r}") from None


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def bounded_int(low: int, high: int):
    """argparse type: an integer in [low, high] (a size a user types is checked before any work)."""
    def parse(text: str) -> int:
        value = _integer(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}], got {value}")
        return value
    parse.__name__ = "integer"
    return parse


# --- the generic task's options (qa), shared by train, vqvae, eval, explain and run ----------
TASK_FLAGS = ("fields", "answer_match", "step_split")


def parse_fields(text: str) -> dict[str, str]:
    """argparse type of --fields: `question=problem,steps=solution,answer=final_answer`."""
    mapping = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        ours, sep, theirs = item.partition("=")
        if not sep or not ours.strip() or not theirs.strip():
            raise argparse.ArgumentTypeError(f"expected OURS=YOURS pairs separated by commas, got {item!r}")
        if ours.strip() in mapping:  # the last one would win silently
            raise argparse.ArgumentTypeError(f"{ours.strip()} is mapped twice ({ours.strip()}={mapping[ours.strip()]} "
                                             f"and {item.strip()})")
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
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value
