"""One run of the demo: resolve clips and weights, run the stages per clip, write the outputs atomically.

This is the only place besides `pipeline.cli` that knows about files: the stages it calls take arrays and return arrays.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.skeleton import COCO, H36M

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VIDEOS_DIR = PROJECT_ROOT / "videos"
WEIGHTS_DIR = PROJECT_ROOT / "weights"
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp")
# Bump when the 2D stage's output changes meaning, so that old caches are not reused.
POSE2D_CACHE_VERSION = 1
WEIGHTS_HELP = (
    "official PoseFormerV2 checkpoints (e.g. 27_243_45.2.bin) are linked from github.com/QitaoZhao/PoseFormerV2; "
    "put them in weights/ or pass --checkpoint PATH"
)


class UserError(Exception):
    """A problem with what the user asked for; the CLI prints it as one line."""


@dataclass
class RunConfig:
    out_root: Path
    checkpoints: list[Path] = field(default_factory=list)
    frames: int | None = None
    device: str = "auto"
    detector: str | None = None
    keypoints: str = "auto"  # auto | yolo | hrnet
    hrnet_weights: Path | None = None
    person: int | None = None
    all_people: bool = False
    start: int | float | None = None  # int: frame index, float: seconds
    end: int | float | None = None
    elev: float = 15.0
    azim: float = 70.0
    render: bool = True
    force: bool = False
    show_progress: bool = True


# ----------------------------------------------------------------------------------------------------------- inputs


def resolve_clips(video: Path | None, *, sample: bool = False) -> list[Path]:
    """The clips to process: one file, every clip in a folder, or every clip in videos/."""
    if sample:
        from pipeline.sample_clip import fetch_sample_clip

        return [fetch_sample_clip(VIDEOS_DIR)]
    if video is None:
        folder = VIDEOS_DIR
    else:
        video = video.expanduser()
        if not video.exists() and not video.is_absolute() and len(video.parts) == 1 and (VIDEOS_DIR / video).exists():
            video = VIDEOS_DIR / video
        if not video.exists():
            raise UserError(f"video not found: {video} (give a path, or a file name in {VIDEOS_DIR})")
        if video.is_file():
            return [video.resolve()]
        folder = video
    clips = sorted(p.resolve() for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not clips:
        raise UserError(f"no video files in {folder} (expected one of {', '.join(VIDEO_SUFFIXES)})")
    return clips


def resolve_weight_file(path: Path, what: str) -> Path:
    path = path.expanduser()
    if not path.exists() and len(path.parts) == 1 and (WEIGHTS_DIR / path).exists():
        path = WEIGHTS_DIR / path
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    return path.resolve()


def default_lifter_checkpoint() -> Path:
    """The project's shipped lifter weights (weights/poseformerv2_mocap_*.safetensors)."""
    shipped = sorted(WEIGHTS_DIR.glob("poseformerv2_mocap_*.safetensors"))
    if not shipped:
        raise UserError(f"no lifter weights: the shipped default is missing from {WEIGHTS_DIR}; {WEIGHTS_HELP}")
    return shipped[-1]


def default_hrnet_weights() -> Path | None:
    for name in ("pose_hrnet_w48_384x288.pth", "pose_hrnet_w32_256x192.pth"):
        if (WEIGHTS_DIR / name).is_file():
            return WEIGHTS_DIR / name
    return None


def file_fingerprint(path: Path) -> str:
    """Cheap identity of a file for cache keys: resolved path, size and modification time."""
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def short_hash(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------- outputs


@contextlib.contextmanager
def atomic_output(dest: Path) -> Iterator[Path]:
    """Yield a temporary path next to `dest`; move it into place only if the block completes."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{dest.stem}.partial{dest.suffix}")
    try:
        yield partial
        os.replace(partial, dest)
    finally:
        if partial.exists():
            partial.unlink()


def save_npz(dest: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_output(dest) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def save_json(dest: Path, obj: dict) -> None:
    with atomic_output(dest) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("poseformerv2-demo", "torch", "torchvision", "numpy", "ultralytics", "opencv-python",
                 "imageio-ffmpeg", "safetensors"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class StageTimer:
    """Wall time and frames per second of each stage, for run.json and the summary line."""

    def __init__(self) -> None:
        self.stages: dict[str, dict] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[dict]:
        """Times the block; the block sets entry["frames"] to the frames it processed."""
        entry: dict = {"frames": 0}
        t0 = time.perf_counter()
        yield entry
        seconds = time.perf_counter() - t0
        entry["seconds"] = round(seconds, 3)
        entry["frames_per_second"] = round(entry["frames"] / seconds, 2) if seconds > 0 else None
        self.stages[name] = entry


class StageProgress:
    """A progress bar for a stage that reports (pass name, frames done in that pass), e.g. detect then hrnet."""

    def __init__(self, bar) -> None:
        self.bar = bar
        self.pass_name: str | None = None

    def __call__(self, pass_name: str, done: int) -> None:
        if pass_name != self.pass_name:
            self.pass_name = pass_name
            self.bar.reset()
            self.bar.set_postfix_str(pass_name)
        self.bar.update(done - self.bar.n)


# ------------------------------------------------------------------------------------------------------- the stages


@dataclass
class ClipOutputs:
    folder: Path
    video: Path
    keypoints: Path
    run_json: Path
    cache: Path

    @classmethod
    def for_clip(cls, out_root: Path, clip: Path) -> "ClipOutputs":
        folder = out_root / clip.stem
        return cls(folder=folder, video=folder / f"{clip.stem}_pose3d.mp4", keypoints=folder / "keypoints.npz",
                   run_json=folder / "run.json", cache=folder / "cache")


def frame_range(start: int | float | None, end: int | float | None, fps: float) -> tuple[int, int | None]:
    """Frame indices [first, stop) from frame numbers (int) or seconds (float)."""
    def to_frame(value: int | float | None) -> int | None:
        if value is None:
            return None
        return int(value) if isinstance(value, int) else int(round(value * fps))

    first, stop = to_frame(start) or 0, to_frame(end)
    if stop is not None and stop <= first:
        raise UserError(f"--end must come after --start (frames {first} to {stop})")
    return first, stop


def progress_bar(config: RunConfig, desc: str, total: int | None):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", disable=not config.show_progress, leave=False,
                dynamic_ncols=True)


@dataclass
class Models:
    """Everything loaded once per run and reused for every clip."""

    lifters: list  # pipeline.lifting.Lifter, one per --checkpoint
    pose2d_config: object  # pipeline.pose2d.Pose2DConfig
    pose2d_identity: dict  # what decides the 2D result: part of the cache key and of the provenance
    _pose2d: object = None

    def pose2d(self):
        """The 2D stage, loaded on first use: a run whose 2D results are all cached never loads the detector."""
        if self._pose2d is None:
            from pipeline.pose2d import Pose2DEstimator

            self._pose2d = Pose2DEstimator(self.pose2d_config)
        return self._pose2d


def load_models(config: RunConfig) -> Models:
    from pipeline.detection import default_detector_weights
    from pipeline.lifting import load_lifter
    from pipeline.pose2d import Pose2DConfig

    checkpoints = [resolve_weight_file(p, "lifter checkpoint") for p in config.checkpoints] or \
        [default_lifter_checkpoint()]
    names = [p.name for p in checkpoints]
    if len(set(names)) != len(names):
        raise UserError(f"two checkpoints share a file name ({', '.join(names)}): rename one so their panels differ")
    lifters = []
    for path in checkpoints:
        try:
            lifters.append(load_lifter(path, frames=config.frames, device=config.device))
        except ValueError as exc:
            raise UserError(f"{exc} ({WEIGHTS_HELP})") from exc

    hrnet = resolve_weight_file(config.hrnet_weights, "HRNet weights") if config.hrnet_weights else None
    backend = config.keypoints
    if backend == "auto":
        hrnet = hrnet or default_hrnet_weights()
        backend = "hrnet" if hrnet else "yolo"
    if backend == "hrnet" and hrnet is None:
        raise UserError("--keypoints hrnet needs HRNet weights: pass --hrnet-weights pose_hrnet_w48_384x288.pth or put "
                        "that file into weights/ (official files: github.com/leoxiaobin/deep-high-resolution-net.pytorch)")
    detector = config.detector
    if detector is not None and Path(detector).expanduser().is_file():
        detector = str(Path(detector).expanduser().resolve())
    pose2d_config = Pose2DConfig(detector=detector, keypoints=backend, hrnet_weights=hrnet, device=config.device,
                                 person=config.person, all_people=config.all_people)
    detector_file = Path(detector) if detector and Path(detector).is_file() else None
    identity = {
        "version": POSE2D_CACHE_VERSION,
        "detector": detector or default_detector_weights().name,
        "detector_file": file_fingerprint(detector_file) if detector_file else None,
        "keypoints": backend,
        "hrnet_weights": file_fingerprint(hrnet) if hrnet else None,
        "person": config.person,
        "all_people": config.all_people,
    }
    return Models(lifters=lifters, pose2d_config=pose2d_config, pose2d_identity=identity)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def process_clips(clips: list[Path], config: RunConfig) -> int:
    """Process every clip; with several clips, one clip's failure is reported and the others still run."""
    models = load_models(config)
    if len(clips) == 1:
        print(process_clip(clips[0], config, models), flush=True)
        return 0
    failures = 0
    for clip in clips:
        try:
            print(process_clip(clip, config, models), flush=True)
        except Exception as exc:  # KeyboardInterrupt still stops the whole run
            failures += 1
            print(f"error: {clip.name}: {one_line(exc)}", file=sys.stderr, flush=True)
    return 1 if failures else 0


_PERSON_ARRAYS = ("keypoints_coco", "scores_coco", "keypoints", "scores", "valid", "boxes")


def save_pose2d_cache(path: Path, output) -> None:
    arrays = {"num_frames": np.int64(output.num_frames), "image_size": np.array(output.image_size, np.int64),
              "tracks_json": np.array(json.dumps(output.tracks)),
              "track_ids": np.array([p.track_id for p in output.people], np.int64)}
    for name in _PERSON_ARRAYS:
        arrays[name] = np.stack([getattr(p, name) for p in output.people])
    save_npz(path, arrays)


def load_pose2d_cache(path: Path):
    from pipeline.pose2d import Pose2DOutput, Pose2DResult

    with np.load(path) as data:
        people = [Pose2DResult(track_id=int(tid), **{name: data[name][i] for name in _PERSON_ARRAYS})
                  for i, tid in enumerate(data["track_ids"])]
        return Pose2DOutput(people=people, tracks=json.loads(str(data["tracks_json"])),
                            num_frames=int(data["num_frames"]), image_size=tuple(int(v) for v in data["image_size"]))


def mean_joint_distance_mm(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-joint distance between two (T, 17, 3) root-relative pose sequences, in millimetres."""
    return float(np.linalg.norm(a - b, axis=-1).mean() * 1000)


def process_clip(clip: Path, config: RunConfig, models: Models) -> str:
    """Run every stage for one clip and write its outputs; returns the one-line summary."""
    from pipeline.encode import VideoWriter
    from pipeline.render import RenderConfig, SideBySideRenderer
    from pipeline.scene import place_people
    from pipeline.video import count_frames, iter_frames, probe_video

    t_start = time.perf_counter()
    out = ClipOutputs.for_clip(config.out_root, clip)
    info = probe_video(clip)
    first, stop = frame_range(config.start, config.end, info.fps)
    clip_identity = {"clip": file_fingerprint(clip), "first": first, "stop": stop}
    pose2d_key = short_hash({**clip_identity, **models.pose2d_identity})
    settings = {
        **clip_identity, "pose2d": pose2d_key,
        "checkpoints": [file_fingerprint(l.checkpoint) for l in models.lifters], "frames": config.frames,
        "render": config.render, "elev": config.elev, "azim": config.azim,
    }
    fingerprint = short_hash(settings)
    if not config.force and out.run_json.is_file():
        try:
            previous = json.loads(out.run_json.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = {}
        if previous.get("fingerprint") == fingerprint and all(Path(out.folder / f).is_file()
                                                                for f in previous.get("outputs", ["?"])):
            return f"{clip.name}: outputs in {out.folder} are complete, skipped (--force redoes them)"

    timer = StageTimer()
    frames = lambda: iter_frames(clip, first, stop, info)  # noqa: E731 (the HRNet backend reads the frames twice)
    expected = (stop if stop is not None else count_frames(clip, decode=False)) - first  # packets: ~0.1 s, exact

    # 2D: cached per clip and 2D settings, so a new lifter, view or rendering does not redo detection.
    cache_file = out.cache / f"pose2d-{pose2d_key}.npz"
    if cache_file.is_file():
        pose2d = load_pose2d_cache(cache_file)
        timer.stages["pose2d"] = {"cached": cache_file.name}
    else:
        with timer.stage("pose2d") as entry, progress_bar(config, f"{clip.name} 2D", expected) as bar:
            pose2d = models.pose2d().run(frames, progress=StageProgress(bar), fps=info.fps)
            entry["frames"] = pose2d.num_frames
        save_pose2d_cache(cache_file, pose2d)
    num_frames = pose2d.num_frames
    width, height = pose2d.image_size

    # Lifting: every followed person with every checkpoint.
    camera = np.zeros((len(pose2d.people), len(models.lifters), num_frames, 17, 3), np.float32)
    world = np.zeros_like(camera)
    with timer.stage("lift") as entry, progress_bar(config, f"{clip.name} 3D", camera[..., 0, 0].size) as bar:
        entry["frames"] = camera[..., 0, 0].size  # frames x people x checkpoints
        for p, person in enumerate(pose2d.people):
            for k, lifter in enumerate(models.lifters):
                result = lifter.lift(person.keypoints, width, height, progress=bar.update)
                camera[p, k], world[p, k] = result.camera, result.world
    disagreement = {lifter.name: round(mean_joint_distance_mm(camera[0, k], camera[0, 0]), 1)
                    for k, lifter in enumerate(models.lifters[1:], start=1)}

    written = [out.keypoints.name]
    for p, person in enumerate(pose2d.people):
        target = out.keypoints if p == 0 else out.folder / f"keypoints_person{person.track_id}.npz"
        save_npz(target, keypoints_arrays(person, camera[p], world[p], models, info, first, width, height))
        if p:
            written.append(target.name)

    if config.render:
        people = pose2d.people
        keypoints_2d = np.stack([p.keypoints for p in people])  # (P, T, 17, 2), the followed person first
        scores_2d = np.stack([p.scores for p in people])
        valid = np.stack([p.valid for p in people])
        shown = world  # (P, K, T, 17, 3)
        if len(people) > 1:  # root-relative poses all stand on one spot: move the others to where they are
            pelvis = keypoints_2d[:, :, H36M.index("pelvis")]
            box_heights = np.stack([p.boxes[:, 3] - p.boxes[:, 1] for p in people])
            shown = np.stack([place_people(world[:, k], pelvis, box_heights, (width, height))
                              for k in range(world.shape[1])], axis=1)
        renderer = SideBySideRenderer.for_clip(
            (width, height), [lifter.name for lifter in models.lifters], [shown[:, k] for k in range(shown.shape[1])],
            RenderConfig(elev=config.elev, azim=config.azim))
        with timer.stage("render_encode") as entry, \
                progress_bar(config, f"{clip.name} render", num_frames) as bar, \
                VideoWriter(out.video, renderer.output_size, info.fps, frame_count=num_frames,
                            audio_source=clip if info.has_audio else None,
                            audio_start=first / info.fps) as writer:
            for t, frame in enumerate(frames()):
                if t >= num_frames:
                    raise RuntimeError(f"{clip.name} gave more frames on the second read than on the first")
                writer.write(renderer.render(frame, keypoints_2d[:, t], scores_2d[:, t], valid[:, t],
                                             list(shown[:, :, t].swapaxes(0, 1))))
                bar.update(1)
            entry["frames"] = writer.frames_written
        written.append(out.video.name)

    total = time.perf_counter() - t_start
    run = {
        "fingerprint": fingerprint,
        "clip": str(clip),
        "outputs": written,
        "video": {"width": width, "height": height, "fps": info.fps, "frames": num_frames, "first_frame": first,
                  "rotation": info.rotation, "has_audio": info.has_audio, "codec": info.codec,
                  "frame_count_in_header": info.frame_count_header},
        "settings": {k: v for k, v in dataclasses.asdict(config).items()},
        "models": models_provenance(models),
        "people": [{"track_id": p.track_id, "detected_frames": int(p.valid.sum())} for p in pose2d.people],
        "tracks": pose2d.tracks,
        "checkpoint_disagreement_mm": disagreement,
        "timings": {**timer.stages, "total_seconds": round(total, 3)},
        "versions": package_versions(),
    }
    save_json(out.run_json, run)
    return clip_summary(clip, out, num_frames, pose2d, timer, total, disagreement)


def models_provenance(models: Models) -> dict:
    return {
        "pose2d": {k: v for k, v in models.pose2d_identity.items() if k != "version"},
        "lifters": [{"checkpoint": str(l.checkpoint), "frames": l.frames, "frames_kept": l.config.frames_kept,
                     "coeffs_kept": l.config.coeffs_kept, "device": str(l.device)} for l in models.lifters],
    }


def keypoints_arrays(person, camera: np.ndarray, world: np.ndarray, models: Models, info, first: int,
                     width: int, height: int) -> dict[str, np.ndarray]:
    """The contents of keypoints.npz for one person; the README documents every array."""
    provenance = models_provenance(models)
    return {
        "keypoints_2d": person.keypoints, "scores_2d": person.scores,
        "keypoints_2d_coco": person.keypoints_coco, "scores_2d_coco": person.scores_coco,
        "valid": person.valid, "boxes": person.boxes, "track_id": np.int64(person.track_id),
        "frame_index": np.arange(first, first + len(person.valid), dtype=np.int64),
        "pose3d_camera": camera, "pose3d_world": world,
        "checkpoints": np.array([l.name for l in models.lifters]),
        "fps": np.float64(info.fps), "image_size": np.array([width, height], np.int64),
        "joint_names": np.array(H36M.joints), "joint_parents": np.array(H36M.parents, np.int64),
        "joints_left": np.array(H36M.left, np.int64), "joints_right": np.array(H36M.right, np.int64),
        "coco_joint_names": np.array(COCO.joints),
        "models_json": np.array(json.dumps(provenance)),
    }


def clip_summary(clip: Path, out: ClipOutputs, num_frames: int, pose2d, timer: StageTimer, total: float,
                 disagreement: dict[str, float]) -> str:
    main = pose2d.people[0]
    parts = [f"{clip.name}: {num_frames} frames, person {main.track_id} detected in {int(main.valid.sum())}"]
    speeds = [f"{name} {s['frames_per_second']:.1f} fps" for name, s in timer.stages.items() if "frames_per_second" in s]
    if "cached" in timer.stages.get("pose2d", {}):
        speeds.insert(0, "2D cached")
    parts.append(", ".join(speeds))
    if disagreement:
        parts.append("vs first checkpoint: " + ", ".join(f"{n} {d:.1f} mm" for n, d in disagreement.items()))
    parts.append(f"{total:.1f} s -> {out.folder}")
    return "; ".join(parts)
