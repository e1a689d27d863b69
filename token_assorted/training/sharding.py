"""FSDP2 for stage 2 (`train.sharding: fsdp`): parameters, gradients and optimizer state sharded over ranks.

DDP (the default) keeps a whole copy of the model, its gradients and AdamW's two moments on
every GPU: 16 bytes per parameter, 128 GB at 8B. `shard_model` wraps each decoder layer and
then the model itself with PyTorch's `fully_shard`, in place: a rank holds 1/world of every
tensor and gathers a layer's weights only while it runs. On a GPU the weights are computed in
bf16 and gradients reduced in fp32 (`MixedPrecisionPolicy`); the sharded weights the optimizer
updates stay in the dtype they were loaded in. Under LoRA the Hugging Face model inside the
peft wrapper is the root, so `generate` (which peft hands to it) gathers the weights too.

Everything that reads the whole model is a collective here, run on every rank:

- the resume state (`save_sharded` / `load_sharded`): `torch.distributed.checkpoint` writes each
  rank's shards of weights and optimizer into `step-N/sharded/` as safetensors files (its
  Hugging Face storage: each shard's offsets in the file's JSON header), tensor by tensor (no rank
  holds the full state), and reads them back exactly; the optimizer's plain settings (learning
  rates, betas) go to a JSON file. No pickle anywhere (DCP's default format keeps its metadata
  in one, and its non-tensor entries too). The step folder is committed by the pointer switch of
  `checkpoint.py`;
- the final model (`full_state`): every rank takes part in the gather, rank 0 receives the
  whole state on the CPU and writes one plain Hugging Face folder (`model_dir.save_model_dir`);
- the finiteness check before a save (`all_finite`).

Without a launcher (one process) a process group of one is made, so the same path runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core.errors import CheckpointError

SHARDINGS = ("ddp", "fsdp")
SHARDED_DIR = "sharded"  # inside a step folder: the DCP files of every rank
SETTINGS = "optimizer_settings.json"  # the optimizer's plain values (the same on every rank)


def hf_model(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model: itself, or the one inside a peft wrapper."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks (the classes transformers never splits across devices)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [module for module in model.modules() if type(module).__name__ in names]
    if not layers:
        raise CheckpointError(f"{type(model).__name__}: no decoder layers found to shard "
                              f"(_no_split_modules is empty); use --sharding ddp")
    return layers


def ensure_process_group(device: torch.device) -> bool:
    """A process group of one when none was launched; True when this call made it."""
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0,
                            world_size=1)
    return True


def shard_model(model: torch.nn.Module, device: torch.device, bf16: bool) -> None:
    """Wrap each decoder layer, then the model, with `fully_shard` (in place), on `device`."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    target = hf_model(model)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    # bf16 compute, fp32 gradient reduction: the sum of many ranks' bf16 gradients would lose bits.
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
        else MixedPrecisionPolicy()
    for layer in decoder_layers(target):
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(target, mesh=mesh, mp_policy=policy)


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(hf_model(model), FSDPModule)


def gradient_sync(model: torch.nn.Module, on: bool) -> None:
    """Reduce-scatter gradients after this backward (the last micro-batch) or keep accumulating locally."""
    hf_model(model).set_requires_gradient_sync(on)


def all_finite(model: torch.nn.Module) -> bool:
    """Whether every rank's shard of every floating weight is finite (a collective)."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    local = [t.to_local() if isinstance(t, DTensor) else t for t in model.state_dict().values()]
    ok = all(bool(torch.isfinite(t).all()) for t in local if t.is_floating_point())
    flag = torch.tensor([1.0 if ok else 0.0], device=_device_of(model))
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


def _device_of(model: torch.nn.Module) -> torch.device:
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict gathered on the CPU of rank 0 ({} on the others); every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


# --------------------------------------------------------------------------- the resume state
def _flat_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """This rank's tensors (weight and optimizer shards, step counts) and the optimizer's plain settings."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer,
                                                  options=StateDictOptions(flatten_optimizer_state_dict=True))
    tensors = {f"model.{key}": value for key, value in model_state.items()}
    tensors.update({f"optimizer.{key}": value for key, value in optimizer_state.items()
                    if isinstance(value, torch.Tensor)})
    settings = {key: value for key, value in optimizer_state.items() if not isinstance(value, torch.Tensor)}
    return tensors, settings


def _unique(tensors: dict[str, Any]) -> dict[str, Any]:
    """One name per storage: tied embeddings are one tensor under two names (safetensors refuses both)."""
    from torch.distributed.tensor import DTensor

    seen, unique = set(), {}
    for key, value in tensors.items():
        local = value.to_local() if isinstance(value, DTensor) else value
        pointer = (local.data_ptr(), local.shape, local.dtype) if local.numel() else None
        if pointer is None or pointer not in seen:
            unique[key] = value
            if pointer is not None:
                seen.add(pointer)
    return unique


def save_sharded(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every rank writes its shards of weights and optimizer state to `directory/sharded/` (safetensors,
    tensor by tensor); the main one also the optimizer's settings (learning rates, betas: JSON)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    from ..core.io import atomic_write_json, writing

    folder = directory / SHARDED_DIR
    tensors, settings = _flat_state(model, optimizer)
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
        dcp.save(_unique(tensors), storage_writer=HuggingFaceStorageWriter(str(folder), save_distributed=True))
        if dist.get_rank() == 0:
            atomic_write_json(folder / SETTINGS, settings)
    _fsync_folder(folder)


def _fsync_folder(folder: Path) -> None:
    import os

    for path in folder.glob("*.safetensors"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_sharded(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Read the shards back into `model` and `optimizer` (a collective; resharded if the world changed)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    from ..core.io import read_json

    folder = directory / SHARDED_DIR
    if not (folder / SETTINGS).is_file():
        raise CheckpointError(f"{directory}: no sharded state ({SHARDED_DIR}/{SETTINGS}); it was saved by "
                              f"--sharding ddp: resume with the sharding it was trained with")
    tensors, settings = _flat_state(model, optimizer)
    saved = read_json(folder / SETTINGS)
    if not isinstance(saved, dict) or set(saved) != set(settings):
        raise CheckpointError(f"{folder / SETTINGS}: the optimizer settings are not those of this model")
    try:
        # In place: the tied name shares its storage with the one loaded.
        dcp.load(_unique(tensors), storage_reader=HuggingFaceStorageReader(str(folder)))  # safetensors headers: JSON
    except Exception as exc:  # noqa: BLE001 - a shape or key mismatch, a damaged file
        reason = str(exc).strip().splitlines()
        raise CheckpointError(f"{folder}: cannot restore the sharded state: "
                              f"{reason[-1][:200] if reason else type(exc).__name__}") from None
    # JSON has no tuples: the betas come back as lists.
    settings = {key: tuple(saved[key]) if isinstance(value, tuple) else saved[key] for key, value in settings.items()}
    model_state = {key.removeprefix("model."): value for key, value in tensors.items() if key.startswith("model.")}
    optimizer_state = {key.removeprefix("optimizer."): value for key, value in tensors.items()
                       if key.startswith("optimizer.")} | settings
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state,
                   options=StateDictOptions(flatten_optimizer_state_dict=True))
