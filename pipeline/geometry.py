"""The geometry that inference, training and the mocap data share, written once, in numpy.

Whatever the lifter sees at run time must be prepared exactly as its training data was: the same screen
normalisation, the same mirror image for flip augmentation / flip test, the same camera conventions. Keeping one
implementation of each (instead of one per caller, in float32 here and float64 there) makes that a fact rather than a
hope; `tests/test_geometry.py` checks that the inference and training paths give identical arrays.

Conventions: camera space is Human3.6M's (x right, y down, z away from the camera, metres); quaternions are
(w, x, y, z) and rotate camera-space vectors into the world.
"""
from __future__ import annotations

import numpy as np

# Camera-to-world rotation (w, x, y, z) hard-coded in the released PoseFormerV2 demo (a Human3.6M camera's
# orientation); it looks about 11 degrees down at the subject, so the person of a camera tilted like that stands upright
# on z = 0 (demo.py levels the world for the camera it sees: pipeline.motion.level).
DEMO_CAMERA_TO_WORLD = np.array(
    [0.1407056450843811, -0.1500701755285263, -0.755240797996521, 0.6223280429840088], dtype=np.float32
)


def normalize_screen_coordinates(xy: np.ndarray, width: float, height: float) -> np.ndarray:
    """Pixels (..., 2) -> [-1, 1] along x with the aspect ratio kept: X / w * 2 - [1, h / w] (VideoPose3D).

    Computed in float64 and returned as float32, the lifter's input type (the released code computes in float32;
    the two differ by at most one float32 rounding step).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got width={width}, height={height}")
    xy = np.asarray(xy, dtype=np.float64)
    return (xy / width * 2.0 - np.array([1.0, height / width])).astype(np.float32)


def quaternion_rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate vectors v (..., 3) by the unit quaternion q (w, x, y, z); float64."""
    q = np.asarray(q, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    qvec = np.broadcast_to(q[1:], v.shape)
    uv = np.cross(qvec, v)
    uuv = np.cross(qvec, uv)
    return v + 2.0 * (q[0] * uv + uuv)


def quaternion_inverse(q: np.ndarray) -> np.ndarray:
    """The inverse rotation of a unit quaternion (w, x, y, z): its conjugate."""
    q = np.asarray(q, dtype=np.float64)
    return np.concatenate([q[:1], -q[1:]])


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) -> 3x3 rotation matrix R with R @ v = q v q^-1."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quaternion(matrix: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix -> unit quaternion (w, x, y, z) with w >= 0, the inverse of `quaternion_to_matrix`."""
    m = np.asarray(matrix, dtype=np.float64)
    # Shepperd's method: start from the largest of the four squared components, so nothing is divided by ~0.
    squares = np.array([1 + m[0, 0] + m[1, 1] + m[2, 2], 1 + m[0, 0] - m[1, 1] - m[2, 2],
                        1 - m[0, 0] + m[1, 1] - m[2, 2], 1 - m[0, 0] - m[1, 1] + m[2, 2]])
    i = int(np.argmax(squares))
    s = 2.0 * np.sqrt(squares[i])
    if i == 0:
        q = [s / 4, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif i == 1:
        q = [(m[2, 1] - m[1, 2]) / s, s / 4, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif i == 2:
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, s / 4, (m[1, 2] + m[2, 1]) / s]
    else:
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, s / 4]
    q = np.array(q) / np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def camera_to_world(points: np.ndarray, rotation: np.ndarray = DEMO_CAMERA_TO_WORLD,
                    translation: np.ndarray | float = 0.0) -> np.ndarray:
    """Camera-space points (..., 3) -> world: rotate by the camera's orientation, then add its position; float32."""
    return (quaternion_rotate(rotation, points) + np.asarray(translation, np.float64)).astype(np.float32)


def world_to_camera(points: np.ndarray, rotation: np.ndarray, translation: np.ndarray | float) -> np.ndarray:
    """World points (..., 3) -> camera space: the inverse of `camera_to_world`; float32."""
    shifted = np.asarray(points, np.float64) - np.asarray(translation, np.float64)
    return quaternion_rotate(quaternion_inverse(rotation), shifted).astype(np.float32)


def demo_world_view(camera: np.ndarray, rotation: np.ndarray = DEMO_CAMERA_TO_WORLD) -> np.ndarray:
    """The released demo's world view of root-relative camera poses (T, J, 3): the fixed rotation (or `rotation`, a
    clip's levelled one: `pipeline.motion.level`), then each frame shifted vertically so its lowest joint sits at
    z = 0."""
    world = camera_to_world(camera, rotation)
    world[..., 2] -= world[..., 2].min(axis=-1, keepdims=True)
    return world


def flip_poses(poses: np.ndarray, permutation: np.ndarray) -> np.ndarray:
    """Mirror poses (..., J, C) left-right: swap left/right joints and negate x (a new array).

    2D inputs (C = 2, screen-normalised, x centred on 0) and 3D camera-space poses (C = 3) mirror the same way: this
    is the flip augmentation of training and the flip test of inference.
    """
    out = np.asarray(poses)[..., np.asarray(permutation), :].copy()
    out[..., 0] *= -1
    return out


def root_relative(poses: np.ndarray) -> np.ndarray:
    """Subtract joint 0 (the pelvis) from every joint, as the released training and evaluation do."""
    return poses - poses[..., :1, :]
