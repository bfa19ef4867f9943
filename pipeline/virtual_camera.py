"""Lifting a person who is far from the image centre as seen by a camera turned to look at them.

Why: a lifter maps 2D to 3D under the perspective it was trained on, and training cameras are aimed at the person
(the project's mocap renderings, like Human3.6M's studio). Off the optical axis a body is seen obliquely: a person
25 degrees off-axis in a wide phone shot projects like one seen from 25 degrees further round, and the lifter has
rarely seen that. Turning a virtual camera about its centre onto the person changes the 2D by a homography only
(no depth needed: the camera does not move), so the lifter sees the person as in training; the 3D it returns is
turned back into the real camera's frame (in the spirit of perspective crop layers, Yu et al., CVPR 2021).

Measured (shipped lifter, P-MPJPE, flip test):
- CMU subject 131 (never trained on) through a wide-angle camera aimed at the person and then turned
  (`tests/test_virtual_camera.py`): aimed 64.4 mm; the person 15 / 25 degrees above the centre 68.9 / 72.8 mm, and
  64.3 through the virtual camera; 30 degrees to the side 63.2-63.4, and 64.0-64.6 through it. The lifter copes with
  people beside the centre but not above it; through the virtual camera it scores the same wherever the person is;
- held-out Bandai clips rendered with the person framed anywhere in the picture, 145 sequences: 58.1 -> 56.3 mm
  overall, the gain growing with the angle off the optical axis (0-5 degrees: none; 10-15: 57.1 -> 55.5;
  20-30: 60.1 -> 55.5; over 30: 59.9 -> 52.2);
- the real 4-camera recording (people 6-13 degrees off-axis, mostly above or below the centre of its portrait
  pictures): limbs 108.2 -> 107.2 mm, better in every view and for both people, with the demo's default focal
  length (the calibrated one gives 107.1).
One rotation per person and clip (aimed at the mean of their keypoints over the frames they were detected in): one
rotation per frame was worse (57.3 mm on the same set; 83.1 against 80.4 for people crossing the picture), because
it takes the person's own motion across the picture out of what the lifter sees.
"""
from __future__ import annotations

import numpy as np


def aim_rotation(center_px: np.ndarray, focal_px: float, principal_px: tuple[float, float]) -> np.ndarray:
    """The (3, 3) rotation R that turns the camera about its centre so that the ray through pixel `center_px` becomes
    the optical axis: a camera-frame point X (x right, y down, z forward) is R @ X in the virtual camera."""
    ray = np.array([(center_px[0] - principal_px[0]) / focal_px, (center_px[1] - principal_px[1]) / focal_px, 1.0])
    ray /= np.linalg.norm(ray)
    axis = np.cross(ray, [0.0, 0.0, 1.0])  # sin(angle) long
    sin, cos = float(np.linalg.norm(axis)), float(ray[2])
    if sin < 1e-12:
        return np.eye(3)
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + k + k @ k * ((1.0 - cos) / sin**2)  # Rodrigues, with k = sin(angle) x the unit axis


def warp_to_virtual(points_px: np.ndarray, rotation: np.ndarray, focal_px: float,
                    principal_px: tuple[float, float]) -> np.ndarray:
    """(..., 2) pixels of the real camera -> where the virtual camera (`rotation`, same intrinsics) sees them."""
    intrinsics = np.array([[focal_px, 0.0, principal_px[0]], [0.0, focal_px, principal_px[1]], [0.0, 0.0, 1.0]])
    homography = intrinsics @ rotation @ np.linalg.inv(intrinsics)
    points = np.asarray(points_px, np.float64)
    mapped = np.concatenate([points, np.ones((*points.shape[:-1], 1))], axis=-1) @ homography.T
    return mapped[..., :2] / mapped[..., 2:]


def lift_aimed(lifter, keypoints_px: np.ndarray, width: int, height: int, focal_px: float,
               frames: np.ndarray | None = None, **lift_options) -> np.ndarray:
    """`lifter.lift` of a (T, 17, 2) pixel track through a virtual camera aimed at the track's mean position over
    `frames` (default: all), principal point at the image centre -> (T, 17, 3) root-relative poses in the real
    camera's frame, metres. `lift_options` go to `lifter.lift` (flip, batch_size, progress, stride)."""
    keypoints_px = np.asarray(keypoints_px)
    chosen = keypoints_px if frames is None or len(frames) == 0 else keypoints_px[frames]
    center = np.nanmean(chosen.reshape(-1, 2), axis=0)
    principal = (width / 2.0, height / 2.0)
    rotation = aim_rotation(center, focal_px, principal)
    warped = warp_to_virtual(keypoints_px, rotation, focal_px, principal).astype(np.float32)
    poses = lifter.lift(warped, width, height, **lift_options).camera
    return (poses @ rotation).astype(np.float32)  # row vectors: X_real = R^T X_virtual
