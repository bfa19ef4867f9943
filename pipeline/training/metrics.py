"""Pose errors of the released evaluation (VideoPose3D / PoseFormerV2 `common/loss.py`), in the unit of the inputs.

All functions take predicted and target poses (..., J, 3) of the same shape and return the mean over every frame and
joint. `p_mpjpe` and `n_mpjpe` align each frame (the last two axes) separately; `mpjve` takes first differences along
axis 0, which must be time within one sequence.
"""
from __future__ import annotations

import numpy as np
import torch


def _check(predicted, target) -> None:
    if predicted.shape != target.shape or predicted.shape[-1] != 3:
        raise ValueError(f"predicted and target must both be (..., J, 3); got {tuple(predicted.shape)} and "
                         f"{tuple(target.shape)}")


def mpjpe(predicted: np.ndarray, target: np.ndarray) -> float:
    """Mean per-joint position error (protocol #1): mean Euclidean distance."""
    _check(predicted, target)
    return float(np.mean(np.linalg.norm(np.asarray(predicted, np.float64) - target, axis=-1)))


def mpjpe_torch(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MPJPE as a differentiable training loss."""
    _check(predicted, target)
    return torch.mean(torch.norm(predicted - target, dim=-1))


def procrustes_align(predicted: np.ndarray, target: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """`predicted` after the per-frame similarity transform (scale, rotation, translation) that best fits `target`.

    Orthogonal Procrustes with reflections excluded, as in the released `p_mpjpe`. `weights` (..., J), e.g. 0/1 for
    the joints to fit on: the transform fits those joints only (weighted means and sums) and moves every joint; a
    frame whose weights are all 0 has no transform and comes back NaN. None: every joint counts the same, as
    released.
    """
    _check(predicted, target)
    shape = predicted.shape
    pred = np.asarray(predicted, np.float64).reshape(-1, shape[-2], 3)
    tgt = np.asarray(target, np.float64).reshape(-1, shape[-2], 3)
    if weights is None:
        w = np.ones(pred.shape[:2] + (1,))
    else:
        w = np.broadcast_to(np.asarray(weights, np.float64), shape[:-1]).reshape(-1, shape[-2], 1)
        if (w < 0).any():
            raise ValueError("Procrustes weights must not be negative")
    total = np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
    mu_t = (w * tgt).sum(axis=1, keepdims=True) / total
    mu_p = (w * pred).sum(axis=1, keepdims=True) / total
    root_w = np.sqrt(w)
    t0, p0 = (tgt - mu_t) * root_w, (pred - mu_p) * root_w
    norm_t = np.sqrt(np.sum(t0**2, axis=(1, 2), keepdims=True))
    norm_p = np.sqrt(np.sum(p0**2, axis=(1, 2), keepdims=True))
    # A degenerate pose (all joints at one point) has no orientation; keep it where it is instead of dividing by 0.
    norm_t = np.where(norm_t > 0, norm_t, 1.0)
    norm_p = np.where(norm_p > 0, norm_p, 1.0)
    t0, p0 = t0 / norm_t, p0 / norm_p
    u, s, vt = np.linalg.svd(np.matmul(t0.transpose(0, 2, 1), p0))
    v = vt.transpose(0, 2, 1)
    sign = np.sign(np.linalg.det(np.matmul(v, u.transpose(0, 2, 1))))
    sign = np.where(sign == 0, 1.0, sign)
    v[:, :, -1] *= sign[:, None]
    s[:, -1] *= sign
    rotation = np.matmul(v, u.transpose(0, 2, 1))
    scale = s.sum(axis=1)[:, None, None] * norm_t / norm_p
    translation = mu_t - scale * np.matmul(mu_p, rotation)
    aligned = scale * np.matmul(pred, rotation) + translation
    if weights is not None:
        aligned[w.sum(axis=(1, 2)) == 0] = np.nan
    return aligned.reshape(shape)


def p_mpjpe(predicted: np.ndarray, target: np.ndarray) -> float:
    """MPJPE after per-frame Procrustes alignment (protocol #2)."""
    return mpjpe(procrustes_align(predicted, target), target)


def n_mpjpe(predicted: np.ndarray, target: np.ndarray) -> float:
    """MPJPE after the per-frame least-squares scale of the prediction (protocol #3)."""
    _check(predicted, target)
    pred = np.asarray(predicted, np.float64)
    numerator = np.sum(target * pred, axis=(-1, -2), keepdims=True)
    denominator = np.sum(pred**2, axis=(-1, -2), keepdims=True)
    scale = numerator / np.where(denominator > 0, denominator, 1.0)
    return mpjpe(scale * pred, target)


def mpjve(predicted: np.ndarray, target: np.ndarray) -> float:
    """Mean per-joint velocity error: MPJPE of the first differences along axis 0 (time, one sequence)."""
    _check(predicted, target)
    if len(predicted) < 2:
        raise ValueError("MPJVE needs at least two frames")
    return mpjpe(np.diff(np.asarray(predicted, np.float64), axis=0), np.diff(np.asarray(target, np.float64), axis=0))


def sequence_error_sums(predicted: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Per-frame-weighted sums of the four metrics for one sequence (T, J, 3), to pool over sequences.

    The released evaluation weights every sequence's metrics by its frame count, MPJVE included.
    """
    n = len(predicted)
    out = {
        "frames": float(n),
        "mpjpe": mpjpe(predicted, target) * n,
        "p_mpjpe": p_mpjpe(predicted, target) * n,
        "n_mpjpe": n_mpjpe(predicted, target) * n,
    }
    out["mpjve"] = mpjve(predicted, target) * n if n >= 2 else 0.0
    return out


# ----------------------------------------------------------------------------------------------------------------------
# MPI-INF-3DHP: PCK and AUC (`3dhp_test/test_util/mpii_compute_3d_pck.m` of the released evaluation)

PCK_THRESHOLD_MM = 150.0
AUC_THRESHOLDS_MM = tuple(float(t) for t in range(0, 151, 5))  # 0, 5, ..., 150: 31 thresholds


def joint_errors(predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Euclidean distance of every joint (..., J), float64."""
    _check(predicted, target)
    return np.linalg.norm(np.asarray(predicted, np.float64) - np.asarray(target, np.float64), axis=-1)


def pck(errors: np.ndarray, threshold: float = PCK_THRESHOLD_MM) -> float:
    """Percentage of joint errors strictly below `threshold` (the MATLAB code's `<`)."""
    return float(100.0 * np.mean(np.asarray(errors) < threshold))


def auc(errors: np.ndarray, thresholds: tuple[float, ...] = AUC_THRESHOLDS_MM) -> float:
    """Area under the PCK curve as the released evaluation computes it: the mean of PCK over `thresholds`, in %.
    The t = 0 term is always 0, which is why 3DHP AUCs are lower than a continuous integral would give."""
    errors = np.asarray(errors)
    return float(np.mean([pck(errors, t) for t in thresholds]))
