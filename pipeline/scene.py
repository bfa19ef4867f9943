"""Several lifted people in one world view.

PoseFormerV2 gives every person root-relative: all pelvises at the origin. Two ways to show several people in one
3D panel:
- `world_scene` (the moving view): every person at their own pelvis trajectory (`pipeline.motion.trajectory`), all
  on the followed person's ground. The trajectories are camera-space positions, so the people stand where the camera
  saw them, each at the depth their lifted body size gives.
- `place_people` (the pinned view): an approximate placement: each person is moved to where a pinhole camera puts
  them, depth from the pixel height of their box (people of average height `PERSON_HEIGHT_M`, a focal length of
  about the image's larger side, ~53 degrees of view), sideways and vertical position from their pelvis pixel. Only
  positions relative to the followed person matter: the followed person stays where the lifter put them. This is a
  picture aid, not a measurement: it is not saved to keypoints.npz.
"""
from __future__ import annotations

import numpy as np

from pipeline.geometry import DEMO_CAMERA_TO_WORLD, camera_to_world
from pipeline.motion.trajectory import world_view

PERSON_HEIGHT_M = 1.7
SMOOTHING_FRAMES = 15  # box heights jump with every detection; a moving average keeps depths steady


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average along the first axis with edge padding, same length as the input."""
    if window <= 1 or len(values) < 2:
        return values
    pad = window // 2
    padded = np.pad(values, [(pad, window - 1 - pad)] + [(0, 0)] * (values.ndim - 1), mode="edge")
    kernel = np.ones(window) / window
    return np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="valid"), 0, padded)


def camera_positions(pelvis_px: np.ndarray, box_heights_px: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Camera-space pelvis positions (P, T, 3) in metres from pelvis pixels (P, T, 2) and box heights (P, T)."""
    width, height = image_size
    focal = float(max(width, height))
    heights = np.stack([_moving_average(np.maximum(h, 1.0), SMOOTHING_FRAMES) for h in box_heights_px])
    depth = focal * PERSON_HEIGHT_M / heights
    x = (pelvis_px[..., 0] - width / 2) * depth / focal
    y = (pelvis_px[..., 1] - height / 2) * depth / focal
    return np.stack([x, y, depth], axis=-1)


def place_people(worlds: np.ndarray, pelvis_px: np.ndarray, box_heights_px: np.ndarray,
                 image_size: tuple[int, int], rotation: np.ndarray = DEMO_CAMERA_TO_WORLD) -> np.ndarray:
    """World poses (P, T, J, 3) of P people, person 0 first -> the same with persons 1.. moved beside person 0.

    Every person keeps their own ground contact (lowest joint at z = 0): only horizontal offsets are applied.
    """
    worlds = np.asarray(worlds, dtype=np.float32)
    positions = camera_positions(np.asarray(pelvis_px, np.float64), np.asarray(box_heights_px, np.float64), image_size)
    offsets = camera_to_world(positions - positions[:1], rotation)  # relative to the followed person, as the poses
    offsets[..., 2] = 0.0
    return worlds + offsets[:, :, None, :]


def world_scene(camera_poses: np.ndarray, trajectories: np.ndarray, valid: np.ndarray,
                rotation: np.ndarray = DEMO_CAMERA_TO_WORLD) -> tuple[np.ndarray, np.ndarray]:
    """Root-relative camera-space poses (P, T, J, 3) of P people (the followed person first), their pelvis
    trajectories (P, T, 3) and detection masks (P, T) -> world poses (P, T, J, 3) and pelvis paths (P, T, 3) in one
    world view: the camera-to-world `rotation` (the fixed one, or the clip's levelled one: `pipeline.motion.level`),
    and the ground under the followed person's lowest foot (`pipeline.motion.trajectory.world_view`)."""
    camera_poses = np.asarray(camera_poses)
    if camera_poses.ndim != 4 or np.shape(trajectories) != camera_poses.shape[:2] + (3,) \
            or np.shape(valid) != camera_poses.shape[:2]:
        raise ValueError(f"expected poses (P, T, J, 3), trajectories (P, T, 3) and valid (P, T), got shapes "
                         f"{camera_poses.shape}, {np.shape(trajectories)}, {np.shape(valid)}")
    followed = world_view(camera_poses[0], trajectories[0], valid[0], rotation=rotation)
    views = [followed] + [world_view(poses, path, mask, ground=followed.ground, rotation=rotation)
                          for poses, path, mask in zip(camera_poses[1:], trajectories[1:], valid[1:], strict=True)]
    return np.stack([v.poses for v in views]), np.stack([v.root for v in views])
