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
  rank's shards of weights and optimizer into `step-N/sharded/`, streamed tensor by tensor (no
  rank holds the full state), and reads them back exactly; the step folder is committed by the
  pointer switch of `checkpoint.py`. Its metadata file is a pickle: it is read by an unpickler
  that admits only the checkpoint's own record classes, and non-tensor entries with
  `weights_only=True`, so a tampered state cannot run code;
- the final model (`full_state`): every rank takes part in the gather, rank 0 receives the
  whole state on the CPU and writes one plain Hugging Face folder (`model_dir.save_model_dir`);
- the finiteness check before a save (`all_finite`).

Without a launcher (one process) a process group of one is made, so the same path runs.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch

from ..core.errors import CheckpointError

SHARDINGS = ("ddp", "fsdp")
SHARDED_DIR = "sharded"  # inside a step folder: the DCP files of every rank


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
def save_sharded(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every rank writes its shards of weights and optimizer state to `directory/sharded/` (fsynced)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from ..core.io import writing

    model_state, optimizer_state = get_state_dict(model, optimizer)
    with writing(directory / SHARDED_DIR):
        dcp.save({"model": model_state, "optimizer": optimizer_state},
                 storage_writer=dcp.FileSystemWriter(directory / SHARDED_DIR, sync_files=True))


def load_sharded(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Read this rank's shards back into `model` and `optimizer` (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    folder = directory / SHARDED_DIR
    if not (folder / ".metadata").is_file():
        raise CheckpointError(f"{directory}: no sharded state ({SHARDED_DIR}/.metadata); it was saved by "
                              f"--sharding ddp: resume with the sharding it was trained with")
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    try:
        dcp.load(state, storage_reader=_SafeReader(folder), planner=_SafeLoadPlanner())
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - a shape or key mismatch, a damaged file
        reason = str(exc).strip().splitlines()
        raise CheckpointError(f"{folder}: cannot restore the sharded state: "
                              f"{reason[-1] if reason else type(exc).__name__}") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


class _MetadataUnpickler(pickle.Unpickler):
    """Only what a DCP metadata file is made of: its record classes, torch sizes, dtypes and
    layouts, and paths. Anything else (a function that runs code) is refused unread."""

    def find_class(self, module: str, name: str) -> Any:
        if _admitted(module, name):
            return super().find_class(module, name)
        raise CheckpointError(f"sharded state metadata refers to {module}.{name}; refused (not a checkpoint record)")


def _admitted(module: str, name: str) -> bool:
    if module == "torch.distributed.checkpoint.metadata":
        return not name.startswith("_") or name == "_MEM_FORMAT_ENCODING"
    if module == "torch":
        return name == "Size" or isinstance(getattr(torch, name, None), torch.dtype)
    return (module, name) in {("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
                              ("torch.serialization", "_get_layout"),  # a lookup among torch.layout values
                              ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "Path"),
                              ("collections", "OrderedDict")}


def _reader_class():
    import torch.distributed.checkpoint as dcp

    return dcp.FileSystemReader


class _SafeReader(_reader_class()):  # type: ignore[misc]
    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        from torch.distributed.checkpoint.metadata import StorageMeta

        rank = kwargs.get("rank")
        path = self._get_metadata_path(rank)
        with self.fs.create_stream(path, "rb") as stream:
            metadata = _MetadataUnpickler(stream).load()
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def _planner_class():
    from torch.distributed.checkpoint import DefaultLoadPlanner

    return DefaultLoadPlanner


class _SafeLoadPlanner(_planner_class()):  # type: ignore[misc]
    """The default planner, except that non-tensor entries (step counts, param groups) load weights-only."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        try:
            loaded = torch.load(value, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - refused: not plain numbers and containers
            raise CheckpointError(f"sharded state entry {read_item.dest_index.fqn}: not plain data, refused "
                                  f"({str(exc).splitlines()[0][:120]})") from None
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._traverse import set_element

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded
