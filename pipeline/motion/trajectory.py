"""Where the person is: the pelvis's path relative to the camera, and the world view that shows it.

The lifter predicts root-relative poses: its pelvis is pinned at the origin, so a jump off a box looks like a crouch
on the box. The pelvis's position is recovered here from what the lifter was given and what it returned: the
translation that carries the root-relative 3D joints onto the 2D keypoints through a pinhole camera (focal length f
pixels, principal point at the image centre). Per frame that is a small linear least-squares problem in the three
translation unknowns, weighted by the 2D confidence and made robust by Huber reweighting of the reprojection error in
pixels (a wrong keypoint pulls the fit as one joint, not as sixteen). The per-frame fits are then smoothed over the
whole clip with a two-sided (zero-phase, no lag) Gaussian local-linear fit, more strongly in depth than in the image
plane; undetected frames get no fit of their own and are interpolated from their neighbours, and stay marked.

Scale: monocular depth has no absolute scale. The distance to the camera comes from the lifter's body size (a body
of the height the lifter learned, about a Human3.6M adult) seen at the keypoints' pixel size; a child or a very tall
person is placed too near or too far, by their height ratio. The depth also scales with the focal length: a focal
length 20 % too long puts the person 20 % too far (the image-plane position is unaffected), so pass the real one when
it is known (`focal_length_px(..., focal_px=...)`).

Axes (camera space, metres): x right, y down, z forward (away from the camera), as `pose3d_camera`.
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

import numpy as np

from pipeline.geometry import DEMO_CAMERA_TO_WORLD, camera_to_world
from pipeline.skeleton import H36M, Skeleton

log = logging.getLogger(__name__)

# Default field of view, measured along the image diagonal: focal length = the diagonal in pixels, i.e. 2 atan(1/2) =
# 53.1 degrees diagonally (47 degrees across a 16:9 frame, a 41 mm-equivalent lens). This is the convention CLIFF
# introduced and WHAM and GVHMR use for in-the-wild video with unknown intrinsics, so our depths compare with theirs;
# being diagonal, it is the same lens for a portrait and a landscape clip. Wider lenses are common: a phone's main
# camera filming 16:9 video (26 mm equivalent, less the stabilisation crop) sees about 65-75 degrees diagonally, and
# the default then places the person up to ~1.5x too far (heights and sideways motion scale with it). Pass the real
# field of view or focal length when it is known.
DEFAULT_DIAGONAL_FOV_DEG = math.degrees(2 * math.atan(0.5))


def focal_length_px(width: float, height: float, fov_deg: float | None = None, focal_px: float | None = None) -> float:
    """Focal length in pixels for a `width` x `height` frame.

    `focal_px` (a known focal length in pixels) wins; else `fov_deg` is the diagonal field of view in degrees; else
    the default: the frame's diagonal in pixels (53.1 degrees diagonal field of view, see `DEFAULT_DIAGONAL_FOV_DEG`).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    if focal_px is not None:
        if not math.isfinite(focal_px) or focal_px <= 0:
            raise ValueError(f"focal length must be a positive number of pixels, got {focal_px}")
        return float(focal_px)
    diagonal = math.hypot(width, height)
    if fov_deg is None:
        return diagonal
    if not 1.0 <= fov_deg <= 179.0:
        raise ValueError(f"diagonal field of view must be between 1 and 179 degrees, got {fov_deg}")
    return diagonal / 2 / math.tan(math.radians(fov_deg) / 2)


@dataclass(frozen=True)
class TrajectoryConfig:
    min_score: float = 0.3  # 2D joints scored below this take no part in the fit
    min_joints: int = 6  # a frame with fewer usable joints gets no fit of its own (interpolated instead)
    iterations: int = 6  # reweighting rounds per frame (Huber in pixels, and the 1/depth row scaling)
    huber_k: float = 1.5  # Huber threshold in robust standard deviations (MAD) of the frame's residuals ...
    huber_min_px: float = 2.0  # ... but never below this many pixels (a near-perfect fit must not become L1)
    smoothing_s: float = 0.06  # Gaussian sigma (seconds) of the image-plane position: precise, barely smoothed
    depth_smoothing_s: float = 0.3  # sigma of log-depth: body size in pixels is noisy frame to frame
    temporal_huber: float = 2.5  # frames further than this many robust sigmas from the smooth path are downweighted
    gap_weight: float = 1e-3  # weight of an interpolated (undetected) frame in the smoothing: it only bridges gaps


@dataclass(frozen=True)
class Trajectory:
    camera: np.ndarray  # (T, 3) float32: smoothed pelvis position, camera space, metres
    fitted: np.ndarray  # (T, 3) float32: the per-frame fit before smoothing, NaN where a frame had none
    valid: np.ndarray  # (T,) bool: the person was detected (frames False were interpolated)
    reprojection_px: np.ndarray  # (T,) float32: median reprojection error of the smoothed path, confident joints
    focal_px: float


def estimate_trajectory(
    keypoints_2d: np.ndarray,
    scores: np.ndarray,
    pose3d: np.ndarray,
    image_size: tuple[int, int],
    fps: float,
    valid: np.ndarray | None = None,
    focal_px: float | None = None,
    config: TrajectoryConfig = TrajectoryConfig(),
) -> Trajectory:
    """Pelvis position per frame from 2D keypoints (T, J, 2) pixels with scores (T, J) and root-relative camera-space
    3D joints (T, J, 3) metres (what `Lifter.lift` returns as `camera`), for a frame of `image_size` (width, height).

    `valid` (T,) marks detected frames (all, if None); `focal_px` defaults to `focal_length_px(width, height)`.
    """
    keypoints_2d, scores, pose3d, valid = _checked_inputs(keypoints_2d, scores, pose3d, valid)
    width, height = image_size
    focal = focal_length_px(width, height) if focal_px is None else focal_length_px(width, height, focal_px=focal_px)
    if fps <= 0 or not math.isfinite(fps):
        raise ValueError(f"frame rate must be positive, got {fps}")
    centre = np.array([width / 2, height / 2])
    weights = np.where((scores >= config.min_score) & valid[:, None], scores, 0.0)
    fitted, ok = fit_translations(pose3d, keypoints_2d, weights, focal, centre, config)
    if not ok.any():
        raise ValueError("no frame has enough confident 2D joints to place the person; check the 2D keypoints "
                         f"(at least {config.min_joints} joints scored >= {config.min_score} are needed in a frame)")
    smooth = smooth_path(fitted, ok, focal, centre, fps, config)
    residual = reprojection_errors(pose3d, keypoints_2d, weights, smooth, focal, centre)
    log.debug("trajectory: %d/%d frames fitted, median reprojection %.1f px", ok.sum(), len(ok),
              np.nanmedian(residual) if np.isfinite(residual).any() else float("nan"))
    return Trajectory(
        camera=smooth.astype(np.float32),
        fitted=np.where(ok[:, None], fitted, np.nan).astype(np.float32),
        valid=valid.copy(),
        reprojection_px=residual.astype(np.float32),
        focal_px=focal,
    )


def _checked_inputs(keypoints_2d, scores, pose3d, valid):
    keypoints_2d = np.asarray(keypoints_2d, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    pose3d = np.asarray(pose3d, dtype=np.float64)
    if keypoints_2d.ndim != 3 or keypoints_2d.shape[-1] != 2 or len(keypoints_2d) == 0:
        raise ValueError(f"2D keypoints must be (T, J, 2) with T >= 1, got shape {keypoints_2d.shape}")
    frames, joints = keypoints_2d.shape[:2]
    if pose3d.shape != (frames, joints, 3):
        raise ValueError(f"3D poses must be (T, J, 3) = ({frames}, {joints}, 3) like the 2D keypoints, "
                         f"got shape {pose3d.shape}")
    if scores.shape != (frames, joints):
        raise ValueError(f"scores must be (T, J) = ({frames}, {joints}), got shape {scores.shape}")
    valid = np.ones(frames, bool) if valid is None else np.asarray(valid, dtype=bool)
    if valid.shape != (frames,):
        raise ValueError(f"valid must be (T,) = ({frames},), got shape {valid.shape}")
    usable = np.isfinite(keypoints_2d).all(-1) & np.isfinite(pose3d).all(-1) & np.isfinite(scores)
    return (np.where(usable[..., None], keypoints_2d, 0.0), np.where(usable, scores, 0.0),
            np.where(usable[..., None], pose3d, 0.0), valid)


def fit_translations(
    pose3d: np.ndarray, keypoints_2d: np.ndarray, weights: np.ndarray, focal: float, centre: np.ndarray,
    config: TrajectoryConfig = TrajectoryConfig(),
) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, the translation t (T, 3) that best projects pose3d + t onto the keypoints, and whether it could be
    fitted (T,) bool. Weights (T, J) >= 0 (0 = ignore the joint).

    With p = (u - cx, v - cy) the centred keypoint, projection is exact when f (X + tx) = pu (Z + tz) and
    f (Y + ty) = pv (Z + tz): two equations per joint, linear in t. Each residual equals (Z + tz) times the pixel
    error, so rows are divided by the current depth estimate to minimise pixel errors, and reweighted (Huber).
    """
    p = keypoints_2d - centre
    X, Y, Z = pose3d[..., 0], pose3d[..., 1], pose3d[..., 2]
    zeros = np.zeros_like(X)
    # rows (T, J, 2, 3) and right-hand sides (T, J, 2)
    a = np.stack([np.stack([np.full_like(X, focal), zeros, -p[..., 0]], -1),
                  np.stack([zeros, np.full_like(X, focal), -p[..., 1]], -1)], axis=-2)
    b = np.stack([p[..., 0] * Z - focal * X, p[..., 1] * Z - focal * Y], axis=-1)
    ok = (weights > 0).sum(axis=1) >= config.min_joints
    robust = np.ones_like(weights)
    inv_depth = np.ones_like(weights)  # first round: unscaled rows (the depth is not known yet)
    t = np.zeros((len(weights), 3))
    for _ in range(config.iterations):
        w = np.where(ok[:, None], weights * robust * inv_depth**2, 0.0)[..., None]  # (T, J, 1): both rows of a joint
        normal = np.einsum("tjr,tjra,tjrb->tab", np.broadcast_to(w, b.shape), a, a)
        rhs = np.einsum("tjr,tjra,tjr->ta", np.broadcast_to(w, b.shape), a, b)
        normal[~ok] = np.eye(3)
        rhs[~ok] = 0.0
        t = np.linalg.solve(normal, rhs[..., None])[..., 0]
        depth = Z + t[:, None, 2]
        ok &= ((depth > 0.05) | (weights <= 0)).all(axis=1)  # every used joint in front of the camera
        depth = np.maximum(depth, 0.05)
        inv_depth = 1.0 / depth
        error = np.linalg.norm(np.einsum("tjra,ta->tjr", a, t) - b, axis=-1) * inv_depth  # pixels
        robust = _huber_weights(error, weights > 0, config)
    return t, ok


def _huber_weights(error_px: np.ndarray, used: np.ndarray, config: TrajectoryConfig) -> np.ndarray:
    """Huber IRLS weights per joint: 1 within the threshold, threshold / error beyond it. The threshold is
    `huber_k` robust sigmas (1.4826 x the median absolute error over the frame's used joints), at least
    `huber_min_px`."""
    masked = np.where(used, error_px, np.nan)
    with warnings.catch_warnings():  # frames without a used joint: NaN, then the floor
        warnings.simplefilter("ignore", RuntimeWarning)
        sigma = 1.4826 * np.nanmedian(masked, axis=1)
    threshold = np.maximum(np.nan_to_num(sigma, nan=0.0) * config.huber_k, config.huber_min_px)[:, None]
    return np.where(error_px <= threshold, 1.0, threshold / np.maximum(error_px, 1e-9))


def reprojection_errors(pose3d, keypoints_2d, weights, translation, focal, centre) -> np.ndarray:
    """(T,) median pixel distance between the keypoints with weight > 0 and the projection of pose3d + t; NaN where
    a frame has no such joint."""
    points = pose3d + translation[:, None, :]
    z = np.maximum(points[..., 2:], 1e-6)
    projected = focal * points[..., :2] / z + centre
    error = np.where(weights > 0, np.linalg.norm(projected - keypoints_2d, axis=-1), np.nan)
    with warnings.catch_warnings():  # frames without a used joint give NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(error, axis=1)


def smooth_path(fitted: np.ndarray, ok: np.ndarray, focal: float, centre: np.ndarray, fps: float,
                config: TrajectoryConfig = TrajectoryConfig()) -> np.ndarray:
    """Zero-phase smoothing of per-frame translations (T, 3) where `ok`, interpolation elsewhere -> (T, 3).

    Smoothed in the coordinates the camera measures: the pelvis's image position (precise) and log-depth (noisy),
    each with its own Gaussian width; frames far from the smooth path (a bad 2D frame) are downweighted and the
    smoothing repeated.
    """
    frames = np.arange(len(fitted))
    good = np.flatnonzero(ok)
    depth = np.maximum(fitted[:, 2], 1e-3)
    signals = np.stack([focal * fitted[:, 0] / depth, focal * fitted[:, 1] / depth, np.log(depth)], axis=-1)
    # Frames without a fit: linear interpolation (edge values beyond the ends), then a tiny weight in the smoothing.
    filled = np.stack([np.interp(frames, good, signals[good, c]) for c in range(3)], axis=-1)
    base = np.where(ok, 1.0, config.gap_weight)
    sigmas = (config.smoothing_s * fps, config.smoothing_s * fps, config.depth_smoothing_s * fps)
    smooth = np.empty_like(filled)
    for c, sigma in enumerate(sigmas):
        weights = base.copy()
        for _ in range(3):  # two rounds of temporal reweighting after the first fit
            smooth[:, c] = local_linear_smooth(filled[:, c], weights, sigma)
            deviation = np.abs(filled[:, c] - smooth[:, c])
            scale = 1.4826 * np.median(deviation[ok]) + 1e-9
            limit = config.temporal_huber * scale
            weights = base * np.minimum(1.0, limit / np.maximum(deviation, 1e-12))
    depth = np.exp(smooth[:, 2])
    return np.stack([smooth[:, 0] * depth / focal, smooth[:, 1] * depth / focal, depth], axis=-1)


def local_linear_smooth(values: np.ndarray, weights: np.ndarray, sigma_frames: float) -> np.ndarray:
    """Weighted local-linear regression with a Gaussian kernel of `sigma_frames`, evaluated at every frame.

    Symmetric, so no lag; unlike a moving average it follows a straight path right up to the clip's ends without
    bending towards the inside. Frames of weight 0 are ignored; a window with a single usable frame gives its value.
    """
    values = np.asarray(values, dtype=np.float64)
    if sigma_frames <= 0 or len(values) < 2:
        return values.copy()
    radius = max(1, int(math.ceil(4 * sigma_frames)))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma_frames) ** 2)

    def window_sum(signal: np.ndarray, power: int) -> np.ndarray:
        # sum over d of kernel(d) d^power signal(t + d), zero beyond the ends; np.convolve flips its second
        # argument, so flip it back; "full" then the centred slice works for kernels longer than the clip too
        full = np.convolve(signal, (kernel * offsets**power)[::-1], mode="full")
        return full[radius:radius + len(signal)]

    w = np.asarray(weights, dtype=np.float64)
    s0, s1, s2 = window_sum(w, 0), window_sum(w, 1), window_sum(w, 2)
    b0, b1 = window_sum(w * values, 0), window_sum(w * values, 1)
    determinant = s0 * s2 - s1**2
    well_posed = determinant > 1e-9 * np.maximum(s0, 1e-300) ** 2
    with np.errstate(all="ignore"):
        linear = (s2 * b0 - s1 * b1) / determinant
        mean = b0 / s0
    return np.where(well_posed, linear, np.where(s0 > 0, mean, values))


# ----------------------------------------------------------------------------------------------------------------------
# World view


@dataclass(frozen=True)
class WorldView:
    poses: np.ndarray  # (T, J, 3) float32: world joints, z up, metres; the ground (z = 0) under the lowest foot
    root: np.ndarray  # (T, 3) float32: the pelvis path in the same frame (= poses[:, pelvis])
    ground: float  # the world height that was moved to z = 0 (minus the camera's height above the ground)


def world_view(
    camera_poses: np.ndarray,
    trajectory: np.ndarray | None,
    valid: np.ndarray | None = None,
    ground: float | None = None,
    skeleton: Skeleton = H36M,
    rotation: np.ndarray = DEMO_CAMERA_TO_WORLD,
) -> WorldView:
    """Root-relative camera-space poses (T, J, 3) plus the pelvis trajectory (T, 3) -> the world view the 3D panel
    draws: the camera-to-world `rotation` (the released demo's fixed one by default; demo.py passes the clip's
    levelled one, `pipeline.motion.level`), then one vertical shift for the whole clip that puts the lowest foot
    (ankle) of any detected frame on the ground, z = 0, so jumps and steps down show. The camera stands at
    x = y = 0, at height -ground. `ground` given: use that height instead (to put several people on one ground).

    trajectory None: the pinned view (every pelvis at the origin, each frame's lowest joint on the ground), which is
    `pipeline.geometry.demo_world_view`; `root` is then the pelvis of each frame.
    """
    camera_poses = np.asarray(camera_poses, dtype=np.float64)
    if camera_poses.ndim != 3 or camera_poses.shape[-1] != 3 or camera_poses.shape[1] != skeleton.num_joints:
        raise ValueError(f"camera poses must be (T, {skeleton.num_joints}, 3), got shape {camera_poses.shape}")
    root_index = skeleton.parents.index(-1)
    if trajectory is None:
        world = camera_to_world(camera_poses, rotation).astype(np.float64)
        world[..., 2] -= world[..., 2].min(axis=-1, keepdims=True)
        return WorldView(world.astype(np.float32), world[:, root_index].astype(np.float32), 0.0)
    trajectory = np.asarray(trajectory, dtype=np.float64)
    if trajectory.shape != (len(camera_poses), 3):
        raise ValueError(f"trajectory must be (T, 3) = ({len(camera_poses)}, 3), got shape {trajectory.shape}")
    world = camera_to_world(camera_poses + trajectory[:, None, :], rotation).astype(np.float64)
    if ground is None:
        ground = ground_height(world, valid, skeleton)
    world[..., 2] -= ground
    return WorldView(world.astype(np.float32), world[:, root_index].astype(np.float32), float(ground))


def ground_height(world: np.ndarray, valid: np.ndarray | None = None, skeleton: Skeleton = H36M) -> float:
    """The lowest foot height (z) over the detected frames of world poses (T, J, 3) with z up (all frames if none is
    detected). Feet are the ankles; a skeleton without ankles uses its lowest joint."""
    feet = [j for j, name in enumerate(skeleton.joints) if name.endswith("ankle")] or list(range(skeleton.num_joints))
    frames = np.ones(len(world), bool) if valid is None else np.asarray(valid, dtype=bool)
    if not frames.any():
        frames = np.ones(len(world), bool)
    heights = world[frames][:, feet, 2]
    heights = heights[np.isfinite(heights)]
    if heights.size == 0:
        raise ValueError("no finite foot position in the world poses: cannot place the ground")
    return float(heights.min())
