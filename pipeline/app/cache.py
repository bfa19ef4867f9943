"""The 2D stage's result cached per clip and 2D settings, and the fingerprints that key caches and skip checks.

Detection is the slow stage; a new lifter checkpoint, another 3D view or `--no-render` should not redo it. The cache
key hashes what decides the 2D result (the clip's identity, the frame range, the detector, the keypoint backend and
its weights, whom to follow); a file's identity is its path, size and modification time, which is cheap and changes
whenever the file is replaced.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from pipeline.app.outputs import save_npz

# Bump when the 2D stage's output changes meaning, so that old caches are not reused.
# 2: every person's `span`, the detector input size (`detection`), tracks linked by predicted motion.
# 3: the probe reads keyframes; the detector's frames decoded at the letterbox size (decode_at_input_size).
# 4: the picture's quarter turn chosen per clip (`pipeline.orientation`), recorded as `turn`; a second box on a
#    tracked person starts no track (`TrackerConfig.duplicate_oks`).
POSE2D_CACHE_VERSION = 4
_PERSON_ARRAYS = ("keypoints_coco", "scores_coco", "keypoints", "scores", "valid", "boxes", "span")


def file_fingerprint(path: Path) -> str:
    """Cheap identity of a file for cache keys: resolved path, size and modification time."""
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def short_hash(obj: object) -> str:
    """16 hex digits of the SHA-256 of `obj` as sorted JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_pose2d_cache(path: Path, output) -> None:
    """Write a `pipeline.pose2d.Pose2DOutput` (every followed person's arrays, the track summaries) atomically."""
    arrays = {"num_frames": np.int64(output.num_frames), "image_size": np.array(output.image_size, np.int64),
              "tracks_json": np.array(json.dumps(output.tracks)),
              "detection_json": np.array(json.dumps(output.detection)),
              "track_ids": np.array([p.track_id for p in output.people], np.int64), "turn": np.int64(output.turn),
              "turn_given": np.bool_(output.turn_given)}
    for name in _PERSON_ARRAYS:
        arrays[name] = np.stack([getattr(p, name) for p in output.people])
    save_npz(path, arrays)


def load_pose2d_cache(path: Path):
    """The `Pose2DOutput` that `save_pose2d_cache` wrote."""
    from pipeline.pose2d import Pose2DOutput, Pose2DResult

    with np.load(path) as data:
        people = [Pose2DResult(track_id=int(tid), **{name: data[name][i] for name in _PERSON_ARRAYS})
                  for i, tid in enumerate(data["track_ids"])]
        return Pose2DOutput(people=people, tracks=json.loads(str(data["tracks_json"])),
                            num_frames=int(data["num_frames"]), image_size=tuple(int(v) for v in data["image_size"]),
                            detection=json.loads(str(data["detection_json"])), turn=int(data["turn"]),
                            turn_given=bool(data["turn_given"]))
