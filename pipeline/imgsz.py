"""Choosing the detector's input size from the people in the clip, once per clip, before detection.

Why: a YOLO model sees the frame letterboxed to `imgsz` pixels on its longer side, and yolo11n-pose stops finding
people once they are below roughly 60-100 pixels tall *at that input size* (measured: benchmarks/bench_crowd.py). At
the default 640 a 768x576 street clip with 50-140 px pedestrians loses most of them; at 1280 it finds them with
confidence 0.7-0.9. But 1280 costs about 4x the compute of 640 (the cost follows the number of input pixels), which
a clip of large people does not need.

How: a few frames spread over the clip (`spread_sample`; a source that can seek reads the keyframes nearest them,
`pipeline.pose2d.probe_numbers`) are run once at a high resolution (`probe_imgsz`); the box heights of the people
found there say how small the smallest people are; the input size is the smallest one (in steps of `step`) that
brings them (a low percentile of the heights, so one stray tiny box does not decide) to `target_height` pixels at the
detector's input, between `min_imgsz` and `max_imgsz`.
A clip of large people keeps the fast 640, a crowd of small ones gets up to 1280.

The size is chosen once per clip and only from a short list of values (multiples of `step`), so that an exported
model with a fixed input size can be cached per size.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

logger = logging.getLogger(__name__)

AUTO = "auto"
T = TypeVar("T")


@dataclass(frozen=True)
class AutoImgszConfig:
    probe_frames: int = 6  # frames, spread over the clip, that the probe runs on
    probe_imgsz: int = 1280  # input size of the probe pass
    probe_conf: float = 0.5  # boxes at least this confident count as people (the tracker's new_track_conf)
    target_height: float = 100.0  # pixels a person should be tall at the detector's input
    percentile: float = 10.0  # of the probe's box heights: "the smallest people", robust to a stray tiny box
    min_imgsz: int = 640  # never below the default (large people: the fast path stays as it was)
    max_imgsz: int = 1280  # cost grows with imgsz squared: 1280 is ~4x 640
    step: int = 160  # candidate sizes are multiples of this: 640, 800, 960, 1120, 1280

    def __post_init__(self) -> None:
        if self.step % 32 or self.min_imgsz % self.step or self.max_imgsz % self.step:
            raise ValueError("step must be a multiple of 32 and min_imgsz, max_imgsz multiples of step")
        if not 0 < self.min_imgsz <= self.max_imgsz or self.probe_frames < 1 or self.target_height <= 0:
            raise ValueError("need 0 < min_imgsz <= max_imgsz, probe_frames >= 1 and target_height > 0")


def parse_imgsz(value: int | str) -> int | str:
    """'auto' or a detector input size (a positive multiple of 32); anything else is a ValueError that says so."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        if not text.isdigit():
            raise ValueError(f"imgsz must be 'auto' or a number of pixels such as 640 or 1280, not {value!r}")
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int) or value < 32 or value % 32:
        raise ValueError(f"imgsz must be 'auto' or a positive multiple of 32 (the detector's stride) such as 640 or "
                         f"1280, not {value!r}")
    return value


def imgsz_for_heights(heights: np.ndarray, frame_size: tuple[int, int], config: AutoImgszConfig) -> int:
    """The input size for a clip whose people (box heights in frame pixels, from the probe) are `heights`.

    No people seen: min_imgsz. Otherwise the smallest multiple of `step` at which the `percentile` height reaches
    `target_height` at the detector's input (the frame's longer side is scaled to imgsz), clamped to
    [min_imgsz, max_imgsz].
    """
    heights = np.asarray(heights, np.float64).ravel()
    heights = heights[np.isfinite(heights) & (heights > 0)]
    if len(heights) == 0:
        return config.min_imgsz
    small = float(np.percentile(heights, config.percentile))
    needed = config.target_height / small * max(frame_size)
    size = math.ceil(needed / config.step) * config.step
    return int(min(max(size, config.min_imgsz), config.max_imgsz))


def spread_sample(frames: Iterable[np.ndarray], count: int) -> list[np.ndarray]:
    """`count` frames spread evenly over an iterable of unknown length, in one pass and bounded memory.

    Every `stride`-th frame is kept; whenever 2 x count are held, every other one is dropped and the stride doubles.
    At the end `count` of the kept frames, evenly spaced, are returned (all of them for a shorter clip)."""
    return _spread(frames, count, lambda frame: np.array(frame, copy=True))  # decoders may reuse their buffer


def spread_indices(num_frames: int, count: int) -> list[int]:
    """The numbers of the frames `spread_sample` picks from a clip of `num_frames` frames (the same choice, made
    by the same code), for a source that can seek to them instead of decoding the whole clip."""
    return _spread(range(num_frames), count, int)


def _spread(items: Iterable[T], count: int, keep: Callable[[T], T]) -> list[T]:
    kept: list[T] = []
    stride = 1
    for index, item in enumerate(items):
        if index % stride:
            continue
        kept.append(keep(item))
        if len(kept) >= 2 * count:
            kept = kept[::2]
            stride *= 2
    if len(kept) <= count:
        return kept
    picks = np.linspace(0, len(kept) - 1, count).round().astype(int)
    return [kept[i] for i in picks]


Detect = Callable[[Sequence[np.ndarray], int], list]  # (frames, imgsz) -> one FrameDetections per frame


def probe_heights(detect: Detect, frames: Sequence[np.ndarray], config: AutoImgszConfig) -> np.ndarray:
    """Box heights (frame pixels) of the people the detector finds at probe_imgsz with at least probe_conf."""
    heights = []
    for detections in detect(list(frames), config.probe_imgsz):
        keep = detections.confidences >= config.probe_conf
        boxes = detections.boxes[keep]
        heights.append(boxes[:, 3] - boxes[:, 1])
    return np.concatenate(heights) if heights else np.zeros(0)


def choose_imgsz(detect: Detect, frames: Sequence[np.ndarray], config: AutoImgszConfig) -> tuple[int, dict]:
    """Probe `frames` (a sample of the clip) and choose the input size; also returns what run.json should record."""
    if not frames:
        raise ValueError("choosing imgsz needs at least one frame")
    frame_size = (frames[0].shape[1], frames[0].shape[0])
    heights = probe_heights(detect, frames, config)
    size = imgsz_for_heights(heights, frame_size, config)
    record = {"imgsz": size, "chosen": AUTO, "probe_frames": len(frames), "probe_imgsz": config.probe_imgsz,
              "people_seen": int(len(heights)),
              "small_height_px": round(float(np.percentile(heights, config.percentile)), 1) if len(heights) else None}
    logger.info("detector input size %d: %d people in %d probe frames, the smallest about %s px tall", size,
                len(heights), len(frames), record["small_height_px"])
    return size, record
