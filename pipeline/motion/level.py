"""Which way is up: the camera's tilt estimated from the lifted people, so that the world view stands them level.

Why: a single video has no calibrated camera, so the lifter returns poses in the camera's own frame, and the world
view (the 3D panel, `pose3d_world`, `trajectory_world`, the BVH) needs a camera-to-world rotation. The released demo
uses one fixed rotation, that of a Human3.6M camera looking about 11 degrees down. Real cameras are held at every
tilt: the camera distribution the field trains on (GVHMR, WHAM) has pitch ~N(5, 22.5) and roll ~N(0, 7.5) degrees,
and the shared 4-camera recording's cameras look 18-25 degrees down, one of them rolled 24 degrees. With the fixed
rotation such a world view is tilted by the same angle: people lean, a walk goes uphill, a bystander further back
floats a metre above the ground, and the BVH inherits all of it.

How: the lifter was trained on that camera distribution, so its camera-space poses carry the camera's tilt. Standing,
walking and most other motion keep the legs (ankles to hips) and the trunk (pelvis to thorax) close to vertical on
average, so their mean direction over the clip, pooled over every person, estimates the world's up in the camera
frame. Frames more than `TRIM_DEG` from the first estimate (a fall, a bend, a cartwheel) are left out and the mean is
taken again. The world rotation is then the demo's fixed one turned by the smallest rotation that makes this
direction vertical: for a camera tilted like a Human3.6M camera, nothing changes, and the heading stays the demo's.

Measured (`benchmarks/bench_level.py`, the default lifter; angle between the estimated and the true vertical):
- synthetic renderings of the CMU clips (another studio, never trained on; 93 renderings through the training camera
  distribution, with detector-like noise): fixed rotation median 17.0 / mean 18.0 / 90th percentile 29.7 degrees;
  estimated 6.0 / 6.5 / 11.1 (pitch unbiased: +1.8 on average). The same estimator on the ground-truth bodies is
  4.5 / 5.2 / 10.4 off: the lifter's poses give nearly what a body-based estimate can;
- the shared real recording, both dancers pooled, per camera (cam01-cam04, the refined calibration's vertical):
  fixed 16.4, 7.9, 13.4, 28.7 degrees; estimated 7.4, 8.3, 13.0, 12.4. The woman alone (upright, waving) gives 3-11
  degrees; the man alone (lunging forward, trunk pitched) 14-17: bodies that lean for the whole clip bias it.

When the people do not look upright at all (estimated vertical more than `MAX_CORRECTION_DEG` from the fixed
rotation's: people lying, a camera on its side), the estimate is not trusted and the fixed rotation is kept, with the
reason recorded.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.geometry import DEMO_CAMERA_TO_WORLD, matrix_to_quaternion, quaternion_to_matrix
from pipeline.skeleton import H36M, Skeleton

TRIM_DEG = 35.0  # frames whose own up direction is further than this from the clip's first estimate are left out
MAX_CORRECTION_DEG = 45.0  # a larger turn from the fixed rotation is not trusted (people lying, a camera on its side)
MIN_FRAMES = 5  # fewer detected frames than this give no estimate


@dataclass(frozen=True)
class Levelling:
    """The camera-to-world rotation of a clip's world view and where it came from."""

    rotation: np.ndarray  # (4,) quaternion (w, x, y, z), camera -> world (z up)
    levelled: bool  # True: from the people; False: the demo's fixed rotation
    up_camera: np.ndarray  # (3,) the world's up direction in camera space (x right, y down, z forward)
    reason: str  # why the fixed rotation was kept ("" when levelled)

    @property
    def camera_pitch_deg(self) -> float:
        """How far the camera looks down (negative: up) from the horizontal."""
        return float(np.degrees(np.arcsin(np.clip(-self.up_camera[2], -1.0, 1.0))))

    @property
    def camera_roll_deg(self) -> float:
        """How far the world's vertical leans towards the image's right (the camera turned counter-clockwise)."""
        return float(np.degrees(np.arctan2(self.up_camera[0], -self.up_camera[1])))

    def record(self) -> dict:
        return {"levelled": self.levelled, "camera_pitch_deg": round(self.camera_pitch_deg, 1),
                "camera_roll_deg": round(self.camera_roll_deg, 1),
                "rotation": [round(float(x), 6) for x in self.rotation],
                **({"reason": self.reason} if self.reason else {})}


def fixed_up_camera(rotation: np.ndarray = DEMO_CAMERA_TO_WORLD) -> np.ndarray:
    """The world's up (z) direction in camera space under a camera-to-world rotation."""
    return quaternion_to_matrix(rotation).T @ np.array([0.0, 0.0, 1.0])


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return vectors / norms


def _angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip(np.sum(a * b, axis=-1), -1.0, 1.0)))


def body_up_directions(camera_poses: np.ndarray, skeleton: Skeleton = H36M) -> np.ndarray:
    """(..., J, 3) camera-space poses -> (..., 2, 3) unit directions that are vertical for an upright body: the legs
    (mid-ankles to mid-hips) and the trunk (pelvis to thorax). NaN where a direction has no length."""
    j = skeleton.index
    poses = np.asarray(camera_poses, np.float64)
    ankles = (poses[..., j("left_ankle"), :] + poses[..., j("right_ankle"), :]) / 2
    hips = (poses[..., j("left_hip"), :] + poses[..., j("right_hip"), :]) / 2
    return np.stack([_unit(hips - ankles), _unit(poses[..., j("thorax"), :] - poses[..., j("pelvis"), :])], axis=-2)


def estimate_up(camera_poses: np.ndarray, valid: np.ndarray | None = None,
                skeleton: Skeleton = H36M) -> np.ndarray | None:
    """The world's up direction in camera space from root-relative camera-space poses (P, T, J, 3) of P people
    (valid (P, T): the frames each was detected in; None: all), or None when fewer than MIN_FRAMES frames have a
    body to measure."""
    directions = body_up_directions(camera_poses, skeleton)  # (P, T, 2, 3)
    frames = np.ones(directions.shape[:2], bool) if valid is None else np.asarray(valid, bool)
    per_frame = directions[frames]  # (N, 2, 3)
    per_frame = per_frame[np.isfinite(per_frame).all(axis=(1, 2))]
    if len(per_frame) < MIN_FRAMES:
        return None
    up = _unit(per_frame.mean(axis=0).sum(axis=0))  # mean legs + mean trunk
    kept = (_angle_deg(_unit(per_frame.sum(axis=1)), up) <= TRIM_DEG)
    if kept.sum() >= MIN_FRAMES:
        up = _unit(per_frame[kept].mean(axis=0).sum(axis=0))
    return up if np.isfinite(up).all() else None


def level_rotation(up_camera: np.ndarray, reference: np.ndarray = DEMO_CAMERA_TO_WORLD) -> np.ndarray:
    """The camera-to-world quaternion that makes `up_camera` the world's z: `reference` turned by the smallest
    rotation that carries `up_camera` onto the reference's own up, so the heading stays the reference's."""
    up = _unit(np.asarray(up_camera, np.float64))
    target = fixed_up_camera(reference)
    axis = np.cross(up, target)  # sin(angle) long
    sin, cos = float(np.linalg.norm(axis)), float(up @ target)
    if sin < 1e-12:
        turn = np.eye(3) if cos > 0 else -np.eye(3) + 2 * np.outer(_perpendicular(up), _perpendicular(up))
    else:
        k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
        turn = np.eye(3) + k + k @ k * ((1.0 - cos) / sin**2)  # Rodrigues, with k = sin(angle) x the unit axis
    return matrix_to_quaternion(quaternion_to_matrix(reference) @ turn).astype(np.float32)


def _perpendicular(v: np.ndarray) -> np.ndarray:
    axis = np.eye(3)[np.argmin(np.abs(v))]
    return _unit(np.cross(v, axis))


def fixed_levelling(reason: str) -> Levelling:
    """The demo's fixed rotation, not levelled, and why."""
    return Levelling(DEMO_CAMERA_TO_WORLD, False, fixed_up_camera(), reason)


def level_world(camera_poses: np.ndarray, valid: np.ndarray | None = None, skeleton: Skeleton = H36M) -> Levelling:
    """The clip's world rotation from its people (`estimate_up`), or the demo's fixed one, with the reason, when the
    people give no estimate or one that turns the world more than MAX_CORRECTION_DEG."""
    fixed = fixed_up_camera()
    up = estimate_up(camera_poses, valid, skeleton)
    if up is None:
        return fixed_levelling(f"fewer than {MIN_FRAMES} frames with a body to measure")
    turn = float(_angle_deg(up, fixed))
    if turn > MAX_CORRECTION_DEG:
        return fixed_levelling(f"the people do not look upright (their vertical is {turn:.0f} degrees from the usual "
                               f"camera's, more than {MAX_CORRECTION_DEG:.0f}): the fixed rotation is kept")
    return Levelling(level_rotation(up), True, up, "")
