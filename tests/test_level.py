"""The levelled world view: the camera's tilt estimated from the people's legs and trunks (`pipeline.motion.level`)."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.geometry import DEMO_CAMERA_TO_WORLD, matrix_to_quaternion, quaternion_to_matrix
from pipeline.motion.level import (
    Levelling,
    estimate_up,
    fixed_levelling,
    fixed_up_camera,
    level_rotation,
    level_world,
)
from pipeline.skeleton import H36M

J = H36M.index


def _rotation(axis: str, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return {"x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]), "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])}[axis]


def _walking_person(frames: int = 60) -> np.ndarray:
    """(T, 17, 3) root-relative poses in a level camera's frame (x right, y down, z forward): a person facing the
    camera swinging their legs and arms, trunk upright, as a walk seen from the front."""
    phase = np.linspace(0, 4 * np.pi, frames)
    poses = np.zeros((frames, 17, 3))
    swing = 0.25 * np.sin(phase)
    for side, x in (("left", 0.12), ("right", -0.12)):
        sign = 1 if side == "left" else -1
        poses[:, J(f"{side}_hip")] = [x, 0.0, 0.0]
        poses[:, J(f"{side}_knee"), 0] = x
        poses[:, J(f"{side}_knee"), 1] = 0.45 * np.cos(sign * swing)
        poses[:, J(f"{side}_knee"), 2] = 0.45 * np.sin(sign * swing)
        poses[:, J(f"{side}_ankle"), 0] = x
        poses[:, J(f"{side}_ankle"), 1] = 0.9 * np.cos(sign * swing)
        poses[:, J(f"{side}_ankle"), 2] = 0.9 * np.sin(sign * swing)
        poses[:, J(f"{side}_shoulder")] = [1.5 * x, -0.5, 0.0]
        poses[:, J(f"{side}_elbow"), 0] = 1.6 * x
        poses[:, J(f"{side}_elbow"), 1] = -0.5 + 0.3 * np.cos(-sign * swing)
        poses[:, J(f"{side}_elbow"), 2] = 0.3 * np.sin(-sign * swing)
        poses[:, J(f"{side}_wrist")] = poses[:, J(f"{side}_elbow")] + [0.0, 0.25, 0.05]
    poses[:, J("spine")] = [0.0, -0.25, 0.0]
    poses[:, J("thorax")] = [0.0, -0.5, 0.0]
    poses[:, J("neck_nose")] = [0.0, -0.6, -0.05]
    poses[:, J("head")] = [0.0, -0.7, 0.0]
    return poses


def _filmed(poses: np.ndarray, pitch_deg: float, roll_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """The poses as a camera looking `pitch_deg` down and rolled `roll_deg` sees them, and the world's up there."""
    turn = _rotation("z", roll_deg) @ _rotation("x", pitch_deg)  # level camera -> tilted camera
    return poses @ turn.T, turn @ np.array([0.0, -1.0, 0.0])


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))))


@pytest.mark.parametrize(("pitch", "roll"), [(0.0, 0.0), (25.0, 0.0), (-10.0, 8.0), (40.0, -20.0)])
def test_a_walking_person_gives_the_camera_tilt_and_the_rotation_stands_them_upright(pitch, roll):
    poses, up = _filmed(_walking_person(), pitch, roll)
    levelling = level_world(poses[None])
    assert levelling.levelled and levelling.reason == ""
    assert _angle(levelling.up_camera, up) < 0.5
    assert levelling.camera_pitch_deg == pytest.approx(pitch, abs=0.5)
    assert levelling.camera_roll_deg == pytest.approx(roll, abs=0.5)
    world = poses @ quaternion_to_matrix(levelling.rotation).T
    trunk = world[:, J("thorax")] - world[:, J("pelvis")]
    np.testing.assert_allclose(trunk[:, :2], 0, atol=0.01)  # the upright trunk is vertical in the world
    assert (trunk[:, 2] > 0).all()  # and points up


def test_the_fixed_rotation_is_kept_for_a_camera_tilted_like_it_and_the_heading_is_the_demos():
    fixed_up = fixed_up_camera()
    rotation = level_rotation(fixed_up)
    assert min(np.abs(rotation - DEMO_CAMERA_TO_WORLD).max(), np.abs(rotation + DEMO_CAMERA_TO_WORLD).max()) < 1e-6
    # Whatever the camera's pitch and roll, the camera's forward direction keeps its compass heading in the world.
    demo = quaternion_to_matrix(DEMO_CAMERA_TO_WORLD)
    forward = np.array([0.0, 0.0, 1.0])
    for pitch, roll in ((-20.0, 0.0), (25.0, 26.0), (40.0, -20.0), (5.0, 30.0)):
        up = _rotation("z", roll) @ _rotation("x", pitch) @ np.array([0.0, -1.0, 0.0])
        levelled = quaternion_to_matrix(level_rotation(up))
        assert levelled @ up == pytest.approx([0, 0, 1], abs=1e-6)
        heading = [np.arctan2(*(m @ forward)[[1, 0]]) for m in (demo, levelled)]
        assert heading[0] == pytest.approx(heading[1], abs=1e-4)  # float32 quaternions
    with pytest.raises(ValueError, match="straight"):
        level_rotation(np.array([0.0, 0.0, -1.0]))


def test_frames_of_a_fall_are_trimmed_and_people_lying_down_keep_the_fixed_rotation():
    poses, up = _filmed(_walking_person(80), 20.0, 5.0)
    fallen = _filmed(_walking_person(20), 20.0 - 90.0, 5.0)[0]  # the same body turned to lie along the camera
    mixed = np.concatenate([poses, fallen])
    assert _angle(estimate_up(mixed[None]), up) < 0.5  # the 20 lying frames are left out
    lying = level_world(fallen[None])
    assert not lying.levelled and "upright" in lying.reason and "steeply" in lying.reason
    assert np.array_equal(lying.rotation, DEMO_CAMERA_TO_WORLD)


def test_no_estimate_without_enough_detected_frames_and_nan_bodies_are_skipped():
    poses, up = _filmed(_walking_person(10), 15.0, 0.0)
    valid = np.zeros((1, 10), bool)
    valid[0, :3] = True
    result = level_world(poses[None], valid)
    assert not result.levelled and "frames" in result.reason and "agree" in result.reason
    broken = poses.copy()
    broken[:4] = 0.0  # an untrained lifter's zero poses have no direction
    valid[0, :] = True
    assert _angle(estimate_up(broken[None], valid), up) < 0.5


def test_two_people_are_pooled_frame_by_frame():
    """Neither person alone has the 5 frames an estimate needs; together they have 6."""
    poses, up = _filmed(_walking_person(60), 30.0, -10.0)
    both = np.stack([poses, poses[::-1]])
    valid = np.zeros((2, 60), bool)
    valid[0, :3], valid[1, 10:13] = True, True
    assert estimate_up(both[:1], valid[:1]) is None and estimate_up(both[1:], valid[1:]) is None
    assert _angle(estimate_up(both, valid), up) < 0.5


def test_legs_the_camera_did_not_see_do_not_tilt_the_world():
    """Someone filmed from the waist up: the lifter invents the legs, here 40 degrees off; the 2D scores say so."""
    poses, up = _filmed(_walking_person(), 15.0, 5.0)
    invented = poses.copy()
    legs = [J(f"{side}_{part}") for side in ("left", "right") for part in ("knee", "ankle")]
    invented[:, legs] = invented[:, legs] @ _rotation("x", 40.0).T
    scores = np.ones((1, len(poses), 17))
    assert _angle(estimate_up(invented[None]), up) > 10  # the invented legs pull the vertical away
    scores[..., legs] = 0.05  # below the score the trajectory fit trusts
    assert _angle(estimate_up(invented[None], scores=scores), up) < 0.5
    assert level_world(invented[None], scores=scores).levelled


def test_an_untrained_lifters_scattered_poses_give_no_level():
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(1, 60, 17, 3))
    result = level_world(noise)
    assert not result.levelled and "agree" in result.reason


def test_matrix_and_quaternion_convert_both_ways():
    rng = np.random.default_rng(0)
    for _ in range(50):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        back = matrix_to_quaternion(quaternion_to_matrix(q))
        assert back[0] >= 0 and min(np.abs(back - q).max(), np.abs(back + q).max()) < 1e-9


def test_the_record_says_what_was_done():
    record = fixed_levelling("turned off (--no-level)").record()
    assert record["levelled"] is False and record["reason"] == "turned off (--no-level)"
    assert record["camera_pitch_deg"] == pytest.approx(10.7, abs=0.1)  # the Human3.6M camera looks ~11 degrees down
    poses, _ = _filmed(_walking_person(), 22.0, 3.0)
    record = level_world(poses[None]).record()
    assert isinstance(record, dict) and record["levelled"] and "reason" not in record
    assert record["camera_pitch_deg"] == pytest.approx(22.0, abs=0.5) and len(record["rotation"]) == 4
    assert isinstance(level_world(poses[None]), Levelling)
