"""Optional export to Rerun (https://rerun.io): one .rrd with the clip, the 2D keypoints and every checkpoint's 3D.

Rerun's viewer (`rerun file.rrd`, or app.rerun.io) scrubs all of it on one `frame` timeline, overlays the 2D
skeleton on the video, and shows the 3D skeletons in a z-up world that can be turned around; the per-frame
disagreement of each checkpoint with the first and the detected/undetected flag come as plots. The HTML viewer
(`pipeline.viewer`) needs nothing installed; this export is for people who already use Rerun.

`rerun-sdk` is an optional dependency (`pip install -e .[rerun]`), imported only when `write_rerun` runs. The clip
goes in as a video asset (the file's bytes, not decoded frames), so the .rrd is the clip's size plus the poses:
measured 1.45 MB for a minute at 30 fps with one person and two checkpoints, written in 3.6 s. A clip that is not
MP4 is first re-encoded to H.264 MP4, which Rerun plays.
"""
from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.skeleton import H36M, Skeleton
from pipeline.viewer import COLORS, PoseArrays, check_timing, pose_arrays

log = logging.getLogger(__name__)

INSTALL_HINT = "the Rerun export needs the rerun-sdk package: pip install -e .[rerun]"


def import_rerun():
    """The `rerun` module, or an ImportError whose one line says how to install it."""
    try:
        import rerun
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return rerun


def _rgb(hex_color: str) -> tuple[int, int, int]:
    return tuple(int(hex_color[i:i + 2], 16) for i in (1, 3, 5))


def _joint_colors(skeleton: Skeleton) -> list[tuple[int, int, int]]:
    return [_rgb(COLORS[skeleton.side(j)]) for j in range(skeleton.num_joints)]


def _video_asset(rr, video_path: Path, workdir: Path):
    """An AssetVideo of the clip and its frames' timestamps (ns); non-MP4 clips are re-encoded to H.264 MP4 first."""
    if video_path.suffix.lower() != ".mp4":
        import imageio_ffmpeg

        converted = workdir / "clip.mp4"
        log.info("re-encoding %s to H.264 MP4 for Rerun", video_path.name)
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-nostdin", "-i", str(video_path), "-an",
                        "-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p",
                        "-fps_mode", "passthrough", str(converted)], check=True, capture_output=True)
        video_path = converted
    asset = rr.AssetVideo(path=video_path)
    try:
        timestamps = asset.read_frame_timestamps_nanos()
    except Exception as exc:  # rerun raises its own error types for unreadable files
        raise ValueError(f"Rerun cannot read {video_path.name} as a video: {exc}") from None
    return asset, np.asarray(timestamps, dtype=np.int64)


def _log_static(rr, rec, names: Sequence[str], arrays: PoseArrays, skeleton: Skeleton) -> None:
    colors = _joint_colors(skeleton)
    rec.log("/", rr.AnnotationContext([rr.ClassDescription(
        info=rr.AnnotationInfo(id=0, label=skeleton.name),
        keypoint_annotations=[rr.AnnotationInfo(id=j, label=name, color=colors[j])
                              for j, name in enumerate(skeleton.joints)],
        keypoint_connections=skeleton.bones)]), static=True)
    rec.log("world", rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True)
    if arrays.trajectory_world is not None:
        for k, name in enumerate(names):
            for p in range(arrays.valid.shape[0]):
                path = arrays.trajectory_world[k, p]
                rec.log(f"world/{rr.escape_entity_path_part(name)}/person{p}/trajectory",
                        rr.LineStrips3D([path[np.isfinite(path).all(axis=1)]], colors=[_rgb(COLORS["trajectory"])]),
                        static=True)


def _root_relative_distance_mm(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-joint distance of two (J, 3) poses after moving both roots to the origin: the runner's figure."""
    return float(np.nanmean(np.linalg.norm((a - a[:1]) - (b - b[:1]), axis=-1)) * 1000)


def _log_frame(rr, rec, t: int, names: Sequence[str], arrays: PoseArrays, skeleton: Skeleton) -> None:
    side_colors = _joint_colors(skeleton)
    grey = [_rgb(COLORS["invalid"])] * skeleton.num_joints
    joint_ids = np.arange(skeleton.num_joints)
    for p in range(arrays.valid.shape[0]):
        ok = bool(arrays.valid[p, t])
        # Colours on every frame: a component left out keeps its last value in Rerun, so grey would stick.
        colors = side_colors if ok else grey  # undetected: grey, as in the video
        rec.log(f"video/person{p}", rr.Points2D(arrays.keypoints_2d[p, t], class_ids=0, keypoint_ids=joint_ids,
                                                 colors=colors, radii=-3.0))  # negative radius: screen pixels
        rec.log(f"detected/person{p}", rr.Scalars(float(ok)))
        for k, name in enumerate(names):
            rec.log(f"world/{rr.escape_entity_path_part(name)}/person{p}",
                    rr.Points3D(arrays.poses_world[k, p, t], class_ids=0, keypoint_ids=joint_ids, colors=colors,
                                radii=0.02))
    for k, name in enumerate(names[1:], start=1):
        distance = _root_relative_distance_mm(arrays.poses_world[0, 0, t], arrays.poses_world[k, 0, t])
        rec.log(f"disagreement_mm/{rr.escape_entity_path_part(name)}", rr.Scalars(distance))


def write_rerun(
    dest: Path, *, fps: float, keypoints_2d: np.ndarray, valid: np.ndarray, poses_world: np.ndarray,
    checkpoint_names: Sequence[str], video_path: Path | None = None, trajectory_world: np.ndarray | None = None,
    frame_offset: int = 0, skeleton: Skeleton = H36M, application_id: str = "poseformerv2-demo",
) -> Path:
    """Write a Rerun recording to `dest` (.rrd, atomically) and return `dest`.

    Arrays as for `pipeline.viewer.write_viewer`: keypoints_2d (P, T, J, 2) pixels, valid (P, T), poses_world
    (K, P, T, J, 3) metres z up, one checkpoint name per K; trajectory_world (K, P, T, 3) is drawn as a line.
    video_path: the clip (any format ffmpeg reads; its frame `row + frame_offset` is shown with row `row`), or None.
    The timeline `frame` counts video frames, so rows are at frame_offset .. frame_offset + T - 1.
    """
    rr = import_rerun()
    arrays = pose_arrays(keypoints_2d, valid, poses_world, checkpoint_names, None, trajectory_world, skeleton)
    check_timing(fps, frame_offset)
    names = [str(n) for n in checkpoint_names]
    if video_path is not None and not Path(video_path).is_file():
        raise ValueError(f"video file not found: {video_path} (pass video_path=None to export without the clip)")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        with tempfile.TemporaryDirectory() as workdir:
            rec = rr.RecordingStream(application_id)
            rec.save(tmp)
            timestamps = None
            if video_path is not None:
                asset, timestamps = _video_asset(rr, Path(video_path), Path(workdir))
                rec.log("video", asset, static=True)
            _log_static(rr, rec, names, arrays, skeleton)
            for t in range(arrays.valid.shape[1]):
                frame = t + int(frame_offset)
                rec.set_time("frame", sequence=frame)
                if timestamps is not None:
                    ns = int(timestamps[frame]) if frame < len(timestamps) else round(frame / fps * 1e9)
                    rec.log("video", rr.VideoFrameReference(nanoseconds=ns))
                _log_frame(rr, rec, t, names, arrays, skeleton)
            rec.flush()
            rec.disconnect()
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest
