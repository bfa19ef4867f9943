"""Where the networks run: one rule for the detector, HRNet and the lifter.

`"auto"` picks CUDA, then Apple MPS, then the CPU; an explicit device is checked, so asking for CUDA on a machine
without it is a clear error instead of a crash deep inside a forward pass.
"""
from __future__ import annotations

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
