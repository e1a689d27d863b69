"""`token-assorted vqvae` (not implemented yet)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("vqvae", help="(not implemented yet)")
    parser.set_defaults(func=lambda args: (_ for _ in ()).throw(NotImplementedError("vqvae")))
