"""The Bandai training clips in one small file, to take the training data where the archive cannot go.

Why: a lent GPU machine receives only this repository's working tree, at most 64 MiB per call, and the tracked tree
alone is about 60 MB (the shipped lifter). The shared Bandai archive is 87 MB (xz of 536 MB of BVH text). The same
3,076 clips (416,845 frames x 132 channels) as a pack are 24 MB: each channel quantised to 0.01 of its unit
(centimetres, degrees), differenced along time within its clip (motion is smooth, so the steps are small integers)
and compressed with xz; the hierarchy texts (nearly identical) and the dataset's licence and label files are kept
verbatim. `unpack_pack` writes the BVH files back where `python -m pipeline.mocap unpack` puts them, so rendering and
training read them unchanged; every value is within 0.005 of the original (a hundredth of a degree is far below the
detector noise the renderer adds).

Layout of the file (an .npz inside xz, no pickles): `paths` (relative paths of the BVH files), `headers` (each file's
text before MOTION), `frame_times` (the "Frame Time:" text), `shapes` ((frames, channels) per clip), `steps` (int32,
every clip's channels-by-frames differences one after the other), `extra_paths` and `extra_bytes` (other files,
concatenated; `extra_sizes` splits them).
"""
from __future__ import annotations

import io
import logging
import lzma
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

BANDAI_ROOT = "dataset"  # under the mocap folder, as the archive unpacks
BANDAI_GLOB = "Bandai-Namco-Research-Motiondataset-*"
QUANTUM = 0.01  # of the file's units: centimetres and degrees
PACK_FORMAT = 1


def _split_bvh(text: str) -> tuple[str, int, str, np.ndarray]:
    """A BVH file's text -> (hierarchy text before MOTION, frames, frame time as written, (F, C) values)."""
    at = text.index("MOTION")
    header, motion = text[:at], text[at:].split("\n")
    frames = int(motion[1].split(":")[1])
    frame_time = motion[2].split(":")[1].strip()
    values = np.loadtxt(io.StringIO("\n".join(motion[3:3 + frames])), dtype=np.float64, ndmin=2)
    if values.shape[0] != frames:
        raise ValueError(f"the MOTION section has {values.shape[0]} frames, its header says {frames}")
    return header, frames, frame_time, values


def pack_bandai(mocap_dir: Path, out: Path) -> Path:
    """Every file of the unpacked Bandai datasets under `mocap_dir` -> one xz-compressed pack at `out`."""
    root = Path(mocap_dir)
    datasets = sorted((root / BANDAI_ROOT).glob(BANDAI_GLOB))
    if not datasets:
        raise FileNotFoundError(f"no Bandai datasets under {root / BANDAI_ROOT}; run python -m pipeline.mocap unpack")
    paths, headers, frame_times, shapes, steps = [], [], [], [], []
    extra_paths, extra = [], []
    for file in sorted(p for d in datasets for p in d.rglob("*") if p.is_file()):
        relative = file.relative_to(root).as_posix()
        if file.suffix != ".bvh":
            extra_paths.append(relative)
            extra.append(file.read_bytes())
            continue
        header, frames, frame_time, values = _split_bvh(file.read_text())
        quantised = np.rint(values.T / QUANTUM).astype(np.int64)  # (C, F): each channel's frames together
        diffs = np.diff(quantised, axis=1, prepend=0)
        if np.abs(diffs).max(initial=0) >= 2**31:
            raise ValueError(f"{relative}: a channel steps by more than int32 holds at {QUANTUM} units")
        paths.append(relative)
        headers.append(header)
        frame_times.append(frame_time)
        shapes.append(values.shape)
        steps.append(diffs.astype(np.int32).ravel())
    buffer = io.BytesIO()
    np.savez(buffer, format=np.int64(PACK_FORMAT), quantum=np.float64(QUANTUM), paths=np.array(paths),
             headers=np.array(headers), frame_times=np.array(frame_times), shapes=np.array(shapes, np.int64),
             steps=np.concatenate(steps) if steps else np.zeros(0, np.int32), extra_paths=np.array(extra_paths),
             extra_sizes=np.array([len(b) for b in extra], np.int64),
             extra_bytes=np.frombuffer(b"".join(extra), np.uint8))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(lzma.compress(buffer.getvalue(), preset=6))
    tmp.replace(out)
    log.info("packed %d BVH clips (%d frames) and %d other files into %s (%.1f MB)", len(paths),
             sum(s[0] for s in shapes), len(extra_paths), out, out.stat().st_size / 1e6)
    return out


def unpack_pack(pack: Path, mocap_dir: Path) -> int:
    """Write the files of a pack (`pack_bandai`) back under `mocap_dir`, laid out as the archive unpacks; returns
    the number of BVH clips. Files already there are overwritten."""
    with np.load(io.BytesIO(lzma.decompress(Path(pack).read_bytes())), allow_pickle=False) as z:
        if int(z["format"]) != PACK_FORMAT:
            raise ValueError(f"{pack} is pack format {int(z['format'])}; this code reads format {PACK_FORMAT}")
        quantum, steps, offset = float(z["quantum"]), z["steps"], 0
        root = Path(mocap_dir)
        for relative, header, frame_time, (frames, channels) in zip(z["paths"], z["headers"], z["frame_times"],
                                                                     z["shapes"], strict=True):
            count = int(frames) * int(channels)
            values = np.cumsum(steps[offset:offset + count].reshape(channels, frames).astype(np.int64), axis=1)
            offset += count
            row = " ".join(["%.2f"] * int(channels))
            rows = "\n".join(row % tuple(r) for r in (values.T * quantum).tolist())
            target = root / str(relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f"{header}MOTION\nFrames:\t{int(frames)}\nFrame Time:\t{frame_time}\n{rows}\n")
        ends = np.cumsum(z["extra_sizes"])
        data = z["extra_bytes"].tobytes()
        for relative, end, size in zip(z["extra_paths"], ends, z["extra_sizes"], strict=True):
            target = root / str(relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data[int(end - size):int(end)])
        return len(z["paths"])
