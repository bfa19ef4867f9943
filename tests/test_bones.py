"""Rigid bones (pipeline.motion.bones): one length per bone for the clip, symmetric, directions kept."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation.scores import bone_length_cv, bone_lengths, limb_length_ratios
from pipeline.motion.bones import rigid_bones, symmetric_bone_lengths
from pipeline.skeleton import H36M


def wobbly_poses(frames: int = 50, seed: int = 0) -> np.ndarray:
    """A standing skeleton whose bones stretch by up to +-20 % per frame, the left forearm 40 % short."""
    rng = np.random.default_rng(seed)
    rest = np.array([[0, 0, 0], [-.13, 0, 0], [-.13, .45, 0], [-.13, .88, 0], [.13, 0, 0], [.13, .45, 0],
                     [.13, .88, 0], [0, -.23, 0], [0, -.48, 0], [0, -.58, 0], [0, -.7, 0], [.18, -.45, 0],
                     [.18, -.18, 0], [.18, .07, 0], [-.18, -.45, 0], [-.18, -.18, 0], [-.18, .07, 0]])
    poses = np.zeros((frames, 17, 3))
    for joint, parent in enumerate(H36M.parents):
        if parent < 0:
            continue
        bone = rest[joint] - rest[parent] + rng.normal(0, 0.03, (frames, 3))
        stretch = rng.uniform(0.8, 1.2, (frames, 1)) * (0.6 if H36M.joints[joint] == "left_wrist" else 1.0)
        poses[:, joint] = poses[:, parent] + bone * stretch
    return poses


def test_rigid_bones_have_one_length_per_bone_equal_left_and_right():
    rigid = rigid_bones(wobbly_poses())
    assert rigid.dtype == np.float32 and rigid.shape == (50, 17, 3)
    assert bone_length_cv(rigid) < 1e-5
    assert max(limb_length_ratios(rigid).values()) < 1 + 1e-5
    assert max(limb_length_ratios(wobbly_poses()).values()) > 1.3  # the input was lopsided


def test_rigid_bones_keep_every_bone_direction_and_the_root():
    poses = wobbly_poses()
    rigid = rigid_bones(poses)
    parents, children = np.array(H36M.bones).T
    before = poses[:, children] - poses[:, parents]
    after = rigid[:, children] - rigid[:, parents]
    cosine = (before * after).sum(-1) / np.linalg.norm(before, axis=-1) / np.linalg.norm(after, axis=-1)
    assert cosine.min() > 1 - 1e-6
    np.testing.assert_array_equal(rigid[:, 0], poses[:, 0].astype(np.float32))


def test_bone_lengths_are_medians_over_the_given_frames_averaged_with_the_mirror_bone():
    poses = wobbly_poses()
    measured = bone_lengths(poses[:20])  # (T, 16) in H36M.bones order
    lengths = symmetric_bone_lengths(poses, frames=np.arange(20))
    medians = dict(zip([child for _, child in H36M.bones], np.median(measured, axis=0), strict=True))
    knee_l, knee_r = H36M.index("left_knee"), H36M.index("right_knee")
    assert lengths[knee_l] == pytest.approx((medians[knee_l] + medians[knee_r]) / 2)
    assert lengths[H36M.index("spine")] == pytest.approx(medians[H36M.index("spine")])
    assert lengths[0] == 0


def test_rigid_bones_refuse_wrong_shapes_and_no_frames():
    with pytest.raises(ValueError, match="poses must be"):
        rigid_bones(np.zeros((5, 16, 3)))
    with pytest.raises(ValueError, match="no frames"):
        rigid_bones(wobbly_poses(), frames=np.array([], int))
