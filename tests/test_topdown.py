"""Top-down preprocessing, flip test and heatmap decoding, checked with synthetic images, heatmaps and stand-in
models."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.hrnet import HRNetConfig, PoseHRNet
from pipeline.skeleton import COCO
from pipeline.topdown import (
    IMAGENET_MEAN_RGB,
    IMAGENET_STD_RGB,
    TopDownConfig,
    TopDownEstimator,
    boxes_to_crop_regions,
    crop_images,
    decode_heatmaps,
    flip_heatmaps_back,
    heatmap_to_image,
)

INPUT_SIZE = (256, 192)  # (height, width) of the W32 model
HEATMAP_SIZE = (64, 48)


# These networks are small or run once: one thread is as fast, and far faster when the cores are busy (OpenMP
# threads waiting on each other between hundreds of tiny convolutions).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _blob_image(points, shape=(480, 640), sigma=12.0) -> np.ndarray:
    """Black BGR frame with a white Gaussian blob (peak 255) at each (x, y)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    img = np.zeros(shape, np.float64)
    for x, y in points:
        img = np.maximum(img, np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)))
    return np.repeat(np.round(img * 255).astype(np.uint8)[..., None], 3, axis=2)


def _centroid(gray: np.ndarray) -> np.ndarray:
    w = gray.astype(np.float64)
    w = np.where(w > 0.2 * w.max(), w, 0)
    yy, xx = np.mgrid[: gray.shape[0], : gray.shape[1]]
    return np.array([(w * xx).sum(), (w * yy).sum()]) / w.sum()


class BrightnessOracle(nn.Module):
    """Stands in for a trained network: heatmap pixel k is the crop's brightness at crop pixel 4 k, which is exactly
    the target HRNet is trained to produce for a joint at a bright spot. With `lateral`, left-side joint channels
    see only the right half of the crop and right-side joints the left half, the way a network names the limbs of
    a person facing the camera; centre joints see everything."""

    def __init__(self, lateral: bool = False) -> None:
        super().__init__()
        self.config = HRNetConfig(width=32, input_size=INPUT_SIZE)
        self.lateral = lateral

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.as_tensor(IMAGENET_MEAN_RGB).view(1, 3, 1, 1)
        std = torch.as_tensor(IMAGENET_STD_RGB).view(1, 3, 1, 1)
        bright = (x * std + mean).mean(1, keepdim=True)[:, :, ::4, ::4]
        hm = bright.repeat(1, COCO.num_joints, 1, 1)
        if self.lateral:
            w = hm.shape[-1]
            hm[:, list(COCO.left), :, : w // 2] = 0
            hm[:, list(COCO.right), :, w // 2:] = 0
        return hm


def test_crop_regions_keep_the_model_aspect_for_tall_and_wide_boxes():
    boxes = np.array([[100, 100, 150, 400], [0, 0, 300, 60], [10, 20, 85, 120]], np.float32)
    centres, sizes = boxes_to_crop_regions(boxes, aspect_ratio=0.75, padding=1.25)
    np.testing.assert_allclose(centres, [[125, 250], [150, 30], [47.5, 70]])
    # tall: height 300 kept, width widened to 225; wide: width 300 kept, height 400; exact 0.75 box unchanged
    np.testing.assert_allclose(sizes, [[225 * 1.25, 300 * 1.25], [300 * 1.25, 400 * 1.25], [75 * 1.25, 100 * 1.25]])
    with pytest.raises(ValueError, match="box 1 .* x2 > x1"):
        boxes_to_crop_regions(np.array([[0, 0, 10, 10], [5, 5, 5, 9]]), 0.75, 1.25)


@pytest.mark.parametrize("box", [(300, 100, 350, 400), (100, 200, 500, 260)], ids=["tall", "wide"])
def test_crop_maps_points_with_one_scale_and_no_stretch(box):
    points = [(box[0] + 5, box[1] + 8), (box[2] - 6, box[3] - 4)]
    image = _blob_image(points, sigma=4.0)
    centres, sizes = boxes_to_crop_regions(np.array([box], np.float64), 0.75, 1.25)
    crop = crop_images([image], centres, sizes, INPUT_SIZE)[0]
    assert crop.shape == (256, 192, 3)
    bw, bh = box[2] - box[0], box[3] - box[1]
    scale = 256 / (1.25 * bh) if bw / bh < 0.75 else 192 / (1.25 * bw)  # crop pixels per image pixel
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    for x, y in points:
        expected = np.array([(x - cx) * scale + 96, (y - cy) * scale + 128])
        window = crop[..., 0].copy()
        # isolate the blob nearest to the expected spot
        yy, xx = np.mgrid[:256, :192]
        window[(xx - expected[0]) ** 2 + (yy - expected[1]) ** 2 > 15**2] = 0
        np.testing.assert_allclose(_centroid(window), expected, atol=0.3)


def _gaussian_heatmaps(coords: np.ndarray, size=HEATMAP_SIZE, sigma=2.0) -> np.ndarray:
    yy, xx = np.mgrid[: size[0], : size[1]].astype(np.float64)
    cx, cy = coords[..., 0][..., None, None], coords[..., 1][..., None, None]
    return np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2)).astype(np.float32)


def test_decode_round_trip_from_image_points_to_heatmaps_and_back():
    rng = np.random.default_rng(0)
    # tall, wide and border-touching boxes (the last two stick out of a 640x480 frame)
    boxes = np.array([[300, 100, 350, 400], [100, 200, 500, 260], [-40, 300, 120, 500], [560, -30, 660, 200]], float)
    centres, sizes = boxes_to_crop_regions(boxes, 0.75, 1.25)
    # joints anywhere inside the padded region at least 5 heatmap pixels from its border (the border case is below)
    frac = rng.uniform(0.11, 0.89, size=(4, COCO.num_joints, 2))
    image_points = centres[:, None, :] + (frac - 0.5) * sizes[:, None, :]
    # independent forward mapping: image -> crop (one scale) -> heatmap (crop / 4)
    scale = (192 / sizes[:, 0])[:, None, None]
    hm_coords = ((image_points - centres[:, None, :]) * scale + np.array([96, 128])) / 4
    heatmaps = _gaussian_heatmaps(hm_coords) * 0.9

    image_px_per_hm_px = sizes[:, 0] / 48
    for refine, tol_hm_px in (("dark", 0.01), ("quarter", 0.26)):
        coords, scores = decode_heatmaps(heatmaps, refine=refine)
        back = heatmap_to_image(coords, centres, sizes, INPUT_SIZE, HEATMAP_SIZE)
        err = np.abs(back - image_points) / image_px_per_hm_px[:, None, None]
        assert err.max() < tol_hm_px, (refine, err.max())
        assert scores.shape == (4, 17) and scores.max() <= 0.9 + 1e-6 and scores.min() > 0.8
    # DARK is exact for Gaussian peaks: far below an image pixel (1 heatmap pixel = 4.2..10.4 image pixels here)
    coords, _ = decode_heatmaps(heatmaps, refine="dark")
    back = heatmap_to_image(coords, centres, sizes, INPUT_SIZE, HEATMAP_SIZE)
    assert np.abs(back - image_points).max() < 0.05


def test_decode_at_heatmap_borders_falls_back_and_stays_on_the_peak():
    coords = np.array([[[0.0, 0.0], [47.0, 63.0], [1.3, 30.2], [46.6, 2.0]]])
    heatmaps = _gaussian_heatmaps(coords)
    for refine in ("dark", "quarter"):
        decoded, _ = decode_heatmaps(heatmaps, refine=refine)
        assert np.abs(decoded - coords).max() <= 0.5, refine


def test_flip_back_swaps_left_right_channels_and_mirrors():
    rng = np.random.default_rng(1)
    hm = torch.as_tensor(rng.random((2, 17, 8, 6)), dtype=torch.float32)
    back = flip_heatmaps_back(hm, shift=False)
    ls, rs, nose = COCO.index("left_shoulder"), COCO.index("right_shoulder"), COCO.index("nose")
    torch.testing.assert_close(back[:, ls], hm[:, rs].flip(-1))
    torch.testing.assert_close(back[:, rs], hm[:, ls].flip(-1))
    torch.testing.assert_close(back[:, nose], hm[:, nose].flip(-1))
    shifted = flip_heatmaps_back(hm, shift=True)
    torch.testing.assert_close(shifted[..., 1:], back[..., :-1])  # one pixel to the right
    torch.testing.assert_close(shifted[..., 0], back[..., 0])


def _frame_and_box_with_two_blobs():
    box = np.array([[250.0, 100.0, 400.0, 300.0]])
    left_blob, right_blob = (290.0, 180.0), (360.0, 220.0)  # image-left and image-right of the box centre
    return _blob_image([left_blob, right_blob], sigma=10.0), box, np.array(left_blob), np.array(right_blob)


def test_flip_test_pairs_left_and_right_joints():
    """A front-facing person's left joints are on the image's right. The mirrored pass names them right joints;
    only correct pairing puts them back on the same spot, giving the full peak height instead of half of it."""
    frame, box, image_left, image_right = _frame_and_box_with_two_blobs()
    estimator = TopDownEstimator(BrightnessOracle(lateral=True), TopDownConfig(flip_test=True))
    keypoints, scores = estimator([frame], box)
    for joint in COCO.left:
        assert np.abs(keypoints[0, joint] - image_right).max() < 2.0
    for joint in COCO.right:
        assert np.abs(keypoints[0, joint] - image_left).max() < 2.0
    lateral = list(COCO.left) + list(COCO.right)
    assert scores[0, lateral].min() > 0.9  # both passes agree (a wrong pairing would average to about 0.5)


@pytest.mark.parametrize("flip_test", [False, True])
def test_estimator_recovers_blob_positions_in_image_pixels(flip_test):
    # three people: an ordinary box, one cut by the left/top image border, one cut by the bottom-right corner
    # (blobs 40 px inside the frame, so the frame edge does not truncate them)
    targets = [(320.0, 240.0), (40.0, 45.0), (600.0, 440.0)]
    boxes = np.array([[280, 150, 360, 330], [-60, -80, 60, 100], [560, 400, 700, 560]], np.float64)
    frames = [_blob_image([t], sigma=10.0) for t in targets]
    estimator = TopDownEstimator(BrightnessOracle(), TopDownConfig(flip_test=flip_test, batch_size=2))
    keypoints, scores = estimator(frames, boxes)
    assert keypoints.shape == (3, 17, 2) and keypoints.dtype == np.float32
    assert scores.shape == (3, 17) and scores.dtype == np.float32
    crop_px = boxes_to_crop_regions(boxes, 0.75, 1.25)[1][:, 0] / 192  # image pixels per crop pixel
    # without flip the oracle is exactly HRNet's target convention; the official flip shift (1 heatmap pixel for
    # a true misalignment of 3/4) moves the averaged peak by about 1/8 heatmap pixel = half a crop pixel
    tol = (0.3 if not flip_test else 0.8) * crop_px
    err = np.abs(keypoints - np.array(targets)[:, None, :]).max(axis=(1, 2))
    assert (err < tol).all(), (err, tol)
    assert scores.min() > 0.9


def test_chunking_and_several_people_per_frame_do_not_change_results():
    frame, box, *_ = _frame_and_box_with_two_blobs()
    boxes = np.concatenate([box, box + [10, -5, 10, -5], box * 1.1], axis=0)
    frames = [frame, frame, frame]
    one = TopDownEstimator(BrightnessOracle(lateral=True), TopDownConfig(batch_size=1))(frames, boxes)
    many = TopDownEstimator(BrightnessOracle(lateral=True), TopDownConfig(batch_size=8))(frames, boxes)
    np.testing.assert_array_equal(one[0], many[0])
    np.testing.assert_array_equal(one[1], many[1])
    empty = TopDownEstimator(BrightnessOracle())([], np.zeros((0, 4)))
    assert empty[0].shape == (0, 17, 2) and empty[1].shape == (0, 17)


def test_runs_a_real_hrnet_module():
    torch.manual_seed(0)
    model = PoseHRNet(HRNetConfig(width=4, input_size=(128, 96))).eval()
    frame = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    keypoints, scores = TopDownEstimator(model)([frame, frame], np.array([[10, 10, 60, 110], [80, 5, 150, 60.0]]))
    assert keypoints.shape == (2, 17, 2) and np.isfinite(keypoints).all() and np.isfinite(scores).all()


def test_bad_inputs_raise_clear_errors():
    estimator = TopDownEstimator(BrightnessOracle())
    frame = np.zeros((100, 100, 3), np.uint8)
    with pytest.raises(ValueError, match="2 images for 1 boxes"):
        estimator([frame, frame], np.array([[0, 0, 10, 10.0]]))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        estimator([frame], np.array([0, 0, 10, 10.0]))
    with pytest.raises(ValueError, match="BGR uint8"):
        estimator([np.zeros((100, 100), np.uint8)], np.array([[0, 0, 10, 10.0]]))
    with pytest.raises(ValueError, match="box 0"):
        estimator([frame], np.array([[10, 10, 10, 20.0]]))
    with pytest.raises(ValueError, match="COCO-17"):
        TopDownEstimator(PoseHRNet(HRNetConfig(width=4, num_joints=16)))
