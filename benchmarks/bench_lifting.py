"""Windows per second of the 243-frame PoseFormerV2 lifter: batched `Lifter.lift` versus the released demo's way.

The released demo (`demo/vis.py`) builds one padded window per frame in numpy and runs two batch-1 forward passes
(plain and mirrored). `Lifter.lift` gathers many windows per forward pass with the mirrored copies in the same batch.
Each measurement runs in its own process so that its peak resident memory (ru_maxrss) is its own.
Weights are random (seeded): speed does not depend on their values, and no checkpoint file is needed.

    python benchmarks/bench_lifting.py                 # a few minutes on 2 CPU cores
    python benchmarks/bench_lifting.py --frames 1024 --batch-sizes 64 256 --device auto
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time

import numpy as np
import torch

from pipeline.lifting import Lifter, normalize_screen_coordinates, resolve_device
from pipeline.poseformerv2 import PoseFormerV2, PoseFormerV2Config
from pipeline.skeleton import H36M

WIDTH, HEIGHT = 1280, 720


def _keypoints(num_frames: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    base = rng.uniform([400, 100], [900, 650], size=(1, 17, 2))
    drift = np.cumsum(rng.normal(0, 2, size=(num_frames, 17, 2)), axis=0)
    return (base + drift).astype(np.float32)


def _lifter(device: str, precision: str | None) -> Lifter:
    torch.manual_seed(0)
    model = PoseFormerV2(PoseFormerV2Config(frames=243, frames_kept=27, coeffs_kept=27))
    resolved = resolve_device(device)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision or "")
    return Lifter(model=model.to(resolved).eval(), device=resolved, autocast_dtype=dtype)


def _released_demo_way(lifter: Lifter, keypoints: np.ndarray) -> None:
    """The released demo's loop: per frame one edge-padded window and two batch-1 forward passes."""
    pad = (lifter.frames - 1) // 2
    left, right = list(H36M.left), list(H36M.right)
    for i in range(len(keypoints)):
        start, end = max(0, i - pad), min(i + pad, len(keypoints) - 1)
        window = keypoints[start : end + 1]
        left_pad, right_pad = max(0, pad - i), max(0, i + pad - (len(keypoints) - 1))
        window = np.pad(window, ((left_pad, right_pad), (0, 0), (0, 0)), "edge")
        x = normalize_screen_coordinates(window, WIDTH, HEIGHT)
        x_flip = x.copy()
        x_flip[:, :, 0] *= -1
        x_flip[:, left + right] = x_flip[:, right + left]
        with torch.no_grad():
            plain = lifter.model(torch.from_numpy(x[None].astype("float32")).to(lifter.device))
            flipped = lifter.model(torch.from_numpy(x_flip[None].astype("float32")).to(lifter.device))
        flipped[:, :, :, 0] *= -1
        flipped[:, :, left + right] = flipped[:, :, right + left]
        out = (plain + flipped) / 2
        out[:, :, 0] = 0
        out.cpu().numpy()


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def _measure(mode: str, num_frames: int, batch_size: int, device: str, precision: str | None, threads: int | None,
             queue) -> None:
    if threads:
        torch.set_num_threads(threads)
    lifter = _lifter(device, precision)
    keypoints = _keypoints(num_frames)
    # Warm-up outside the timed region (allocator, kernels).
    lifter.lift(keypoints[:4], WIDTH, HEIGHT, batch_size=4)
    if lifter.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    idle_mb = _current_rss_mb()
    start = time.perf_counter()
    if mode == "demo":
        _released_demo_way(lifter, keypoints)
    else:
        lifter.lift(keypoints, WIDTH, HEIGHT, batch_size=batch_size)
    if lifter.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if lifter.device.type == "cuda" else None
    queue.put((num_frames / seconds, seconds, peak_mb, peak_mb - idle_mb, gpu_mb))


def run(mode: str, num_frames: int, batch_size: int, device: str, precision: str | None, threads: int | None):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(mode, num_frames, batch_size, device, precision, threads, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=256, help="sequence length for batched lifting")
    parser.add_argument("--demo-frames", type=int, default=48, help="sequence length for the released demo's way")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 256], help="windows per forward pass")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    parser.add_argument("--precision", choices=["fp16", "bf16"], default=None, help="autocast dtype (CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    print(f"PoseFormerV2 243/27/27 on {device}, torch {torch.__version__}, {torch.get_num_threads()} threads"
          f"{', autocast ' + args.precision if args.precision else ''}")
    print(f"{'method':<40} {'windows/s':>10} {'seconds':>8} {'peak RSS MB':>12} {'over idle MB':>13} "
          f"{'peak GPU MB':>12}")
    rows = [("released demo (2 x batch-1 per frame)", "demo", args.demo_frames, 1)]
    rows += [(f"Lifter.lift batch {b} (+{b} mirrored)", "batched", args.frames, b) for b in args.batch_sizes]
    baseline = None
    for label, mode, frames, batch in rows:
        speed, seconds, peak, over_idle, gpu = run(mode, frames, batch, args.device, args.precision, args.threads)
        baseline = baseline or speed
        gpu_text = f"{gpu:12.0f}" if gpu is not None else f"{'-':>12}"
        print(f"{label:<40} {speed:10.1f} {seconds:8.1f} {peak:12.0f} {over_idle:13.0f} {gpu_text}   "
              f"x{speed / baseline:.2f}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
