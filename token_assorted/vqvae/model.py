"""The stage-1 VQ-VAE: trace chunks -> discrete latent tokens -> trace chunks.

A reasoning trace C is cut into chunks of L text tokens. For each chunk:

    prompt P --g--> memory (P, D)                       (prompt encoder, run once per example)
    chunk (L) --f_enc(· | memory, chunk index)--> L/r vectors (D)
    vectors --q--> nearest of K codebook vectors        (the latent tokens are their indices)
    codes --f_dec(· | memory, chunk index)--> L hidden states
    hidden --(vocabulary head mixed with a copy head over P)--> L distributions over the vocabulary

Choices the paper leaves open, and why we made them:
- Encoder and decoder are small pre-norm transformer stacks (`nn.TransformerDecoder`
  used without a causal mask: bidirectional self-attention inside the chunk plus
  cross-attention to g(P)). The encoder reads the prompt too, so a code only has to
  carry what the prompt does not already say.
- The encoder summarises a chunk through L/r learned query slots placed before the
  chunk's tokens (like a [CLS] token per latent), not by pooling, so r is free.
- The decoder is non-autoregressive: L learned position queries, the chunk's quantized
  vectors and its index in the trace, all decoded in one pass. A chunk therefore decodes
  on its own (no other chunk's text is needed) and decoding costs one forward pass.
- Quantizer: vector-quantize-pytorch's `VectorQuantize` with an EMA codebook, k-means
  initialisation on the first batch, dead-code replacement (codes whose EMA usage falls
  below a threshold are re-seeded from the batch's encoder outputs), a low-dimensional
  codebook (`codebook_dim`, projected in and out; small codebooks are used more evenly)
  and by default the plain straight-through estimator (`rotation_trick` swaps in the
  rotation trick of Fifty et al., 2024, which passes the encoder a gradient rotated onto
  the code's direction; see BENCHMARKS.md, "Stage 1"). Distances and EMA run in fp32 (autocast off).
- Assignment by search (`assignment: search`, search.py; one latent per chunk only): instead
  of the nearest codebook vector, a chunk gets the code under which the decoder finds it most
  likely (K tries outside training, the encoder's candidates in training); the encoder learns
  to predict that code. On ProsQA at L = r = 16 the nearest-vector code never learned which
  branch the path takes (BENCHMARKS.md, "Stage 1"). `search_rerank: n` checks the n most
  likely codes by decoding them greedily and keeps the one that writes the chunk best.
- Decoding is greedy by default; `beams` > 1 (beam.py) finds the most probable chunk text
  under a code instead. That text was the chunk a little less often than greedy decoding's on
  ProsQA (0.945 against 0.947) and more often on ProntoQA (0.855 against 0.834), while
  checking codes by their greedy decoding gained more on both (BENCHMARKS.md, "Stage 1").
- The commitment weight beta defaults to 0.25 (the VQ-VAE paper's value; not tuned).
- The output layer shares the token embeddings (`tie_embeddings`): half the parameters
  with a 49k-token pretrained vocabulary. On ProsQA it made no visible difference in a
  rough comparison (valid token accuracy 0.658 tied vs 0.663 untied at step 250; the runs
  also differ in embedding init and schedule length, see BENCHMARKS.md, "Stage 1").
- Copy head (`copy_head`, pointer-generator style). The concept names of ProsQA and
  ProntoQA traces are arbitrary words that only the prompt supplies; a decoder that must
  regenerate them from the vocabulary head learned the template words and stalled at
  0.66-0.70 token accuracy. With the copy head each output position also attends over
  the prompt's positions (one head: queries from the decoder state, keys from g(P)),
  the attention weights are scattered onto those positions' token ids, and a learned
  gate p_gen = sigmoid(w . [h; context]) mixes the two:
      p(w) = p_gen * softmax(logits)(w) + (1 - p_gen) * sum_{j : P_j = w} attention_j.
  The loss is the NLL of that mixture. It is computed in fp32 and in log space
  (logaddexp of the two log-weighted terms; an id no prompt position holds gets an exact
  log 0, with a gradient-safe log); `VQVAE.log_probs` gives the whole distribution, which
  sums to 1. The head reads only g(P) and this chunk's decoder states, so a chunk still
  decodes from its own latent(s), the prompt and its index alone. Checkpoints saved
  before the flag existed load with copy_head=False. Measured at 250 CPU steps, L = r =
  16, K = 64: valid token accuracy 0.658 -> 0.738 on ProsQA and 0.674 -> 0.741 on
  ProntoQA (BENCHMARKS.md, "Stage 1"); choosing *which* prompt concepts a chunk
  names, from one 6-bit code, is what remains wrong.
- Word dropout (`word_dropout`, autoregressive decoder only, training only): each earlier
  token the decoder reads is replaced by the pad token with this probability, so the
  decoder cannot reconstruct a chunk from its own prefix and the prompt alone and has to
  read the code (Bowman et al., 2016, against posterior collapse in text VAEs). Without it
  the ProsQA codebook use fell to 28 % mid-run (BENCHMARKS.md, "Stage 1").
- Local context (`local_context` = k; 0 here, 3 in the `paper` and `gpu` presets): every prompt position's input
  also holds projections of the k token embeddings before it, and so does every input
  of the autoregressive decoder. Following a ProsQA trace is an induction-head lookup:
  after writing "Every terpus is a", copy the prompt word whose three predecessors are
  "terpus is a". With absolute position embeddings a one-layer prompt encoder has to
  learn "look 3 back" first; with the shifted embeddings in place, a prompt key can
  match the decoder's recent words directly (the token-shift idea of RWKV and the shift
  SSM of H3). Measured with the autoregressive decoder, L = r = 16, K = 64: valid
  reconstruction loss at 1,500 steps 0.233 -> 0.135 (ProntoQA) and 0.482 -> 0.259 (ProsQA);
  after 8,000 steps ProntoQA reaches 0.934 greedy token accuracy (BENCHMARKS.md, "Stage 1").
  `benchmarks/chunk_information.py` shows that such a decoder needs little from the code:
  99.8 % of the official ProsQA valid chunks at L = 16 have at most 64 candidate texts
  among the paths from the question's subject.
- Copy prefix (`copy_prefix`, autoregressive decoder only): local context lets the copy head
  match "the prompt word after `terpus is a`" only through projections it must learn to
  align (the prompt side sees the word's predecessors at offsets 1..k+1, the decoder side
  its own last tokens at offsets 0..k). With the option the copy head gets a second
  query/key pair over the *same* function of both sides, `prefix_features`: the
  local-context embedding of the tokens before a position (layer-normed, since the
  embeddings are small). An output position then scores each prompt word by how well the
  words before it match the chunk's last words, an induction head built in, and the
  first pair (decoder state, g(P)) is left to choose among the matches. Measured on ProsQA
  (BENCHMARKS.md, "Stage 1"): teacher-forced, the decoder's choice after "Every X is a"
  is one of X's children under every code (13-23 % of the codes before), so with
  `assignment: search` the codes go to choosing among them (0.830 -> 0.895 at 1,500 steps;
  0.947 after 5,000). The prompt side of both pairs is computed once per prompt (`copy_keys`).
  With the nearest-vector code it hurts: the decoder follows the graph without the code.
- Prefix rank (`prefix_rank` = n; 0, off, by default; copy head only): each prompt word's copy
  key also holds a learned vector for its rank among the prompt words preceded by the same
  k + 1 tokens (k = local_context), clamped to n - 1. With the copy prefix the copy head finds
  every word that follows the chunk's last words ("Every wumpus is a" -> each child of
  wumpus); the code must then say *which* one, and the only name for that which holds across
  prompts is relative to the prompt: "the second one". Which child at a chunk's second and
  third branch points is what the ProsQA search codes still got wrong (BENCHMARKS.md,
  "Stage 1"). The rank vectors start at zero and draw no random numbers, so a run starts from
  the weights its seed gives without the option. Measured on ProsQA (BENCHMARKS.md, "Stage 1"),
  it does not help: 0.924 and 0.938 after 5,000 steps for seeds 1 and 2, against 0.943 and 0.938
  without it. A first version that added the rank to g(P)'s input embeddings trailed too. Off.
- Output vocabulary (`output_vocab_size`, set by `vqvae train --output-vocab data`): with a
  pretrained tokenizer the vocabulary head scored all 49,152 SmolLM2 ids at every chunk
  position, though GSM8K's 7,473 training traces use 9,884 of them and the copy head
  supplies any prompt token. With the option the head scores only the ids the training
  traces use (saved as the `output_ids` buffer); a prompt token outside them can still be
  copied, and an id in neither can no longer be written (99.76 % of GSM8K test-trace
  tokens are in one or the other). The loss then takes only each target's probability and
  greedy decoding only the argmax, so no (C, S, V) tensor is built: a CPU training step is
  6.8x faster (BENCHMARKS.md, "Stage 1").
- A trailing partial chunk is padded with the pad token and encoded too, so the whole
  trace can be replaced (All-Replace); the decoder is trained to emit pads there, and
  decoding drops them. The reconstruction loss covers pad positions for that reason;
  the reported token accuracy counts only non-pad positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from vector_quantize_pytorch import VectorQuantize

from .beam import beam_tokens
from .memory_kv import MemoryKV, run_decoder
from .options import ASSIGNMENTS
from .search import SearchCodebook, best_codes, most_likely_codes

SEARCH_SEQUENCES = 256  # search: decoder sequences scored at once (candidates x examples)
LOG_FLOOR = -30.0  # log p of a target the decoder cannot write at all (see `target_log_probs`)


def prefix_ranks(prompt_ids: Tensor, prompt_pad: Tensor, width: int) -> Tensor:
    """(B, P) -> (B, P): how many earlier real prompt positions have the same `width` tokens before them.

    In "Every wumpus is a yumpus. ... Every wumpus is a tumpus." the second child of wumpus
    gets rank 1: the ordinal that lets a code name "the second match" (see `prefix_rank`).
    Pads and the positions before the prompt's start read as -1, so batch padding changes no rank.
    """
    span, ids = prompt_ids.shape[1], prompt_ids.masked_fill(prompt_pad, -1)  # pads match the prompt's start
    windows = torch.stack([F.pad(ids, (offset, 0), value=-1)[:, :span] for offset in range(1, width + 1)],
                          dim=-1)  # (B, P, width): the tokens at offsets 1..width before each position
    same = (windows[:, :, None] == windows[:, None, :]).all(-1)  # (B, P, P)
    earlier = torch.ones(span, span, dtype=torch.bool, device=prompt_ids.device).tril(-1)  # [i, j]: j < i
    return (same & earlier & ~prompt_pad[:, None, :]).sum(-1).masked_fill(prompt_pad, 0)


def _safe_log(probabilities: Tensor) -> Tensor:
    """log, with an exact -inf (and no NaN gradient) where the probability is 0."""
    held = probabilities > 0
    return torch.where(held, probabilities.masked_fill(~held, 1.0).log(), float("-inf"))


@dataclass
class VQVAEConfig:
    """Shape of a VQ-VAE; saved in DIR/config.json under "model"."""

    vocab_size: int  # size of the shared text tokenizer
    pad_id: int  # pad token id (fills a trailing partial chunk and short prompts)
    chunk_size: int = 16  # L: text tokens per chunk
    compression: int = 16  # r: text tokens per latent token (L/r latents per chunk)
    codebook_size: int = 64  # K: number of latent tokens
    d_model: int = 128  # width of every transformer stack
    heads: int = 4  # attention heads
    encoder_layers: int = 2  # chunk encoder depth
    decoder_layers: int = 2  # chunk decoder depth
    prompt_layers: int = 1  # prompt encoder g(P) depth (0: embeddings only)
    codebook_dim: int = 32  # dimension of codebook vectors (0: d_model, no projection)
    commitment_weight: float = 0.25  # beta: pulls encoder outputs towards their codes
    ema_decay: float = 0.95  # EMA decay of codebook statistics
    dead_code_threshold: float = 0.5  # a code whose EMA usage falls below this is replaced
    max_prompt_len: int = 512  # longer prompts keep their last tokens (the question)
    max_chunks: int = 64  # chunk-index embeddings; later chunks share the last one
    dropout: float = 0.0
    tie_embeddings: bool = True  # output layer = token embeddings (half the parameters with a large vocabulary)
    autoregressive: bool = False  # decoder reads the chunk's earlier tokens (teacher forcing; greedy at decode)
    copy_head: bool = True  # mix the vocabulary head with a pointer over the prompt's tokens (see above)
    word_dropout: float = 0.0  # training only: share of the AR decoder's earlier tokens hidden (see above)
    local_context: int = 0  # prompt tokens (and AR decoder inputs) also read the k tokens before them (see above)
    rotation_trick: bool = False  # gradient to the encoder by the rotation trick instead of straight-through
    output_vocab_size: int = 0  # 0: the vocabulary head scores every id; else only the `output_ids` (see above)
    assignment: str = "nearest"  # "nearest": VQ (nearest codebook vector); "search": the best-fitting code (search.py)
    search_candidates: int = 16  # assignment "search", training: codes tried per chunk
    search_explore: int = 4  # ... of which drawn at random (the rest: the encoder's most probable)
    copy_prefix: bool = False  # copy head also matches the tokens before each prompt position to the chunk's (see above)
    search_rerank: int = 0  # search, outside training: of the n likeliest codes, the best decoded (search.py)
    prefix_rank: int = 0  # the copy head's keys also hold a prompt word's rank among words with its prefix (see above)

    def __post_init__(self) -> None:
        if self.chunk_size < 1 or self.compression < 1 or self.chunk_size % self.compression:
            raise ValueError(f"chunk size L={self.chunk_size} must be a positive multiple of "
                             f"the compression r={self.compression}")
        if self.codebook_size < 2:
            raise ValueError("codebook size K must be at least 2")
        if self.local_context < 0:
            raise ValueError(f"local_context={self.local_context} must be >= 0")
        if not 0.0 <= self.word_dropout < 1.0:
            raise ValueError(f"word_dropout={self.word_dropout} must be in [0, 1)")
        if not 0 <= self.output_vocab_size <= self.vocab_size:
            raise ValueError(f"output_vocab_size={self.output_vocab_size} must be in 0..{self.vocab_size}")
        if self.copy_prefix and not (self.copy_head and self.autoregressive and self.word_dropout == 0):
            raise ValueError("copy_prefix needs the copy head and the autoregressive decoder, without word dropout "
                             "(it matches the chunk's earlier tokens, which word dropout would hide)")
        if self.assignment not in ASSIGNMENTS:
            raise ValueError(f"assignment={self.assignment!r} must be one of {', '.join(ASSIGNMENTS)}")
        if self.assignment == "search":
            if self.latents_per_chunk != 1:  # K^(L/r) combinations: only one latent per chunk is searchable
                raise ValueError(f"assignment 'search' needs one latent per chunk (r = L), "
                                 f"got L={self.chunk_size}, r={self.compression}")
            if not 0 <= self.search_explore < self.search_candidates <= self.codebook_size:
                raise ValueError(f"search needs 0 <= search_explore ({self.search_explore}) < search_candidates "
                                 f"({self.search_candidates}) <= codebook size K ({self.codebook_size})")
        if self.prefix_rank < 0 or self.prefix_rank == 1:
            raise ValueError(f"prefix_rank={self.prefix_rank} must be 0 (off) or at least 2 ranks")
        if self.prefix_rank and not self.copy_head:
            raise ValueError("prefix_rank adds to the copy head's keys: it needs copy_head")
        if not 0 <= self.search_rerank <= self.codebook_size:
            raise ValueError(f"search_rerank={self.search_rerank} must be in 0..{self.codebook_size} "
                             f"(the codebook size K)")
        if self.search_rerank > 1 and self.assignment != "search":
            raise ValueError(f"search_rerank={self.search_rerank} re-ranks the codes of assignment 'search'; "
                             f"assignment is {self.assignment!r}")

    @property
    def latents_per_chunk(self) -> int:
        return self.chunk_size // self.compression


@dataclass
class VQVAEOutput:
    predictions: Tensor  # (C, L) every real chunk's most probable tokens (teacher-forced)
    codes: Tensor  # (C, L/r) codebook indices
    recon_loss: Tensor  # NLL over all L positions (pads included)
    vq_loss: Tensor  # commitment loss (assignment "nearest") or the encoder's code classification loss ("search")

    @property
    def loss(self) -> Tensor:
        return self.recon_loss + self.vq_loss


def _stack(config: VQVAEConfig, layers: int) -> nn.TransformerDecoder:
    layer = nn.TransformerDecoderLayer(config.d_model, config.heads, 4 * config.d_model, config.dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
    return nn.TransformerDecoder(layer, layers, norm=nn.LayerNorm(config.d_model))


class VQVAE(nn.Module):
    """Chunk encoder, quantizer and prompt-conditioned chunk decoder."""

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        self.config = config
        d, n_latent = config.d_model, config.latents_per_chunk
        self.token_embedding = nn.Embedding(config.vocab_size, d)
        self.prompt_position = nn.Embedding(config.max_prompt_len, d)
        self.chunk_position = nn.Embedding(n_latent + config.chunk_size, d)
        self.chunk_index = nn.Embedding(config.max_chunks, d)
        self.latent_queries = nn.Parameter(torch.randn(n_latent, d) * 0.02)
        self.output_queries = nn.Parameter(torch.randn(config.chunk_size, d) * 0.02)
        if config.prompt_layers > 0:
            layer = nn.TransformerEncoderLayer(d, config.heads, 4 * d, config.dropout, activation="gelu",
                                               batch_first=True, norm_first=True)
            self.prompt_encoder: nn.Module = nn.TransformerEncoder(
                layer, config.prompt_layers, norm=nn.LayerNorm(d), enable_nested_tensor=False)
        else:
            self.prompt_encoder = nn.LayerNorm(d)
        self.encoder = _stack(config, config.encoder_layers)
        self.decoder = _stack(config, config.decoder_layers)
        if config.assignment == "search":
            self.quantizer: nn.Module = SearchCodebook(config.codebook_size, d)
        else:
            self.quantizer = VectorQuantize(
                dim=d, codebook_size=config.codebook_size,
                codebook_dim=config.codebook_dim or None, decay=config.ema_decay,
                kmeans_init=True, threshold_ema_dead_code=config.dead_code_threshold,
                commitment_weight=config.commitment_weight, rotation_trick=config.rotation_trick)
        if config.tie_embeddings:
            self.output_bias = nn.Parameter(torch.zeros(config.vocab_size))
        else:
            self.lm_head = nn.Linear(d, config.vocab_size)
        # One projection per offset 1..k: position i adds W_s e(token i-s) (see `_with_local_context`).
        self.local_context = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(config.local_context))
        if config.output_vocab_size:  # filled by `set_output_vocab`, saved with the weights
            self.register_buffer("output_ids", torch.arange(config.output_vocab_size))
        if config.copy_head:
            self.copy_query = nn.Linear(d, d)
            self.copy_key = nn.Linear(d, d)
            self.copy_gate = nn.Linear(2 * d, 1)  # reads [decoder state; copied context]
        if config.prefix_rank:  # added to the copy head's keys; zero at first (and drawing no random numbers,
            # so a seed gives the weights it gives without the option): training starts as without it
            self.prefix_rank_key = nn.Embedding(config.prefix_rank, d, _weight=torch.zeros(config.prefix_rank, d))
        if config.copy_prefix:  # second query/key pair: what precedes the output position / the prompt position
            self.prefix_norm = nn.LayerNorm(d)  # the embeddings are small (std 0.02): unit scale for the match
            self.prefix_query = nn.Linear(d, d)
            self.prefix_key = nn.Linear(d, d)
        for embedding in (self.token_embedding, self.prompt_position, self.chunk_position, self.chunk_index):
            nn.init.normal_(embedding.weight, std=0.02)  # small, as in GPT-2: tied logits start near uniform
        self._clear_unused_buffers()

    def _clear_unused_buffers(self) -> None:
        # The codebook allocates affine-parameter buffers with torch.empty even when the
        # affine option is off; zero them so checkpoints hold no uninitialised memory.
        for name, buffer in self.quantizer.named_buffers():
            if name.endswith(("codebook_mean", "codebook_variance")):
                buffer.zero_()

    # --- the three parts ------------------------------------------------------------
    # Chunks are laid out per example, (B, N, ...), and flattened to one sequence of
    # N blocks for the transformer stacks: a block-diagonal self-attention mask keeps
    # every chunk on its own, while the prompt's keys and values are computed once per
    # example instead of once per chunk.
    def encode_prompt(self, prompt_ids: Tensor, prompt_pad: Tensor) -> Tensor:
        """g(P): (B, P) ids and pad mask -> (B, P, D) memory the chunks attend to."""
        positions = torch.arange(prompt_ids.shape[1], device=prompt_ids.device)
        x = self._with_local_context(self.token_embedding(prompt_ids)) + self.prompt_position(positions)  # (B, P, D)
        if isinstance(self.prompt_encoder, nn.TransformerEncoder):
            return self.prompt_encoder(x, src_key_padding_mask=prompt_pad)
        return self.prompt_encoder(x)

    def encode(self, chunk_ids: Tensor, memory: Tensor, memory_pad: Tensor) -> Tensor:
        """f_enc: (B, N, L) chunks -> (B, N, L/r, D) continuous latents, one per query slot."""
        batch, n_chunks, _ = chunk_ids.shape
        slots = self.latent_queries.expand(batch, n_chunks, -1, -1)  # (B, N, L/r, D)
        x = torch.cat([slots, self.token_embedding(chunk_ids)], dim=2)  # (B, N, S, D), S = L/r + L
        hidden = self._run(self.encoder, x, memory, memory_pad)  # (B, N, S, D)
        return hidden[:, :, :self.config.latents_per_chunk]

    def quantize(self, latents: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q: (C, L/r, D) -> quantized (C, L/r, D), codes (C, L/r), commitment loss."""
        # Nearest-code search and EMA statistics must stay in fp32 (bf16 distances tie and NaN).
        with torch.autocast(latents.device.type, enabled=False):
            quantized, codes, vq_loss = self.quantizer(latents.float())
        return quantized, codes, vq_loss

    def _assign(self, prompt_ids: Tensor, prompt_pad: Tensor, chunk_ids: Tensor, present: Tensor, memory: Tensor,
                latents: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The real chunks' codes: quantized (C, L/r, D), codes (C, L/r) and the quantizer's loss.

        "nearest": the VQ quantizer (commitment loss). "search" (search.py): the code under
        which the decoder finds the chunk most likely, among the encoder's candidates in
        training and among all K otherwise; the loss trains the encoder to predict it.
        """
        if self.config.assignment == "nearest":
            return self.quantize(latents[present])
        codebook = self.quantizer
        with torch.no_grad():
            logits = codebook.classifier(latents[:, :, 0])  # (B, N, K)
            if self.training:
                candidates = codebook.candidates(logits, self.config.search_candidates, self.config.search_explore)
            else:
                candidates = torch.arange(self.config.codebook_size, device=logits.device).expand(logits.shape)
            codes = self._search(prompt_ids, prompt_pad, chunk_ids, present, memory, candidates)  # (C,)
            if self.training:
                codebook.record(codes)  # may re-seed unused codes: before the graph below reads the table
        loss = F.cross_entropy(codebook.classifier(latents[present][:, 0]).float(), codes)
        return codebook.get_output_from_indices(codes)[:, None], codes[:, None], loss

    @torch.no_grad()
    def _search(self, prompt_ids: Tensor, prompt_pad: Tensor, chunk_ids: Tensor, present: Tensor, memory: Tensor,
                candidates: Tensor) -> Tensor:
        """(C,) the candidate (B, N, G) under which each real chunk's teacher-forced log likelihood is highest."""
        batch = prompt_ids.shape[0]
        # The prompt side once, not once per candidate: the copy head's keys, the decoder's memory.
        keys, memory_kv = self.copy_keys(memory, prompt_ids), self.memory_kv(memory, prompt_pad)
        prefix = self._prefix_of(chunk_ids)

        def score(codes: Tensor) -> Tensor:  # (g*B, N) codes -> (g, C) log likelihoods
            g = codes.shape[0] // batch
            mem, pad, ids, chunks, real, key, pre = (
                t.repeat(g, *[1] * (t.dim() - 1)) if t is not None else None
                for t in (memory, prompt_pad, prompt_ids, chunk_ids, present, keys, prefix))
            hidden = self.decode(self.quantizer.get_output_from_indices(codes)[:, :, None], mem, pad, chunks,
                                 memory_kv.repeat(g))
            return self.target_log_probs(hidden, mem, pad, ids, chunks[real], real, pre, key).sum(-1).view(g, -1)

        was_training = self.training
        self.eval()  # score as decoding will run: no word dropout, no dropout
        group = max(1, SEARCH_SEQUENCES // batch)
        try:
            if was_training or self.config.search_rerank < 2:
                return best_codes(score, candidates, present, group)
            likely = most_likely_codes(score, candidates, present, group, self.config.search_rerank)  # (C, n)
            return self._fewest_errors(likely, prompt_ids, prompt_pad, chunk_ids, present, memory, memory_kv)
        finally:
            self.train(was_training)

    def _fewest_errors(self, likely: Tensor, prompt_ids: Tensor, prompt_pad: Tensor, chunk_ids: Tensor,
                       present: Tensor, memory: Tensor, memory_kv: MemoryKV) -> Tensor:
        """(C,) of each real chunk's (C, n) codes (most likely first), the one whose greedy decoding
        misses the fewest of its L tokens (pads included); ties go to the more likely code.
        `memory_kv`: the search's projection of the same prompts, reused for every column."""
        targets = chunk_ids[present]  # (C, L)
        grid = memory.new_zeros(*present.shape, 1, self.config.d_model)
        errors = []
        for column in likely.T:  # (C,) the j-th most likely code of every chunk
            grid[present] = self.quantizer.get_output_from_indices(column)[:, None].to(grid.dtype)
            decoded = self.greedy_tokens(grid, memory, prompt_pad, prompt_ids, memory_kv)[present]
            errors.append((decoded != targets).sum(-1))
        first_fewest = torch.stack(errors).argmin(0)  # (C,) argmin returns the first of equal minima
        return likely.gather(1, first_fewest[:, None])[:, 0]

    def decode(self, quantized: Tensor, memory: Tensor, memory_pad: Tensor, chunk_ids: Tensor | None = None,
               memory_kv: MemoryKV | None = None) -> Tensor:
        """f_dec: (B, N, L/r, D) quantized latents -> (B, N, L, D) hidden states of the chunk's tokens.

        The autoregressive decoder also reads `chunk_ids` (B, N, L) shifted right by one:
        position i sees the latents and tokens < i only. `memory_kv`: the memory's keys and
        values already projected (`VQVAE.memory_kv`), for callers that decode it many times.
        """
        batch, n_chunks = quantized.shape[:2]
        queries = self.output_queries.expand(batch, n_chunks, -1, -1)  # (B, N, L, D)
        if self.config.autoregressive:
            previous = chunk_ids[:, :, :-1]  # (B, N, L-1)
            if self.training and self.config.word_dropout > 0:
                hidden_word = torch.rand(previous.shape, device=previous.device) < self.config.word_dropout
                previous = previous.masked_fill(hidden_word, self.config.pad_id)
            previous = self._with_local_context(self.token_embedding(previous))  # (B, N, L-1, D)
            queries = queries + F.pad(previous, (0, 0, 1, 0))  # position 0 sees no token
        hidden = self._run(self.decoder, torch.cat([quantized, queries], dim=2), memory, memory_pad,
                           causal=self.config.autoregressive, memory_kv=memory_kv)
        return hidden[:, :, self.config.latents_per_chunk:]

    def memory_kv(self, memory: Tensor, memory_pad: Tensor) -> MemoryKV:
        """The decoder's cross-attention keys and values of a (B, P, D) memory, to pass to `decode`."""
        return MemoryKV.of(self.decoder, memory, memory_pad)

    def _with_local_context(self, embedded: Tensor) -> Tensor:
        """(..., S, D) token embeddings -> each position plus projections of the k before it (zeros before 0)."""
        out, span = embedded, embedded.shape[-2]
        for offset, project in enumerate(self.local_context, start=1):
            shifted = F.pad(embedded, (0, 0, offset, 0))[..., :span, :]  # position i holds e(token i-offset)
            out = out + project(shifted)
        return out

    def prefix_features(self, ids: Tensor) -> Tensor:
        """(..., S) token ids -> (..., S, D): at i, the local-context embedding of the tokens before i.

        The autoregressive decoder's input at i holds exactly this (without word dropout), and
        the copy prefix compares it with the same function of a prompt position's predecessors.
        """
        embedded = self._with_local_context(self.token_embedding(ids))
        return F.pad(embedded, (0, 0, 1, 0))[..., :ids.shape[-1], :]

    def _prefix_of(self, chunk_ids: Tensor) -> Tensor | None:
        """The copy prefix's decoder side for (B, N, L) chunk tokens, None when the option is off."""
        return self.prefix_features(chunk_ids) if self.config.copy_prefix else None

    @torch.no_grad()
    def greedy_tokens(self, quantized: Tensor, memory: Tensor, memory_pad: Tensor, prompt_ids: Tensor,
                      memory_kv: MemoryKV | None = None) -> Tensor:
        """(B, N, L/r, D) quantized latents -> (B, N, L) decoded token ids (one pass, or L greedy ones).

        `memory_kv`: the memory already projected, for a caller that decodes it several times.
        """
        batch, n_chunks = quantized.shape[:2]
        tokens = quantized.new_full((batch, n_chunks, self.config.chunk_size), self.config.pad_id,
                                    dtype=torch.long)
        keys = self.copy_keys(memory, prompt_ids)  # read at every position: computed once
        if not self.config.autoregressive:
            hidden = self.decode(quantized, memory, memory_pad)  # (B, N, L, D)
            return self.predict(hidden, memory, memory_pad, prompt_ids, keys=keys)
        if memory_kv is None:
            memory_kv = self.memory_kv(memory, memory_pad)  # the decoder's side of the prompt, also once
        for position in range(self.config.chunk_size):
            hidden = self.decode(quantized, memory, memory_pad, tokens, memory_kv)[:, :, position:position + 1]
            # The copy prefix at this position: the tokens written so far (earlier ones unchanged).
            prefix = self._prefix_of(tokens[:, :, :position + 1])
            prefix = prefix[:, :, position:] if prefix is not None else None
            tokens[:, :, position] = self.predict(hidden, memory, memory_pad, prompt_ids, prefix, keys)[:, :, 0]
        return tokens

    def decode_tokens(self, quantized: Tensor, memory: Tensor, memory_pad: Tensor, prompt_ids: Tensor,
                      beams: int = 1) -> Tensor:
        """(B, N, L/r, D) quantized latents -> (B, N, L) token ids: greedy, or beam search with `beams` > 1."""
        return beam_tokens(self, quantized, memory, memory_pad, prompt_ids, beams)

    # --- the output distribution ------------------------------------------------------
    # The vocabulary head scores the output vocabulary: every id, or with `output_vocab_size`
    # only the ids in `output_ids` ("slots"). The copy head scores the prompt's positions.
    # With an output vocabulary, training takes only each target's probability
    # (`target_log_probs`) and decoding only the argmax (`predict`), so no (C, S, V) tensor
    # over the whole vocabulary is built. Without one, the loss is the NLL of `log_probs`,
    # bit for bit the computation that produced the results recorded before the option existed.
    def logits(self, hidden: Tensor) -> Tensor:
        """(..., D) decoder states -> (..., V') logits of the vocabulary head alone, one per output slot."""
        if self.config.tie_embeddings:
            weight, bias = self.token_embedding.weight, self.output_bias
        else:
            weight, bias = self.lm_head.weight, self.lm_head.bias
        if self.config.output_vocab_size:
            weight, bias = weight[self.output_ids], bias[self.output_ids]
        return F.linear(hidden, weight, bias)

    def slots_of(self, ids: Tensor) -> Tensor:
        """Token ids -> their output slots (the ids themselves without an output vocabulary; -1 if absent)."""
        if not self.config.output_vocab_size:
            return ids
        table = ids.new_full((self.config.vocab_size,), -1)
        table[self.output_ids] = torch.arange(self.config.output_vocab_size, device=ids.device)
        return table[ids]

    def set_output_vocab(self, ids: Sequence[int]) -> None:
        """Restrict the vocabulary head to `ids` (the pad id is always kept); needs output_vocab_size slots."""
        kept = sorted(set(int(i) for i in ids) | {self.config.pad_id})
        if len(kept) != self.config.output_vocab_size or not 0 <= kept[0] <= kept[-1] < self.config.vocab_size:
            raise ValueError(f"output vocabulary of {len(kept)} ids in 0..{self.config.vocab_size - 1} "
                             f"does not fit output_vocab_size={self.config.output_vocab_size}")
        self.output_ids.copy_(torch.tensor(kept))

    def target_log_probs(self, hidden: Tensor, memory: Tensor, memory_pad: Tensor, prompt_ids: Tensor,
                         targets: Tensor, present: Tensor, prefix: Tensor | None = None,
                         keys: Tensor | None = None) -> Tensor:
        """fp32 log p of each real chunk's target token, (C, S), floored at LOG_FLOOR.

        The floor only bites on a target no output slot and no prompt position holds (a
        token the training traces never used): its loss is capped and carries no gradient.
        """
        with torch.autocast(hidden.device.type, enabled=False):  # the mixture needs fp32 range
            log_vocab = F.log_softmax(self.logits(hidden[present]).float(), dim=-1)  # (C, S, V')
            slots = self.slots_of(targets)  # (C, S)
            picked = log_vocab.gather(-1, slots.clamp(min=0)[..., None])[..., 0]
            picked = picked.masked_fill(slots < 0, float("-inf"))
            if self.config.copy_head:
                attention, gate = self._copy_head(hidden.float(), memory.float(), memory_pad, prompt_ids, prefix, keys)
                attention, gate = attention[present], gate[present][..., 0]  # (C, S, P), (C, S)
                prompt = prompt_ids[:, None, None].expand(-1, *hidden.shape[1:3], -1)[present]  # (C, S, P)
                copied = (attention * (prompt == targets[..., None])).sum(-1)  # (C, S)
                picked = torch.logaddexp(F.logsigmoid(gate) + picked, F.logsigmoid(-gate) + _safe_log(copied))
            return picked.clamp(min=LOG_FLOOR)

    @torch.no_grad()
    def predict(self, hidden: Tensor, memory: Tensor, memory_pad: Tensor, prompt_ids: Tensor,
                prefix: Tensor | None = None, keys: Tensor | None = None) -> Tensor:
        """(B, N, S, D) decoder states -> (B, N, S) the most probable token ids under the full mixture."""
        with torch.autocast(hidden.device.type, enabled=False):
            probs = F.softmax(self.logits(hidden).float(), dim=-1)  # (B, N, S, V')
            if not self.config.copy_head:
                return self._ids_of(probs.argmax(-1))
            attention, gate = self._copy_head(hidden.float(), memory.float(), memory_pad, prompt_ids, prefix, keys)
            p_gen = torch.sigmoid(gate)  # (B, N, S, 1)
            prompt = prompt_ids[:, None, None].expand(*attention.shape)  # (B, N, S, P)
            slots = self.slots_of(prompt_ids)[:, None, None].expand(*attention.shape)
            mixed = (p_gen * probs).scatter_add_(-1, slots.clamp(min=0), (1 - p_gen) * attention * (slots >= 0))
            best_value, best = mixed.max(-1)
            best = self._ids_of(best)
            if not self.config.output_vocab_size or (slots >= 0).all():
                return best
            # A prompt token outside the output vocabulary: all its probability is copied mass,
            # summed over the prompt positions that hold it.
            same = (prompt_ids[:, :, None] == prompt_ids[:, None, :]).float()  # (B, P, P)
            mass = (1 - p_gen) * torch.einsum("bnsp,bpq->bnsq", attention, same)  # (B, N, S, P)
            outside_value, outside = mass.masked_fill(slots >= 0, -1.0).max(-1)
            return torch.where(outside_value > best_value, prompt.gather(-1, outside[..., None])[..., 0], best)

    def _ids_of(self, slots: Tensor) -> Tensor:
        """Output slots -> token ids (the inverse of `slots_of`)."""
        return self.output_ids[slots] if self.config.output_vocab_size else slots

    def log_probs(self, hidden: Tensor, memory: Tensor, memory_pad: Tensor, prompt_ids: Tensor,
                  present: Tensor | None = None, prefix: Tensor | None = None,
                  keys: Tensor | None = None) -> Tensor:
        """(B, N, S, D) decoder states -> fp32 log p over the whole vocabulary, (B, N, S, V).

        With `present` (B, N), only the real chunks: (C, S, V). Without the copy head this
        is log_softmax of the vocabulary logits (-inf outside the output vocabulary); with
        it, the pointer-generator mixture.
        """
        keep = (lambda x: x[present]) if present is not None else (lambda x: x)
        with torch.autocast(hidden.device.type, enabled=False):
            log_slots = F.log_softmax(self.logits(keep(hidden)).float(), dim=-1)  # (C, S, V')
            log_vocab = log_slots
            if self.config.output_vocab_size:
                log_vocab = log_slots.new_full((*log_slots.shape[:-1], self.config.vocab_size), float("-inf"))
                log_vocab[..., self.output_ids] = log_slots
            if not self.config.copy_head:
                return log_vocab
            attention, gate = self._copy_head(hidden.float(), memory.float(), memory_pad, prompt_ids, prefix, keys)
            attention, gate = keep(attention), keep(gate)  # (C, S, P), (C, S, 1)
            prompt = keep(prompt_ids[:, None, None].expand(-1, *hidden.shape[1:3], -1))  # (C, S, P)
            # Scatter: a word at several prompt positions gets the sum of their weights.
            copied = torch.zeros_like(log_vocab).scatter_add_(-1, prompt, attention)  # (C, S, V)
            return torch.logaddexp(F.logsigmoid(gate) + log_vocab, F.logsigmoid(-gate) + _safe_log(copied))

    def copy_keys(self, memory: Tensor, prompt_ids: Tensor) -> Tensor | None:
        """The copy head's prompt side, fp32: (B, P, D), or (B, P, 2D) with the copy prefix's keys.

        It depends on the prompt alone, so callers that score many chunks, positions or search
        candidates against one prompt compute it once and pass it on as `keys`. None without
        the copy head.
        """
        if not self.config.copy_head:
            return None
        with torch.autocast(memory.device.type, enabled=False):
            key = self.copy_key(memory.float())  # (B, P, D)
            if self.config.prefix_rank:
                ranks = prefix_ranks(prompt_ids, prompt_ids == self.config.pad_id, self.config.local_context + 1)
                key = key + self.prefix_rank_key(ranks.clamp(max=self.config.prefix_rank - 1)).float()
            if not self.config.copy_prefix:
                return key
            prompt_prefix = self.prefix_key(self.prefix_norm(self.prefix_features(prompt_ids).float()))
            return torch.cat([key, prompt_prefix], dim=-1)

    def _copy_head(self, hidden: Tensor, memory: Tensor, memory_pad: Tensor, prompt_ids: Tensor,
                   prefix: Tensor | None, keys: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Attention over the prompt's positions (B, N, S, P) and the logit of p_gen (B, N, S, 1).

        With `copy_prefix`, `prefix` (B, N, S, D) holds `prefix_features` of the chunk's tokens
        and a second query/key pair adds how well it matches each prompt position's own: the
        two queries are concatenated to match `copy_keys`, so one product sums both scores.
        `keys`: `copy_keys(memory, prompt_ids)` when the caller has it already.
        """
        keys = self.copy_keys(memory, prompt_ids) if keys is None else keys  # (B, P, D or 2D)
        query = self.copy_query(hidden)  # (B, N, S, D)
        if self.config.copy_prefix:
            if prefix is None:
                raise ValueError("copy_prefix: pass the prefix features of the chunk's earlier tokens")
            query = torch.cat([query, self.prefix_query(self.prefix_norm(prefix.float()))], dim=-1)
        scores = torch.einsum("bnsd,bpd->bnsp", query, keys) / self.config.d_model ** 0.5  # (B, N, S, P)
        attention = scores.masked_fill(memory_pad[:, None, None], float("-inf")).softmax(dim=-1)
        context = torch.einsum("bnsp,bpd->bnsd", attention, memory)  # (B, N, S, D)
        return attention, self.copy_gate(torch.cat([hidden, context], dim=-1))

    def _run(self, stack: nn.TransformerDecoder, x: Tensor, memory: Tensor, memory_pad: Tensor,
             causal: bool = False, memory_kv: MemoryKV | None = None) -> Tensor:
        batch, n_chunks, span, width = x.shape
        index = torch.arange(n_chunks, device=x.device).clamp(max=self.config.max_chunks - 1)
        positions = torch.arange(span, device=x.device)
        x = x + self.chunk_position(positions)[None, None] + self.chunk_index(index)[None, :, None]
        blocks = torch.arange(n_chunks * span, device=x.device) // span
        separate = blocks[:, None] != blocks[None, :]  # (N*S, N*S) True where attention is blocked
        if causal:  # token positions see the latents and earlier tokens of their own chunk
            offset = torch.arange(n_chunks * span, device=x.device) % span
            later_token = (offset[None, :] > offset[:, None]) & (offset[None, :] >= self.config.latents_per_chunk)
            separate = separate | later_token
        x = x.reshape(batch, n_chunks * span, width)
        if memory_kv is not None:
            hidden = run_decoder(stack, x, memory_kv, separate)
        else:
            hidden = stack(x, memory, tgt_mask=separate, memory_key_padding_mask=memory_pad)
        return hidden.view(batch, n_chunks, span, width)

    # --- whole passes -------------------------------------------------------------
    def forward(self, prompt_ids: Tensor, prompt_pad: Tensor, chunk_ids: Tensor, chunk_present: Tensor) -> VQVAEOutput:
        """Reconstruct (B, N, L) chunks; `chunk_present` (B, N) marks real chunks (not batch padding)."""
        memory = self.encode_prompt(prompt_ids, prompt_pad)  # (B, P, D)
        latents = self.encode(chunk_ids, memory, prompt_pad)  # (B, N, L/r, D)
        quantized, codes, vq_loss = self._assign(prompt_ids, prompt_pad, chunk_ids, chunk_present, memory, latents)
        grid = latents.new_zeros(latents.shape)
        grid[chunk_present] = quantized.to(grid.dtype)
        hidden = self.decode(grid, memory, prompt_pad, chunk_ids)  # (B, N, L, D)
        targets, prefix = chunk_ids[chunk_present], self._prefix_of(chunk_ids)  # (C, L), (B, N, L, D) or None
        keys = self.copy_keys(memory, prompt_ids)
        if self.config.output_vocab_size:
            recon_loss = -self.target_log_probs(hidden, memory, prompt_pad, prompt_ids, targets, chunk_present,
                                                prefix, keys).mean()
            predictions = self.predict(hidden, memory, prompt_pad, prompt_ids, prefix, keys)[chunk_present]
        else:  # the path runs measured before the output vocabulary existed took, unchanged so they reproduce
            log_probs = self.log_probs(hidden, memory, prompt_pad, prompt_ids, chunk_present, prefix, keys)
            recon_loss = F.nll_loss(log_probs.flatten(0, 1), targets.flatten())
            predictions = log_probs.detach().argmax(-1)
        return VQVAEOutput(predictions, codes, recon_loss, vq_loss)

    @torch.no_grad()
    def codes_of(self, prompt_ids: Tensor, prompt_pad: Tensor, chunk_ids: Tensor, chunk_present: Tensor) -> Tensor:
        """Latent tokens of the real chunks, (C, L/r) in row-major (example, chunk) order."""
        memory = self.encode_prompt(prompt_ids, prompt_pad)
        latents = self.encode(chunk_ids, memory, prompt_pad)
        return self._assign(prompt_ids, prompt_pad, chunk_ids, chunk_present, memory, latents)[1]

    @torch.no_grad()
    def tokens_of(self, prompt_ids: Tensor, codes: Tensor, beams: int = 1) -> Tensor:
        """Decode (N, L/r) codes of one trace under a (1, P) prompt to (N, L) token ids (pads included).

        `beams` > 1: beam search instead of greedy decoding (autoregressive decoder; beam.py).
        """
        prompt_pad = torch.zeros_like(prompt_ids, dtype=torch.bool)
        memory = self.encode_prompt(prompt_ids, prompt_pad)  # (1, P, D)
        quantized = self.quantizer.get_output_from_indices(codes)[None]  # (1, N, L/r, D)
        return self.decode_tokens(quantized, memory, prompt_pad, prompt_ids, beams)[0]

    @torch.no_grad()
    def reconstruct(self, prompt_ids: Tensor, prompt_pad: Tensor, chunk_ids: Tensor, chunk_present: Tensor,
                    codes: Tensor | None = None, beams: int = 1) -> Tensor:
        """Encode, quantize and decode without teacher forcing: (C, L) token ids of the real chunks.

        `codes` (C, L/r): the chunks' codes when already known (an eval-mode forward's), so a
        search assignment is not run twice. `beams` > 1: beam search instead of greedy decoding.
        """
        memory = self.encode_prompt(prompt_ids, prompt_pad)
        if codes is None:
            latents = self.encode(chunk_ids, memory, prompt_pad)
            codes = self._assign(prompt_ids, prompt_pad, chunk_ids, chunk_present, memory, latents)[1]
        grid = memory.new_zeros(*chunk_present.shape, self.config.latents_per_chunk, self.config.d_model)
        grid[chunk_present] = self.quantizer.get_output_from_indices(codes)
        return self.decode_tokens(grid, memory, prompt_pad, prompt_ids, beams)[chunk_present]
