"""Serving a trained model with a standard server, and the prompt text such a server must get.

A stage-2 directory is a plain Hugging Face model, so any OpenAI-compatible server runs it:
`transformers serve DIR` on a CPU, vLLM on a GPU. Latent tokens are ordinary added tokens of
its vocabulary (not "special": servers drop those when they decode), so a completion comes
back with `<boLatent><latent_12>…<eoLatent>` in its text, and `token-assorted explain
--question Q --generated TEXT` decodes those spans.

A completion endpoint tokenizes the prompt text itself (`tokenizer(prompt)`, with the
tokenizer's own special tokens), while training tokenized `[bos] + question + "\\n"`
(`encoding.encode_prompt`). `completion_prompt` finds the text whose server-side tokens
are exactly the trained prompt ids (the question with a newline, after the bos token's text
when the tokenizer does not add it itself), and refuses when there is none; with a chat
template, use the chat endpoint with the question as the user's message instead.
"""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerBase

from ..core.errors import ConfigError
from ..data.encoding import encode_prompt
from ..data.schema import Example
from ..data.tasks.base import Task


def completion_prompt(tokenizer: PreTrainedTokenizerBase, task: Task, question: str,
                      chat_template: bool = False) -> str:
    """The prompt text whose tokens, as a completion server makes them, are the trained prompt's."""
    example = Example(question, [], "?")
    expected = encode_prompt(tokenizer, task, example, chat_template)
    text = task.prompt_text(example)
    candidates = [text]
    if tokenizer.bos_token:
        candidates.append(tokenizer.bos_token + text)
    if chat_template and getattr(tokenizer, "chat_template", None):
        candidates.append(tokenizer.decode(expected, skip_special_tokens=False))
    for candidate in candidates:
        if tokenizer(candidate).input_ids == expected:
            return candidate
    raise ConfigError("no prompt text tokenizes to the prompt the model was trained on; send the token ids "
                      "instead (`prompt` as a list of ids), or, with a chat template, use the chat endpoint")


def model_completion_prompt(model_dir: str | Path, question: str, task: str | None = None) -> str:
    """`completion_prompt` for a trained model directory (its tokenizer, task and chat setting)."""
    from ..data.tokenizer import load_tokenizer
    from ..lm.model_dir import read_model_meta, resolve_task

    meta = read_model_meta(model_dir)
    tokenizer = load_tokenizer(model_dir)
    loaded = _MetaOnly(meta)
    return completion_prompt(tokenizer, resolve_task(loaded, task), question, bool(meta.get("chat_template")))


class _MetaOnly:
    """What `evaluate.resolve_task` reads of a loaded model, without loading the weights."""

    def __init__(self, meta: dict) -> None:
        self.meta, self.task_name = meta, meta.get("task")
