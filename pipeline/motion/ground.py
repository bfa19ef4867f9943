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
enough frames (someone filmed from the waist up) or whose feet are above the camera gives no floor and keeps s = 1;
with fewer than two people giving a floor nothing changes. Someone who stands on a stage, a balcony or stairs the
whole clip cannot be told from someone of another size by their feet alone; a fit that needs sizes far from what
bodies allow (its minimum above `max_cost_per_person` per person) leaves out the person whose leaving helps most and
fits the rest again: a 1 m stage among three people on the floor changes nobody's size, and two people with one of
them on a stage of 0.6 m or more keep theirs. Up to about 0.5 m the stage is taken for sizes: 0.4 m gives scales
0.89 and 1.08.

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
    # People on one floor whose sizes err as bodies do fit with a cost (the sum minimised below, in units of its
    # s.d.s) of about one per person: 0.2-1.1 in the shared recording's four views. A fit that costs more than this
    # per person has someone off the floor (a stage, a balcony, stairs): the person whose leaving lowers the cost
    # most gives no floor, and the rest are fitted again.
    max_cost_per_person: float = 3.0
    feet_percentile: float = 10.0  # of a person's lowest-ankle heights: where they stand (jumps and steps lie above)
    min_score: float = 0.3  # an ankle scored under this in 2D was not seen (as the trajectory's fit)
    min_frames: int = 5  # frames with both ankles seen that a person needs to give a floor


def ankle_joints(skeleton: Skeleton = H36M) -> list[int]:
    """The joints a person stands on: the two ankles."""
    return [skeleton.index("left_ankle"), skeleton.index("right_ankle")]


def lowest_ankle(world: np.ndarray, skeleton: Skeleton = H36M) -> np.ndarray:
    """World poses (..., J, 3), z up -> the lower ankle's height (...)."""
    return np.asarray(world)[..., ankle_joints(skeleton), 2].min(axis=-1)


def standing_heights(camera_poses: np.ndarray, paths: np.ndarray, valid: np.ndarray, scores: np.ndarray,
                     rotation: np.ndarray, config: GroundConfig = GroundConfig(),
                     skeleton: Skeleton = H36M) -> np.ndarray:
    """Each person's standing feet height in the world view with the camera at height 0 (P,), from root-relative
    camera-space poses (P, T, J, 3), pelvis paths (P, T, 3), detection masks (P, T) and 2D scores (P, T, J); NaN for
    a person whose ankles were seen (and finite) in fewer than `min_frames` detected frames, or whose feet are not
    below the camera (filmed from below: no floor to share)."""
    camera_poses, paths = np.asarray(camera_poses), np.asarray(paths)
    valid, scores = np.asarray(valid, bool), np.asarray(scores)
    people, frames = camera_poses.shape[:2] if camera_poses.ndim == 4 else (0, 0)
    if camera_poses.ndim != 4 or paths.shape != (people, frames, 3) or valid.shape != (people, frames) \
            or scores.shape != camera_poses.shape[:3]:
        raise ValueError(f"expected poses (P, T, J, 3), paths (P, T, 3), valid (P, T) and scores (P, T, J), got "
                         f"{camera_poses.shape}, {paths.shape}, {valid.shape} and {scores.shape}")
    ankles = ankle_joints(skeleton)
    lowest = lowest_ankle(camera_to_world(camera_poses + paths[:, :, None], rotation), skeleton)  # (P, T)
    seen = valid & (scores[:, :, ankles] >= config.min_score).all(axis=-1) & np.isfinite(lowest)
    heights = np.full(people, np.nan)
    for p in range(people):
        if seen[p].sum() >= config.min_frames:
            heights[p] = np.percentile(lowest[p][seen[p]], config.feet_percentile)
    heights[heights >= 0] = np.nan
    return heights


def shared_ground_scales(heights: np.ndarray, config: GroundConfig = GroundConfig()) -> np.ndarray:
    """Each person's scale (P,) from their standing heights (`standing_heights`, NaN: no floor, scale 1), so that
    everyone stands on one floor as far as their body sizes allow (the module docstring)."""
    heights = np.asarray(heights, np.float64)
    scales = np.ones(len(heights))
    floor = np.flatnonzero(np.isfinite(heights) & (heights < 0))
    while len(floor) >= 2:
        fitted, cost = _fit(heights[floor], config)
        if cost <= config.max_cost_per_person * len(floor):
            scales[floor] = fitted
            break
        without = [_fit(np.delete(heights[floor], i), config)[1] if len(floor) > 2 else 0.0 for i in range(len(floor))]
        floor = np.delete(floor, int(np.argmin(without)))
    return scales


def _fit(g: np.ndarray, config: GroundConfig) -> tuple[np.ndarray, float]:
    """The scales s minimising sum (s - 1)^2 / size_sd^2 + (s g + h)^2 / ground_sd^2 over s and the camera's height h
    above the floor (the normal equations of P + 1 unknowns), and that minimum."""
    n = len(g)
    size_w, ground_w = 1.0 / config.size_sd ** 2, 1.0 / config.ground_sd_m ** 2
    normal = np.zeros((n + 1, n + 1))
    normal[np.arange(n), np.arange(n)] = size_w + ground_w * g ** 2
    normal[:n, n] = normal[n, :n] = ground_w * g
    normal[n, n] = ground_w * n
    rhs = np.zeros(n + 1)
    rhs[:n] = size_w
    solution = np.linalg.solve(normal, rhs)
    scales, camera_height = solution[:n], solution[n]
    cost = size_w * ((scales - 1) ** 2).sum() + ground_w * ((scales * g + camera_height) ** 2).sum()
    return scales, float(cost)
