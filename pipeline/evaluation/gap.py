"""How a real detector's COCO-17 keypoints differ from the triangulated 3D, and from the joints a lifter is trained on.

Two different gaps, measured separately:

1. Per-view residuals: each view's detected keypoint minus the projection of the point triangulated from all views.
   Bias (in the body's own image directions: outwards from the body's midline and up along the trunk), spread,
   temporal correlation (autocorrelation of the residual at a few lags) and growth with the joint's speed, in units
   of the person's stature. The triangulation is made from the same detector's points, so this is the view-to-view
   inconsistency of the detector (plus calibration error), not its semantic offset from anatomical joints.
2. Semantic offsets: the triangulated COCO hips and shoulders against joint-centre skeletons, as scale-free ratios
   (hip width / thigh, shoulder width / upper arm, thigh / shin) compared with the same ratios of the mocap training
   data's synthetic COCO points and Human3.6M-style joints (`pipeline.mocap.h36m_joints`) and of a lifter's output.

Stature is estimated from the triangulated ankle -> knee -> hip -> shoulder chain (mean of both sides), which is
about 0.78 of stature in standard anthropometric tables (shoulder height 0.818, ankle height 0.039 of stature).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from pipeline.evaluation.calibration import CameraCalibration
from pipeline.evaluation.multiview import TriangulatedPerson, ViewTracks
from pipeline.skeleton import COCO, H36M

CHAIN_TO_STATURE = 0.779  # ankle-to-shoulder chain / stature (0.818 - 0.039)
LAGS = (1, 5, 15)
SPEED_BINS = (0.0, 0.5, 1.0, 2.0, np.inf)  # m/s of the joint in 3D
OUTLIER_STATURE = 0.05  # a residual above 5 % of stature (~8 cm) counts as an outlier (swap, occlusion, wrong view)


@dataclass(frozen=True)
class GapConfig:
    min_score: float = 0.3  # detections below this are not analysed (the triangulation ignored them too)


def _c(name: str) -> int:
    return COCO.index(name)


def stature(points: np.ndarray) -> float:
    """Estimated stature (m) of a person from triangulated COCO points (T, 17, 3), see the module docstring."""
    chains = []
    for side in ("left", "right"):
        joints = [_c(f"{side}_{j}") for j in ("ankle", "knee", "hip", "shoulder")]
        chains.append(np.linalg.norm(np.diff(points[:, joints], axis=1), axis=-1).sum(axis=1))
    return float(np.nanmedian(np.nanmean(np.stack(chains), axis=0)) / CHAIN_TO_STATURE)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def body_axes_2d(projected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, the body's image directions from projected COCO points (T, 17, 2): `up` (mid-hip -> mid-shoulder)
    and `left` (the person's left, perpendicular to up), both (T, 2) unit vectors."""
    hips = projected[:, [_c("left_hip"), _c("right_hip")]]
    shoulders = projected[:, [_c("left_shoulder"), _c("right_shoulder")]]
    up = _unit(shoulders.mean(axis=1) - hips.mean(axis=1))
    across = (hips[:, 0] - hips[:, 1]) + (shoulders[:, 0] - shoulders[:, 1])
    left = _unit(across - (across * up).sum(-1, keepdims=True) * up)
    return up, left


def view_residuals(camera: CameraCalibration, view: ViewTracks, row: int, person: TriangulatedPerson,
                   config: GapConfig) -> dict[str, np.ndarray]:
    """One person in one view: residuals (T, 17, 2) px, pixels per metre at the person (T,), usable mask (T, 17),
    residual components outwards / up (T, 17) px, and the 3D joint speed (T, 17) m/s."""
    points = person.coco.points
    projected = camera.project(points)
    residual = view.keypoints_coco[row] - projected
    usable = view.valid[row][:, None] & (view.scores_coco[row] >= config.min_score) & np.isfinite(residual).all(-1)
    depth = camera.to_camera(np.nanmean(points[:, [_c("left_hip"), _c("right_hip")]], axis=1))[:, 2]
    px_per_m = camera.K[0, 0] / depth
    up, left = body_axes_2d(projected)
    outward = np.repeat(left[:, None], COCO.num_joints, axis=1)
    outward[:, list(COCO.right)] *= -1  # a right joint's outside is the person's right
    speed = np.full(points.shape[:2], np.nan)
    speed[1:-1] = np.linalg.norm(points[2:] - points[:-2], axis=-1) / 2 * view.fps
    return {"residual": residual, "usable": usable, "px_per_m": px_per_m, "speed": speed,
            "out": (residual * outward).sum(-1), "up": (residual * up[:, None]).sum(-1)}


def autocorrelation(residual: np.ndarray, usable: np.ndarray, lag: int) -> float:
    """Correlation of a residual (T, 2) with itself `lag` frames later, over frame pairs that are both usable,
    after removing the sequence's mean; NaN with fewer than 10 pairs."""
    if len(residual) <= lag:
        return float("nan")
    ok = usable[:-lag] & usable[lag:]
    if ok.sum() < 10:
        return float("nan")
    centred = residual - residual[usable].mean(axis=0)
    a, b = centred[:-lag][ok], centred[lag:][ok]
    denominator = np.sqrt((a**2).sum() * (b**2).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def _joint_statistics(rows: list[dict], heights: list[float], joint: int) -> dict:
    out, up, norm, speed, acf = [], [], [], [], {lag: [] for lag in LAGS}
    for r, height in zip(rows, heights, strict=True):
        ok = r["usable"][:, joint]
        scale = r["px_per_m"][ok] * height  # pixels per stature
        out.append(r["out"][ok, joint] / scale)
        up.append(r["up"][ok, joint] / scale)
        norm.append(np.linalg.norm(r["residual"][ok, joint], axis=-1) / scale)
        speed.append(r["speed"][ok, joint])
        for lag in LAGS:
            acf[lag].append(autocorrelation(r["residual"][:, joint], r["usable"][:, joint], lag))
    out, up, norm, speed = (np.concatenate(x) for x in (out, up, norm, speed))
    by_speed = {}
    for lo, hi in zip(SPEED_BINS[:-1], SPEED_BINS[1:], strict=True):
        sel = (speed >= lo) & (speed < hi)
        by_speed[f"{lo:g}-{hi:g}"] = {"n": int(sel.sum()),
                                      "median": float(np.median(norm[sel])) if sel.sum() >= 10 else float("nan")}
    return {"n": int(len(out)), "bias_out": float(np.median(out)), "bias_up": float(np.median(up)),
            "median": float(np.median(norm)), "p90": float(np.percentile(norm, 90)),
            "outliers": float(np.mean(norm > OUTLIER_STATURE)),
            "acf": {lag: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for lag, v in acf.items()},
            "by_speed": by_speed}


def residual_statistics(cameras: list[CameraCalibration], views: list[ViewTracks], people: list[TriangulatedPerson],
                        config: GapConfig | None = None) -> dict[str, dict]:
    """Per COCO joint, pooled over people and views, in fractions of stature: median bias outwards / up, median and
    90th percentile of the residual's size, the share of outliers, autocorrelation at LAGS frames (mean over
    sequences) and the median size by 3D joint speed. Medians, because swaps and occlusions give heavy tails."""
    config = config or GapConfig()
    rows, heights = [], []
    for person in people:
        height = stature(person.coco.points)
        for v, row in person.tracks.items():
            rows.append(view_residuals(cameras[v], views[v], row, person, config))
            heights.append(height)
    return {name: _joint_statistics(rows, heights, j) for j, name in enumerate(COCO.joints)}


def leave_one_view_out(cameras: list[CameraCalibration], views: list[ViewTracks], people: list[TriangulatedPerson],
                       config: GapConfig | None = None) -> dict[str, dict[str, float]]:
    """Per view, how far its confident COCO keypoints lie from the points triangulated from the other views alone
    (pixels): the calibration's consistency as this view sees it. With a good calibration this is close to the
    detector's own noise; a view whose pose or intrinsics are off shows a large median and a systematic offset."""
    from pipeline.evaluation.triangulation import triangulate

    config = config or GapConfig()
    out = {}
    for v, view in enumerate(views):
        errors, offsets = [], []
        for person in people:
            if v not in person.tracks or len(person.tracks) < 3:
                continue
            others = [u for u in person.tracks if u != v]
            keypoints = np.stack([views[u].keypoints_coco[person.tracks[u]] for u in others])
            scores = np.stack([views[u].scores_coco[person.tracks[u]] * views[u].valid[person.tracks[u]][:, None]
                               for u in others])
            points = triangulate([cameras[u] for u in others], keypoints, scores).points
            row = person.tracks[v]
            residual = view.keypoints_coco[row] - cameras[v].project(points)
            ok = view.valid[row][:, None] & (view.scores_coco[row] >= config.min_score) & np.isfinite(residual).all(-1)
            errors.append(np.linalg.norm(residual[ok], axis=-1))
            offsets.append(residual[ok])
        if errors:
            e, o = np.concatenate(errors), np.concatenate(offsets)
            out[view.name] = {"n": int(len(e)), "median_px": float(np.median(e)),
                              "median_dx_px": float(np.median(o[:, 0])), "median_dy_px": float(np.median(o[:, 1]))}
    return out


def proportions_coco(points: np.ndarray) -> dict[str, float]:
    """Scale-free proportions of COCO-17 points (T, 17, 3), medians over frames: hip and shoulder width / stature
    (estimated per frame from the ankle-shoulder chain, see `stature`), hip width / thigh, shoulder width / upper
    arm, thigh / shin, hip width / shoulder width."""
    def length(a: str, b: str) -> np.ndarray:
        return np.linalg.norm(points[:, _c(a)] - points[:, _c(b)], axis=-1)

    def sides(a: str, b: str) -> np.ndarray:
        return (length(f"left_{a}", f"left_{b}") + length(f"right_{a}", f"right_{b}")) / 2

    hip, shoulder = length("left_hip", "right_hip"), length("left_shoulder", "right_shoulder")
    thigh, shin, upper_arm = sides("hip", "knee"), sides("knee", "ankle"), sides("shoulder", "elbow")
    body = (sides("ankle", "knee") + thigh + sides("hip", "shoulder")) / CHAIN_TO_STATURE
    return {"hip_width/stature": float(np.nanmedian(hip / body)),
            "shoulder_width/stature": float(np.nanmedian(shoulder / body)),
            "hip_width/thigh": float(np.nanmedian(hip / thigh)),
            "shoulder_width/upper_arm": float(np.nanmedian(shoulder / upper_arm)),
            "thigh/shin": float(np.nanmedian(thigh / shin)),
            "hip_width/shoulder_width": float(np.nanmedian(hip / shoulder))}


def proportions_h36m(points: np.ndarray) -> dict[str, float]:
    """The same proportions for Human3.6M-17 joints (T, 17, 3): hip and shoulder joint centres."""
    index = {name: H36M.index(name) for name in H36M.joints}
    coco_like = np.full(points.shape[:1] + (COCO.num_joints, 3), np.nan)
    for name in ("left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "left_shoulder",
                 "right_shoulder", "left_elbow", "right_elbow"):
        coco_like[:, _c(name)] = points[:, index[name]]
    return proportions_coco(coco_like)


def mocap_proportions(clips: int = 20) -> dict[str, dict[str, float]]:
    """Proportions of the mocap training data's synthetic COCO points and H36M joints (`map_skeleton` with the
    default BodyModel), over `clips` Bandai clips spread over the unpacked archive (python -m pipeline.mocap unpack)."""
    from pipeline.mocap.dataset import DEFAULT_MOCAP_DIR, bandai_clip_paths, bandai_group, load_bvh_clip
    from pipeline.mocap.h36m_joints import BANDAI

    paths = bandai_clip_paths(DEFAULT_MOCAP_DIR)
    coco, h36m = [], []
    for path in paths[:: max(1, len(paths) // clips)]:
        clip = load_bvh_clip(path, BANDAI, bandai_group(path.stem))
        coco.append(clip.coco_world[::10])
        h36m.append(clip.h36m_world[::10])
    return {"mocap COCO (synthetic)": proportions_coco(np.concatenate(coco)),
            "mocap H36M joints": proportions_h36m(np.concatenate(h36m))}


def mocap_tails(clips: int = 40, cameras: int = 3, seed: int = 0) -> dict[str, dict[str, dict]]:
    """`detection_tails` of `clips` Bandai clips spread over the unpacked archive (python -m pipeline.mocap unpack)."""
    from pipeline.mocap.dataset import DEFAULT_MOCAP_DIR, bandai_clip_paths, bandai_group, load_bvh_clip
    from pipeline.mocap.h36m_joints import BANDAI

    paths = bandai_clip_paths(DEFAULT_MOCAP_DIR)
    paths = paths[:: max(1, len(paths) // clips)][:clips]
    return detection_tails([load_bvh_clip(path, BANDAI, bandai_group(path.stem)).coco_world for path in paths],
                           cameras, seed)


def detection_tails(people: list[np.ndarray], cameras: int = 3, seed: int = 0) -> dict[str, dict[str, dict]]:
    """Per COCO joint, how far the mocap training data's synthetic detections lie from the clean projection, in
    fractions of stature (median, 90th percentile, share beyond OUTLIER_STATURE): the training noise as it is, and as
    a glitching rendering's (`RenderConfig.glitches`). `people`: world COCO points (T, 17, 3) in metres, Y up, at the
    recorded speed, each seen by `cameras` random training cameras; both columns see the same cameras and the same
    noise but for the glitches. The counterpart of `residual_statistics` for the data a lifter learns from."""
    from pipeline.mocap.cameras import sample_camera
    from pipeline.mocap.dataset import GLITCH_RATE, RenderConfig
    from pipeline.mocap.noise import corrupt_keypoints

    config = RenderConfig()
    camera_rng = np.random.default_rng([seed, 0])
    renderings = []  # (clean pixels, pixels per stature) per person and camera
    for person in people:
        height = stature(person)
        for _ in range(cameras):
            camera = sample_camera(person, camera_rng, config.camera)
            points = camera.to_camera(person)
            renderings.append((camera.project(points), camera.focal / points[..., 2].mean(axis=-1) * height))
    out = {}
    for name, noise in (("training noise", config.noise),
                        ("glitching renderings", replace(config.noise, glitch_rate=GLITCH_RATE))):
        sizes = []
        for i, (clean, px_per_stature) in enumerate(renderings):
            noisy = corrupt_keypoints(clean, np.random.default_rng([seed, 1, i]), noise)  # glitches are drawn last
            sizes.append(np.linalg.norm(noisy - clean, axis=-1) / px_per_stature[:, None])
        sizes = np.concatenate(sizes)
        out[name] = {joint: {"median": float(np.median(sizes[:, j])), "p90": float(np.percentile(sizes[:, j], 90)),
                             "outliers": float(np.mean(sizes[:, j] > OUTLIER_STATURE))}
                     for j, joint in enumerate(COCO.joints)}
    return out


def lifter_proportions(lifter, views: list[ViewTracks], people: list[TriangulatedPerson]) -> dict[str, float]:
    """The proportions of a lifter's output, lifting every person in every view that sees them (mean over those), with
    the window stride demo.py uses at the views' frame rate."""
    from pipeline.lifting import window_strides
    from pipeline.orientation import lift_turned

    rows = []
    for person in people:
        for v, row in person.tracks.items():
            frames = np.flatnonzero(views[v].valid[row])
            if len(frames) < 3:
                continue
            poses = lift_turned(lifter, views[v].keypoints[row], views[v].image_size, views[v].turn, None,
                                stride=window_strides(views[v].fps))[frames]
            rows.append(proportions_h36m(poses))
    if not rows:
        raise ValueError("nobody to lift: no person is detected in 3 or more frames of a view")
    return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}


def gap_report(cameras: list[CameraCalibration], views: list[ViewTracks], people: list[TriangulatedPerson],
               lifters: dict[str, object] | None = None, mocap_clips: int = 0) -> dict:
    """Everything docs/real_footage_gap.md reports: residual statistics per COCO joint, and proportions of the
    triangulated people, of each lifter's output, and (mocap_clips > 0) of the mocap training data, with its
    synthetic detections' distance from the clean points (`mocap_tails`)."""
    proportions = {}
    for i, person in enumerate(people):
        proportions[f"person {i}: triangulated COCO"] = proportions_coco(person.coco.points)
    for name, lifter in (lifters or {}).items():
        proportions[f"lifter {name}"] = lifter_proportions(lifter, views, people)
    tails = {}
    if mocap_clips > 0:
        proportions.update(mocap_proportions(mocap_clips))
        tails = mocap_tails(mocap_clips)
    return {"stature_m": [stature(p.coco.points) for p in people],
            "residuals": residual_statistics(cameras, views, people),
            "leave_one_view_out": leave_one_view_out(cameras, views, people), "proportions": proportions,
            "mocap_tails": tails}
