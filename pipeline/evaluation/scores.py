"""Scores of a 3D pose sequence against a reference, and of its plausibility on its own: arrays in, numbers out.

A monocular lifter's output has its own scale and no absolute position, so the accuracy scores align each frame
(Procrustes: scale, rotation, translation) before measuring, as the released P-MPJPE does. The limb joints (elbows,
wrists, knees, ankles) are reported apart: they are what a viewer judges, and they are points the 2D detector sees
directly, whereas the reference's torso/head joints are synthesised from face/shoulder/hip points. Plausibility
scores need no reference: a real body keeps its bone lengths and is left/right symmetric, and moves smoothly.
"""
from __future__ import annotations

import numpy as np

from pipeline.skeleton import H36M
from pipeline.training.metrics import procrustes_align

LIMB_JOINTS = tuple(H36M.index(n) for n in ("left_elbow", "right_elbow", "left_wrist", "right_wrist",
                                            "left_knee", "right_knee", "left_ankle", "right_ankle"))
# (name, (left parent, left child), (right parent, right child)) of the four limb segments compared left to right.
LIMB_PAIRS = tuple(
    (limb, (H36M.index(f"left_{a}"), H36M.index(f"left_{b}")), (H36M.index(f"right_{a}"), H36M.index(f"right_{b}")))
    for limb, a, b in (("upper_arm", "shoulder", "elbow"), ("forearm", "elbow", "wrist"),
                       ("thigh", "hip", "knee"), ("shin", "knee", "ankle"))
)


def _poses(poses: np.ndarray) -> np.ndarray:
    poses = np.asarray(poses, np.float64)
    if poses.ndim != 3 or poses.shape[1:] != (H36M.num_joints, 3):
        raise ValueError(f"poses must be (T, {H36M.num_joints}, 3) Human3.6M joints, got {poses.shape}")
    return poses


MIN_TRUSTED_JOINTS = 4  # fewer trusted joints in a frame fix no orientation worth scoring: the frame is left out


def aligned_joint_errors(predicted: np.ndarray, target: np.ndarray, trusted: np.ndarray | None = None) -> np.ndarray:
    """(T, J) distance of every joint after the per-frame Procrustes alignment of `predicted` onto `target`.

    trusted (T, J) bool: the target joints that are known well enough to score (e.g. triangulated from 3 or more
    views): each frame is aligned on those alone, and the others, and every joint of a frame with fewer than
    MIN_TRUSTED_JOINTS trusted ones, are NaN. None: every joint, aligned on all of them (the released P-MPJPE)."""
    predicted, target = _poses(predicted), _poses(target)
    if predicted.shape != target.shape:
        raise ValueError(f"predicted {predicted.shape} and target {target.shape} differ in shape")
    if trusted is None:
        return np.linalg.norm(procrustes_align(predicted, target) - target, axis=-1)
    trusted = np.asarray(trusted, bool)
    if trusted.shape != target.shape[:2]:
        raise ValueError(f"trusted must be (T, J) = {target.shape[:2]}, got {trusted.shape}")
    trusted = trusted & (trusted.sum(axis=1, keepdims=True) >= MIN_TRUSTED_JOINTS)
    errors = np.linalg.norm(procrustes_align(predicted, target, weights=trusted) - target, axis=-1)
    return np.where(trusted, errors, np.nan)


def joint_errors(predicted: np.ndarray, target: np.ndarray, trusted: np.ndarray | None = None) -> np.ndarray:
    """(T, J) distance of every joint without alignment (both root-relative in the same camera space); NaN where
    `trusted` (T, J) is False."""
    errors = np.linalg.norm(_poses(predicted) - _poses(target), axis=-1)
    return errors if trusted is None else np.where(trusted, errors, np.nan)


def bone_lengths(poses: np.ndarray) -> np.ndarray:
    """(T, B) lengths of the Human3.6M bones (parent -> child, in `H36M.bones` order)."""
    poses = _poses(poses)
    parents, children = np.array(H36M.bones).T
    return np.linalg.norm(poses[:, children] - poses[:, parents], axis=-1)


def bone_length_cv(poses: np.ndarray) -> float:
    """Mean over bones of std/mean of the bone's length over time (0 for a rigid skeleton)."""
    lengths = bone_lengths(poses)
    if len(lengths) < 2:
        raise ValueError("the bone-length variation needs at least 2 frames")
    return float(np.mean(lengths.std(axis=0) / np.maximum(lengths.mean(axis=0), 1e-9)))


def limb_length_ratios(poses: np.ndarray) -> dict[str, float]:
    """Per limb, max(left/right, right/left) of the mean segment lengths over time (1 = symmetric)."""
    poses = _poses(poses)
    out = {}
    for limb, (lp, lc), (rp, rc) in LIMB_PAIRS:
        left = np.linalg.norm(poses[:, lc] - poses[:, lp], axis=-1).mean()
        right = np.linalg.norm(poses[:, rc] - poses[:, rp], axis=-1).mean()
        out[limb] = float(max(left, right) / max(min(left, right), 1e-9))
    return out


def acceleration(poses: np.ndarray, fps: float, frames: np.ndarray | None = None) -> np.ndarray:
    """(N, J) acceleration magnitudes (units/s^2) from second differences at every frame whose two neighbours are
    also in `frames` (the frame numbers of the rows; default 0..T-1, so gaps never count as motion)."""
    poses = _poses(poses)
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    frames = np.arange(len(poses)) if frames is None else np.asarray(frames)
    if len(frames) != len(poses):
        raise ValueError(f"{len(frames)} frame numbers for {len(poses)} poses")
    if len(poses) < 3:
        return np.zeros((0, poses.shape[1]))
    consecutive = (frames[1:-1] - frames[:-2] == 1) & (frames[2:] - frames[1:-1] == 1)
    second = poses[2:] - 2 * poses[1:-1] + poses[:-2]
    return np.linalg.norm(second[consecutive], axis=-1) * fps**2


def root_relative(poses: np.ndarray) -> np.ndarray:
    """Poses with joint 0 (the pelvis) moved to the origin."""
    poses = _poses(poses)
    return poses - poses[:, :1]
