import logging

import numpy as np
import pytest
import torch

from pipeline.checkpoints import CheckpointError, read_checkpoint, save_safetensors
from pipeline.geometry import normalize_screen_coordinates
from pipeline.lifting import (
    Lifter,
    anti_alias,
    frames_from_filename,
    load_lifter,
    save_lifter_checkpoint,
    window_stride,
    window_strides,
)
from pipeline.poseformerv2 import PoseFormerV2, PoseFormerV2Config

RELEASED_NAMES = {  # released file name -> (T, f, n)
    "1_27_48.7.bin": (27, 1, 3),
    "3_27_47.9.bin": (27, 3, 3),
    "1_81_47.6.bin": (81, 1, 3),
    "3_81_47.1.bin": (81, 3, 3),
    "9_81_46.0.bin": (81, 9, 9),
}
pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY = PoseFormerV2Config(frames=9, frames_kept=3, coeffs_kept=5, embed_dim_ratio=8, depth=2, num_heads=2)


def _relative_error(ours, ref):
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def _tiny_lifter(config=TINY, seed=0):
    torch.manual_seed(seed)
    model = PoseFormerV2(config).eval()
    return Lifter(model=model, device=torch.device("cpu"))


def _keypoints(num_frames, seed=1, width=640, height=480):
    rng = np.random.default_rng(seed)
    base = rng.uniform([0.3 * width, 0.2 * height], [0.7 * width, 0.8 * height], size=(1, 17, 2))
    return (base + np.cumsum(rng.normal(0, 3, size=(num_frames, 17, 2)), axis=0)).astype(np.float32)


def _released_demo_camera(model, keypoints_px, width, height, mirror=None):
    """An independent, literal transcription of the released demo's per-frame loop (demo/vis.py); `mirror`: another
    network for the mirrored window (a cross-flip ensemble)."""
    frames = model.config.frames
    pad = (frames - 1) // 2
    joints_left, joints_right = [4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]
    out = []
    for i in range(len(keypoints_px)):
        start, end = max(0, i - pad), min(i + pad, len(keypoints_px) - 1)
        window = keypoints_px[start : end + 1]
        left_pad, right_pad = 0, 0
        if window.shape[0] != frames:
            if i < pad:
                left_pad = pad - i
            if i > len(keypoints_px) - pad - 1:
                right_pad = i + pad - (len(keypoints_px) - 1)
            window = np.pad(window, ((left_pad, right_pad), (0, 0), (0, 0)), "edge")
        x = window / width * 2 - [1, height / width]
        x_aug = x.copy()
        x_aug[:, :, 0] *= -1
        x_aug[:, joints_left + joints_right] = x_aug[:, joints_right + joints_left]
        with torch.no_grad():
            plain = model(torch.from_numpy(x[None].astype("float32")))
            flipped = (mirror or model)(torch.from_numpy(x_aug[None].astype("float32")))
        flipped[:, :, :, 0] *= -1
        flipped[:, :, joints_left + joints_right, :] = flipped[:, :, joints_right + joints_left, :]
        pose = (plain + flipped) / 2
        pose[:, :, 0, :] = 0
        out.append(pose[0, 0].numpy())
    return np.stack(out)


# ----------------------------------------------------------------------------------------------------------------------
# Conformance with the reference fixture (243/27/27)


@pytest.fixture(scope="module")
def reference_lifter(poseformerv2_reference, write_released_checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("released") / "27_243_45.2.bin"
    write_released_checkpoint(path, poseformerv2_reference["state_dict"])
    return load_lifter(path)


def test_reference_checkpoint_loads_and_reproduces_model_output(reference_lifter, poseformerv2_reference):
    npz = poseformerv2_reference["npz"]
    assert (reference_lifter.frames, reference_lifter.config.frames_kept, reference_lifter.config.coeffs_kept) == (
        243, 27, 27)
    assert reference_lifter.checkpoint.name == "27_243_45.2.bin"
    with torch.no_grad():
        out = reference_lifter.model(torch.from_numpy(npz["model_input"])).numpy()
    assert out.shape == (4, 1, 17, 3)
    assert _relative_error(out, npz["model_output"]) <= 1e-4


@pytest.mark.parametrize("sequence", ["seq300", "seq50"])
def test_reference_lift_reproduces_the_released_demo(reference_lifter, poseformerv2_reference, sequence):
    npz = poseformerv2_reference["npz"]
    result = reference_lifter.lift(npz[f"{sequence}_pixels"], int(npz["image_width"]), int(npz["image_height"]))
    assert result.camera.shape == result.world.shape == npz[f"{sequence}_camera"].shape
    assert _relative_error(result.camera, npz[f"{sequence}_camera"]) <= 1e-4
    assert _relative_error(result.world, npz[f"{sequence}_world"]) <= 1e-4


@pytest.mark.parametrize("name", sorted(RELEASED_NAMES))
def test_other_released_configurations_load_and_lift_like_the_demo(
    name, released_state_dict, write_released_checkpoint, tmp_path
):
    frames, kept, coeffs = RELEASED_NAMES[name]
    path = write_released_checkpoint(tmp_path / name, released_state_dict(kept, coeffs))
    lifter = load_lifter(path)
    assert (lifter.frames, lifter.config.frames_kept, lifter.config.coeffs_kept) == (frames, kept, coeffs)
    assert (lifter.config.embed_dim_ratio, lifter.config.depth) == (32, 4)
    keypoints = _keypoints(12)
    camera = lifter.lift(keypoints, 640, 480, batch_size=5).camera
    reference = _released_demo_camera(lifter.model, keypoints, 640, 480)
    assert _relative_error(camera, reference) <= 1e-4


# ----------------------------------------------------------------------------------------------------------------------
# Batching and sequence lengths (small random model, no shared data needed)


@pytest.mark.parametrize("num_frames", [1, 2, 4, 9, 40])  # T = 1, T < window, T = window, T >> window
def test_batched_lift_matches_one_window_at_a_time(num_frames):
    lifter = _tiny_lifter()
    keypoints = _keypoints(num_frames)
    reference = _released_demo_camera(lifter.model, keypoints, 640, 480)
    for batch_size in (1, 3, 64):
        camera = lifter.lift(keypoints, 640, 480, batch_size=batch_size).camera
        assert camera.shape == (num_frames, 17, 3) and camera.dtype == np.float32
        assert _relative_error(camera, reference) <= 1e-5


def test_flip_off_is_the_plain_forward_pass():
    lifter = _tiny_lifter()
    keypoints = _keypoints(5)
    camera = lifter.lift(keypoints, 640, 480, flip=False).camera
    x = normalize_screen_coordinates(keypoints, 640, 480).astype(np.float32)
    index = np.clip(np.arange(5)[:, None] + np.arange(-4, 5)[None, :], 0, 4)
    with torch.no_grad():
        expected = lifter.model(torch.from_numpy(x[index]))[:, 0].numpy()
    expected[:, 0] = 0
    np.testing.assert_allclose(camera, expected, rtol=1e-5, atol=1e-6)


def test_long_sequence_is_lifted_in_bounded_batches():
    config = PoseFormerV2Config(frames=9, frames_kept=1, coeffs_kept=1, embed_dim_ratio=4, depth=1, num_heads=1)
    lifter = _tiny_lifter(config)
    batch_rows = []
    lifter.model.register_forward_hook(lambda module, args, output: batch_rows.append(args[0].shape[0]))
    keypoints = _keypoints(100_000, seed=3)
    camera = lifter.lift(keypoints, 640, 480, batch_size=4096).camera
    assert camera.shape == (100_000, 17, 3) and np.isfinite(camera).all()
    assert max(batch_rows) == 2 * 4096  # windows plus their mirror images, never the whole sequence
    assert sum(batch_rows) == 2 * 100_000
    # Spot-checks against one-window-at-a-time lifting of just the frames each window covers.
    middle = _released_demo_camera(lifter.model, keypoints[49_996:50_005], 640, 480)[4]
    first = _released_demo_camera(lifter.model, keypoints[:9], 640, 480)[0]
    last = _released_demo_camera(lifter.model, keypoints[-9:], 640, 480)[-1]
    for frame, expected in ((50_000, middle), (0, first), (99_999, last)):
        np.testing.assert_allclose(camera[frame], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("stride", [2, 3])
def test_a_strided_window_lifts_every_frame_from_every_stride_th_frame_of_the_smoothed_track(stride):
    lifter = _tiny_lifter()
    keypoints = _keypoints(40)
    camera = lifter.lift(keypoints, 640, 480, stride=stride, batch_size=7).camera
    assert camera.shape == (40, 17, 3)
    # Every frame gets its own pose, from the window of every stride-th frame of the smoothed track around it (its
    # indices clamped into the clip at the ends), lifted as the released demo lifts a window.
    smoothed = anti_alias(keypoints, stride)
    for frame in (0, 1, 5, 20, 21, 38, 39):
        index = np.clip(frame + np.arange(-4, 5) * stride, 0, 39)
        reference = _released_demo_camera(lifter.model, smoothed[index], 640, 480)[4]
        assert _relative_error(camera[frame], reference) <= 1e-5
    assert _relative_error(camera, lifter.lift(keypoints, 640, 480).camera) > 1e-3  # it does change the input
    with pytest.raises(ValueError, match="at least 1 frame"):
        lifter.lift(keypoints, 640, 480, stride=0)


def test_the_anti_alias_filter_is_a_centred_mean_over_stride_frames():
    track = np.arange(10, dtype=np.float32)[:, None, None] ** 2 * np.ones((1, 17, 2), np.float32)
    assert anti_alias(track, 1) is track
    three = anti_alias(track, 3)[:, 0, 0]
    np.testing.assert_allclose(three[1:-1], (track[:-2, 0, 0] + track[1:-1, 0, 0] + track[2:, 0, 0]) / 3)
    assert three[0] == pytest.approx((0 + 0 + 1) / 3)  # the first frame repeated
    two = anti_alias(track, 2)[:, 0, 0]
    np.testing.assert_allclose(two[1:-1], 0.25 * track[:-2, 0, 0] + 0.5 * track[1:-1, 0, 0] + 0.25 * track[2:, 0, 0])
    line = np.linspace(0, 9, 10, dtype=np.float32)[:, None, None] * np.ones((1, 17, 2), np.float32)
    np.testing.assert_allclose(anti_alias(line, 4)[2:-2], line[2:-2], atol=1e-5)  # no lag: a steady motion stays


@pytest.mark.parametrize("fps, stride", [(None, 1), (0.0, 1), (float("nan"), 1), (24, 1), (30, 1), (59.94, 1),
                                         (60, 1), (67, 1), (90, 2), (100, 2), (119.88, 2), (120, 2), (134, 2),
                                         (180, 3), (240, 4), (960, 15)])
def test_the_window_stride_keeps_the_sampled_rate_at_or_below_67_fps(fps, stride):
    assert window_stride(fps) == stride


@pytest.mark.parametrize("fps, strides", [(None, (1,)), (24, (1,)), (30, (1,)), (48, (1,)), (50, (1, 2)),
                                          (59.94, (1, 2)), (60, (1, 2)), (90, (2,)), (100, (2, 4)), (120, (2, 4)),
                                          (240, (4, 8))])
def test_fast_videos_are_lifted_at_their_stride_and_at_twice_it_while_that_samples_25_fps_or_more(fps, strides):
    assert window_strides(fps) == strides


def test_several_strides_give_the_mean_of_their_poses_and_progress_counts_each_frame_once():
    lifter = _tiny_lifter()
    keypoints = _keypoints(30)
    done = []
    both = lifter.lift(keypoints, 640, 480, stride=(1, 2), batch_size=8, progress=done.append).camera
    singles = [lifter.lift(keypoints, 640, 480, stride=s).camera for s in (1, 2)]
    # batch_size=8 against the default batch: float32 matmuls batched differently round differently (seen 2.4e-7 on
    # 1.38 on an AMD EPYC), so a few ulps of float32, not 1e-7 absolute
    np.testing.assert_allclose(both, (singles[0] + singles[1]) / 2, rtol=1e-6, atol=1e-6)
    assert sum(done) == 30 and both.dtype == np.float32
    np.testing.assert_array_equal(lifter.lift(keypoints, 640, 480, stride=(2,)).camera, singles[1])
    with pytest.raises(ValueError, match="at least one window stride"):
        lifter.lift(keypoints, 640, 480, stride=())


def test_progress_reports_every_window():
    lifter = _tiny_lifter()
    done = []
    lifter.lift(_keypoints(10), 640, 480, batch_size=4, progress=done.append)
    assert done == [4, 4, 2]


@pytest.mark.parametrize(
    "keypoints, message",
    [(np.zeros((0, 17, 2)), r"shape \(T >= 1, 17, 2\)"), (np.zeros((5, 16, 2)), "shape"),
     (np.full((3, 17, 2), np.nan), "NaN/inf in 3 frames")],
)
def test_bad_keypoints_are_rejected(keypoints, message):
    with pytest.raises(ValueError, match=message):
        _tiny_lifter().lift(keypoints, 640, 480)


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        _tiny_lifter().lift(_keypoints(3), 640, 480, batch_size=0)


def test_bad_image_size_is_rejected():
    with pytest.raises(ValueError, match="image size must be positive"):
        _tiny_lifter().lift(_keypoints(3), 0, 480)


# ----------------------------------------------------------------------------------------------------------------------
# Geometry


# ----------------------------------------------------------------------------------------------------------------------
# Loading: sources of T, formats, errors


def _tiny_state_dict(prefix=""):
    return {prefix + k: v for k, v in _tiny_lifter().model.state_dict().items()}


def test_frames_from_filename():
    assert frames_from_filename("weights/27_243_45.2.bin") == (27, 243)
    assert frames_from_filename("1_27_48.7.bin") == (1, 27)
    assert frames_from_filename("best_epoch.bin") is None


@pytest.mark.parametrize("prefix", ["", "module."])
def test_plain_state_dict_with_explicit_frames(tmp_path, prefix):
    path = tmp_path / "best_epoch.bin"
    torch.save(_tiny_state_dict(prefix), path)
    lifter = load_lifter(path, frames=9, num_heads=2)
    assert lifter.config == PoseFormerV2Config(**{**TINY.to_dict(), "drop_path_rate": lifter.config.drop_path_rate})
    keypoints = _keypoints(6)
    np.testing.assert_allclose(lifter.lift(keypoints, 640, 480).camera, _tiny_lifter().lift(keypoints, 640, 480).camera,
                               rtol=1e-6, atol=1e-7)


def test_missing_window_length_is_a_clear_error(tmp_path):
    path = tmp_path / "best_epoch.bin"
    torch.save(_tiny_state_dict(), path)
    with pytest.raises(CheckpointError, match=r"cannot tell the window length T of best_epoch.bin.*frames=T"):
        load_lifter(path)


def test_safetensors_without_metadata_needs_frames(tmp_path):
    path = tmp_path / "lifter.safetensors"
    save_safetensors(path, _tiny_state_dict(), {})
    with pytest.raises(CheckpointError, match="cannot tell the window length"):
        load_lifter(path)
    assert load_lifter(path, frames=9, num_heads=2).frames == 9


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_saved_lifter_round_trips_with_its_config(tmp_path, suffix):
    model = _tiny_lifter().model
    path = save_lifter_checkpoint(tmp_path / f"mine{suffix}", model, epoch=3, lr=0.5)
    lifter = load_lifter(path)  # T and the head count come from the stored config
    assert lifter.config == model.config
    keypoints = _keypoints(5)
    np.testing.assert_array_equal(lifter.lift(keypoints, 640, 480).camera,
                                  _tiny_lifter().lift(keypoints, 640, 480).camera)
    if suffix == ".bin":  # released layout, readable by the released code's strict load of model_pos
        ckpt = read_checkpoint(path)
        assert {"epoch", "lr", "random_state", "optimizer", "model_pos"} <= set(ckpt)
        assert all(k.startswith("module.") for k in ckpt["model_pos"])
        assert ckpt["epoch"] == 3


def test_a_cross_flip_ensemble_runs_its_second_network_on_the_mirrored_windows(tmp_path, caplog):
    """`python -m pipeline.mocap ensemble`: one float16 file with two networks; the flip test averages the first on
    the windows with the second's mirrored prediction on the mirrored windows (the demo's loop with the second network
    in the mirrored pass); without the flip test only the first runs. Training code that seeds from the file gets the
    first, or the mirror network when asked (`train --init-network mirror`)."""
    from pipeline.checkpoints import strip_prefix
    from pipeline.mocap.export import export_flip_ensemble, init_training_run, load_any_lifter
    from pipeline.skeleton import H36M
    from pipeline.training.train import predict_centre

    first, second = _tiny_lifter(seed=0).model, _tiny_lifter(seed=1).model
    a = save_lifter_checkpoint(tmp_path / "a.safetensors", first)
    b = save_lifter_checkpoint(tmp_path / "b.safetensors", second)
    both = load_lifter(export_flip_ensemble(a, b, tmp_path / "both.safetensors"))
    assert both.mirror_model is not None and both.config == TINY
    half = {name: _tiny_lifter(seed=seed).model for name, seed in (("first", 0), ("second", 1))}
    for net in half.values():  # the file stores float16
        net.load_state_dict({k: v.half().float() for k, v in net.state_dict().items()})
    keypoints = _keypoints(12)
    expected = _released_demo_camera(half["first"], keypoints, 640, 480, mirror=half["second"])
    assert _relative_error(both.lift(keypoints, 640, 480, batch_size=5).camera, expected) <= 1e-5
    assert _relative_error(both.lift(keypoints, 640, 480, flip=False).camera,
                           Lifter(model=half["first"], device=torch.device("cpu")).lift(keypoints, 640, 480,
                                                                                        flip=False).camera) <= 1e-6
    plain = _released_demo_camera(half["first"], keypoints, 640, 480)  # the ensemble is not the first's flip test
    assert _relative_error(both.lift(keypoints, 640, 480).camera, plain) > 1e-3
    model, facts, mirror = load_any_lifter(tmp_path / "both.safetensors")  # `pipeline.mocap evaluate`

    def same(x, y):
        return all(torch.equal(v, y.state_dict()[k]) for k, v in x.state_dict().items())

    assert same(model, half["first"]) and same(mirror, half["second"]) and facts["flip_ensemble"] is True
    x = normalize_screen_coordinates(keypoints, 640, 480).astype(np.float32)
    windows = np.stack([x[c - 4:c + 5] for c in range(4, 8)])  # full windows centred on frames 4-7
    centre = predict_centre(model, windows, True, H36M.flip_permutation, mirror)
    np.testing.assert_allclose(centre[:, 1:], both.lift_normalized(x)[4:8, 1:], rtol=1e-5, atol=1e-6)
    with caplog.at_level("INFO", logger="pipeline.mocap.export"):  # training seeded from the file
        run = init_training_run(tmp_path / "both.safetensors", TINY, tmp_path / "run", lr=1e-4)
        mirror_run = init_training_run(tmp_path / "both.safetensors", TINY, tmp_path / "mirror_run", lr=1e-4,
                                       network="mirror")
    assert "holds two networks (a cross-flip ensemble); the run starts from the first one" in caplog.text
    assert "the run starts from the mirror one" in caplog.text
    for path, expected_net in ((run, half["first"]), (mirror_run, half["second"])):
        seeded = PoseFormerV2(TINY)
        seeded.load_state_dict(strip_prefix(read_checkpoint(path)["model_pos"]))
        assert same(seeded, expected_net)
    with pytest.raises(ValueError, match="holds one network, no mirror network"):
        init_training_run(a, TINY, tmp_path / "single", lr=1e-4, network="mirror")
    deeper = save_lifter_checkpoint(tmp_path / "c.safetensors", PoseFormerV2(PoseFormerV2Config(
        frames=9, frames_kept=3, coeffs_kept=5, embed_dim_ratio=8, depth=3, num_heads=2)))
    with pytest.raises(ValueError, match="not the same configuration: depth 2 against 3"):
        export_flip_ensemble(a, deeper, tmp_path / "mixed.safetensors")


def test_the_flip_difference_gives_each_pass_of_the_flip_test_and_needs_the_flip_test(tmp_path):
    """Mean plus half the difference is the first network on the 2D; minus it, the mirror network's pass, mirrored
    back; with several strides both are averaged alike."""
    from pipeline.geometry import flip_poses
    from pipeline.mocap.export import export_flip_ensemble
    from pipeline.skeleton import H36M

    first, second = _tiny_lifter(seed=0).model, _tiny_lifter(seed=1).model
    a = save_lifter_checkpoint(tmp_path / "a.safetensors", first)
    b = save_lifter_checkpoint(tmp_path / "b.safetensors", second)
    both = load_lifter(export_flip_ensemble(a, b, tmp_path / "both.safetensors"))
    keypoints = _keypoints(14)
    mean = both.lift(keypoints, 640, 480, stride=(1, 2)).camera
    half = both.lift(keypoints, 640, 480, stride=(1, 2), flip_difference=True).camera
    alone = Lifter(model=both.model, device=torch.device("cpu"))
    first_pass = np.mean([alone.lift(keypoints, 640, 480, flip=False, stride=s).camera for s in (1, 2)], axis=0)
    mirror = Lifter(model=both.mirror_model, device=torch.device("cpu"))
    flipped = flip_poses(keypoints, H36M.flip_permutation) + [640, 0]  # the picture mirrored: x -> width - x
    second_pass = np.mean([flip_poses(mirror.lift(flipped.astype(np.float32), 640, 480, flip=False, stride=s).camera,
                                      H36M.flip_permutation) for s in (1, 2)], axis=0)
    np.testing.assert_allclose((mean + half)[:, 1:], first_pass[:, 1:], atol=1e-5)
    np.testing.assert_allclose((mean - half)[:, 1:], second_pass[:, 1:], atol=1e-5)
    assert np.abs(half).max() > 1e-3  # two different networks disagree
    with pytest.raises(ValueError, match="flip_difference needs the flip test"):
        both.lift(keypoints, 640, 480, flip=False, flip_difference=True)


def test_a_file_whose_mirror_network_is_missing_or_partial_is_refused(tmp_path):
    model = _tiny_lifter().model
    meta = {"format": "poseformerv2", "config": model.config.to_dict(), "mirror_network": "mirror."}
    save_safetensors(tmp_path / "none.safetensors", model.state_dict(), meta)
    with pytest.raises(CheckpointError, match="no tensor is named so"):
        load_lifter(tmp_path / "none.safetensors")
    partial = {**model.state_dict(), **{f"mirror.{k}": v.clone() for k, v in list(model.state_dict().items())[:5]}}
    save_safetensors(tmp_path / "partial.safetensors", partial, meta)
    with pytest.raises(CheckpointError, match=r"its mirror network \(mirror\.\*\).* missing"):
        load_lifter(tmp_path / "partial.safetensors")
    save_safetensors(tmp_path / "empty.safetensors", model.state_dict(), {**meta, "mirror_network": ""})
    with pytest.raises(CheckpointError, match="empty prefix"):
        load_lifter(tmp_path / "empty.safetensors")


def test_hrnet_checkpoint_is_not_a_lifter(tmp_path):
    path = tmp_path / "27_243_45.2.bin"  # even with a lifter's name
    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3), "bn1.weight": torch.zeros(64)}, path)
    with pytest.raises(CheckpointError, match=r"not a PoseFormerV2 state dict: expected tensors .*found bn1.weight"):
        load_lifter(path)


def test_yolo_style_pickled_model_is_refused(tmp_path):
    path = tmp_path / "yolo11n-pose.pt"
    torch.save({"model": torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))}, path)
    with pytest.raises(CheckpointError, match="may be malicious or written by a tool"):
        load_lifter(path, frames=243)


def test_a_pickled_model_is_refused_even_when_another_library_allowed_its_layers(tmp_path):
    # Ultralytics adds every torch.nn layer of a YOLO file it loaded to torch's allow-list, for the whole process.
    path = tmp_path / "yolo11n-pose.pt"
    torch.save({"model": torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))}, path)
    with torch.serialization.safe_globals([torch.nn.Sequential, torch.nn.Conv2d]):
        with pytest.raises(CheckpointError, match="holds a pickled torch.nn.modules.container.Sequential.*malicious"):
            load_lifter(path, frames=243)


def test_truncated_checkpoint(tmp_path, write_released_checkpoint):
    full = write_released_checkpoint(tmp_path / "full.bin", _tiny_state_dict())
    cut = tmp_path / "9_9_50.0.bin"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_lifter(cut)


def test_wrong_and_missing_tensors_are_listed(tmp_path):
    state = _tiny_state_dict()
    state["Spatial_blocks.0.attn.qkv.weight"] = torch.zeros(23, 8)
    del state["head.1.bias"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "3_9_50.0.bin"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_lifter(path, num_heads=2)
    message = str(info.value)
    assert "1 missing (head.1.bias)" in message and "1 unexpected (extra.weight)" in message
    assert "Spatial_blocks.0.attn.qkv.weight: expected (24, 8), found (23, 8)" in message


def test_file_name_that_does_not_describe_the_weights(tmp_path):
    path = tmp_path / "27_243_45.2.bin"  # claims f=27, holds f=3
    torch.save(_tiny_state_dict(), path)
    with pytest.raises(CheckpointError, match="says f=27 frames kept, but the weights have f=3"):
        load_lifter(path, num_heads=2)


def test_window_too_short_for_the_weights(tmp_path):
    path = tmp_path / "best.bin"
    torch.save(_tiny_state_dict(), path)
    with pytest.raises(CheckpointError, match="do not fit a 3-frame window.*coeffs_kept=5"):
        load_lifter(path, frames=3, num_heads=2)


def test_explicit_frames_override_the_file_name_with_a_warning(tmp_path, caplog):
    path = tmp_path / "3_27_50.0.bin"
    torch.save(_tiny_state_dict(), path)
    with caplog.at_level(logging.WARNING, logger="pipeline.lifting"):
        assert load_lifter(path, frames=9, num_heads=2).frames == 9
    assert "file name says T=27" in caplog.text


# ----------------------------------------------------------------------------------------------------------------------
# Devices


def test_precision_choices_on_cpu(tmp_path):
    path = save_lifter_checkpoint(tmp_path / "tiny.safetensors", _tiny_lifter().model)
    with pytest.raises(ValueError, match="not supported on cpu"):
        load_lifter(path, precision="fp16")
    keypoints = _keypoints(6)
    bf16 = load_lifter(path, precision="bf16").lift(keypoints, 640, 480).camera
    fp32 = load_lifter(path).lift(keypoints, 640, 480).camera
    assert bf16.dtype == np.float32
    assert _relative_error(bf16, fp32) < 0.1  # bf16 keeps ~3 significant digits
