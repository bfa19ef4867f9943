"""Map mocap skeletons to Human3.6M-17 (the lifter's 3D target) and to COCO-17 (what a 2D detector reports).

Every mocap skeleton is described by a `Rig`: which of its joints play the roles of hips, knees, ..., the neck base
and the top of the neck, and its length unit. Everything a skeleton lacks (H36M's wide hip joints, the spine point,
nose-level neck joint and head top; COCO's face points and wide, low hips) is built from those roles with the fixed
offsets below, so the mapping is data and can be read and changed in one place.

World frames are Y up in metres. The head frame (up, forward, left) follows the head joint's rotation: its axes in the
joint's local frame are calibrated per clip as the average over frames of the body's up and forward directions, so
no skeleton-specific axis convention is hard-coded and head turns/tilts still move the face.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.skeleton import COCO, H36M


@dataclass(frozen=True)
class Rig:
    name: str
    unit_to_m: float  # metres per file unit
    roles: dict[str, str]  # role -> source joint name; roles: see ROLES
    spine_chain: tuple[str, ...]  # source joints from the pelvis up to (excluding) the neck base, for the spine point
    head_joint: str  # joint whose world rotation orients the face


ROLES = (
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "neck_base", "neck_top",
)

# Bandai-Namco-Research-Motiondataset 1/2 (BVH, cm). "Neck" sits between the shoulders; "Head" at the top of the neck.
BANDAI = Rig(
    name="bandai",
    unit_to_m=0.01,
    roles={
        "left_hip": "UpperLeg_L", "right_hip": "UpperLeg_R", "left_knee": "LowerLeg_L", "right_knee": "LowerLeg_R",
        "left_ankle": "Foot_L", "right_ankle": "Foot_R", "left_shoulder": "UpperArm_L", "right_shoulder": "UpperArm_R",
        "left_elbow": "LowerArm_L", "right_elbow": "LowerArm_R", "left_wrist": "Hand_L", "right_wrist": "Hand_R",
        "neck_base": "Neck", "neck_top": "Head",
    },
    spine_chain=("Spine", "Chest"),
    head_joint="Head",
)

# CMU ASF/AMC (positions are bone end points, already metres from pipeline.mocap.amc).
CMU_ASF = Rig(
    name="cmu_asf",
    unit_to_m=1.0,
    roles={
        "left_hip": "lhipjoint", "right_hip": "rhipjoint", "left_knee": "lfemur", "right_knee": "rfemur",
        "left_ankle": "ltibia", "right_ankle": "rtibia", "left_shoulder": "lclavicle", "right_shoulder": "rclavicle",
        "left_elbow": "lhumerus", "right_elbow": "rhumerus", "left_wrist": "lradius", "right_wrist": "rradius",
        "neck_base": "lowerneck", "neck_top": "upperneck",
    },
    spine_chain=("lowerback", "upperback", "thorax"),
    head_joint="head",
)

# CMU subject 131 BVH (joint positions at bone starts, ASF length units: 1/0.45 inch).
CMU_BVH = Rig(
    name="cmu_bvh",
    unit_to_m=0.0254 / 0.45,
    roles={
        "left_hip": "LeftHip", "right_hip": "RightHip", "left_knee": "LeftKnee", "right_knee": "RightKnee",
        "left_ankle": "LeftAnkle", "right_ankle": "RightAnkle", "left_shoulder": "LeftShoulder",
        "right_shoulder": "RightShoulder", "left_elbow": "LeftElbow", "right_elbow": "RightElbow",
        "left_wrist": "LeftWrist", "right_wrist": "RightWrist", "neck_base": "Neck", "neck_top": "Head",
    },
    spine_chain=("lowerback", "Chest", "Chest2"),
    head_joint="Head",
)


@dataclass(frozen=True)
class BodyModel:
    """Fixed offsets (metres) for what mocap skeletons lack. Head offsets are (up, forward, left) in the head frame
    from the top of the neck; hip offsets are fractions/metres along the pelvis' left-right axis and the body's up."""

    h36m_hip_half_width: float = 0.125  # H36M hip joints sit ~25 cm apart (its mean skeleton)
    # Where yolo11n-pose puts COCO points on real people (docs/real_footage_gap.md, triangulated from 4 views): hips
    # about as wide as H36M's hip joints (0.50-0.62 of the thigh; H36M 0.60), i.e. wider than the mocap rig's hip
    # joint centres but not 0.28 m apart as assumed before; shoulders about 15 % wider than the shoulder joints
    # (0.198 of stature vs 0.172 for our H36M targets).
    coco_hip_half_width: float = 0.115
    coco_hip_drop: float = 0.03  # a little lower than hip joint centres (not measurable on real footage here)
    coco_shoulder_out: float = 0.025  # COCO shoulders on the outside of the shoulder, per side
    spine_fraction: float = 0.48  # H36M spine: pelvis-spine 23 cm, spine-thorax 25 cm
    head_points: dict[str, tuple[float, float, float]] = field(default_factory=lambda: {
        "neck_nose": (0.03, 0.05, 0.0),  # H36M "neck/nose": ~11 cm above the thorax, in front of the neck
        "head": (0.135, 0.03, 0.0),  # H36M head: top of the head
        "nose": (0.01, 0.115, 0.0),
        "left_eye": (0.055, 0.095, 0.032),
        "right_eye": (0.055, 0.095, -0.032),
        "left_ear": (0.02, 0.005, 0.072),
        "right_ear": (0.02, 0.005, -0.072),
    })


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def _spine_point(pelvis: np.ndarray, chain: list[np.ndarray], thorax: np.ndarray, fraction: float) -> np.ndarray:
    """The point at `fraction` of the arc length of the polyline pelvis -> chain -> thorax, per frame."""
    pts = np.stack([pelvis, *chain, thorax], axis=1)  # (F, K, 3)
    seg = np.linalg.norm(np.diff(pts, axis=1), axis=-1)  # (F, K-1)
    cum = np.concatenate([np.zeros((pts.shape[0], 1)), np.cumsum(seg, axis=1)], axis=1)
    target = cum[:, -1:] * fraction
    k = np.clip((cum[:, 1:] < target).sum(axis=1), 0, seg.shape[1] - 1)  # segment holding the target
    rows = np.arange(pts.shape[0])
    t = (target[:, 0] - cum[rows, k]) / np.maximum(seg[rows, k], 1e-9)
    return pts[rows, k] + t[:, None] * (pts[rows, k + 1] - pts[rows, k])


def map_skeleton(positions: np.ndarray, rotations: np.ndarray, names: tuple[str, ...], rig: Rig,
                 body: BodyModel = BodyModel()) -> tuple[np.ndarray, np.ndarray]:
    """Mocap world positions (F, J, 3) in file units and world rotations (F, J, 3, 3) -> (H36M-17 (F, 17, 3),
    COCO-17 (F, 17, 3)), both in metres in the mocap world frame (Y up)."""
    missing = [n for n in [*rig.roles.values(), *rig.spine_chain, rig.head_joint] if n not in names]
    if missing:
        raise ValueError(f"skeleton lacks joints {missing} needed by rig {rig.name!r}; pick the right rig")
    pos = positions * rig.unit_to_m

    def p(role: str) -> np.ndarray:
        return pos[:, names.index(rig.roles[role])]

    hip_l, hip_r = p("left_hip"), p("right_hip")
    pelvis = (hip_l + hip_r) / 2
    thorax = p("neck_base")
    up = _unit(thorax - pelvis)
    left = _unit((hip_l - hip_r) + (p("left_shoulder") - p("right_shoulder")))
    left = _unit(left - (left * up).sum(-1, keepdims=True) * up)
    forward = np.cross(left, up)
    hip_axis = _unit(hip_l - hip_r)

    # Head frame: body up/forward averaged in the head joint's local frame, then rotated back per frame.
    head_rot = rotations[:, names.index(rig.head_joint)]
    up_local = _unit(np.einsum("fba,fb->a", head_rot, up))
    fwd_local = np.einsum("fba,fb->a", head_rot, forward)
    fwd_local = _unit(fwd_local - (fwd_local @ up_local) * up_local)
    head_up = head_rot @ up_local
    head_fwd = head_rot @ fwd_local
    head_left = np.cross(head_up, head_fwd)
    anchor = p("neck_top")

    def head_point(name: str) -> np.ndarray:
        du, df, dl = body.head_points[name]
        return anchor + du * head_up + df * head_fwd + dl * head_left

    h36m = np.zeros((pos.shape[0], H36M.num_joints, 3))
    h = H36M.index
    h36m[:, h("pelvis")] = pelvis
    h36m[:, h("left_hip")] = pelvis + body.h36m_hip_half_width * hip_axis
    h36m[:, h("right_hip")] = pelvis - body.h36m_hip_half_width * hip_axis
    for name in ("left_knee", "right_knee", "left_ankle", "right_ankle", "left_shoulder", "right_shoulder",
                 "left_elbow", "right_elbow", "left_wrist", "right_wrist"):
        h36m[:, h(name)] = p(name)
    chain = [pos[:, names.index(n)] for n in rig.spine_chain]
    h36m[:, h("spine")] = _spine_point(pelvis, chain, thorax, body.spine_fraction)
    h36m[:, h("thorax")] = thorax
    h36m[:, h("neck_nose")] = head_point("neck_nose")
    h36m[:, h("head")] = head_point("head")

    coco = np.zeros((pos.shape[0], COCO.num_joints, 3))
    c = COCO.index
    for name in ("nose", "left_eye", "right_eye", "left_ear", "right_ear"):
        coco[:, c(name)] = head_point(name)
    for name in ("left_elbow", "right_elbow", "left_wrist", "right_wrist",
                 "left_knee", "right_knee", "left_ankle", "right_ankle"):
        coco[:, c(name)] = p(name)
    coco[:, c("left_shoulder")] = p("left_shoulder") + body.coco_shoulder_out * left
    coco[:, c("right_shoulder")] = p("right_shoulder") - body.coco_shoulder_out * left
    coco[:, c("left_hip")] = pelvis + body.coco_hip_half_width * hip_axis - body.coco_hip_drop * up
    coco[:, c("right_hip")] = pelvis - body.coco_hip_half_width * hip_axis - body.coco_hip_drop * up
    return h36m, coco


def body_forward(h36m: np.ndarray) -> np.ndarray:
    """(F, 3) unit facing direction of H36M-17 poses in a Y-up world (left x up, as a right-handed frame needs)."""
    h = H36M.index
    left = (h36m[:, h("left_hip")] - h36m[:, h("right_hip")]) + (
        h36m[:, h("left_shoulder")] - h36m[:, h("right_shoulder")])
    up = h36m[:, h("thorax")] - h36m[:, h("pelvis")]
    return _unit(np.cross(left, up))


def perturb_landmarks(coco: np.ndarray, h36m: np.ndarray, rng: np.random.Generator, std_m: float) -> np.ndarray:
    """COCO-17 points (F, 17, 3) moved by one fixed random offset per keypoint (std `std_m` metres per axis) in the
    body's own frame (left, up, forward from the H36M-17 poses (F, 17, 3)): where a detector puts a landmark on this
    person (clothing, build, the annotators' habits) differs from our fixed surface offsets, consistently over time
    and over views, unlike image-space noise."""
    if std_m <= 0:
        return coco
    h = H36M.index
    up = _unit(h36m[:, h("thorax")] - h36m[:, h("pelvis")])
    left = _unit((h36m[:, h("left_hip")] - h36m[:, h("right_hip")]) + (
        h36m[:, h("left_shoulder")] - h36m[:, h("right_shoulder")]))
    left = _unit(left - (left * up).sum(-1, keepdims=True) * up)
    forward = np.cross(left, up)
    offsets = rng.normal(0, std_m, (COCO.num_joints, 3))  # (left, up, forward) per keypoint
    return coco + np.einsum("kc,fcd->fkd", offsets, np.stack([left, up, forward], axis=1))
