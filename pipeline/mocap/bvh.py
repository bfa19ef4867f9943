"""BVH motion files: parsing and forward kinematics, vectorised over frames with numpy.

Conventions (as in the BVH format): rotation channels are Euler angles in degrees applied in the order they are
declared (intrinsic), i.e. "Zrotation Xrotation Yrotation" gives R = Rz @ Rx @ Ry; a joint's local translation is
its OFFSET unless it declares position channels, which then replace the offset (root translation, and e.g. the
Bandai-Namco files whose every joint has 6 channels). End sites become joints named "<parent>_end" without channels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BvhSkeleton:
    names: tuple[str, ...]
    parents: tuple[int, ...]  # -1 for the root; parents always come before their children
    offsets: np.ndarray  # (J, 3) rest-pose translation from the parent, file units
    channels: tuple[tuple[str, ...], ...]  # per joint, e.g. ("Xposition", ..., "Zrotation"); () for end sites

    @property
    def num_joints(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"joint {name!r} not in skeleton; it has {', '.join(self.names)}") from None


@dataclass(frozen=True)
class BvhClip:
    skeleton: BvhSkeleton
    motion: np.ndarray  # (F, C) channel values in file order
    frame_time: float  # seconds per frame


def parse_bvh(text: str) -> BvhClip:
    """Parse the text of a BVH file."""
    tokens = text.split()
    if not tokens or tokens[0] != "HIERARCHY":
        raise ValueError("not a BVH file: it must start with HIERARCHY")
    names: list[str] = []
    parents: list[int] = []
    offsets: list[list[float]] = []
    channels: list[tuple[str, ...]] = []
    stack: list[int] = []
    i = 1
    pending_parent = -1
    while tokens[i] != "MOTION":
        tok = tokens[i]
        if tok in ("ROOT", "JOINT"):
            names.append(tokens[i + 1])
            parents.append(pending_parent)
            offsets.append([0.0, 0.0, 0.0])
            channels.append(())
            i += 2
        elif tok == "End":  # "End Site"
            names.append(f"{names[pending_parent]}_end")
            parents.append(pending_parent)
            offsets.append([0.0, 0.0, 0.0])
            channels.append(())
            i += 2
        elif tok == "{":
            stack.append(len(names) - 1)
            pending_parent = stack[-1]
            i += 1
        elif tok == "}":
            stack.pop()
            pending_parent = stack[-1] if stack else -1
            i += 1
        elif tok == "OFFSET":
            offsets[-1] = [float(v) for v in tokens[i + 1:i + 4]]
            i += 4
        elif tok == "CHANNELS":
            n = int(tokens[i + 1])
            channels[-1] = tuple(tokens[i + 2:i + 2 + n])
            i += 2 + n
        else:
            raise ValueError(f"unexpected token {tok!r} in BVH hierarchy")
        if i >= len(tokens):
            raise ValueError("BVH file has no MOTION section")
    # MOTION Frames: N Frame Time: t values...
    if tokens[i + 1] != "Frames:" or tokens[i + 3:i + 5] != ["Frame", "Time:"]:
        raise ValueError("BVH MOTION section must start with 'Frames: N' and 'Frame Time: t'")
    num_frames = int(tokens[i + 2])
    frame_time = float(tokens[i + 5])
    num_channels = sum(len(c) for c in channels)
    values = np.asarray(tokens[i + 6:], dtype=np.float64)
    if values.size != num_frames * num_channels:
        raise ValueError(f"BVH motion has {values.size} values, expected {num_frames} frames x {num_channels} channels")
    skeleton = BvhSkeleton(tuple(names), tuple(parents), np.asarray(offsets, np.float64), tuple(channels))
    return BvhClip(skeleton, values.reshape(num_frames, num_channels), frame_time)


def axis_rotation(axis: str, angle_rad: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices about the x, y or z axis (right-handed)."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    one, zero = np.ones_like(c), np.zeros_like(c)
    if axis == "x":
        rows = [[one, zero, zero], [zero, c, -s], [zero, s, c]]
    elif axis == "y":
        rows = [[c, zero, s], [zero, one, zero], [-s, zero, c]]
    elif axis == "z":
        rows = [[c, -s, zero], [s, c, zero], [zero, zero, one]]
    else:
        raise ValueError(f"unknown rotation axis {axis!r}")
    return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


def euler_to_matrix(angles_deg: np.ndarray, order: str) -> np.ndarray:
    """Intrinsic Euler angles (..., k) in degrees about the axes named in `order` (e.g. "zxy") -> (..., 3, 3)."""
    angles = np.deg2rad(np.asarray(angles_deg, np.float64))
    out = np.broadcast_to(np.eye(3), angles.shape[:-1] + (3, 3)).copy()
    for k, axis in enumerate(order):
        out = out @ axis_rotation(axis, angles[..., k])
    return out


def forward_kinematics(clip: BvhClip, rotations: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """World joint positions (F, J, 3) in file units and world rotations (F, J, 3, 3) of every joint's frame.

    `rotations` from an earlier call on the same motion skip the Euler-angle work (most of the time): a body variant
    (scaled offsets and position channels, see pipeline.mocap.dataset) changes the positions, not the rotations."""
    sk = clip.skeleton
    num_frames = clip.motion.shape[0]
    positions = np.zeros((num_frames, sk.num_joints, 3))
    known = rotations is not None
    if known and rotations.shape != (num_frames, sk.num_joints, 3, 3):
        raise ValueError(f"rotations of shape {rotations.shape} do not fit {num_frames} frames of {sk.num_joints} "
                         "joints; pass the rotations of the same clip")
    rotations = rotations if known else np.zeros((num_frames, sk.num_joints, 3, 3))
    col = 0
    for j, (parent, chans) in enumerate(zip(sk.parents, sk.channels, strict=True)):
        values = clip.motion[:, col:col + len(chans)]
        col += len(chans)
        translation = np.broadcast_to(sk.offsets[j], (num_frames, 3)).copy()
        rot_axes, rot_cols = [], []
        for k, name in enumerate(chans):
            axis, kind = name[0].lower(), name[1:].lower()
            if kind == "position":
                translation[:, "xyz".index(axis)] = values[:, k]
            elif kind == "rotation":
                rot_axes.append(axis)
                rot_cols.append(k)
            else:
                raise ValueError(f"unknown BVH channel {name!r} on joint {sk.names[j]!r}")
        if parent < 0:
            positions[:, j] = translation
        else:
            positions[:, j] = positions[:, parent] + np.einsum("fab,fb->fa", rotations[:, parent], translation)
        if not known:
            local = euler_to_matrix(values[:, rot_cols], "".join(rot_axes)) if rot_axes else np.eye(3)
            rotations[:, j] = local if parent < 0 else rotations[:, parent] @ local
    return positions, rotations
