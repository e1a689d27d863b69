"""Serving the exported model with `transformers serve` (OpenAI-compatible) on localhost, CPU.

A tiny GPT-2 folder is trained to open its answers with latent tokens (All-Replace), then
served as it was saved. A completion request for a question returns text in which the
latent tokens appear, `token-assorted explain --generated` decodes those spans, and the
served text equals what `token-assorted eval` generated for the same question (greedy).
The server runs in a subprocess on a free port with a timeout, and is always stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from own_data import qa_records, save_tiny_gpt2, write_jsonl

from token_assorted.cli import main
from token_assorted.generation.config import GenerationConfig
from token_assorted.data.tasks import get_task
from token_assorted.evaluation.evaluate import evaluate_dir
from token_assorted.evaluation.serving import model_completion_prompt
from token_assorted.generation.config import EvalConfig
from token_assorted.lm.config import TrainConfig
from token_assorted.lm.train import train_lm

for package in ("fastapi", "uvicorn", "openai"):
    pytest.importorskip(package, reason=f"`transformers serve` needs {package}: pip install -e '.[serve]'")

FIELDS = "question=problem,steps=solution,answer=final_answer"
OPTIONS = {"fields": {"question": "problem", "steps": "solution", "answer": "final_answer"}, "answer_match": "numeric"}
START_TIMEOUT = 240  # seconds for the server to import, load the model and listen (a loaded 2-core CPU)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(url: str, body: dict, timeout: float = 120) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def serve_command(model: Path, port: int) -> list[str]:
    """`transformers serve MODEL` as the installed CLI runs it (its entry point, or the module)."""
    executable = shutil.which("transformers", path=str(Path(sys.executable).parent))
    prefix = [executable] if executable else [sys.executable, "-m", "transformers.cli.transformers"]
    return [*prefix, "serve", str(model), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
            "--log-level", "warning"]


class Server:
    """`transformers serve` in a subprocess: started, waited for, always stopped."""

    def __init__(self, model: Path, log: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log.open("w")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(serve_command(model, self.port), stdout=self.log, stderr=subprocess.STDOUT,
                                        env=env)

    def wait(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"transformers serve exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.base}/v1/models", timeout=5):
                    return
            except OSError:
                time.sleep(1)
        raise AssertionError(f"transformers serve did not answer within {START_TIMEOUT} s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=20)
        self.log.close()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A tiny GPT-2 folder, its VQ-VAE, and an All-Replace model that answers in latent tokens."""
    root = tmp_path_factory.mktemp("serve")
    records = qa_records(50)
    train, test = write_jsonl(root / "train.jsonl", records[:40]), write_jsonl(root / "test.jsonl", records[40:44])
    model = save_tiny_gpt2(root / "gpt2", records)
    vqvae = root / "vqvae"
    assert main(["vqvae", "train", "--task", "qa", "--fields", FIELDS, "--answer-match", "numeric", "--data", str(train),
                 "--out", str(vqvae), "--tokenizer", str(model), "--chunk-size", "8", "--compression", "8",
                 "--codebook-size", "8", "--steps", "30", "--batch-size", "8", "--warmup", "2",
                 "--valid-every", "30", "--d-model", "32", "--heads", "2", "--encoder-layers", "1",
                 "--decoder-layers", "1", "--prompt-layers", "1", "--codebook-dim", "8", "--no-progress"]) == 0
    out = train_lm(TrainConfig(task="qa", task_options=OPTIONS, data=str(train), out=str(root / "model"),
                               strategy="all-replace", vqvae=str(vqvae), model=str(model), epochs=12, batch_size=8,
                               lr=1e-2, warmup=2, progress=False, validation=GenerationConfig(max_new_tokens=24)))
    return {"root": root, "model": out, "test": test, "records": records[40:44]}


@pytest.mark.slow
def test_served_model_writes_latent_tokens_that_explain_decodes(trained, capsys):
    questions = [r["problem"] for r in trained["records"]]
    task = get_task("qa", **OPTIONS)
    expected = evaluate_dir(trained["model"], task.load(trained["test"]),
                            EvalConfig(max_new_tokens=24, progress=False), task).predictions
    server = Server(trained["model"], trained["root"] / "serve.log")
    try:
        server.wait()
        served = []
        for question in questions:
            prompt = model_completion_prompt(trained["model"], question)
            reply = post(f"{server.base}/v1/completions", {"model": str(trained["model"]), "prompt": prompt,
                                                            "max_tokens": 24, "temperature": 0})
            served.append(reply["choices"][0]["text"])
    finally:
        server.stop()
    assert served == [p.generated for p in expected]  # the same greedy text as eval's
    assert any("<boLatent>" in text and "<latent_" in text for text in served), served
    text = next(t for t in served if "<latent_" in t)
    capsys.readouterr()
    assert main(["explain", "--model", str(trained["model"]), "--question", questions[served.index(text)],
                 "--generated", text, "--json"]) == 0
    explained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert explained["spans"] and all(span["decoded"] for span in explained["spans"]), explained
    assert "[latent: <latent_" in explained["explained"] and " ≈ " in explained["explained"]
