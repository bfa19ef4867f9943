"""Interactive HTML viewer: the clip with its 2D skeleton, and every checkpoint's 3D skeleton to turn around.

A rendered mp4 fixes the viewpoint; to judge a 3D pose people want to orbit it. `write_viewer` writes ONE
self-contained HTML file that opens from disk (file://) in a current browser with no server and no network:
three.js (vendored, `pipeline/assets/`), the viewer script and the pose data are inlined; the clip itself is only
referenced by a relative path, so the page stays small: for a minute of 30 fps video, 1.32 MB with one checkpoint
(0.60 MB of it three.js and the viewer script, 0.37 MB the 2D keypoints) and 0.37 MB more per further checkpoint.

The data goes in as compact JSON of integers: 2D keypoints in 0.1 px, 3D joints in mm (null for a missing joint);
the valid mask and the low-confidence mask as strings of 0/1. The page recomputes everything else (the 3D view
limits, the per-frame disagreement between checkpoints) from these, so nothing is stored twice.
"""
from __future__ import annotations

import html
import json
import math
import os
import re
import tempfile
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np

from pipeline.render import CENTER_BGR, INVALID_BGR, LEFT_BGR, RIGHT_BGR
from pipeline.skeleton import H36M, Skeleton

SCALE_2D = 10  # JSON units per pixel: 0.1 px, far below what a detector resolves
SCALE_3D = 1000  # JSON units per metre: 1 mm, far below the lifter's ~45 mm error
THREE_BUNDLE = "three-viewer.iife.min.js"  # three.js 0.187.0: core, OrbitControls, fat lines (see assets/README.md)


@dataclass(frozen=True)
class ViewerConfig:
    elev: float = 15.0  # starting view, degrees of the eye above the ground (as pipeline.render.RenderConfig)
    azim: float = 70.0  # degrees of rotation of the eye about the vertical axis
    fov: float = 35.0  # vertical field of view of the 3D camera, degrees
    min_score: float = 0.3  # 2D joints scored below this are drawn dimmed (when scores are given)
    grid_spacing: float = 0.25  # metres between ground grid lines
    margin: float = 0.15  # metres of free ground around the clip's poses
    line_width: float = 4.0  # 3D bone width, CSS pixels
    joint_radius: float = 0.022  # metres


def _hex(bgr: tuple[int, int, int]) -> str:
    b, g, r = bgr
    return f"#{r:02x}{g:02x}{b:02x}"


def _dim_hex(bgr: tuple[int, int, int], amount: float = 0.55) -> str:
    """pipeline.render's dimming of low-confidence joints: blend towards grey."""
    return _hex(tuple(int(c * (1 - amount) + 128 * amount) for c in bgr))


# The video's palette (pipeline/render.py): left blue, right orange-red, spine green, undetected grey.
COLORS = {
    "left": _hex(LEFT_BGR), "right": _hex(RIGHT_BGR), "center": _hex(CENTER_BGR), "invalid": _hex(INVALID_BGR),
    "dimmed": {"left": _dim_hex(LEFT_BGR), "right": _dim_hex(RIGHT_BGR), "center": _dim_hex(CENTER_BGR)},
    "background": "#202020", "ground": "#3a3a3a", "grid": "#5f5f5f", "shadow": "#141414", "trajectory": "#e6c84a",
}


def _with_people_axis(array: np.ndarray, ndim_without: int, name: str, people_axis: int = 0) -> np.ndarray:
    """Accept one person without the P axis: insert it."""
    array = np.asarray(array)
    if array.ndim == ndim_without:
        array = np.expand_dims(array, people_axis)
    if array.ndim != ndim_without + 1:
        raise ValueError(f"{name} has shape {array.shape}: expected {ndim_without + 1} axes (see write_viewer)")
    return array


class PoseArrays(NamedTuple):
    keypoints_2d: np.ndarray  # (P, T, J, 2) pixels
    valid: np.ndarray  # (P, T) bool
    poses_world: np.ndarray  # (K, P, T, J, 3) metres, z up
    scores_2d: np.ndarray | None  # (P, T, J)
    trajectory_world: np.ndarray | None  # (K, P, T, 3) metres


def _optional(array: np.ndarray | None, shape: tuple[int, ...], name: str, people_axis: int) -> np.ndarray | None:
    if array is None:
        return None
    array = _with_people_axis(array, len(shape) - 1, name, people_axis).astype(np.float64)
    if array.shape != shape:
        raise ValueError(f"{name} has shape {array.shape}: expected {shape}")
    return array


def pose_arrays(keypoints_2d: np.ndarray, valid: np.ndarray, poses_world: np.ndarray, checkpoint_names: Sequence[str],
                scores_2d: np.ndarray | None = None, trajectory_world: np.ndarray | None = None,
                skeleton: Skeleton = H36M) -> PoseArrays:
    """Check the arrays the viewer and the Rerun export take (shapes as in `write_viewer`) and give them their P axis
    when a single person came without it."""
    kp = _with_people_axis(keypoints_2d, 3, "keypoints_2d").astype(np.float64)
    ok = _with_people_axis(valid, 1, "valid").astype(bool)
    worlds = _with_people_axis(poses_world, 4, "poses_world", people_axis=1).astype(np.float64)
    people, frames, joints = kp.shape[0], kp.shape[1], skeleton.num_joints
    if kp.shape[2:] != (joints, 2):
        raise ValueError(f"keypoints_2d has shape {kp.shape}: expected (P, T, {joints}, 2) pixels")
    if frames < 1:
        raise ValueError("keypoints_2d has no frames: nothing to show")
    if ok.shape != (people, frames):
        raise ValueError(f"valid has shape {ok.shape}: expected (P, T) = ({people}, {frames})")
    if worlds.shape[1:] != (people, frames, joints, 3) or worlds.shape[0] < 1:
        raise ValueError(f"poses_world has shape {worlds.shape}: expected (K, P, T, {joints}, 3) = "
                         f"(K, {people}, {frames}, {joints}, 3) metres, z up")
    checkpoints = worlds.shape[0]
    if len(checkpoint_names) != checkpoints:
        raise ValueError(f"got {len(checkpoint_names)} checkpoint names for {checkpoints} checkpoints in poses_world")
    return PoseArrays(kp, ok, worlds, _optional(scores_2d, (people, frames, joints), "scores_2d", 0),
                      _optional(trajectory_world, (checkpoints, people, frames, 3), "trajectory_world", 1))


def check_timing(fps: float, frame_offset: int) -> None:
    if not (isinstance(fps, (int, float, np.number)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if int(frame_offset) < 0:
        raise ValueError(f"frame_offset must be >= 0 (the video frame of the first row), got {frame_offset}")


def _quantise(values: np.ndarray, scale: int) -> list:
    """Flat list of integers in 1/scale units; non-finite values become null."""
    flat = np.asarray(values, dtype=np.float64).ravel() * scale
    finite = np.isfinite(flat)
    ints = np.round(np.where(finite, flat, 0.0)).astype(np.int64)
    if finite.all():
        return ints.tolist()
    return [int(v) if ok else None for v, ok in zip(ints.tolist(), finite.tolist(), strict=True)]


def _bits(mask: np.ndarray) -> str:
    return "".join("1" if v else "0" for v in np.asarray(mask, dtype=bool).ravel())


def _check_video_relpath(video_relpath: str) -> str:
    path = PurePosixPath(str(video_relpath).replace(os.sep, "/"))
    if not str(video_relpath) or path.is_absolute() or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", str(video_relpath)):
        raise ValueError(f"video_relpath must be a path relative to the HTML file (e.g. '../../videos/clip.mp4'), "
                         f"got {video_relpath!r}: an absolute path or URL would not survive moving the folder")
    return str(path)


def viewer_payload(
    *, video_relpath: str, fps: float, image_size: tuple[int, int], keypoints_2d: np.ndarray, valid: np.ndarray,
    poses_world: np.ndarray, checkpoint_names: Sequence[str], scores_2d: np.ndarray | None = None,
    trajectory_world: np.ndarray | None = None, frame_offset: int = 0, title: str = "3D pose viewer",
    skeleton: Skeleton = H36M, config: ViewerConfig = ViewerConfig(), flip_disagreement_mm: np.ndarray | None = None,
) -> dict:
    """The page's data as a JSON-ready dict; arguments as for `write_viewer`."""
    arrays = pose_arrays(keypoints_2d, valid, poses_world, checkpoint_names, scores_2d, trajectory_world, skeleton)
    check_timing(fps, frame_offset)
    people, frames = arrays.valid.shape
    width, height = (int(v) for v in image_size)
    if width <= 0 or height <= 0:
        raise ValueError(f"image_size must be a positive (width, height), got {tuple(image_size)!r}")
    relpath = _check_video_relpath(video_relpath)
    checkpoints = range(len(arrays.poses_world))
    traj = arrays.trajectory_world
    spread = _optional(flip_disagreement_mm, (len(checkpoints), people, frames), "flip_disagreement_mm", 1)
    return {
        "version": 1, "title": str(title), "videoName": PurePosixPath(relpath).name,
        "videoUrl": urllib.parse.quote(relpath), "fps": float(fps), "imageSize": [width, height],
        "frames": frames, "people": people, "frameOffset": int(frame_offset),
        "checkpoints": [str(n) for n in checkpoint_names],
        "skeleton": {"name": skeleton.name, "joints": list(skeleton.joints), "parents": list(skeleton.parents),
                     "left": list(skeleton.left), "right": list(skeleton.right)},
        "scale2d": SCALE_2D, "scale3d": SCALE_3D,
        "keypoints2d": [_quantise(arrays.keypoints_2d[p], SCALE_2D) for p in range(people)],
        "valid": [_bits(arrays.valid[p]) for p in range(people)],
        "confident": None if arrays.scores_2d is None else
        [_bits(arrays.scores_2d[p] >= config.min_score) for p in range(people)],
        "poses3d": [[_quantise(arrays.poses_world[k, p], SCALE_3D) for p in range(people)] for k in checkpoints],
        "trajectory": None if traj is None else
        [[_quantise(traj[k, p], SCALE_3D) for p in range(people)] for k in checkpoints],
        "flipSpread": None if spread is None else  # mm, whole numbers
        [[_quantise(spread[k, p], 1) for p in range(people)] for k in checkpoints],
        "colors": COLORS,
        "view": {"elev": config.elev, "azim": config.azim, "fov": config.fov, "gridSpacing": config.grid_spacing,
                 "margin": config.margin, "lineWidth": config.line_width, "jointRadius": config.joint_radius},
    }


def _asset(name: str) -> str:
    return resources.files("pipeline").joinpath("assets", name).read_text(encoding="utf-8")


def viewer_html(payload: dict) -> str:
    """The whole page for a `viewer_payload` dict: template + data + three.js + viewer script."""
    data = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    # "<" only occurs inside JSON strings, where \u003c means the same: no "</script>" can end the data early.
    data = data.replace("<", "\\u003c")
    # three.js's MIT notice travels with every copy of the library, so with every page.
    three = f"/*! three.js, bundled from the npm package (pipeline/assets/README.md)\n{_asset('LICENSE-three.txt')}*/\n"
    parts = {"TITLE": html.escape(payload["title"]), "DATA_JSON": data, "THREE_JS": three + _asset(THREE_BUNDLE),
             "VIEWER_JS": _asset("viewer.js")}
    for name in ("THREE_JS", "VIEWER_JS"):
        if "</script" in parts[name].lower():
            raise ValueError(f"pipeline/assets: {name} contains '</script' and cannot be inlined")
    # One pass: text put in is never scanned again for placeholders.
    return re.sub(r"\{\{([A-Z_]+)\}\}", lambda m: parts[m.group(1)], _asset("viewer.html"))


def write_viewer(
    dest: Path, *, video_relpath: str, fps: float, image_size: tuple[int, int], keypoints_2d: np.ndarray,
    valid: np.ndarray, poses_world: np.ndarray, checkpoint_names: Sequence[str], scores_2d: np.ndarray | None = None,
    trajectory_world: np.ndarray | None = None, frame_offset: int = 0, title: str = "3D pose viewer",
    skeleton: Skeleton = H36M, config: ViewerConfig = ViewerConfig(), flip_disagreement_mm: np.ndarray | None = None,
) -> Path:
    """Write the viewer page to `dest` (atomically: a temporary file, then os.replace) and return `dest`.

    video_relpath: the clip, relative to `dest`'s folder (what the browser plays; keep it next to the page).
    fps, image_size: the clip's frame rate and upright (width, height) in pixels.
    keypoints_2d: (P, T, J, 2) pixels, the followed person first; valid: (P, T) bool, detected in that frame.
    poses_world: (K, P, T, J, 3) metres, z up (keypoints.npz's `pose3d_world`), one row per checkpoint_names entry.
    scores_2d: optional (P, T, J) confidences (below config.min_score drawn dimmed).
    trajectory_world: optional (K, P, T, 3) root path in the same world coordinates, drawn as a line.
    frame_offset: the video frame of row 0 (`--start`). A single person may drop the P axis everywhere.
    flip_disagreement_mm: optional (K, P, T) how far apart the flip test's two passes put the joints (keypoints.npz's
    `flip_disagreement_mm`), shown per frame under each checkpoint's name for the followed person.
    """
    payload = viewer_payload(
        video_relpath=video_relpath, fps=fps, image_size=image_size, keypoints_2d=keypoints_2d, valid=valid,
        poses_world=poses_world, checkpoint_names=checkpoint_names, scores_2d=scores_2d,
        trajectory_world=trajectory_world, frame_offset=frame_offset, title=title, skeleton=skeleton, config=config,
        flip_disagreement_mm=flip_disagreement_mm)
    page = viewer_html(payload)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the page is meant to be opened and shared
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


__all__ = ["COLORS", "SCALE_2D", "SCALE_3D", "PoseArrays", "ViewerConfig", "check_timing", "pose_arrays", "viewer_html",
           "viewer_payload", "write_viewer"]
