"""What a run writes into outputs/<clip>/, and how: every file under a temporary name, moved into place when complete.

An error or Ctrl-C therefore never leaves a half-written file, and a clip whose run.json says its outputs are complete
for the same settings (the fingerprint) is skipped. The README documents every array of keypoints.npz.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from pipeline.skeleton import COCO, H36M

VERSIONED_PACKAGES = ("poseformerv2-demo", "torch", "torchvision", "numpy", "ultralytics", "opencv-python",
                      "imageio-ffmpeg", "safetensors")


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


def save_json(dest: Path, obj: dict, indent: int = 2) -> None:
    """`obj` as strict JSON (NaN and infinities as null, numpy values as plain numbers, anything else as its string),
    which every JSON reader takes, not only Python's."""
    with atomic_output(dest) as tmp:
        tmp.write_text(json.dumps(strict_json(obj), indent=indent, default=str, allow_nan=False) + "\n",
                       encoding="utf-8")


def strict_json(value):
    """`value` with every non-finite float replaced by None and numpy scalars and arrays turned into Python ones."""
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    if isinstance(value, np.ndarray):
        return strict_json(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


@dataclass
class ClipOutputs:
    """The paths of one clip's outputs: OUT/<clip name>/..."""

    folder: Path
    video: Path
    keypoints: Path
    run_json: Path
    cache: Path

    @classmethod
    def for_clip(cls, out_root: Path, clip: Path) -> ClipOutputs:
        folder = out_root / clip.stem
        return cls(folder=folder, video=folder / f"{clip.stem}_pose3d.mp4", keypoints=folder / "keypoints.npz",
                   run_json=folder / "run.json", cache=folder / "cache")

    def person_keypoints(self, track_id: int) -> Path:
        """keypoints.npz of another person than the followed one (--all-people)."""
        return self.folder / f"keypoints_person{track_id}.npz"

    def complete(self, fingerprint: str) -> bool:
        """True when run.json records this fingerprint and every output it lists exists."""
        if not self.run_json.is_file():
            return False
        try:
            previous = json.loads(self.run_json.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return previous.get("fingerprint") == fingerprint and all(
            (self.folder / name).is_file() for name in previous.get("outputs", ["?"]))


def keypoints_arrays(person, camera: np.ndarray, world: np.ndarray, world_rotation: np.ndarray, *,
                     checkpoint_names: list[str], models: dict,
                     fps: float, first_frame: int, image_size: tuple[int, int]) -> dict[str, np.ndarray]:
    """The contents of keypoints.npz for one person (a `pipeline.pose2d.Pose2DResult` and its (K, T, 17, 3) poses)."""
    return {
        "keypoints_2d": person.keypoints, "scores_2d": person.scores,
        "keypoints_2d_coco": person.keypoints_coco, "scores_2d_coco": person.scores_coco,
        "valid": person.valid, "span": person.span, "boxes": person.boxes, "track_id": np.int64(person.track_id),
        "frame_index": np.arange(first_frame, first_frame + len(person.valid), dtype=np.int64),
        "pose3d_camera": camera, "pose3d_world": world,
        "camera_to_world": np.asarray(world_rotation, np.float32),
        "checkpoints": np.array(checkpoint_names),
        "fps": np.float64(fps), "image_size": np.array(image_size, np.int64),
        "joint_names": np.array(H36M.joints), "joint_parents": np.array(H36M.parents, np.int64),
        "joints_left": np.array(H36M.left, np.int64), "joints_right": np.array(H36M.right, np.int64),
        "coco_joint_names": np.array(COCO.joints),
        "models_json": np.array(json.dumps(models)),
    }


def package_versions() -> dict[str, str]:
    """Python's and the main packages' versions, for run.json."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
