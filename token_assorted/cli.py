"""The `token-assorted` command: one entry point, one subcommand per stage.

Each subcommand lives in `token_assorted.commands.<name>` and exposes
`register(subparsers)`; heavy imports (torch, transformers) happen inside the command
functions so `token-assorted --help` and `data` stay fast.

No traceback reaches the user by default. Errors caused by user input (`TokenAssortedError`)
and by the operating system (`OSError`: no space left, no permission, a read-only disk)
print one line and exit 2; Ctrl-C and SIGTERM exit 130; anything else is a bug: one line
"internal error: ..." and exit 1 (`TOKEN_ASSORTED_DEBUG=1` shows its traceback instead).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import signal
import sys
import threading

from . import __version__
from .commands import OneLineParser
from .core.errors import TokenAssortedError
from .core.io import library_os_reason, os_reason
from .core.terminal import one_line

DEBUG_VARIABLE = "TOKEN_ASSORTED_DEBUG"
# OS errors that mean "this output cannot be written" (named after --out when they carry no file).
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}

COMMANDS = ("data", "vqvae", "train", "eval", "explain", "run")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
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
    background = _quiet_threads()
    try:
        result = args.func(args)
    except TokenAssortedError as exc:
        return _fail(args, str(exc), 2)
    except KeyboardInterrupt:
        print(f"token-assorted {args.command}: interrupted{_how_to_resume(args)}", file=sys.stderr)
        return 130
    except OSError as exc:  # one that no write site turned into a WriteError
        return _fail(args, _os_message(args, exc), 2)
    except Exception as exc:  # noqa: BLE001 - the last line of defence against a traceback
        reason = library_os_reason(exc)  # safetensors and torch report the OS's refusal as text
        if reason is not None:
            return _fail(args, f"{_output(args) or type(exc).__name__}: {reason}", 2)
        if os.environ.get(DEBUG_VARIABLE, "") not in ("", "0"):
            raise
        return _fail(args, f"internal error: {type(exc).__name__}: {exc} (a bug: please report it; "
                           f"set {DEBUG_VARIABLE}=1 for the traceback)", 1)
    finally:
        threading.excepthook = background.previous
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if background.failures:  # reported only when the command itself succeeded (else its own error says it)
        print(f"token-assorted {args.command}: warning: {one_line(background.failures[0])}", file=sys.stderr)
    return int(result or 0)


def _how_to_resume(args: argparse.Namespace) -> str:
    """A command that continues an interrupted one, as the user can type it."""
    if args.command == "run":
        return ("; run the same command again to resume: finished stages are reused, and training continues "
                "from its last checkpoint")
    command = "vqvae train" if args.command == "vqvae" and getattr(args, "vqvae_command", "") == "train" else \
        "train" if args.command == "train" else None
    out = _output(args) or getattr(args, "resolved_out", None)
    if command is None or out is None:
        return ""
    from pathlib import Path

    if (Path(out) / "state" / "latest.json").is_file():
        return f"; resume with the same command plus --resume (token-assorted {command} ... --resume)"
    return "; nothing was saved yet: run the same command again to start over"


class _ThreadFailures:
    """Exceptions of background threads (TensorBoard's writer on a full disk), kept to one line."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.previous = threading.excepthook

    def __call__(self, hook_args: threading.ExceptHookArgs) -> None:
        if hook_args.exc_type is SystemExit:
            return
        if os.environ.get(DEBUG_VARIABLE, "") not in ("", "0"):
            self.previous(hook_args)
            return
        exc = hook_args.exc_value
        reason = os_reason(exc) if isinstance(exc, OSError) else library_os_reason(exc) if exc else None
        name = getattr(hook_args.thread, "name", "a background thread")
        self.failures.append(f"{name} stopped: {reason}" if reason else
                             f"{name} stopped: {hook_args.exc_type.__name__}: {exc}")


def _quiet_threads() -> _ThreadFailures:
    hook = _ThreadFailures()
    threading.excepthook = hook
    return hook


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    print(f"token-assorted {args.command}: error: {one_line(message)}", file=sys.stderr)
    return code


def _output(args: argparse.Namespace) -> str | None:
    out = getattr(args, "out", None)
    return str(out) if out else None


def _os_message(args: argparse.Namespace, exc: OSError) -> str:
    """The file an OSError concerns and the OS's reason; a write failure without a file
    name (a log line, a library's own file) is about the command's output folder."""
    if exc.filename:
        return f"{exc.filename}: {os_reason(exc)}"
    if exc.errno in _WRITE_ERRNOS and _output(args):
        return f"{_output(args)}: cannot write: {os_reason(exc)}"
    return str(exc) or type(exc).__name__


def _stop_on_sigterm():
    """Make `kill PID` stop a command the way Ctrl-C does (state saved, worker processes ended).

    Returns the previous handler to restore, or None where signals cannot be set (not the
    main thread)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, interrupt)


if __name__ == "__main__":
    sys.exit(main())
