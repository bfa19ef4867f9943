"""Refine a recording's camera extrinsics on the people it sees: a robust sparse bundle adjustment.

Why: a calibration that is a few degrees off (the shared 4-camera recording: a person triangulated from three views
lands 31-73 px from the fourth view's detections, where detector noise gives 7-10 px) makes the triangulation drop
views it should keep (2.4 of 4 per joint on average) and gives the 3D reference step artifacts of 5-10 cm whenever a
view is dropped or taken back from one frame to the next. The people themselves are a calibration target: hundreds
of confidently detected joints seen from every view pin down the cameras' relative poses far better than a few px.

What is solved: every camera's rotation and position, and one 3D point per (person, frame, COCO joint) used, so that
the points project onto the detections; a robust loss (soft L1, `f_scale_px` about the detector's noise) lets
left/right swaps and occluded joints count as little as possible. Intrinsics and distortion are kept: on the
recording, freeing the focal lengths as well reduced nothing further. The solution is only defined up to a
similarity transform (the gauge), fixed by holding the first camera where it is and keeping the distance between the
first two camera centres, so the world frame is the first camera's and metres stay metres. scipy's `least_squares`
with a Jacobian sparsity pattern (each residual sees one camera and one point) keeps it to seconds.

Refused (ValueError) when too few joints are seen confidently by enough views; a camera that moves implausibly far
(`max_rotation_deg`, `max_shift_m`) is logged as a warning, not hidden: it means mismatched people or the wrong
calibration, not a small error to correct.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from pipeline.evaluation.calibration import CameraCalibration
from pipeline.evaluation.triangulation import TriangulationConfig, triangulate

if TYPE_CHECKING:  # multiview imports this module
    from pipeline.evaluation.multiview import ViewTracks

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefineConfig:
    min_score: float = 0.6  # only confident detections are calibration evidence
    min_views: int = 3  # a joint must be seen confidently by this many views (capped at the number of cameras)
    max_frames: int = 40  # frames used, spread evenly over the recording: neighbouring frames add little but time
    f_scale_px: float = 5.0  # residuals beyond this (about the detector's noise) count less and less
    loss: str = "soft_l1"  # scipy least_squares loss: soft_l1, huber, cauchy, ...
    seed_max_px: float = 15.0  # outlier-view rejection of the triangulation that seeds the 3D points
    min_points: int = 100  # fewer usable joints: refuse
    min_camera_observations: int = 50  # fewer confident detections in one camera: refuse
    max_rotation_deg: float = 10.0  # a camera turning further than this is warned about
    max_shift_m: float = 0.5  # a camera moving further than this is warned about
    max_nfev: int = 1000

    def __post_init__(self) -> None:
        if self.max_frames < 1 or not self.f_scale_px > 0 or self.min_views < 2:
            raise ValueError("max_frames must be >= 1, f_scale_px > 0 and min_views >= 2")


@dataclass
class Observations:
    """Confident keypoints of the joints used: V views, N points."""

    keypoints: np.ndarray  # (V, N, 2) distorted pixels, NaN where unused
    used: np.ndarray  # (V, N) bool


def gather_observations(views: list[ViewTracks], groups: list[dict[int, int]], config: RefineConfig) -> Observations:
    """The COCO keypoints of every matched person (groups: {view index: track row}) on up to `max_frames` frames
    spread evenly over the recording, at the joints enough views detect with a score of at least `min_score`."""
    num_views, num_frames = len(views), views[0].num_frames
    frames = np.unique(np.linspace(0, num_frames - 1, min(num_frames, config.max_frames)).round().astype(int))
    keypoints, used = [], []
    for group in groups:
        kp = np.full((num_views, len(frames), 17, 2), np.nan)
        ok = np.zeros((num_views, len(frames), 17), bool)
        for v, row in group.items():
            kp[v] = views[v].keypoints_coco[row][frames]
            ok[v] = (views[v].valid[row][frames][:, None] & (views[v].scores_coco[row][frames] >= config.min_score)
                     & np.isfinite(kp[v]).all(axis=-1))
        keypoints.append(np.where(ok[..., None], kp, np.nan).reshape(num_views, -1, 2))
        used.append(ok.reshape(num_views, -1))
    if not groups:
        return Observations(np.zeros((num_views, 0, 2)), np.zeros((num_views, 0), bool))
    keypoints, used = np.concatenate(keypoints, axis=1), np.concatenate(used, axis=1)
    keep = used.sum(axis=0) >= min(config.min_views, num_views)
    return Observations(keypoints[:, keep], used[:, keep])


def _tangent_basis(direction: np.ndarray) -> np.ndarray:
    """(2, 3) two unit vectors perpendicular to `direction` and to each other."""
    helper = np.eye(3)[np.argmin(np.abs(direction))]
    e1 = np.cross(direction, helper)
    e1 /= np.linalg.norm(e1)
    return np.stack([e1, np.cross(direction, e1)])


class _Problem:
    """Parameters: camera 1's rotation and the direction to its centre from camera 0's (5), every further camera's
    rotation and centre (6 each), then the points (3 each). Camera 0 is fixed (the gauge)."""

    def __init__(self, cameras: list[CameraCalibration], observations: Observations, points: np.ndarray):
        self.cameras = cameras
        self.centre0 = cameras[0].center
        baseline = cameras[1].center - self.centre0
        self.distance = float(np.linalg.norm(baseline))
        if self.distance < 1e-6:
            raise ValueError(f"cameras {cameras[0].name} and {cameras[1].name} are at the same place; the scale of "
                             "the refinement is their distance")
        self.direction = baseline / self.distance
        self.basis = _tangent_basis(self.direction)
        self.view, self.point = np.nonzero(observations.used)
        self.pixels = observations.keypoints[self.view, self.point]
        self.by_view = [np.flatnonzero(self.view == v) for v in range(len(cameras))]
        self.num_camera_params = 5 + 6 * (len(cameras) - 2)
        self.num_points = len(points)
        self.x0 = np.concatenate([cameras[1].rvec, np.zeros(2)]
                                 + [np.concatenate([c.rvec, c.center]) for c in cameras[2:]] + [points.ravel()])

    def camera_slices(self, v: int) -> range:
        if v == 0:
            return range(0)
        return range(0, 5) if v == 1 else range(5 + 6 * (v - 2), 11 + 6 * (v - 2))

    def poses(self, x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """(rvec, t) of every camera."""
        out = [(self.cameras[0].rvec, self.cameras[0].t)]
        turn = cv2.Rodrigues(x[3:5] @ self.basis)[0]
        centres = [self.centre0 + self.distance * turn @ self.direction]
        rvecs = [x[0:3]]
        for v in range(2, len(self.cameras)):
            block = x[5 + 6 * (v - 2):11 + 6 * (v - 2)]
            rvecs.append(block[:3])
            centres.append(block[3:])
        for rvec, centre in zip(rvecs, centres, strict=True):
            out.append((rvec, -cv2.Rodrigues(rvec)[0] @ centre))
        return out

    def residuals(self, x: np.ndarray) -> np.ndarray:
        points = x[self.num_camera_params:].reshape(-1, 3)
        out = np.empty((len(self.view), 2))
        for v, ((rvec, t), cam) in enumerate(zip(self.poses(x), self.cameras, strict=True)):
            idx = self.by_view[v]
            if len(idx):
                projected, _ = cv2.projectPoints(points[self.point[idx]][:, None], rvec, t, cam.K, cam.dist)
                out[idx] = projected.reshape(-1, 2) - self.pixels[idx]
        return out.ravel()

    def sparsity(self):
        from scipy.sparse import coo_matrix

        rows, cols = [], []
        for v in range(len(self.cameras)):
            idx = self.by_view[v]
            params = np.array(self.camera_slices(v))
            for k in (0, 1):
                r = 2 * idx + k
                rows += [np.repeat(r, len(params)), np.repeat(r, 3)]
                cols += [np.tile(params, len(idx)), (self.num_camera_params + 3 * self.point[idx][:, None]
                                                     + np.arange(3)).ravel()]
        rows, cols = np.concatenate(rows), np.concatenate(cols)
        shape = (2 * len(self.view), self.num_camera_params + 3 * self.num_points)
        return coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=shape).tocsr()

    def refined_cameras(self, x: np.ndarray) -> list[CameraCalibration]:
        """The cameras with the poses of `x`; the first one is returned as it was (no Rodrigues round trip)."""
        return self.cameras[:1] + [dataclasses.replace(cam, R=cv2.Rodrigues(np.asarray(rvec, np.float64))[0], t=t)
                                   for cam, (rvec, t) in zip(self.cameras[1:], self.poses(x)[1:], strict=True)]


def _seed_config(config: RefineConfig) -> TriangulationConfig:
    return TriangulationConfig(min_score=0.5, max_reprojection_px=config.seed_max_px)


def reprojection_by_camera(cameras: list[CameraCalibration], observations: Observations,
                           config: RefineConfig) -> list[np.ndarray]:
    """Per camera, the pixel errors of its confident detections against the points triangulated (with outlier-view
    rejection) from all views: what the 3D reference would make of this calibration. A rejected view's error counts."""
    tri = triangulate(cameras, observations.keypoints, observations.used.astype(np.float64), _seed_config(config))
    return [tri.reprojection_px[v][observations.used[v] & np.isfinite(tri.reprojection_px[v])]
            for v in range(len(cameras))]


def _check_observations(cameras: list[CameraCalibration], observations: Observations, config: RefineConfig) -> None:
    num_points = observations.used.shape[1]
    if num_points < config.min_points:
        raise ValueError(f"too few points to refine the calibration: {num_points} joints are seen with a score >= "
                         f"{config.min_score} by {min(config.min_views, len(cameras))} views or more, at least "
                         f"{config.min_points} are needed (a longer recording, or people seen by more views)")
    for cam, used in zip(cameras, observations.used, strict=True):
        if used.sum() < config.min_camera_observations:
            raise ValueError(f"too few points to refine camera {cam.name}: {int(used.sum())} confident detections "
                             f"of people seen by other views, at least {config.min_camera_observations} are needed")


def _camera_change(before: CameraCalibration, after: CameraCalibration) -> tuple[float, float]:
    """Rotation (degrees) and centre shift (metres) from `before` to `after`."""
    cos = (np.trace(after.R @ before.R.T) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))), float(np.linalg.norm(after.center - before.center))


def _percentiles(errors: np.ndarray) -> tuple[float, float]:
    if not len(errors):
        return float("nan"), float("nan")
    return float(np.median(errors)), float(np.percentile(errors, 90))


def refinement_report(cameras: list[CameraCalibration], refined: list[CameraCalibration],
                      observations: Observations, config: RefineConfig) -> dict:
    """Per camera: median and 90th percentile of the reprojection error before and after, rotation change (deg) and
    centre shift (m); warns about cameras that moved further than `max_rotation_deg` / `max_shift_m`."""
    before = reprojection_by_camera(cameras, observations, config)
    after = reprojection_by_camera(refined, observations, config)
    per_camera = {}
    for old, new, e0, e1 in zip(cameras, refined, before, after, strict=True):
        rotation, shift = _camera_change(old, new)
        (m0, p0), (m1, p1) = _percentiles(e0), _percentiles(e1)
        per_camera[old.name] = {"observations": int(len(e0)), "median_px_before": m0, "p90_px_before": p0,
                                "median_px_after": m1, "p90_px_after": p1, "rotation_deg": rotation, "shift_m": shift}
        if rotation > config.max_rotation_deg or shift > config.max_shift_m:
            logger.warning("calibration refinement moved camera %s by %.1f deg and %.2f m, more than a calibration "
                           "error usually is (%g deg, %g m): check that the calibration belongs to these videos and "
                           "that the people were matched across views correctly", old.name, rotation, shift,
                           config.max_rotation_deg, config.max_shift_m)
    return {"points": int(observations.used.shape[1]), "observations": int(observations.used.sum()),
            "fixed_camera": cameras[0].name, "scale_cameras": [cameras[0].name, cameras[1].name],
            "cameras": per_camera}


def refine_extrinsics(cameras: list[CameraCalibration], views: list[ViewTracks], groups: list[dict[int, int]],
                      config: RefineConfig | None = None) -> tuple[list[CameraCalibration], dict]:
    """Bundle-adjust every camera's rotation and position on the people matched across views.

    views: the recording's ViewTracks (COCO keypoints, scores, valid), one per camera; groups: one {view index: track
    row} per person (`multiview.associate`). Returns the refined cameras (intrinsics and distortion unchanged; the
    first camera and the distance between the first two centres kept) and a report (`refinement_report`, plus the
    solver's cost, evaluations and seconds). Raises ValueError when there is too little to go on.
    """
    config = config or RefineConfig()
    if len(cameras) < 2 or len(views) != len(cameras):
        raise ValueError(f"refining a calibration needs 2 or more cameras with one view each, got {len(cameras)} "
                         f"cameras and {len(views)} views")
    for cam in cameras:
        cam._check_pinhole()
    from scipy.optimize import least_squares
    start = time.perf_counter()
    observations = gather_observations(views, groups, config)
    _check_observations(cameras, observations, config)
    seed = triangulate(cameras, observations.keypoints, observations.used.astype(np.float64), _seed_config(config))
    finite = np.isfinite(seed.points).all(axis=-1)
    observations = Observations(observations.keypoints[:, finite], observations.used[:, finite])
    _check_observations(cameras, observations, config)
    problem = _Problem(cameras, observations, seed.points[finite])
    solution = least_squares(problem.residuals, problem.x0, jac_sparsity=problem.sparsity(), loss=config.loss,
                             f_scale=config.f_scale_px, x_scale="jac", max_nfev=config.max_nfev, method="trf",
                             ftol=1e-6)  # on the recording: within 0.002 deg of ftol=1e-8, up to 5x faster
    if solution.status == 0:
        logger.warning("calibration refinement stopped after %d evaluations without converging; the result may "
                       "still improve with a larger max_nfev", solution.nfev)
    refined = problem.refined_cameras(solution.x)
    report = refinement_report(cameras, refined, observations, config)
    report.update(cost=float(solution.cost), evaluations=int(solution.nfev), seconds=time.perf_counter() - start)
    for name, r in report["cameras"].items():
        logger.info("%s: reprojection median %.1f -> %.1f px (p90 %.1f -> %.1f), turned %.2f deg, moved %.3f m", name,
                    r["median_px_before"], r["median_px_after"], r["p90_px_before"], r["p90_px_after"],
                    r["rotation_deg"], r["shift_m"])
    return refined, report
