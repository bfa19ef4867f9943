import numpy as np
import pytest
import torch

from pipeline.training.metrics import (
    mpjpe,
    mpjpe_torch,
    mpjve,
    n_mpjpe,
    p_mpjpe,
    procrustes_align,
    sequence_error_sums,
)


def _rotation(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _poses(frames=5, joints=17, seed=0):
    return np.random.default_rng(seed).standard_normal((frames, joints, 3))


def test_mpjpe_known_value():
    target = np.zeros((2, 3, 3))
    pred = target.copy()
    pred[0, 0] = [3, 4, 0]  # distance 5
    pred[1, 2] = [0, 0, 6]  # distance 6
    assert mpjpe(pred, target) == pytest.approx(11 / 6)
    assert float(mpjpe_torch(torch.tensor(pred), torch.tensor(target))) == pytest.approx(11 / 6)


def test_p_mpjpe_ignores_similarity_transform_per_frame():
    target = _poses()
    pred = np.stack([
        1.7 * t @ _rotation([1, 2, 3], 0.3 + i).T + np.array([0.5, -2.0, 3.0]) * i for i, t in enumerate(target)
    ])
    assert mpjpe(pred, target) > 1
    assert p_mpjpe(pred, target) == pytest.approx(0, abs=1e-9)
    np.testing.assert_allclose(procrustes_align(pred, target), target, atol=1e-9)


def test_p_mpjpe_does_not_undo_a_reflection():
    target = _poses()
    mirrored = target * np.array([-1, 1, 1])
    assert p_mpjpe(mirrored, target) > 0.1


def test_p_mpjpe_matches_closed_form_for_translation_only_noise():
    # Two joints: any similarity transform can map the prediction exactly onto the target segment.
    target = np.array([[[0.0, 0, 0], [1, 0, 0]]])
    pred = np.array([[[5.0, 5, 5], [5, 7, 5]]])
    assert p_mpjpe(pred, target) == pytest.approx(0, abs=1e-9)


def test_n_mpjpe_ignores_scale_only():
    target = _poses()
    assert n_mpjpe(target * 0.37, target) == pytest.approx(0, abs=1e-12)
    # A shifted copy is not a scaled copy: its error stays positive.
    assert n_mpjpe(target + 1, target) > 0.1


def test_n_mpjpe_known_value():
    # One joint at (1,0,0), predicted (2,1,0): best scale s = <t,p>/<p,p> = 2/5 -> (0.8, 0.4, 0), error sqrt(0.2).
    assert n_mpjpe(np.array([[[2.0, 1, 0]]]), np.array([[[1.0, 0, 0]]])) == pytest.approx(np.sqrt(0.2))


def test_mpjve_constant_offset_is_zero_and_known_value():
    target = _poses(frames=6)
    assert mpjve(target + np.array([0.3, -1, 2]), target) == pytest.approx(0, abs=1e-12)
    pred = target.copy()
    pred[3] += np.array([0, 0, 1.0])  # one bad frame: differences 2->3 and 3->4 are off by 1 for every joint
    assert mpjve(pred, target) == pytest.approx(2 / 5)


def test_sequence_error_sums_are_frame_weighted():
    target = _poses(frames=4)
    sums = sequence_error_sums(target + np.array([0.0, 0, 0.1]), target)
    assert sums["frames"] == 4
    assert sums["mpjpe"] == pytest.approx(0.4)
    assert sums["mpjve"] == pytest.approx(0)
    assert sums["p_mpjpe"] == pytest.approx(0, abs=1e-9)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same|both"):
        mpjpe(np.zeros((2, 17, 3)), np.zeros((2, 16, 3)))
