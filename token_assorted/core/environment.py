"""What produced a run: library versions and the CPU kernels, recorded beside its results.

The same seed gives the same bits only with the same kernels: on a CPU with AVX-512, PyTorch,
MKL and oneDNN take AVX-512 code, whose rounding sends training down another path than AVX2
code does (docs/LAB_NOTES.md, "The default run on an AVX-512 CPU"). A report that names its
kernels can be told apart from one that does not reproduce for that reason.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

# Ceilings on the instruction set of PyTorch's own kernels, MKL's and oneDNN's (`make run` sets them).
KERNEL_VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")
PACKAGES = ("torch", "transformers", "accelerate", "tokenizers", "vector-quantize-pytorch", "token-assorted")


def environment() -> dict[str, Any]:
    """Versions, Python, the CPU kernels PyTorch uses, its thread count and the GPU if any."""
    import torch

    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "packages": {package: version(package) for package in PACKAGES},
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "kernel_variables": {name: os.environ[name] for name in KERNEL_VARIABLES if name in os.environ},
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def describe(record: dict[str, Any]) -> str:
    """One line for report.md."""
    packages = ", ".join(f"{name} {v}" for name, v in record["packages"].items() if v)
    pinned = ", ".join(f"{k}={v}" for k, v in record["kernel_variables"].items()) or "none"
    device = f"GPU {record['cuda']}" if record["cuda"] else "no GPU"
    return (f"Python {record['python']} on {record['machine']}; {packages}. CPU kernels: "
            f"{record['cpu_capability']} (pinned: {pinned}); torch threads in the main process: "
            f"{record['torch_threads']}; {device}.")
