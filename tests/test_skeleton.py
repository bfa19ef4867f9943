import numpy as np
import pytest

from pipeline.skeleton import COCO, H36M, coco_to_h36m


def _coco_pose():
    kp = np.zeros((17, 2), np.float32)
    named = {
        "nose": (10, 20), "left_eye": (12, 18), "right_eye": (8, 18), "left_ear": (14, 19), "right_ear": (6, 19),
        "left_shoulder": (22, 40), "right_shoulder": (0, 40), "left_elbow": (30, 55), "right_elbow": (-8, 55),
        "left_wrist": (32, 70), "right_wrist": (-10, 70), "left_hip": (18, 80), "right_hip": (6, 80),
        "left_knee": (19, 110), "right_knee": (5, 110), "left_ankle": (20, 140), "right_ankle": (4, 140),
    }
    for name, xy in named.items():
        kp[COCO.index(name)] = xy
    return kp


def test_remap_matches_hand_computed_values():
    out, _ = coco_to_h36m(_coco_pose())
    expected = {
        # mid-hip
        "pelvis": (12, 80),
        # mid-shoulder (11, 40) moved 1/3 towards the nose, then lifted by 2/3 of (eye y 18 - nose y 20)
        "thorax": (11 + (10 - 11) / 3, 40 + (20 - 40) / 3 + 4 / 3),
        # mean of shoulders and hips (11.5, 60), x pushed away from the pelvis-thorax midline twice its distance
        "spine": (11.5 + 2 * (11.5 - (12 + 11 + (10 - 11) / 3) / 2), 60),
        # nose pulled a quarter of the way to the mid-shoulder point
        "neck_nose": (10.25, 25),
        # x: mean of eyes and ears; y: sum of eye heights minus nose height
        "head": (10, 16),
        "left_wrist": (32, 70), "right_ankle": (4, 140), "right_hip": (6, 80), "left_shoulder": (22, 40),
    }
    for name, xy in expected.items():
        np.testing.assert_allclose(out[H36M.index(name)], xy, atol=1e-4, err_msg=name)


def test_remap_keeps_leading_axes_and_maps_scores():
    kp = np.stack([_coco_pose(), _coco_pose() + 5])[None]  # (1, 2, 17, 2)
    scores = np.linspace(0.1, 0.9, 17, dtype=np.float32)[None, None].repeat(2, axis=1)
    out, out_scores = coco_to_h36m(kp, scores)
    assert out.shape == (1, 2, 17, 2) and out_scores.shape == (1, 2, 17)
    np.testing.assert_allclose(out[0, 1] - out[0, 0], 5, atol=1e-4)
    s = scores[0, 0]
    hips = (s[COCO.index("left_hip")] + s[COCO.index("right_hip")]) / 2
    assert out_scores[0, 0, H36M.index("pelvis")] == pytest.approx(hips)
    assert out_scores[0, 0, H36M.index("left_knee")] == pytest.approx(s[COCO.index("left_knee")])


def test_remap_rejects_wrong_shape():
    with pytest.raises(ValueError, match="COCO keypoints"):
        coco_to_h36m(np.zeros((5, 16, 2)))


def test_h36m_skeleton_is_consistent():
    assert H36M.num_joints == 17 and H36M.parents[0] == -1
    assert len(H36M.bones) == 16
    perm = H36M.flip_permutation
    assert sorted(perm) == list(range(17)) and (perm[perm] == np.arange(17)).all()
    for left, right in zip(H36M.left, H36M.right, strict=True):
        assert H36M.joints[left].replace("left", "right") == H36M.joints[right]
