"""Skeleton definitions as data: joint names, parents and left/right lists.

Every other module indexes joints through these objects; no file hard-codes joint indices again.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Skeleton:
    name: str
    joints: tuple[str, ...]
    parents: tuple[int, ...]  # -1 for the root
    left: tuple[int, ...]  # joints on the person's left side
    right: tuple[int, ...]  # their mirror images, in the same order as `left`

    def __post_init__(self) -> None:
        n = len(self.joints)
        if len(self.parents) != n or len(self.left) != len(self.right):
            raise ValueError(f"inconsistent skeleton {self.name!r}")

    @property
    def num_joints(self) -> int:
        return len(self.joints)

    def index(self, joint: str) -> int:
        return self.joints.index(joint)

    @property
    def bones(self) -> list[tuple[int, int]]:
        """(parent, child) pairs, in joint order."""
        return [(p, j) for j, p in enumerate(self.parents) if p >= 0]

    def side(self, joint: int) -> str:
        """'left', 'right' or 'center'."""
        if joint in self.left:
            return "left"
        if joint in self.right:
            return "right"
        return "center"

    def bone_side(self, parent: int, child: int) -> str:
        """A bone takes the side of its child, unless the child is central (e.g. the neck)."""
        return self.side(child)

    @property
    def root(self) -> int:
        """The joint without a parent (the pelvis of the lifter skeletons)."""
        return self.parents.index(-1)

    @property
    def flip_permutation(self) -> np.ndarray:
        """Joint order of the mirror image: index j of the flipped pose takes joint perm[j]."""
        perm = np.arange(self.num_joints)
        perm[list(self.left)] = self.right
        perm[list(self.right)] = self.left
        return perm


# Human3.6M-17 in the order of VideoPose3D / PoseFormerV2 (the lifter's input and output order).
H36M = Skeleton(
    name="h36m17",
    joints=(
        "pelvis", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
        "spine", "thorax", "neck_nose", "head",
        "left_shoulder", "left_elbow", "left_wrist", "right_shoulder", "right_elbow", "right_wrist",
    ),
    parents=(-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15),
    left=(4, 5, 6, 11, 12, 13),
    right=(1, 2, 3, 14, 15, 16),
)

# MPI-INF-3DHP's "relevant" 17 joints (MATLAB `mpii_get_joints('relevant')`), the order of the PoseFormerV2 3DHP
# release (`no_refine_39_2758.pth`) and of the P-STMO data files; the pelvis (14) is the root. Beware the names:
# 3DHP's `head` is the point between neck and head top, i.e. Human3.6M's `neck_nose`, and 3DHP's `head_top` is
# Human3.6M's `head` (see MPI_INF_3DHP_FROM_H36M).
MPI_INF_3DHP = Skeleton(
    name="mpi_inf_3dhp17",
    joints=(
        "head_top", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
        "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
        "pelvis", "spine", "head",
    ),
    parents=(1, 15, 1, 2, 3, 1, 5, 6, 14, 8, 9, 14, 11, 12, -1, 14, 1),
    left=(5, 6, 7, 11, 12, 13),
    right=(2, 3, 4, 8, 9, 10),
)

# The Human3.6M-17 joint of the same meaning as each MPI-INF-3DHP joint, in 3DHP order: 3DHP joint i is
# H36M joint MPI_INF_3DHP_FROM_H36M[i] (a permutation; the mapping cross-dataset evaluations use).
MPI_INF_3DHP_FROM_H36M = (10, 8, 14, 15, 16, 11, 12, 13, 1, 2, 3, 4, 5, 6, 0, 7, 9)


def h36m_to_mpi_inf_3dhp(poses: np.ndarray) -> np.ndarray:
    """Human3.6M-17 joints (..., 17, C) -> the same joints in MPI-INF-3DHP order (a new array)."""
    poses = np.asarray(poses)
    if poses.ndim < 2 or poses.shape[-2] != H36M.num_joints:
        raise ValueError(f"expected Human3.6M poses of shape (..., 17, C), got {poses.shape}")
    return poses[..., MPI_INF_3DHP_FROM_H36M, :]


def mpi_inf_3dhp_to_h36m(poses: np.ndarray) -> np.ndarray:
    """MPI-INF-3DHP joints (..., 17, C) -> the same joints in Human3.6M-17 order (a new array)."""
    poses = np.asarray(poses)
    if poses.ndim < 2 or poses.shape[-2] != MPI_INF_3DHP.num_joints:
        raise ValueError(f"expected MPI-INF-3DHP poses of shape (..., 17, C), got {poses.shape}")
    return poses[..., np.argsort(MPI_INF_3DHP_FROM_H36M), :]


# The skeletons a lifter checkpoint can be trained on, by the name checkpoints and `load_lifter` use.
LIFTER_SKELETONS = {"h36m": H36M, "mpi_inf_3dhp": MPI_INF_3DHP}

# COCO-17 as YOLO-pose and HRNet output it. It is a tree for drawing only: the face hangs off the nose and the
# nose off no joint, the arms off the shoulders, the legs off the hips (COCO has no pelvis; the right hip is the root).
COCO = Skeleton(
    name="coco17",
    joints=(
        "nose", "left_eye", "right_eye", "left_ear", "right_ear",
        "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
        "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    ),
    parents=(-1, 0, 0, 1, 2, 11, 12, 5, 6, 7, 8, 12, -1, 11, 12, 13, 14),
    left=(1, 3, 5, 7, 9, 11, 13, 15),
    right=(2, 4, 6, 8, 10, 12, 14, 16),
)


# Limb joints that both skeletons have under the same name; the lifter's remaining joints are synthesised.
_SHARED_LIMB_JOINTS = tuple(name for name in H36M.joints if name in COCO.joints)


def coco_to_h36m(keypoints: np.ndarray, scores: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Map COCO-17 keypoints (..., 17, 2) in pixels to Human3.6M-17, with the released PoseFormerV2 demo's formulas.

    The demo (from GAST-Net) synthesises the joints COCO lacks from the face, shoulder and hip points: pelvis = mid-hip,
    thorax = mid-shoulder moved a third of the way to the nose and then lifted by 2/3 of the eye-nose height,
    spine = mid-torso pushed out sideways from the pelvis-thorax line, head = mean of eyes and ears in x and
    "eyes minus nose" in y, neck/nose = nose pulled a quarter of the way towards the mid-shoulder point. The lifter was
    trained with inputs mapped this way, so these formulas are kept as they are, odd as some are.
    Scores (..., 17) map the same way: synthesised joints get the mean score of the points they come from.
    """
    kp = np.asarray(keypoints, dtype=np.float32)
    if kp.shape[-2:] != (COCO.num_joints, 2):
        raise ValueError(f"expected COCO keypoints of shape (..., 17, 2), got {kp.shape}")
    j = COCO.index
    nose, eyes = kp[..., j("nose"), :], kp[..., [j("left_eye"), j("right_eye")], :]
    face = kp[..., [j("left_eye"), j("right_eye"), j("left_ear"), j("right_ear")], :]
    shoulders = kp[..., [j("left_shoulder"), j("right_shoulder")], :]
    hips = kp[..., [j("left_hip"), j("right_hip")], :]
    mid_shoulder = shoulders.mean(axis=-2)

    out = np.zeros_like(kp)
    h = H36M.index
    for name in _SHARED_LIMB_JOINTS:
        out[..., h(name), :] = kp[..., j(name), :]
    out[..., h("head"), 0] = face[..., 0].mean(axis=-1)
    out[..., h("head"), 1] = eyes[..., 1].sum(axis=-1) - nose[..., 1]
    out[..., h("pelvis"), :] = hips.mean(axis=-2)
    out[..., h("spine"), :] = np.concatenate([shoulders, hips], axis=-2).mean(axis=-2)
    thorax = mid_shoulder + (nose - mid_shoulder) / 3
    thorax[..., 1] -= (eyes[..., 1].mean(axis=-1) - nose[..., 1]) * 2 / 3
    out[..., h("thorax"), :] = thorax
    out[..., h("neck_nose"), :] = nose - (nose - mid_shoulder) / 4
    spine_x = out[..., h("spine"), 0]
    out[..., h("spine"), 0] = spine_x + 2 * (spine_x - (out[..., h("pelvis"), 0] + thorax[..., 0]) / 2)

    if scores is None:
        return out, None
    sc = np.asarray(scores, dtype=np.float32)
    out_scores = np.zeros_like(sc)
    for name in _SHARED_LIMB_JOINTS:
        out_scores[..., h(name)] = sc[..., j(name)]
    out_scores[..., h("neck_nose")] = sc[..., j("nose")]
    out_scores[..., h("pelvis")] = sc[..., [j("left_hip"), j("right_hip")]].mean(axis=-1)
    out_scores[..., h("thorax")] = sc[..., [j("left_shoulder"), j("right_shoulder")]].mean(axis=-1)
    out_scores[..., h("spine")] = (out_scores[..., h("pelvis")] + out_scores[..., h("thorax")]) / 2
    out_scores[..., h("head")] = sc[..., [j("left_eye"), j("right_eye"), j("left_ear"), j("right_ear")]].mean(axis=-1)
    return out, out_scores
