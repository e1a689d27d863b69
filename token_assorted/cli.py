"""The `token-assorted` command: one entry point, one subcommand per stage.

Each subcommand lives in `token_assorted.commands.<name>` and exposes
`register(subparsers)`; heavy imports (torch, transformers) happen inside the command
functions so `token-assorted --help` and `data` stay fast. Errors caused by user input
(`TokenAssortedError`) print one line and exit 2; Ctrl-C and SIGTERM exit 130.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

from . import __version__
from .errors import TokenAssortedError

COMMANDS = ("data", "vqvae", "train", "eval", "explain", "run")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="token-assorted",
        description="Token Assorted: train LMs to reason with a mix of discrete latent and text tokens.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"token_assorted.commands.{name.replace('-', '_')}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Never reach a model hub unless the user asked for it explicitly.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    previous = _stop_on_sigterm()
    try:
        result = args.func(args)
    except TokenAssortedError as exc:
        print(f"token-assorted {args.command}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"token-assorted {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return int(result or 0)


def _stop_on_sigterm():
    """Make `kill PID` stop a command the way Ctrl-C does (state saved, worker processes ended).

    Returns the previous handler to restore, or None where signals cannot be set (not the
    main thread)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, interrupt)


def one_line(message: str) -> str:
    """A message on one line: wrapped library errors (transformers, YAML) span several."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


if __name__ == "__main__":
    sys.exit(main())
