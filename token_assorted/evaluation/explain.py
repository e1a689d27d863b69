"""Explaining latent tokens: every latent span of a generation decoded back into text.

Latent tokens are codebook indices of the stage-1 VQ-VAE, so its decoder — conditioned
on the same prompt — turns a span `<boLatent> z_1 … z_k <eoLatent>` into the text chunks
the codes stand for. `explain_ids` splits generated ids into text runs and latent spans,
decodes each span, and `render` prints the trace with each span visibly marked:
`[latent: <latent_12><latent_7> ≈ "Tom is a terpus . Every terpus is"]`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from ..core.errors import CheckpointError, ConfigError, DataError
from ..core.io import read_records
from ..data.latent_tokens import LatentVocab, latent_token

# (prompt_ids, codes) -> the text those codes decode to
LatentDecoder = Callable[[list[int], list[int]], str]


@dataclass
class Segment:
    """A run of text tokens, or one latent span (delimiters included in `ids`)."""

    kind: str  # "text" or "latent"
    ids: list[int]
    text: str  # the raw tokens as decoded by the LM tokenizer
    codes: list[int] = field(default_factory=list)  # codebook indices of a latent span
    decoded: str | None = None  # the VQ-VAE decoder's text of a latent span


@dataclass
class Explanation:
    question: str
    segments: list[Segment]

    @property
    def raw(self) -> str:
        """The generation as the LM wrote it, latent tokens included."""
        return " ".join(s.text for s in self.segments if s.text)

    def to_dict(self) -> dict[str, Any]:
        return {"question": self.question, "raw": self.raw, "explained": render(self),
                "spans": [{"codes": s.codes, "decoded": s.decoded} for s in self.segments if s.kind == "latent"]}


def split_spans(ids: list[int], vocab: LatentVocab) -> list[tuple[str, list[int]]]:
    """Split ids into ("text", ids) runs and ("latent", ids) spans; an unclosed span ends the list."""
    parts: list[tuple[str, list[int]]] = []
    current: list[int] = []
    in_latent = False
    for token in ids:
        starts = token == vocab.begin_id or (not in_latent and vocab.id_to_code(token) is not None)
        if starts and not in_latent:
            # A code without <boLatent> still belongs to a latent span.
            if current:
                parts.append(("text", current))
            current, in_latent = [], True
        elif in_latent and not vocab.is_latent(token):
            parts.append(("latent", current))
            current, in_latent = [], False
        current.append(token)
        if token == vocab.end_id and in_latent:
            parts.append(("latent", current))
            current, in_latent = [], False
    if current:
        parts.append(("latent" if in_latent else "text", current))
    return parts


def explain_ids(question: str, prompt_ids: list[int], ids: list[int], tokenizer: PreTrainedTokenizerBase,
                vocab: LatentVocab | None, decoder: LatentDecoder | None) -> Explanation:
    """Split generated ids into segments and decode every latent span (when a decoder is given)."""
    drop = {tokenizer.pad_token_id, tokenizer.eos_token_id}
    ids = [t for t in ids if t not in drop]
    if vocab is None:
        return Explanation(question, [Segment("text", ids, tokenizer.decode(ids))])
    segments = []
    for kind, part in split_spans(ids, vocab):
        segment = Segment(kind, part, tokenizer.decode(part, skip_special_tokens=False))
        if kind == "latent":
            segment.codes = [c for c in (vocab.id_to_code(t) for t in part) if c is not None]
            if decoder is not None and segment.codes:
                segment.decoded = decoder(prompt_ids, segment.codes)
        segments.append(segment)
    return Explanation(question, segments)


def render(explanation: Explanation) -> str:
    """The trace with each latent span replaced by a visible, decoded marker."""
    pieces = []
    for segment in explanation.segments:
        if segment.kind == "text":
            pieces.append(segment.text)
            continue
        codes = "".join(latent_token(c) for c in segment.codes)
        decoded = f' ≈ "{segment.decoded}"' if segment.decoded is not None else " (no VQ-VAE to decode)"
        pieces.append(f"[latent: {codes}{decoded}]")
    return " ".join(p for p in pieces if p)


# --------------------------------------------------------------------------- loading
def vqvae_decoder(vqvae_dir: str | Path, *, codebook_size: int | None = None, chunk_size: int | None = None,
                  tokenizer: Any = None) -> LatentDecoder:
    """A decoder over the stage-1 VQ-VAE in `vqvae_dir` (token_assorted.vqvae).

    With the model's K, L and tokenizer given, a VQ-VAE that differs is refused
    (CheckpointError): its codes would decode to wrong text without any sign.
    """
    from ..vqvae import decode_codes, load_vqvae

    loaded = load_vqvae(vqvae_dir, codebook_size=codebook_size, chunk_size=chunk_size, tokenizer=tokenizer)
    per_chunk = loaded.config.latents_per_chunk

    def decode(prompt_ids: list[int], codes: list[int]) -> str:
        # A model may stop a span mid-chunk; decode the whole chunks and say what was left over.
        whole = len(codes) - len(codes) % per_chunk
        text = decode_codes(loaded, prompt_ids, codes[:whole]) if whole else ""
        if whole < len(codes):
            text += f" …(+{len(codes) - whole} code(s) of an incomplete chunk)"
        return text.strip()

    return decode


def find_vqvae_dir(model_dir: str | Path, meta: dict[str, Any], override: str | Path | None) -> Path | None:
    """The VQ-VAE dir given, else the one the model dir records (absolute or relative to it)."""
    if override is not None:
        path = Path(override)
        if not path.is_dir():
            raise CheckpointError(f"{path}: VQ-VAE directory not found")
        return path
    recorded = meta.get("vqvae")
    if not recorded:
        return None
    for candidate in (Path(recorded), Path(model_dir) / recorded):
        if candidate.is_dir():
            return candidate
    return None


@dataclass
class Explainer:
    """A model dir and its VQ-VAE, ready to explain questions or predictions."""

    model_dir: Path
    vqvae_dir: Path | None = None
    task: str | None = None
    device: str = "auto"  # auto (a CUDA GPU when there is one), cpu, cuda or cuda:N
    task_options: dict[str, Any] | None = None  # the generic task's, over those recorded with the model

    def __post_init__(self) -> None:
        from ..lm.model_dir import load_model_dir, resolve_task

        self.loaded = load_model_dir(self.model_dir, self.device)
        if "coconut" in self.loaded.meta:
            raise ConfigError(f"{self.model_dir}: a Coconut model's thoughts are continuous vectors, with no text "
                              f"to decode; score it with `token-assorted eval` (its own generation loop)")
        if "coconut_pause" in self.loaded.meta:
            raise ConfigError(f"{self.model_dir}: a Coconut-Pause model answers after forced <pause> tokens, with "
                              f"nothing to decode; score it with `token-assorted eval` (it forces them)")
        self.task_obj = resolve_task(self.loaded, self.task, self.task_options)
        found = find_vqvae_dir(self.model_dir, self.loaded.meta, self.vqvae_dir)
        vocab = self.loaded.latent_vocab
        self.decoder = None
        if found is not None and vocab:
            self.decoder = vqvae_decoder(found, codebook_size=vocab.codebook_size,
                                         chunk_size=self.loaded.meta.get("chunk_size"),
                                         tokenizer=self.loaded.tokenizer)

    def _prompt_ids(self, question: str) -> list[int]:
        from ..data.encoding import encode_prompt
        from ..data.schema import Example

        return encode_prompt(self.loaded.tokenizer, self.task_obj, Example(question, [], "?"),
                             self.loaded.chat_template)

    def question(self, question: str, max_new_tokens: int = 128) -> Explanation:
        """Generate greedily for `question` and explain the output."""
        from ..generation.config import EvalConfig
        from ..generation.generate import generate_ids

        prompt = self._prompt_ids(question)
        config = EvalConfig(batch_size=1, max_new_tokens=max_new_tokens, progress=False)
        ids = generate_ids(self.loaded.model, self.loaded.tokenizer, [prompt], config).ids[0]
        return explain_ids(question, prompt, ids, self.loaded.tokenizer, self.loaded.latent_vocab, self.decoder)

    def generated_text(self, question: str, generated: str) -> Explanation:
        """Explain an already generated text (e.g. a line of an eval's predictions file)."""
        tokenizer = self.loaded.tokenizer
        ids = tokenizer(generated, add_special_tokens=False).input_ids
        return explain_ids(question, self._prompt_ids(question), ids, tokenizer, self.loaded.latent_vocab,
                           self.decoder)

    def generated_ids(self, question: str, ids: list[int]) -> Explanation:
        """Explain generated token ids (a line of an eval's predictions file)."""
        return explain_ids(question, self._prompt_ids(question), ids, self.loaded.tokenizer, self.loaded.latent_vocab,
                           self.decoder)

    def predictions(self, path: str | Path, limit: int | None = None) -> list[tuple[dict, Explanation]]:
        """Explain the lines of a RESULTS.predictions.jsonl file (`eval`'s), from their token ids."""
        out, size = [], len(self.loaded.tokenizer)
        for line, record in read_records(path)[:limit]:
            for key in ("question", "generated"):
                if not isinstance(record.get(key), str):
                    raise DataError(path, "missing or not a string", line=line, field=key)
            ids = record.get("generated_ids")
            if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < size
                                                    for i in ids):
                raise DataError(path, f"must be a list of token ids below {size}", line=line, field="generated_ids")
            out.append((record, self.generated_ids(record["question"], ids)))
        return out
