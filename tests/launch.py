"""Running the CLI in two processes on the CPU, as `torchrun --nproc_per_node 2` does (gloo DDP)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def free_port() -> str:
    """A free TCP port for the rendezvous (torchrun's port 0 does not reach the workers)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def torchrun_script(argv: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """`python ARGV` (a script and its arguments) in two processes of one thread each."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
               *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})


def torchrun(tmp_path: Path, argv: list[str], timeout: int = 180) -> subprocess.CompletedProcess:
    """`token-assorted ARGV` in two processes of one thread each; the toy task of stage2_toy is known."""
    script = tmp_path / "ddp_main.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(TESTS)!r})\nimport stage2_toy\n"
                      f"stage2_toy.register()\nfrom token_assorted.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
               str(script), *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
