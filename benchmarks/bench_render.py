"""Frames per second of the side-by-side renderer and the H.264 encoder, alone and together.

    python benchmarks/bench_render.py [--frames 150] [--panels 1] [--max-height 720] [--preset superfast] [--crf 23]

Input: real frames of the sample clip (../shared/data/videos/sports2d_demo.mp4, 1768x994) when present, otherwise
synthetic 1768x994 frames; a walking skeleton that moves every frame (2D and 3D). The frames are decoded before timing
starts and reused in a loop: decoding is the video reader's cost, not the renderer's. Target: >= 40 frames/s for
render + encode on 2 cores.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from pipeline.media.encode import EncoderConfig, VideoWriter
from pipeline.media.ffmpeg import count_frames
from pipeline.render import RenderConfig, SideBySideRenderer, WorldLimits
from pipeline.skeleton import H36M

SAMPLE_CLIP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos" / "sports2d_demo.mp4"
SAMPLE_SIZE = (1768, 994)


def walking_worlds(num_frames: int, fps: float = 30.0) -> np.ndarray:
    """(T, 17, 3) a person walking on the spot, z up, feet on the ground, root at x=y=0 (the lifter's world frame)."""
    t = np.arange(num_frames) / fps
    phase = 2 * np.pi * 0.9 * t  # ~0.9 strides per second
    j = H36M.index
    poses = np.zeros((num_frames, 17, 3))
    swing = 0.25 * np.sin(phase)
    poses[:, j("pelvis")] = [0, 0, 0.95]
    for side, sign, s in (("left", 1, swing), ("right", -1, -swing)):
        poses[:, j(f"{side}_hip")] = np.stack([np.zeros_like(t), sign * 0.12 + 0 * t, 0.95 + 0 * t], -1)
        poses[:, j(f"{side}_knee")] = np.stack([s * 0.6, sign * 0.12 + 0 * t, 0.52 + 0.04 * np.abs(s)], -1)
        poses[:, j(f"{side}_ankle")] = np.stack([s, sign * 0.12 + 0 * t, 0.08 + 0.1 * np.clip(s, 0, None)], -1)
        poses[:, j(f"{side}_shoulder")] = np.stack([0 * t, sign * 0.18 + 0 * t, 1.45 + 0 * t], -1)
        poses[:, j(f"{side}_elbow")] = np.stack([-s * 0.6, sign * 0.22 + 0 * t, 1.18 + 0 * t], -1)
        poses[:, j(f"{side}_wrist")] = np.stack([-s, sign * 0.24 + 0 * t, 0.95 + 0.05 * np.abs(s)], -1)
    poses[:, j("spine")] = [0, 0, 1.2]
    poses[:, j("thorax")] = [0, 0, 1.47]
    poses[:, j("neck_nose")] = [0.05, 0, 1.56]
    poses[:, j("head")] = [0.02, 0, 1.68]
    poses[:, :, 2] -= poses[:, :, 2].min(axis=1, keepdims=True)
    return poses


def image_keypoints(worlds: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(T, 17, 2) pixels: a side view of the world poses drifting across the frame."""
    width, height = size
    scale = height * 0.45
    drift = np.linspace(0.3, 0.7, len(worlds))[:, None] * width
    return np.stack([drift + worlds[..., 0] * scale, height * 0.9 - worlds[..., 2] * scale], axis=-1)


class Clock:
    """Wall-clock time and CPU time of this process and its finished children (ffmpeg) since construction."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), self._cpu()

    @staticmethod
    def _cpu() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def report(self, frames: int) -> str:
        wall, cpu = time.perf_counter() - self.wall, self._cpu() - self.cpu
        return f"{frames / wall:7.1f} frames/s wall, {1000 * cpu / frames:6.1f} CPU ms/frame"


def load_frames(count: int) -> tuple[list[np.ndarray], str]:
    if SAMPLE_CLIP.is_file():
        capture = cv2.VideoCapture(str(SAMPLE_CLIP))
        frames = []
        while len(frames) < count:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(frame)
        capture.release()
        if frames and frames[0].shape[1::-1] == SAMPLE_SIZE:
            return frames, f"{len(frames)} real frames of {SAMPLE_CLIP.name}"
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (SAMPLE_SIZE[1] // 8, SAMPLE_SIZE[0] // 8, 3), dtype=np.uint8)
    base = cv2.resize(base, SAMPLE_SIZE, interpolation=cv2.INTER_CUBIC)
    return [np.roll(base, 7 * k, axis=1) for k in range(min(count, 30))], "synthetic frames"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--panels", type=int, default=1, help="3D panels (checkpoints compared)")
    parser.add_argument("--max-height", type=int, default=RenderConfig.max_height)
    parser.add_argument("--preset", default=EncoderConfig.preset)
    parser.add_argument("--crf", type=int, default=EncoderConfig.crf)
    args = parser.parse_args()

    frames, source = load_frames(min(args.frames, 60))
    worlds = walking_worlds(args.frames)
    keypoints = image_keypoints(worlds, SAMPLE_SIZE)
    scores = np.full((args.frames, 17), 0.9)
    valid = np.arange(args.frames) % 50 < 45  # a few undetected frames, as in real clips
    limits = WorldLimits.from_worlds([worlds])
    renderer = SideBySideRenderer(SAMPLE_SIZE, [f"checkpoint_{k}.bin" for k in range(args.panels)], limits,
                                  RenderConfig(max_height=args.max_height))
    encoder = EncoderConfig(preset=args.preset, crf=args.crf)
    width, height = renderer.output_size
    print(f"input {SAMPLE_SIZE[0]}x{SAMPLE_SIZE[1]} ({source}), output {width}x{height}, {args.panels} 3D panel(s), "
          f"{args.frames} frames, x264 preset {args.preset} crf {args.crf}")

    def render(i: int) -> np.ndarray:
        return renderer.render(frames[i % len(frames)], keypoints[i], scores[i], bool(valid[i]),
                               [worlds[i]] * args.panels)

    # Wall-clock rates depend on what else runs on the machine; CPU milliseconds per frame (this process plus ffmpeg)
    # do not, and show what an otherwise idle 2-core machine can reach.
    for i in range(5):  # warm-up: first calls pay for allocations and OpenCV's thread pool start
        render(i)
    clock = Clock()
    rendered = [render(i) for i in range(min(args.frames, 60))]
    print(f"render alone:      {clock.report(len(rendered))}")

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "encode_only.mp4"
        clock = Clock()
        with VideoWriter(path, (width, height), 30, frame_count=args.frames, config=encoder) as writer:
            for i in range(args.frames):
                writer.write(rendered[i % len(rendered)])
        print(f"encode alone:      {clock.report(args.frames)}  ({path.stat().st_size / 1e6:.1f} MB)")

        path = Path(folder) / "render_encode.mp4"
        clock = Clock()
        with VideoWriter(path, (width, height), 30, frame_count=args.frames, config=encoder) as writer:
            for i in range(args.frames):
                writer.write(render(i))
        report = clock.report(args.frames)
        assert count_frames(path) == args.frames
        print(f"render + encode:   {report}  ({path.stat().st_size / 1e6:.1f} MB, target >= 40 frames/s)")
        load = os.getloadavg()[0]
        print(f"load average {load:.1f} on {os.cpu_count()} cores (above ~1 means other work shared the CPU)")


if __name__ == "__main__":
    main()
