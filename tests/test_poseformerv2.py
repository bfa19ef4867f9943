import numpy as np
import pytest
import torch

from pipeline.poseformerv2 import (
    PoseFormerV2,
    PoseFormerV2Config,
    config_from_state_dict,
    dct_matrix,
    idct_matrix,
)
from pipeline.poseformerv2 import released_state_dict as released_state_dict_of

RELEASED = [(27, 1, 3), (27, 3, 3), (81, 1, 3), (81, 3, 3), (81, 9, 9), (243, 27, 27)]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _relative_error(ours, ref):
    return float(np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max())


def _strip(state_dict):
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


def test_reference_model_output(poseformerv2_reference):
    model = PoseFormerV2(PoseFormerV2Config(frames=243, frames_kept=27, coeffs_kept=27)).eval()
    model.load_state_dict(_strip(poseformerv2_reference["state_dict"]), strict=True)
    npz = poseformerv2_reference["npz"]
    with torch.no_grad():
        out = model(torch.from_numpy(npz["model_input"]))
    assert out.shape == (4, 1, 17, 3)
    assert _relative_error(out.numpy(), npz["model_output"]) <= 1e-4


def test_state_dict_layout_matches_released_manifest(poseformerv2_reference):
    ours = PoseFormerV2(PoseFormerV2Config()).state_dict()
    released = _strip(poseformerv2_reference["state_dict"])
    assert list(ours) == list(released)  # same keys, same order
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in released.items()}


@pytest.mark.parametrize("frames,frames_kept,coeffs_kept", RELEASED)
def test_released_configurations_build_and_load(released_state_dict, frames, frames_kept, coeffs_kept):
    cfg = PoseFormerV2Config(frames=frames, frames_kept=frames_kept, coeffs_kept=coeffs_kept)
    model = PoseFormerV2(cfg).eval()
    model.load_state_dict(_strip(released_state_dict(frames_kept, coeffs_kept)), strict=True)
    x = torch.randn(3, frames, 17, 2, generator=torch.Generator().manual_seed(0)) * 0.3
    with torch.no_grad():
        out = model(x)
        single = torch.cat([model(x[i : i + 1]) for i in range(3)])
    assert out.shape == (3, 1, 17, 3)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, single, rtol=1e-4, atol=1e-5)  # batch items are independent


def test_mixed_block_split_is_half_of_all_tokens():
    # For f != n the split does not fall on the frequency/time boundary; released 81/1/3 weights rely on it.
    model = PoseFormerV2(PoseFormerV2Config(frames=81, frames_kept=1, coeffs_kept=3))
    assert model.blocks[0].split == 2
    assert model.blocks[0].mlp2.dct.shape == (2, 2)


def test_dct_is_unnormalised_dct2_with_exact_inverse():
    x = torch.randn(7, dtype=torch.float64)
    t = torch.arange(7, dtype=torch.float64)
    expected = torch.stack([2 * (x * torch.cos(np.pi * k * (2 * t + 1) / 14)).sum() for k in range(7)])
    torch.testing.assert_close(dct_matrix(7, torch.float64) @ x, expected)
    identity = idct_matrix(7, torch.float64) @ dct_matrix(7, torch.float64)
    torch.testing.assert_close(identity, torch.eye(7, dtype=torch.float64))


def test_layer_norm_eps_follow_the_reference():
    model = PoseFormerV2(PoseFormerV2Config(frames=27, frames_kept=3, coeffs_kept=3))
    assert model.Spatial_blocks[0].norm1.eps == 1e-6 and model.Temporal_norm.eps == 1e-6
    assert model.head[0].eps == 1e-5


def test_wrong_input_shape_is_rejected():
    model = PoseFormerV2(PoseFormerV2Config(frames=27, frames_kept=3, coeffs_kept=3))
    with pytest.raises(ValueError, match=r"\(B, 27, 17, 2\)"):
        model(torch.zeros(1, 81, 17, 2))


@pytest.mark.parametrize(
    "kwargs", [dict(frames=242), dict(frames_kept=28), dict(frames=27, frames_kept=29), dict(coeffs_kept=300)]
)
def test_inconsistent_config_is_rejected(kwargs):
    with pytest.raises(ValueError, match="invalid PoseFormerV2Config"):
        PoseFormerV2Config(**kwargs)


def test_config_round_trips_through_dict():
    cfg = PoseFormerV2Config(frames=81, frames_kept=9, coeffs_kept=9)
    assert PoseFormerV2Config.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown PoseFormerV2Config fields"):
        PoseFormerV2Config.from_dict({"frames": 81, "bogus": 1})


@pytest.mark.parametrize("frames,frames_kept,coeffs_kept", RELEASED)
def test_config_is_inferred_from_released_tensor_shapes(released_state_dict, frames, frames_kept, coeffs_kept):
    state = _strip(released_state_dict(frames_kept, coeffs_kept))
    cfg = config_from_state_dict(state, frames)
    assert cfg == PoseFormerV2Config(frames=frames, frames_kept=frames_kept, coeffs_kept=coeffs_kept)
    assert list(released_state_dict(frames_kept, coeffs_kept)) == list(released_state_dict_of(PoseFormerV2(cfg)))


def test_the_head_computes_in_float32_under_bfloat16_autocast():
    # The head's output is the pose in metres; in bfloat16 a joint 0.9 m from the root would sit on a 4 mm grid.
    torch.manual_seed(0)
    model = PoseFormerV2(PoseFormerV2Config(frames=9, frames_kept=3, coeffs_kept=3)).eval()
    x = torch.rand(8, 9, 17, 2) - 0.5
    with torch.inference_mode():
        full = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(x)
    assert mixed.dtype == torch.float32
    assert 0 < (mixed - full).abs().max() < 0.05 * full.abs().max()  # the blocks ran in bfloat16, the head did not

