"""Rigid bones: one length per bone for the whole clip, the same on the left and the right.

Why: a lifter predicts every frame from its window alone, so nothing ties a bone's length in one frame to the next,
and nothing ties the left forearm to the right one. On real footage (issue 9, `python -m pipeline.evaluation
multiview`) the default lifter's bones vary by 8-10 % over time and a forearm can come out 1.4x its mirror image.
A person's bones do not change length and are very nearly symmetric, and every exporter downstream (the BVH rig, a
retargeted character) needs one length per bone anyway.

How (`rigid_bones`), per person and clip, in the lifter's root-relative camera space:
1. Each bone's length is its median over the clip's frames (those where the person was detected), averaged with its
   mirror bone's.
2. Every frame is rebuilt from the pelvis outwards along the skeleton tree: each child joint is placed at its bone's
   length from its (already rebuilt) parent, along the lifter's bone direction. Directions are what the lifter gets
   right more often than lengths, and they are all a BVH rig keeps.

Measured on the shared 4-camera recording (`pipeline.evaluation multiview`, default lifter v2, mean of 4 views,
free -> rigid): limb P-MPJPE 113.2 -> 112.7 mm, bone CV 0.086 -> 0, worst left/right ratio 1.44 -> 1.00, jitter
12.3 -> 11.9 m/s^2 (with the calibration as read: 120.2 -> 119.8 mm). Keeping instead each bone's offset across the
image and solving its depth for the length (the classic single-view reconstruction from known bone lengths) scored
worse (calibration as read: 121.7-122.3 mm, jitter 31-34 m/s^2), because the sign of a short bone's depth is a coin
toss from frame to frame.
"""
from __future__ import annotations

import numpy as np

from pipeline.skeleton import H36M, Skeleton

BONE_MODES = ("rigid", "free")  # free: the lifter's output as it is


def symmetric_bone_lengths(poses: np.ndarray, skeleton: Skeleton = H36M, frames: np.ndarray | None = None
                           ) -> np.ndarray:
    """(J,) length of the bone ending at each joint (0 at the root): the median over `frames` (default all) of the
    (T, J, 3) poses, averaged with the mirror bone's."""
    poses = np.asarray(poses, np.float64)
    picked = poses if frames is None else poses[frames]
    if len(picked) == 0:
        raise ValueError("no frames to measure the bone lengths on")
    parents = np.array(skeleton.parents)
    child = np.flatnonzero(parents >= 0)
    lengths = np.zeros(skeleton.num_joints)
    lengths[child] = np.median(np.linalg.norm(picked[:, child] - picked[:, parents[child]], axis=-1), axis=0)
    mirror = skeleton.flip_permutation
    return (lengths + lengths[mirror]) / 2


def _along(offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(T, 3) offsets rescaled to the (T,) lengths, keeping their directions (a zero offset stays zero)."""
    norms = np.linalg.norm(offsets, axis=-1, keepdims=True)
    return offsets * (lengths[:, None] / np.maximum(norms, 1e-9))


def rigid_bones(poses: np.ndarray, skeleton: Skeleton = H36M, frames: np.ndarray | None = None) -> np.ndarray:
    """(T, J, 3) root-relative camera-space poses -> the same motion with constant, left/right-symmetric bone lengths
    measured on `frames` (default all; `symmetric_bone_lengths`). float32."""
    poses = np.asarray(poses, np.float64)
    if poses.ndim != 3 or poses.shape[1:] != (skeleton.num_joints, 3):
        raise ValueError(f"poses must be (T, {skeleton.num_joints}, 3), got {poses.shape}")
    lengths = symmetric_bone_lengths(poses, skeleton, frames)
    out = np.zeros_like(poses)
    out[:, skeleton.root] = poses[:, skeleton.root]
    for joint in _outwards(skeleton):
        parent = skeleton.parents[joint]
        out[:, joint] = out[:, parent] + _along(poses[:, joint] - poses[:, parent], np.full(len(poses), lengths[joint]))
    return out.astype(np.float32)


def _outwards(skeleton: Skeleton) -> list[int]:
    """The non-root joints ordered so that every parent comes before its children."""
    order, placed = [], {skeleton.root}
    while len(placed) < skeleton.num_joints:
        for joint, parent in enumerate(skeleton.parents):
            if joint not in placed and parent in placed:
                order.append(joint)
                placed.add(joint)
    return order
