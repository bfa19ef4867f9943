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

The virtual camera also turns about its optical axis when the person lies far from upright in the picture over the
clip (a phone held sideways without rotation metadata, a camera mounted upside down, someone filmed lying down):
lifters are trained on cameras with little roll (the default lifter: ~N(0, 7.5) degrees) and lift a rolled body
badly. The turn is the circular mean of the angle between the person's legs and trunk and the picture's up, over the
frames they were detected standing straight in (legs and trunk in line: a rolled camera rolls those too, while
a bend to the floor does not count); like the aim it is one rotation per person and clip, so it is exact (a camera
turned about its centre) and the lifter still sees the body's own lean and motion. A body that turns over
within the clip (a somersault, a handstand) is rolled upright frame by frame where it leans far (`turnover_turns`).
Measured in `benchmarks/bench_roll.py` (held-out CMU, P-MPJPE): rolled 90 / 180 degrees 124.7 / 169.5 mm as the
picture is, 62.9 through the rolled camera (upright: 63.7 -> 63.1); a somersault 79.2 -> 63.2; whole clips
69.94 -> 69.20.
"""
from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


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


def picture_angles(directions: np.ndarray) -> np.ndarray:
    """(...) angles (radians) between (..., 2) picture directions (y down) and the picture's up, positive when the
    direction leans clockwise on screen (towards +x)."""
    return np.arctan2(directions[..., 0], -directions[..., 1])


def torso_angles(keypoints: np.ndarray) -> np.ndarray:
    """(T,) picture_angles of each frame's pelvis -> thorax direction (Human3.6M joints 0 -> 8) of (T, 17, 2)
    picture points."""
    return picture_angles(keypoints[:, 8] - keypoints[:, 0])


def leg_angles(keypoints: np.ndarray) -> np.ndarray:
    """(T,) picture_angles of each frame's mid-ankles -> pelvis direction (Human3.6M ankles 3 and 6, pelvis 0)."""
    return picture_angles(keypoints[:, 0] - (keypoints[:, 3] + keypoints[:, 6]) / 2)


def circular_mean(angles: np.ndarray) -> float:
    """The mean direction of angles (radians), which a plain mean gets wrong across +-180 degrees."""
    return float(np.arctan2(np.sin(angles).mean(), np.cos(angles).mean()))


def _wrap(angles: np.ndarray) -> np.ndarray:
    """Angles (radians) brought into [-pi, pi)."""
    return (angles + np.pi) % (2 * np.pi) - np.pi


def roll_rotation(angle: float | np.ndarray) -> np.ndarray:
    """The (3, 3) rotation that turns the camera about its optical axis so that the picture turns by `angle` radians
    about the principal point (clockwise on screen for angle > 0, as torso_angles counts); (T, 3, 3) for (T,)
    angles."""
    c, s = np.cos(angle), np.sin(angle)
    zero, one = np.zeros_like(c), np.ones_like(c)
    return np.stack([np.stack([c, -s, zero], -1), np.stack([s, c, zero], -1), np.stack([zero, zero, one], -1)], -2)


def turn_picture(points: np.ndarray, angle: float | np.ndarray, centre: tuple[float, float]) -> np.ndarray:
    """(T, ..., 2) picture points as a camera rolled by `angle` (roll_rotation) about its principal point `centre`
    sees them: the picture turned about that point; (T,) angles turn each frame by its own."""
    angle = np.asarray(angle, np.float64)
    points = np.asarray(points, np.float64)
    turn = roll_rotation(angle)[..., :2, :2]
    turn = turn.reshape(angle.shape + (1,) * (points.ndim - 1 - angle.ndim) + (2, 2))  # one per frame, if given
    return np.einsum("...lk,...k->...l", turn, points - centre) + centre


# The virtual camera turns the person upright only when they lean further than this from the picture's up on
# average over the frames they stand straight in; within it the picture is left as it is. The default lifter trained
# on camera rolls of ~N(0, 7.5) degrees (2.7 standard deviations: 20 degrees). On held-out CMU turning the whole clip
# upright pays from 10 degrees of roll on (the evaluation's 4,000 frames, P-MPJPE: 70.4 -> 70.1 mm at 10, 72.1 ->
# 70.1 at 20, 74.9 -> 70.1 at 30; `benchmarks/bench_roll.py` at this threshold: 65.2 -> 63.5 at 20, 74.5 -> 62.9 at
# 45); on the real recording thresholds of 0, 10, 20 and 30 degrees score 101.1, 101.0, 101.2 and 102.3 mm.
UPRIGHT_MIN_ROLL_DEG = 20.0
# A frame stands straight when its legs (mid-ankles -> pelvis) and trunk (pelvis -> thorax) point within this of each
# other; a clip with straight frames in fewer than STRAIGHT_MIN_SHARE of its frames is not turned. Measured against
# the trunk alone (its mean over every frame, which a person bending to the floor and back drags over): held-out CMU,
# whole clips, 69.94 mm as the picture is, 69.92 by the trunk, 69.87 by the straight frames (one clip bending
# repeatedly: 68.5 -> 75.4 by the trunk, unturned by the straight frames); the real recording 101.3 -> 101.2 mm.
STRAIGHT_DEG = 25.0
STRAIGHT_MIN_SHARE = 0.1
# A person whose body tips further than this from the clip's upright at some frame (a somersault, a cartwheel, a
# handstand, a dive in an otherwise upright clip: measured from the mid-ankles to the mid-shoulders, which a deep
# forward bend keeps upright) is turned upright frame by frame wherever they lean further than TURNOVER_TURN_FROM_DEG:
# fully from TURNOVER_MIN_DEG on, partly in between (so the lifter sees at most that lean), the angle smoothed over
# TURNOVER_SMOOTHING_FRAMES either side. On held-out CMU (benchmarks/bench_roll.py) lifting each frame upright beats
# any blend of whole-clip turns 45 degrees apart by far (a camera spinning once a second, the first 30 frames of each
# clip: 56 against 93 mm), since a lifting window over a turning body is itself turning, whatever the turn. The two
# angles (bench_roll, demo.py's way; from/min): 45/90 upright 63.4 mm, spinning once a second 67.3, a somersault
# 64.1; 20/45: 63.1, 63.6, 63.2; 10/30: 62.9, 63.5, 63.1; the real recording 101.2 mm with each (nobody there tips
# that far).
TURNOVER_MIN_DEG = 45.0
TURNOVER_TURN_FROM_DEG = 20.0
TURNOVER_SMOOTHING_FRAMES = 4


def upright_roll(keypoints: np.ndarray) -> float:
    """The angle (radians) by which to turn (T, 17, 2) picture points (Human3.6M, finite rows only) about the
    principal point to stand the person up: minus the circular mean of their leg and trunk directions over the
    frames they stand straight in (STRAIGHT_DEG), or 0.0 when it leans less than UPRIGHT_MIN_ROLL_DEG or too few
    frames are straight (STRAIGHT_MIN_SHARE)."""
    if len(keypoints) == 0:
        return 0.0
    legs, trunk = leg_angles(keypoints), torso_angles(keypoints)
    straight = np.abs(_wrap(legs - trunk)) < np.radians(STRAIGHT_DEG)
    if straight.sum() < max(STRAIGHT_MIN_SHARE * len(keypoints), 1):
        return 0.0
    roll = -circular_mean(np.concatenate([legs[straight], trunk[straight]]))
    return roll if abs(np.degrees(roll)) > UPRIGHT_MIN_ROLL_DEG else 0.0


def display_rotation_fix(clip_roll: float) -> int | None:
    """The rotation metadata that would show upright a video whose people lie as `clip_roll` (upright_roll) stands
    up: ffmpeg's `-display_rotation` (degrees counter-clockwise) 90, 180 or 270, the quarter turn nearest the roll;
    None when the roll is nearer no turn (a tilted camera, a leaning person)."""
    quarter_turns = int(np.round(-np.degrees(clip_roll) / 90.0)) % 4
    return None if quarter_turns == 0 else 90 * quarter_turns


def body_angles(keypoints: np.ndarray) -> np.ndarray:
    """(T,) angles (radians, as torso_angles counts) of each frame's mid-ankles -> mid-shoulders direction (Human3.6M
    ankles 3 and 6, shoulders 11 and 14): upright for a standing person and for one bent forward to their toes,
    upside down for a handstand."""
    return picture_angles((keypoints[:, 11] + keypoints[:, 14] - keypoints[:, 3] - keypoints[:, 6]) / 2)


def smoothed(angles: np.ndarray, half_window: int = TURNOVER_SMOOTHING_FRAMES) -> np.ndarray:
    """(T,) angles (radians), each the circular mean over the frames `half_window` either side (fewer at the ends)."""
    unit = np.stack([np.sin(angles), np.cos(angles)], axis=-1)
    summed = np.concatenate([np.zeros((1, 2)), np.cumsum(unit, axis=0)])
    frames = np.arange(len(angles))
    low, high = np.maximum(frames - half_window, 0), np.minimum(frames + half_window + 1, len(angles))
    window = summed[high] - summed[low]
    return np.arctan2(window[:, 0], window[:, 1])


def turnover_turns(keypoints: np.ndarray, clip_roll: float = 0.0) -> np.ndarray:
    """(T,) further camera rolls (radians) that stand up each frame of (T, 17, 2) finite picture points (Human3.6M)
    already rolled by `clip_roll`: all 0.0 unless the body tips past TURNOVER_MIN_DEG from upright at some frame; then
    each frame's own smoothed lean beyond TURNOVER_TURN_FROM_DEG (all of it beyond TURNOVER_MIN_DEG)."""
    if not len(keypoints):
        return np.zeros(0)
    lean = _wrap(smoothed(body_angles(keypoints)) + clip_roll)  # what is left after the clip's roll
    size = np.abs(lean)
    start, full = np.radians(TURNOVER_TURN_FROM_DEG), np.radians(TURNOVER_MIN_DEG)
    if size.max() <= full:
        return np.zeros(len(keypoints))
    return -np.sign(lean) * np.where(size >= full, size, np.clip(size - start, 0.0, None) * full / (full - start))


def lift_upright(lift, points: np.ndarray, centre: tuple[float, float], frames: np.ndarray | None = None,
                 upright: bool = True, quiet: bool = False, **lift_options) -> np.ndarray:
    """`lift` ((T, 17, 2) picture points -> (T, 17, 3) camera-frame poses, taking `lift_options`) of `points`, each
    frame as a camera rolled about `centre` sees it, turned back into this camera's frame -> (T, 17, 3). The roll:
    the clip's upright_roll over `frames`, plus each frame's turnover_turns. upright=False, or an upright clip: one
    plain `lift`. `quiet`: no log lines about the turns (a second pass over a track already announced)."""
    if not upright:
        return lift(points, **lift_options)
    chosen = points if frames is None or len(frames) == 0 else points[frames]
    clip_roll = upright_roll(chosen)
    turnover = turnover_turns(points, clip_roll)
    if clip_roll == 0.0 and not turnover.any():
        return lift(points, **lift_options)
    if clip_roll != 0.0 and not quiet:
        fix = display_rotation_fix(clip_roll)
        hint = "" if fix is None else (
            f"; if the whole video is turned, --turn {(360 - fix) % 360} has the detector look at it upright, and "
            f"ffmpeg -display_rotation:v:0 {fix} -i IN -c copy OUT gives it the rotation metadata that stands it up")
        logger.info("a person lies %.0f degrees from upright in the picture: lifted through a virtual camera turned "
                    "to stand them up (--no-upright: not turned)%s", abs(np.degrees(clip_roll)), hint)
    if turnover.any() and not quiet:
        logger.info("a person tips far over (a somersault, a handstand, a dive): %d of %d frames lifted through a "
                    "virtual camera turned up to %.0f degrees further to stand them up (--no-upright: not turned)",
                    np.count_nonzero(turnover), len(turnover), np.degrees(np.abs(turnover).max()))
    angles = clip_roll + turnover
    poses = lift(turn_picture(points, angles, centre).astype(np.float32), **lift_options)
    return np.einsum("tjk,tkl->tjl", poses, roll_rotation(angles)).astype(np.float32)  # X = R^T X_turned, per frame


def lift_aimed(lifter, keypoints_px: np.ndarray, width: int, height: int, focal_px: float,
               frames: np.ndarray | None = None, upright: bool = True, quiet: bool = False,
               **lift_options) -> np.ndarray:
    """`lifter.lift` of a (T, 17, 2) Human3.6M pixel track through a virtual camera aimed at the track's mean
    position over `frames` (default: all), principal point at the image centre, and (`upright`) rolled about its
    axis to stand the person up where they lie far from upright (`lift_upright`) -> (T, 17, 3) root-relative poses
    in the real camera's frame, metres. `lift_options` go to `lifter.lift` (flip, batch_size, progress, stride)."""
    keypoints_px = np.asarray(keypoints_px)
    chosen = keypoints_px if frames is None or len(frames) == 0 else keypoints_px[frames]
    center = np.nanmean(chosen.reshape(-1, 2), axis=0)
    principal = (width / 2.0, height / 2.0)
    rotation = aim_rotation(center, focal_px, principal)
    warped = warp_to_virtual(keypoints_px, rotation, focal_px, principal).astype(np.float32)

    def lift(points: np.ndarray, **options) -> np.ndarray:
        return lifter.lift(points, width, height, **options).camera

    poses = lift_upright(lift, warped, principal, frames, upright, quiet, **lift_options)
    return (poses @ rotation).astype(np.float32)  # row vectors: X_real = R^T X_virtual
