"""Mocap data path: parsers + forward kinematics on hand-written files, skeleton mapping on a real clip, cameras,
detector noise, rendering and the clip-level split."""
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.mocap import amc, bvh
from pipeline.mocap.cameras import Camera, CameraConfig, camera_angles, inside_share, look_at, sample_camera
from pipeline.mocap.dataset import (
    BANDAI_PERTURBED_JOINTS,
    BANDAI_UPPER_BODY_JOINTS,
    MocapClip,
    RenderConfig,
    as_recorded,
    bandai_group,
    is_validation_group,
    mix_joints,
    perturb_joint_angles,
    render,
    render_clips,
    resample,
    rotation_channels,
    settings_key,
)
from pipeline.mocap.h36m_joints import BANDAI, body_forward, map_skeleton, perturb_landmarks
from pipeline.mocap.noise import (
    COCO_SIGMAS,
    DetectorNoiseConfig,
    corrupt_keypoints,
    fill_gaps,
    keyframe_noise,
    person_size,
)
from pipeline.skeleton import COCO, H36M, coco_to_h36m

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
BANDAI_ARCHIVE = SHARED / "data" / "mocap" / "bandai_namco_research_motion_bvh.tar.xz"

TINY_BVH = """HIERARCHY
ROOT hips
{
  OFFSET 0 0 0
  CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation
  JOINT arm
  {
    OFFSET 0 1 0
    CHANNELS 3 Zrotation Xrotation Yrotation
    End Site
    {
      OFFSET 0 0 2
    }
  }
}
MOTION
Frames: 2
Frame Time: 0.0333333
10 20 30 0 0 0 0 0 0
10 20 30 90 0 0 90 90 0
"""


def test_bvh_forward_kinematics_matches_hand_computed_positions():
    clip = bvh.parse_bvh(TINY_BVH)
    assert clip.skeleton.names == ("hips", "arm", "arm_end")
    assert clip.skeleton.parents == (-1, 0, 1)
    assert clip.motion.shape == (2, 9)
    assert clip.frame_time == pytest.approx(1 / 30, rel=1e-4)
    pos, rot = bvh.forward_kinematics(clip)
    # Frame 0: rest pose, root translated.
    np.testing.assert_allclose(pos[0], [[10, 20, 30], [10, 21, 30], [10, 21, 32]], atol=1e-9)
    # Frame 1: root Rz(90) turns the arm offset (0,1,0) into (-1,0,0); the arm's Rz(90) @ Rx(90) (declared order)
    # turns the end offset (0,0,2): Rx(90) -> (0,-2,0), Rz(90) -> (2,0,0), then the root's Rz(90) -> (0,2,0).
    np.testing.assert_allclose(pos[1], [[10, 20, 30], [9, 20, 30], [9, 22, 30]], atol=1e-9)
    np.testing.assert_allclose(rot[1, 0] @ rot[1, 0].T, np.eye(3), atol=1e-12)


def test_bvh_position_channels_replace_offsets():
    text = TINY_BVH.replace("CHANNELS 3 Zrotation Xrotation Yrotation", "CHANNELS 6 Xposition Yposition Zposition "
                            "Zrotation Xrotation Yrotation").replace("10 20 30 0 0 0 0 0 0", "0 0 0 0 0 0 5 0 0 0 0 0")
    text = text.replace("10 20 30 90 0 0 90 90 0", "0 0 0 0 0 0 5 0 0 0 0 0")
    pos, _ = bvh.forward_kinematics(bvh.parse_bvh(text))
    np.testing.assert_allclose(pos[0, 1], [5, 0, 0])


def test_bvh_forward_kinematics_with_given_rotations_matches_a_full_solve_for_a_scaled_body():
    import dataclasses

    clip = bvh.parse_bvh(TINY_BVH)
    _, rotations = bvh.forward_kinematics(clip)
    scaled = bvh.BvhClip(dataclasses.replace(clip.skeleton, offsets=clip.skeleton.offsets * 1.3), clip.motion * 1.3,
                         clip.frame_time)  # rotations scaled too: the check must not depend on them
    scaled.motion[:, 3:] = clip.motion[:, 3:]
    full_pos, full_rot = bvh.forward_kinematics(scaled)
    pos, rot = bvh.forward_kinematics(scaled, rotations)
    np.testing.assert_allclose(pos, full_pos, atol=1e-12)
    np.testing.assert_allclose(rot, full_rot, atol=1e-12)
    with pytest.raises(ValueError, match="do not fit"):
        bvh.forward_kinematics(scaled, rotations[:1])


def test_bvh_rejects_wrong_value_count():
    with pytest.raises(ValueError, match="expected 2 frames"):
        bvh.parse_bvh(TINY_BVH.replace("90 90 0\n", "90 90\n"))


TINY_ASF = """:version 1.10
:units
  mass 1.0
  length 0.5
  angle deg
:root
   order TX TY TZ RX RY RZ
   axis XYZ
   position 0 0 0
   orientation 0 0 0
:bonedata
  begin
     id 1
     name upper
     direction 1 0 0
     length 2
     axis 0 0 90  XYZ
    dof rx
  end
  begin
     id 2
     name lower
     direction 0 1 0
     length 1
     axis 0 0 0  XYZ
    dof rz
  end
:hierarchy
  begin
    root upper
    upper lower
  end
"""

TINY_AMC = """:FULLY-SPECIFIED
:DEGREES
1
root 0.5 0 0 0 0 0
upper 0
lower 0
2
root 0 0 0 0 0 0
upper 90
lower 90
"""


def test_asf_amc_forward_kinematics_matches_hand_computed_positions():
    skeleton = amc.parse_asf(TINY_ASF)
    assert skeleton.names == ("root", "upper", "lower")
    unit = 0.0254 / 0.5  # length 0.5: a file unit is 2 inches
    assert skeleton.length_to_m == pytest.approx(unit)
    motion = amc.parse_amc(TINY_AMC, skeleton)
    pos, _ = amc.forward_kinematics(skeleton, motion)
    # Frame 1: rest pose, root at x = 0.5 units.
    np.testing.assert_allclose(pos[0] / unit, [[0.5, 0, 0], [2.5, 0, 0], [2.5, 1, 0]], atol=1e-9)
    # Frame 2: "upper" rotates 90 deg about its local x axis, which its axis (Rz 90) turns into the world y axis:
    # direction (1,0,0) -> (0,0,-1). "lower" then adds Rz(90) about the same world z: (0,1,0) -> (-1,0,0) in
    # upper's frame, which upper's rotation (about y) maps to (0,0,1).
    np.testing.assert_allclose(pos[1] / unit, [[0, 0, 0], [0, 0, -2], [0, 0, -1]], atol=1e-9)


def _first_bandai_clip() -> str:
    if not BANDAI_ARCHIVE.exists():
        pytest.skip("../shared mocap archive not available")
    with tarfile.open(BANDAI_ARCHIVE, "r|xz") as tar:
        for member in tar:
            if member.name.endswith(".bvh"):
                return tar.extractfile(member).read().decode()
    pytest.fail("no BVH file in the Bandai archive")


def test_bandai_clip_maps_to_plausible_h36m_and_coco_skeletons():
    clip = bvh.parse_bvh(_first_bandai_clip())
    assert clip.frame_time == pytest.approx(1 / 30, rel=1e-3)
    pos, rot = bvh.forward_kinematics(clip)
    h36m, coco = map_skeleton(pos, rot, clip.skeleton.names, BANDAI)
    assert h36m.shape == (len(pos), 17, 3) and coco.shape == (len(pos), 17, 3)
    lengths = {(H36M.joints[a], H36M.joints[b]): np.linalg.norm(h36m[:, a] - h36m[:, b], axis=-1)
               for a, b in H36M.bones}
    for (a, b), length in lengths.items():
        # Widened H36M hips make the thighs vary by ~1 cm with hip flexion; every other bone is rigid.
        assert np.ptp(length) < 0.02, f"bone {a}-{b} changes length over the clip"
        assert 0.08 < length.mean() < 0.5, f"bone {a}-{b} is {length.mean():.3f} m"
    thigh = lengths[("left_hip", "left_knee")].mean()
    assert 0.35 < thigh < 0.5
    # Left joints are on the person's left: the body frame is right-handed with Y up.
    fwd = body_forward(h36m)
    up = np.array([0.0, 1.0, 0.0])
    left = np.cross(up, fwd)
    side = ((h36m[:, H36M.index("left_wrist")] - h36m[:, H36M.index("right_wrist")]) * left).sum(-1)
    assert np.mean(side > 0) > 0.9
    # Face points: the nose is in front of the ears and above the shoulders; the head top is the highest point.
    c = COCO.index
    ears = (coco[:, c("left_ear")] + coco[:, c("right_ear")]) / 2
    assert np.mean(((coco[:, c("nose")] - ears) * fwd).sum(-1) > 0.05) > 0.9
    assert np.mean(coco[:, c("nose"), 1] > coco[:, c("left_shoulder"), 1]) > 0.95
    assert np.mean(h36m[:, H36M.index("head"), 1] >= h36m[:, :, 1].max(axis=1) - 0.05) > 0.8


def test_arm_mixing_moves_the_arms_as_the_donor_and_keeps_body_legs_and_bones():
    clip = bvh.parse_bvh(_first_bandai_clip())
    frames = len(clip.motion)
    donor = bvh.BvhClip(clip.skeleton, np.roll(clip.motion, frames // 2, axis=0), clip.frame_time)
    mixed = mix_joints(clip, donor, np.random.default_rng(0))
    arms = rotation_channels(clip.skeleton)
    assert len(arms) == 8 * 3  # collar, upper arm, forearm, hand on both sides, three rotations each
    rest = np.setdiff1d(np.arange(clip.motion.shape[1]), arms)
    assert np.array_equal(mixed.motion[:, rest], clip.motion[:, rest])
    assert np.array_equal(mixed.motion[:, arms], donor.motion[:, arms])  # same length: the whole donor, in order
    before = map_skeleton(*bvh.forward_kinematics(clip), clip.skeleton.names, BANDAI)[0]
    after = map_skeleton(*bvh.forward_kinematics(mixed), clip.skeleton.names, BANDAI)[0]
    body = [H36M.index(n) for n in ("pelvis", "left_knee", "right_ankle", "spine", "thorax", "head")]
    wrists = [H36M.index("left_wrist"), H36M.index("right_wrist")]
    # The head top moves by ~8 um: its frame is averaged over the clip with the body forward, which the shoulders enter.
    assert np.abs(before[:, body] - after[:, body]).max() < 1e-4
    assert np.abs(before[:, wrists] - after[:, wrists]).max() > 0.1
    for a, b in H36M.bones:  # the arms change pose, not length
        assert np.allclose(np.linalg.norm(before[:, a] - before[:, b], axis=-1).mean(),
                           np.linalg.norm(after[:, a] - after[:, b], axis=-1).mean(), atol=0.01)
    # A donor shorter than the clip is played back and forth: no jump between consecutive frames.
    short = bvh.BvhClip(clip.skeleton, clip.motion[:10], clip.frame_time)
    looped = mix_joints(clip, short, np.random.default_rng(1)).motion[:, arms]
    steps = np.abs(np.diff(looped, axis=0)).max(axis=1)
    assert steps.max() <= np.abs(np.diff(clip.motion[:10][:, arms], axis=0)).max() + 1e-9
    with pytest.raises(ValueError, match="between 0 and 1"):
        RenderConfig(arm_mixing=1.5)


def test_upper_body_mixing_moves_trunk_head_and_arms_over_the_clips_own_hips_and_legs():
    clip = bvh.parse_bvh(_first_bandai_clip())
    frames = len(clip.motion)
    donor = bvh.BvhClip(clip.skeleton, np.roll(clip.motion, frames // 2, axis=0), clip.frame_time)
    mixed = mix_joints(clip, donor, np.random.default_rng(0), BANDAI_UPPER_BODY_JOINTS)
    upper = rotation_channels(clip.skeleton, BANDAI_UPPER_BODY_JOINTS)
    assert len(upper) == 12 * 3  # spine, chest, neck, head and the 8 arm joints
    rest = np.setdiff1d(np.arange(clip.motion.shape[1]), upper)  # root motion, hips and legs
    assert np.array_equal(mixed.motion[:, rest], clip.motion[:, rest])
    assert np.array_equal(mixed.motion[:, upper], donor.motion[:, upper])
    before = map_skeleton(*bvh.forward_kinematics(clip), clip.skeleton.names, BANDAI)[0]
    after = map_skeleton(*bvh.forward_kinematics(mixed), clip.skeleton.names, BANDAI)[0]
    legs = [H36M.index(n) for n in ("pelvis", "left_hip", "right_knee", "left_ankle", "right_ankle")]
    assert np.abs(before[:, legs] - after[:, legs]).max() < 1e-4
    # The trunk leans as the donor's does relative to the hips: the thorax moves, by centimetres at least.
    thorax = H36M.index("thorax")
    assert np.abs(before[:, thorax] - after[:, thorax]).max() > 0.02
    for a, b in H36M.bones:  # poses change, bone lengths do not
        assert np.allclose(np.linalg.norm(before[:, a] - before[:, b], axis=-1).mean(),
                           np.linalg.norm(after[:, a] - after[:, b], axis=-1).mean(), atol=0.01)
    with pytest.raises(ValueError, match="at most 1"):
        RenderConfig(arm_mixing=0.6, upper_body_mixing=0.5)


def test_pose_perturbation_turns_only_the_ball_joints_smoothly_and_keeps_bone_lengths():
    clip = bvh.parse_bvh(_first_bandai_clip())
    perturbed = perturb_joint_angles(clip, np.random.default_rng(0))
    turned = np.concatenate([rotation_channels(clip.skeleton, joints) for joints in BANDAI_PERTURBED_JOINTS])
    assert len(turned) == 7 * 3  # spine, chest, neck, both shoulders and both hips, three rotations each
    rest = np.setdiff1d(np.arange(clip.motion.shape[1]), turned)  # root motion, elbows, knees, hands, feet, head
    assert np.array_equal(perturbed.motion[:, rest], clip.motion[:, rest])
    offsets = perturbed.motion[:, turned] - clip.motion[:, turned]
    shoulders = rotation_channels(clip.skeleton, ("UpperArm_L", "UpperArm_R"))
    shoulder_offsets = offsets[:, np.isin(turned, shoulders)]
    assert 5.0 < shoulder_offsets.std() < 30.0  # degrees, about the table's 15
    # Smooth: consecutive frames differ by a small fraction of the offsets themselves (keyframes 15-60 frames apart).
    assert np.abs(np.diff(offsets, axis=0)).max() < 0.25 * np.abs(offsets).max()
    before = map_skeleton(*bvh.forward_kinematics(clip), clip.skeleton.names, BANDAI)[0]
    after = map_skeleton(*bvh.forward_kinematics(perturbed), clip.skeleton.names, BANDAI)[0]
    wrists = [H36M.index("left_wrist"), H36M.index("right_wrist")]
    assert np.abs((before - before[:, :1])[:, wrists] - (after - after[:, :1])[:, wrists]).max() > 0.05
    for a, b in H36M.bones:  # poses change, bone lengths do not
        assert np.allclose(np.linalg.norm(before[:, a] - before[:, b], axis=-1).mean(),
                           np.linalg.norm(after[:, a] - after[:, b], axis=-1).mean(), atol=0.01)
    # Off, a rendered set keeps the cache key it had before the option existed (the names of the sets rendered then:
    # data version 5, all 3,076 Bandai clips, 4 cameras each), so caches stay valid; on, it is a new set.
    extra = {"clips": 3076, "limit": None, "cameras": 4}
    assert settings_key("bandai_train", RenderConfig(), extra) == "36aab9502577"
    mixed = RenderConfig(arm_mixing=0.25, upper_body_mixing=0.5)
    assert settings_key("bandai_train", mixed, extra) == "7b836879eaa8"
    perturbed = RenderConfig(arm_mixing=0.25, upper_body_mixing=0.5, pose_perturbation=0.5)
    assert settings_key("bandai_train", perturbed, extra) not in ("36aab9502577", "7b836879eaa8")
    # Held-out and CMU sets are rendered as recorded, whatever the training set's augmentation: the same set as without.
    assert settings_key("cmu", as_recorded(perturbed), extra) == settings_key("cmu", RenderConfig(), extra)
    with pytest.raises(ValueError, match="between 0 and 1"):
        RenderConfig(pose_perturbation=-0.1)


def _camera() -> Camera:
    position = np.array([3.0, 1.5, 4.0])
    return Camera(look_at(position, np.array([0.0, 1.0, 0.0]), 0.05), position, 1000.0, (960.0, 540.0), 1920, 1080)


def test_camera_projection_round_trip_and_axes():
    cam = _camera()
    rng = np.random.default_rng(0)
    world = rng.uniform(-1, 2, (50, 3))
    local = cam.to_camera(world)
    np.testing.assert_allclose(cam.unproject(cam.project(local), local[:, 2]), local, atol=1e-9)
    np.testing.assert_allclose(cam.rotation @ cam.rotation.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(cam.rotation) == pytest.approx(1.0)
    # The look-at target lands on the principal point; a point higher in the world is higher in the image.
    np.testing.assert_allclose(cam.project(cam.to_camera(np.array([0.0, 1.0, 0.0]))), [960, 540], atol=1e-6)
    assert cam.project(cam.to_camera(np.array([0.0, 2.0, 0.0])))[1] < 540


def _walking_person(num_frames: int = 90, metres: float = 3.0) -> np.ndarray:
    """(F, 17, 3) a vertical stick of 17 points 0.05-1.7 m high walking `metres` along x."""
    t = np.linspace(0, metres, num_frames)
    return np.stack([np.stack([t, np.full_like(t, y), np.zeros_like(t)], -1) for y in np.linspace(0.05, 1.7, 17)], 1)


def test_sampled_cameras_keep_the_subject_in_view_with_phone_like_lenses():
    rng = np.random.default_rng(1)
    person = _walking_person()
    for _ in range(20):
        cam = sample_camera(person, rng, CameraConfig())
        assert inside_share(cam, person) >= 0.9
        assert cam.to_camera(person)[..., 2].min() > 0.1
        # 13-80 mm equivalent: 25-108 degrees across the frame's long side.
        fov = np.rad2deg(2 * np.arctan(max(cam.width, cam.height) / 2 / cam.focal))
        assert 25 <= fov <= 109


def test_camera_pitch_and_roll_follow_the_configured_distributions():
    rng = np.random.default_rng(2)
    person = _walking_person(30, 0.5)
    angles = [camera_angles(sample_camera(person, rng, CameraConfig())) for _ in range(500)]
    pitch = np.array([p.mean() for p, _ in angles])
    roll = np.array([r.mean() for _, r in angles])
    # N(5, 22.5) degrees, minus what the floor forbids (a camera cannot look up from below the ground), so the
    # realised pitch is a little higher and narrower; roll N(0, 7.5).
    assert 3 < pitch.mean() < 13 and 15 < pitch.std() < 26
    assert np.mean(pitch > 30) > 0.08 and np.mean(pitch < -10) > 0.05  # high and low viewpoints both occur
    assert abs(roll.mean()) < 1.5 and 6.0 < roll.std() < 9.0
    heights = []
    for _ in range(200):
        cam = sample_camera(person, rng, CameraConfig())
        heights.append(np.min(cam.position[..., 1]))
    assert min(heights) >= 0.15 + person[..., 1].min() - 1e-6


def test_panning_cameras_keep_a_walking_subject_near_the_image_centre():
    person = _walking_person(150, 6.0)
    still = CameraConfig(pan_share=0.0, dolly_share=0.0, shake_share=0.0, distance_m=(6.0, 6.0))
    panning = CameraConfig(pan_share=1.0, dolly_share=0.0, shake_share=0.0, distance_m=(6.0, 6.0))

    def centre_travel(config: CameraConfig) -> tuple[float, Camera]:
        cam = sample_camera(person, np.random.default_rng(3), config)
        x = cam.project(cam.to_camera(person))[:, :, 0].mean(axis=1)
        return float(np.ptp(x) / cam.width), cam

    still_travel, still_cam = centre_travel(still)
    pan_travel, pan_cam = centre_travel(panning)
    assert still_cam.rotation.shape == (3, 3)
    assert pan_cam.rotation.shape == (150, 3, 3)
    np.testing.assert_allclose(np.einsum("fij,fkj->fik", pan_cam.rotation, pan_cam.rotation),
                               np.broadcast_to(np.eye(3), (150, 3, 3)), atol=1e-9)
    assert pan_travel < 0.5 * still_travel
    with pytest.raises(ValueError, match="moving camera"):
        pan_cam.to_camera(person[:10])


def _standing_person_px(num_frames: int = 3000) -> np.ndarray:
    kp = np.zeros((17, 2))
    for i, name in enumerate(COCO.joints):
        kp[i] = (500 + (40 if "left" in name else -40 if "right" in name else 0), 200 + 30 * i)
    return np.repeat(kp[None], num_frames, axis=0)


QUIET = dict(bias=(0.0, 0.0), drift=(0.0, 0.0), jitter=(0.0, 0.0), joint_spread=0.0, outlier_rate=(0.0, 0.0),
             swap_rate=0.0, occlusion_rate=0.0, dropout_rate=0.0, person_dropout_rate=0.0, speed_gain=0.0)


def test_jitter_scales_with_coco_sigmas_and_person_size():
    clean = _standing_person_px()
    config = DetectorNoiseConfig(**{**QUIET, "jitter": (1.0, 1.0)})
    noisy = corrupt_keypoints(clean, np.random.default_rng(0), config)
    std = (noisy - clean).std(axis=0).mean(axis=-1)  # (17,) per-axis std
    expected = np.asarray(COCO_SIGMAS) * person_size(clean)[0] / np.sqrt(2)
    np.testing.assert_allclose(std, expected, rtol=0.15)
    err = (noisy - clean)[:, COCO.index("left_hip"), 0]
    assert abs(np.corrcoef(err[1:], err[:-1])[0, 1]) < 0.1  # white
    bigger = corrupt_keypoints(clean * 2, np.random.default_rng(0), config)
    np.testing.assert_allclose((bigger - clean * 2).std(), 2 * (noisy - clean).std(), rtol=1e-6)


def test_bias_is_constant_over_a_sequence_and_differs_between_sequences():
    clean = _standing_person_px(200)
    config = DetectorNoiseConfig(**{**QUIET, "bias": (1.0, 1.0)})
    a = corrupt_keypoints(clean, np.random.default_rng(0), config) - clean
    b = corrupt_keypoints(clean, np.random.default_rng(1), config) - clean
    assert np.abs(a - a[0]).max() < 1e-3
    assert np.abs(a[0]).mean() > 1.0 and np.abs(a[0] - b[0]).mean() > 1.0


def test_keyframe_drift_is_smooth_and_changes_on_its_time_scale():
    drift = keyframe_noise(np.random.default_rng(0), (20000, 2), spacing=20.0)
    assert 0.6 < drift.std() < 1.0  # keyframes are N(0, 1); between them the blend is a little narrower
    step = np.diff(drift, axis=0)
    assert np.abs(step).max() < np.pi / 2 / 20 * 2 * 4.5 + 1e-9  # slope bounded by the keyframe spacing
    # No kinks: the slope changes by a fraction of itself per frame (linear interpolation would jump by up to 2x).
    assert np.abs(np.diff(step, axis=0)).max() < 0.25 * np.abs(step).max()
    x = drift[:, 0]
    assert np.corrcoef(x[1:], x[:-1])[0, 1] > 0.98
    assert abs(np.corrcoef(x[60:], x[:-60])[0, 1]) < 0.15  # three keyframes apart: independent
    clean = _standing_person_px(2000)
    config = DetectorNoiseConfig(**{**QUIET, "drift": (1.0, 1.0), "drift_frames": (10.0, 10.0)})
    err = (corrupt_keypoints(clean, np.random.default_rng(0), config) - clean)[:, COCO.index("left_knee"), 0]
    assert np.corrcoef(err[1:], err[:-1])[0, 1] > 0.9


def test_fast_keypoints_get_more_drift_and_jitter_than_still_ones():
    clean = _standing_person_px(3000)
    t = np.arange(3000)
    wrist = COCO.index("left_wrist")
    clean[:, wrist, 0] += 150 * np.sin(t / 3.0)  # a waving hand: up to 50 px a frame, ~3 person sizes per second
    config = DetectorNoiseConfig(**{**QUIET, "jitter": (1.0, 1.0), "speed_gain": 0.35})
    err = corrupt_keypoints(clean, np.random.default_rng(0), config) - clean
    still = DetectorNoiseConfig(**{**QUIET, "jitter": (1.0, 1.0)})
    calm = corrupt_keypoints(clean, np.random.default_rng(0), still) - clean
    ratio = err.std(axis=0).mean(-1) / calm.std(axis=0).mean(-1)
    assert 1.6 < ratio[wrist] < 2.6
    assert np.all(np.abs(np.delete(ratio, wrist) - 1) < 1e-6)  # the still keypoints are untouched


def test_noise_outliers_and_dropouts_happen_at_their_rates():
    clean = _standing_person_px(5000)
    config = DetectorNoiseConfig(**{**QUIET, "outlier_rate": (0.01, 0.01), "outlier_size": 0.3})
    err = np.linalg.norm(corrupt_keypoints(clean, np.random.default_rng(0), config) - clean, axis=-1)
    assert 0.006 < np.mean(err > 1.0) < 0.014


def test_glitches_put_wrists_far_off_for_stretches_far_more_often_than_hips():
    t = np.arange(6000)
    clean = _standing_person_px(6000)
    clean[:, 7:, 0] += 30 * np.sin(t / 4.0)[:, None]  # the limbs move, so a held keypoint falls behind
    config = DetectorNoiseConfig(**{**QUIET, "glitch_rate": (0.03, 0.03)})
    off = np.linalg.norm(corrupt_keypoints(clean, np.random.default_rng(0), config) - clean, axis=-1) > 5.0
    wrists = [COCO.index("left_wrist"), COCO.index("right_wrist")]
    hips = [COCO.index("left_hip"), COCO.index("right_hip")]
    # 0.03 starts a frame, 3-20 frames long (mean 11.5): a wrist is off in roughly a quarter of its frames
    assert 0.15 < off[:, wrists].mean() < 0.45
    assert off[:, hips].mean() < 0.25 * off[:, wrists].mean()
    # stretches, not single frames: an off frame is mostly followed by another
    assert np.mean(off[1:, wrists] & off[:-1, wrists]) > 0.7 * off[:, wrists].mean()
    # none by default
    default = DetectorNoiseConfig(**QUIET)
    np.testing.assert_allclose(corrupt_keypoints(clean, np.random.default_rng(0), default), clean, atol=1e-3)


def test_the_default_noise_draws_what_it_drew_before_glitches_existed():
    # Cached sets keep their key when no glitches are asked for, so their content must not change: the default noise
    # of a fixed track and seed, pinned to the value the code before glitches gave (commit f7588ad).
    clean = _standing_person_px(200)
    noisy = corrupt_keypoints(clean, np.random.default_rng(0), DetectorNoiseConfig())
    assert float(np.abs(noisy - clean).sum()) == pytest.approx(30588.461685180664, rel=1e-9)


def test_glitching_renderings_are_a_training_set_of_their_own():
    extra = {"clips": 3076, "limit": None, "cameras": 4}
    perturbed = RenderConfig(arm_mixing=0.25, upper_body_mixing=0.5, pose_perturbation=0.5)
    glitching = RenderConfig(arm_mixing=0.25, upper_body_mixing=0.5, pose_perturbation=0.5, glitches=0.75)
    assert settings_key("bandai_train", glitching, extra) != settings_key("bandai_train", perturbed, extra)
    plain = settings_key("bandai_val", RenderConfig(), extra)
    assert settings_key("bandai_val", as_recorded(glitching), extra) == plain
    with pytest.raises(ValueError, match="between 0 and 1"):
        RenderConfig(glitches=1.5)


def test_a_render_seed_renders_the_training_set_anew_and_leaves_the_held_out_sets_alone():
    extra = {"clips": 3076, "limit": None, "cameras": 4}
    config = RenderConfig(arm_mixing=0.25, upper_body_mixing=0.5)
    reseeded = RenderConfig(arm_mixing=0.25, upper_body_mixing=0.5, seed=1)
    assert settings_key("bandai_train", reseeded, extra) != settings_key("bandai_train", config, extra)
    for kind in ("bandai_val", "cmu"):
        assert settings_key(kind, as_recorded(reseeded), extra) == settings_key(kind, as_recorded(config), extra)
    assert settings_key("bandai_train", config, extra) == "7b836879eaa8"  # as before the seed was an option
    person = _walking_person()
    clip = MocapClip("walk", "walk", person, person, 30.0)
    first, again, other = (render_clips([clip], RenderConfig(seed=s), 1).inputs_2d[0] for s in (0, 0, 1))
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).mean() > 0.01  # another camera and noise
    held_out = (render_clips([clip], as_recorded(RenderConfig(seed=s)), 1).inputs_2d[0] for s in (0, 1))
    np.testing.assert_array_equal(*held_out)


def _few_bandai_clips(folder: Path, count: int) -> Path:
    """The first `count` BVH clips of the shared archive, unpacked as `python -m pipeline.mocap unpack` lays them."""
    if not BANDAI_ARCHIVE.exists():
        pytest.skip("../shared mocap archive not available")
    with tarfile.open(BANDAI_ARCHIVE, "r|xz") as tar:
        for member in tar:
            if member.name.endswith(".bvh"):
                target = folder / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
                count -= 1
                if count == 0:
                    break
    return folder


def test_a_pack_writes_back_the_same_clips_within_its_quantum_and_the_other_files_exactly(tmp_path):
    from pipeline.mocap.__main__ import main
    from pipeline.mocap.dataset import bandai_clip_paths

    mocap = _few_bandai_clips(tmp_path / "mocap", 6)
    licence = mocap / "dataset" / "Bandai-Namco-Research-Motiondataset-1" / "LICENSE"
    licence.write_bytes(b"CC BY-NC 4.0\n\xe2\x9c\x93")
    assert main(["--mocap-dir", str(mocap), "pack", "--out", str(tmp_path / "bandai.pack")]) == 0
    assert main(["--mocap-dir", str(tmp_path / "back"), "unpack", "--pack", str(tmp_path / "bandai.pack")]) == 0
    originals, copies = bandai_clip_paths(mocap), bandai_clip_paths(tmp_path / "back")
    assert [p.relative_to(mocap) for p in originals] == [p.relative_to(tmp_path / "back") for p in copies]
    assert (tmp_path / "back" / licence.relative_to(mocap)).read_bytes() == licence.read_bytes()
    raw = sum(p.stat().st_size for p in originals)
    assert (tmp_path / "bandai.pack").stat().st_size < raw / 15  # 536 MB of BVH text -> 26 MB
    for original, copy in zip(originals, copies, strict=True):
        a, b = bvh.parse_bvh(original.read_text()), bvh.parse_bvh(copy.read_text())
        assert a.skeleton.names == b.skeleton.names and a.skeleton.parents == b.skeleton.parents
        assert a.skeleton.channels == b.skeleton.channels and a.frame_time == b.frame_time
        np.testing.assert_array_equal(a.skeleton.offsets, b.skeleton.offsets)
        assert a.motion.shape == b.motion.shape and np.abs(a.motion - b.motion).max() <= 0.005 + 1e-9
        assert np.abs(a.motion - b.motion).max() > 0  # quantised, not copied: the test sees the round trip
    with pytest.raises(SystemExit, match="error: no Bandai datasets under .*run python -m pipeline.mocap unpack"):
        main(["--mocap-dir", str(tmp_path / "empty"), "pack", "--out", str(tmp_path / "none.pack")])
    with pytest.raises(SystemExit, match="error: .*none.pack not found; make it with python -m pipeline.mocap pack"):
        main(["--mocap-dir", str(tmp_path / "back"), "unpack", "--pack", str(tmp_path / "none.pack")])
    assert not (tmp_path / "none.pack").exists()


def test_fresh_renders_of_the_training_clips_differ_by_seed_and_leave_out_held_out_groups(tmp_path):
    from pipeline.mocap.dataset import bandai_clip_paths, render_training_set

    mocap = _few_bandai_clips(tmp_path / "mocap", 12)
    held_out = {bandai_group(p.stem) for p in bandai_clip_paths(mocap) if is_validation_group(bandai_group(p.stem))}
    assert held_out  # the archive's first clips include a held-out group, so leaving it out is tested
    config = RenderConfig(cameras_per_clip=2, arm_mixing=0.25, upper_body_mixing=0.5)
    first, again = (render_training_set(mocap, config) for _ in range(2))
    other = render_training_set(mocap, RenderConfig(cameras_per_clip=2, arm_mixing=0.25, upper_body_mixing=0.5,
                                                    seed=1))
    assert len(first) == 2 * (12 - sum(bandai_group(p.stem) in held_out for p in bandai_clip_paths(mocap)))
    assert not held_out & set(first.groups) and first.names == other.names
    for a, b, c in zip(first.inputs_2d, again.inputs_2d, other.inputs_2d, strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.shape != c.shape or np.abs(a - c).mean() > 0.01  # another speed, camera, body and noise


def test_worker_processes_render_exactly_what_one_process_renders(tmp_path):
    """Mixing draws donors from the clips rendered before (`donor_plan`), so chunks rendered apart must see the same
    pool: 2 workers and chunks of 5 clips give the sequential renderings to the bit."""
    from pipeline.mocap import dataset
    from pipeline.mocap.dataset import bandai_clip_paths, donor_plan, render_bandai

    paths = bandai_clip_paths(_few_bandai_clips(tmp_path / "mocap", 12))
    assert donor_plan(4, 0) == [(), (0,), (0, 1), (0, 1, 2)]  # fewer clips than ARM_DONORS: every one before
    config = RenderConfig(arm_mixing=0.25, upper_body_mixing=0.5, pose_perturbation=0.5, seed=3)
    one = render_bandai(paths, config, 2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dataset, "RENDER_CHUNK_CLIPS", 5)  # the parent cuts the chunks: 3 here, not 1 of 100
        split = render_bandai(paths, config, 2, workers=1)
        pools = []

        class CountedPool(dataset.ProcessPoolExecutor):
            def __init__(self, *args, **kwargs):
                pools.append(self)
                super().__init__(*args, **kwargs)

        patch.setattr(dataset, "ProcessPoolExecutor", CountedPool)
        both = render_bandai(paths, config, 2, workers=2)  # two spawned processes
    assert len(pools) == 1
    for other in (split, both):
        assert other.names == one.names and other.groups == one.groups
        for a, b in zip(one.inputs_2d + one.targets_3d, other.inputs_2d + other.targets_3d, strict=True):
            np.testing.assert_array_equal(a, b)


def test_evaluation_alone_renders_the_held_out_set_and_not_the_training_set(tmp_path):
    from pipeline.mocap.dataset import build_sets

    mocap, data = _few_bandai_clips(tmp_path / "mocap", 12), tmp_path / "data"
    alone = build_sets(mocap, data, with_cmu=False, with_train=False)
    assert alone.train is None and len(alone.validation) > 0
    assert [p.name.split("_")[1] for p in sorted(data.glob("*.npz"))] == ["val"]
    both = build_sets(mocap, data, with_cmu=False)  # the held-out set now read back, the training set rendered
    assert len(both.train) > 0 and sorted(p.name.split("_")[1] for p in data.glob("*.npz")) == ["train", "val"]
    for a, b in zip(alone.validation.inputs_2d, both.validation.inputs_2d, strict=True):
        np.testing.assert_array_equal(a, b)


def test_bad_fresh_renders_or_render_seeds_are_refused_before_the_run_folder_is_touched(tmp_path, monkeypatch):
    from pipeline.mocap import __main__ as cli

    monkeypatch.setattr("pipeline.training.train.default_run_dir", lambda name: tmp_path / name)
    weights = tmp_path / "missing.safetensors"  # never read: the flags are refused first
    for flags, message in ((["--fresh-renders", "0"], "--fresh-renders is a number of samples, 1 or more, not 0"),
                           (["--render-seed", "-1"], "the render seed must be 0 or more, not -1"),
                           (["--render-workers", "0"], "--render-workers is a number of processes, 1 or more, not 0")):
        with pytest.raises(SystemExit, match=message):
            cli.main(["--data-dir", str(tmp_path / "no-data"), "train", "--frames", "27", "--f", "3", "--n", "3",
                      "--run", "x", "--init-weights", str(weights), "--threads", "1", *flags])
        assert not (tmp_path / "x").exists()


def test_fresh_render_seeds_start_with_the_runs_own_set_and_stay_clear_of_hand_built_seeds():
    from pipeline.mocap.dataset import fresh_render_seed

    assert fresh_render_seed(0, 0) == 0 and fresh_render_seed(1, 0) == 1
    later = {fresh_render_seed(seed, k) for seed in range(3) for k in range(1, 500)}
    assert len(later) == 3 * 499 and min(later) > 1000  # distinct, and beyond the seeds one builds by hand


def test_hidden_limbs_are_interpolated_across_or_laid_onto_the_other_side():
    t = np.arange(3000)
    clean = _standing_person_px(3000)
    clean[:, :, 1] += 40 * np.sin(t / 7.0)[:, None] * (np.arange(17) >= 7)  # limbs swing, the face stays
    clean[:, :, 0] += 25 * np.cos(t / 5.0)[:, None] * (np.arange(17) >= 7)
    hide = DetectorNoiseConfig(**{**QUIET, "occlusion_rate": 0.01, "occlusion_collapse": 0.0})
    out = corrupt_keypoints(clean, np.random.default_rng(0), hide)
    changed = np.linalg.norm(out - clean, axis=-1) > 1.0
    limbs = [COCO.index(n) for n in ("left_elbow", "left_wrist", "left_knee", "left_ankle", "right_elbow",
                                     "right_wrist", "right_knee", "right_ankle")]
    assert changed[:, limbs].mean() > 0.02 and not changed[:, :7].any()
    straight = np.abs(np.diff(out[:, limbs, 1], 2, axis=0)) < 1e-3  # interpolated stretches are straight lines
    assert straight.mean() > 0.02
    collapse = DetectorNoiseConfig(**{**QUIET, "occlusion_rate": 0.01, "occlusion_collapse": 1.0})
    out = corrupt_keypoints(clean, np.random.default_rng(0), collapse)
    flip = COCO.flip_permutation
    on_other_side = np.linalg.norm(out[:, limbs] - clean[:, flip[limbs]], axis=-1) < 1e-3
    assert on_other_side.mean() > 0.01


def test_fill_gaps_interpolates_linearly_and_holds_ends():
    kp = np.zeros((6, 1, 2))
    kp[:, 0, 0] = [0, 99, 99, 6, 8, 99]
    valid = np.array([[True], [False], [False], [True], [True], [False]])
    out = fill_gaps(kp, valid)
    np.testing.assert_allclose(out[:, 0, 0], [0, 2, 4, 6, 8, 8])


def test_render_without_noise_is_the_runtime_remap_of_the_projection():
    cam = _camera()
    rng = np.random.default_rng(0)
    coco_world = rng.uniform(0, 1.8, (5, 17, 3))
    h36m_world = rng.uniform(0, 1.8, (5, 17, 3))
    inputs, targets = render(h36m_world, coco_world, cam, rng, None)
    px, _ = coco_to_h36m(cam.project(cam.to_camera(coco_world)))
    np.testing.assert_allclose((inputs + [1, 1080 / 1920]) * 1920 / 2, px, atol=1e-2)
    np.testing.assert_allclose(targets, cam.to_camera(h36m_world), atol=1e-5)
    assert inputs.dtype == np.float32 and targets.dtype == np.float32


def test_resample_keeps_endpoints_and_interpolates():
    pts = np.arange(10, dtype=float)[:, None, None] * np.ones((1, 2, 3))
    out = resample(pts, 1.5)
    np.testing.assert_allclose(out[:, 0, 0], np.arange(0, 9.01, 1.5))


def test_split_is_by_clip_group_and_holds_out_about_a_tenth():
    names = [f"dataset-2_{c}_{s}_{i:03d}" for c in ("walk", "run", "wave") for s in "abcdefghijklmnopqrst"
             for i in range(1, 6)]
    val = {n for n in names if is_validation_group(bandai_group(n))}
    train = set(names) - val
    assert {bandai_group(n) for n in val}.isdisjoint({bandai_group(n) for n in train})
    groups = {bandai_group(n) for n in names}
    assert 0.0 < len({bandai_group(n) for n in val}) / len(groups) < 0.25
    assert bandai_group("dataset-1_walk-left_tired_001") == "dataset-1_walk-left_tired"


def test_export_writes_half_precision_safetensors_that_load_lifter_reads(tmp_path):
    import torch

    from pipeline.lifting import load_lifter
    from pipeline.mocap.export import export_safetensors, load_training_checkpoint
    from pipeline.poseformerv2 import PoseFormerV2, PoseFormerV2Config

    torch.manual_seed(0)
    config = PoseFormerV2Config(frames=9, frames_kept=3, coeffs_kept=3, drop_path_rate=0.1)
    model = PoseFormerV2(config).eval()
    checkpoint = tmp_path / "last.bin"
    torch.save({"epoch": 3, "lr": 1e-4, "model_pos": {f"module.{k}": v for k, v in model.state_dict().items()},
                "model_config": config.to_dict(), "progress": {"samples_seen": 1000},
                "validation": {"mpjpe": 0.05, "p_mpjpe": 0.04}}, checkpoint)
    out = export_safetensors(checkpoint, tmp_path / "w.safetensors", half=True)
    lifter = load_lifter(out)
    assert lifter.frames == 9 and lifter.model.config.frames_kept == 3
    window = torch.from_numpy(np.random.default_rng(0).uniform(-0.5, 0.5, (2, 9, 17, 2)).astype(np.float32))
    with torch.inference_mode():
        expected = model(window)
        got = lifter.model(window)
        halved, _, _ = load_training_checkpoint(checkpoint, half=True)
        np.testing.assert_allclose(got.numpy(), halved(window).numpy(), atol=1e-6)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=2e-3)
    assert out.stat().st_size < sum(v.numel() * 4 for v in model.state_dict().values()) * 0.6


def test_surface_hips_sit_wider_and_lower_than_the_joint_hips():
    clip = bvh.parse_bvh(_first_bandai_clip())
    pos, rot = bvh.forward_kinematics(clip)
    h36m, coco = map_skeleton(pos, rot, clip.skeleton.names, BANDAI)
    h, c = H36M.index, COCO.index
    names = clip.skeleton.names
    rig_hips = pos[:, [names.index("UpperLeg_L"), names.index("UpperLeg_R")]] * BANDAI.unit_to_m
    joint_width = np.linalg.norm(rig_hips[:, 0] - rig_hips[:, 1], axis=-1)
    surface_width = np.linalg.norm(coco[:, c("left_hip")] - coco[:, c("right_hip")], axis=-1)
    assert np.all(surface_width > joint_width + 0.02)
    # ... but, as yolo11n-pose reports on real people (docs/real_footage_gap.md), about as wide as H36M's hip joints.
    h36m_width = np.linalg.norm(h36m[:, h("left_hip")] - h36m[:, h("right_hip")], axis=-1)
    assert np.all(np.abs(surface_width / h36m_width - 1) < 0.15)
    # COCO shoulders sit on the outside of the shoulder joints.
    shoulder_joints = np.linalg.norm(h36m[:, h("left_shoulder")] - h36m[:, h("right_shoulder")], axis=-1)
    shoulder_surface = np.linalg.norm(coco[:, c("left_shoulder")] - coco[:, c("right_shoulder")], axis=-1)
    assert np.all(shoulder_surface > shoulder_joints + 0.03)
    up = h36m[:, h("thorax")] - h36m[:, h("pelvis")]
    up /= np.linalg.norm(up, axis=-1, keepdims=True)
    drop = ((h36m[:, h("pelvis")] - (coco[:, c("left_hip")] + coco[:, c("right_hip")]) / 2) * up).sum(-1)
    assert np.all(drop > 0.02)


def test_perturbed_landmarks_keep_their_offset_in_the_body_frame():
    clip = bvh.parse_bvh(_first_bandai_clip())
    pos, rot = bvh.forward_kinematics(clip)
    h36m, coco = map_skeleton(pos, rot, clip.skeleton.names, BANDAI)
    moved = perturb_landmarks(coco, h36m, np.random.default_rng(0), 0.02)
    offset = np.linalg.norm(moved - coco, axis=-1)  # (F, 17)
    np.testing.assert_allclose(offset, np.broadcast_to(offset[0], offset.shape), atol=1e-9)
    assert 0.01 < offset.mean() < 0.05
    # The offset turns with the body: in world coordinates it is not constant when the person turns.
    facing = body_forward(h36m)
    if np.ptp(np.arctan2(facing[:, 0], facing[:, 2])) > 0.5:
        assert np.abs((moved - coco) - (moved - coco)[0]).max() > 0.005
    assert perturb_landmarks(coco, h36m, np.random.default_rng(0), 0.0) is coco


def test_init_training_run_starts_a_longer_window_from_a_lifter_files_weights(tmp_path):
    import torch

    from pipeline.lifting import load_lifter, save_lifter_checkpoint
    from pipeline.mocap.export import init_training_run, load_training_checkpoint
    from pipeline.poseformerv2 import PoseFormerV2, PoseFormerV2Config

    torch.manual_seed(0)
    short = PoseFormerV2(PoseFormerV2Config(frames=9, frames_kept=3, coeffs_kept=3)).eval()
    weights = save_lifter_checkpoint(tmp_path / "short.safetensors", short)
    long_config = PoseFormerV2Config(frames=27, frames_kept=3, coeffs_kept=3, drop_path_rate=0.1)
    path = init_training_run(weights, long_config, tmp_path / "run", lr=2e-4)
    model, config, chk = load_training_checkpoint(path)
    assert config.frames == 27 and chk["progress"]["step"] == 0 and chk["lr"] == 2e-4
    for key, value in short.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)
    # The run's model lifts a 27-frame window; a 27-frame lifter file of the same weights agrees with it.
    window = torch.from_numpy(np.random.default_rng(0).uniform(-0.5, 0.5, (2, 27, 17, 2)).astype(np.float32))
    with torch.inference_mode():
        same = load_lifter(weights, frames=27).model(window)
        torch.testing.assert_close(model(window), same)
    with pytest.raises(ValueError, match="does not fit"):
        init_training_run(weights, PoseFormerV2Config(frames=27, frames_kept=9, coeffs_kept=9), tmp_path / "bad", 1e-4)


def test_a_deeper_run_starts_as_the_same_function_and_its_added_blocks_learn(tmp_path):
    import torch

    from pipeline.lifting import load_lifter, save_lifter_checkpoint
    from pipeline.mocap.export import export_safetensors, init_training_run, load_training_checkpoint
    from pipeline.poseformerv2 import PoseFormerV2, PoseFormerV2Config

    torch.manual_seed(0)
    shallow = PoseFormerV2(PoseFormerV2Config(frames=9, frames_kept=3, coeffs_kept=3, depth=2)).eval()
    weights = save_lifter_checkpoint(tmp_path / "shallow.safetensors", shallow)
    deep_config = PoseFormerV2Config(frames=9, frames_kept=3, coeffs_kept=3, depth=3, drop_path_rate=0.1)
    path = init_training_run(weights, deep_config, tmp_path / "run", lr=2e-4)
    model, config, _ = load_training_checkpoint(path)
    assert config.depth == 3 and len(model.blocks) == 3 and len(model.Spatial_blocks) == 3
    for key, value in shallow.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)
    window = torch.from_numpy(np.random.default_rng(0).uniform(-0.5, 0.5, (4, 9, 17, 2)).astype(np.float32))
    with torch.inference_mode():
        torch.testing.assert_close(model(window), shallow(window), rtol=0, atol=1e-6)
    # The added blocks are not dead: the zeroed output layers get gradients (and their first layers are random).
    model.train()
    model(window).square().sum().backward()
    for layer in (model.blocks[2].attn.proj, model.blocks[2].mlp1.fc2, model.blocks[2].mlp2.fc2,
                  model.Spatial_blocks[2].attn.proj, model.Spatial_blocks[2].mlp.fc2):
        assert not layer.weight.any() and layer.weight.grad.abs().sum() > 0
    assert model.blocks[2].attn.qkv.weight.std() > 0.01
    # Exported, the grown model is a lifter file whose depth the demo's loader reads from the tensor shapes.
    exported = export_safetensors(path, tmp_path / "deep.safetensors", half=False)
    assert load_lifter(exported).model.config.depth == 3
    # A model shallower than the file cannot hold its weights; a narrower one is refused even while growing.
    with pytest.raises(ValueError, match="it has 3 blocks per stack; --depth must be 3 or more"):
        init_training_run(exported, PoseFormerV2Config(frames=9, frames_kept=3, coeffs_kept=3, depth=2),
                          tmp_path / "bad", 1e-4)
    with pytest.raises(ValueError, match="does not fit"):
        init_training_run(weights, PoseFormerV2Config(frames=9, frames_kept=3, coeffs_kept=3, depth=3,
                                                      embed_dim_ratio=16), tmp_path / "narrow", 1e-4)


def test_resuming_a_grown_run_with_another_depth_is_refused_before_loading_data(tmp_path, monkeypatch):
    import torch

    from pipeline.lifting import save_lifter_checkpoint
    from pipeline.mocap import __main__ as cli
    from pipeline.mocap.export import init_training_run
    from pipeline.poseformerv2 import PoseFormerV2, PoseFormerV2Config

    torch.manual_seed(0)
    weights = save_lifter_checkpoint(tmp_path / "shallow.safetensors",
                                     PoseFormerV2(PoseFormerV2Config(frames=27, frames_kept=3, coeffs_kept=3, depth=2)))
    monkeypatch.setattr("pipeline.training.train.default_run_dir", lambda name: tmp_path / name)
    init_training_run(weights, PoseFormerV2Config(frames=27, frames_kept=3, coeffs_kept=3, depth=3,
                                                  drop_path_rate=0.1), tmp_path / "grown", 1e-4)
    with pytest.raises(SystemExit, match="was trained with --depth 3; resume it with the same flags"):
        cli.main(["--data-dir", str(tmp_path / "no-data"), "train", "--frames", "27", "--f", "3", "--n", "3",
                  "--run", "grown", "--resume", "--depth", "2", "--threads", "1"])


def test_averaged_checkpoints_hold_the_mean_weights_and_export(tmp_path):
    import torch

    from pipeline.lifting import load_lifter, save_lifter_checkpoint
    from pipeline.mocap.__main__ import main
    from pipeline.mocap.export import init_training_run, load_training_checkpoint
    from pipeline.poseformerv2 import PoseFormerV2, PoseFormerV2Config
    from pipeline.training.train import load_checkpoint

    config = PoseFormerV2Config(frames=9, frames_kept=3, coeffs_kept=3)
    torch.manual_seed(0)
    weights = save_lifter_checkpoint(tmp_path / "w.safetensors", PoseFormerV2(config).eval())
    first = init_training_run(weights, config, tmp_path / "a", lr=1e-4)
    chk = load_checkpoint(first)
    chk["model_pos"] = {k: v + 1.0 if v.is_floating_point() else v for k, v in chk["model_pos"].items()}
    second = tmp_path / "b.bin"
    torch.save(chk, second)
    out = tmp_path / "mean.bin"
    assert main(["average", "--checkpoint", str(first), "--checkpoint", str(second), "--out", str(out)]) == 0
    mean, _, averaged = load_training_checkpoint(out)
    start, _, _ = load_training_checkpoint(first)
    for key, value in start.state_dict().items():
        torch.testing.assert_close(mean.state_dict()[key], value + 0.5)
    assert averaged["averaged_from"] == [str(first), str(second)]
    assert main(["export", "--checkpoint", str(out), "--out", str(tmp_path / "mean.safetensors")]) == 0
    assert load_lifter(tmp_path / "mean.safetensors").config.frames == 9
    with pytest.raises(ValueError, match="two checkpoints or more"):
        main(["average", "--checkpoint", str(first), "--out", str(tmp_path / "one.bin")])
    shallow = PoseFormerV2Config(frames=9, frames_kept=3, coeffs_kept=3, depth=2)
    other = init_training_run(save_lifter_checkpoint(tmp_path / "s.safetensors", PoseFormerV2(shallow).eval()),
                              shallow, tmp_path / "c", lr=1e-4)
    with pytest.raises(ValueError, match="not a checkpoint of the same model"):
        main(["average", "--checkpoint", str(first), "--checkpoint", str(other), "--out", str(tmp_path / "x.bin")])
    assert not (tmp_path / "x.bin").exists()


CMU_ARCHIVE = SHARED / "data" / "mocap" / "cmu_mocap_subset.tar.xz"
BUILD_VERSION1_SETS = Path(__file__).resolve().parents[1] / "benchmarks" / "build_version1_sets.py"


def _mocap_folder_for_version1(folder: Path) -> tuple[list[str], str]:
    """Two clips of held-out Bandai groups, one of a training group and one CMU BVH clip, laid out as `unpack` does."""
    if not (BANDAI_ARCHIVE.exists() and CMU_ARCHIVE.exists()):
        pytest.skip("../shared mocap archives not available")
    held_out, training = [], None
    with tarfile.open(BANDAI_ARCHIVE, "r|xz") as tar:
        for member in tar:
            if not member.name.endswith(".bvh"):
                continue
            stem = Path(member.name).stem
            if is_validation_group(bandai_group(stem)) and len(held_out) < 2:
                held_out.append(stem)
            elif not is_validation_group(bandai_group(stem)) and training is None:
                training = stem
            else:
                continue
            target = folder / member.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
            if len(held_out) == 2 and training is not None:
                break
    with tarfile.open(CMU_ARCHIVE, "r|xz") as tar:
        for member in tar:
            if member.name.endswith("cmu_bvh/resources_131_01.bvh"):
                (folder / "cmu_bvh").mkdir(parents=True)
                (folder / "cmu_bvh" / "resources_131_01.bvh").write_bytes(tar.extractfile(member).read())
                break
    return held_out, training


def test_version1_sets_are_rendered_by_version1s_renderer_from_the_history_not_todays(tmp_path):
    from pipeline.mocap.dataset import bandai_clip_paths, held_out_config, load_set, render_bandai

    if subprocess.run(["git", "-C", str(BUILD_VERSION1_SETS.parent), "cat-file", "-e", "2677ac8"]).returncode != 0:
        pytest.skip("this clone lacks version 1's commit (a shallow clone)")
    mocap = tmp_path / "mocap"
    held_out, training = _mocap_folder_for_version1(mocap)
    out = tmp_path / "legacy"
    done = subprocess.run([sys.executable, str(BUILD_VERSION1_SETS), "--mocap-dir", str(mocap), "--out-dir", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["bandai_val_v1.npz", "cmu_v1.npz"]  # no partial files left
    bandai, cmu = load_set(out / "bandai_val_v1.npz"), load_set(out / "cmu_v1.npz")
    # Two cameras per held-out clip, the training group's clip left out, the motion as recorded (30 fps, speed 1).
    assert sorted({name.rsplit("/cam", 1)[0] for name in bandai.names}) == sorted(held_out)
    assert not any(training in name for name in bandai.names) and len(bandai) == 4
    paths = [p for p in bandai_clip_paths(mocap) if p.stem in held_out]
    frames = {p.stem: len(bvh.parse_bvh(p.read_text()).motion) for p in paths}
    assert [len(x) for x in bandai.inputs_2d] == [frames[n.rsplit("/cam", 1)[0]] for n in bandai.names]
    assert len(cmu) == 2 and all(np.isfinite(x).all() for x in (*bandai.inputs_2d, *cmu.inputs_2d))
    # Today's renderer puts other cameras, noise and COCO landmarks on the same clips: the files are version 1's.
    now = render_bandai(paths, held_out_config(RenderConfig()), 2)
    assert [x.shape for x in now.inputs_2d] == [x.shape for x in bandai.inputs_2d]
    assert min(np.abs(a - b).mean() for a, b in zip(now.inputs_2d, bandai.inputs_2d, strict=True)) > 0.01


def test_version1_sets_need_the_unpacked_mocap(tmp_path):
    done = subprocess.run([sys.executable, str(BUILD_VERSION1_SETS), "--mocap-dir", str(tmp_path / "none"),
                           "--out-dir", str(tmp_path / "legacy")], capture_output=True, text=True)
    assert done.returncode != 0 and "python -m pipeline.mocap unpack" in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "legacy").exists()
