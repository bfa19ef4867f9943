"""MPI-INF-3DHP: the 3DHP skeleton and mapping, the released 3DHP checkpoint in `load_lifter`/`Lifter.lift`, the
P-STMO data files, the released evaluation (MPJPE/PCK/AUC) and training with the 3DHP recipe. No 3DHP data exists
here: every data file is synthetic, written in the real schema into tmp_path."""
import collections
import json
import pickle

import numpy as np
import pytest
import torch

from pipeline.checkpoints import CheckpointError, read_checkpoint, save_safetensors
from pipeline.lifting import CONFIG_ENTRY, Lifter, load_lifter, save_lifter_checkpoint
from pipeline.poseformerv2 import PoseFormerV2, PoseFormerV2Config
from pipeline.skeleton import (
    H36M,
    LIFTER_SKELETONS,
    MPI_INF_3DHP,
    MPI_INF_3DHP_FROM_H36M,
    h36m_to_mpi_inf_3dhp,
    mpi_inf_3dhp_to_h36m,
)
from pipeline.training import mpi_inf_3dhp as data3dhp
from pipeline.training.evaluate import evaluate_mpi_inf_3dhp
from pipeline.training.evaluate import main as evaluate_main
from pipeline.training.train import (
    BEST_RELEASE_CHECKPOINT,
    LAST_CHECKPOINT,
    TrainConfig,
    centre_on_root,
    load_checkpoint,
    train,
)
from pipeline.training.train import main as train_main
from pipeline.training.windows import WindowSampler

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = PoseFormerV2Config(frames=9, frames_kept=3, coeffs_kept=3, embed_dim_ratio=8, depth=1, drop_path_rate=0.1)
FRAME_SIZES = {"TS1": (2048, 2048), "TS2": (2048, 2048), "TS3": (2048, 2048), "TS4": (2048, 2048),
               "TS5": (1920, 1080), "TS6": (1920, 1080)}
LEFT_3DHP, RIGHT_3DHP = [5, 6, 7, 11, 12, 13], [2, 3, 4, 8, 9, 10]
LEFT_H36M, RIGHT_H36M = [4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]
H36M_OF_3DHP = [10, 8, 14, 15, 16, 11, 12, 13, 1, 2, 3, 4, 5, 6, 0, 7, 9]  # from the fixture README


def _relative_error(ours, ref):
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------------------------------------------------
# Skeleton and joint mapping


def test_3dhp_skeleton_is_the_relevant_17_with_the_pelvis_as_root():
    assert MPI_INF_3DHP.num_joints == 17 and MPI_INF_3DHP.root == 14 and H36M.root == 0
    assert MPI_INF_3DHP.parents == (1, 15, 1, 2, 3, 1, 5, 6, 14, 8, 9, 14, 11, 12, -1, 14, 1)
    assert list(MPI_INF_3DHP.left) == LEFT_3DHP and list(MPI_INF_3DHP.right) == RIGHT_3DHP
    for left, right in zip(MPI_INF_3DHP.left, MPI_INF_3DHP.right, strict=True):
        assert MPI_INF_3DHP.joints[left].removeprefix("left_") == MPI_INF_3DHP.joints[right].removeprefix("right_")
    assert list(MPI_INF_3DHP_FROM_H36M) == H36M_OF_3DHP
    assert LIFTER_SKELETONS == {"h36m": H36M, "mpi_inf_3dhp": MPI_INF_3DHP}  # what lifting and training look up


def test_joint_mapping_round_trips_and_keeps_sides_and_limbs():
    poses = np.random.default_rng(0).normal(size=(4, 17, 3))
    in_3dhp = h36m_to_mpi_inf_3dhp(poses)
    np.testing.assert_array_equal(in_3dhp[:, 14], poses[:, 0])  # pelvis
    np.testing.assert_array_equal(in_3dhp[:, 0], poses[:, H36M.index("head")])  # 3DHP head_top is H36M's head
    np.testing.assert_array_equal(mpi_inf_3dhp_to_h36m(in_3dhp), poses)
    for j, h in enumerate(H36M_OF_3DHP):
        assert MPI_INF_3DHP.side(j) == H36M.side(h)
    # Mirroring commutes with the mapping: the two skeletons' left/right lists describe the same joints.
    np.testing.assert_array_equal(h36m_to_mpi_inf_3dhp(poses[:, H36M.flip_permutation]),
                                  in_3dhp[:, MPI_INF_3DHP.flip_permutation])
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 17, C\)"):
        h36m_to_mpi_inf_3dhp(np.zeros((4, 16, 3)))


# ----------------------------------------------------------------------------------------------------------------------
# The released 3DHP checkpoint: conformance fixture


FIXTURE = "fixtures/poseformerv2_3dhp"


@pytest.fixture(scope="module")
def fixture_3dhp(shared_dir, read_manifest):
    """The fixture's weights as the release stores them (flat `module.` OrderedDict) and its arrays."""
    folder = shared_dir / FIXTURE
    if not (folder / "manifest_3dhp_81_9_9.tsv").is_file():
        pytest.skip(f"3DHP fixture missing in {folder}")
    weights = collections.OrderedDict()
    for index, key, shape, init in read_manifest(folder / "manifest_3dhp_81_9_9.tsv"):
        w = np.random.default_rng(3000 + index).standard_normal(shape).astype(np.float32) * np.float32(0.05)
        weights[key] = torch.from_numpy(w + np.float32(1.0) if init.startswith("1+") else w)
    with np.load(folder / "fixture_3dhp_81_9_9.npz") as npz:
        return {"weights": weights, "npz": {k: npz[k] for k in npz.files}}


@pytest.mark.parametrize("name,kwargs", [("no_refine_39_2758.pth", {}),
                                         ("my_3dhp_copy.pth", {"frames": 81, "skeleton": "mpi_inf_3dhp"})])
def test_released_3dhp_checkpoint_lifts_like_the_release(fixture_3dhp, tmp_path, name, kwargs):
    path = tmp_path / name
    torch.save(fixture_3dhp["weights"], path)  # exactly what `torch.save(model['trans'].state_dict())` writes
    lifter = load_lifter(path, **kwargs)
    npz = fixture_3dhp["npz"]
    assert (lifter.frames, lifter.config.frames_kept, lifter.config.coeffs_kept) == tuple(npz["config"])
    assert (lifter.skeleton, lifter.units) == ("mpi_inf_3dhp", "mm")
    assert sum(p.numel() for p in lifter.model.parameters()) == 14_362_279  # the release's parameter count
    with torch.no_grad():
        out = lifter.model(torch.from_numpy(npz["model_input"])).numpy()
    assert _relative_error(out, npz["model_output"]) <= 1e-4
    for sequence in ("seq120", "seq40"):
        width, height = (int(v) for v in npz[f"{sequence}_size"])
        pixels_h36m = mpi_inf_3dhp_to_h36m(npz[f"{sequence}_pixels"])
        camera = lifter.lift(pixels_h36m, width, height, batch_size=32).camera  # H36M order, metres
        assert camera.shape == (len(pixels_h36m), 17, 3)
        assert _relative_error(camera[:, H36M_OF_3DHP] * 1000, npz[f"{sequence}_mm"]) <= 1e-4


# ----------------------------------------------------------------------------------------------------------------------
# Lifter contract for a 3DHP checkpoint (small random model, no shared data)


def _tiny_model(seed=0, config=TINY, output_scale=1.0):
    """A random PoseFormerV2; `output_scale` scales its head, e.g. to give a millimetre model human-sized output."""
    torch.manual_seed(seed)
    model = PoseFormerV2(config).eval()
    with torch.no_grad():
        model.head[1].weight.mul_(output_scale)
        model.head[1].bias.mul_(output_scale)
    return model


def _reference_valid_frames(model, pixels_3dhp, width, height, valid, skeleton):
    """Plain per-frame transcription of `run_3dhp.py`'s test step for a model in `skeleton` order: edge-padded
    window, normalisation with the sequence's frame size, flip test, root to 0; returns 3DHP order, mm."""
    if skeleton == "mpi_inf_3dhp":
        order, left, right, root, to_mm = list(range(17)), LEFT_3DHP, RIGHT_3DHP, 14, 1.0
    else:  # a Human3.6M model sees H36M-ordered joints and predicts metres
        order, left, right, root, to_mm = [H36M_OF_3DHP.index(h) for h in range(17)], LEFT_H36M, RIGHT_H36M, 0, 1000.0
    frames = model.config.frames
    pad = (frames - 1) // 2
    x = (pixels_3dhp / width * 2 - np.array([1, height / width]))[:, order]
    out = []
    for t in np.flatnonzero(valid):
        low, high = max(0, t - pad), min(len(x), t + pad + 1)
        window = np.pad(x[low:high], ((low - (t - pad), t + pad + 1 - high), (0, 0), (0, 0)), "edge")
        mirrored = window.copy()
        mirrored[:, :, 0] *= -1
        mirrored[:, left + right] = mirrored[:, right + left]
        with torch.no_grad():
            plain = model(torch.from_numpy(window[None].astype(np.float32)))[0, 0].numpy().astype(np.float64)
            flipped = model(torch.from_numpy(mirrored[None].astype(np.float32)))[0, 0].numpy().astype(np.float64)
        flipped[:, 0] *= -1
        flipped[left + right] = flipped[right + left]
        pose = (plain + flipped) / 2
        pose[root] = 0
        out.append(pose[np.argsort(order)] * to_mm)  # back to 3DHP order
    return np.array(out)


def test_3dhp_lifter_returns_h36m_order_in_metres():
    model = _tiny_model(output_scale=300.0)
    lifter = Lifter(model=model, device=torch.device("cpu"), skeleton="mpi_inf_3dhp", units="mm")
    rng = np.random.default_rng(3)
    pixels_3dhp = rng.uniform(600, 1400, (14, 17, 2))
    reference_mm = _reference_valid_frames(model, pixels_3dhp, 1920, 1080, np.ones(14, bool), "mpi_inf_3dhp")
    camera = lifter.lift(mpi_inf_3dhp_to_h36m(pixels_3dhp), 1920, 1080, batch_size=4).camera
    np.testing.assert_allclose(camera, mpi_inf_3dhp_to_h36m(reference_mm) / 1000, rtol=1e-5, atol=1e-6)
    assert (camera[:, 0] == 0).all()  # the Human3.6M root (the 3DHP pelvis) is at the origin
    only = lifter.lift_normalized(mpi_inf_3dhp_to_h36m(pixels_3dhp / 1920 * 2 - [1, 1080 / 1920]),
                                  centres=np.array([13, 0, 5]))
    np.testing.assert_allclose(only, camera[[13, 0, 5]], rtol=1e-5, atol=1e-6)


def test_bad_lifter_settings_and_centres_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown lifter skeleton 'coco'") as info:
        Lifter(model=_tiny_model(), device=torch.device("cpu"), skeleton="coco")
    _one_line(info)
    lifter = Lifter(model=_tiny_model(), device=torch.device("cpu"), skeleton="mpi_inf_3dhp", units="mm")
    with pytest.raises(ValueError, match=r"centres must lie in 0\.\.4") as info:
        lifter.lift_normalized(np.zeros((5, 17, 2)), centres=np.array([2, 5]))
    _one_line(info)


# ----------------------------------------------------------------------------------------------------------------------
# Loading: skeleton and units from the file, its name or the arguments


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_our_3dhp_files_store_skeleton_and_units(tmp_path, suffix):
    model = _tiny_model()
    path = save_lifter_checkpoint(tmp_path / f"ours{suffix}", model, skeleton="mpi_inf_3dhp")
    lifter = load_lifter(path)
    assert (lifter.skeleton, lifter.units, lifter.frames) == ("mpi_inf_3dhp", "mm", 9)
    if suffix == ".pth":  # the release's own layout: a flat `module.` state dict (plus our config entry)
        raw = read_checkpoint(path)
        assert raw[CONFIG_ENTRY]["skeleton"] == "mpi_inf_3dhp" and raw[CONFIG_ENTRY]["units"] == "mm"
        assert all(k.startswith("module.") for k in raw if k != CONFIG_ENTRY)
    with pytest.raises(CheckpointError, match="trained on the 'mpi_inf_3dhp' skeleton.*not 'h36m'") as info:
        load_lifter(path, skeleton="h36m")
    _one_line(info)
    h36m = load_lifter(save_lifter_checkpoint(tmp_path / f"h36m{suffix}", model))
    assert (h36m.skeleton, h36m.units) == ("h36m", "m")


def test_released_3dhp_name_with_other_weights_and_unknown_values_are_clear_errors(tmp_path):
    state = {f"module.{k}": v for k, v in _tiny_model().state_dict().items()}
    path = tmp_path / "no_refine_12_3000.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"released MPI-INF-3DHP model \(T=81, f=9, n=9\).*f=3, n=3") as info:
        load_lifter(path)
    _one_line(info)
    lifter = load_lifter(path, frames=9)  # the name still says which skeleton and units
    assert (lifter.skeleton, lifter.units) == ("mpi_inf_3dhp", "mm")
    with pytest.raises(ValueError, match="unknown skeleton 'mpii'") as info:
        load_lifter(path, frames=9, skeleton="mpii")
    _one_line(info)
    odd = tmp_path / "odd.safetensors"
    save_safetensors(odd, dict(_tiny_model().state_dict()), {"config": TINY.to_dict(), "skeleton": "h36m",
                                                             "units": "cm"})
    with pytest.raises(CheckpointError, match="predicts in 'cm'") as info:
        load_lifter(odd)
    _one_line(info)


# ----------------------------------------------------------------------------------------------------------------------
# Synthetic P-STMO files


def _write_train(folder, lengths=None, seed=0):
    rng = np.random.default_rng(seed)
    lengths = lengths or {"S1 Seq1": 14, "S2 Seq2": 11}
    data = {}
    for sequence, n in lengths.items():
        cameras = {}
        for camera in data3dhp.TRAIN_CAMERAS:
            poses = rng.normal(0, 300, (n, 17, 3)) + [0, 0, 4000]
            cameras[str(camera)] = {"data_2d": rng.uniform(0, 2048, (n, 17, 2)), "data_3d": poses}
        data[sequence] = [cameras, 25]
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / data3dhp.TRAIN_FILE, data=data)
    return data


def _write_test(folder, sequences):
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / data3dhp.TEST_FILE, data={
        name: {"data_2d": px, "data_3d": poses, "valid": valid.astype(np.float64)}
        for name, (px, poses, valid) in sequences.items()})


def _test_inputs(seed=1, lengths=(30, 22, 16, 12, 10, 7)):
    """2D and valid masks of TS1..TS6; TS6 is shorter than the 9-frame window."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, n in enumerate(lengths):
        name = f"TS{k + 1}"
        width, height = FRAME_SIZES[name]
        centre = np.array([width / 2, height / 2])
        px = centre + rng.normal(0, 0.15 * height, (1, 17, 2)) + np.cumsum(rng.normal(0, 4, (n, 17, 2)), axis=0)
        valid = rng.uniform(size=n) < 0.7
        valid[n // 2] = True
        out[name] = (px, valid)
    return out


def test_train_file_is_read_with_the_release_normalisation_and_pelvis_relative_targets(tmp_path):
    raw = _write_train(tmp_path / "d")
    data = data3dhp.load_train(tmp_path / "d")
    assert len(data) == 2 * 8 and data.num_frames == 8 * (14 + 11)
    assert data.names[:3] == ["S1 Seq1/cam0", "S1 Seq1/cam1", "S1 Seq1/cam2"] and data.groups[-1] == "S2 Seq2"
    i = data.names.index("S2 Seq2/cam7")
    px, poses = raw["S2 Seq2"][0]["7"]["data_2d"], raw["S2 Seq2"][0]["7"]["data_3d"]
    np.testing.assert_allclose(data.inputs_2d[i], px / 1024 - 1, atol=1e-6)  # every camera as 2048 x 2048
    np.testing.assert_allclose(data.targets_3d[i], poses - poses[:, 14:15], atol=1e-3)  # mm, pelvis at 0
    assert (data.targets_3d[i][:, 14] == 0).all()


def test_test_file_keeps_every_frame_with_its_sequence_frame_size(tmp_path):
    inputs = _test_inputs()
    rng = np.random.default_rng(2)
    _write_test(tmp_path, {n: (px, rng.normal(0, 300, (len(px), 17, 3)), v) for n, (px, v) in inputs.items()})
    sequences = data3dhp.load_test(tmp_path)
    assert [s.name for s in sequences] == ["TS1", "TS2", "TS3", "TS4", "TS5", "TS6"]
    ts5 = sequences[4]
    assert (ts5.width, ts5.height) == (1920, 1080) and len(ts5.valid) == 10
    np.testing.assert_array_equal(ts5.valid, inputs["TS5"][1])
    np.testing.assert_allclose(ts5.normalized_2d[..., 1], inputs["TS5"][0][..., 1] / 960 - 0.5625, atol=1e-6)
    val_set, valid_ids = data3dhp.validation_set(sequences)
    assert val_set.num_frames == sum(len(px) for px, _ in inputs.values())
    assert len(valid_ids) == sum(v.sum() for _, v in inputs.values())
    np.testing.assert_array_equal(valid_ids[: inputs["TS1"][1].sum()], np.flatnonzero(inputs["TS1"][1]))


def test_bad_data_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_train_3dhp.npz not found"):
        data3dhp.load_train(tmp_path)
    px, valid = _test_inputs()["TS1"]
    _write_test(tmp_path / "a", {"TS9": (px, np.zeros((len(px), 17, 3)), valid)})
    with pytest.raises(ValueError, match="unknown test sequence 'TS9'"):
        data3dhp.load_test(tmp_path / "a")
    _write_test(tmp_path / "b", {"TS1": (px, np.zeros((len(px), 17, 3)), valid[:-1])})
    with pytest.raises(ValueError, match="TS1 has 29 valid flags for 30 frames"):
        data3dhp.load_test(tmp_path / "b")
    _write_test(tmp_path / "c", {"TS1": (px[:, :16], np.zeros((len(px), 16, 3)), valid)})
    with pytest.raises(ValueError, match=r"expected \(N, 17, 2\).*MPI-INF-3DHP joint order"):
        data3dhp.load_test(tmp_path / "c")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "d").mkdir()
    np.savez(tmp_path / "d" / data3dhp.TEST_FILE, data=np.array({"TS1": Evil()}, dtype=object))
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        data3dhp.load_test(tmp_path / "d")


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation with the release's metrics


def _plain_metrics(errors):
    """The reference notes' Python equivalent of the MATLAB scoring, errors (N, 17) in mm."""
    return {"mpjpe": errors.mean(), "pck": 100 * (errors[:, :14] < 150).mean(),
            "auc": 100 * np.mean([(errors[:, :14] < t).mean() for t in range(0, 151, 5)])}


def _ground_truth_around(predictions, valid, rng):
    """Absolute 3D whose pelvis-relative pose is `predictions` plus offsets of known length (0-200 mm, never within
    0.05 mm of a 5 mm threshold); invalid frames hold garbage. Returns the 3D and the per-joint offset lengths."""
    n = len(valid)
    lengths = rng.uniform(0, 200, (valid.sum(), 17))
    near = np.abs(lengths / 5 - np.round(lengths / 5)) < 0.01
    lengths[near] += 0.5
    lengths[:, 14] = 0  # the pelvis is the origin of both
    directions = rng.normal(size=(valid.sum(), 17, 3))
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    poses = rng.normal(0, 5000, (n, 17, 3))  # invalid frames: never scored
    poses[valid] = predictions + directions * lengths[..., None] + np.array([150.0, -300.0, 4200.0])
    return poses, lengths


@pytest.mark.parametrize("skeleton", ["mpi_inf_3dhp", "h36m"])  # h36m: cross-dataset through the joint mapping
def test_evaluation_matches_a_plain_reference_computation(tmp_path, skeleton):
    model = _tiny_model(seed=5, output_scale=300.0 if skeleton == "mpi_inf_3dhp" else 0.3)  # ~100 mm poses
    checkpoint = save_lifter_checkpoint(tmp_path / "lifter.pth", model, skeleton=skeleton)
    rng = np.random.default_rng(7)
    sequences, all_lengths, expected = {}, [], {}
    for name, (px, valid) in _test_inputs().items():
        width, height = FRAME_SIZES[name]
        reference = _reference_valid_frames(model, px, width, height, valid, skeleton)
        poses, lengths = _ground_truth_around(reference, valid, rng)
        sequences[name] = (px, poses, valid)
        all_lengths.append(lengths)
        expected[name] = _plain_metrics(lengths)
    _write_test(tmp_path / "data", sequences)
    report = tmp_path / "out" / "report.json"
    assert evaluate_main(["--dataset", "mpi_inf_3dhp", "--data-dir", str(tmp_path / "data"), "--checkpoint",
                          str(checkpoint), "--threads", "1", "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    pooled = _plain_metrics(np.concatenate(all_lengths))
    assert result["all"]["frames"] == sum(len(x) for x in all_lengths)
    for metric in ("mpjpe", "pck", "auc"):
        assert result["all"][metric] == pytest.approx(pooled[metric], rel=1e-3)
        for name in sequences:
            assert result["sequences"][name][metric] == pytest.approx(expected[name][metric], rel=1e-3)
    assert 5 < pooled["pck"] < 95 and 5 < pooled["auc"] < 95  # the synthetic errors straddle the thresholds
    # The pooled numbers are the frame-weighted mean of the sequences', as the release reports them.
    frames = np.array([result["sequences"][n]["frames"] for n in sequences])
    weighted = sum(result["sequences"][n]["pck"] * f for n, f in zip(sequences, frames, strict=True)) / frames.sum()
    assert result["all"]["pck"] == pytest.approx(weighted, rel=1e-9)


def test_evaluation_cli_errors_are_one_line(tmp_path, capsys):
    checkpoint = save_lifter_checkpoint(tmp_path / "lifter.pth", _tiny_model(), skeleton="mpi_inf_3dhp")
    with pytest.raises(SystemExit, match="data_test_3dhp.npz not found"):
        evaluate_main(["--dataset", "mpi_inf_3dhp", "--data-dir", str(tmp_path / "none"), "--checkpoint",
                       str(checkpoint)])
    with pytest.raises(SystemExit, match="is a mpi_inf_3dhp checkpoint; evaluate it with --dataset mpi_inf_3dhp"):
        evaluate_main(["--data-dir", str(tmp_path), "--checkpoint", str(checkpoint)])


# ----------------------------------------------------------------------------------------------------------------------
# Training with the 3DHP recipe


def _write_dataset(folder):
    _write_train(folder)
    rng = np.random.default_rng(4)
    _write_test(folder, {n: (px, rng.normal(0, 300, (len(px), 17, 3)) + [0, 0, 4000], v)
                         for n, (px, v) in _test_inputs().items()})


def test_training_batches_are_pelvis_relative_and_mirrored_with_the_3dhp_lists(tmp_path):
    _write_train(tmp_path)
    data = data3dhp.load_train(tmp_path)
    sampler = WindowSampler(data, frames=5, flip=True, flip_permutation=MPI_INF_3DHP.flip_permutation)
    batch = sampler.gather(np.array([3, 3]), flipped=np.array([False, True]))
    targets = centre_on_root(batch.targets_3d, MPI_INF_3DHP.root)
    np.testing.assert_allclose(targets[0], data.targets_3d[0][3], atol=1e-3)
    assert (targets[:, 14] == 0).all()
    np.testing.assert_allclose(targets[1, 5], targets[0, 2] * [-1, 1, 1], atol=1e-3)  # left shoulder <- right


def test_train_cli_uses_the_3dhp_recipe_resumes_and_writes_release_readable_weights(tmp_path):
    _write_dataset(tmp_path / "data")
    run = tmp_path / "run"
    args = ["--dataset", "mpi_inf_3dhp", "--data-dir", str(tmp_path / "data"), "--frames", "9", "--f", "3", "--n",
            "3", "--embed-dim-ratio", "8", "--depth", "1", "--run-dir", str(run), "--batch-size", "8", "--threads",
            "1", "--max-samples", "16"]
    assert train_main(args) == 0
    assert train_main(args + ["--resume"]) == 0
    chk = load_checkpoint(run / LAST_CHECKPOINT)
    assert chk["progress"]["step"] == 4 and "resumed" in (run / "train.log").read_text()
    group = chk["optimizer"]["param_groups"][0]
    assert group["amsgrad"] is True and group["weight_decay"] == 0.0 and group["lr"] == pytest.approx(7e-4)
    assert chk["train_config"]["optimizer"] == "adam_amsgrad" and chk["model_config"]["drop_path_rate"] == 0.1
    assert chk[CONFIG_ENTRY]["skeleton"] == "mpi_inf_3dhp" and chk[CONFIG_ENTRY]["units"] == "mm"
    assert "training 200 frames in 16 sequences, validating on" in (run / "train.log").read_text()

    # best.pth: the release's flat layout, loaded the way `run_3dhp.py --reload` loads it (strict, by name).
    flat = torch.load(run / BEST_RELEASE_CHECKPOINT, weights_only=True)
    model = PoseFormerV2(PoseFormerV2Config(**{**chk["model_config"]}))
    model.load_state_dict({k: flat[f"module.{k}"] for k in model.state_dict()}, strict=True)
    lifter = load_lifter(run / BEST_RELEASE_CHECKPOINT)
    assert (lifter.skeleton, lifter.units, lifter.frames) == ("mpi_inf_3dhp", "mm", 9)

    # Validation (every valid test frame, flip test with the 3DHP lists, pelvis to 0, mm) is the released test's
    # MPJPE: the plain transcription and the evaluation command give the same number.
    sequences = data3dhp.load_test(tmp_path / "data")
    last = load_lifter(run / LAST_CHECKPOINT)
    errors = [np.linalg.norm(_reference_valid_frames(last.model, s.keypoints_px, s.width, s.height, s.valid,
                                                     "mpi_inf_3dhp") - s.targets_mm[s.valid], axis=-1)
              for s in sequences]
    assert chk["validation"]["mpjpe"] == pytest.approx(np.concatenate(errors).mean(), rel=1e-5)
    evaluated = evaluate_mpi_inf_3dhp(last, sequences)
    assert evaluated.all["frames"] == sum(int(s.valid.sum()) for s in sequences)
    assert chk["validation"]["mpjpe"] == pytest.approx(evaluated.all["mpjpe"], rel=1e-5)


def test_3dhp_training_resumes_bit_exactly(tmp_path):
    _write_train(tmp_path / "data")
    data = data3dhp.load_train(tmp_path / "data")
    common = dict(batch_size=8, threads=1, samples_per_epoch=8 * 3, validation_frames=8, lr=7e-4, lr_decay=0.97,
                  weight_decay=0.0, optimizer="adam_amsgrad", skeleton="mpi_inf_3dhp", units="mm",
                  device="cpu")  # bit for bit: the CPU's kernels
    straight = train(TINY, data, data, TrainConfig(run_dir=tmp_path / "a", max_samples=8 * 6, **common))
    first = train(TINY, data, data, TrainConfig(run_dir=tmp_path / "b", max_samples=8 * 3, **common))
    second = train(TINY, data, data, TrainConfig(run_dir=tmp_path / "b", max_samples=8 * 3, resume=True, **common))
    assert first.losses + second.losses == straight.losses
    assert 10 < np.mean(straight.losses) < 10_000  # millimetres, not metres
    assert load_checkpoint(tmp_path / "b" / LAST_CHECKPOINT)["lr"] == pytest.approx(7e-4 * 0.97**2)


def test_train_config_rejects_unknown_recipe_values(tmp_path):
    with pytest.raises(ValueError, match="optimizer must be one of"):
        TrainConfig(run_dir=tmp_path, optimizer="sgd")
    with pytest.raises(ValueError, match="skeleton must be one of"):
        TrainConfig(run_dir=tmp_path, skeleton="coco")


# ----------------------------------------------------------------------------------------------------------------------
# prepare: the raw dataset's annotation files


def _write_raw(raw, rng):
    """A raw layout with one training sequence (annot.mat, MATLAB v5 cells) and one test sequence (annot_data.mat,
    HDF5 in MATLAB v7.3's transposed orientation)."""
    scipy_io = pytest.importorskip("scipy.io")
    h5py = pytest.importorskip("h5py")
    n = 25
    annot2, annot3 = np.empty((14, 1), dtype=object), np.empty((14, 1), dtype=object)
    for camera in range(14):
        annot2[camera, 0] = rng.uniform(0, 2048, (n, 56))
        annot3[camera, 0] = rng.normal(0, 500, (n, 84))
    (raw / "S1" / "Seq1").mkdir(parents=True)
    scipy_io.savemat(raw / "S1" / "Seq1" / "annot.mat", {"annot2": annot2, "univ_annot3": annot3,
                                                          "annot3": annot3, "cameras": np.arange(14)[None]})
    test_dir = raw / "mpi_inf_3dhp_test_set" / "TS5"
    test_dir.mkdir(parents=True)
    test = {"annot2": rng.uniform(0, 1920, (12, 1, 17, 2)), "univ_annot3": rng.normal(0, 500, (12, 1, 17, 3)),
            "valid_frame": (rng.uniform(size=(12, 1)) < 0.5).astype(np.float64)}
    with h5py.File(test_dir / "annot_data.mat", "w") as f:
        for key, value in test.items():
            f.create_dataset(key, data=value)
    return annot2, annot3, test


def test_prepare_writes_the_p_stmo_files_from_raw_annotations(tmp_path, monkeypatch):
    annot2, annot3, test = _write_raw(tmp_path / "raw", np.random.default_rng(0))
    monkeypatch.setitem(data3dhp.SEQUENCE_INFO, "S1 Seq1", (20, 25))  # the video has fewer frames than annotations
    written = data3dhp.prepare(tmp_path / "raw", tmp_path / "out")
    assert [p.name for p in written] == ["data_train_3dhp.npz", "data_test_3dhp.npz"]
    train_data = data3dhp.read_npz_entry(tmp_path / "out" / "data_train_3dhp.npz", "data")
    cameras, fps = train_data["S1 Seq1"]
    assert sorted(cameras, key=int) == ["0", "1", "2", "4", "5", "6", "7", "8"] and fps == 25
    joints = [7, 5, 14, 15, 16, 9, 10, 11, 23, 24, 25, 18, 19, 20, 4, 3, 6]
    np.testing.assert_array_equal(cameras["4"]["data_2d"], annot2[4, 0].reshape(25, 28, 2)[:20, joints])
    np.testing.assert_array_equal(cameras["8"]["data_3d"], annot3[8, 0].reshape(25, 28, 3)[:20, joints])
    sequences = data3dhp.load_test(tmp_path / "out")
    assert [s.name for s in sequences] == ["TS5"] and (sequences[0].width, sequences[0].height) == (1920, 1080)
    np.testing.assert_allclose(sequences[0].poses_mm, test["univ_annot3"][:, 0], atol=1e-3)
    np.testing.assert_array_equal(sequences[0].valid, test["valid_frame"][:, 0] > 0)
    assert data3dhp.load_train(tmp_path / "out").num_frames == 8 * 20


def test_prepare_cli_errors_are_one_line(tmp_path):
    with pytest.raises(SystemExit, match="no S\\*/Seq\\*/annot.mat"):
        data3dhp.main(["prepare", "--raw-dir", str(tmp_path), "--out-dir", str(tmp_path / "out")])
    (tmp_path / "S1" / "Seq1").mkdir(parents=True)
    (tmp_path / "S1" / "Seq1" / "annot.mat").write_bytes(b"not a mat file")
    pytest.importorskip("scipy.io")
    with pytest.raises(SystemExit, match="error: "):
        data3dhp.main(["prepare", "--raw-dir", str(tmp_path), "--out-dir", str(tmp_path / "out")])
