"""Top-down 2D keypoints: crop each person box, run a heatmap network (HRNet), decode keypoints in image pixels.

preprocess:  box -> centre and crop size with the network's aspect ratio (w/h = 0.75 for the released models),
             enlarged 1.25x as in HRNet's COCO evaluation; an affine warp cuts the crop without distortion (the area
             outside the image is black); BGR -> RGB, ImageNet mean/std.
inference:   batched over all boxes (of all frames) in chunks; flip test as in the official HRNet code: the
             mirrored crop's heatmaps are mirrored back, left/right joint channels swapped (`COCO` pairs), shifted
             one heatmap pixel to the right (the features of a flipped image are misaligned by about that much)
             and averaged with the plain ones.
postprocess: argmax per joint, sub-pixel refinement, back to image pixels; score = the heatmap maximum.
             Refinement "dark" (default) is DARK's (Zhang et al., CVPR 2020): blur the heatmap with an 11x11
             Gaussian (zero padded, peak height kept), take its log and do one Newton step of the 2D Taylor
             expansion around the argmax. It is exact for Gaussian-shaped peaks. Where it cannot apply (within two
             pixels of the heatmap border, a Hessian that is not negative definite, a step longer than a pixel)
             it falls back to "quarter": the official HRNet rule of moving a quarter pixel towards the higher
             neighbour.

Coordinates follow the official HRNet convention (pixel centres at integer coordinates, no half-pixel offset):
image point p maps to crop point (p - box centre) * s + (W/2, H/2) for a W x H network input, with one scale s for
both axes, and heatmap pixel k to crop point 4 k.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import torch
from torch import nn

from pipeline.skeleton import COCO

IMAGENET_MEAN_RGB = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD_RGB = np.array([0.229, 0.224, 0.225], np.float32)


@dataclass(frozen=True)
class TopDownConfig:
    box_padding: float = 1.25  # the box is enlarged by this factor before cropping (HRNet's COCO setting)
    flip_test: bool = True
    shift_flipped_heatmaps: bool = True  # the official one-pixel shift of the mirrored heatmaps
    batch_size: int = 32  # crops per forward pass (doubled internally by the flip test)
    refine: Literal["dark", "quarter"] = "dark"
    dark_blur_kernel: int = 11

    def __post_init__(self) -> None:
        if self.box_padding <= 0:
            raise ValueError(f"box_padding must be positive, got {self.box_padding}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.refine not in ("dark", "quarter"):
            raise ValueError(f"refine must be 'dark' or 'quarter', got {self.refine!r}")
        if self.dark_blur_kernel < 1 or self.dark_blur_kernel % 2 == 0:
            raise ValueError(f"dark_blur_kernel must be a positive odd number, got {self.dark_blur_kernel}")


# ---------------------------------------------------------------------------------------------------------------
# Geometry


def boxes_to_crop_regions(boxes: np.ndarray, aspect_ratio: float, padding: float) -> tuple[np.ndarray, np.ndarray]:
    """xyxy boxes (N, 4) -> centres (N, 2) and crop sizes (N, 2) = (width, height) in image pixels.

    The shorter side is extended until width / height == aspect_ratio (never cut: a tall box keeps its height, a
    wide box its width), then both sides are multiplied by `padding`.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    bad = np.flatnonzero(~((w > 0) & (h > 0) & np.isfinite(boxes).all(axis=1)))
    if bad.size:
        raise ValueError(f"box {bad[0]} {boxes[bad[0]].tolist()} is not a finite xyxy box with x2 > x1 and y2 > y1; "
                         "drop such boxes before pose estimation")
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
    w = np.maximum(w, h * aspect_ratio)
    h = w / aspect_ratio
    return centres, np.stack([w, h], axis=1) * padding


def crop_affine(centre: np.ndarray, crop_size: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """2x3 matrix mapping image pixels to crop pixels; output_size is the network's (height, width).

    One scale for both axes (crop_size has the output's aspect ratio), so nothing is stretched.
    """
    out_h, out_w = output_size
    s = out_w / crop_size[0]
    return np.array(
        [[s, 0.0, out_w / 2 - s * centre[0]], [0.0, s, out_h / 2 - s * centre[1]]], dtype=np.float64
    )


def crop_images(
    images: Sequence[np.ndarray], centres: np.ndarray, crop_sizes: np.ndarray, output_size: tuple[int, int]
) -> np.ndarray:
    """Warp crop i out of images[i] -> (N, H, W, 3) uint8, same channel order as the input; outside is black."""
    out_h, out_w = output_size
    crops = np.zeros((len(images), out_h, out_w, 3), np.uint8)
    for i, image in enumerate(images):
        crops[i] = cv2.warpAffine(
            image, crop_affine(centres[i], crop_sizes[i], output_size), (out_w, out_h),
            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0),
        )
    return crops


def normalise_crops(crops_bgr: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) BGR uint8 -> (N, 3, H, W) float32 RGB with ImageNet mean/std, as the networks were trained."""
    rgb = crops_bgr[..., ::-1].astype(np.float32) / 255.0
    rgb = (rgb - IMAGENET_MEAN_RGB) / IMAGENET_STD_RGB
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(0, 3, 1, 2)))


def heatmap_to_image(
    coords: np.ndarray, centres: np.ndarray, crop_sizes: np.ndarray, input_size: tuple[int, int],
    heatmap_size: tuple[int, int],
) -> np.ndarray:
    """Heatmap coordinates (N, J, 2) -> image pixels; inverse of crop_affine with heatmap pixel k at crop 4 k."""
    in_h, in_w = input_size
    stride = in_w / heatmap_size[1]
    image_per_crop_pixel = crop_sizes[:, 0] / in_w  # same for both axes
    crop = coords * stride
    return (crop - np.array([in_w / 2, in_h / 2])) * image_per_crop_pixel[:, None, None] + centres[:, None, :]


# ---------------------------------------------------------------------------------------------------------------
# Heatmaps


def flip_heatmaps_back(heatmaps: torch.Tensor, shift: bool = True) -> torch.Tensor:
    """Heatmaps of mirrored crops -> heatmaps for the original crops: mirror x, swap left/right joints (COCO pairs),
    and (official HRNet) shift one pixel to the right, repeating the first column."""
    back = heatmaps.flip(-1)[:, torch.as_tensor(COCO.flip_permutation)]
    if shift:
        back = torch.cat([back[..., :1], back[..., :-1]], dim=-1)
    return back


def _quarter_offsets(heatmaps: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Official HRNet refinement: a quarter pixel towards the higher neighbour (where both neighbours exist)."""
    h, w = heatmaps.shape[-2:]
    n, j = np.indices(px.shape)
    offsets = np.zeros(px.shape + (2,), np.float64)
    ok_x = (px > 0) & (px < w - 1)
    ok_y = (py > 0) & (py < h - 1)
    xl, xr = np.clip(px - 1, 0, w - 1), np.clip(px + 1, 0, w - 1)
    yu, yd = np.clip(py - 1, 0, h - 1), np.clip(py + 1, 0, h - 1)
    offsets[..., 0] = np.where(ok_x, 0.25 * np.sign(heatmaps[n, j, py, xr] - heatmaps[n, j, py, xl]), 0.0)
    offsets[..., 1] = np.where(ok_y, 0.25 * np.sign(heatmaps[n, j, yd, px] - heatmaps[n, j, yu, px]), 0.0)
    return offsets


def _gaussian_blur_keep_peak(heatmaps: np.ndarray, kernel: int) -> np.ndarray:
    """DARK's modulation: Gaussian blur with zero padding (sigma as OpenCV picks it for this kernel size), rescaled
    so each map keeps its original maximum."""
    sigma = 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8  # cv2.getGaussianKernel's default for sigma <= 0
    r = (kernel - 1) // 2
    taps = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    taps = torch.as_tensor(taps / taps.sum(), dtype=torch.float64)
    n, j, h, w = heatmaps.shape
    x = torch.as_tensor(heatmaps, dtype=torch.float64).reshape(n * j, 1, h, w)
    x = nn.functional.conv2d(x, taps.view(1, 1, 1, -1), padding=(0, r))
    x = nn.functional.conv2d(x, taps.view(1, 1, -1, 1), padding=(r, 0))
    blurred = x.reshape(n, j, h, w).numpy()
    orig_max = heatmaps.reshape(n, j, -1).max(-1)
    blurred_max = blurred.reshape(n, j, -1).max(-1)
    scale = np.divide(orig_max, blurred_max, out=np.ones_like(blurred_max), where=blurred_max > 0)
    return blurred * scale[..., None, None]


def _dark_offsets(heatmaps: np.ndarray, px: np.ndarray, py: np.ndarray, kernel: int) -> np.ndarray:
    """DARK refinement (Newton step on the log of the blurred heatmap); NaN where it does not apply."""
    h, w = heatmaps.shape[-2:]
    logh = np.log(np.maximum(_gaussian_blur_keep_peak(heatmaps, kernel), 1e-10))
    n, j = np.indices(px.shape)
    inside = (px >= 2) & (px <= w - 3) & (py >= 2) & (py <= h - 3)
    x, y = np.clip(px, 2, w - 3), np.clip(py, 2, h - 3)  # clipped only to index safely; `inside` masks the result

    def at(dy: int, dx: int) -> np.ndarray:
        return logh[n, j, y + dy, x + dx]

    dx = 0.5 * (at(0, 1) - at(0, -1))
    dy = 0.5 * (at(1, 0) - at(-1, 0))
    dxx = 0.25 * (at(0, 2) - 2 * at(0, 0) + at(0, -2))
    dyy = 0.25 * (at(2, 0) - 2 * at(0, 0) + at(-2, 0))
    dxy = 0.25 * (at(1, 1) - at(-1, 1) - at(1, -1) + at(-1, -1))
    det = dxx * dyy - dxy ** 2
    maximum = inside & (det > 1e-12) & (dxx < 0)  # a proper peak: Hessian negative definite
    safe_det = np.where(maximum, det, 1.0)
    # offset = -H^-1 g with H^-1 = [[dyy, -dxy], [-dxy, dxx]] / det
    off_x = -(dyy * dx - dxy * dy) / safe_det
    off_y = -(-dxy * dx + dxx * dy) / safe_det
    usable = maximum & (np.abs(off_x) <= 1) & (np.abs(off_y) <= 1)
    return np.where(usable[..., None], np.stack([off_x, off_y], axis=-1), np.nan)


def decode_heatmaps(
    heatmaps: np.ndarray, refine: Literal["dark", "quarter"] = "dark", dark_blur_kernel: int = 11
) -> tuple[np.ndarray, np.ndarray]:
    """(N, J, h, w) heatmaps -> sub-pixel peak coordinates (N, J, 2) in heatmap pixels (x, y) and the maxima (N, J)."""
    heatmaps = np.asarray(heatmaps, np.float64)
    n, j, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, j, -1)
    idx = flat.argmax(-1)
    scores = np.take_along_axis(flat, idx[..., None], -1)[..., 0]
    py, px = np.divmod(idx, w)
    offsets = _quarter_offsets(heatmaps, px, py)
    if refine == "dark" and n:
        dark = _dark_offsets(heatmaps, px, py, dark_blur_kernel)
        offsets = np.where(np.isnan(dark), offsets, dark)
    coords = np.stack([px, py], axis=-1).astype(np.float64) + offsets
    return coords, scores


# ---------------------------------------------------------------------------------------------------------------
# Estimator


def _checked_boxes(images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
    """Boxes as an (N, 4) float64 xyxy array with one image per box, or a clear error."""
    boxes = np.asarray(boxes, np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be an (N, 4) xyxy array, got shape {boxes.shape}")
    if len(images) != len(boxes):
        raise ValueError(f"got {len(images)} images for {len(boxes)} boxes; pass one image per box "
                         "(repeat a frame for several people)")
    return boxes


class TopDownEstimator:
    """COCO-17 keypoints for person boxes with a heatmap network such as `pipeline.hrnet.load_hrnet(...)`.

    The model needs a `config` with `input_size` (height, width) and maps (B, 3, H, W) normalised RGB crops to
    (B, 17, H/4, W/4) heatmaps. `estimator(images, boxes)` -> keypoints (N, 17, 2) float32 image pixels and
    scores (N, 17) float32 (heatmap maxima, not clipped), where box i (xyxy) belongs to images[i] (BGR uint8).
    `device` defaults to the one the model's weights are on.
    """

    def __init__(self, model: nn.Module, config: TopDownConfig = TopDownConfig(),
                 device: str | torch.device | None = None) -> None:
        net_config = getattr(model, "config", None)
        if net_config is None or not hasattr(net_config, "input_size"):
            raise ValueError("the pose model has no `config.input_size`; load it with pipeline.hrnet.load_hrnet")
        joints = getattr(net_config, "num_joints", COCO.num_joints)
        if joints != COCO.num_joints:
            raise ValueError(f"the pose model predicts {joints} joints; top-down estimation needs COCO-17 heatmaps")
        self.config = config
        if device is None:  # stay where load_hrnet(..., device=...) put the model
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.input_size: tuple[int, int] = tuple(net_config.input_size)

    @property
    def aspect_ratio(self) -> float:
        return self.input_size[1] / self.input_size[0]

    def preprocess(self, images: Sequence[np.ndarray], boxes: np.ndarray
                   ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """-> normalised crops (N, 3, H, W), centres (N, 2), crop sizes (N, 2) in image pixels."""
        boxes = _checked_boxes(images, boxes)
        for i, image in enumerate(images):
            if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
                    and image.shape[2] == 3):
                raise ValueError(f"image {i} must be a BGR uint8 array (H, W, 3), got "
                                 f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}")
        centres, sizes = boxes_to_crop_regions(boxes, self.aspect_ratio, self.config.box_padding)
        crops = crop_images(images, centres, sizes, self.input_size)
        return normalise_crops(crops), centres, sizes

    def inference(self, crops: torch.Tensor) -> torch.Tensor:
        """Normalised crops (N, 3, H, W) -> heatmaps (N, 17, H/4, W/4) on the CPU, flip-averaged if configured."""
        outputs = []
        with torch.inference_mode():
            for chunk in torch.split(crops, self.config.batch_size):
                x = chunk.to(self.device)
                if self.config.flip_test:
                    both = self.model(torch.cat([x, x.flip(-1)]))
                    plain, mirrored = both[: len(x)], both[len(x):]
                    hm = (plain + flip_heatmaps_back(mirrored, self.config.shift_flipped_heatmaps)) * 0.5
                else:
                    hm = self.model(x)
                outputs.append(hm.float().cpu())
        if not outputs:
            h, w = self.input_size
            return torch.zeros((0, COCO.num_joints, h // 4, w // 4))
        return torch.cat(outputs)

    def postprocess(self, heatmaps: torch.Tensor, centres: np.ndarray, sizes: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
        coords, scores = decode_heatmaps(heatmaps.numpy(), self.config.refine, self.config.dark_blur_kernel)
        keypoints = heatmap_to_image(coords, centres, sizes, self.input_size, tuple(heatmaps.shape[-2:]))
        return keypoints.astype(np.float32), scores.astype(np.float32)

    def __call__(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        boxes = _checked_boxes(images, boxes)
        keypoints = np.zeros((len(boxes), COCO.num_joints, 2), np.float32)
        scores = np.zeros((len(boxes), COCO.num_joints), np.float32)
        # Whole pipeline per chunk, so memory stays bounded by batch_size however many boxes a video has.
        step = self.config.batch_size
        for start in range(0, len(boxes), step):
            crops, centres, sizes = self.preprocess(images[start:start + step], boxes[start:start + step])
            keypoints[start:start + step], scores[start:start + step] = self.postprocess(
                self.inference(crops), centres, sizes
            )
        return keypoints, scores
