"""Multi-process checks of tests/test_scale.py, several in one `torchrun --nproc_per_node 2` launch (gloo).

`python -m torch.distributed.run --nproc_per_node 2 scale_jobs.py DATA OUT JOB...` runs each JOB in
turn on both processes; a launch costs seconds of imports, so the tests share one:

    grads-ddp, grads-fsdp   the gradient of step 0 with grad_accum 2 -> OUT/grads-{ddp,fsdp}.safetensors
    train-fsdp, lora-fsdp   `train --sharding fsdp` for an epoch (with validation) -> OUT/{fsdp,lora}/
    ddp-STRATEGY            `train` under DDP (token-assorted, coconut, icot) -> OUT/ddp-STRATEGY/
    killed-fsdp             train-fsdp, every process SIGKILLed right after the state of step 3 is
                            committed (mid-epoch) -> OUT/killed/ (the last job: the launch dies)
    resume-fsdp             train-fsdp with --resume into OUT/killed/
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

import stage2_toy

stage2_toy.register()

KILL_AT = 3  # of 8 steps in the epoch: mid-epoch


def train_argv(data: Path, out: Path, *extra: str) -> list[str]:
    """The one training command every job runs (one process or two)."""
    return ["train", "--task", "toy", "--data", str(data / "train.jsonl"), "--codes", str(data / "codes.safetensors"),
            "--valid", str(data / "valid.jsonl"), "--out", str(out), "--epochs", "1", "--batch-size", "8",
            "--lr", "0.003", "--save-every", str(KILL_AT), "--no-progress", *extra]


def step_gradient(data: Path, out: Path, grad_accum: int, sharding: str = "ddp", batch_size: int = 8, **options):
    """The gradient of the first optimizer step of the toy run, by parameter name (rank 0: the whole)."""
    from torch.distributed.tensor import DTensor

    from token_assorted.core.devices import make_accelerator
    from token_assorted.lm.config import TrainConfig
    from token_assorted.lm.setup import setup
    from token_assorted.lm.train import LMStage, validation_metrics
    from token_assorted.training.fit import Fit

    config = TrainConfig(task="toy", data=str(data / "train.jsonl"), codes=str(data / "codes.safetensors"), out=str(out),
                         epochs=1, batch_size=batch_size, grad_accum=grad_accum, progress=False, sharding=sharding,
                         **options)
    accelerator = make_accelerator(config.mixed_precision)
    stage = LMStage(config, setup(config), validation_metrics)
    fit = Fit(stage, stage.optimization(accelerator.device), accelerator, out, sharding=sharding)
    try:
        loss = fit.accumulate()
        grads = {name: (p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad).detach().clone()
                 for name, p in stage.model.named_parameters() if p.grad is not None}
    finally:
        fit.close()
    return grads, loss


def random_vqvae(directory: Path, data: Path) -> Path:
    """An untrained VQ-VAE folder over the toy's tokenizer (seeded): encoding is deterministic all the same."""
    import torch

    from token_assorted.data.tokenizer import load_tokenizer, tokenizer_fingerprint
    from token_assorted.vqvae.config import VQVAEConfig
    from token_assorted.vqvae.model import VQVAE
    from token_assorted.vqvae.store import save_vqvae
    from token_assorted.vqvae.tokens import TextVocab

    tokenizer = load_tokenizer(data / "tokenizer")
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(chunk_size=4, compression=4, codebook_size=16, d_model=32, heads=2, encoder_layers=1,
                              decoder_layers=1, prompt_layers=0, codebook_dim=8, max_prompt_len=32),
                  TextVocab(len(tokenizer), tokenizer.pad_token_id))
    with torch.no_grad():  # the codebook is initialised lazily from the first batch: give it random codes now
        for module in model.modules():
            if hasattr(module, "initted") and hasattr(module, "embed"):
                module.embed.copy_(torch.randn_like(module.embed))
                module.embed_avg.copy_(module.embed)
                module.initted.fill_(True)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(directory / "tokenizer"))
    save_vqvae(directory, model, {"train": {"max_trace_len": 64}, "task": "toy", "chat_template": False,
                                  "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer), "step": 0})
    return directory


def encode_job(data: Path, out: Path) -> None:
    """`vqvae encode` of the toy's traces, each process encoding its share."""
    from token_assorted.cli import main as cli
    from token_assorted.core.devices import barrier, is_main_process

    if is_main_process():
        random_vqvae(out / "vq", data)
    barrier()
    assert cli(["vqvae", "encode", "--vqvae", str(out / "vq"), "--data", str(data / "train.jsonl"), "--task", "toy",
                "--out", str(out / "codes-2.safetensors"), "--batch-size", "5"]) == 0


def stages_job(out: Path) -> None:
    """Both processes run two pipeline stages into folders the main process alone prepares."""
    import json

    import torch.distributed as dist

    from token_assorted.core.devices import barrier, is_main_process
    from token_assorted.core.outdir import adopt, note_write, release
    from token_assorted.pipeline.stages import run_stage

    rank = os.environ["RANK"]
    if is_main_process():  # a file of an older run, recorded as ours (a user's file would never be removed)
        (out / "alone").mkdir()
        adopt(out / "alone")
        note_write(out / "alone" / "stale.txt")
        (out / "alone" / "stale.txt").write_text("from an older run")
        release(out / "alone")
    barrier()

    def build(path: Path) -> None:
        with open(path / "ranks.txt", "a") as handle:
            handle.write(rank + "\n")

    silent = lambda line: None
    run_stage(out / "alone", "k1", build, "alone", silent)
    run_stage(out / "everyone", "k2", build, "everyone", silent, everyone=True)
    cached = [run_stage(out / "alone", "k1", build, "alone", silent).cached]
    gathered = [None, None]
    dist.all_gather_object(gathered, cached[0])
    if is_main_process():
        read = lambda name: sorted((out / name / "ranks.txt").read_text().split())
        (out / "stages.json").write_text(json.dumps({
            "alone": read("alone"), "everyone": read("everyone"),
            "stale_gone": not (out / "alone" / "stale.txt").exists(), "cached_on_both": gathered}))


def main(data: Path, out: Path, jobs: list[str]) -> None:
    import torch
    from safetensors.torch import save_file

    from token_assorted.cli import main as cli
    from token_assorted.training.fit import Fit

    rank = int(os.environ.get("RANK", "0"))
    for job in jobs:
        if job.startswith("grads-"):
            sharding = job.removeprefix("grads-")
            grads, loss = step_gradient(data, out / f"g-{sharding}", 2, sharding)
            if rank == 0:
                save_file({k: v.contiguous() for k, v in grads.items()} | {"loss": torch.tensor([loss])},
                          str(out / f"{job}.safetensors"))
        elif job in ("train-fsdp", "lora-fsdp"):
            lora = ["--lora-r", "4", "--lora-alpha", "8"] if job == "lora-fsdp" else []
            assert cli(train_argv(data, out / job.removesuffix("-fsdp"), "--sharding", "fsdp", *lora)) == 0
        elif job.startswith("ddp-"):
            strategy = job.removeprefix("ddp-")
            # Coconut: half an epoch at stage 1, then the final stage, so its multi-pass forward (prompt, a
            # thought, the rest) runs under DDP; iCoT: the whole trace gone from step 4.
            extra = {"coconut": ["--coconut-cot-epochs", "0", "--coconut-stages", "1", "--coconut-epochs-per-stage",
                                 "0.5"], "icot": ["--icot-remove-all-beyond", "4"]}.get(strategy, [])
            assert cli(train_argv(data, out / job, "--strategy", strategy, "--grad-accum", "2", *extra)) == 0
        elif job == "killed-fsdp":
            save_state = Fit.save_state

            def save_then_die(self):
                save_state(self)
                if self.step == KILL_AT:  # the state is committed on every process: kill -9, no clean-up
                    os.kill(os.getpid(), signal.SIGKILL)

            Fit.save_state = save_then_die
            cli(train_argv(data, out / "killed", "--sharding", "fsdp"))
        elif job == "stages":
            stages_job(out)
        elif job == "encode":
            encode_job(data, out)
        elif job == "resume-fsdp":
            assert cli(train_argv(data, out / "killed", "--sharding", "fsdp", "--resume")) == 0
        else:
            raise SystemExit(f"unknown job {job}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
