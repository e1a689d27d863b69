"""Device and precision names shared by vqvae train, eval and explain."""

from __future__ import annotations

import pytest
import torch

from token_assorted.core.devices import autocast, resolve_device, uses_bf16
from token_assorted.core.errors import ConfigError


def test_auto_is_the_gpu_when_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name, message", [("cuda", "no CUDA GPU"), ("gpu0", "unknown device"),
                                           ("meta", "unsupported device")])
def test_bad_or_missing_devices_are_one_line_errors(monkeypatch, name, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=message):
        resolve_device(name)


def test_bf16_only_where_the_gpu_supports_it(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert not uses_bf16("auto", cpu) and not uses_bf16("no", cpu)
    with pytest.raises(ConfigError, match="does not support"):
        uses_bf16("bf16", cpu)
    with pytest.raises(ConfigError, match="auto, no, bf16"):
        uses_bf16("fp16", cpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert uses_bf16("auto", gpu) and uses_bf16("bf16", gpu) and not uses_bf16("no", gpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert not uses_bf16("auto", gpu)


def test_autocast_on_cpu_leaves_fp32_alone():
    layer = torch.nn.Linear(4, 4)
    with autocast("auto", torch.device("cpu")):
        out = layer(torch.randn(2, 4))
    assert out.dtype == torch.float32
