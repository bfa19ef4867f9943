"""People who share a floor: each person's size, and so their distance, from the ground under everyone's feet.

Why: the trajectory takes each person's distance from their body size (`pipeline.motion.trajectory`): someone smaller
than the body the lifter gives them is placed too far away, someone larger too near, by the ratio. With one person
that only scales the scene. With several it moves them against each other: whoever is placed too far sinks below the
others' floor and the others float above it (the camera looks down on them). On the shared 4-camera recording the
default lifter gives the woman a body about 20 % too tall and the man one about right, so in every view she is placed
13-27 % further away than she is, relative to him, and the dancer further back floats 0.4-0.5 m above the other's
ground in two of the views and sinks 0.2-0.3 m below it in the other two.

How: scaling a person's root-relative pose and their pelvis path by the same factor s leaves their image unchanged
(the lifter cannot tell a small near person from a large far one) and moves their feet from g to s g below the
camera. People standing on one floor therefore give a second estimate of each scale, beside the body-size prior. With
the world view levelled (`pipeline.motion.level`), g_p is a low percentile of person p's lowest-ankle height over
the frames their ankles were seen (the camera at height 0), and the scales s_p and the camera's height h above the
floor minimise

    sum_p (s_p - 1)^2 / SIZE_SD^2 + (s_p g_p + h)^2 / GROUND_SD^2,

a linear least-squares problem in P + 1 unknowns. SIZE_SD is how far a body may be from the lifter's (adult heights
spread about 7 %, and the lifter's own size errors); GROUND_SD is how far one person's standing feet may be from
another's on the levelled floor (the levelled vertical is 5-14 degrees off on the shared recording, which tilts the
floor by about 0.1 m per metre between people, plus steps and uneven ground). A person whose ankles were not seen in
enough frames, someone filmed from the waist up, gives no floor and keeps s = 1; with fewer than two people giving a
floor nothing changes. Someone standing on a box or a stage all along is pulled towards the others' floor by at most
about what SIZE_SD allows.

Measured (version 6 of the default lifter, `demo.py --all-people` on each view of the shared recording; each dancer's
median distance against the triangulation's, and the woman's ratio over the man's, which the unknown focal length
does not change): relative error |log(ratio)| per view 0.12 / 0.22 / 0.15 / 0.24 alone, 0.05 / 0.01 / 0.07 / 0.08
sharing the floor; every person's median feet height -0.08 to 0.16 m above the world view's ground, against -0.30 to
0.54. With the calibrated focal length her distance errs by 8-18 % instead of 20-27 %, his by 7-17 % instead of -1
to +7 % (mean |log| of both 0.11 against 0.12). With GROUND_SD 0.05 m the relative errors are alike (0.05 mean),
with 0.2 m twice as large (0.09). On the sample clip (a jump off a box, a passer-by) the two scales are 0.97 and
1.02.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.geometry import camera_to_world
from pipeline.skeleton import H36M, Skeleton


@dataclass(frozen=True)
class GroundConfig:
    size_sd: float = 0.1  # spread of a body's scale around the lifter's (relative)
    ground_sd_m: float = 0.1  # spread of people's standing feet around one floor (metres)
    feet_percentile: float = 10.0  # of a person's lowest-ankle heights: where they stand (jumps and steps lie above)
    min_score: float = 0.3  # an ankle scored under this in 2D was not seen (as the trajectory's fit)
    min_frames: int = 5  # frames with both ankles seen that a person needs to give a floor


def standing_heights(camera_poses: np.ndarray, paths: np.ndarray, valid: np.ndarray, scores: np.ndarray,
                     rotation: np.ndarray, config: GroundConfig = GroundConfig(),
                     skeleton: Skeleton = H36M) -> np.ndarray:
    """Each person's standing feet height in the world view with the camera at height 0 (P,), from root-relative
    camera-space poses (P, T, J, 3), pelvis paths (P, T, 3), detection masks (P, T) and 2D scores (P, T, J); NaN for
    a person whose ankles were seen in fewer than `min_frames` detected frames."""
    ankles = [skeleton.index("left_ankle"), skeleton.index("right_ankle")]
    heights = np.full(len(camera_poses), np.nan)
    for p, (poses, path, mask, score) in enumerate(zip(camera_poses, paths, valid, scores, strict=True)):
        seen = np.asarray(mask, bool) & (np.asarray(score)[:, ankles] >= config.min_score).all(axis=1)
        if seen.sum() < config.min_frames:
            continue
        world = camera_to_world(poses[seen][:, ankles] + path[seen][:, None], rotation)
        heights[p] = np.percentile(world[..., 2].min(axis=1), config.feet_percentile)
    return heights


def shared_ground_scales(heights: np.ndarray, config: GroundConfig = GroundConfig()) -> np.ndarray:
    """Each person's scale (P,) from their standing heights (`standing_heights`, NaN: no floor, scale 1), so that
    everyone stands on one floor as far as their body sizes allow (the module docstring)."""
    heights = np.asarray(heights, np.float64)
    scales = np.ones(len(heights))
    floor = np.flatnonzero(np.isfinite(heights))
    if len(floor) < 2:
        return scales
    g = heights[floor]
    n = len(g)
    size_w, ground_w = 1.0 / config.size_sd ** 2, 1.0 / config.ground_sd_m ** 2
    normal = np.zeros((n + 1, n + 1))  # unknowns: the scales, then the camera's height above the floor
    rhs = np.zeros(n + 1)
    normal[np.arange(n), np.arange(n)] = size_w + ground_w * g ** 2
    normal[:n, n] = normal[n, :n] = ground_w * g
    normal[n, n] = ground_w * n
    rhs[:n] = size_w
    scales[floor] = np.linalg.solve(normal, rhs)[:n]
    return scales
