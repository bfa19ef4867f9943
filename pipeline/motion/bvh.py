"""BVH export of lifted 3D joints, for Blender, Maya, MotionBuilder and other animation tools.

Input: (T, 17, 3) Human3.6M-17 joint positions in the demo's world view (metres, z up, x and y horizontal), with the
trajectory (`pipeline.motion.trajectory.world_view`) or pinned. Output: the text of a BVH file.

Axes and units of the file: Y up and centimetres, as Blender's, Maya's and MotionBuilder's BVH importers expect;
right-handed, BVH (X, Y, Z) = 100 * (x, z, -y) of the world view. Blender's default import (forward -Z, up Y) turns
this back into exactly the world view (Blender is Z up): file X -> Blender x, file -Z -> Blender y, file Y -> z.

Skeleton: one joint per Human3.6M joint, named as in `pipeline.skeleton.H36M`, in a T-pose rest pose (the character
faces +Z, its left is +X, legs along -Y, spine and head along +Y, arms along +X / -X); offsets are the clip's median
bone lengths. Each bone's direction is carried by the rotation of the joint at its start, which is what makes every
bone direction of the input come back exactly under forward kinematics (only lengths change: they are the medians):
- `pelvis` (the root: position channels from the pelvis path) and `thorax` have several children; their rotation is
  a full frame from two observed directions: up = the bone to the spine (to the neck), left = right hip -> left hip
  (right shoulder -> left shoulder). The spine (neck) bone then points exactly along up.
- The hips and shoulders hang off those frames through zero-length joints, `left_pelvis`/`right_pelvis` and
  `left_clavicle`/`right_clavicle` (like CMU's LHipJoint/LeftShoulder), whose rotation aims the pelvis -> hip and
  thorax -> shoulder bones.
- Every other joint with a child aims its one bone by the swing rotation (the shortest rotation, no twist) from the
  bone's rest direction to its observed direction, both in the parent joint's frame. Swing has no twist, so nothing
  spins about a bone from frame to frame; it is undefined only for a bone pointing exactly opposite its rest direction
  relative to its parent (a thigh along the spine, an arm folded through the chest), which real motion does not reach.
- The wrists, ankles and head end the chains (End Site: 30 % of the last bone, continuing it); their rotation is 0.

Rotations are Euler angles in degrees, one order per joint, chosen so that the middle axis (where Euler angles lock)
is the bone's own axis, about which a swing rotation barely turns: "Zrotation Yrotation Xrotation" for vertical
bones, "Zrotation Xrotation Yrotation" for horizontal ones, "Yrotation Xrotation Zrotation" (heading first) for the
root. Of the two Euler solutions of each rotation, each frame takes the one nearest the previous frame's angles,
shifted by whole turns: the curves are continuous (no 180/360 degree jumps) for animation tools to filter and edit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.skeleton import H36M, Skeleton

X, Y = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
VERTICAL_ORDER = "ZYX"
HORIZONTAL_ORDER = "ZXY"
ROOT_ORDER = "YXZ"
END_SITE_FRACTION = 0.3  # End Site length, as a share of the last bone of the chain
CENTIMETRES_PER_METRE = 100.0


@dataclass(frozen=True)
class RigJoint:
    """One BVH joint. Its offset from the parent is `direction` (rest pose, file axes) times the median length of the
    H36M bone `length_of`; its rotation comes from `aim` (one bone: swing) or `frame` (up bone, left bone)."""

    name: str
    parent: int  # index into the rig, -1 for the root
    direction: tuple[float, float, float]
    length_of: tuple[str, str] | None  # H36M (parent, child) whose median length is this joint's offset; None: 0
    aim: tuple[str, str] | None = None  # the bone this joint's rotation points along `aim_rest`
    aim_rest: tuple[float, float, float] = (0.0, 0.0, 0.0)
    frame: tuple[tuple[str, str], tuple[str, str]] | None = None  # (up bone, left bone) of a full-frame joint
    order: str = VERTICAL_ORDER


def _side_rig(side: str, sign: float, first: int) -> list[RigJoint]:
    """The leg of one side; `first` is the rig index of its first joint (`<side>_pelvis`)."""
    out = (sign, 0.0, 0.0)
    down = (0.0, -1.0, 0.0)
    return [
        RigJoint(f"{side}_pelvis", 0, (0.0, 0.0, 0.0), None, ("pelvis", f"{side}_hip"), out, order=HORIZONTAL_ORDER),
        RigJoint(f"{side}_hip", first, out, ("pelvis", f"{side}_hip"), (f"{side}_hip", f"{side}_knee"), down),
        RigJoint(f"{side}_knee", first + 1, down, (f"{side}_hip", f"{side}_knee"), (f"{side}_knee", f"{side}_ankle"),
                 down),
        RigJoint(f"{side}_ankle", first + 2, down, (f"{side}_knee", f"{side}_ankle")),
    ]


def _arm_rig(side: str, sign: float, first: int, thorax: int) -> list[RigJoint]:
    """The arm of one side; `first` is the rig index of its first joint (`<side>_clavicle`)."""
    out = (sign, 0.0, 0.0)
    h = HORIZONTAL_ORDER
    return [
        RigJoint(f"{side}_clavicle", thorax, (0.0, 0.0, 0.0), None, ("thorax", f"{side}_shoulder"), out, order=h),
        RigJoint(f"{side}_shoulder", first, out, ("thorax", f"{side}_shoulder"), (f"{side}_shoulder", f"{side}_elbow"),
                 out, order=h),
        RigJoint(f"{side}_elbow", first + 1, out, (f"{side}_shoulder", f"{side}_elbow"),
                 (f"{side}_elbow", f"{side}_wrist"), out, order=h),
        RigJoint(f"{side}_wrist", first + 2, out, (f"{side}_elbow", f"{side}_wrist"), order=h),
    ]


def h36m_rig() -> list[RigJoint]:
    """The BVH joints in file (depth-first) order: parents before children."""
    up = (0.0, 1.0, 0.0)
    torso_frame = (("pelvis", "spine"), ("right_hip", "left_hip"))
    rig = [RigJoint("pelvis", -1, (0.0, 0.0, 0.0), None, frame=torso_frame, order=ROOT_ORDER)]
    rig += _side_rig("right", -1.0, first=len(rig))
    rig += _side_rig("left", 1.0, first=len(rig))
    spine = len(rig)
    rig += [
        RigJoint("spine", 0, up, ("pelvis", "spine"), ("spine", "thorax"), up),
        RigJoint("thorax", spine, up, ("spine", "thorax"),
                 frame=(("thorax", "neck_nose"), ("right_shoulder", "left_shoulder"))),
        RigJoint("neck_nose", spine + 1, up, ("thorax", "neck_nose"), ("neck_nose", "head"), up),
        RigJoint("head", spine + 2, up, ("neck_nose", "head")),
    ]
    rig += _arm_rig("left", 1.0, first=len(rig), thorax=spine + 1)
    rig += _arm_rig("right", -1.0, first=len(rig), thorax=spine + 1)
    return rig


# ----------------------------------------------------------------------------------------------------------------------
# Rotations


def world_to_bvh_axes(points: np.ndarray) -> np.ndarray:
    """World view (x, y, z up; metres) -> BVH axes (X, Y up, Z; centimetres): (x, z, -y) * 100."""
    points = np.asarray(points, dtype=np.float64)
    return np.stack([points[..., 0], points[..., 2], -points[..., 1]], axis=-1) * CENTIMETRES_PER_METRE


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def swing(rest: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(T, 3, 3) shortest rotations taking the unit vector `rest` (3,) onto the directions `target` (T, 3)."""
    rest = _unit(np.broadcast_to(rest, target.shape).astype(np.float64))
    target = _unit(target)
    axis = np.cross(rest, target)
    sin = np.linalg.norm(axis, axis=-1)
    cos = np.einsum("ti,ti->t", rest, target)
    # Exactly opposite: any axis perpendicular to `rest` is shortest; take one built from the least aligned world axis.
    opposite = sin < 1e-9
    if opposite.any():
        helper = np.eye(3)[np.argmin(np.abs(rest[opposite]), axis=-1)]
        axis[opposite] = np.cross(rest[opposite], helper)
    axis = _unit(axis)
    angle = np.arctan2(sin, cos)
    return axis_angle_matrix(axis, angle)


def axis_angle_matrix(axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rodrigues: unit axes (T, 3) and angles (T,) radians -> (T, 3, 3)."""
    k = np.zeros(axis.shape[:-1] + (3, 3))
    k[..., 0, 1], k[..., 0, 2], k[..., 1, 2] = -axis[..., 2], axis[..., 1], -axis[..., 0]
    k = k - np.swapaxes(k, -1, -2)
    s, c = np.sin(angle)[..., None, None], np.cos(angle)[..., None, None]
    return np.eye(3) + s * k + (1 - c) * (k @ k)


def frame_from(up: np.ndarray, left: np.ndarray) -> np.ndarray:
    """(T, 3, 3) rotations whose columns are left, up, forward: up exactly along `up` (T, 3), left the component of
    `left` (T, 3) perpendicular to it (the rest pose has left = +X, up = +Y, forward = +Z)."""
    y = _unit(up)
    x = _unit(left - np.einsum("ti,ti->t", left, y)[:, None] * y)
    z = np.cross(x, y)
    return np.stack([x, y, z], axis=-1)


def _parity(order: str) -> float:
    return 1.0 if order.lower() in ("xyz", "yzx", "zxy") else -1.0


def matrix_to_euler(matrices: np.ndarray, order: str) -> np.ndarray:
    """(T, 3, 3) rotations -> (T, 3) radians (a, b, c) with R = R_i(a) R_j(b) R_k(c) for order "ijk" (intrinsic, as
    BVH channels are applied), b in [-90, 90] degrees."""
    i, j, k = ("xyz".index(axis) for axis in order.lower())
    s = _parity(order)
    r = matrices
    b = np.arcsin(np.clip(s * r[:, i, k], -1.0, 1.0))
    a = np.arctan2(-s * r[:, j, k], r[:, k, k])
    c = np.arctan2(-s * r[:, i, j], r[:, i, i])
    return np.stack([a, b, c], axis=-1)


def continuous_euler(matrices: np.ndarray, order: str) -> np.ndarray:
    """(T, 3, 3) -> (T, 3) Euler angles in degrees that change as little as possible from frame to frame: of the two
    solutions (a, b, c) and (a + 180, 180 - b, c + 180), each shifted by whole turns, the one nearest the previous
    frame. The first frame takes b in [-90, 90]."""
    principal = matrix_to_euler(matrices, order)
    candidates = np.stack([principal, principal * [1, -1, 1] + math.pi], axis=1)  # (T, 2, 3)
    # distance[t, i, j]: from candidate i of frame t - 1 to candidate j of frame t, each angle up to whole turns
    step = candidates[1:, None, :, :] - candidates[:-1, :, None, :]
    distance = np.abs((step + math.pi) % (2 * math.pi) - math.pi).sum(axis=-1)
    choice = np.zeros(len(principal), dtype=np.intp)
    for t in range(1, len(principal)):  # a two-state chain: cheap even for long clips
        previous = choice[t - 1]
        choice[t] = 1 if distance[t - 1, previous, 1] < distance[t - 1, previous, 0] - 1e-12 else 0
    chosen = candidates[np.arange(len(principal)), choice]
    return np.degrees(np.unwrap(chosen, axis=0))  # whole turns added where an angle passes +-180


# ----------------------------------------------------------------------------------------------------------------------
# Solving and writing


@dataclass(frozen=True)
class BvhMotion:
    rig: list[RigJoint]
    offsets: np.ndarray  # (N, 3) centimetres, file axes
    end_sites: dict[int, np.ndarray]  # rig index -> End Site offset (3,)
    root_positions: np.ndarray  # (T, 3) centimetres, file axes
    angles: list[np.ndarray]  # per rig joint, (T, 3) degrees in the joint's channel order


def solve_motion(positions: np.ndarray, valid: np.ndarray | None = None, skeleton: Skeleton = H36M) -> BvhMotion:
    """World-view joints (T, 17, 3) metres, z up -> the rig's offsets (median bone lengths over `valid` frames) and
    per-frame root position and joint rotations."""
    if skeleton.joints != H36M.joints:
        raise ValueError(f"BVH export supports the Human3.6M-17 skeleton, got {skeleton.name!r}")
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 3 or positions.shape[1:] != (skeleton.num_joints, 3) or len(positions) == 0:
        raise ValueError(f"positions must be (T, {skeleton.num_joints}, 3) with T >= 1, got shape {positions.shape}")
    if not np.isfinite(positions).all():
        raise ValueError("positions contain NaN or infinite values; fill undetected frames before exporting a BVH")
    points = world_to_bvh_axes(positions)
    frames = np.ones(len(points), bool) if valid is None else np.asarray(valid, bool)
    if frames.shape != (len(points),):
        raise ValueError(f"valid must be (T,) = ({len(points)},), got shape {frames.shape}")
    if not frames.any():
        frames = np.ones(len(points), bool)
    J = skeleton.index

    def bone(pair: tuple[str, str]) -> np.ndarray:
        return points[:, J(pair[1])] - points[:, J(pair[0])]

    rig = h36m_rig()
    offsets = np.zeros((len(rig), 3))
    end_sites = {}
    globals_: list[np.ndarray] = []
    angles = []
    for n, joint in enumerate(rig):
        if joint.length_of is not None:
            length = float(np.median(np.linalg.norm(bone(joint.length_of)[frames], axis=-1)))
            offsets[n] = np.array(joint.direction) * length
        parent = globals_[joint.parent] if joint.parent >= 0 else np.broadcast_to(np.eye(3), (len(points), 3, 3))
        if joint.frame is not None:
            world = frame_from(bone(joint.frame[0]), bone(joint.frame[1]))
        elif joint.aim is not None:
            observed = np.einsum("tba,tb->ta", parent, bone(joint.aim))  # parent^T @ direction
            world = parent @ swing(np.array(joint.aim_rest), observed)
        else:
            world = np.array(parent)
            end_sites[n] = offsets[n] * END_SITE_FRACTION
        globals_.append(world)
        local = np.swapaxes(parent, -1, -2) @ world
        angles.append(continuous_euler(local, joint.order))
    return BvhMotion(rig, offsets, end_sites, points[:, J("pelvis")], angles)


def bvh_text(positions: np.ndarray, fps: float, valid: np.ndarray | None = None, skeleton: Skeleton = H36M) -> str:
    """The BVH file for world-view joints (T, 17, 3) (metres, z up, with or without trajectory) at `fps` frames per
    second: Human3.6M joint names, Y up, centimetres, `Frames: T`, `Frame Time: 1/fps`. See the module docstring."""
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"frame rate must be a positive number, got {fps}")
    motion = solve_motion(positions, valid, skeleton)
    lines = ["HIERARCHY"]
    order: list[int] = []  # rig indices in the order the file declares them: the order of the motion columns
    _hierarchy_lines(motion, 0, 0, lines, order)
    lines += ["MOTION", f"Frames: {len(motion.root_positions)}", f"Frame Time: {1.0 / fps:.10f}"]
    values = np.concatenate([motion.root_positions] + [motion.angles[n] for n in order], axis=1)
    lines += [" ".join(f"{v:.5f}" for v in row) for row in values]
    return "\n".join(lines) + "\n"


def _channels(joint: RigJoint) -> str:
    rotations = " ".join(f"{axis.upper()}rotation" for axis in joint.order)
    return f"CHANNELS 6 Xposition Yposition Zposition {rotations}" if joint.parent < 0 else f"CHANNELS 3 {rotations}"


def _vector(v: np.ndarray) -> str:
    return " ".join(f"{x:.5f}" for x in v)


def _hierarchy_lines(motion: BvhMotion, n: int, depth: int, lines: list[str], order: list[int]) -> None:
    joint = motion.rig[n]
    order.append(n)
    pad = "  " * depth
    lines.append(f"{pad}{'ROOT' if joint.parent < 0 else 'JOINT'} {joint.name}")
    lines.append(f"{pad}{{")
    lines.append(f"{pad}  OFFSET {_vector(motion.offsets[n])}")
    lines.append(f"{pad}  {_channels(joint)}")
    children = [c for c, child in enumerate(motion.rig) if child.parent == n]
    for c in children:
        _hierarchy_lines(motion, c, depth + 1, lines, order)
    if n in motion.end_sites:
        lines += [f"{pad}  End Site", f"{pad}  {{", f"{pad}    OFFSET {_vector(motion.end_sites[n])}", f"{pad}  }}"]
    lines.append(f"{pad}}}")


def bvh_file_names(clip_stem: str, checkpoint_names: list[str]) -> list[str]:
    """One BVH file name per checkpoint: `<clip>.bvh` for the first, `<clip>_<checkpoint stem>.bvh` for the others
    (a repeated stem gets `_2`, `_3`, ...)."""
    names, used = [], set()
    for k, checkpoint in enumerate(checkpoint_names):
        stem = checkpoint.rsplit("/", 1)[-1]
        stem = stem.rsplit(".", 1)[0] if "." in stem else stem
        name = f"{clip_stem}.bvh" if k == 0 else f"{clip_stem}_{stem}.bvh"
        count = 2
        while name in used:
            name = f"{clip_stem}_{stem}_{count}.bvh"
            count += 1
        used.add(name)
        names.append(name)
    return names
