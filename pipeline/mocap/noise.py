"""Detector-like corruption of clean 2D COCO-17 keypoint tracks.

Errors scale with the person's size like COCO's per-keypoint OKS sigmas (hips and knees are the least precise, the
eyes the most), part white frame-to-frame jitter and part a slowly drifting bias (detectors err consistently for a few
frames), plus occasional outliers, short left/right limb swaps, and short dropouts that are filled by linear
interpolation as the runtime's gap filling does.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.skeleton import COCO

# COCO keypoint OKS sigmas (cocoapi), in COCO-17 order: the annotators' spread relative to sqrt(segment area).
COCO_SIGMAS = (0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062,
               0.107, 0.107, 0.087, 0.087, 0.089, 0.089)

# Limb pairs a detector confuses when the person is seen from the side or the back.
SWAP_GROUPS = (
    ("left_knee", "left_ankle"), ("left_elbow", "left_wrist"), ("left_hip", "left_knee", "left_ankle"),
    ("left_shoulder", "left_elbow", "left_wrist"), ("left_wrist",), ("left_ankle",),
)


@dataclass(frozen=True)
class DetectorNoiseConfig:
    level: tuple[float, float] = (0.3, 1.2)  # per-sequence multiplier of COCO_SIGMAS (1 = annotator spread)
    drift_share: float = 0.5  # share of the variance that drifts slowly instead of jittering per frame
    drift_frames: float = 5.0  # correlation time of the drift (gaussian smoothing sigma, frames)
    outlier_rate: tuple[float, float] = (0.0, 0.006)  # per keypoint and frame, drawn per sequence
    outlier_size: float = 0.3  # outlier displacement std, in person sizes
    swap_rate: float = 0.003  # left/right limb swaps starting per frame
    swap_frames: tuple[int, int] = (1, 6)
    dropout_rate: float = 0.003  # single-keypoint dropouts starting per keypoint and frame
    person_dropout_rate: float = 0.002  # whole-person misses starting per frame
    dropout_frames: tuple[int, int] = (1, 8)


def person_size(keypoints: np.ndarray) -> np.ndarray:
    """(T,) sqrt of the segment area, taken as half the keypoints' bounding box area (COCO's OKS scale)."""
    span = keypoints.max(axis=-2) - keypoints.min(axis=-2)
    return np.sqrt(np.maximum(span[..., 0] * span[..., 1] * 0.5, 1.0))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_frames: float) -> np.ndarray:
    """Unit-variance gaussian noise correlated along axis 0 (gaussian kernel of `sigma_frames`)."""
    radius = int(3 * sigma_frames) + 1
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_frames) ** 2)
    kernel /= np.sqrt((kernel ** 2).sum())
    white = rng.standard_normal((shape[0] + 2 * radius, *shape[1:]))
    flat = white.reshape(white.shape[0], -1)
    out = np.stack([np.convolve(flat[:, k], kernel, mode="valid") for k in range(flat.shape[1])], axis=1)
    return out.reshape(shape)


def fill_gaps(keypoints: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Linearly interpolate invalid (T, K) entries of (T, K, 2) tracks per keypoint; hold the ends."""
    out = keypoints.copy()
    frames = np.arange(keypoints.shape[0])
    for k in range(keypoints.shape[1]):
        ok = valid[:, k]
        if ok.all() or not ok.any():
            continue
        for axis in range(keypoints.shape[2]):
            out[~ok, k, axis] = np.interp(frames[~ok], frames[ok], keypoints[ok, k, axis])
    return out


def _runs(rng: np.random.Generator, num_frames: int, rate: float, lengths: tuple[int, int]) -> list[slice]:
    starts = np.flatnonzero(rng.random(num_frames) < rate)
    return [slice(s, s + rng.integers(lengths[0], lengths[1] + 1)) for s in starts]


def corrupt_keypoints(keypoints: np.ndarray, rng: np.random.Generator,
                      config: DetectorNoiseConfig = DetectorNoiseConfig()) -> np.ndarray:
    """Clean COCO-17 tracks (T, 17, 2) in pixels -> detector-like tracks (T, 17, 2) in pixels."""
    kp = np.asarray(keypoints, np.float64)
    if kp.ndim != 3 or kp.shape[1:] != (COCO.num_joints, 2):
        raise ValueError(f"expected COCO-17 keypoint tracks of shape (T, 17, 2), got {kp.shape}")
    num_frames = kp.shape[0]
    size = person_size(kp)[:, None, None]  # (T, 1, 1)
    sigma = rng.uniform(*config.level) * np.asarray(COCO_SIGMAS)[None, :, None] * size / np.sqrt(2)
    white = rng.standard_normal(kp.shape) * np.sqrt(1 - config.drift_share)
    drift = _smooth_noise(rng, kp.shape, config.drift_frames) * np.sqrt(config.drift_share)
    out = kp + sigma * (white + drift)

    outliers = rng.random(kp.shape[:2]) < rng.uniform(*config.outlier_rate)
    out[outliers] += rng.normal(0, config.outlier_size, (outliers.sum(), 2)) * np.broadcast_to(
        size[..., 0], kp.shape[:2])[outliers][:, None]

    flip = COCO.flip_permutation
    for run in _runs(rng, num_frames, config.swap_rate, config.swap_frames):
        group = [COCO.index(n) for n in SWAP_GROUPS[rng.integers(len(SWAP_GROUPS))]]
        mirror = [int(flip[j]) for j in group]
        out[run, group + mirror] = out[run, mirror + group]

    valid = np.ones(kp.shape[:2], bool)
    for k in range(kp.shape[1]):
        for run in _runs(rng, num_frames, config.dropout_rate, config.dropout_frames):
            valid[run, k] = False
    for run in _runs(rng, num_frames, config.person_dropout_rate, config.dropout_frames):
        valid[run] = False
    return fill_gaps(out, valid).astype(np.float32)
