"""BVH export: the file read back by three independent readers (the project's own BVH parser, `bvhio`, and Blender's
importer when `blender` is installed) gives back the frame count, frame rate, joint names and every bone direction
of the input; Euler curves are continuous; the file is Y up in centimetres."""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from pipeline.mocap.bvh import euler_to_matrix, forward_kinematics, parse_bvh
from pipeline.motion.bvh import bvh_file_names, bvh_text, continuous_euler, h36m_rig, matrix_to_euler
from pipeline.skeleton import H36M

J = H36M.index
HELPER_JOINTS = {"left_pelvis", "right_pelvis", "left_clavicle", "right_clavicle"}


def rotation_z(angle: np.ndarray) -> np.ndarray:
    c, s, one, zero = np.cos(angle), np.sin(angle), np.ones_like(angle), np.zeros_like(angle)
    return np.stack([np.stack([c, -s, zero], -1), np.stack([s, c, zero], -1), np.stack([zero, zero, one], -1)], -2)


def rotation_x(angle: np.ndarray) -> np.ndarray:
    c, s, one, zero = np.cos(angle), np.sin(angle), np.ones_like(angle), np.zeros_like(angle)
    return np.stack([np.stack([one, zero, zero], -1), np.stack([zero, c, -s], -1), np.stack([zero, s, c], -1)], -2)


def tumbling_clip(frames: int = 120) -> np.ndarray:
    """(T, 17, 3) world joints (z up, metres): a body that turns twice about the vertical while leaning, raises its
    arms from its sides to overhead, kicks, and travels 3 m. Bones keep no fixed length (as lifted poses do not)."""
    u = np.linspace(0.0, 1.0, frames)
    body = rotation_z(4 * np.pi * u) @ rotation_x(0.4 * np.sin(6 * np.pi * u))  # body frame: x forward, y left
    local = np.zeros((frames, 17, 3))
    wave = np.sin(2 * np.pi * u)
    raise_arm = np.radians(10 + 160 * (0.5 - 0.5 * np.cos(2 * np.pi * u)))  # from the side to overhead and back
    kick = np.radians(100) * np.maximum(wave, 0)
    for side, sign in (("left", 1.0), ("right", -1.0)):
        hip = np.stack([0 * u, sign * (0.13 + 0.01 * wave), 0 * u], -1)
        leg = kick if side == "left" else 0.3 * np.maximum(-wave, 0)
        knee = hip + 0.45 * np.stack([np.sin(leg), 0 * u, -np.cos(leg)], -1)
        shin = leg - np.radians(40) * np.abs(wave)
        ankle = knee + 0.42 * np.stack([np.sin(shin), 0 * u, -np.cos(shin)], -1)
        shoulder = np.stack([0.02 * wave, sign * 0.19 + 0 * u, 0.5 + 0 * u], -1)
        arm = np.stack([0.2 * np.cos(raise_arm), sign * np.sin(raise_arm), -np.cos(raise_arm)], -1)
        arm /= np.linalg.norm(arm, axis=-1, keepdims=True)
        elbow = shoulder + 0.28 * arm
        wrist = elbow + 0.25 * (arm + np.stack([0.6 * np.abs(wave), 0 * u, 0 * u], -1))
        for name, value in (("hip", hip), ("knee", knee), ("ankle", ankle), ("shoulder", shoulder),
                            ("elbow", elbow), ("wrist", wrist)):
            local[:, J(f"{side}_{name}")] = value
    local[:, J("spine")] = np.stack([0.03 * wave, 0 * u, 0.24 + 0 * u], -1)
    local[:, J("thorax")] = np.stack([0.05 * wave, 0.03 * wave, 0.5 + 0 * u], -1)
    local[:, J("neck_nose")] = np.stack([0.06 + 0 * u, 0 * u, 0.62 + 0 * u], -1)
    local[:, J("head")] = np.stack([0.03 + 0.03 * wave, 0.02 * wave, 0.74 + 0 * u], -1)
    pelvis = np.stack([3 * u, np.sin(np.pi * u), 0.95 + 0.3 * np.maximum(wave, 0)], -1)
    return pelvis[:, None] + np.einsum("tab,tjb->tja", body, local)


@pytest.fixture(scope="module")
def cmu_jump(cmu_clip) -> np.ndarray:
    """CMU subject 02, trial 04 (jumps) as Human3.6M-17 world joints, z up, 30 frames/s."""
    return cmu_clip("02_04")


def from_file_axes(points_cm: np.ndarray) -> np.ndarray:
    """BVH axes (X, Y up, Z), centimetres -> the world view (x, y, z up), metres."""
    p = np.asarray(points_cm, np.float64) / 100
    return np.stack([p[..., 0], -p[..., 2], p[..., 1]], axis=-1)


def worst_bone_angle_deg(expected: np.ndarray, actual: np.ndarray) -> float:
    """The largest angle between a bone of `expected` and the same bone of `actual`, (T, 17, 3) each."""
    worst = 0.0
    for parent, child in H36M.bones:
        a = expected[:, child] - expected[:, parent]
        b = actual[:, child] - actual[:, parent]
        cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
        worst = max(worst, float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).max()))
    return worst


def own_reader_positions(text: str) -> tuple[np.ndarray, object]:
    clip = parse_bvh(text)
    positions, _ = forward_kinematics(clip)
    names = clip.skeleton.names
    return from_file_axes(positions[:, [names.index(n) for n in H36M.joints]]), clip


@pytest.mark.parametrize("source", ["tumbling", "cmu_jump"])
def test_bvh_round_trip_gives_back_bone_directions(source, request):
    world = tumbling_clip() if source == "tumbling" else request.getfixturevalue("cmu_jump")
    positions, clip = own_reader_positions(bvh_text(world, 30.0))
    assert clip.motion.shape[0] == len(world) and clip.frame_time == pytest.approx(1 / 30, abs=1e-10)
    assert worst_bone_angle_deg(world, positions) < 0.01
    np.testing.assert_allclose(positions[:, J("pelvis")], world[:, J("pelvis")], atol=1e-6)  # the trajectory
    # Bone lengths are the clip's medians, the same in every frame.
    for parent, child in H36M.bones:
        lengths = np.linalg.norm(positions[:, child] - positions[:, parent], axis=-1)
        median = np.median(np.linalg.norm(world[:, child] - world[:, parent], axis=-1))
        np.testing.assert_allclose(lengths, median, atol=1e-6)


def test_file_is_y_up_centimetres_in_a_t_pose_with_median_bone_offsets():
    world = tumbling_clip(40)
    text = bvh_text(world, 25.0)
    clip = parse_bvh(text)
    sk = clip.skeleton
    joints = [n for n in sk.names if not n.endswith("_end")]
    assert set(joints) == set(H36M.joints) | HELPER_JOINTS and joints == [j.name for j in h36m_rig()]
    assert sk.channels[0] == ("Xposition", "Yposition", "Zposition", "Yrotation", "Xrotation", "Zrotation")
    assert all(len(c) == 3 for c, n in zip(sk.channels, sk.names, strict=True) if n in joints[1:])

    def median_cm(a: str, b: str) -> float:
        return 100 * float(np.median(np.linalg.norm(world[:, J(b)] - world[:, J(a)], axis=-1)))

    np.testing.assert_allclose(sk.offsets[sk.index("left_knee")], [0, -median_cm("left_hip", "left_knee"), 0],
                               atol=1e-5)
    np.testing.assert_allclose(sk.offsets[sk.index("left_hip")], [median_cm("pelvis", "left_hip"), 0, 0],
                               atol=1e-5)  # the character's left is +X
    np.testing.assert_allclose(sk.offsets[sk.index("right_elbow")], [-median_cm("right_shoulder", "right_elbow"), 0, 0],
                               atol=1e-5)
    np.testing.assert_allclose(sk.offsets[sk.index("head")], [0, median_cm("neck_nose", "head"), 0], atol=1e-5)
    np.testing.assert_allclose(sk.offsets[sk.index("left_clavicle")], 0)
    # Root position channels: X = 100 x, Y = 100 z (up), Z = -100 y.
    pelvis = world[:, J("pelvis")]
    np.testing.assert_allclose(clip.motion[:, :3], 100 * np.stack([pelvis[:, 0], pelvis[:, 2], -pelvis[:, 1]], -1),
                               atol=1e-4)
    assert "Frame Time: 0.0400000000" in text and f"Frames: {len(world)}" in text


def test_euler_curves_are_continuous_through_two_full_turns():
    world = tumbling_clip(120)
    clip = parse_bvh(bvh_text(world, 30.0))
    yaw = clip.motion[:, 3]  # the root's heading (Yrotation, first)
    assert np.ptp(yaw) > 700  # two turns, not wrapped back to +-180
    column = 0
    for name, channels in zip(clip.skeleton.names, clip.skeleton.channels, strict=True):
        rotations = [k for k, c in enumerate(channels) if c.endswith("rotation")]
        angles = clip.motion[:, [column + k for k in rotations]]
        column += len(channels)
        if not rotations:
            continue
        matrices = euler_to_matrix(angles, "".join(channels[k][0].lower() for k in rotations))
        relative = np.swapaxes(matrices[:-1], -1, -2) @ matrices[1:]
        turn = np.degrees(np.arccos(np.clip((np.trace(relative, axis1=-2, axis2=-1) - 1) / 2, -1, 1)))
        step = np.abs(np.diff(angles, axis=0)).max(axis=-1)
        # No flips: an Euler angle never moves much more than the rotation itself does between two frames.
        assert (step <= 2 * turn + 0.5).all(), (name, float((step - 2 * turn).max()))


@pytest.mark.parametrize("order", ["xyz", "xzy", "yxz", "yzx", "zxy", "zyx"])
def test_euler_decomposition_inverts_the_bvh_reader(order):
    rng = np.random.default_rng(0)
    q = rng.normal(size=(500, 4))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q.T
    matrices = np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)
    np.testing.assert_allclose(euler_to_matrix(np.degrees(matrix_to_euler(matrices, order)), order), matrices,
                               atol=1e-9)
    np.testing.assert_allclose(euler_to_matrix(continuous_euler(matrices, order), order), matrices, atol=1e-9)


def test_bvhio_reads_frame_count_frame_time_joint_names_and_bone_directions(tmp_path, request):
    bvhio = pytest.importorskip("bvhio")
    world = tumbling_clip(60)
    path = tmp_path / "clip.bvh"
    path.write_text(bvh_text(world, 29.97))
    container = bvhio.readAsBvh(str(path))
    assert container.FrameCount == 60 and container.FrameTime == pytest.approx(1 / 29.97, abs=1e-10)
    root = bvhio.readAsHierarchy(str(path))
    joints = {joint.Name: joint for joint, *_ in root.layout()}
    assert set(joints) == set(H36M.joints) | HELPER_JOINTS
    positions = np.zeros((60, 17, 3))
    for frame in range(60):
        root.loadPose(frame, recursive=True)
        for k, name in enumerate(H36M.joints):
            p = joints[name].PositionWorld
            positions[frame, k] = [p.x, p.y, p.z]
    positions = from_file_axes(positions)
    assert worst_bone_angle_deg(world, positions) < 1.0
    np.testing.assert_allclose(positions[:, J("pelvis")], world[:, J("pelvis")], atol=1e-4)


# Runs inside Blender: import the BVH as its own importer does, then write every pose bone's head per frame.
BLENDER_SCRIPT = """
import builtins, json, sys
import bpy

_open = builtins.open
def _open_without_u(file, mode="r", *args, **kwargs):  # Debian's Blender 3.4 importer opens with 'rU' (gone in 3.11)
    return _open(file, mode.replace("U", "") if isinstance(mode, str) else mode, *args, **kwargs)
builtins.open = _open_without_u

bvh_path, out_path = sys.argv[sys.argv.index("--") + 1:]
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.import_anim.bvh(filepath=bvh_path, axis_forward="-Z", axis_up="Y", global_scale=0.01,
                        update_scene_fps=True, update_scene_duration=True, rotate_mode="NATIVE")
scene = bpy.context.scene
armature = bpy.context.view_layer.objects.active
action = armature.animation_data.action
first, last = (int(round(v)) for v in action.frame_range)
heads = {}
for frame in range(first, last + 1):
    scene.frame_set(frame)
    for bone in armature.pose.bones:
        heads.setdefault(bone.name, []).append(list(armature.matrix_world @ bone.head))
with _open(out_path, "w") as out:
    json.dump({"fps": scene.render.fps / scene.render.fps_base, "frames": last - first + 1,
               "keyframes": len(action.fcurves[0].keyframe_points), "bones": [b.name for b in armature.data.bones],
               "heads": heads}, out)
"""


def test_blender_imports_the_file_with_its_frames_frame_rate_bones_and_bone_directions(tmp_path):
    blender = shutil.which("blender")
    if blender is None:
        pytest.skip("blender is not installed (apt-get install blender)")
    world = tumbling_clip(48)
    path = tmp_path / "clip.bvh"
    path.write_text(bvh_text(world, 30.0))
    result_path = tmp_path / "blender.json"
    done = subprocess.run([blender, "-b", "--factory-startup", "--python-expr", BLENDER_SCRIPT, "--", str(path),
                           str(result_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and result_path.is_file(), done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(result_path.read_text())
    assert result["frames"] == 48 and result["keyframes"] == 48
    assert result["fps"] == pytest.approx(30.0, abs=1e-6)
    assert set(result["bones"]) == set(H36M.joints) | HELPER_JOINTS
    # Blender's default axes (forward -Z, up Y) turn the file back into the world view (Blender is Z up).
    heads = np.stack([np.array(result["heads"][name]) for name in H36M.joints], axis=1)
    assert worst_bone_angle_deg(world, heads) < 1.0
    np.testing.assert_allclose(heads[:, J("pelvis")], world[:, J("pelvis")], atol=1e-4)


def test_one_file_name_per_checkpoint():
    assert bvh_file_names("dance", ["poseformerv2_mocap_27_3_3.safetensors", "27_243_45.2.bin", "x/27_243_45.2.bin"]) \
        == ["dance.bvh", "dance_27_243_45.2.bvh", "dance_27_243_45.2_2.bvh"]
    assert bvh_file_names("dance", []) == []


def test_bad_input_is_one_clear_error():
    world = tumbling_clip(10)
    with pytest.raises(ValueError, match="frame rate"):
        bvh_text(world, 0.0)
    with pytest.raises(ValueError, match=r"positions must be \(T, 17, 3\)"):
        bvh_text(world[:, :16], 30.0)
    holes = world.copy()
    holes[3, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        bvh_text(holes, 30.0)
