"""The stage-1 VQ-VAE: trace chunks -> discrete latent tokens -> trace chunks.

A reasoning trace is cut into chunks of L text tokens (a trailing partial chunk padded, so
the whole trace can be replaced). For each chunk, given the prompt P:

    chunk --f_enc--> L/r latents --q--> L/r codes --f_dec--> L hidden states --mixture--> L tokens

`VQVAE` ties the parts (parts.py: each a module that owns its weights): the training pass,
the codes of chunks (the nearest codebook vector, quantizer.py, or the best-fitting code,
search.py) and the text of codes (greedy decoding, decoding.py). Why each part is what it is,
and what was measured and dropped: BENCHMARKS.md, "Stage 1".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .decoding import greedy_tokens
from .parts import VQVAEParts
from .search import best_fitting_codes, encoding_candidates, training_codes


@dataclass
class VQVAEOutput:
    predictions: Tensor  # (C, L) every real chunk's most probable tokens (teacher-forced)
    codes: Tensor  # (C, L/r) codebook indices
    recon_loss: Tensor  # NLL over all L positions (pads included: the decoder learns to write them)
    vq_loss: Tensor  # commitment loss (assignment "nearest") or the encoder's code classification loss ("search")

    @property
    def loss(self) -> Tensor:
        return self.recon_loss + self.vq_loss


class VQVAE(VQVAEParts):
    """Chunk encoder, quantizer and prompt-conditioned chunk decoder: training pass, codes and decoding."""

    def forward(self, prompt_ids: Tensor, prompt_pad: Tensor, chunk_ids: Tensor, chunk_present: Tensor) -> VQVAEOutput:
        """Reconstruct (B, N, L) chunks; `chunk_present` (B, N) marks real chunks (not batch padding)."""
        memory = self.encode_prompt(prompt_ids, prompt_pad)  # (B, P, D)
        latents = self.encode(chunk_ids, memory, prompt_pad)  # (B, N, L/r, D)
        quantized, codes, vq_loss = self._assign(prompt_ids, prompt_pad, chunk_ids, chunk_present, memory, latents)
        grid = latents.new_zeros(latents.shape)
        grid[chunk_present] = quantized.to(grid.dtype)
        previous = self.previous(chunk_ids)  # (B, N, L, D) or None
        hidden = self.decoder(grid, memory, prompt_pad, previous)  # (B, N, L, D)
        targets = chunk_ids[chunk_present]  # (C, L)
        prefix = previous if self.config.copy_prefix else None  # the copy prefix reads the same features
        head, keys = self.copy_head, self.copy_keys(memory, prompt_ids)
        if self.vocab.output_size:
            recon_loss = -head.target_log_probs(self.tokens, hidden, memory, prompt_pad, prompt_ids, targets,
                                                chunk_present, prefix, keys).mean()
            predictions = head.predict(self.tokens, hidden, memory, prompt_pad, prompt_ids, prefix, keys)
            predictions = predictions[chunk_present]
        else:  # the whole distribution
            log_p = head.log_probs(self.tokens, hidden, memory, prompt_pad, prompt_ids, chunk_present, prefix, keys)
            recon_loss = F.nll_loss(log_p.flatten(0, 1), targets.flatten())
            predictions = log_p.detach().argmax(-1)
        return VQVAEOutput(predictions, codes, recon_loss, vq_loss)

    def _assign(self, prompt_ids: Tensor, prompt_pad: Tensor, chunk_ids: Tensor, present: Tensor, memory: Tensor,
                latents: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The real chunks' codes: quantized (C, L/r, D), codes (C, L/r) and the quantizer's loss.

        "nearest": the VQ quantizer (commitment loss). "search": the code under which the
        decoder finds the chunk most likely, among the encoder's candidates in training and
        among its `encode_candidates` likeliest otherwise (0: all K); the loss trains the
        encoder to predict it.
        """
        if self.config.assignment == "nearest":
            return self.quantizer(latents[present])
        codebook = self.quantizer
        with torch.no_grad():
            if self.training:
                logits = codebook.classifier(latents[:, :, 0])  # (B, N, K)
                candidates = codebook.candidates(logits, self.config.search_candidates, self.config.search_explore)
                codes = training_codes(self, prompt_ids, prompt_pad, chunk_ids, present, memory, candidates)  # (C,)
                codebook.record(codes)  # may re-seed unused codes: before the graph below reads the table
            else:  # the encoder's likeliest codes, or all K
                candidates = encoding_candidates(codebook.classifier(latents[present][:, 0]),
                                                 self.config.encode_candidates)  # (C, N)
                codes = best_fitting_codes(self, prompt_ids, prompt_pad, chunk_ids, present, memory, candidates)
        loss = F.cross_entropy(codebook.classifier(latents[present][:, 0]).float(), codes)
        return codebook.vectors(codes)[:, None], codes[:, None], loss

    @torch.no_grad()
    def codes_of(self, prompt_ids: Tensor, prompt_pad: Tensor, chunk_ids: Tensor, chunk_present: Tensor) -> Tensor:
        """Latent tokens of the real chunks, (C, L/r) in row-major (example, chunk) order."""
        memory = self.encode_prompt(prompt_ids, prompt_pad)
        latents = self.encode(chunk_ids, memory, prompt_pad)
        return self._assign(prompt_ids, prompt_pad, chunk_ids, chunk_present, memory, latents)[1]

    @torch.no_grad()
    def tokens_of(self, prompt_ids: Tensor, prompt_pad: Tensor, codes: Tensor, chunk_present: Tensor) -> Tensor:
        """Greedy decoding: the real chunks' (C, L/r) codes -> their (C, L) token ids (pads included).

        `chunk_present` (B, N) places the codes in their traces, row-major, under the (B, P) prompts.
        """
        memory = self.encode_prompt(prompt_ids, prompt_pad)  # (B, P, D)
        grid = memory.new_zeros(*chunk_present.shape, self.config.latents_per_chunk, self.config.d_model)
        grid[chunk_present] = self.quantizer.vectors(codes).to(grid.dtype)
        index = torch.arange(chunk_present.shape[1], device=codes.device).expand(chunk_present.shape)  # (B, N)
        return greedy_tokens(self, grid, index, memory, prompt_pad, prompt_ids)[chunk_present]
