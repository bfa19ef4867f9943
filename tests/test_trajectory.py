"""Pelvis trajectory from 2D keypoints and root-relative 3D joints, and the world view that shows it.

Known 3D motion (a synthesised walk along an arc, and a real CMU mocap walk when ../shared is there) is filmed by a
known pinhole camera; the 2D gets pixel noise, wrong joints and undetected frames, the "lifted" 3D a wrong body size
and per-joint noise. The recovered path must match the true one within a few percent once that one global scale is
taken out."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.geometry import (
    DEMO_CAMERA_TO_WORLD,
    camera_to_world,
    matrix_to_quaternion,
    quaternion_inverse,
    quaternion_to_matrix,
)
from pipeline.motion.trajectory import (
    TrajectoryConfig,
    estimate_trajectory,
    fit_translations,
    focal_length_px,
    local_linear_smooth,
    world_view,
)
from pipeline.scene import world_scene
from pipeline.skeleton import H36M

J = H36M.index
SIZE = (1920, 1080)
FPS = 30.0


def walking_clip(frames: int = 150) -> np.ndarray:
    """(T, 17, 3) world joints (z up, metres, feet near z = 0) of a stick figure walking 4 m along an arc."""
    t = np.arange(frames) / FPS
    angle = np.radians(-40 + 80 * np.arange(frames) / max(frames - 1, 1))
    phase = 2 * np.pi * 0.9 * t  # 0.9 strides per second
    pelvis = np.stack([3 * np.sin(angle), 3 - 3 * np.cos(angle), 0.93 + 0.03 * np.cos(2 * phase)], axis=-1)
    forward = np.stack([np.cos(angle), np.sin(angle), np.zeros(frames)], axis=-1)
    up = np.array([0.0, 0.0, 1.0])
    left = np.cross(up, forward)

    def at(base, ahead=0.0, leftwards=0.0, upwards=0.0):
        ahead, leftwards, upwards = (np.broadcast_to(np.asarray(v, np.float64), (frames,))[:, None]
                                     for v in (ahead, leftwards, upwards))
        return base + ahead * forward + leftwards * left + upwards * up

    joints = np.zeros((frames, 17, 3))
    joints[:, J("pelvis")] = pelvis
    for side, sign in (("left", 1.0), ("right", -1.0)):
        swing = 0.45 * np.sin(phase) * sign
        bend = 0.35 * np.maximum(0.0, np.sin(phase + np.pi / 2) * sign)
        hip = at(pelvis, leftwards=0.13 * sign)
        knee = at(hip, 0.45 * np.sin(swing), upwards=-0.45 * np.cos(swing))
        ankle = at(knee, 0.43 * np.sin(swing - bend), upwards=-0.43 * np.cos(swing - bend))
        shoulder = at(pelvis, leftwards=0.19 * sign, upwards=0.52)
        arm = -0.35 * np.sin(phase) * sign
        elbow = at(shoulder, 0.28 * np.sin(arm), 0.03 * sign, -0.28 * np.cos(arm))
        wrist = at(elbow, 0.25 * np.sin(arm + 0.3), upwards=-0.25 * np.cos(arm + 0.3))
        for name, value in (("hip", hip), ("knee", knee), ("ankle", ankle), ("shoulder", shoulder),
                            ("elbow", elbow), ("wrist", wrist)):
            joints[:, J(f"{side}_{name}")] = value
    joints[:, J("spine")] = at(pelvis, upwards=0.24)
    joints[:, J("thorax")] = at(pelvis, upwards=0.5)
    joints[:, J("neck_nose")] = at(pelvis, 0.05, upwards=0.62)
    joints[:, J("head")] = at(pelvis, 0.02, upwards=0.74)
    joints[..., 2] -= joints[:, [J("left_ankle"), J("right_ankle")], 2].min() - 0.02
    return joints


def look_at(position: np.ndarray, target: np.ndarray) -> np.ndarray:
    """World (z up) -> camera (x right, y down, z forward) rotation of a camera at `position` looking at `target`."""
    forward = (target - position) / np.linalg.norm(target - position)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    return np.stack([right, np.cross(forward, right), forward])


def demo_camera(world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World joints (..., 3) seen by a camera 7 m away whose orientation is the project's fixed camera-to-world
    rotation: its world view is the true world, shifted. Returns (camera-space joints, camera position)."""
    rotation = quaternion_to_matrix(DEMO_CAMERA_TO_WORLD)  # camera -> world
    centre = world.reshape(-1, 3).mean(axis=0)
    position = centre - 7.0 * rotation[:, 2]
    return (world - position) @ rotation, position


def film(world: np.ndarray, seed: int = 0, body_scale: float = 0.92):
    """Film world joints (T, 17, 3) with a known camera; return (true pelvis path in camera space, keypoints,
    scores, lifted root-relative 3D, valid, the undetected frames). Adds 2 px noise, a wrong joint in 10 frames,
    8 undetected frames (2D garbage, score 0) and a lifter that sees a body 8 % small with 1.5 cm noise."""
    rng = np.random.default_rng(seed)
    centre = world.reshape(-1, 3).mean(axis=0)
    position = centre + np.array([1.5, -6.5, 0.7])
    rotation = look_at(position, centre)
    camera = (world - position) @ rotation.T
    focal = focal_length_px(*SIZE)
    keypoints = camera[..., :2] / camera[..., 2:] * focal + np.array(SIZE) / 2
    frames = len(world)
    keypoints = keypoints + rng.normal(0, 2.0, keypoints.shape)
    scores = rng.uniform(0.6, 1.0, (frames, 17))
    for t in rng.choice(frames, min(10, frames // 3), replace=False):  # a confidently wrong joint (a limb swap)
        keypoints[t, rng.integers(1, 17)] += rng.normal(0, 150, 2)
    missing = np.arange(frames // 3, frames // 3 + 8) if frames >= 30 else np.arange(0)
    valid = np.ones(frames, bool)
    valid[missing] = False
    scores[missing] = 0.0
    keypoints[missing] += rng.normal(0, 60, (len(missing), 17, 2))
    truth = camera[:, J("pelvis")]
    lifted = (camera - truth[:, None]) * body_scale + rng.normal(0, 0.015, camera.shape)
    lifted -= lifted[:, :1]
    return truth, keypoints, scores, lifted, valid, missing


def relative_errors(estimate: np.ndarray, truth: np.ndarray) -> tuple[float, np.ndarray]:
    """The best single scale s (least squares) and |s * estimate - truth| / |truth| per frame."""
    scale = float((estimate * truth).sum() / (estimate * estimate).sum())
    return scale, np.linalg.norm(scale * estimate - truth, axis=-1) / np.linalg.norm(truth, axis=-1)


def check_recovered_path(world: np.ndarray) -> None:
    truth, keypoints, scores, lifted, valid, missing = film(world)
    trajectory = estimate_trajectory(keypoints, scores, lifted, SIZE, FPS, valid=valid)
    scale, errors = relative_errors(trajectory.camera.astype(np.float64), truth)
    # The lifter saw an 8 % small body, so the whole path is 8 % near: one scale of 1 / 0.92 takes it out.
    assert scale == pytest.approx(1 / 0.92, rel=0.02)
    assert np.median(errors) < 0.01 and errors.max() < 0.03, (np.median(errors), errors.max())
    assert errors[missing].max() < 0.03  # interpolated across the undetected frames ...
    np.testing.assert_array_equal(trajectory.valid, valid)  # ... which stay marked
    assert np.isnan(trajectory.fitted[missing]).all() and np.isfinite(trajectory.fitted[valid]).all()
    # The smoothing helps: the per-frame fits are further off than the smoothed path.
    _, raw_errors = relative_errors(trajectory.fitted[valid].astype(np.float64), truth[valid])
    assert np.median(raw_errors) > 1.5 * np.median(errors[valid])
    assert np.nanmedian(trajectory.reprojection_px) < 15


def test_a_filmed_synthetic_walk_is_recovered_within_a_few_percent_after_one_scale():
    check_recovered_path(walking_clip())


@pytest.fixture(scope="module")
def cmu_walk(cmu_clip) -> np.ndarray:
    """CMU subject 02, trial 01 (a walk) as Human3.6M-17 world joints, z up, 30 frames/s."""
    return cmu_clip("02_01")


def test_a_filmed_real_mocap_walk_is_recovered_within_a_few_percent_after_one_scale(cmu_walk):
    assert np.ptp(cmu_walk[:, 0, :2], axis=0).max() > 3.0  # the clip does travel (3.4 m)
    check_recovered_path(cmu_walk)


def test_focal_length_defaults_to_the_diagonal_and_takes_a_known_lens():
    assert focal_length_px(1920, 1080) == pytest.approx(math.hypot(1920, 1080))
    assert focal_length_px(1080, 1920) == focal_length_px(1920, 1080)  # the same lens held upright
    assert focal_length_px(1920, 1080, fov_deg=90.0) == pytest.approx(math.hypot(1920, 1080) / 2)
    assert focal_length_px(1920, 1080, fov_deg=90.0, focal_px=1500.0) == 1500.0
    with pytest.raises(ValueError, match="field of view"):
        focal_length_px(1920, 1080, fov_deg=0.0)
    with pytest.raises(ValueError, match="focal length"):
        focal_length_px(1920, 1080, focal_px=-3.0)
    with pytest.raises(ValueError, match="frame size"):
        focal_length_px(0, 1080)


def test_depth_scales_with_the_focal_length_and_the_image_position_does_not():
    truth, keypoints, scores, lifted, valid, _ = film(walking_clip(60))
    default = estimate_trajectory(keypoints, scores, lifted, SIZE, FPS, valid=valid).camera
    longer = estimate_trajectory(keypoints, scores, lifted, SIZE, FPS, valid=valid,
                                 focal_px=1.2 * focal_length_px(*SIZE)).camera
    np.testing.assert_allclose(longer[:, 2] / default[:, 2], 1.2, rtol=0.01)
    focal = focal_length_px(*SIZE)
    np.testing.assert_allclose(1.2 * focal * longer[:, :2] / longer[:, 2:], focal * default[:, :2] / default[:, 2:],
                               atol=0.5)  # pixels: the pelvis stays where the camera saw it


def test_a_wrong_joint_barely_moves_the_robust_fit():
    truth, keypoints, _, lifted, _, _ = film(walking_clip(5), seed=3, body_scale=1.0)
    clean = np.random.default_rng(4).normal(0, 1.0, keypoints.shape) + keypoints
    wrong = clean.copy()
    wrong[:, J("left_wrist")] += [250.0, -180.0]
    weights = np.ones((5, 17))
    centre = np.array(SIZE) / 2
    focal = focal_length_px(*SIZE)
    fitted, ok = fit_translations(lifted, wrong, weights, focal, centre)
    plain, _ = fit_translations(lifted, wrong, weights, focal, centre, TrajectoryConfig(huber_min_px=1e9))
    reference, _ = fit_translations(lifted, clean, weights, focal, centre)
    assert ok.all()
    robust_shift = np.linalg.norm(fitted - reference, axis=-1) / np.linalg.norm(reference, axis=-1)
    plain_shift = np.linalg.norm(plain - reference, axis=-1) / np.linalg.norm(reference, axis=-1)
    # Measured: the wrong wrist moves the plain least-squares fit by 14-23 %, the Huber fit by 0.7-1.9 %.
    assert robust_shift.max() < 0.025 and plain_shift.min() > 5 * robust_shift.max()


def test_smoothing_is_zero_phase_and_follows_a_straight_path_to_the_ends():
    frames = np.arange(90, dtype=np.float64)
    ramp = 0.05 * frames + 2.0
    np.testing.assert_allclose(local_linear_smooth(ramp, np.ones(90), 6.0), ramp, atol=1e-9)
    # A step is blurred symmetrically: its midpoint stays where it was (a causal filter would move it later).
    step = 1 / (1 + np.exp(-(frames - 45.0) / 1.5))
    smooth = local_linear_smooth(step, np.ones(90), 6.0)
    crossing = np.interp(0.5, smooth, frames)
    assert abs(crossing - 45.0) < 0.05
    # Frames of weight 0 (undetected) are bridged from both sides.
    weights = np.ones(90)
    weights[30:50] = 0.0
    noisy = ramp + np.where(weights > 0, 0.0, 100.0)
    np.testing.assert_allclose(local_linear_smooth(noisy, weights, 6.0)[30:50], ramp[30:50], atol=1e-6)


def test_world_view_puts_the_lowest_foot_of_the_clip_on_the_ground_so_a_jump_shows():
    world = walking_clip(60)
    hop = 0.5 * np.sin(np.linspace(0, np.pi, 20))  # frames 20-39 leave the ground by up to 0.5 m
    world[20:40, :, 2] += hop[:, None]
    camera, position = demo_camera(world)
    pelvis = camera[:, J("pelvis")]
    view = world_view(camera - pelvis[:, None], pelvis)
    # The camera's orientation is the fixed rotation, so the world view is the true world with the lowest foot of
    # the clip (0.02 m above z = 0 in `walking_clip`) at z = 0: the hop is there, frame by frame.
    np.testing.assert_allclose(view.poses, world - position - [0, 0, view.ground], atol=1e-5)
    np.testing.assert_allclose(view.poses[..., 2], world[..., 2] - 0.02, atol=1e-5)
    assert -view.ground == pytest.approx(position[2] - 0.02, abs=1e-5)  # the camera's height above the ground
    np.testing.assert_allclose(view.root, view.poses[:, J("pelvis")])
    np.testing.assert_allclose(view.poses, camera_to_world(camera) - [0, 0, view.ground], atol=1e-5)
    # Undetected frames do not set the ground: a wild foot in one of them is ignored.
    wild = camera.copy()
    wild[5, J("left_ankle")] += camera_to_world(np.array([0.0, 3.0, 0.0]), quaternion_inverse(DEMO_CAMERA_TO_WORLD))
    valid = np.ones(60, bool)
    valid[5] = False
    assert world_view(wild - pelvis[:, None], pelvis, valid).ground == pytest.approx(view.ground, abs=1e-6)
    # The pinned view keeps every frame on the ground: the hop is gone.
    pinned = world_view(camera - pelvis[:, None], None)
    np.testing.assert_allclose(pinned.poses[..., 2].min(axis=1), 0.0, atol=1e-6)
    np.testing.assert_allclose(pinned.root[:, :2], 0.0, atol=1e-6)


def test_several_people_share_the_followed_persons_ground():
    a, b = walking_clip(30), walking_clip(30)
    b[..., :2] += [1.5, 2.0]
    b[..., 2] += 0.4  # the second person stands on a 0.4 m step
    camera, _ = demo_camera(np.stack([a, b]))
    pelvis = camera[:, :, J("pelvis")]
    poses, roots = world_scene(camera - pelvis[:, :, None], pelvis, np.ones((2, 30), bool))
    assert poses.shape == (2, 30, 17, 3) and roots.shape == (2, 30, 3)
    feet = poses[:, :, [J("left_ankle"), J("right_ankle")], 2].min(axis=(1, 2))
    np.testing.assert_allclose(feet, [0.0, 0.4], atol=1e-5)  # on the step, not pulled down to the ground
    np.testing.assert_allclose(roots[1] - roots[0], b[:, 0] - a[:, 0], atol=1e-5)


def test_a_tilted_camera_needs_its_own_rotation_to_keep_people_on_their_ground():
    """Filmed by a camera 20 degrees steeper than the demo's and rolled 15: with that camera's rotation (what
    `pipeline.motion.level` estimates) both people stand where they stood; with the fixed one they do not."""
    a, b = walking_clip(30), walking_clip(30)
    b[..., :2] += [1.5, 2.0]
    b[..., 2] += 0.4
    c, s = np.cos(np.radians(20.0)), np.sin(np.radians(20.0))
    steeper = np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])
    c, s = np.cos(np.radians(15.0)), np.sin(np.radians(15.0))
    rolled = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    rotation = quaternion_to_matrix(DEMO_CAMERA_TO_WORLD) @ steeper @ rolled  # camera -> world
    world = np.stack([a, b])
    camera = (world - (world.reshape(-1, 3).mean(axis=0) - 7.0 * rotation[:, 2])) @ rotation
    pelvis = camera[:, :, J("pelvis")]
    valid = np.ones((2, 30), bool)
    feet = [J("left_ankle"), J("right_ankle")]
    poses, _ = world_scene(camera - pelvis[:, :, None], pelvis, valid, matrix_to_quaternion(rotation))
    np.testing.assert_allclose(poses[:, :, feet, 2].min(axis=(1, 2)), [0.0, 0.4], atol=1e-5)
    np.testing.assert_allclose(poses[0] - poses[0, :1, :1], a - a[:1, :1], atol=1e-5)  # the true world, shifted
    fixed, _ = world_scene(camera - pelvis[:, :, None], pelvis, valid)
    assert abs(fixed[1, :, feet, 2].min() - 0.4) > 0.2


def test_bad_input_is_one_clear_error():
    truth, keypoints, scores, lifted, valid, _ = film(walking_clip(20))
    with pytest.raises(ValueError, match=r"3D poses must be \(T, J, 3\)"):
        estimate_trajectory(keypoints, scores, lifted[:-1], SIZE, FPS)
    with pytest.raises(ValueError, match="scores must be"):
        estimate_trajectory(keypoints, scores[:, :5], lifted, SIZE, FPS)
    with pytest.raises(ValueError, match="no frame has enough confident 2D joints"):
        estimate_trajectory(keypoints, np.zeros_like(scores), lifted, SIZE, FPS)
    with pytest.raises(ValueError, match="frame rate"):
        estimate_trajectory(keypoints, scores, lifted, SIZE, 0.0)
    with pytest.raises(ValueError, match="trajectory must be"):
        world_view(lifted, truth[:-1])


def test_a_one_frame_clip_gets_a_position():
    truth, keypoints, scores, lifted, valid, _ = film(walking_clip(1))
    trajectory = estimate_trajectory(keypoints, scores, lifted, SIZE, FPS)
    _, errors = relative_errors(trajectory.camera.astype(np.float64), truth)
    assert trajectory.camera.shape == (1, 3) and errors.max() < 0.1


def test_the_recovered_path_is_where_the_camera_saw_the_pelvis():
    """Reprojecting the recovered pelvis lands on the 2D pelvis (up to the 2 px noise and smoothing)."""
    truth, keypoints, scores, lifted, valid, _ = film(walking_clip(90))
    trajectory = estimate_trajectory(keypoints, scores, lifted, SIZE, FPS, valid=valid)
    focal = focal_length_px(*SIZE)
    projected = trajectory.camera[:, :2] / trajectory.camera[:, 2:] * focal + np.array(SIZE) / 2
    true_pixels = truth[:, :2] / truth[:, 2:] * focal + np.array(SIZE) / 2
    assert np.median(np.linalg.norm(projected - true_pixels, axis=-1)) < 3.0
