"""`token-assorted explain`: show what a model's latent tokens stand for.

Generates for a question (or reads an eval's predictions file) and prints the raw
output beside the trace with every latent span decoded by the stage-1 VQ-VAE.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..generation.config import MAX_NEW_TOKENS
from . import add_task_flags, bounded_int, positive_int, task_options_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("explain", help="decode a model's latent tokens back into text",
                                   description=__doc__)
    parser.add_argument("--model", required=True, type=Path, help="model dir written by `train`")
    parser.add_argument("--vqvae", type=Path, default=None,
                        help="VQ-VAE dir (default: the one recorded in the model dir)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--question", help="a question to answer and explain")
    source.add_argument("--predictions", type=Path, help="RESULTS.predictions.jsonl written by `eval`")
    parser.add_argument("--generated", default=None, metavar="TEXT",
                        help="with --question: explain this output (e.g. a server's completion, latent tokens "
                             "included) instead of generating")
    parser.add_argument("--print-prompt", action="store_true",
                        help="with --question: print (as JSON) the completion prompt a server such as `transformers "
                             "serve` must get for the model to see the prompt it was trained on, and stop")
    parser.add_argument("--task", default=None, help="task name (default: the model's)")
    parser.add_argument("--limit", type=positive_int, default=5, help="explain at most N predictions (default 5)")
    parser.add_argument("--max-new-tokens", type=bounded_int(1, MAX_NEW_TOKENS), default=128,
                        help=f"generation length cap (1 to {MAX_NEW_TOKENS})")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    parser.add_argument("--device", default="auto", help="auto (a CUDA GPU when there is one), cpu, cuda or cuda:N")
    add_task_flags(parser)
    parser.set_defaults(func=run_explain)


def run_explain(args: argparse.Namespace) -> int:
    from ..core.errors import ConfigError
    from ..core.terminal import printable
    from ..evaluation.explain import Explainer, render

    if (args.generated is not None or args.print_prompt) and args.question is None:
        raise ConfigError("--generated and --print-prompt need --question: the question the text answers")
    if args.print_prompt:
        from ..evaluation.serving import model_completion_prompt

        print(json.dumps(model_completion_prompt(args.model, args.question, args.task), ensure_ascii=False))
        return 0
    explainer = Explainer(args.model, args.vqvae, args.task, args.device, task_options_from_args(args))
    if explainer.decoder is None and explainer.loaded.latent_vocab is not None:
        print("note: no VQ-VAE found; latent spans are shown undecoded (pass --vqvae DIR)")
    if args.generated is not None:
        items = [({}, explainer.generated_text(args.question, args.generated))]
    elif args.question is not None:
        items = [({}, explainer.question(args.question, args.max_new_tokens))]
    else:
        items = explainer.predictions(args.predictions, args.limit)
    for record, explanation in items:
        if args.json:
            print(json.dumps({**explanation.to_dict(), **{k: record[k] for k in ("index", "correct")
                                                          if k in record}}, ensure_ascii=False))
            continue
        header = f"#{record['index']} " if "index" in record else ""
        if "correct" in record:
            header += "correct " if record["correct"] else "WRONG "
        # Questions and generated text are data: escape control characters (ANSI sequences).
        print(printable(f"{header}question: {explanation.question}"))
        print(printable(f"  raw:       {explanation.raw}"))
        print(printable(f"  explained: {render(explanation)}"))
    return 0
