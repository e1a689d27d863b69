"""Text shown on a terminal: control characters escaped, so data cannot drive the terminal.

A question, a generated text or a file name can hold ANSI escape sequences (colours, cursor
moves, a changed window title, hidden text) or bidirectional-override characters that make
text read differently from what it is. Everything user-supplied that the CLI prints goes
through `printable`, which shows such characters as Python escapes (`\\x1b`, `\\u202e`).
"""

from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, C1 controls, and the bidirectional overrides/isolates.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` with every terminal control character escaped (`\\x1b[31m` stays visible as text)."""
    return _CONTROL.sub(lambda match: repr(match.group())[1:-1], text)


def one_line(message: str) -> str:
    """A message on one line, printable: wrapped library errors (transformers, YAML) span several."""
    return printable(" ".join(part.strip() for part in message.splitlines() if part.strip()))
