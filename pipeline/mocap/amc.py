"""Acclaim ASF (skeleton) / AMC (motion) files, as in the CMU motion-capture database, with forward kinematics.

ASF bones carry a rest direction in world coordinates, a length, an `axis` (Euler angles of the bone's local frame,
applied x then y then z: C = Rz @ Ry @ Rx) and the rotational degrees of freedom the AMC file animates.
A bone's world rotation is parent @ C @ M @ C^-1 with M the AMC rotation (also Rz @ Ry @ Rx of the dofs), and its end
point is the parent's end point plus rotation @ direction * length.
Units: `:units length L` means one file length unit is 1/L inches (CMU: L = 0.45), so metres = value / L * 0.0254;
the root translation in the AMC file uses the same unit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.mocap.bvh import euler_to_matrix

INCH_M = 0.0254


@dataclass(frozen=True)
class AsfSkeleton:
    names: tuple[str, ...]  # "root" first, then bones in an order where parents precede children
    parents: tuple[int, ...]
    directions: np.ndarray  # (J, 3) unit rest directions (world frame); zero for the root
    lengths: np.ndarray  # (J,) in metres
    axes: np.ndarray  # (J, 3, 3) C matrices
    dofs: tuple[tuple[str, ...], ...]  # per bone, e.g. ("rx", "ry", "rz"); the root's are ("tx", ..., "rz")
    root_axis_order: str  # e.g. "xyz"
    length_to_m: float  # metres per file length unit (also used for the root translation)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"bone {name!r} not in skeleton; it has {', '.join(self.names)}") from None


def _axis_matrix(angles_deg: list[float], order: str) -> np.ndarray:
    # ASF "axis a b c XYZ": rotate about x first, then y, then z (fixed axes): C = Rz Ry Rx.
    angles = dict(zip(order.lower(), angles_deg, strict=True))
    return euler_to_matrix(np.array([angles["z"], angles["y"], angles["x"]]), "zyx")


def parse_asf(text: str) -> AsfSkeleton:
    """Parse the text of an ASF skeleton file."""
    length_unit = 1.0
    angle_unit = "deg"
    bones: dict[str, dict] = {}
    order: list[str] = []
    hierarchy: dict[str, list[str]] = {}
    root_dofs: tuple[str, ...] = ("tx", "ty", "tz", "rx", "ry", "rz")
    root_axis = "xyz"
    section = None
    current: dict | None = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith(":"):
            parts = line.split()
            section = parts[0][1:]
            continue
        parts = line.split()
        if section == "units":
            if parts[0] == "length":
                length_unit = float(parts[1])
            elif parts[0] == "angle":
                angle_unit = parts[1]
        elif section == "root":
            if parts[0] == "order":
                root_dofs = tuple(p.lower() for p in parts[1:])
            elif parts[0] == "axis":
                root_axis = parts[1].lower()
        elif section == "bonedata":
            if parts[0] == "begin":
                current = {"dof": ()}
            elif parts[0] == "end":
                bones[current["name"]] = current
                order.append(current["name"])
                current = None
            elif parts[0] == "name":
                current["name"] = parts[1]
            elif parts[0] == "direction":
                current["direction"] = [float(v) for v in parts[1:4]]
            elif parts[0] == "length":
                current["length"] = float(parts[1])
            elif parts[0] == "axis":
                current["axis"] = ([float(v) for v in parts[1:4]], parts[4])
            elif parts[0] == "dof":
                current["dof"] = tuple(p.lower() for p in parts[1:])
        elif section == "hierarchy":
            if parts[0] in ("begin", "end"):
                continue
            hierarchy.setdefault(parts[0], []).extend(parts[1:])
    if angle_unit != "deg":
        raise ValueError(f"ASF angle unit {angle_unit!r} is not supported; only degrees")
    if not bones or "root" not in hierarchy:
        raise ValueError("ASF file has no :bonedata or no :hierarchy starting at root")
    length_to_m = INCH_M / length_unit
    names, parents = ["root"], [-1]
    queue = ["root"]
    while queue:  # breadth-first so that parents precede children
        parent = queue.pop(0)
        for child in hierarchy.get(parent, []):
            names.append(child)
            parents.append(names.index(parent))
            queue.append(child)
    directions = np.zeros((len(names), 3))
    lengths = np.zeros(len(names))
    axes = np.broadcast_to(np.eye(3), (len(names), 3, 3)).copy()
    dofs: list[tuple[str, ...]] = [root_dofs]
    for j, name in enumerate(names[1:], start=1):
        bone = bones[name]
        d = np.asarray(bone["direction"], np.float64)
        directions[j] = d / max(np.linalg.norm(d), 1e-12)
        lengths[j] = bone["length"] * length_to_m
        axes[j] = _axis_matrix(*bone["axis"])
        dofs.append(bone["dof"])
    return AsfSkeleton(tuple(names), tuple(parents), directions, lengths, axes, tuple(dofs), root_axis, length_to_m)


def parse_amc(text: str, skeleton: AsfSkeleton) -> dict[str, np.ndarray]:
    """Parse AMC motion: {bone name: (F, len(dofs)) values} (root translation still in file units)."""
    frames: list[dict[str, list[float]]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line.startswith(":"):
            continue
        parts = line.split()
        if len(parts) == 1 and parts[0].isdigit():
            frames.append({})
            continue
        if not frames:
            raise ValueError(f"AMC line before the first frame number: {line!r}")
        frames[-1][parts[0]] = [float(v) for v in parts[1:]]
    if not frames:
        raise ValueError("AMC file has no frames")
    out = {}
    for j, name in enumerate(skeleton.names):
        n = len(skeleton.dofs[j])
        if n == 0:
            continue
        out[name] = np.asarray([f.get(name, [0.0] * n) for f in frames], np.float64)
    return out


def _dof_rotation(values: np.ndarray, dofs: tuple[str, ...]) -> np.ndarray:
    angles = np.zeros((values.shape[0], 3))
    for k, dof in enumerate(dofs):
        if dof in ("rx", "ry", "rz"):
            angles[:, "xyz".index(dof[1])] = values[:, k]
    return euler_to_matrix(angles[:, ::-1], "zyx")  # Rz @ Ry @ Rx


def forward_kinematics(skeleton: AsfSkeleton, motion: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Positions (F, J, 3) in metres of each bone's end point (the root's: its position) and world rotations."""
    num_frames = next(iter(motion.values())).shape[0]
    num = len(skeleton.names)
    positions = np.zeros((num_frames, num, 3))
    rotations = np.zeros((num_frames, num, 3, 3))
    for j, name in enumerate(skeleton.names):
        dofs = skeleton.dofs[j]
        values = motion.get(name, np.zeros((num_frames, len(dofs))))
        rot = _dof_rotation(values, dofs) if dofs else np.broadcast_to(np.eye(3), (num_frames, 3, 3))
        local = skeleton.axes[j] @ rot @ skeleton.axes[j].T
        parent = skeleton.parents[j]
        if parent < 0:
            translation = np.zeros((num_frames, 3))
            for k, dof in enumerate(dofs):
                if dof in ("tx", "ty", "tz"):
                    translation[:, "xyz".index(dof[1])] = values[:, k] * skeleton.length_to_m
            positions[:, j] = translation
            rotations[:, j] = local
        else:
            rotations[:, j] = rotations[:, parent] @ local
            bone = skeleton.directions[j] * skeleton.lengths[j]
            positions[:, j] = positions[:, parent] + rotations[:, j] @ bone
    return positions, rotations
