"""Triangulate 2D keypoints seen by calibrated cameras into world points: the 3D reference for real footage.

Why this way: a linear (DLT) solve per joint per frame, on undistorted normalised image coordinates, with every
view's two equations weighted by its keypoint confidence (as pose2sim does), is fast enough to run on every frame
of every joint at once (one batched SVD) and is exact for noise-free points. A single wrong view (a left/right
swap, an occluded joint guessed by the detector) can pull the point far away, so views are dropped one at a time:
while the worst used view reprojects further than `max_reprojection_px` from its keypoint and at least
`min_views` views would remain, that view is removed and the point solved again.

Dropping views cannot fix a detector that swaps a person's left and right in one view (it does, for a person facing
the camera whom it takes to face away): with only two or three views seeing a joint there is no majority, and the
rejection may keep the wrong one. So first (`resolve_swaps`, pose2sim's `handle_LR_swap`) each left/right pair is
solved again with each single view's pair exchanged, and the exchange is kept where it cuts the pair's reprojection
error to under `swap_gain` of the error as detected. On the shared 4-camera recording it un-swaps 70 of cam02's
pairs of the man in 16 of 100 frames (0-11 and 81-86, where he faces that camera and the detector labels him as seen
from behind; checked by eye), 8 in the other views, none of the woman's; the man's reference then agrees with itself
better (disjoint halves of the views 169 mm apart on the limbs instead of 212) and with the lifter (112 mm instead of
146).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from pipeline.evaluation.calibration import CameraCalibration


@dataclass(frozen=True)
class TriangulationConfig:
    min_score: float = 0.3  # a keypoint below this confidence is not used (the detector's guess for a hidden joint)
    max_reprojection_px: float = 15.0  # views reprojecting further than this are dropped, worst first
    min_views: int = 2  # a point needs this many views; rejection never goes below it
    fix_swaps: bool = True  # un-swap a view's left/right pair where that fits the other views far better
    swap_gain: float = 0.7  # ... where it cuts the pair's mean reprojection error to under this fraction

    def __post_init__(self) -> None:
        if self.min_views < 2:
            raise ValueError(f"min_views must be at least 2 (one view cannot triangulate), got {self.min_views}")
        if not 0 < self.swap_gain <= 1:
            raise ValueError(f"swap_gain must be in (0, 1], got {self.swap_gain}")
        if not self.max_reprojection_px > 0:
            raise ValueError(f"max_reprojection_px must be positive, got {self.max_reprojection_px}")


@dataclass
class Triangulation:
    """Triangulated points of one set of keypoints (any leading shape S, e.g. (T, J)), V views."""

    points: np.ndarray  # S + (3,) world metres; NaN where fewer than min_views usable views
    reprojection_px: np.ndarray  # (V,) + S: distance of each view's keypoint to the reprojected point (NaN: none)
    used: np.ndarray  # (V,) + S bool: the views the point was solved from

    @property
    def num_views(self) -> np.ndarray:
        """S: how many views each point was solved from."""
        return self.used.sum(axis=0)

    def mean_reprojection_px(self, view: int | None = None) -> float:
        """Mean reprojection error (pixels) over the used views (or one view), NaN when nothing was used."""
        used = self.used if view is None else self.used[view]
        errors = self.reprojection_px if view is None else self.reprojection_px[view]
        return float(np.mean(errors[used])) if used.any() else float("nan")


def dlt(extrinsics: np.ndarray, normalised: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted DLT of N points seen in V views.

    extrinsics (V, 3, 4) world -> camera [R | t]; normalised (V, N, 2) undistorted image coordinates (z = 1 plane);
    weights (V, N) >= 0, 0 where a view does not see the point. Returns (N, 3); NaN where fewer than 2 views have
    weight > 0 or the solution lies at infinity.
    """
    extrinsics = np.asarray(extrinsics, np.float64)
    xy = np.nan_to_num(np.asarray(normalised, np.float64))
    w = np.where(np.isfinite(normalised).all(axis=-1), np.asarray(weights, np.float64), 0.0)
    # Rows x * P3 - P1 and y * P3 - P2 per view: (N, V, 2, 4) -> (N, 2V, 4).
    rows = xy[..., :, None] * extrinsics[:, None, 2:3, :] - extrinsics[:, None, :2, :]
    a = (rows * w[..., None, None]).transpose(1, 0, 2, 3).reshape(xy.shape[1], -1, 4)
    _, _, vt = np.linalg.svd(a)
    homogeneous = vt[:, -1, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        points = homogeneous[:, :3] / homogeneous[:, 3:]
    enough = (w > 0).sum(axis=0) >= 2
    ok = enough & (np.abs(homogeneous[:, 3]) > 1e-12)
    points[~ok] = np.nan
    return points


def reprojection_errors(cameras: list[CameraCalibration], points: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """Pixel distance between each view's keypoints (V, N, 2) and the points (N, 3) projected into it: (V, N)."""
    return np.stack([np.linalg.norm(cam.project(points) - kp, axis=-1)
                     for cam, kp in zip(cameras, keypoints, strict=True)])


def _check_inputs(cameras: list[CameraCalibration], keypoints: np.ndarray, scores: np.ndarray) -> None:
    if len(cameras) < 2:
        raise ValueError(f"triangulation needs at least 2 calibrated cameras, got {len(cameras)}")
    if keypoints.shape[0] != len(cameras) or keypoints.shape[-1] != 2:
        raise ValueError(f"keypoints must be (V={len(cameras)}, ..., 2) pixels, one row per camera; got "
                         f"{keypoints.shape}")
    if scores.shape != keypoints.shape[:-1]:
        raise ValueError(f"scores must be {keypoints.shape[:-1]} (one per keypoint), got {scores.shape}")


def _pair_costs(extrinsics: np.ndarray, normalised: np.ndarray, pixels: np.ndarray, weights: np.ndarray,
                cameras: list[CameraCalibration]) -> np.ndarray:
    """Mean reprojection error (px) over the used views of both joints of N pairs: normalised / pixels (V, N, 2, 2),
    weights (V, N, 2) -> (N,); inf where a joint has fewer than 2 views."""
    v, n = weights.shape[:2]
    points = dlt(extrinsics, normalised.reshape(v, 2 * n, 2), weights.reshape(v, 2 * n))
    errors = reprojection_errors(cameras, points, pixels.reshape(v, 2 * n, 2)).reshape(v, n, 2)
    used = weights > 0
    with np.errstate(invalid="ignore"):
        cost = np.where(used, errors, 0.0).sum(axis=(0, 2)) / used.sum(axis=(0, 2))
    return np.where(np.isfinite(cost), cost, np.inf)


def resolve_swaps(cameras: list[CameraCalibration], keypoints: np.ndarray, scores: np.ndarray,
                  pairs: list[tuple[int, int]], config: TriangulationConfig | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Un-swap left/right keypoints that one view has the wrong way round (module docstring).

    keypoints (V, T, J, 2) distorted pixels, scores (V, T, J), pairs [(left joint, right joint)]. A pair of a frame
    is decided only where 3 or more views see both of its joints (two views cannot say which one is wrong); each
    hypothesis (as detected, or one view's pair exchanged) is solved by the weighted DLT without rejection. Returns
    copies of keypoints and scores with the chosen exchanges made, and swapped (V, T, len(pairs)) bool.
    """
    config = config or TriangulationConfig()
    keypoints = np.array(keypoints, np.float64)
    scores = np.array(scores, np.float64)
    _check_inputs(cameras, keypoints, scores)
    if keypoints.ndim != 4:
        raise ValueError(f"keypoints must be (V, T, J, 2), got {keypoints.shape}")
    v, t = keypoints.shape[:2]
    swapped = np.zeros((v, t, len(pairs)), bool)
    extrinsics = np.stack([cam.extrinsic for cam in cameras])
    normalised = np.stack([cam.undistort(k.reshape(-1, 2)).reshape(k.shape) for cam, k in zip(cameras, keypoints,
                                                                                               strict=True)])
    usable = np.isfinite(normalised).all(axis=-1) & (scores >= config.min_score)
    weights = np.where(usable, scores, 0.0)
    for k, (left, right) in enumerate(pairs):
        sides = [left, right]
        seen = usable[:, :, sides].all(axis=-1)  # (V, T) both joints
        frames = np.flatnonzero(seen.sum(axis=0) >= 3)
        if len(frames) == 0:
            continue
        n, p, w = normalised[:, frames][:, :, sides], keypoints[:, frames][:, :, sides], weights[:, frames][:, :, sides]
        costs = [_pair_costs(extrinsics, n, p, w, cameras)]
        for view in range(v):
            n2, p2, w2 = n.copy(), p.copy(), w.copy()
            for array in (n2, p2, w2):
                array[view] = array[view][:, ::-1]  # this view's left and right exchanged
            cost = _pair_costs(extrinsics, n2, p2, w2, cameras)
            costs.append(np.where(seen[view, frames], cost, np.inf))
        costs = np.stack(costs)  # (1 + V, F)
        best = np.argmin(costs, axis=0)
        take = (best > 0) & (costs[best, np.arange(len(frames))] < config.swap_gain * costs[0])
        swapped[best[take] - 1, frames[take], k] = True
    for k, (left, right) in enumerate(pairs):
        at = np.nonzero(swapped[:, :, k])  # (views, frames)
        for array in (keypoints, scores):
            array[at + (left,)], array[at + (right,)] = array[at + (right,)], array[at + (left,)]  # copies on the right
    return keypoints, scores, swapped


def triangulate(cameras: list[CameraCalibration], keypoints: np.ndarray, scores: np.ndarray,
                config: TriangulationConfig | None = None) -> Triangulation:
    """Keypoints (V, ...S, 2) in distorted pixels of each camera's picture, scores (V, ...S) -> world points.

    A keypoint is used when it is finite and its score is at least `config.min_score`; its DLT rows are weighted by
    the score. Outlier views are dropped as described in the module docstring.
    """
    config = config or TriangulationConfig()
    keypoints = np.asarray(keypoints, np.float64)
    scores = np.asarray(scores, np.float64)
    _check_inputs(cameras, keypoints, scores)
    shape = keypoints.shape[1:-1]
    kp = keypoints.reshape(len(cameras), -1, 2)
    normalised = np.stack([cam.undistort(k) for cam, k in zip(cameras, kp, strict=True)])
    weights = np.where(np.isfinite(normalised).all(axis=-1) & (scores.reshape(len(cameras), -1) >= config.min_score),
                       scores.reshape(len(cameras), -1), 0.0)
    extrinsics = np.stack([cam.extrinsic for cam in cameras])
    points = dlt(extrinsics, normalised, weights)
    errors = reprojection_errors(cameras, points, kp)
    for _ in range(len(cameras)):
        used = weights > 0
        worst_error = np.where(used, np.nan_to_num(errors, nan=np.inf), -np.inf)
        worst = np.argmax(worst_error, axis=0)
        columns = np.arange(kp.shape[1])
        redo = (worst_error[worst, columns] > config.max_reprojection_px) & (used.sum(axis=0) > config.min_views)
        if not redo.any():
            break
        idx = np.flatnonzero(redo)
        weights[worst[idx], idx] = 0.0
        points[idx] = dlt(extrinsics, normalised[:, idx], weights[:, idx])
        errors[:, idx] = reprojection_errors(cameras, points[idx], kp[:, idx])
    used = (weights > 0) & np.isfinite(points).all(axis=-1)[None]
    return Triangulation(points=points.reshape(shape + (3,)), reprojection_px=errors.reshape((len(cameras),) + shape),
                         used=used.reshape((len(cameras),) + shape))


def smooth_points(points: np.ndarray, fps: float, cutoff_hz: float, median_frames: int = 5) -> np.ndarray:
    """Denoise trajectories (T, ..., 3) along time: a running median over `median_frames` (removes single-frame
    jumps when the set of views changes), then a Gaussian whose response falls to 1/sqrt(2) at `cutoff_hz`.

    NaN frames stay NaN and are left out of their neighbours' averages, so gaps are not bridged.
    """
    if not fps > 0 or not cutoff_hz > 0:
        raise ValueError(f"fps and cutoff_hz must be positive, got {fps} and {cutoff_hz}")
    x = np.asarray(points, np.float64)
    t = len(x)
    half = median_frames // 2
    padded = np.concatenate([np.full((half,) + x.shape[1:], np.nan), x, np.full((half,) + x.shape[1:], np.nan)])
    windows = np.stack([padded[i:i + t] for i in range(2 * half + 1)])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows stay NaN
        median = np.nanmedian(windows, axis=0)
    sigma = np.sqrt(np.log(2)) / (2 * np.pi * cutoff_hz) * fps  # frames
    radius = max(1, int(np.ceil(3 * sigma)))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    known = np.isfinite(median) & np.isfinite(x)
    values = np.where(known, median, 0.0)
    num = np.zeros_like(values)
    den = np.zeros_like(values)
    for k, w in zip(range(-radius, radius + 1), kernel, strict=True):
        lo, hi = max(0, -k), min(t, t - k)  # out[i] += w * in[i + k]
        num[lo:hi] += w * values[lo + k:hi + k]
        den[lo:hi] += w * known[lo + k:hi + k]
    out = np.where(known & (den > 0), num / np.where(den > 0, den, 1.0), np.nan)
    return out
