"""Batch benchmark: a folder of N clips through `demo.py --video FOLDER`, serial and with `--ray`, on this machine.

    python benchmarks/bench_batch.py                          # 4 clips of 60 frames cut from the sample clip
    python benchmarks/bench_batch.py --clips 8 --frames 90 --ray-address 127.0.0.1:6379   # an existing cluster too

The clips are the first F frames of the sample clip (1768x994, re-encoded to H.264), copied N times under different
names. Each mode is a fresh `demo.py` process with --quiet into its own output folder; "wall s" is the whole command:
process start, model loading (and, with Ray, starting Ray and its workers), every clip, the summary. Afterwards the
keypoints.npz arrays of every clip are compared between the modes (Ray's must equal the serial run's).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE_CANDIDATES = (REPO.parent / "shared" / "data" / "videos" / "sports2d_demo.mp4",
                     REPO / "videos" / "sports2d_demo.mp4")


def make_clips(source: Path, count: int, frames: int, folder: Path) -> list[Path]:
    """The first `frames` frames of `source` as an H.264 mp4, copied `count` times."""
    from pipeline.media.decode import iter_frames
    from pipeline.media.encode import VideoWriter
    from pipeline.media.ffmpeg import probe

    info = probe(source)
    first = folder / f"{source.stem}_cut00.mp4"
    with VideoWriter(first, (info.width, info.height), info.fps, frame_count=frames) as writer:
        for frame in iter_frames(source, 0, frames, info):
            writer.write(frame)
    clips = [first]
    for i in range(1, count):
        clips.append(folder / f"{source.stem}_cut{i:02d}.mp4")
        clips[-1].write_bytes(first.read_bytes())
    return clips


def run_demo(folder: Path, out: Path, extra: list[str]) -> float:
    """Wall seconds of one `demo.py --video FOLDER` process."""
    cmd = [sys.executable, str(REPO / "demo.py"), "--video", str(folder), "--out", str(out), "--quiet", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"demo failed ({' '.join(extra) or 'serial'}): {proc.stderr.strip().splitlines()[-3:]}")
    return wall


def largest_difference(clips: list[Path], out_a: Path, out_b: Path) -> float:
    """The largest absolute difference between any numeric keypoints.npz array of the two runs (0.0: identical);
    inf when a non-numeric array (names, models_json) differs."""
    worst = 0.0
    for clip in clips:
        with np.load(out_a / clip.stem / "keypoints.npz") as a, np.load(out_b / clip.stem / "keypoints.npz") as b:
            if sorted(a.files) != sorted(b.files):
                return float("inf")
            for name in a.files:
                x, y = a[name], b[name]
                if x.dtype.kind in "fiub" and x.shape == y.shape:
                    worst = max(worst, float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max(initial=0)))
                elif not np.array_equal(x, y):
                    return float("inf")
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", type=Path, default=None, help="default: the sample clip")
    parser.add_argument("--clips", type=int, default=4, help="clips in the folder")
    parser.add_argument("--frames", type=int, default=60, help="frames per clip")
    parser.add_argument("--checkpoint", default=None, help="lifter (default: the demo's default)")
    parser.add_argument("--no-render", action="store_true", help="stop each clip after keypoints.npz")
    parser.add_argument("--ray-address", default=None, help="also run on this existing Ray cluster")
    args = parser.parse_args()
    source = args.clip or next((p for p in SAMPLE_CANDIDATES if p.is_file()), None)
    if source is None:
        raise SystemExit("no sample clip: run `python demo.py --sample` first or pass --clip")
    extra = (["--checkpoint", args.checkpoint] if args.checkpoint else []) + (["--no-render"] if args.no_render else [])
    modes = [("serial", []), ("ray (local)", ["--ray"])]
    if args.ray_address:
        modes.append((f"ray {args.ray_address}", ["--ray", args.ray_address]))
    print(f"{args.clips} clips x {args.frames} frames of {source.name}, {os.cpu_count()} CPUs, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "clips"
        folder.mkdir()
        clips = make_clips(source, args.clips, args.frames, folder)
        print(f"{'mode':<28} {'wall s':>8} {'clips/min':>10} {'frames/s':>9} {'workers':>8} {'max |diff|':>11}")
        for i, (name, flags) in enumerate(modes):
            out = Path(tmp) / f"out{i}"
            wall = run_demo(folder, out, [*extra, *flags])
            batch = out / "batch.json"
            workers = json.loads(batch.read_text())["workers"] if batch.is_file() else 1
            diff = largest_difference(clips, Path(tmp) / "out0", out)
            print(f"{name:<28} {wall:>8.1f} {len(clips) / wall * 60:>10.2f} {len(clips) * args.frames / wall:>9.2f} "
                  f"{workers:>8} {diff:>11.3g}", flush=True)


if __name__ == "__main__":
    main()
