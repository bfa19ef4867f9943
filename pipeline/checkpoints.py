"""Safe reading of model checkpoint files: PyTorch pickles without arbitrary code execution, and safetensors.

PyTorch files are read with `torch.load(weights_only=True)` plus the narrowest allow-list that reads the released
PoseFormerV2 training checkpoints, whose `random_state` entry is a pickled `numpy.random.RandomState`. Those were
written with numpy 1.x, whose pickles name `numpy.core.multiarray._reconstruct`; numpy 2 renamed the module to
`numpy._core`, so the allow-list maps both names to whichever function the installed numpy has. Nothing else outside
torch's own tensor/container types is accepted; any other global in the file is refused before it is called.
"""
from __future__ import annotations

import json
import pickle
import re
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = 0x80  # first byte of a legacy (non-zip) torch file or a raw pickle


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, refused for safety, or not the kind of file expected."""


def _numpy_pickle_allowlist() -> list:
    """(object, pickled name) pairs needed for a numpy RandomState, as numpy 1.x and numpy 2.x pickle it."""
    try:  # numpy >= 2
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    from numpy.random import MT19937, RandomState
    from numpy.random import _pickle as random_pickle

    return [
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),  # numpy 1.x name
        (multiarray._reconstruct, "numpy._core.multiarray._reconstruct"),  # numpy 2.x name
        (np.ndarray, "numpy.ndarray"),
        (np.dtype, "numpy.dtype"),
        # The dtype instance built for the RandomState key; only its type is checked (BUILD), never named.
        (type(np.dtype(np.uint32)), "numpy.dtypes.UInt32DType"),
        (random_pickle.__randomstate_ctor, "numpy.random._pickle.__randomstate_ctor"),
        (random_pickle.__bit_generator_ctor, "numpy.random._pickle.__bit_generator_ctor"),
        (RandomState, "numpy.random.mtrand.RandomState"),
        (MT19937, "numpy.random._mt19937.MT19937"),  # numpy 2 pickles the bit generator object itself
    ]


def _describe_start(head: bytes) -> str:
    return repr(head[:16]) if head else "an empty file"


def read_checkpoint(path: str | Path) -> dict:
    """The top-level dict of a PyTorch (.bin/.pth/.pt) or safetensors file, tensors on the CPU.

    The file type is recognised from its content, not its suffix. For safetensors the dict maps names to tensors
    (see `read_safetensors_metadata` for the header metadata). Raises `CheckpointError` for a missing, truncated or
    corrupt file, for a pickle that names a global outside the allow-list, and for a top level that is not a dict.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {path}")
    with path.open("rb") as fh:
        head = fh.read(16)
    if head.startswith(ZIP_MAGIC) or (head and head[0] == PICKLE_PROTO):
        obj = _read_torch(path)
    elif _looks_like_safetensors(path, head):
        obj = _read_safetensors(path)
    else:
        raise CheckpointError(
            f"{path} is not a PyTorch or safetensors checkpoint (it starts with {_describe_start(head)}); "
            "check the file name"
        )
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a checkpoint dict; expected a state dict or a dict with one"
        )
    return dict(obj)


# What a checkpoint may hold besides containers: tensors, numbers, strings and a numpy random state.
_PLAIN_LEAVES = (str, bytes, int, float, complex, type(None), torch.Tensor, torch.dtype, torch.device, np.ndarray,
                 np.generic, np.dtype, np.random.RandomState, np.random.BitGenerator)
_REFUSED = ("which is outside the allow-list of tensors, containers and numpy random states; the file may be malicious "
            "or written by a tool this loader does not support (e.g. a whole pickled model instead of a state dict)")


def _read_torch(path: Path):
    try:
        with torch.serialization.safe_globals(_numpy_pickle_allowlist()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refusal = _refusal_reason(str(exc))
        if refusal:
            raise CheckpointError(f"refused to load {path}: {refusal}, {_REFUSED}") from None
        raise CheckpointError(f"{path} is truncated or corrupt ({_first_line(str(exc))}); download it again") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, struct.error, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path} is truncated or corrupt ({_first_line(str(exc)) or type(exc).__name__}); "
                              "download it again") from None
    # Other libraries widen torch's allow-list for the whole process (Ultralytics registers every torch.nn layer once it
    # has loaded a YOLO file), so a pickled model can get through the unpickler: refuse it here all the same.
    foreign = _foreign_object(obj)
    if foreign:
        raise CheckpointError(f"refused to load {path}: it holds a pickled {foreign}, {_REFUSED}")
    return obj


def _foreign_object(obj, depth: int = 0) -> str | None:
    """The class name of the first object in a loaded checkpoint that is neither a container nor a _PLAIN_LEAVES
    value; None when there is none."""
    if isinstance(obj, _PLAIN_LEAVES):
        return None
    if depth > 100:
        return "structure nested over 100 levels deep"
    if isinstance(obj, Mapping):
        items = [*obj.keys(), *obj.values()]
    elif isinstance(obj, (list, tuple, set, frozenset)):
        items = obj
    else:
        return f"{type(obj).__module__}.{type(obj).__qualname__}"
    for item in items:
        found = _foreign_object(item, depth + 1)
        if found:
            return found
    return None


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def _refusal_reason(message: str) -> str | None:
    """What torch's weights-only unpickler refused, in a few words; None when the error is not a refusal.

    Torch's own message suggests re-running with weights_only=False, advice we must not pass on."""
    named = re.search(r"GLOBAL ([\w.]+)", message)
    if named:
        return f"it names the pickle global {named.group(1)}"
    for pattern in (r"unrecognized function [^\n]*", r"Can only (?:build|create) [^\n]*"):
        found = re.search(pattern, message)
        if found:
            return f"it asks for {found.group(0).rstrip('.')}"
    return None


def _looks_like_safetensors(path: Path, head: bytes) -> bool:
    """safetensors: 8-byte little-endian header length, then a JSON header starting with '{'."""
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < header_len <= path.stat().st_size - 8


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is a truncated or corrupt safetensors file ({exc}); download it again") from None


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file's header ({} when it has none)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None


def is_safetensors(path: str | Path) -> bool:
    path = Path(path)
    if not path.is_file():
        return False
    with path.open("rb") as fh:
        return _looks_like_safetensors(path, fh.read(16))


def extract_state_dict(checkpoint: Mapping, keys: tuple[str, ...] = ("model_pos", "state_dict", "model")) -> dict:
    """The tensor dict inside a checkpoint: the first of `keys` present (training checkpoints), or the checkpoint
    itself when it is already a flat name -> tensor mapping."""
    for key in keys:
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            return dict(checkpoint[key])
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return dict(checkpoint)
    raise CheckpointError(
        f"no state dict found: expected one of the entries {list(keys)} or a flat name -> tensor dict, "
        f"found entries {sorted(map(str, checkpoint))[:10]}"
    )


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Remove `prefix` (e.g. nn.DataParallel's `module.`) from every key that has it."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state_dict.items()}


def save_safetensors(path: str | Path, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, object]) -> None:
    """Write tensors plus metadata (values that are not strings are stored as JSON) to a safetensors file."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    save_file(tensors, str(path), metadata=meta)


def state_dict_differences(model, state_dict: dict) -> tuple[list[str], list[str], list[tuple[str, tuple, tuple]]]:
    """Names the model expects but the file lacks, names the file has but the model lacks, and
    (name, expected shape, found shape) for tensors whose shapes differ: what a strict load checks, for one message."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [(k, tuple(v.shape), tuple(state_dict[k].shape)) for k, v in expected.items()
                  if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    return missing, unexpected, mismatched
