"""One run of the demo: the stages per clip, in the order the data flows, and their outputs.

    process_clip: plan -> (skip when complete) -> 2D keypoints (cached) -> lifting -> trajectory and world view
                  -> keypoints.npz -> BVH -> render + encode the mp4 -> run.json

This module and `pipeline.cli` are the only ones that know about files and flags; every stage it calls takes arrays
and returns arrays. Paths and atomic writes live in `pipeline.app.outputs`, the 2D cache in `pipeline.app.cache`, the
networks in `pipeline.app.models`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.app.cache import file_fingerprint, load_pose2d_cache, save_pose2d_cache, short_hash
from pipeline.app.inputs import ClipRange
from pipeline.app.models import LiftingConfig, Models, load_models
from pipeline.app.outputs import ClipOutputs, keypoints_arrays, package_versions, save_json, save_npz
from pipeline.app.progress import StageProgress, StageTimer, progress_bar
from pipeline.errors import SettingError
from pipeline.geometry import demo_world_view
from pipeline.media.ffmpeg import MediaInfo
from pipeline.motion.ground import GroundConfig, shared_ground_scales, standing_heights
from pipeline.motion.level import Levelling, fixed_levelling, level_world
from pipeline.pose2d import Pose2DConfig, Pose2DOutput, start_reading
from pipeline.render import RenderConfig
from pipeline.skeleton import H36M

if TYPE_CHECKING:
    from pipeline.media.decode import VideoFrames

logger = logging.getLogger(__name__)


@dataclass
class MotionConfig:
    """How the person moves: rigid bones, the pelvis trajectory, the camera's focal length it rests on, and the BVH
    export."""

    bones: str = "rigid"  # rigid: constant, symmetric bone lengths (pipeline.motion.bones); free: the lifter's own
    trajectory: bool = True  # False: every pelvis pinned at the origin, as the released demo draws it
    fov_deg: float | None = None  # the camera's diagonal field of view, when known
    focal_px: float | None = None  # the camera's focal length in pixels, when known (wins over fov_deg)
    bvh: bool = True  # one .bvh per lifter checkpoint
    # Lift each person through a virtual camera turned to look at them (pipeline.virtual_camera), with the focal
    # length above; False: as the real camera sees them, as the released demo does.
    virtual_camera: bool = True
    # With the virtual camera, also turn it about its axis for a person who lies far from upright in the picture over
    # the clip (a sideways or upside-down camera), and frame by frame for one who turns over (a somersault)
    # (pipeline.virtual_camera.lift_upright); False: never turn it.
    upright: bool = True
    # Level the world view (3D panel, pose3d_world, trajectory_world, BVH) with the camera tilt estimated from the
    # people (pipeline.motion.level); False: the released demo's fixed camera-to-world rotation.
    level: bool = True
    # Frames between a lifting window's samples; None: from the video's frame rate (`pipeline.lifting.window_strides`:
    # 1 up to 67 fps, 2 for a 120 fps clip, and from 50 fps on the mean of that and of twice it).
    window_stride: int | None = None
    # With several people in a levelled world view, size each person (pose and path together, their image unchanged)
    # so that everyone stands on one floor as far as body sizes allow (pipeline.motion.ground); None: by body size
    # alone, each on the floor their own size gives.
    ground: GroundConfig | None = field(default_factory=GroundConfig)

    def __post_init__(self) -> None:
        from pipeline.motion.bones import BONE_MODES

        if self.bones not in BONE_MODES:
            raise SettingError("bones", f"must be one of {', '.join(BONE_MODES)}, not {self.bones!r}")
        if self.window_stride is not None and self.window_stride < 1:
            raise SettingError("window_stride", f"must be 1 frame or more, not {self.window_stride}")


@dataclass
class RunConfig:
    """A run's settings: one config per stage, plus where the outputs go."""

    out_root: Path
    pose2d: Pose2DConfig = field(default_factory=lambda: Pose2DConfig(keypoint_backend="auto"))
    lifting: LiftingConfig = field(default_factory=LiftingConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    clip_range: ClipRange = field(default_factory=ClipRange)
    motion: MotionConfig = field(default_factory=MotionConfig)
    write_video: bool = True  # False: no mp4
    viewer: bool = True  # the interactive <clip>_viewer.html
    rerun: bool = False  # a Rerun recording <clip>.rrd (pip install -e .[rerun])
    force: bool = False  # redo clips whose outputs are complete
    show_progress: bool = True

    def record(self) -> dict:
        """The settings as run.json records them: one flat entry per setting, named as in earlier releases."""
        p = self.pose2d
        return {
            "out_root": self.out_root, "checkpoints": self.lifting.checkpoints, "frames": self.lifting.frames,
            "device": self.lifting.device, "detector": p.detector, "keypoints": p.keypoint_backend,
            "hrnet_weights": p.hrnet_weights, "person": p.person, "all_people": p.all_people,
            "recovery": p.recovery.enabled,
            "start": self.clip_range.start, "end": self.clip_range.end, "elev": self.render.elev,
            "azim": self.render.azim, "render": self.write_video, "force": self.force,
            "show_progress": self.show_progress, "bones": self.motion.bones, "trajectory": self.motion.trajectory,
            "fov": self.motion.fov_deg,
            "focal": self.motion.focal_px, "bvh": self.motion.bvh, "virtual_camera": self.motion.virtual_camera,
            "upright": self.motion.upright,
            "level": self.motion.level, "window_stride": self.motion.window_stride,
            "shared_ground": self.motion.ground is not None,
            "viewer": self.viewer, "rerun": self.rerun,
        }


@dataclass
class ClipJob:
    """One clip's plan: the video, the frames to process, where the outputs go and what identifies them."""

    clip: Path
    info: MediaInfo
    first: int
    stop: int | None
    out: ClipOutputs
    pose2d_key: str  # the 2D cache key
    fingerprint: str  # of everything that decides the outputs: a complete run with the same one is skipped

    def frame_source(self) -> VideoFrames:
        """The frames to process as the 2D stage's frame source: each call opens a fresh iterator (the 2D stage may
        read them twice), and it seeks to single frames (the detector input size probe's) instead of decoding the
        clip once more for them."""
        from pipeline.media.decode import VideoFrames

        return VideoFrames(self.clip, self.first, self.stop, self.info)

    def frames(self, size: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
        """A fresh iterator over the frames to process (rendering reads them once more), decoded ahead in a
        background thread while the caller works on the previous ones; scaled by the decoder to `size` (width,
        height) when given."""
        source = self.frame_source()
        return source() if size is None else source.at_size(size)()

    def expected_frames(self) -> int:
        """The frame count for the progress bars (packets: ~0.1 s, exact for undamaged files)."""
        from pipeline.media.ffmpeg import count_frames

        return (self.stop if self.stop is not None else count_frames(self.clip, decode=False)) - self.first


@dataclass
class Lifted:
    """The 3D poses of every followed person (P) by every checkpoint (K) over T frames."""

    camera: np.ndarray  # (P, K, T, 17, 3) root-relative camera space, metres
    world: np.ndarray  # (P, K, T, 17, 3) the demo's world view, turned by `levelling.rotation`
    disagreement_mm: dict[str, float]  # per checkpoint after the first: mean joint distance to the first's poses
    levelling: Levelling  # the clip's camera-to-world rotation: levelled from the people, or the fixed one
    window_strides: tuple[int, ...] = (1,)  # frames between a lifting window's samples; several: poses averaged
    # (P, K, T) mm: how far apart the flip test's two passes put the joints (mean over the 16 non-root joints), per
    # frame: where it is large the lifter is unsure (`pipeline.lifting.Lifter.lift_normalized`, flip_difference)
    flip_disagreement_mm: np.ndarray | None = None


@dataclass
class Scene:
    """Where everyone is: the pelvis trajectories and the world poses the 3D panels draw (and the BVH holds)."""

    trajectory_camera: np.ndarray | None  # (P, K, T, 3) pelvis in camera space, metres; None with --no-trajectory
    trajectory_world: np.ndarray | None  # (P, K, T, 3) the same in the world view (z up, ground at z = 0)
    poses: np.ndarray  # (P, K, T, 17, 3) world poses: moving along the trajectory, or pinned
    focal_px: float | None  # the focal length the trajectory rests on
    focal_source: str | None  # where it came from: "focal", "fov", "metadata" or "default"
    problem: str | None = None  # why there is no trajectory although one was asked for
    # (P, K) each person's size relative to the lifter's pose, from the floor people share (pipeline.motion.ground):
    # the poses above and the trajectories are scaled by it; None: not applied (one person, --separate-grounds, the
    # fixed rotation, no trajectory)
    body_scale: np.ndarray | None = None


def process_clips(clips: list[Path], config: RunConfig,
                  describe_error: Callable[[BaseException], str] | None = None, ray_address: str | None = None) -> int:
    """Process every clip; with several clips, one clip's failure is reported (as `describe_error` words it) and the
    others still run. With `ray_address` ("local", "auto", "HOST:PORT") they run on a Ray pool instead
    (`pipeline.app.distributed`)."""
    describe_error = describe_error or one_line
    if ray_address is not None:
        from pipeline.app.distributed import RayConfig, process_clips_on_ray

        return process_clips_on_ray(clips, config, RayConfig(address=ray_address), describe_error)
    early = early_frame_source(clips[0], config) if clips else None
    try:
        models = load_models(config.lifting, config.pose2d)
        if len(clips) == 1:
            print(process_clip(clips[0], config, models, frames=early), flush=True)
            return 0
        failures = 0
        for k, clip in enumerate(clips):
            try:
                print(process_clip(clip, config, models, frames=early if k == 0 else None), flush=True)
            except Exception as exc:  # KeyboardInterrupt still stops the whole run
                failures += 1
                print(f"error: {clip.name}: {describe_error(exc)}", file=sys.stderr, flush=True)
        return 1 if failures else 0
    finally:
        if early is not None:
            early.close()  # what it read ahead and nobody used (a skipped clip, a cached 2D stage, an error)


def early_frame_source(clip: Path, config: RunConfig) -> VideoFrames | None:
    """The clip's frame source, already reading what the 2D stage reads first in the background
    (`pipeline.pose2d.start_reading`): started before the models load, ffmpeg decodes beside the imports. None when
    the clip cannot be opened (processing it reports why), or when its 2D stage was cached before (another lifter
    or view: most likely nothing to read)."""
    from pipeline.app.models import resolve_pose2d_config
    from pipeline.media.decode import VideoFrames
    from pipeline.media.ffmpeg import probe

    if any(ClipOutputs.for_clip(config.out_root, clip).cache.glob("pose2d-*.npz")):
        return None
    try:
        info = probe(clip)
        first, stop = config.clip_range.frames(info.fps)
        pose2d = resolve_pose2d_config(config.pose2d)  # the keypoint backend "auto" resolves to (HRNet weights?)
    except Exception:  # the same error comes again, in its place, when the clip is processed
        return None
    source = VideoFrames(clip, first, stop, info)
    start_reading(source, pose2d)
    return source


def process_clip(clip: Path, config: RunConfig, models: Models, ray_worker: dict | None = None,
                 frames: VideoFrames | None = None) -> str:
    """Run every stage for one clip and write its outputs; returns the one-line summary. `ray_worker`: where Ray ran
    it (pipeline.app.distributed), recorded in run.json. `frames`: the clip's frame source when one was opened early
    (`early_frame_source`)."""
    t_start = time.perf_counter()
    job = plan_clip(clip, config, models, info=None if frames is None else frames.info)
    if frames is not None and (frames.first, frames.stop) != (job.first, job.stop):
        frames.close()
        frames = None  # not this plan's frames
    if not config.force and job.out.complete(job.fingerprint):
        if frames is not None:
            frames.close()  # what it read ahead is not needed
        return f"{clip.name}: outputs in {job.out.folder} are complete, skipped (--force redoes them)"
    timer = StageTimer()
    pose2d = estimate_2d(job, models, timer, config.show_progress, frames)
    lifted = lift_people(job, pose2d, models.lifters, timer, config.show_progress, config.motion, models.lifter_threads)
    scene = place_in_world(job, pose2d, lifted, config.motion)
    written = write_keypoints(job, pose2d, lifted, scene, models)
    if config.motion.bvh:
        written += write_bvh(job, pose2d, scene, models)
    if config.viewer:
        written.append(write_viewer_page(job, pose2d, lifted, scene, models))
    if config.rerun:
        written.append(write_rerun_recording(job, pose2d, scene, models))
    if config.write_video:
        written.append(render_video(job, pose2d, scene, models, config, timer))
    total = time.perf_counter() - t_start
    write_run_record(job, config, models, pose2d, lifted, scene, timer, written, total, ray_worker)
    return clip_summary(job, pose2d, timer, total, lifted.disagreement_mm)


def plan_clip(clip: Path, config: RunConfig, models: Models, info: MediaInfo | None = None) -> ClipJob:
    """Probe the clip (unless `info` is its probe already), choose its frames and compute the keys that decide
    caching and skipping."""
    from pipeline.media.ffmpeg import probe

    info = info or probe(clip)
    first, stop = config.clip_range.frames(info.fps)
    clip_identity = {"clip": file_fingerprint(clip), "first": first, "stop": stop}
    pose2d_key = short_hash({**clip_identity, **models.pose2d_identity})
    settings = {
        **clip_identity, "pose2d": pose2d_key,
        "checkpoints": [file_fingerprint(lifter.checkpoint) for lifter in models.lifters],
        "frames": config.lifting.frames, "render": config.write_video,
        "elev": config.render.elev, "azim": config.render.azim, "motion": dataclasses.asdict(config.motion),
        "viewer": config.viewer, "rerun": config.rerun,
    }
    return ClipJob(clip=clip, info=info, first=first, stop=stop, out=ClipOutputs.for_clip(config.out_root, clip),
                   pose2d_key=pose2d_key, fingerprint=short_hash(settings))


def estimate_2d(job: ClipJob, models: Models, timer: StageTimer, show_progress: bool,
                frames: VideoFrames | None = None) -> Pose2DOutput:
    """The 2D stage, cached per clip and 2D settings: a new lifter, view or --no-render does not redo detection.
    `frames`: the clip's frame source if one is open already (default: `job.frame_source()`)."""
    cache_file = job.out.cache / f"pose2d-{job.pose2d_key}.npz"
    if cache_file.is_file():
        if frames is not None:
            frames.close()  # what it read ahead is not needed
        timer.stages["pose2d"] = {"cached": cache_file.name}
        return load_pose2d_cache(cache_file)
    frames = frames or job.frame_source()
    start_reading(frames, models.pose2d_config)  # read while the detector loads, if not started already
    try:
        with timer.stage("pose2d") as entry, \
                progress_bar(show_progress, f"{job.clip.name} 2D", frames.count() or job.expected_frames()) as bar:
            pose2d = models.pose2d().run(frames, progress=StageProgress(bar), fps=job.info.fps)
            entry["frames"] = pose2d.num_frames
    finally:
        frames.close()  # a read-ahead the stage did not take
    save_pose2d_cache(cache_file, pose2d)
    return pose2d


def lift_people(job: ClipJob, pose2d: Pose2DOutput, lifters: list, timer: StageTimer, show_progress: bool,
                config: MotionConfig, lifter_threads: int) -> Lifted:
    """Every followed person through every checkpoint, each through a virtual camera aimed at them (unless
    config.virtual_camera is off; `pipeline.virtual_camera`); bones="rigid" gives each person one length per bone
    for the clip, measured on the frames they were detected in (`pipeline.motion.bones`). A video stored turned
    (`pose2d.turn`, `pipeline.orientation`) is lifted as the picture its people stand in, exactly as that video
    would be, and the 3D turned back into the stored picture's camera frame."""
    from pipeline.devices import torch_threads
    from pipeline.lifting import window_strides
    from pipeline.motion.bones import rigid_bones
    from pipeline.orientation import lift_turned, turned_size

    width, height = turned_size(pose2d.image_size, pose2d.turn)
    focal = camera_focal(job.info, width, height, config)[0] if config.virtual_camera else None
    strides = (config.window_stride,) if config.window_stride else window_strides(job.info.fps)
    if strides != (1,):
        logger.info("%s: %.0f fps, so each pose is the mean of lifting windows taking one frame in %s", job.clip.name,
                    job.info.fps, " and one in ".join(map(str, strides)))
    camera = np.zeros((len(pose2d.people), len(lifters), pose2d.num_frames, 17, 3), np.float32)
    spread = np.zeros(camera.shape[:3], np.float32)
    with timer.stage("lift") as entry, torch_threads(lifter_threads), \
            progress_bar(show_progress, f"{job.clip.name} 3D", 2 * camera[..., 0, 0].size) as bar:
        entry["frames"] = camera[..., 0, 0].size  # frames x people x checkpoints
        for p, person in enumerate(pose2d.people):
            detected = np.flatnonzero(person.valid) if person.valid.any() else None
            for k, lifter in enumerate(lifters):
                options = dict(frames=detected, upright=config.upright, progress=bar.update, stride=strides)
                camera[p, k] = lift_turned(lifter, person.keypoints, pose2d.image_size, pose2d.turn, focal,
                                           **options)
                # How far apart the flip test's two passes put the joints: a pass more (0.3 s for the sample clip).
                half_difference = lift_turned(lifter, person.keypoints, pose2d.image_size, pose2d.turn, focal,
                                              quiet=True, flip_difference=True, **options)
                spread[p, k] = 2000 * np.linalg.norm(half_difference, axis=-1)[:, 1:].mean(axis=-1)
                if config.bones == "rigid":
                    camera[p, k] = rigid_bones(camera[p, k], frames=detected)
    disagreement = {lifter.name: round(mean_joint_distance_mm(camera[0, k], camera[0, 0]), 1)
                    for k, lifter in enumerate(lifters[1:], start=1)}
    levelling = clip_levelling(job, pose2d, camera, config)
    return Lifted(camera=camera, world=demo_world_view(camera, levelling.rotation), disagreement_mm=disagreement,
                  levelling=levelling, window_strides=strides, flip_disagreement_mm=spread)


def clip_levelling(job: ClipJob, pose2d: Pose2DOutput, camera: np.ndarray, config: MotionConfig) -> Levelling:
    """One camera-to-world rotation for the clip, from every followed person as the first checkpoint lifts them
    (`pipeline.motion.level`), so that all panels share one world; the fixed rotation when levelling is off."""
    if not config.level:
        return fixed_levelling("turned off (--no-level)")
    # A turn the 2D stage found is not taken for the camera's: people lying in an upright picture look the same.
    levelling = level_world(camera[:, 0], pose2d.stacked("valid"), pose2d.stacked("scores"),
                            picture_turn=pose2d.turn if pose2d.turn_given else 0)
    if not levelling.levelled:
        hint = "" if not pose2d.turn or pose2d.turn_given else (
            f"; the picture looked turned {pose2d.turn} degrees: if the camera was held so, --turn {pose2d.turn} "
            "levels the world view with it")
        logger.warning("%s: world view not levelled: %s%s", job.clip.name, levelling.reason, hint)
    return levelling


def mean_joint_distance_mm(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-joint distance between two (T, 17, 3) root-relative pose sequences, in millimetres."""
    return float(np.linalg.norm(a - b, axis=-1).mean() * 1000)


def place_in_world(job: ClipJob, pose2d: Pose2DOutput, lifted: Lifted, config: MotionConfig) -> Scene:
    """Every person's pelvis trajectory (`pipeline.motion.trajectory`) and the world poses to draw: moving along it
    with one ground for the clip, or (trajectory off) pinned at the origin as the released demo draws them.

    When a lifter's poses cannot be placed at all (no frame fits, e.g. a degenerate untrained checkpoint), the clip is
    still processed, pinned: a warning says so, and run.json records why."""
    if not config.trajectory:
        return Scene(None, None, placed_worlds(pose2d, lifted), None, None)
    try:
        return moving_scene(job, pose2d, lifted, config)
    except ValueError as exc:
        problem = f"no trajectory, the skeleton stays pinned: {exc}"
        logger.warning("%s: %s", job.clip.name, problem)
        return Scene(None, None, placed_worlds(pose2d, lifted), None, None, problem=problem)


def moving_scene(job: ClipJob, pose2d: Pose2DOutput, lifted: Lifted, config: MotionConfig) -> Scene:
    """The trajectories of every person and checkpoint, and everyone on the followed person's ground; with several
    people in a levelled world view, each sized by the floor they share (`pipeline.motion.ground`)."""
    from pipeline.motion.trajectory import estimate_trajectory
    from pipeline.scene import world_scene

    width, height = pose2d.image_size
    focal, source = camera_focal(job.info, width, height, config)
    people, lifters = lifted.camera.shape[:2]
    camera_path = np.zeros((people, lifters, pose2d.num_frames, 3), np.float32)
    for p, person in enumerate(pose2d.people):
        for k in range(lifters):
            try:
                camera_path[p, k] = estimate_trajectory(person.keypoints, person.scores, lifted.camera[p, k],
                                                        (width, height), job.info.fps, valid=person.valid,
                                                        focal_px=focal).camera
            except ValueError as exc:
                raise ValueError(f"person {person.track_id}, checkpoint {k + 1}: {exc}") from exc
    valid = pose2d.stacked("valid")
    rotation = lifted.levelling.rotation
    body_scale = None
    if config.ground is not None and lifted.levelling.levelled and people > 1:
        body_scale = floor_scales(pose2d, lifted, camera_path, config.ground)
    camera_path = scaled_by_person(camera_path, body_scale)
    camera_poses = scaled_by_person(lifted.camera, body_scale)
    poses, roots = zip(*(world_scene(camera_poses[:, k], camera_path[:, k], valid, rotation) for k in range(lifters)),
                       strict=True)
    return Scene(camera_path, np.stack(roots, axis=1), np.stack(poses, axis=1), focal, source, body_scale=body_scale)


def floor_scales(pose2d: Pose2DOutput, lifted: Lifted, camera_path: np.ndarray, config: GroundConfig) -> np.ndarray:
    """(P, K) each person's scale, per checkpoint, so that the people share one floor (pipeline.motion.ground)."""
    valid, scores = pose2d.stacked("valid"), pose2d.stacked("scores")
    rotation = lifted.levelling.rotation
    return np.stack([shared_ground_scales(standing_heights(lifted.camera[:, k], camera_path[:, k], valid, scores,
                                                           rotation, config), config)
                     for k in range(lifted.camera.shape[1])], axis=1)


def scaled_by_person(values: np.ndarray, body_scale: np.ndarray | None) -> np.ndarray:
    """`values` (P, K, ...) times each person's scale per checkpoint (P, K); as they are without one."""
    if body_scale is None:
        return values
    return values * body_scale.reshape(body_scale.shape + (1,) * (values.ndim - 2)).astype(values.dtype)


def camera_focal(info: MediaInfo, width: int, height: int, config: MotionConfig) -> tuple[float, str]:
    """The focal length in pixels and where it came from: the user's, the video's metadata, or the default."""
    from pipeline.motion.trajectory import focal_length_px

    if config.focal_px is not None:
        return focal_length_px(width, height, focal_px=config.focal_px), "focal"
    if config.fov_deg is not None:
        return focal_length_px(width, height, fov_deg=config.fov_deg), "fov"
    if info.focal_length_35mm is not None:  # the 35 mm frame's diagonal is 43.27 mm
        diagonal_fov = np.degrees(2 * np.arctan(43.27 / 2 / info.focal_length_35mm))
        return focal_length_px(width, height, fov_deg=float(diagonal_fov)), "metadata"
    return focal_length_px(width, height), "default"


def write_keypoints(job: ClipJob, pose2d: Pose2DOutput, lifted: Lifted, scene: Scene, models: Models) -> list[str]:
    """keypoints.npz for the followed person, keypoints_person<ID>.npz for the others; returns the file names."""
    written = []
    camera, world = (scaled_by_person(poses, scene.body_scale) for poses in (lifted.camera, lifted.world))
    for p, person in enumerate(pose2d.people):
        target = job.out.keypoints if p == 0 else job.out.person_keypoints(person.track_id)
        arrays = keypoints_arrays(person, camera[p], world[p], lifted.levelling.rotation,
                                  checkpoint_names=[lifter.name for lifter in models.lifters],
                                  models=models.provenance(), fps=job.info.fps, first_frame=job.first,
                                  image_size=pose2d.image_size)
        if scene.trajectory_camera is not None:
            arrays["trajectory_camera"] = scene.trajectory_camera[p]
            arrays["trajectory_world"] = scene.trajectory_world[p]
            arrays["focal_px"] = np.float64(scene.focal_px)
        if scene.body_scale is not None:
            arrays["body_scale"] = scene.body_scale[p].astype(np.float32)
        arrays["flip_disagreement_mm"] = lifted.flip_disagreement_mm[p]
        save_npz(target, arrays)
        written.append(target.name)
    return written


def write_bvh(job: ClipJob, pose2d: Pose2DOutput, scene: Scene, models: Models) -> list[str]:
    """One BVH of the followed person per checkpoint: <clip>.bvh, then <clip>_<checkpoint>.bvh."""
    from pipeline.app.outputs import atomic_output
    from pipeline.motion.bvh import bvh_file_names, bvh_text

    names = bvh_file_names(job.clip.stem, [lifter.name for lifter in models.lifters])
    followed = pose2d.people[0]
    for k, name in enumerate(names):
        text = bvh_text(scene.poses[0, k], job.info.fps, valid=followed.valid)
        with atomic_output(job.out.folder / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return names


# Codecs that Chrome, Firefox and Safari all play in a <video> element (the viewer page plays the input clip).
BROWSER_CODECS = ("h264", "vp8", "vp9", "av1")


def write_viewer_page(job: ClipJob, pose2d: Pose2DOutput, lifted: Lifted, scene: Scene, models: Models) -> str:
    """<clip>_viewer.html: the input clip with its 2D skeletons beside an orbitable 3D view (`pipeline.viewer`).
    The page refers to the clip by a relative path, so it stays small and must stay beside the clip's folder."""
    from pipeline.viewer import write_viewer

    if job.info.codec not in BROWSER_CODECS:
        logger.warning("%s: browsers do not play %s video; the viewer page will show the poses without the clip",
                       job.clip.name, job.info.codec)
    dest = job.out.folder / f"{job.clip.stem}_viewer.html"
    write_viewer(dest, video_relpath=os.path.relpath(job.clip, job.out.folder), image_size=pose2d.image_size,
                 scores_2d=pose2d.stacked("scores"), title=job.clip.name,
                 flip_disagreement_mm=lifted.flip_disagreement_mm.swapaxes(0, 1), **exported_motion(job, pose2d, scene,
                                                                                                    models))
    return dest.name


def write_rerun_recording(job: ClipJob, pose2d: Pose2DOutput, scene: Scene, models: Models) -> str:
    """<clip>.rrd: the clip, the 2D keypoints and every checkpoint's 3D on one timeline (`pipeline.rerun_export`)."""
    from pipeline.rerun_export import write_rerun

    dest = job.out.folder / f"{job.clip.stem}.rrd"
    write_rerun(dest, video_path=job.clip, **exported_motion(job, pose2d, scene, models))
    return dest.name


def exported_motion(job: ClipJob, pose2d: Pose2DOutput, scene: Scene, models: Models) -> dict:
    """What the viewer page and the Rerun recording both show, in their (checkpoint, person, ...) layout."""
    trajectory = scene.trajectory_world
    return {"fps": job.info.fps, "keypoints_2d": pose2d.stacked("keypoints"), "valid": pose2d.stacked("valid"),
            "poses_world": scene.poses.swapaxes(0, 1),
            "trajectory_world": None if trajectory is None else trajectory.swapaxes(0, 1),
            "checkpoint_names": [lifter.name for lifter in models.lifters], "frame_offset": job.first}


def render_video(job: ClipJob, pose2d: Pose2DOutput, scene: Scene, models: Models, config: RunConfig,
                 timer: StageTimer) -> str:
    """The side-by-side mp4: the input with the 2D skeletons, one 3D panel per checkpoint, the input's audio."""
    from pipeline.media.encode import VideoWriter
    from pipeline.render import SideBySideRenderer

    people = pose2d.people
    keypoints_2d = pose2d.stacked("keypoints")  # (P, T, 17, 2), the followed person first
    scores_2d = pose2d.stacked("scores")
    valid = pose2d.stacked("valid")
    present = pose2d.stacked("span")  # (P, T): each person is drawn only while there
    labels = [str(p.track_id) for p in people] if len(people) > 1 else None  # ids in both panels, own colours
    shown = scene.poses  # (P, K, T, 17, 3)
    roots = scene.trajectory_world  # (P, K, T, 3) or None: the pelvis trails
    names = [lifter.name for lifter in models.lifters]
    stems = [Path(name).stem for name in names]  # a panel is about 35 characters wide: no file extension
    titles = stems if len(set(stems)) == len(stems) else names
    renderer = SideBySideRenderer.for_clip(pose2d.image_size, titles,
                                           [shown[:, k] for k in range(shown.shape[1])], config.render)
    num_frames, info = pose2d.num_frames, job.info
    with timer.stage("render_encode") as entry, \
            progress_bar(config.show_progress, f"{job.clip.name} render", num_frames) as bar, \
            VideoWriter(job.out.video, renderer.output_size, info.fps, frame_count=num_frames,
                        audio_source=job.clip if info.has_audio else None, audio_start=job.first / info.fps) as writer:
        for t, frame in enumerate(job.frames(size=renderer.frame_size)):  # decoded at the size it is drawn
            if t >= num_frames:
                raise RuntimeError(f"{job.clip.name} gave more frames on the second read than on the first")
            trails = None if roots is None else [roots[:, k, : t + 1] for k in range(roots.shape[1])]
            writer.write(renderer.render(frame, keypoints_2d[:, t], scores_2d[:, t], valid[:, t],
                                         list(shown[:, :, t].swapaxes(0, 1)), trails=trails, shown=present[:, t],
                                         labels=labels, out=writer.frame_buffer()))
            bar.update(1)
        entry["frames"] = writer.frames_written
    return job.out.video.name


def placed_worlds(pose2d: Pose2DOutput, lifted: Lifted) -> np.ndarray:
    """World poses (P, K, T, 17, 3) to draw: root-relative poses all stand on one spot, so with several people the
    others are moved to where their boxes put them (`pipeline.scene`; a picture aid, not saved)."""
    people, world = pose2d.people, lifted.world
    if len(people) == 1:
        return world
    from pipeline.scene import place_people

    pelvis = pose2d.stacked("keypoints")[:, :, H36M.index("pelvis")]
    box_heights = np.stack([p.boxes[:, 3] - p.boxes[:, 1] for p in people])
    return np.stack([place_people(world[:, k], pelvis, box_heights, pose2d.image_size, lifted.levelling.rotation)
                     for k in range(world.shape[1])], axis=1)


def write_run_record(job: ClipJob, config: RunConfig, models: Models, pose2d: Pose2DOutput, lifted: Lifted,
                     scene: Scene, timer: StageTimer, written: list[str], total: float,
                     ray_worker: dict | None = None) -> None:
    """run.json: settings, models, tracks, timings and versions; written last, it marks the outputs complete."""
    width, height = pose2d.image_size
    info = job.info
    save_json(job.out.run_json, {
        "fingerprint": job.fingerprint,
        "clip": str(job.clip),
        "outputs": written,
        "video": {"width": width, "height": height, "fps": info.fps, "frames": pose2d.num_frames,
                  "first_frame": job.first, "rotation": info.rotation, "has_audio": info.has_audio,
                  "codec": info.codec, "frame_count_in_header": info.frame_count_header},
        "settings": config.record(),
        "models": models.provenance(),
        "people": [{"track_id": p.track_id, "detected_frames": int(p.valid.sum()),
                    **({} if scene.body_scale is None else {"body_scale": [round(float(s), 4) for s in
                                                                           scene.body_scale[i]]}),
                    "flip_disagreement_mm": flip_disagreement_record(lifted.flip_disagreement_mm[i], p.valid)}
                   for i, p in enumerate(pose2d.people)],
        "tracks": pose2d.tracks,
        "detection": pose2d.detection,  # the detector input size and how it was chosen; the second look's gaps
        "checkpoint_disagreement_mm": lifted.disagreement_mm,
        "window_strides": list(lifted.window_strides),
        "trajectory": trajectory_record(scene),
        "world": lifted.levelling.record(),
        "timings": {**timer.stages, "total_seconds": round(total, 3)},
        **({"ray": ray_worker} if ray_worker else {}),  # node, hostname, worker_pid, address
        "versions": package_versions(),
    })


def flip_disagreement_record(spread: np.ndarray, valid: np.ndarray) -> list[dict]:
    """Per checkpoint, the median and 90th percentile over the frames the person was detected in of how far apart
    the flip test's two passes put the joints (mm; `Lifted.flip_disagreement_mm`)."""
    frames = spread[:, valid] if valid.any() else spread
    return [{"median": round(float(np.median(row)), 1), "p90": round(float(np.percentile(row, 90)), 1)}
            for row in frames]


def trajectory_record(scene: Scene) -> dict | None:
    """What run.json says about the trajectory: its focal length and where that came from, or why there is none."""
    if scene.problem is not None:
        return {"error": scene.problem}
    if scene.focal_px is None:
        return None
    return {"focal_px": round(scene.focal_px, 2), "focal_source": scene.focal_source}


def clip_summary(job: ClipJob, pose2d: Pose2DOutput, timer: StageTimer, total: float,
                 disagreement: dict[str, float]) -> str:
    main = pose2d.people[0]
    parts = [f"{job.clip.name}: {pose2d.num_frames} frames, person {main.track_id} detected in "
             f"{int(main.valid.sum())}"]
    speeds = [f"{name} {s['frames_per_second']:.1f} fps"
              for name, s in timer.stages.items() if "frames_per_second" in s]
    if "cached" in timer.stages.get("pose2d", {}):
        speeds.insert(0, "2D cached")
    parts.append(", ".join(speeds))
    if disagreement:
        parts.append("vs first checkpoint: " + ", ".join(f"{n} {d:.1f} mm" for n, d in disagreement.items()))
    parts.append(f"{total:.1f} s -> {job.out.folder}")
    return "; ".join(parts)


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
