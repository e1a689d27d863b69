"""The options of a VQ-VAE training run (no torch import: the CLI builds its flags from them)."""

from __future__ import annotations

from dataclasses import dataclass

ASSIGNMENTS = ("nearest", "search")  # how a chunk gets its code: VQ, or the code its decoding fits best
OUTPUT_VOCABS = ("all", "data")  # what the decoder's vocabulary head scores: every id, or the traces' ids


@dataclass
class VQVAETrainConfig:
    """Every option of `token-assorted vqvae train` (YAML keys use the same names)."""

    task: str = ""  # task name (prontoqa, prosqa, keys-maze, gsm8k)
    data: str = ""  # training examples (JSONL or JSON list)
    valid: str = ""  # validation examples; empty: validate on the first 200 training examples
    out: str = ""  # output directory
    chunk_size: int = 16  # L
    compression: int = 16  # r (L/r latent tokens per chunk)
    codebook_size: int = 64  # K (paper: 64 synthetic tasks, 1024 math)
    steps: int = 2000
    batch_size: int = 32  # examples per step (all chunks of each)
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    valid_every: int = 250  # validate, checkpoint and save resume state every N steps
    log_every: int = 10
    seed: int = 0
    tokenizer: str = "word"  # "word": build from the data; else a model/tokenizer dir or .gguf
    chat_template: bool = False  # render prompts with the tokenizer's chat template
    resume: bool = False
    d_model: int = 128
    heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 2
    prompt_layers: int = 1
    codebook_dim: int = 32
    commitment_weight: float = 0.25
    ema_decay: float = 0.95
    dead_code_threshold: float = 0.5
    max_prompt_len: int = 512
    dropout: float = 0.0
    autoregressive: bool = False  # decoder reads the chunk's earlier tokens (greedy decoding)
    local_context: int = 0  # prompt positions and AR decoder inputs also read the k tokens before them
    output_vocab: str = "all"  # "data": score only the ids the training traces use (large pretrained vocabularies)
    assignment: str = "nearest"  # "search": each chunk's code is the one its decoding fits best (r = L only)
    search_candidates: int = 16  # assignment "search", training: codes tried per chunk
    search_explore: int = 4  # ... of which drawn at random (the rest: the encoder's most probable)
    copy_prefix: bool = False  # AR decoder: the copy head also matches the tokens before a prompt word to the chunk's
    search_rerank: int = 0  # assignment "search", outside training: of the n most likely codes, keep the best decoded
    max_examples: int = 0  # use only the first N training examples (0: all)
    stop_at: int = 0  # stop (saving resume state) after this step, as if interrupted (0: never)
    progress: bool = True  # show the tqdm bar
    device: str = "auto"  # "auto" (cuda when available, else cpu), "cpu", "cuda", "cuda:1", ...
