"""Where the networks run: one rule for the detector, HRNet and the lifter.

`"auto"` picks CUDA, then Apple MPS, then the CPU; an explicit device is checked, so asking for CUDA on a machine
without it is a clear error instead of a crash deep inside a forward pass.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then the CPU; anything else is passed to torch.device and checked."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use device='auto' or 'cpu'")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} requested but MPS is not available; use device='auto' or 'cpu'")
    return resolved


def ultralytics_device(device: torch.device) -> str:
    """The device string Ultralytics expects: 'cpu', 'mps' or 'cuda:N' (it does not take a bare 'cuda')."""
    if device.type == "cuda":
        return f"cuda:{device.index or 0}"
    return device.type


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """PyTorch's intra-op thread count set to `count` for the body, then put back.

    Why: Ultralytics sets the process-wide count to the number of cores minus one (1 on two cores) when it sets up
    a model (its `select_device`), so a lifter that runs after the detector has loaded would otherwise run on one
    core: 0.72 s against 0.45 s for the sample clip's 230 frames on two."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
