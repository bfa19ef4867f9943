"""Validate lifters on real footage: a calibrated multi-camera recording gives a triangulated 3D reference, and every
single view is lifted on its own and scored against it.

    views -> the project's 2D stage per view (all people, cached) -> people associated across views
          -> triangulated Human3.6M-17 (and COCO-17) joints per person -> per view: lifter -> scores

Why: synthetic mocap cannot show how a lifter copes with a real detector's keypoints on real bodies; a recording seen
by several calibrated cameras can, without motion capture, because the same detector's points from four directions
pin down where the joints are. The reference is built from the very H36M-17 points the lifter sees (the COCO->H36M
remap of the detector's keypoints), so the comparison measures the lifting, not the joint definitions.

Association: tracks of different views are the same person when their keypoints triangulate consistently: the
median two-view reprojection error over frames and joints is below `match_max_px` (about 2-5 px for the same
person on the recording, hundreds for different people). Views with the most tracks are taken first; every track
either joins the person it fits best (one track per person and view) or starts a new person; people seen by fewer
than `min_person_views` views (e.g. a bystander at the edge of two pictures) are dropped.

Calibration refinement (`refine_extrinsics`, on by default): a calibration a few degrees off makes the triangulation
drop views it should keep, so the matched people recalibrate the cameras' poses first (`refine.refine_extrinsics`, a
robust bundle adjustment) and the recording's cameras are replaced by the refined ones. On the shared recording this
halves the views' disagreement (each view against the others' triangulation: 31-73 -> 21-34 px median, also on
frames left out of the refinement) and keeps 3.0 instead of 2.4 views per joint of the better-seen person;
docs/real_footage_gap.md has the numbers.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.evaluation.calibration import CameraCalibration, load_calibration
from pipeline.evaluation.refine import RefineConfig, refine_extrinsics
from pipeline.evaluation.scores import (
    LIMB_JOINTS,
    acceleration,
    aligned_joint_errors,
    bone_length_cv,
    joint_errors,
    limb_length_ratios,
    root_relative,
)
from pipeline.evaluation.triangulation import (
    Triangulation,
    TriangulationConfig,
    resolve_swaps,
    smooth_points,
    triangulate,
)
from pipeline.geometry import camera_to_world
from pipeline.motion.bones import rigid_bones
from pipeline.motion.ground import lowest_ankle
from pipeline.motion.level import Levelling
from pipeline.pose2d import Pose2DConfig, Pose2DEstimator
from pipeline.skeleton import COCO, H36M

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
CALIBRATION_PATTERNS = ("*.qca.txt", "Calib*.toml", "calib*.toml", "calibration/*.qca.txt", "calibration/Calib*.toml")
# bump when the cached arrays or the 2D stage's meaning change (2: frames read as demo.py reads; 3: the view's turn)
CACHE_VERSION = 3


def default_cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "poseformerv2-demo" / "multiview"


@dataclass
class MultiviewConfig:
    pose2d: Pose2DConfig = field(default_factory=lambda: Pose2DConfig(all_people=True))
    triangulation: TriangulationConfig = field(default_factory=TriangulationConfig)
    match_max_px: float = 25.0  # largest median two-view reprojection error of one person's tracks
    min_match_points: int = 30  # (frame, joint) pairs two tracks must share to be compared
    min_person_views: int = 3  # people seen by fewer views are not triangulated (capped at the number of views)
    smoothing_hz: float | None = None  # denoise the reference along time (triangulation.smooth_points); None: raw
    bones: str = "rigid"  # the lifter's poses made rigid as demo.py does (pipeline.motion.bones), or "free"
    # Score only reference joints triangulated from this many views or more (0: every joint). A joint seen by two
    # views has no third to outvote a wrong detection; with 3 the scores track the lifter, not the reference's noise.
    min_joint_views: int = 0
    # Lift through a virtual camera aimed at the person as demo.py does (pipeline.virtual_camera), with demo.py's
    # focal length for a video without metadata (its default), not the calibrated one: scores as demo.py's output.
    virtual_camera: bool = True
    # With the virtual camera, turn it about its axis to stand up a person far from upright in the picture, as demo.py
    # does (pipeline.virtual_camera.lift_upright); False: as demo.py --no-upright.
    upright: bool = True
    refine_extrinsics: bool = True  # bundle-adjust the cameras' poses on the matched people before triangulating
    refine: RefineConfig = field(default_factory=RefineConfig)
    cache_dir: Path | None = field(default_factory=default_cache_dir)  # None: no cache
    # Lifters after the first are compared with it by a bootstrap over stretches of this many seconds of each
    # person's time (compare_lifters). On the shared recording the per-frame difference between two lifters
    # decorrelates within 10 frames at 60 fps (autocorrelation 0.8 at lag 1, 0.5 at 3, 0.15 at 6, about 0 from 10).
    comparison_block_s: float = 0.25


@dataclass
class Recording:
    directory: Path
    videos: list[Path]  # one per camera, in calibration order
    cameras: list[CameraCalibration]  # refined in place by `reconstruct` when asked
    refinement: dict | None = None  # the report of that refinement (refine.refinement_report); None: as calibrated

    @property
    def names(self) -> list[str]:
        return [cam.name for cam in self.cameras]


@dataclass
class ViewTracks:
    """The 2D stage's output for one view: every person it followed (P people, T frames)."""

    name: str
    image_size: tuple[int, int]  # (width, height)
    fps: float
    track_ids: np.ndarray  # (P,)
    keypoints_coco: np.ndarray  # (P, T, 17, 2) pixels, COCO-17
    scores_coco: np.ndarray  # (P, T, 17), 0 where not detected
    keypoints: np.ndarray  # (P, T, 17, 2) pixels, Human3.6M-17 (the lifter's input)
    scores: np.ndarray  # (P, T, 17)
    valid: np.ndarray  # (P, T) bool: detected in this frame
    # The quarter turn (clockwise degrees) that stands the stored picture's people up (pipeline.orientation), and
    # whether it was given (Pose2DConfig.turn) rather than found: lifted and levelled as demo.py does with it.
    turn: int = 0
    turn_given: bool = False

    @property
    def num_frames(self) -> int:
        return self.valid.shape[1]


@dataclass
class TriangulatedPerson:
    tracks: dict[int, int]  # view index -> row of that view's ViewTracks
    h36m: Triangulation  # points (T, 17, 3) world metres, from the H36M-17 keypoints of every view
    coco: Triangulation  # points (T, 17, 3), from the detector's own COCO-17 keypoints
    reference: np.ndarray  # (T, 17, 3) the H36M-17 points lifters are scored against (h36m, smoothed if asked)
    # (V, T, 6) the H36M-17 left/right pairs (H36M.left[k], H36M.right[k]) un-swapped per view and frame
    # (triangulation.resolve_swaps); all False when swaps are kept
    swapped: np.ndarray | None = None

    @property
    def complete(self) -> np.ndarray:
        """(T,) frames where every Human3.6M joint of the reference is known."""
        return np.isfinite(self.reference).all(axis=(1, 2))


def _match_video(camera: str, videos: list[Path]) -> Path | None:
    exact = [v for v in videos if v.stem.lower() == camera.lower()]
    if exact:
        return exact[0]
    containing = [v for v in videos if camera.lower() in v.stem.lower()]
    return containing[0] if len(containing) == 1 else None


def find_recording(directory: str | Path, calibration: str | Path | None = None) -> Recording:
    """The videos of `directory` matched to the cameras of its calibration (a video's name holds its camera's)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"recording folder not found: {directory}")
    if calibration is None:
        found = sorted({p for pattern in CALIBRATION_PATTERNS for p in directory.glob(pattern)})
        if len(found) != 1:
            what = "no calibration file" if not found else f"{len(found)} calibration files"
            raise ValueError(f"{directory}: {what} (*.qca.txt or Calib*.toml); name one with --calibration")
        calibration = found[0]
    cameras = load_calibration(calibration)
    videos = sorted(p for p in directory.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    matched = [(cam, _match_video(cam.name, videos)) for cam in cameras]
    pairs = [(cam, video) for cam, video in matched if video is not None]
    if len(pairs) < 2:
        raise ValueError(f"{directory}: fewer than 2 videos match the cameras {[c.name for c in cameras]} of "
                         f"{Path(calibration).name}; name each video after its camera (e.g. cam01.mp4)")
    unused = sorted(set(videos) - {video for _, video in pairs})
    if unused:
        logger.warning("videos without a camera in the calibration are ignored: %s", ", ".join(v.name for v in unused))
    return Recording(directory=directory, videos=[v for _, v in pairs], cameras=[c for c, _ in pairs])


def _cache_key(video: Path, config: Pose2DConfig) -> str:
    settings = dataclasses.asdict(config)
    for key in ("device", "batch_size"):  # how the work is done, not what comes out
        settings.pop(key, None)
    digest = hashlib.sha256(video.read_bytes()).hexdigest()
    text = json.dumps({"video": digest, "settings": settings, "version": CACHE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _view_from_output(name: str, output, fps: float) -> ViewTracks:
    people = output.people
    t = output.num_frames

    def stack(attr: str, shape: tuple[int, ...]) -> np.ndarray:
        if not people:
            return np.zeros((0, t) + shape, np.float32)
        return np.stack([getattr(p, attr) for p in people]).astype(np.float32)

    return ViewTracks(name=name, image_size=tuple(output.image_size), fps=fps,
                      track_ids=np.array([p.track_id for p in people], np.int64),
                      keypoints_coco=stack("keypoints_coco", (17, 2)), scores_coco=stack("scores_coco", (17,)),
                      keypoints=stack("keypoints", (17, 2)), scores=stack("scores", (17,)),
                      valid=stack("valid", ()).astype(bool), turn=int(output.turn),
                      turn_given=bool(output.turn_given))


def detect_views(recording: Recording, config: MultiviewConfig | None = None) -> list[ViewTracks]:
    """The 2D stage on every view (all people), read from the cache when the video and settings are unchanged."""
    from pipeline.media.decode import VideoFrames
    from pipeline.media.ffmpeg import probe

    config = config or MultiviewConfig()
    estimator: Pose2DEstimator | None = None
    views = []
    for cam, video in zip(recording.cameras, recording.videos, strict=True):
        info = probe(video)
        cache = None
        if config.cache_dir is not None:
            cache = Path(config.cache_dir) / f"{video.stem}-{_cache_key(video, config.pose2d)}.npz"
        if cache is not None and cache.is_file():
            views.append(_load_view(cache))
            logger.info("%s: 2D keypoints from the cache %s", cam.name, cache)
            continue
        estimator = estimator or Pose2DEstimator(config.pose2d)
        output = estimator.run(VideoFrames(video, info=info), fps=info.fps)  # read as demo.py reads a clip
        view = _view_from_output(cam.name, output, info.fps)
        if cache is not None:
            _save_view(cache, view)
        views.append(view)
    _check_views(recording, views)
    return views


def _check_views(recording: Recording, views: list[ViewTracks]) -> None:
    counts = {v.name: v.num_frames for v in views}
    if len(set(counts.values())) > 1:
        raise ValueError(f"the views have different frame counts {counts}: the recording must be synchronised "
                         "frame by frame (cut the videos to the same frames)")
    rates = {v.name: round(v.fps, 3) for v in views}
    if len(set(rates.values())) > 1:
        raise ValueError(f"the views have different frame rates {rates}: they must be recorded at one rate")
    for cam, view in zip(recording.cameras, views, strict=True):
        if tuple(view.image_size) != tuple(cam.image_size):
            raise ValueError(f"{cam.name}: the video is {view.image_size[0]}x{view.image_size[1]} but the "
                             f"calibration is for {cam.image_size[0]}x{cam.image_size[1]}; use the calibration of "
                             "this picture size (upright, as decoded)")


def _save_view(path: Path, view: ViewTracks) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez_compressed(tmp, name=view.name, image_size=np.array(view.image_size), fps=view.fps,
                        track_ids=view.track_ids, keypoints_coco=view.keypoints_coco, scores_coco=view.scores_coco,
                        keypoints=view.keypoints, scores=view.scores, valid=view.valid,
                        turn=view.turn, turn_given=view.turn_given)
    tmp.replace(path)


def _load_view(path: Path) -> ViewTracks:
    with np.load(path) as z:
        return ViewTracks(name=str(z["name"]), image_size=(int(z["image_size"][0]), int(z["image_size"][1])),
                          fps=float(z["fps"]), track_ids=z["track_ids"], keypoints_coco=z["keypoints_coco"],
                          scores_coco=z["scores_coco"], keypoints=z["keypoints"], scores=z["scores"],
                          valid=z["valid"], turn=int(z["turn"]), turn_given=bool(z["turn_given"]))


def _usable_scores(view: ViewTracks, row: int, coco: bool = True) -> np.ndarray:
    scores = view.scores_coco[row] if coco else view.scores[row]
    return np.where(view.valid[row][:, None], scores, 0.0)


def pair_cost(cameras: list[CameraCalibration], views: list[ViewTracks], a: tuple[int, int], b: tuple[int, int],
              config: MultiviewConfig) -> float:
    """Median two-view reprojection error (px) of the COCO keypoints of track a=(view, row) and b: inf when they
    share fewer than `min_match_points` confidently detected (frame, joint) pairs."""
    (va, ra), (vb, rb) = a, b
    min_score = config.triangulation.min_score
    sa, sb = _usable_scores(views[va], ra), _usable_scores(views[vb], rb)
    both = (sa >= min_score) & (sb >= min_score)
    if both.sum() < config.min_match_points:
        return float("inf")
    keypoints = np.stack([views[va].keypoints_coco[ra], views[vb].keypoints_coco[rb]])
    tri = triangulate([cameras[va], cameras[vb]], keypoints, np.stack([both, both]).astype(np.float64),
                      dataclasses.replace(config.triangulation, min_score=0.5))
    errors = np.nan_to_num(tri.reprojection_px.mean(axis=0), nan=1e6)
    return float(np.median(errors[both]))


def associate(cameras: list[CameraCalibration], views: list[ViewTracks],
              config: MultiviewConfig | None = None) -> list[dict[int, int]]:
    """Group the views' tracks into people: one {view index: track row} per person, most views first."""
    config = config or MultiviewConfig()
    costs: dict[tuple, float] = {}

    def cost(a: tuple[int, int], b: tuple[int, int]) -> float:
        key = (a, b) if a < b else (b, a)
        if key not in costs:
            costs[key] = pair_cost(cameras, views, key[0], key[1], config)
        return costs[key]

    people: list[dict[int, int]] = []
    for v in sorted(range(len(views)), key=lambda i: (-len(views[i].track_ids), i)):
        candidates = sorted(
            (float(np.median([cost((v, row), (u, r)) for u, r in person.items()])), p, row)
            for p, person in enumerate(people) for row in range(len(views[v].track_ids)))
        taken_people: set[int] = set()
        taken_rows: set[int] = set()
        for c, p, row in candidates:
            if c <= config.match_max_px and p not in taken_people and row not in taken_rows:
                people[p][v] = row
                taken_people.add(p)
                taken_rows.add(row)
                logger.info("%s track %d joins person %d (median reprojection %.1f px)", views[v].name,
                            views[v].track_ids[row], p, c)
        people += [{v: row} for row in range(len(views[v].track_ids)) if row not in taken_rows]
    needed = min(config.min_person_views, len(views))
    kept = [p for p in people if len(p) >= needed]
    kept.sort(key=lambda p: (-len(p), -sum(views[v].valid[r].sum() for v, r in p.items())))
    return kept


def _person_keypoints(views: list[ViewTracks], tracks: dict[int, int], coco: bool) -> tuple[np.ndarray, np.ndarray]:
    """One person's keypoints (V, T, 17, 2) and usable scores (V, T, 17) in every view; NaN / 0 where unseen."""
    t = views[0].num_frames
    keypoints = np.full((len(views), t, 17, 2), np.nan)
    scores = np.zeros((len(views), t, 17))
    for v, row in tracks.items():
        keypoints[v] = views[v].keypoints_coco[row] if coco else views[v].keypoints[row]
        scores[v] = _usable_scores(views[v], row, coco=coco)
    return keypoints, scores


def person_keypoints(cameras: list[CameraCalibration], views: list[ViewTracks], tracks: dict[int, int], coco: bool,
                     config: TriangulationConfig | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_person_keypoints`, with the left/right pairs a view has the wrong way round un-swapped when
    `config.fix_swaps` (triangulation.resolve_swaps), and which were: swapped (V, T, pairs of the skeleton)."""
    config = config or TriangulationConfig()
    skeleton = COCO if coco else H36M
    keypoints, scores = _person_keypoints(views, tracks, coco)
    if not config.fix_swaps:
        return keypoints, scores, np.zeros(keypoints.shape[:2] + (len(skeleton.left),), bool)
    return resolve_swaps(cameras, keypoints, scores, list(zip(skeleton.left, skeleton.right, strict=True)), config)


def triangulate_person(cameras: list[CameraCalibration], views: list[ViewTracks], tracks: dict[int, int],
                       config: TriangulationConfig | None = None,
                       smoothing_hz: float | None = None) -> TriangulatedPerson:
    """Triangulate one person's H36M-17 and COCO-17 keypoints from the views that see them."""
    out, swapped = {}, {}
    for coco in (False, True):
        keypoints, scores, swapped[coco] = person_keypoints(cameras, views, tracks, coco, config)
        out[coco] = triangulate(cameras, keypoints, scores, config)
    reference = out[False].points
    if smoothing_hz is not None:
        reference = smooth_points(reference, views[0].fps, smoothing_hz)
    return TriangulatedPerson(tracks=dict(tracks), h36m=out[False], coco=out[True], reference=reference,
                              swapped=swapped[False])


def reconstruct(recording: Recording, config: MultiviewConfig | None = None
                ) -> tuple[list[ViewTracks], list[TriangulatedPerson]]:
    """2D stage on every view (cached), association and triangulation of every person seen by enough views.

    With `config.refine_extrinsics` the cameras are refined on the matched people first, and `recording.cameras`
    and `recording.refinement` are replaced by the refined cameras and the refinement's report, so that everything
    scored afterwards (`evaluate_lifter`, the gap report) uses the same calibration as the reference.
    """
    config = config or MultiviewConfig()
    views = detect_views(recording, config)
    groups = associate(recording.cameras, views, config)
    if not groups:
        raise ValueError(f"{recording.directory}: no person is seen by {config.min_person_views} views or more; "
                         "check that the videos and the calibration belong together")
    if config.refine_extrinsics:
        try:
            recording.cameras, recording.refinement = refine_extrinsics(recording.cameras, views, groups,
                                                                        config.refine)
        except ValueError as exc:  # e.g. too few confident points seen by several views
            raise ValueError(f"{exc}; to use the calibration as read, turn the refinement off "
                             "(--no-refine-extrinsics)") from None
    people = [triangulate_person(recording.cameras, views, g, config.triangulation, config.smoothing_hz)
              for g in groups]
    for i, person in enumerate(people):
        logger.info("person %d: views %s, %d complete frames, reprojection %.2f px (COCO) / %.2f px (H36M)", i,
                    [views[v].name for v in person.tracks], person.complete.sum(),
                    person.coco.mean_reprojection_px(), person.h36m.mean_reprojection_px())
    return views, people


# ----------------------------------------------------------------------------------------------------------------------
# Scoring lifters against the triangulation

MEAN_KEYS = ("p_mpjpe_limbs", "p_mpjpe", "mpjpe", "bone_cv", "jitter", "constant_p_mpjpe_limbs", "constant_p_mpjpe")
# The error means are pooled over the joints they were taken on (fewer than frames x joints with trusted joints).
MEAN_COUNTS = {"p_mpjpe_limbs": "scored_limb_joints", "constant_p_mpjpe_limbs": "scored_limb_joints",
               "p_mpjpe": "scored_joints", "constant_p_mpjpe": "scored_joints", "mpjpe": "scored_joints"}


def sequence_scores(predicted: np.ndarray, target: np.ndarray, constant: np.ndarray, fps: float,
                    frames: np.ndarray, trusted: np.ndarray | None = None) -> dict:
    """Scores of one lifted sequence. predicted/target (N, 17, 3) root-relative camera space (metres) at the frame
    numbers `frames`; constant (17, 3) the baseline pose held still; trusted (N, 17): the target joints to score
    (None: all; see `aligned_joint_errors`)."""
    errors = aligned_joint_errors(predicted, target, trusted)
    baseline = aligned_joint_errors(np.broadcast_to(constant, target.shape), target, trusted)
    scored = np.isfinite(errors)
    limbs = list(LIMB_JOINTS)
    frame_limb_joints = scored[:, limbs].sum(axis=1)
    frame_limb_errors = np.nansum(errors[:, limbs], axis=1) / np.maximum(frame_limb_joints, 1)
    ratios = limb_length_ratios(predicted)
    accel = acceleration(predicted, fps, frames)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a joint never trusted: its mean is NaN
        return {
            "frames": int(len(frames)),
            "scored_joints": int(scored.sum()),
            "scored_limb_joints": int(scored[:, limbs].sum()),
            "p_mpjpe_limbs": float(np.nanmean(errors[:, limbs])),
            "p_mpjpe": float(np.nanmean(errors)),
            "mpjpe": float(np.nanmean(joint_errors(predicted, target, scored))),
            "bone_cv": bone_length_cv(predicted),
            "lr_ratio": max(ratios.values()),
            "lr_ratios": ratios,
            "jitter": float(accel.mean()) if accel.size else float("nan"),
            "constant_p_mpjpe_limbs": float(np.nanmean(baseline[:, limbs])),
            "constant_p_mpjpe": float(np.nanmean(baseline)),
            "per_joint_p_mpjpe": np.nanmean(errors, axis=0).tolist(),
            "per_joint_scored": scored.sum(axis=0).tolist(),
            # per scored frame, for comparing lifters frame by frame (compare_lifters)
            "frame_numbers": frames.tolist(),
            "frame_limb_joints": frame_limb_joints.tolist(),
            "frame_p_mpjpe_limbs": frame_limb_errors.tolist(),  # 0 where no limb joint was scored
        }


def combine(rows: list[dict]) -> dict:
    """Pool sequences: means weighted by frames (errors: by the joints scored), the worst (largest) left/right
    ratio."""
    if not rows:
        return {"frames": 0}
    out: dict = {"frames": int(sum(r["frames"] for r in rows))}
    for key in ("scored_joints", "scored_limb_joints"):
        out[key] = int(sum(r[key] for r in rows))
    for key in MEAN_KEYS:
        values = np.array([r[key] for r in rows])
        weights = np.array([r[MEAN_COUNTS.get(key, "frames")] for r in rows], np.float64)
        ok = np.isfinite(values) & (weights > 0)
        out[key] = float(np.average(values[ok], weights=weights[ok])) if ok.any() else float("nan")
    out["lr_ratio"] = max(r["lr_ratio"] for r in rows)
    out["lr_ratios"] = {limb: max(r["lr_ratios"][limb] for r in rows) for limb in rows[0]["lr_ratios"]}
    per_joint = np.array([r["per_joint_p_mpjpe"] for r in rows], np.float64)
    counts = np.array([r["per_joint_scored"] for r in rows], np.float64)
    counts = np.where(np.isfinite(per_joint), counts, 0.0)
    total = counts.sum(axis=0)
    pooled = np.where(total > 0, (np.nan_to_num(per_joint) * counts).sum(axis=0) / np.maximum(total, 1), np.nan)
    out["per_joint_p_mpjpe"] = pooled.tolist()
    out["per_joint_scored"] = total.astype(int).tolist()
    return out


def compare_lifters(baseline: dict, other: dict, fps: float, block_s: float = 0.25, rounds: int = 4000,
                    seed: int = 0) -> dict:
    """How much `other` is better or worse than `baseline` on limb P-MPJPE (other minus baseline, metres), with a
    95 % interval. Both are `evaluate_lifter` (or `evaluate_outputs`) results on the same recording and settings:
    every frame both scored in a view gives a paired difference on the same joints; sequences and frames only one
    of them scored are left out. Errors of nearby frames, and of one moment seen from
    several views, go together (one reference, one motion), so resampling frames would make the interval far too
    narrow: the bootstrap resamples whole stretches of `block_s` seconds of one person's time, with every view of
    them, and each person keeps their number of stretches (the people are fixed, the moments are a sample). On a short
    recording the interval is wide, and that is the point: it says which differences the recording can show."""
    block = max(1, round(block_s * fps))
    units: dict[tuple[int, int], np.ndarray] = {}  # (person, stretch) -> [sum of joint differences, joints]
    others = {(s["view"], s["person"]): s for s in other["sequences"]}
    pairs = [(a, others[(a["view"], a["person"])]) for a in baseline["sequences"] if (a["view"], a["person"]) in others]
    for a, b in pairs:
        rows = {f: i for i, f in enumerate(b["frame_numbers"])}
        for i, frame in enumerate(a["frame_numbers"]):
            j = rows.get(frame)
            if j is None:
                continue
            joints = a["frame_limb_joints"][i]
            if joints != b["frame_limb_joints"][j]:
                raise ValueError(f"the two lifters scored different joints of {a['view']} at frame {frame}: they "
                                 "were scored against different references or settings")
            unit = units.setdefault((a["person"], frame // block), np.zeros(2))
            unit += ((b["frame_p_mpjpe_limbs"][j] - a["frame_p_mpjpe_limbs"][i]) * joints, joints)
    if not units or np.sum(list(units.values()), axis=0)[1] == 0:
        raise ValueError("the two lifters have no scored limb joint in common; nothing to compare")
    total = np.sum(list(units.values()), axis=0)
    rng = np.random.default_rng(seed)
    sums = np.zeros((rounds, 2))
    for person in sorted({p for p, _ in units}):
        stretches = np.array([u for (p, _), u in units.items() if p == person])  # (k, 2)
        sums += stretches[rng.integers(0, len(stretches), (rounds, len(stretches)))].sum(axis=1)
    resampled = sums[:, 0] / np.maximum(sums[:, 1], 1)
    low, high = np.percentile(resampled, [2.5, 97.5])
    return {"p_mpjpe_limbs_difference": float(total[0] / total[1]), "interval_95": [float(low), float(high)],
            "block_frames": block, "stretches": len(units), "sequences": len(pairs)}


def _scored_frames(person: TriangulatedPerson, view: ViewTracks, row: int) -> np.ndarray:
    return np.flatnonzero(person.complete & view.valid[row])


def split_view_agreement(cameras: list[CameraCalibration], views: list[ViewTracks], person: TriangulatedPerson,
                         config: TriangulationConfig | None = None) -> dict | None:
    """How far the reference is from itself: the person's views are split into two disjoint halves of two or more
    views, each half triangulated on its own, and the two scored against each other as a lifter is scored (P-MPJPE
    after per-frame Procrustes, metres, pooled over every way of splitting). References from different cameras err
    about independently, so this is the scale of the reference's own noise in the lifter's units (for independent
    errors of equal size, each half is off by about 1/sqrt(2) of it). The full reference is less noisy than either
    half (more views, and a third view to outvote a wrong detection), but every lifter's score includes its noise:
    a large value says the recording cannot tell good lifters apart on that person. None when fewer than 4 views
    see the person."""
    seen = sorted(person.tracks)
    if len(seen) < 4:
        return None
    keypoints, scores, _ = person_keypoints(cameras, views, person.tracks, False, config)  # swaps decided by all views
    first, rest = seen[0], seen[1:]
    splits = [((first, *others), tuple(v for v in rest if v not in others))
              for size in range(1, len(rest) - 1) for others in itertools.combinations(rest, size)]
    limbs, joints = [], []
    for halves in splits:
        points = []
        for half in halves:
            half_scores = np.where(np.isin(np.arange(len(views)), half)[:, None, None], scores, 0.0)
            points.append(triangulate(cameras, keypoints, half_scores, config).points)
        known = np.isfinite(points[0]).all(-1) & np.isfinite(points[1]).all(-1)  # (T, 17)
        frames = np.flatnonzero(known[:, 0])  # the pelvis, which both halves are made relative to
        a, b = (np.nan_to_num(root_relative(np.where(known[..., None], x, np.nan)[frames])) for x in points)
        errors = aligned_joint_errors(a, b, known[frames])
        limbs.append(errors[:, list(LIMB_JOINTS)])
        joints.append(errors)
    return {"splits": [[[views[v].name for v in half] for half in halves] for halves in splits],
            "p_mpjpe_limbs": float(np.nanmean(np.concatenate(limbs))),
            "p_mpjpe": float(np.nanmean(np.concatenate(joints)))}


def reference_scores(person: TriangulatedPerson, views: list[ViewTracks], fps: float,
                     cameras: list[CameraCalibration] | None = None, config: TriangulationConfig | None = None) -> dict:
    """How good the triangulated reference itself is: reprojection per view, bone-length variation, symmetry,
    jitter (root-relative, the lifter's frame of reference), and with `cameras` the agreement of references from
    disjoint halves of the views (`split_view_agreement`)."""
    frames = np.flatnonzero(person.complete)
    poses = root_relative(person.reference[frames])
    ratios = limb_length_ratios(poses)
    accel = acceleration(poses, fps, frames)
    return {
        "split_views": None if cameras is None else split_view_agreement(cameras, views, person, config),
        "views": [views[v].name for v in person.tracks],
        "frames": int(len(frames)),
        "reprojection_px_coco": person.coco.mean_reprojection_px(),
        "reprojection_px_h36m": person.h36m.mean_reprojection_px(),
        "reprojection_px_coco_per_view": {views[v].name: person.coco.mean_reprojection_px(v) for v in person.tracks},
        "views_per_joint": float(person.h36m.num_views[frames].mean()),
        # left/right pairs (of frames x 6 H36M pairs) each view had the wrong way round, un-swapped
        "swapped_pairs_per_view": ({views[v].name: int(person.swapped[v].sum()) for v in person.tracks}
                                   if person.swapped is not None else None),
        "bone_cv": bone_length_cv(poses),
        "lr_ratio": max(ratios.values()),
        "lr_ratios": ratios,
        "jitter": float(accel.mean()) if accel.size else float("nan"),
    }


def _check_min_joint_views(min_joint_views: int, views: list[ViewTracks]) -> None:
    if not 0 <= min_joint_views <= len(views):
        raise ValueError(f"the minimum number of views per scored joint must be between 0 and the recording's "
                         f"{len(views)} views, got {min_joint_views}")


def evaluate_lifter(lifter, recording: Recording, views: list[ViewTracks], people: list[TriangulatedPerson],
                    bones: str = "rigid", min_joint_views: int = 0, virtual_camera: bool = True,
                    upright: bool = True) -> dict:
    """Lift every person in every view that sees them and score it: per view, per person and overall. bones="rigid"
    fits one length per bone to each view's sequence, on the frames that view detected the person (as demo.py).
    min_joint_views > 0 scores only the reference joints triangulated from that many views or more. virtual_camera:
    lift through a camera aimed at the person, with demo.py's default focal length (pipeline.virtual_camera), and
    (upright) turned about its axis for a person far from upright in the picture."""
    from pipeline.lifting import window_strides
    from pipeline.motion.trajectory import focal_length_px
    from pipeline.orientation import lift_turned

    _check_min_joint_views(min_joint_views, views)
    fps = views[0].fps
    stride = window_strides(fps)  # as demo.py lifts a clip of this frame rate
    sequences = []
    for p, person in enumerate(people):
        complete = np.flatnonzero(person.complete)
        mean_pose = root_relative(person.reference[complete]).mean(axis=0)
        for v, row in person.tracks.items():
            frames = _scored_frames(person, views[v], row)
            if len(frames) < 3:
                continue
            cam = recording.cameras[v]
            detected = np.flatnonzero(views[v].valid[row])
            focal = focal_length_px(*views[v].image_size) if virtual_camera else None  # the diagonal: any turn
            predicted = lift_turned(lifter, views[v].keypoints[row], views[v].image_size, views[v].turn, focal,
                                    frames=detected, upright=upright, stride=stride)
            if bones == "rigid":
                predicted = rigid_bones(predicted, frames=detected)
            predicted = predicted[frames]
            target = root_relative(cam.to_camera(person.reference[frames]))
            constant = mean_pose @ cam.R.T
            trusted = person.h36m.num_views[frames] >= min_joint_views if min_joint_views > 0 else None
            scores = sequence_scores(predicted, target, constant, fps, frames, trusted)
            sequences.append({"view": views[v].name, "person": p, **scores})
    if not sequences:
        raise ValueError("no view has 3 or more frames with its person detected and triangulated; nothing to score")
    return _pooled(sequences, views, len(people))


def vertical_error_deg(up_camera: np.ndarray, camera: CameraCalibration) -> float:
    """Degrees between an up direction in a camera's frame and the room's calibrated up (world z) in it."""
    truth = camera.R @ np.array([0.0, 0.0, 1.0])
    up = np.asarray(up_camera, np.float64) / np.linalg.norm(up_camera)
    return float(np.degrees(np.arccos(np.clip(up @ truth, -1.0, 1.0))))


def view_levellings(lifter, views: list[ViewTracks], people: list[TriangulatedPerson]) -> dict[str, Levelling]:
    """Each view's levelled world view (`pipeline.motion.level.level_world`) from the triangulated people it sees,
    lifted as demo.py lifts them (virtual camera, window stride, rigid bones). demo.py levels with everyone it
    follows; people too few views saw to be triangulated (a bystander) are left out here, and a subset of `people`
    shows what each gives alone. Views that see none of them are left out."""
    from pipeline.lifting import window_strides
    from pipeline.motion.level import level_world
    from pipeline.motion.trajectory import focal_length_px
    from pipeline.orientation import lift_turned

    levellings = {}
    for v, view in enumerate(views):
        rows = [person.tracks[v] for person in people if v in person.tracks]
        if not rows:
            continue
        poses = []
        for row in rows:
            detected = np.flatnonzero(view.valid[row])
            lifted = lift_turned(lifter, view.keypoints[row], view.image_size, view.turn,
                                 focal_length_px(*view.image_size), frames=detected, stride=window_strides(view.fps))
            poses.append(rigid_bones(lifted, frames=detected))
        levellings[view.name] = level_world(np.stack(poses), view.valid[rows], view.scores[rows],
                                            picture_turn=view.turn if view.turn_given else 0)
    return levellings


def levelling_errors(lifter, recording: Recording, views: list[ViewTracks],
                     people: list[TriangulatedPerson]) -> dict[str, dict]:
    """How far each camera's world view stands from the calibrated vertical (`view_levellings`), against the
    demo's fixed rotation. Per view: {"fixed": degrees, "levelled": degrees, "was_levelled": False when level_world
    kept the fixed rotation}. A lifter that holds people's trunks at the wrong angle to the camera tilts the world
    view."""
    from pipeline.motion.level import fixed_up_camera

    cameras = {view.name: recording.cameras[v] for v, view in enumerate(views)}
    return {name: {"fixed": vertical_error_deg(fixed_up_camera(), cameras[name]),
                   "levelled": vertical_error_deg(levelling.up_camera, cameras[name]),
                   "was_levelled": levelling.levelled}
            for name, levelling in view_levellings(lifter, views, people).items()}


def _pooled(sequences: list[dict], views: list[ViewTracks], num_people: int) -> dict:
    return {
        "views": {v.name: combine([s for s in sequences if s["view"] == v.name]) for v in views},
        "people": [combine([s for s in sequences if s["person"] == p]) for p in range(num_people)],
        "overall": combine(sequences),
        "sequences": sequences,
    }


def _matching_output(outputs: list[dict], view: ViewTracks, row: int) -> dict | None:
    """The output person whose COCO keypoints follow the view's track: median distance over the frames both have
    below 10 % of the track's median height (the same person from another 2D backend is a few percent off; another
    person is a body away)."""
    track, valid = view.keypoints_coco[row], view.valid[row]
    height = np.median(np.ptp(track[valid][..., 1], axis=-1))
    best, best_distance = None, np.inf
    for output in outputs:
        rows = {int(f): i for i, f in enumerate(output["frame_index"])}
        frames = [f for f in np.flatnonzero(valid) if f in rows]
        if not frames:
            continue
        ours = output["keypoints_2d_coco"][[rows[f] for f in frames]]
        distance = float(np.median(np.linalg.norm(ours - track[frames], axis=-1)))
        if distance < best_distance:
            best, best_distance = output, distance
    return best if best_distance < 0.1 * height else None


# The arrays of demo.py's keypoints.npz that evaluate_outputs reads.
OUTPUT_ARRAYS = ("frame_index", "valid", "keypoints_2d_coco", "pose3d_camera", "checkpoints")


def read_outputs(directory: str | Path, recording: Recording) -> list[list[dict]]:
    """demo.py's results for each view of the recording, as `demo.py --video <recording> --all-people --out DIR`
    writes them: DIR/<video name>/keypoints.npz and keypoints_person<ID>.npz. Per view, one dict per person."""
    directory = Path(directory)
    per_view = []
    for video in recording.videos:
        files = sorted((directory / video.stem).glob("keypoints*.npz"))
        outputs = []
        for file in files:
            with np.load(file, allow_pickle=False) as data:
                missing = [key for key in OUTPUT_ARRAYS if key not in data.files]
                if missing:
                    raise ValueError(f"{file} is not a keypoints.npz of this demo.py (it lacks {', '.join(missing)}); "
                                     "run demo.py again")
                outputs.append({key: data[key] for key in OUTPUT_ARRAYS})
        per_view.append(outputs)
    if not any(per_view):
        raise ValueError(f"no demo.py output in {directory}: expected {directory}/<video name>/keypoints.npz, as "
                         f"`demo.py --video {recording.directory} --all-people --out {directory}` writes")
    return per_view


def feet_heights(output: dict) -> np.ndarray:
    """The lower ankle's height above the ground (m) in each detected frame of one person of demo.py's
    keypoints.npz (a dict of its arrays; the first checkpoint's poses): the camera-space pose turned into the world
    view by the file's `camera_to_world`, lifted by its `trajectory_world`. Near 0 for someone standing on the floor
    the world view found; how far off it is shows how wrong the person's size and distance are."""
    world = camera_to_world(output["pose3d_camera"][0], output["camera_to_world"])
    heights = lowest_ankle(world) + output["trajectory_world"][0, :, 2]
    return heights[np.asarray(output["valid"], dtype=bool)]


def placement_spread(outputs: list[dict], recording: Recording, views: list[ViewTracks],
                     people: list[TriangulatedPerson], view: int = 0) -> float:
    """How far demo.py's outputs of view `view` (its keypoints.npz files as dicts, `--all-people`) get the people's
    distances from the camera relative to each other: each person's median ratio of the output's root distance to
    the triangulation's, and the spread (max - min) of their logs; 0 when every person is placed at the right
    relative distance, whatever the common scale. For two people, |log| of one ratio over the other."""
    camera, logs = recording.cameras[view], []
    for p, person in enumerate(people):
        if view not in person.tracks:
            continue
        match = _matching_output(outputs, views[view], person.tracks[view])
        if match is None:
            raise ValueError(f"no output follows person {p} in {views[view].name}")
        truth = person.h36m.points[:, 0] @ camera.R.T + camera.t
        ok = np.isfinite(truth).all(axis=1) & np.asarray(match["valid"], dtype=bool)
        logs.append(np.log(np.median(np.linalg.norm(match["trajectory_camera"][0][ok], axis=1)
                                     / np.linalg.norm(truth[ok], axis=1))))
    if len(logs) < 2:
        raise ValueError(f"{views[view].name} sees fewer than two triangulated people: no relative placement to score")
    return float(max(logs) - min(logs))


def evaluate_outputs(outputs: list[list[dict]], recording: Recording, views: list[ViewTracks],
                     people: list[TriangulatedPerson], min_joint_views: int = 0) -> dict[str, dict]:
    """Score demo.py's own results (`read_outputs`) instead of lifting here, so that anything demo.py can run is
    measured as it ran: another 2D backend or detector, any lifter, `--bones free`, `--no-virtual-camera`. Each
    reference person is matched in each view to the output person that follows the same track
    (`_matching_output`) and scored on the frames both have. One result per checkpoint in the outputs, as
    `evaluate_lifter` gives."""
    _check_min_joint_views(min_joint_views, views)
    fps = views[0].fps
    sequences: dict[str, list[dict]] = {}
    for p, person in enumerate(people):
        complete = np.flatnonzero(person.complete)
        mean_pose = root_relative(person.reference[complete]).mean(axis=0)
        for v, row in person.tracks.items():
            output = _matching_output(outputs[v], views[v], row)
            if output is None:
                logger.warning("%s: no demo.py output follows person %d; that view of them is not scored",
                               recording.videos[v].stem, p)
                continue
            # the frames demo.py detected the person on (not those it filled) that the evaluation scores
            rows = {int(f): i for i, f in enumerate(output["frame_index"]) if output["valid"][i]}
            frames = np.array([f for f in _scored_frames(person, views[v], row) if f in rows], dtype=np.int64)
            if len(frames) < 3:
                continue
            cam = recording.cameras[v]
            target = root_relative(cam.to_camera(person.reference[frames]))
            trusted = person.h36m.num_views[frames] >= min_joint_views if min_joint_views > 0 else None
            for k, checkpoint in enumerate(output["checkpoints"]):
                predicted = output["pose3d_camera"][k][[rows[f] for f in frames]]
                scores = sequence_scores(predicted, target, mean_pose @ cam.R.T, fps, frames, trusted)
                sequences.setdefault(str(checkpoint), []).append({"view": views[v].name, "person": p, **scores})
    if not sequences:
        raise ValueError("no demo.py output follows a triangulated person in any view; nothing to score")
    return {checkpoint: _pooled(scored, views, len(people)) for checkpoint, scored in sequences.items()}


@dataclass
class MultiviewReport:
    recording: str
    fps: float
    views: list[str]
    reference: list[dict]  # per person: reference_scores
    bones: str  # how the lifters' poses were scored: "rigid" (as demo.py outputs them) or "free"
    virtual_camera: bool  # lifted through a virtual camera aimed at the person, as demo.py does
    upright: bool = True  # the virtual camera turned about its axis for a person far from upright, as demo.py does
    min_joint_views: int = 0  # only reference joints triangulated from this many views were scored (0: all)
    lifters: dict[str, dict] = field(default_factory=dict)  # checkpoint -> evaluate_lifter
    # checkpoint after the first -> compare_lifters(first, it): the difference and how sure it is
    comparisons: dict[str, dict] = field(default_factory=dict)
    refinement: dict | None = None  # the calibration refinement's report; None: the calibration as read

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def evaluate_recording(recording: Recording, checkpoints: list[str | Path], config: MultiviewConfig | None = None,
                       device: str = "cpu", outputs: str | Path | None = None) -> MultiviewReport:
    """Reconstruct the recording's people once, then lift and score every view with each checkpoint, and score
    demo.py's results in `outputs` (`evaluate_outputs`) as they are."""
    from pipeline.lifting import load_lifter

    config = config or MultiviewConfig()
    views, people = reconstruct(recording, config)
    fps = views[0].fps
    report = MultiviewReport(recording=str(recording.directory), fps=fps, views=[v.name for v in views],
                             reference=[reference_scores(p, views, fps, recording.cameras, config.triangulation)
                                        for p in people], bones=config.bones,
                             virtual_camera=config.virtual_camera, upright=config.upright,
                             min_joint_views=config.min_joint_views, refinement=recording.refinement)
    for checkpoint in checkpoints:
        lifter = load_lifter(checkpoint, device=device)
        report.lifters[str(checkpoint)] = evaluate_lifter(lifter, recording, views, people, config.bones,
                                                          config.min_joint_views, config.virtual_camera,
                                                          config.upright)
    if outputs is not None:
        scored = evaluate_outputs(read_outputs(outputs, recording), recording, views, people, config.min_joint_views)
        for checkpoint, scores in scored.items():
            report.lifters[f"{checkpoint} in {outputs}"] = {**scores, "demo_output": str(outputs)}
    names = list(report.lifters)
    for name in names[1:]:
        try:
            report.comparisons[name] = compare_lifters(report.lifters[names[0]], report.lifters[name], fps,
                                                       config.comparison_block_s)
        except ValueError as exc:  # e.g. demo.py's output of another part of the clip: reported, not compared
            logger.warning("%s is not compared with %s: %s", name, names[0], exc)
    return report
