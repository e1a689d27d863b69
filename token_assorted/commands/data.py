"""`token-assorted data`: generate a task's data set, or summarise a data file.

    token-assorted data generate prosqa --n 1000 --seed 0 --out train.jsonl [--nodes 10 ...]
    token-assorted data stats train.jsonl [--task prosqa]

Task options of `generate` come from `Task.generator_options()` and are parsed after the
task is known, so every task with a generator (ProntoQA, ProsQA, the Keys-Finding Maze)
gets its own `--option` flags. The same seed always writes the same bytes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from typing import Any

from ..core.errors import ConfigError, DataError
from ..core.io import read_records
from ..core.terminal import printable
from ..data.schema import Example, save_examples
from . import OneLineParser, add_task_flags, bounded_int, non_negative_int, task_options_from_args

MAX_EXAMPLES = 10_000_000  # a data set beyond this is a typo, not an experiment (it would fill the memory)
MAX_LISTED_ANSWERS = 20  # beyond this many distinct answers a histogram says nothing
GENERATE_USAGE = "token-assorted data generate TASK --n N --out FILE [--seed S] [task options]"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="generate a task's data set or summarise a data file")
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    generate = actions.add_parser(
        "generate", help="generate examples of TASK (task options: `data generate TASK --help`)",
        usage=GENERATE_USAGE,
        description="Generate examples of TASK as JSONL. Task options: `data generate TASK --help`.")
    # TASK is optional here only so that a missing one gets `run_generate`'s error, which
    # lists the tasks. Everything after TASK is parsed by a second parser that knows the
    # task's options (so `data generate prosqa --help` shows them).
    generate.add_argument("task", nargs="?", metavar="TASK", help="task name (prontoqa, prosqa, keys-maze)")
    generate.add_argument("task_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    generate.set_defaults(func=run_generate)

    stats = actions.add_parser("stats", help="print a JSON summary of a data file")
    stats.add_argument("file", help="a JSONL file or JSON list of examples (--task qa: any data source, "
                                    "parquet, CSV, a saved data set folder, hf:NAME)")
    stats.add_argument("--task", default=None, help="task of the file (default: inferred from the records)")
    add_task_flags(stats)
    stats.set_defaults(func=run_stats)


# --- generate ----------------------------------------------------------------------------
def generate_parser(task_name: str, options: dict[str, tuple[type, Any, str]]) -> argparse.ArgumentParser:
    """The parser of `data generate TASK ...`: common flags plus one flag per task option."""
    parser = OneLineParser(prog=f"token-assorted data generate {task_name}",
                                     description=f"Generate {task_name} examples as JSONL.")
    parser.add_argument("--n", type=bounded_int(1, MAX_EXAMPLES), required=True,
                        help=f"number of examples (at most {MAX_EXAMPLES:,})")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="random seed >= 0 (same seed, same file)")
    parser.add_argument("--out", required=True, help="output JSONL file (written atomically)")
    group = parser.add_argument_group(f"{task_name} options")
    for name, (kind, default, text) in options.items():
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=default,
                               help=f"{text} (default: {default})")
        else:
            group.add_argument(flag, dest=name, type=kind, default=default, help=f"{text} (default: {default})")
    return parser


def run_generate(args: argparse.Namespace) -> int:
    from ..data.tasks import TASK_NAMES, get_task

    def generators() -> str:  # for the errors only: it imports every task
        return ", ".join(name for name in TASK_NAMES if get_task(name).has_generator)

    if args.task is None:
        raise ConfigError(f"no task given: {GENERATE_USAGE}; tasks with a generator: {generators()}")
    task = get_task(args.task)
    if not task.has_generator:
        raise ConfigError(f"task {task.name!r} has no generator (load its official files instead); "
                          f"tasks with one: {generators()}")
    options = task.generator_options()
    parsed = generate_parser(task.name, options).parse_args(args.task_args)
    examples = task.generate(parsed.n, parsed.seed, **{name: getattr(parsed, name) for name in options})
    save_examples(parsed.out, examples)
    print(printable(f"wrote {len(examples)} {task.name} examples to {parsed.out}"), file=sys.stderr)
    return 0


# --- stats -------------------------------------------------------------------------------
def run_stats(args: argparse.Namespace) -> int:
    from ..data.tasks import get_task

    task = get_task(args.task, **task_options_from_args(args)) if args.task else infer_file_task(args.file)
    examples = task.load(args.file)
    print(json.dumps({"file": args.file, "task": task.name, **summarize(examples), **task.stats(examples)},
                     indent=2))
    return 0


def infer_file_task(path: str):
    """The task of a data file, from its first record; the record is validated first so a
    malformed file reports its bad field rather than an unknown task."""
    from ..data.tasks import infer_task

    line, record = read_records(path)[0]
    Example.from_dict(record, path=path, line=line, allow_empty_steps=True)
    task = infer_task(record)
    if task is None:
        raise DataError(path, "cannot tell which task these records belong to; pass --task", line=line)
    return task


def summarize(examples: list[Example]) -> dict[str, Any]:
    """Figures common to every task: sizes in words, the step histogram, the answers."""
    def mean_words(texts: list[str]) -> float:
        return round(statistics.fmean(len(text.split()) for text in texts), 2)

    answers = Counter(example.answer for example in examples)
    summary: dict[str, Any] = {
        "count": len(examples),
        "question_words_mean": mean_words([e.question for e in examples]),
        "trace_words_mean": mean_words([" ".join(e.steps) for e in examples]),
        "answer_words_mean": mean_words([e.answer for e in examples]),
        "steps_histogram": {str(k): v for k, v in sorted(Counter(len(e.steps) for e in examples).items())},
        "distinct_answers": len(answers),
    }
    if len(answers) <= MAX_LISTED_ANSWERS:
        summary["answer_distribution"] = {a: round(c / len(examples), 4) for a, c in sorted(answers.items())}
    return summary
