"""Detector-like corruption of clean 2D COCO-17 keypoint tracks.

A detector's error on a video is not white noise. Following what the field's lifters train with (MotionBERT's
keyframe-interpolated noise, per-joint scales like COCO's OKS sigmas), each sequence gets four error components, each
with its own strength and its own per-joint scale, all proportional to the person's size:
- a constant per-sequence bias (the detector's systematic placement for this person, clothing, viewpoint),
- a smooth drift drawn at keyframes a few to 30 frames apart and interpolated (errors that persist for a while),
- per-frame white jitter,
- rare large outliers;
plus left/right limb swaps, limbs hidden for stretches (the detector either loses them, and the track is interpolated
across, or lays them onto the visible limb of the other side, as a side view does), and short single-keypoint and
whole-person dropouts filled by linear interpolation as the runtime's gap filling does.
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

# How often each COCO keypoint glitches, relative to a wrist (real detections: docs/real_footage_gap.md).
GLITCH_WEIGHTS = {"nose": 0.2, "left_eye": 0.1, "right_eye": 0.1, "left_ear": 0.2, "right_ear": 0.2,
                  "left_shoulder": 0.3, "right_shoulder": 0.3, "left_elbow": 0.7, "right_elbow": 0.7,
                  "left_wrist": 1.0, "right_wrist": 1.0, "left_hip": 0.1, "right_hip": 0.1,
                  "left_knee": 0.3, "right_knee": 0.3, "left_ankle": 0.5, "right_ankle": 0.5}

# Limbs that go out of sight together (the left side; the right side is mirrored).
OCCLUSION_GROUPS = (("left_elbow", "left_wrist"), ("left_wrist",), ("left_knee", "left_ankle"), ("left_ankle",))


@dataclass(frozen=True)
class DetectorNoiseConfig:
    # Strength of each component per sequence, uniform in (low, high), in multiples of COCO_SIGMAS x person size.
    bias: tuple[float, float] = (0.0, 0.6)
    drift: tuple[float, float] = (0.1, 0.9)
    jitter: tuple[float, float] = (0.05, 0.5)
    joint_spread: float = 0.4  # each joint's scale of each component: x exp(N(0, spread)), drawn per sequence
    drift_frames: tuple[float, float] = (4.0, 30.0)  # keyframe spacing of the drift, drawn per sequence
    # Drift and jitter grow with the keypoint's image speed: x (1 + speed_gain x speed in person sizes per second at
    # 30 fps, at most speed_cap). Real wrists, elbows and face points err about 2x more above 2 m/s than at rest
    # (docs/real_footage_gap.md); hips and shoulders move slowly, so the same rule leaves them nearly unchanged.
    speed_gain: float = 0.35
    speed_cap: float = 4.0
    # The real detector's tail is heavy: a quarter to a third of limb detections are > 5 % of stature off the
    # triangulation (partly calibration misfit), an order of magnitude above the first noise model's rates.
    outlier_rate: tuple[float, float] = (0.0, 0.015)  # per keypoint and frame, drawn per sequence
    outlier_size: float = 0.3  # outlier displacement std, in person sizes
    swap_rate: float = 0.006  # left/right limb swaps starting per frame
    swap_frames: tuple[int, int] = (1, 10)
    occlusion_rate: float = 0.006  # hidden-limb stretches starting per frame
    occlusion_frames: tuple[int, int] = (5, 45)
    occlusion_collapse: float = 0.5  # share of hidden limbs laid onto the other side's limb instead of interpolated
    dropout_rate: float = 0.002  # single-keypoint dropouts starting per keypoint and frame
    person_dropout_rate: float = 0.002  # whole-person misses starting per frame
    dropout_frames: tuple[int, int] = (1, 8)
    # Glitches: stretches in which one keypoint is placed far off, the heavy tail of real detections (off by more
    # than 5 % of stature: real wrists 31-34 %, elbows 24-26 %, ankles 17-23 %, knees 13-16 %, shoulders 13-17 %,
    # hips 8-10 %; this model without glitches: 7-10 % for the arms, about 12 % for the legs and 13-17 % for the hips;
    # `python -m pipeline.evaluation gap --mocap-clips 40`, docs/real_footage_gap.md). The recording's share is
    # against its own triangulation, which carries some calibration misfit, so it overstates the detector a little.
    # Starting per frame for a wrist, drawn per sequence; other joints at GLITCH_WEIGHTS of it. 0: none.
    glitch_rate: tuple[float, float] = (0.0, 0.0)
    glitch_frames: tuple[int, int] = (3, 20)
    glitch_size: float = 0.3  # displacement std, in person sizes (a standing person's size is about 0.45 stature)
    glitch_hold: float = 0.5  # share of glitches that hold the keypoint still instead of displacing it


def person_size(keypoints: np.ndarray) -> np.ndarray:
    """(T,) sqrt of the segment area, taken as half the keypoints' bounding box area (COCO's OKS scale)."""
    span = keypoints.max(axis=-2) - keypoints.min(axis=-2)
    return np.sqrt(np.maximum(span[..., 0] * span[..., 1] * 0.5, 1.0))


def keyframe_noise(rng: np.random.Generator, shape: tuple[int, ...], spacing: float) -> np.ndarray:
    """Smooth noise along axis 0: standard-normal values at keyframes `spacing` frames apart (random phase), joined by
    cosine interpolation, so the curve and its slope are continuous and it changes on the keyframes' time scale."""
    num = shape[0]
    spacing = max(float(spacing), 1.0)
    phase = rng.uniform(0, spacing)
    keys = int(np.ceil((num + phase) / spacing)) + 1
    values = rng.standard_normal((keys, *shape[1:]))
    t = (np.arange(num) + phase) / spacing
    lo = np.floor(t).astype(int)
    w = (1 - np.cos(np.pi * (t - lo))) / 2
    w = w.reshape(-1, *([1] * (len(shape) - 1)))
    return values[lo] * (1 - w) + values[lo + 1] * w


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


def _joint_scales(rng: np.random.Generator, strength: tuple[float, float], spread: float) -> np.ndarray:
    """(17, 1) per-joint scale of one error component: strength x COCO sigma x a per-joint log-normal factor."""
    factor = np.exp(rng.normal(0, spread, COCO.num_joints)) if spread > 0 else np.ones(COCO.num_joints)
    return (rng.uniform(*strength) * np.asarray(COCO_SIGMAS) * factor)[:, None]


def _swap_and_hide(out: np.ndarray, valid: np.ndarray, rng: np.random.Generator,
                   config: DetectorNoiseConfig) -> None:
    """In place: left/right limb swaps, and hidden limbs (invalid, or laid onto the mirrored limb)."""
    num_frames = out.shape[0]
    flip = COCO.flip_permutation
    for run in _runs(rng, num_frames, config.swap_rate, config.swap_frames):
        group = [COCO.index(n) for n in SWAP_GROUPS[rng.integers(len(SWAP_GROUPS))]]
        mirror = [int(flip[j]) for j in group]
        out[run, group + mirror] = out[run, mirror + group]
    for run in _runs(rng, num_frames, config.occlusion_rate, config.occlusion_frames):
        group = [COCO.index(n) for n in OCCLUSION_GROUPS[rng.integers(len(OCCLUSION_GROUPS))]]
        if rng.random() < 0.5:
            group = [int(flip[j]) for j in group]
        if rng.random() < config.occlusion_collapse:
            frames = np.arange(num_frames)[run]
            # Ramp in and out over a few frames: the detector slides onto the visible limb rather than jumping.
            ramp = np.minimum(1.0, np.minimum(frames - frames[0] + 1, frames[-1] - frames + 1) / 3.0)[:, None, None]
            mirror = [int(flip[j]) for j in group]
            out[run, group] = out[run, group] * (1 - ramp) + out[run, mirror] * ramp
        else:
            valid[run, group] = False


def _glitch(out: np.ndarray, size: np.ndarray, rng: np.random.Generator, config: DetectorNoiseConfig) -> None:
    """In place: glitch stretches, ramping in and out over a few frames. A `glitch_hold` share of them hold the keypoint
    where it was when the stretch began while the body moves on (a detector that lost a fast or blurred limb), the
    others put it off by a random displacement (a detection on the wrong limb or the background)."""
    if config.glitch_rate[1] <= 0:  # no draw: without glitches the noise is what it was before they existed
        return
    rate = rng.uniform(*config.glitch_rate)
    num_frames = out.shape[0]
    for name, weight in GLITCH_WEIGHTS.items():
        k = COCO.index(name)
        for run in _runs(rng, num_frames, rate * weight, config.glitch_frames):
            frames = np.arange(num_frames)[run]
            if len(frames) == 0:
                continue
            ramp = np.minimum(1.0, np.minimum(frames - frames[0] + 1, frames[-1] - frames + 1) / 3.0)[:, None]
            if rng.random() < 1.0 - config.glitch_hold:
                offset = rng.normal(0, config.glitch_size, 2) * size[frames[0], 0, 0]
                out[frames, k] += ramp * offset
            else:
                held = out[frames[0], k].copy()
                out[frames, k] = out[frames, k] * (1 - ramp) + held * ramp


def corrupt_keypoints(keypoints: np.ndarray, rng: np.random.Generator,
                      config: DetectorNoiseConfig = DetectorNoiseConfig()) -> np.ndarray:
    """Clean COCO-17 tracks (T, 17, 2) in pixels -> detector-like tracks (T, 17, 2) in pixels."""
    kp = np.asarray(keypoints, np.float64)
    if kp.ndim != 3 or kp.shape[1:] != (COCO.num_joints, 2):
        raise ValueError(f"expected COCO-17 keypoint tracks of shape (T, 17, 2), got {kp.shape}")
    num_frames = kp.shape[0]
    size = person_size(kp)[:, None, None]  # (T, 1, 1)
    spread = config.joint_spread
    bias = _joint_scales(rng, config.bias, spread) * rng.standard_normal((1, *kp.shape[1:]))
    drift = _joint_scales(rng, config.drift, spread) * keyframe_noise(rng, kp.shape, rng.uniform(*config.drift_frames))
    jitter = _joint_scales(rng, config.jitter, spread) * rng.standard_normal(kp.shape)
    speed = np.zeros_like(kp[..., :1])  # (T, 17, 1) pixels per frame
    if num_frames > 1:
        speed = np.linalg.norm(np.gradient(kp, axis=0), axis=-1)[..., None]
    fast = 1 + config.speed_gain * np.minimum(speed / size * 30.0, config.speed_cap)  # (T, 17, 1)
    out = kp + (bias + (drift + jitter) * fast) * size / np.sqrt(2)

    outliers = rng.random(kp.shape[:2]) < rng.uniform(*config.outlier_rate)
    out[outliers] += rng.normal(0, config.outlier_size, (outliers.sum(), 2)) * np.broadcast_to(
        size[..., 0], kp.shape[:2])[outliers][:, None]

    _glitch(out, size, rng, config)
    valid = np.ones(kp.shape[:2], bool)
    _swap_and_hide(out, valid, rng, config)
    for k in range(kp.shape[1]):
        for run in _runs(rng, num_frames, config.dropout_rate, config.dropout_frames):
            valid[run, k] = False
    for run in _runs(rng, num_frames, config.person_dropout_rate, config.dropout_frames):
        valid[run] = False
    return fill_gaps(out, valid).astype(np.float32)
