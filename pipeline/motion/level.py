"""Which way is up: the camera's tilt estimated from the lifted people, so that the world view stands them level.

Why: a single video has no calibrated camera, so the lifter returns poses in the camera's own frame, and the world
view (the 3D panel, `pose3d_world`, `trajectory_world`, the BVH) needs a camera-to-world rotation. The released demo
uses one fixed rotation, that of a Human3.6M camera looking about 11 degrees down. Real cameras are held at every
tilt: the camera distribution the field trains on (GVHMR, WHAM) has pitch ~N(5, 22.5) and roll ~N(0, 7.5) degrees,
and the shared 4-camera recording's cameras look 18-25 degrees down, one of them rolled 26 degrees. With the fixed
rotation such a world view is tilted by the same angle: people lean, a walk goes uphill, a bystander further back
floats a metre above the ground, and the BVH inherits all of it.

How: the lifter was trained on that camera distribution, so its camera-space poses carry the camera's tilt. Standing,
walking and most other motion keep the legs (ankles to hips) and the trunk (pelvis to thorax) close to vertical on
average, so their mean direction over the clip, pooled over every person, estimates the world's up in the camera
frame. Only what the camera saw counts: legs or a trunk with a joint scored under `MIN_SCORE` in 2D (someone filmed
from the waist up, whose legs the lifter invents) are left out, and so are frames whose legs and trunk disagree by
more than `MAX_DISAGREEMENT_DEG`. Frames more than `TRIM_DEG` from the first estimate (a fall, a bend) are left out
and the mean is taken again; if the frames' own verticals scatter (an untrained lifter), there is no estimate. The
world rotation then has this direction as its z and keeps the demo's heading (the camera's forward direction, made
horizontal, points the same way): for a camera tilted like a Human3.6M camera, it is the demo's rotation.

Measured (`benchmarks/bench_level.py`, the default lifter; angle between the estimated and the true vertical):
- synthetic renderings of the CMU clips (another studio, never trained on; 93 renderings through the training camera
  distribution, with detector-like noise): fixed rotation median 17.0 / mean 18.0 / 90th percentile 29.7 degrees;
  estimated 6.0 / 6.5 / 11.1 (pitch unbiased: +1.8 on average). The same estimator on the ground-truth bodies is
  4.3 / 4.9 / 10.3 off: the lifter's poses give nearly what a body-based estimate can;
- the shared real recording, both dancers pooled, per camera (cam01-cam04, the refined calibration's vertical):
  fixed 16.4, 7.9, 13.4, 28.7 degrees; estimated 6.2, 7.6, 12.1, 12.3 (version 6 of the default lifter, lifted
  through the virtual camera rolled to stand leaning people up; 7.3, 7.6, 12.2, 13.9 without that roll). The woman
  alone (upright, waving) gives 4-10 degrees; the man alone (lunging forward, trunk pitched) 13-19: bodies that lean
  for the whole clip bias it.

When the people do not look upright at all (estimated vertical more than `MAX_CORRECTION_DEG` from the fixed
rotation's: people lying, a camera on its side), the estimate is not trusted and the fixed rotation is kept, with the
reason recorded. A video whose camera is known to have been held turned a quarter or half about its axis (`--turn`,
`pipeline.orientation`) gets the fixed rotation and the usual camera's up turned with it (`picture_turn`), and its
people are levelled as an upright video's; a turn found from the people themselves is not such knowledge.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.geometry import DEMO_CAMERA_TO_WORLD, matrix_to_quaternion, quaternion_to_matrix
from pipeline.orientation import turn_rotation
from pipeline.skeleton import H36M, Skeleton

TRIM_DEG = 35.0  # frames whose own up direction is further than this from the clip's first estimate are left out
MAX_CORRECTION_DEG = 45.0  # a larger turn from the fixed rotation is not trusted (people lying, a camera on its side)
MIN_FRAMES = 5  # fewer detected frames than this give no estimate
MIN_SCORE = 0.3  # 2D joints scored below this were not seen (as the trajectory's fit): their directions do not count
# A frame whose legs and trunk point further apart than this is not measured. On the tests' two-person clip the shipped
# lifter's legs and trunks are a median 19 degrees apart, an untrained checkpoint's 135.
MAX_DISAGREEMENT_DEG = 60.0
# The frames' own verticals must agree: the length of their mean unit vector (1: all alike; random: about 0). An
# untrained lifter's scatter; people who move through every orientation (a cartwheel) give no level either.
MIN_AGREEMENT = 0.7


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


def turned_up_camera(picture_turn: int) -> np.ndarray:
    """The fixed rotation's up in the frame of a camera held turned about its axis so that its picture needs turning
    `picture_turn` degrees clockwise to stand up (`pipeline.orientation.turn_rotation`)."""
    return fixed_up_camera() @ turn_rotation(picture_turn)


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


def seen_directions(scores: np.ndarray, skeleton: Skeleton = H36M) -> np.ndarray:
    """(..., J) 2D keypoint scores -> (..., 2) bool: the legs and the trunk were seen (every joint they are made of
    scored >= MIN_SCORE). A lifter invents the legs of someone filmed from the waist up; invented legs must not
    tilt the world."""
    j = skeleton.index
    scores = np.asarray(scores)
    legs = [j(f"{side}_{part}") for side in ("left", "right") for part in ("hip", "knee", "ankle")]
    trunk = [j("pelvis"), j("thorax"), j("left_hip"), j("right_hip"), j("left_shoulder"), j("right_shoulder")]
    return np.stack([(scores[..., legs] >= MIN_SCORE).all(axis=-1), (scores[..., trunk] >= MIN_SCORE).all(axis=-1)],
                    axis=-1)


def estimate_up(camera_poses: np.ndarray, valid: np.ndarray | None = None, scores: np.ndarray | None = None,
                skeleton: Skeleton = H36M) -> np.ndarray | None:
    """The world's up direction in camera space from root-relative camera-space poses (P, T, J, 3) of P people, or
    None when fewer than MIN_FRAMES frames have a body to measure or their directions scatter (an untrained lifter).

    valid (P, T): the frames each person was detected in (None: all); scores (P, T, J): their 2D keypoint scores, so
    that legs and trunks the camera did not see are left out (None: every direction counts). A frame whose legs and
    trunk both count but point more than MAX_DISAGREEMENT_DEG apart is left out as well."""
    directions = body_up_directions(camera_poses, skeleton)  # (P, T, 2, 3)
    frames = np.ones(directions.shape[:2], bool) if valid is None else np.asarray(valid, bool)
    counted = np.isfinite(directions).all(axis=-1) & frames[..., None]  # (P, T, 2)
    if scores is not None:
        counted &= seen_directions(scores, skeleton)
    both = counted.all(axis=-1)
    apart = _angle_deg(np.nan_to_num(directions[..., 0, :]), np.nan_to_num(directions[..., 1, :]))
    counted &= ~(both & (apart > MAX_DISAGREEMENT_DEG))[..., None]
    directions, counted = directions[counted.any(axis=-1)], counted[counted.any(axis=-1)]  # (N, 2, 3), (N, 2)
    if len(directions) < MIN_FRAMES:
        return None
    directions = np.where(counted[..., None], directions, 0.0)
    per_frame = _unit(directions.sum(axis=1))  # each frame's own vertical: legs + trunk, or the one that counts

    def mean_up(rows: np.ndarray) -> np.ndarray:  # the mean leg direction plus the mean trunk direction
        sums, counts = directions[rows].sum(axis=0), counted[rows].sum(axis=0)[:, None]
        return _unit((sums / np.maximum(counts, 1)).sum(axis=0))

    up = mean_up(np.ones(len(directions), bool))
    kept = _angle_deg(per_frame, up) <= TRIM_DEG
    if kept.sum() >= MIN_FRAMES:
        up = mean_up(kept)
    if not np.isfinite(up).all() or np.linalg.norm(per_frame.mean(axis=0)) < MIN_AGREEMENT:
        return None
    return up


def level_rotation(up_camera: np.ndarray, reference: np.ndarray = DEMO_CAMERA_TO_WORLD) -> np.ndarray:
    """The camera-to-world quaternion whose world z is `up_camera` and which keeps the heading of `reference`: the
    camera's forward direction, made horizontal, points the same way in both worlds. For the reference's own up it
    is the reference."""
    up = _unit(np.asarray(up_camera, np.float64))
    forward = np.array([0.0, 0.0, 1.0])
    if abs(forward @ up) > 0.999:
        raise ValueError("a camera looking straight up or down has no heading to keep")
    level_forward = _unit(forward - (forward @ up) * up)  # horizontal in the new world
    old = quaternion_to_matrix(reference)
    heading = old @ _unit(forward - (forward @ fixed_up_camera(reference)) * fixed_up_camera(reference))
    c, s = heading[0], heading[1]  # horizontal in the old world: (cos h, sin h, 0)
    camera_basis = np.stack([level_forward, np.cross(up, level_forward), up], axis=1)  # columns
    world_basis = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])  # where those columns go
    return matrix_to_quaternion(world_basis @ camera_basis.T).astype(np.float32)


def fixed_levelling(reason: str, picture_turn: int = 0) -> Levelling:
    """The demo's fixed rotation, not levelled, and why; for a picture turned `picture_turn` degrees clockwise to
    stand its people up (`level_world`), that rotation for the camera turned back about its axis."""
    if picture_turn % 360 == 0:
        return Levelling(DEMO_CAMERA_TO_WORLD, False, fixed_up_camera(), reason)
    up = turned_up_camera(picture_turn)
    return Levelling(level_rotation(up), False, up, reason)


def level_world(camera_poses: np.ndarray, valid: np.ndarray | None = None, scores: np.ndarray | None = None,
                skeleton: Skeleton = H36M, picture_turn: int = 0) -> Levelling:
    """The clip's world rotation from its people (`estimate_up`), or the demo's fixed one, with the reason, when the
    people give no estimate or one that turns the world more than MAX_CORRECTION_DEG.

    `picture_turn`: the clockwise quarter turn (degrees) that stood the stored picture's people up for the detector
    (`pipeline.orientation`): the camera was held turned the other way about its axis, so the usual camera's up and
    the fixed rotation are turned with it (a video stored on its side gets a world view that stands up)."""
    fixed = turned_up_camera(picture_turn)
    up = estimate_up(camera_poses, valid, scores, skeleton)
    if up is None:
        return fixed_levelling(f"fewer than {MIN_FRAMES} frames whose seen legs or trunk agree on which way is up",
                               picture_turn)
    turn = float(_angle_deg(up, fixed))
    if turn > MAX_CORRECTION_DEG:
        return fixed_levelling(f"the people do not look upright, or the camera looks steeply up or down (their "
                               f"vertical is {turn:.0f} degrees from the usual camera's, more than "
                               f"{MAX_CORRECTION_DEG:.0f}): the fixed rotation is kept", picture_turn)
    return Levelling(level_rotation(up), True, up, "")
