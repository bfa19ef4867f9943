"""The shared geometry, and the proof that training and inference prepare the lifter's input identically."""
import numpy as np
import pytest
import torch

from pipeline.geometry import (
    DEMO_CAMERA_TO_WORLD,
    camera_to_world,
    demo_world_view,
    flip_poses,
    normalize_screen_coordinates,
    quaternion_to_matrix,
    root_relative,
    world_to_camera,
)
from pipeline.lifting import Lifter
from pipeline.poseformerv2 import PoseFormerV2, PoseFormerV2Config
from pipeline.skeleton import H36M
from pipeline.training import h36m
from pipeline.training.windows import WindowSampler


def test_screen_normalisation_maps_the_width_to_minus_one_to_one_and_keeps_the_aspect_ratio():
    xy = np.array([[0.0, 0.0], [1280.0, 720.0], [640.0, 360.0]])
    out = normalize_screen_coordinates(xy, 1280, 720)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[-1, -0.5625], [1, 0.5625], [0, 0]])
    with pytest.raises(ValueError, match="image size must be positive"):
        normalize_screen_coordinates(xy, 0, 720)


def test_world_view_uses_the_demo_rotation_and_puts_each_frame_on_the_floor():
    from scipy.spatial.transform import Rotation

    camera = np.random.default_rng(0).normal(size=(6, 17, 3)).astype(np.float32)
    w, x, y, z = DEMO_CAMERA_TO_WORLD.astype(np.float64)
    rotated = Rotation.from_quat([x, y, z, w]).apply(camera.reshape(-1, 3)).reshape(camera.shape)
    np.testing.assert_allclose(camera_to_world(camera), rotated, rtol=1e-5, atol=1e-5)
    world = demo_world_view(camera)
    np.testing.assert_allclose(world[..., :2], rotated[..., :2], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(world[..., 2].min(axis=1), 0.0, atol=1e-7)  # per frame, not per sequence
    np.testing.assert_allclose(world[..., 2] - world[:, :1, 2], rotated[..., 2] - rotated[:, :1, 2], atol=1e-5)


def test_world_to_camera_inverts_camera_to_world_and_agrees_with_the_rotation_matrix():
    rng = np.random.default_rng(1)
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    t = np.array([0.5, -1.0, 2.0])
    points = rng.normal(size=(5, 17, 3))
    world = camera_to_world(points, q, t)
    np.testing.assert_allclose(world, points @ quaternion_to_matrix(q).T + t, atol=1e-5)
    np.testing.assert_allclose(world_to_camera(world, q, t), points, atol=1e-5)


def test_flip_swaps_left_and_right_and_negates_x_and_is_its_own_inverse():
    poses = np.random.default_rng(2).normal(size=(4, 17, 3)).astype(np.float32)
    flipped = flip_poses(poses, H36M.flip_permutation)
    left, right = H36M.index("left_wrist"), H36M.index("right_wrist")
    np.testing.assert_array_equal(flipped[:, left], poses[:, right] * np.array([-1, 1, 1], np.float32))
    np.testing.assert_array_equal(flip_poses(flipped, H36M.flip_permutation), poses)
    np.testing.assert_array_equal(root_relative(poses)[:, 0], 0)


def _captured_model_inputs(lifter: Lifter, keypoints_px: np.ndarray, width: int, height: int) -> np.ndarray:
    inputs = []
    handle = lifter.model.register_forward_pre_hook(lambda module, args: inputs.append(args[0].cpu().numpy()))
    try:
        lifter.lift(keypoints_px, width, height, flip=True, batch_size=len(keypoints_px))
    finally:
        handle.remove()
    assert len(inputs) == 1
    return inputs[0]


def test_training_and_inference_feed_the_lifter_identical_windows():
    """The same pixels through the demo's `Lifter.lift` and through the Human3.6M training reader + window sampler:
    the screen-normalised, edge-padded and mirrored windows the network receives are bit-identical."""
    rng = np.random.default_rng(3)
    frames, window = 11, 5
    camera = h36m.CAMERAS[1]
    pixels = rng.uniform(0, [camera.res_w, camera.res_h], size=(frames, 17, 2)).astype(np.float32)

    # Inference: what the demo's lifter hands the network (windows, then their mirror images, in one batch).
    config = PoseFormerV2Config(frames=window, frames_kept=1, coeffs_kept=1, embed_dim_ratio=8, depth=1)
    lifter = Lifter(model=PoseFormerV2(config).eval(), device=torch.device("cpu"))
    seen = _captured_model_inputs(lifter, pixels, camera.res_w, camera.res_h)
    plain, mirrored = seen[:frames], seen[frames:]

    # Training: the Human3.6M reader's normalisation of camera 1's 2D, windows drawn by the sampler.
    world = rng.normal(size=(frames, 17, 3)).astype(np.float32) + np.array([0, 0, 1], np.float32)
    other_cams = [rng.uniform(0, 1000, (frames, 17, 2)).astype(np.float32) for _ in h36m.CAMERAS]
    other_cams[1] = pixels
    sequences = h36m.convert({"S1": {"Walking": world}}, {"S1": {"Walking": other_cams}}, ("S1",))
    sampler = WindowSampler(sequences.select([1]), frames=window, flip=True)
    ids = np.arange(frames)
    trained_plain = sampler.gather(ids, flipped=np.zeros(frames, bool)).inputs_2d
    trained_mirrored = sampler.gather(ids, flipped=np.ones(frames, bool)).inputs_2d

    assert plain.dtype == trained_plain.dtype == np.float32
    np.testing.assert_array_equal(plain, trained_plain)
    np.testing.assert_array_equal(mirrored, trained_mirrored)
