import dataclasses
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.checkpoints import strip_prefix
from pipeline.geometry import camera_to_world, flip_poses
from pipeline.lifting import load_lifter
from pipeline.poseformerv2 import PoseFormerV2, PoseFormerV2Config
from pipeline.skeleton import H36M
from pipeline.training import h36m
from pipeline.training.evaluate import evaluate_model, load_model, predict_sequences, score
from pipeline.training.evaluate import main as evaluate_main
from pipeline.training.train import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    OPTIMIZERS,
    TrainConfig,
    load_checkpoint,
    make_optimizer,
    train,
    train_on_fresh_sets,
)
from pipeline.training.train import main as train_main
from pipeline.training.windows import SequenceSet, WindowSampler

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TINY = PoseFormerV2Config(frames=9, frames_kept=3, coeffs_kept=3, embed_dim_ratio=8, depth=1, drop_path_rate=0.1)


# ---------------------------------------------------------------------------------------------------------------------
# Synthetic VideoPose3D-format files


def _hamilton(a, b):
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return np.array([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2])


def _reference_world_to_camera(p, q, t_mm):
    """q^-1 (p - t) q, written with explicit quaternion products (independent of the module's matrix)."""
    q = np.asarray(q) / np.linalg.norm(q)
    q_inv = q * np.array([1, -1, -1, -1])
    out = np.empty_like(p, dtype=np.float64)
    for idx in np.ndindex(p.shape[:-1]):
        v = np.concatenate([[0.0], p[idx] - np.asarray(t_mm) / 1000])
        out[idx] = _hamilton(_hamilton(q_inv, v), q)[1:]
    return out


def _write_h36m(folder: Path, lengths: dict[str, dict[str, int]], extra_2d_frames=3, seed=0):
    rng = np.random.default_rng(seed)
    positions_3d, positions_2d = {}, {}
    for subject, actions in lengths.items():
        positions_3d[subject], positions_2d[subject] = {}, {}
        for action, n in actions.items():
            # A person-sized cloud near the middle of the capture volume, in front of every camera.
            world = (np.array([0.0, 0.0, 1.0]) + 0.4 * rng.standard_normal((n, 32, 3))).astype(np.float32)
            positions_3d[subject][action] = world
            cams = []
            for cam, (q, t) in zip(h36m.CAMERAS, h36m.EXTRINSICS[subject], strict=True):
                c = _reference_world_to_camera(world[:, list(h36m.KEPT_MOCAP_JOINTS)], q, t)
                px = c[..., :2] / c[..., 2:] * np.array(cam.focal_length) + np.array(cam.center)
                px = np.concatenate([px, rng.uniform(0, 1000, (extra_2d_frames, 17, 2))])
                cams.append(px.astype(np.float32))
            positions_2d[subject][action] = cams
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / "data_3d_h36m.npz", positions_3d=positions_3d)
    metadata = {"layout_name": "h36m", "num_joints": 17,
                "keypoints_symmetry": [[4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]]}
    np.savez_compressed(folder / "data_2d_h36m_synth.npz", positions_2d=positions_2d, metadata=metadata)
    return positions_3d, positions_2d


def test_h36m_reader_projects_trims_normalises_and_splits(tmp_path):
    lengths = {"S1": {"Walking 1": 12, "Eating": 10}, "S5": {"Walking": 11}, "S9": {"Walking 1": 13}}
    pos3d, pos2d = _write_h36m(tmp_path / "data", lengths)
    data = h36m.load_h36m(tmp_path / "data", "synth", train_subjects=("S1", "S5"), test_subjects=("S9",),
                          cache_dir=tmp_path / "cache")
    assert len(data.train) == 3 * 4 and len(data.test) == 4
    assert data.train.names[0] == "S1/Eating/54138969"
    assert sorted(set(data.train.groups)) == ["Eating", "Walking"]  # "Walking 1" and "Walking" pool
    assert data.test.groups == ["Walking"] * 4
    assert data.train.num_frames == 4 * (12 + 10 + 11)

    i = data.train.names.index("S5/Walking/58860488")
    q, t = h36m.EXTRINSICS["S5"][2]
    expected_3d = _reference_world_to_camera(pos3d["S5"]["Walking"][:, list(h36m.KEPT_MOCAP_JOINTS)], q, t)
    np.testing.assert_allclose(data.train.targets_3d[i], expected_3d, atol=1e-5)
    assert (data.train.targets_3d[i][..., 2] > 1).all()  # in front of the camera
    px = pos2d["S5"]["Walking"][2][:11]  # extra 2D frames beyond the mocap are cut
    np.testing.assert_allclose(data.train.inputs_2d[i], px / 1000 * 2 - np.array([1, 1000 / 1000]), atol=1e-6)
    # Camera 0 is 1000x1002: y is normalised with h / w, not centred at 0.
    j = data.train.names.index("S5/Walking/54138969")
    np.testing.assert_allclose(data.train.inputs_2d[j][..., 1], pos2d["S5"]["Walking"][0][:11, :, 1] / 500 - 1.002,
                               atol=1e-6)

    # The second read comes from the plain-array cache and gives the same sets.
    cached = list((tmp_path / "cache").glob("*.npz"))
    assert len(cached) == 2
    again = h36m.load_h36m(tmp_path / "data", "synth", train_subjects=("S1", "S5"), test_subjects=("S9",),
                           cache_dir=tmp_path / "cache")
    assert again.train.names == data.train.names and again.test.groups == data.test.groups
    for a, b in zip(again.train.targets_3d, data.train.targets_3d, strict=True):
        np.testing.assert_array_equal(a, b)


def test_h36m_reader_rejects_short_2d_and_code_in_pickles(tmp_path):
    _write_h36m(tmp_path / "short", {"S1": {"Walking": 10}, "S9": {"Walking": 10}}, extra_2d_frames=0)
    pos2d = h36m.read_npz_entry(tmp_path / "short" / "data_2d_h36m_synth.npz", "positions_2d")
    pos2d["S1"]["Walking"][1] = pos2d["S1"]["Walking"][1][:7]
    np.savez_compressed(tmp_path / "short" / "data_2d_h36m_synth.npz", positions_2d=pos2d,
                        metadata={"num_joints": 17})
    with pytest.raises(ValueError, match="7 2D frames but 10 3D frames"):
        h36m.load_h36m(tmp_path / "short", "synth", ("S1",), ("S9",), cache_dir=None)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.npz"
    payload = np.empty((), dtype=object)
    payload[()] = {"S1": Evil()}
    np.savez(evil, positions_3d=payload)
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        h36m.read_npz_entry(evil, "positions_3d")
    assert zipfile.is_zipfile(evil)


def test_quaternion_convention_matches_the_released_demo_fixture():
    fixture = SHARED / "fixtures" / "poseformerv2" / "fixture_243_27_27.npz"
    if not fixture.is_file():
        pytest.skip("../shared fixture not available")
    d = np.load(fixture)
    # The demo rotates camera-space output into the world with Human3.6M S1 camera 0's orientation, then puts each
    # frame's lowest joint at z = 0.
    world = camera_to_world(d["seq50_camera"], h36m.EXTRINSICS["S1"][0][0], np.zeros(3))
    world[..., 2] -= world[..., 2].min(axis=-1, keepdims=True)
    np.testing.assert_allclose(world, d["seq50_world"], atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Windows


def _sequences(lengths=(5, 8), seed=0, joints=17):
    rng = np.random.default_rng(seed)
    return SequenceSet(
        inputs_2d=[rng.standard_normal((n, joints, 2)).astype(np.float32) for n in lengths],
        targets_3d=[rng.standard_normal((n, joints, 3)).astype(np.float32) for n in lengths],
        names=[f"seq{i}" for i in range(len(lengths))],
    )


def test_windows_are_edge_padded_within_their_sequence():
    seqs = _sequences((5, 8))
    sampler = WindowSampler(seqs, frames=7, flip=False)
    idx = sampler.window_indices(np.array([0, 4, 5, 12]))
    np.testing.assert_array_equal(idx[0], [0, 0, 0, 0, 1, 2, 3])
    np.testing.assert_array_equal(idx[1], [1, 2, 3, 4, 4, 4, 4])  # never crosses into the next sequence
    np.testing.assert_array_equal(idx[2], [5, 5, 5, 5, 6, 7, 8])
    np.testing.assert_array_equal(idx[3], [9, 10, 11, 12, 12, 12, 12])
    batch = sampler.gather(np.array([6]))
    np.testing.assert_array_equal(batch.inputs_2d[0, 0], seqs.inputs_2d[1][0])
    np.testing.assert_array_equal(batch.inputs_2d[0, 3], seqs.inputs_2d[1][1])
    target = seqs.targets_3d[1][1]
    np.testing.assert_allclose(batch.targets_3d[0], target - target[0])


def test_short_clip_windows_are_padded_like_a_short_clip_in_the_demo():
    seqs = _sequences((400,))
    sampler = WindowSampler(seqs, frames=243, flip=False, short_clips=0.5)
    # An explicit view: the centre sees 10 frames before and 20 after it, then the edges repeat, as the demo pads.
    idx = sampler.window_indices(np.array([200]), visible=np.array([[-10, 20]]))[0]
    np.testing.assert_array_equal(idx[:111], 190)
    np.testing.assert_array_equal(idx[111:142], np.arange(190, 221))  # frames 190..220; the centre is index 121
    np.testing.assert_array_equal(idx[142:], 220)
    views = sampler.short_clip_views(4000, np.random.RandomState(0))
    cut = views[:, 1] < 10**9
    assert 0.45 < cut.mean() < 0.55  # the share asked for
    lengths = views[cut, 1] - views[cut, 0] + 1
    assert lengths.min() >= 8 and lengths.max() <= 2 * 243 and np.median(lengths) < 243
    assert (views[cut, 0] <= 0).all() and (views[cut, 1] >= 0).all()  # the centre frame is always seen
    batch = sampler.sample(64, np.random.RandomState(1))
    assert batch.inputs_2d.shape == (64, 243, 17, 2)


def test_flip_mirrors_2d_and_3d_together():
    seqs = _sequences((6,))
    sampler = WindowSampler(seqs, frames=3, flip=True)
    plain = sampler.gather(np.array([2, 2]), flipped=np.array([False, True]))
    left, right = H36M.index("left_wrist"), H36M.index("right_wrist")
    np.testing.assert_array_equal(plain.inputs_2d[1, :, left, 0], -plain.inputs_2d[0, :, right, 0])
    np.testing.assert_array_equal(plain.inputs_2d[1, :, left, 1], plain.inputs_2d[0, :, right, 1])
    np.testing.assert_array_equal(plain.targets_3d[1, left], plain.targets_3d[0, right] * np.array([-1, 1, 1]))
    perm = H36M.flip_permutation
    np.testing.assert_array_equal(flip_poses(flip_poses(plain.targets_3d, perm), perm), plain.targets_3d)
    drawn = sampler.sample(200, np.random.RandomState(0))
    assert 60 < drawn.flipped.sum() < 140


def test_sampler_does_not_copy_sets_split_from_one_array():
    flat_2d = np.random.default_rng(0).standard_normal((30, 17, 2)).astype(np.float32)
    flat_3d = np.random.default_rng(1).standard_normal((30, 17, 3)).astype(np.float32)
    split = [4, 13]
    seqs = SequenceSet(np.split(flat_2d, split), np.split(flat_3d, split), ["a", "b", "c"])
    sampler = WindowSampler(seqs, frames=5, flip=False)
    assert np.shares_memory(sampler._all_2d, flat_2d) and np.shares_memory(sampler._all_3d, flat_3d)
    reordered = WindowSampler(seqs.select([2, 0]), frames=5, flip=False)  # not consecutive: copied
    assert not np.shares_memory(reordered._all_2d, flat_2d)
    np.testing.assert_array_equal(reordered.gather(np.array([0])).inputs_2d[0, 2], flat_2d[13])
    np.testing.assert_array_equal(sampler.gather(np.array([13])).inputs_2d[0, 2], flat_2d[13])


def test_sequence_set_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="equal T"):
        SequenceSet([np.zeros((4, 17, 2), np.float32)], [np.zeros((5, 17, 3), np.float32)], ["a"])


# ---------------------------------------------------------------------------------------------------------------------
# Training


def _overfit_set(frames=40, seed=1):
    """A smooth 3D motion and its perspective projection, so that the 2D determines the 3D."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((17, 3)).astype(np.float32) * 0.3
    t = np.linspace(0, 2 * np.pi, frames, dtype=np.float32)[:, None, None]
    pose = base[None] + 0.2 * np.sin(t + base[None, :, :1] * 3)
    cam = pose + np.array([0, 0, 4.0], np.float32)
    two_d = (cam[..., :2] / cam[..., 2:]).astype(np.float32)
    return SequenceSet([two_d], [cam.astype(np.float32)], ["overfit"])


def test_training_reduces_the_loss_and_writes_loadable_checkpoints(tmp_path):
    data = _overfit_set()
    config = TrainConfig(run_dir=tmp_path / "run", batch_size=16, threads=1, lr=1e-3, weight_decay=0.0,
                         max_samples=16 * 80, samples_per_epoch=16 * 40, validation_frames=20)
    result = train(TINY, data, data, config)
    assert result.step == 80 and result.epoch == 2
    assert np.mean(result.losses[-10:]) < 0.5 * np.mean(result.losses[:5])
    assert set(result.validation) == {"mpjpe", "p_mpjpe"}

    chk = load_checkpoint(tmp_path / "run" / LAST_CHECKPOINT)  # weights_only=True inside
    assert {"epoch", "lr", "optimizer", "model_pos", "random_state"} <= set(chk)
    assert isinstance(chk["random_state"], np.random.RandomState)  # as the released training code stores it
    assert chk["epoch"] == 2 and chk["lr"] == pytest.approx(1e-3 * 0.99**2)
    assert all(k.startswith("module.") for k in chk["model_pos"])
    assert (tmp_path / "run" / BEST_CHECKPOINT).is_file()
    assert "validation at step 80" in (tmp_path / "run" / "train.log").read_text()

    model = PoseFormerV2(TINY).eval()
    model.load_state_dict(strip_prefix(chk["model_pos"]))
    window = WindowSampler(data, frames=9, flip=False).gather(np.array([20]))
    with torch.no_grad():
        pred = model(torch.from_numpy(window.inputs_2d))[0, 0].numpy()
    assert np.linalg.norm(pred - window.targets_3d[0], axis=-1).mean() < np.mean(result.losses[:5])


def _straight_and_resumed(tmp_path, device: str):
    """8 steps in one call (run a), and 4 + 4 with a resume in between (run b)."""
    data = _overfit_set(frames=30)
    common = dict(device=device, batch_size=8, threads=1, samples_per_epoch=8 * 3, validation_frames=8)
    straight = train(TINY, data, data, TrainConfig(run_dir=tmp_path / "a", max_samples=8 * 8, **common))
    first = train(TINY, data, data, TrainConfig(run_dir=tmp_path / "b", max_samples=8 * 4, **common))
    second = train(TINY, data, data, TrainConfig(run_dir=tmp_path / "b", max_samples=8 * 4, resume=True, **common))
    return straight, first, second


def test_resume_continues_bit_exactly(tmp_path):
    straight, first, second = _straight_and_resumed(tmp_path, "cpu")  # bit for bit: the CPU's kernels
    assert second.step == 8 and second.epoch == straight.epoch == 2
    assert first.losses + second.losses == straight.losses  # drop path and sampling resume exactly
    a = load_checkpoint(tmp_path / "a" / LAST_CHECKPOINT)["model_pos"]
    b = load_checkpoint(tmp_path / "b" / LAST_CHECKPOINT)["model_pos"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fresh_sets_take_turns_by_samples_seen_and_a_resumed_run_continues_on_the_right_one(tmp_path):
    asked = []

    def training_set(k):
        asked.append(k)
        return _overfit_set(frames=30, seed=10 + k)

    common = dict(device="cpu", batch_size=8, threads=1, samples_per_epoch=8 * 3, validation_frames=8)
    # 10 steps with a new set every 4: sets 0, 1 and half of 2; then resumed for 3 more steps, in set 2 and 3.
    first = train_on_fresh_sets(TINY, training_set, _overfit_set(frames=30), TrainConfig(
        run_dir=tmp_path / "fresh", max_samples=8 * 10, **common), samples_per_set=8 * 4)
    assert asked == [0, 1, 2] and first.step == 10 and first.samples_seen == 80 and len(first.losses) == 10
    second = train_on_fresh_sets(TINY, training_set, _overfit_set(frames=30), TrainConfig(
        run_dir=tmp_path / "fresh", max_samples=8 * 3, resume=True, **common), samples_per_set=8 * 4)
    assert asked == [0, 1, 2, 2, 3] and second.step == 13
    # Each stretch trained on its own set: the same steps on set 0 alone give other weights from step 5 on.
    plain = train(TINY, _overfit_set(frames=30, seed=10), None, TrainConfig(
        run_dir=tmp_path / "plain", max_samples=8 * 13, **common))
    assert plain.losses[:4] == first.losses[:4] and plain.losses[4:10] != first.losses[4:10]
    with pytest.raises(ValueError, match="samples_per_set must be positive"):
        train_on_fresh_sets(TINY, training_set, None, TrainConfig(run_dir=tmp_path / "x", **common), 0)
    with pytest.raises(ValueError, match="a fixed samples_per_epoch"):
        train_on_fresh_sets(TINY, training_set, None, TrainConfig(run_dir=tmp_path / "x", **{
            **common, "samples_per_epoch": None}), 8)


def test_a_finished_fresh_sets_run_resumes_without_making_a_set_and_its_log_names_each_set(tmp_path):
    asked = []

    def training_set(k):
        asked.append(k)
        return _overfit_set(frames=30, seed=10 + k)

    common = dict(device="cpu", batch_size=8, threads=1, samples_per_epoch=8 * 2, epochs=3, validation_frames=8)
    first = train_on_fresh_sets(TINY, training_set, None, TrainConfig(run_dir=tmp_path / "done", **common),
                                samples_per_set=8 * 4)
    assert first.finished and first.step == 6 and asked == [0, 1]
    again = train_on_fresh_sets(TINY, training_set, None, TrainConfig(run_dir=tmp_path / "done", resume=True,
                                                                      **common), samples_per_set=8 * 4)
    assert again.finished and again.step == 6 and again.epoch == 3 and again.losses == [] and asked == [0, 1]
    log_text = (tmp_path / "done" / "train.log").read_text()
    assert "samples 0-32: training set 0" in log_text and "samples 32-64: training set 1" in log_text
    assert "has finished all 3 epochs" in log_text
    other = dataclasses.replace(TINY, depth=TINY.depth + 1)
    with pytest.raises(ValueError, match="was trained with model config"):
        train_on_fresh_sets(other, training_set, None, TrainConfig(run_dir=tmp_path / "done", resume=True, **common),
                            samples_per_set=8 * 4)


def test_fresh_sets_do_not_train_on_a_set_whose_rendering_ended_after_the_time_limit(tmp_path):
    import time as clock

    asked = []

    def slow_set(k):
        asked.append(k)
        clock.sleep(1.5)
        return _overfit_set(frames=30, seed=10 + k)

    common = dict(device="cpu", batch_size=8, threads=1, samples_per_epoch=8 * 3, validation_frames=8)
    result = train_on_fresh_sets(TINY, slow_set, None, TrainConfig(run_dir=tmp_path / "t", max_minutes=2 / 60,
                                                                   **common), samples_per_set=8)
    # Set 0 is rendered and trained on (one step); set 1's rendering, if it starts, ends past the limit: no step on it.
    assert result.step == 1 and asked in ([0], [0, 1])


def test_a_run_saved_by_the_unfused_optimizer_resumes_exactly_as_one_saved_by_the_fused(tmp_path):
    data = _overfit_set(frames=30)
    common = dict(device="cpu", batch_size=8, threads=1, samples_per_epoch=8 * 3, validation_frames=8,
                  max_samples=8 * 3)
    train(TINY, data, data, TrainConfig(run_dir=tmp_path / "new", **common))
    chk = load_checkpoint(tmp_path / "new" / LAST_CHECKPOINT)
    assert all(group["fused"] for group in chk["optimizer"]["param_groups"])
    # Runs started before the optimizer was fused saved groups without it (torch would take the saved options).
    for group in chk["optimizer"]["param_groups"]:
        group["fused"] = None
    (tmp_path / "old").mkdir()
    torch.save(chk, tmp_path / "old" / LAST_CHECKPOINT)
    new = train(TINY, data, data, TrainConfig(run_dir=tmp_path / "new", resume=True, **common))
    old = train(TINY, data, data, TrainConfig(run_dir=tmp_path / "old", resume=True, **common))
    assert old.losses == new.losses
    resumed = load_checkpoint(tmp_path / "old" / LAST_CHECKPOINT)["optimizer"]
    assert all(group["fused"] for group in resumed["param_groups"])


def test_the_training_optimizer_is_fused_and_makes_the_recipes_update(tmp_path):
    for recipe in OPTIMIZERS:
        optimizer = make_optimizer(PoseFormerV2(TINY), TrainConfig(run_dir=tmp_path, optimizer=recipe))
        assert optimizer.defaults["fused"]
    torch.manual_seed(0)
    models = [PoseFormerV2(TINY).eval() for _ in range(2)]  # eval: no random drop path, the same gradients
    models[1].load_state_dict(models[0].state_dict())
    initial = {name: p.detach().clone() for name, p in models[0].named_parameters()}
    optimizers = [make_optimizer(models[0], TrainConfig(run_dir=tmp_path, lr=1e-3, weight_decay=0.1)),
                  torch.optim.AdamW(models[1].parameters(), lr=1e-3, weight_decay=0.1, foreach=False)]
    inputs = torch.randn(4, TINY.frames, 17, 2)
    for _ in range(3):
        for model, optimizer in zip(models, optimizers, strict=True):
            optimizer.zero_grad()
            model(inputs).square().mean().backward()
            optimizer.step()
    moved = max(float((p.detach() - initial[name]).abs().max()) for name, p in models[0].named_parameters())
    assert moved > 1e-3  # three steps of lr 1e-3 moved the weights
    # Equal to rounding, except where Adam divides rounding noise by rounding noise: the attention's key bias has a
    # zero gradient up to rounding (softmax is blind to it), and its steps differ by up to 2e-5 of the 3e-3 moved.
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.allclose(a, b, atol=5e-5)
    assert sum(not torch.allclose(a, b, atol=1e-6) for a, b in zip(*(m.parameters() for m in models), strict=True)) <= 4


def test_bfloat16_training_computes_in_bfloat16_learns_and_keeps_float32_weights(tmp_path):
    data = _overfit_set()
    common = dict(device="cpu", batch_size=16, threads=1, lr=1e-3, weight_decay=0.0, max_samples=16 * 60,
                  samples_per_epoch=16 * 40, validation_frames=20)
    full = train(TINY, data, data, TrainConfig(run_dir=tmp_path / "fp32", **common))
    half = train(TINY, data, data, TrainConfig(run_dir=tmp_path / "bf16", precision="bf16", **common))
    # The same weights and the same first batch: the loss agrees to bfloat16's rounding, but not exactly.
    assert half.losses[0] != full.losses[0] and half.losses[0] == pytest.approx(full.losses[0], rel=0.02)
    assert np.mean(half.losses[-10:]) < 0.5 * np.mean(half.losses[:5])
    chk = load_checkpoint(tmp_path / "bf16" / LAST_CHECKPOINT)
    assert all(v.dtype == torch.float32 for v in chk["model_pos"].values())
    assert chk["train_config"]["precision"] == "bf16"
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(run_dir=tmp_path, precision="fp16")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile on a CPU needs a C++ compiler")
def test_a_compiled_model_trains_as_the_eager_one_and_saves_the_same_keys(tmp_path):
    still = dataclasses.replace(TINY, drop_path_rate=0.0)  # compiled drop path draws from another generator
    data = _overfit_set(frames=30)
    common = dict(device="cpu", batch_size=8, threads=1, samples_per_epoch=8 * 3, validation_frames=8,
                  max_samples=8 * 6)
    eager = train(still, data, data, TrainConfig(run_dir=tmp_path / "eager", **common))
    compiled = train(still, data, data, TrainConfig(run_dir=tmp_path / "compiled", compile=True, **common))
    assert np.allclose(compiled.losses, eager.losses, rtol=1e-4)
    keys = [set(load_checkpoint(tmp_path / run / LAST_CHECKPOINT)["model_pos"]) for run in ("eager", "compiled")]
    assert keys[0] == keys[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_training_on_a_gpu_the_machine_lacks_is_a_clear_error(tmp_path):
    data = _overfit_set(frames=20)
    with pytest.raises(ValueError, match="CUDA is not available"):
        train(TINY, data, data, TrainConfig(run_dir=tmp_path / "run", batch_size=4, max_samples=4, device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_gpu_run_resumes_with_its_own_random_draws(tmp_path):
    straight, first, second = _straight_and_resumed(tmp_path, "cuda")
    # CUDA kernels may round differently from run to run, but drop path must not replay the first steps' masks.
    assert np.allclose(first.losses + second.losses, straight.losses, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_run_trained_on_the_gpu_resumes_on_the_cpu_and_back(tmp_path):
    data = _overfit_set(frames=30)
    common = dict(run_dir=tmp_path / "run", batch_size=8, threads=1, lr=1e-3, weight_decay=0.0,
                  samples_per_epoch=8 * 10, validation_frames=8, max_samples=8 * 30)
    gpu = train(TINY, data, data, TrainConfig(device="cuda", **common))
    cpu = train(TINY, data, data, TrainConfig(device="cpu", resume=True, **common))
    again = train(TINY, data, data, TrainConfig(device="cuda", resume=True, **common))
    assert again.step == 90 and again.samples_seen == 8 * 90
    assert np.mean(again.losses[-10:]) < np.mean(cpu.losses[-10:]) < np.mean(gpu.losses[:5])
    chk = load_checkpoint(tmp_path / "run" / LAST_CHECKPOINT)  # read on the CPU
    assert all(v.device.type == "cpu" for v in chk["model_pos"].values())


def test_checkpoints_are_frequent_and_validation_is_rationed(tmp_path):
    data = _overfit_set(frames=20)
    result = train(TINY, data, data, TrainConfig(run_dir=tmp_path / "run", batch_size=4, threads=1, max_samples=4 * 6,
                                                 checkpoint_every_steps=2, validation_minutes=1e9, validation_frames=5))
    log_text = (tmp_path / "run" / "train.log").read_text()
    assert log_text.count("checkpoint ") == 3  # steps 2, 4 and 6
    assert log_text.count("validation at step") == 1 and "validation at step 6" in log_text  # only when stopping
    assert load_checkpoint(tmp_path / "run" / LAST_CHECKPOINT)["validation"] == result.validation


def test_kept_checkpoints_are_each_step_s_weights_for_averaging(tmp_path):
    data = _overfit_set(frames=20)
    train(TINY, data, data, TrainConfig(run_dir=tmp_path / "run", batch_size=4, threads=1, max_samples=4 * 6,
                                        checkpoint_every_steps=2, validation_minutes=1e9, validation_frames=5,
                                        keep_checkpoints=True))
    kept = sorted(p.name for p in (tmp_path / "run").glob("step_*.bin"))
    assert kept == ["step_2.bin", "step_4.bin", "step_6.bin"]
    steps = [load_checkpoint(tmp_path / "run" / name) for name in ("step_2.bin", "step_6.bin")]
    assert [c["progress"]["step"] for c in steps] == [2, 6]
    last = load_checkpoint(tmp_path / "run" / LAST_CHECKPOINT)
    assert all(torch.equal(v, last["model_pos"][k]) for k, v in steps[1]["model_pos"].items())
    assert not all(torch.equal(v, last["model_pos"][k]) for k, v in steps[0]["model_pos"].items())
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_resume_refuses_another_architecture(tmp_path):
    data = _overfit_set(frames=20)
    common = dict(run_dir=tmp_path / "run", batch_size=4, threads=1, max_samples=4, validation_frames=4)
    train(TINY, data, data, TrainConfig(**common))
    other = PoseFormerV2Config(frames=9, frames_kept=3, coeffs_kept=5, embed_dim_ratio=8, depth=1)
    with pytest.raises(ValueError, match="trained with model config"):
        train(other, data, data, TrainConfig(resume=True, **common))


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation


class _FirstFrameModel(torch.nn.Module):
    """Predicts the window's first frame with z = 0: the output shows which frames each window holds."""

    def forward(self, x):
        return torch.nn.functional.pad(x[:, :1], (0, 1))


def test_evaluation_centres_a_window_on_every_frame_with_edge_padding_and_flip_test():
    seqs = _sequences((4, 6))
    preds = predict_sequences(_FirstFrameModel(), 5, seqs, flip_test=True, batch_size=3)
    for x, p in zip(seqs.inputs_2d, preds, strict=True):
        first = x[np.clip(np.arange(len(x)) - 2, 0, None)]
        np.testing.assert_allclose(p[..., :2], first, atol=1e-6)  # the mirror-averaged output equals the plain one
        assert (p[..., 2] == 0).all()


def test_score_pools_frames_per_group_and_averages_groups():
    seqs = _sequences((4, 6, 5))
    seqs.groups = ["Walking", "Walking", "Eating"]
    targets = [t - t[:, :1] for t in seqs.targets_3d]
    offsets = [0.010, 0.020, 0.040]
    preds = [t + np.array([0, 0, o]) for t, o in zip(targets, offsets, strict=True)]
    result = score(preds, seqs)
    assert result.per_group["Walking"]["frames"] == 10
    assert result.per_group["Walking"]["mpjpe"] == pytest.approx((4 * 0.010 + 6 * 0.020) / 10)
    assert result.per_group["Eating"]["mpjpe"] == pytest.approx(0.040)
    assert result.average["mpjpe"] == pytest.approx((0.016 + 0.040) / 2)
    assert result.average["mpjve"] == pytest.approx(0, abs=1e-12)
    assert result.average["p_mpjpe"] == pytest.approx(0, abs=1e-9)
    assert "Eating" in result.table_mm() and "40.0" in result.table_mm()


def test_evaluate_cli_on_a_trained_checkpoint(tmp_path, capsys):
    _write_h36m(tmp_path / "data", {"S1": {"Walking 1": 12}, "S9": {"Walking 1": 10, "Eating 2": 9}})
    data = h36m.load_h36m(tmp_path / "data", "synth", ("S1",), ("S9",), cache_dir=None)
    run = tmp_path / "run"
    train(TINY, data.train, data.test, TrainConfig(run_dir=run, batch_size=8, threads=1, max_samples=16,
                                                   validation_frames=1000))
    model, frames = load_model(run / LAST_CHECKPOINT)
    assert frames == 9
    direct = evaluate_model(model, frames, data.test)
    assert set(direct.per_group) == {"Walking", "Eating"}
    # Validation during training used the same windows and flip test on every frame of the (small) test set.
    validation = load_checkpoint(run / LAST_CHECKPOINT)["validation"]
    frames_total = data.test.num_frames
    pooled = sum(e["mpjpe"] * e["frames"] for e in direct.per_group.values()) / frames_total
    assert validation["mpjpe"] == pytest.approx(pooled, rel=1e-5)

    assert evaluate_main(["--checkpoint", str(run / LAST_CHECKPOINT), "--h36m-dir", str(tmp_path / "data"),
                          "--keypoints", "synth", "--subjects", "S9", "--threads", "1",
                          "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "Walking" in out and "Eating" in out and "average" in out
    assert f"{direct.average['mpjpe'] * 1000:8.1f}" in out.splitlines()[-1]


def test_training_checkpoints_load_through_load_lifter(tmp_path):
    data = _overfit_set(frames=25)
    run = tmp_path / "run"
    train(TINY, data, data, TrainConfig(run_dir=run, batch_size=8, threads=1, max_samples=24, validation_frames=25))
    for name in (LAST_CHECKPOINT, BEST_CHECKPOINT):
        lifter = load_lifter(run / name)  # weights_only=True with the project's allow-list
        assert lifter.config == TINY and lifter.frames == 9
    ours = predict_sequences(lifter.model, lifter.frames, data)[0]
    lifted = lifter.lift_normalized(data.inputs_2d[0])
    # The demo's lifting sets the root to 0; the released evaluation (ours) keeps the model's root output.
    np.testing.assert_allclose(lifted[:, 1:], ours[:, 1:], atol=1e-5)
    assert (lifted[:, 0] == 0).all()


def test_train_cli_trains_and_resumes_on_h36m_files(tmp_path):
    subjects = h36m.TRAIN_SUBJECTS + h36m.TEST_SUBJECTS
    _write_h36m(tmp_path / "data", {s: {"Walking 1": 10} for s in subjects})
    run = tmp_path / "run"
    args = ["--h36m-dir", str(tmp_path / "data"), "--keypoints", "synth", "--frames", "9", "--f", "3", "--n", "3",
            "--embed-dim-ratio", "8", "--depth", "1", "--run-dir", str(run), "--batch-size", "8", "--threads", "1",
            "--max-samples", "16", "--val-frames", "16", "--cache-dir", str(tmp_path / "cache")]
    assert train_main(args) == 0
    assert load_checkpoint(run / LAST_CHECKPOINT)["progress"]["step"] == 2
    assert train_main(args + ["--resume"]) == 0
    chk = load_checkpoint(run / LAST_CHECKPOINT)
    assert chk["progress"]["step"] == 4 and chk["progress"]["samples_seen"] == 32
    assert "resumed" in (run / "train.log").read_text()
    # 5 subjects x 4 cameras x 10 frames, epoch = frames x2 (flip) as released
    assert "training 200 frames in 20 sequences" in (run / "train.log").read_text()
    assert "epoch = 400 samples" in (run / "train.log").read_text()
