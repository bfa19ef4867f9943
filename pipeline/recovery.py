"""Finding a followed person again where the detector lost them: a second look, zoomed in on where they should be.

Why: a detector misses people it would find when they fill more of its input, in glare, backlight and motion blur
more than for their size. The sample clip's jumper, backlit by the sun, is missed at 640 px in the 23 frames of his
jump (his best boxes score 0.02-0.03, under the detector's 0.1): the one moment of the clip worth lifting was an
interpolation. Looked at again, the 45 frames of his track without a confident detection (measured 2 December, one
core, OpenVINO; in brackets PyTorch, whose first pass leaves 39; frames read and detected, seconds): the whole frames
at 960 px found him (confidence 0.5 or more) in 20 [19] and took 11.3 s [18.7]; square crops around where his track
puts him, twice his height on a side, at 480 px (he is then about 240 px tall at the detector's input), in 26 [21]
and 5.8 s [5.1]; the same crops at 320 px in 19 [7], 3.6 s [3.1], at 640 px in 26 [24], 6.7 s [9.7].

    gap_frames(track) -> crop_around(frame, expected box) -> detector at `imgsz` -> shifted -> match_detection
        -> with_detections(track, recovered)

Which frames: inside a followed track, between two of its confident detections (at least the tracker's
`new_track_conf`, what `valid` means), runs of frames without a confident one, up to `max_gap` frames long (the
tracker's fragment linking bridges at most that). Before the first and after the last detection nothing is
recovered: whether the person is there at all is the tracker's call.

Which detection is the person: the one whose box centre is nearest to where the track's boxes put the person (linear
interpolation across the gap), within `max_distance` box heights (the crop reaches that far), with a height within
`max_size_ratio` of the expected one, and not someone else: a box another track holds in that frame (IoU at least
`other_iou`) is theirs, and so is a box the second look already gave another followed person. A recovered detection
replaces a weaker one the track had in that frame and is otherwise added; below the tracker's `new_track_conf` it
fills its frame but, as in the first pass, does not count as detected.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.detection import FrameDetections, box_iou
from pipeline.tracking import TrackSequence


@dataclass
class RecoveryConfig:
    enabled: bool = True
    crop: float = 2.0  # side of the square crop around the expected box, in the box's larger side
    imgsz: int = 480  # the detector's input size for a crop: the person it expects is about 240 px tall there
    max_gap: int = 60  # longest run of frames recovered, at 30 frames/s (the tracker's link_max_gap)
    max_distance: float = 1.0  # box centre from the expected one, in expected box heights
    max_size_ratio: float = 1.5  # box height against the expected one, either way
    other_iou: float = 0.5  # a box overlapping another track's box in that frame this much is that person


def gap_frames(track: TrackSequence, detected_conf: float, max_gap: int) -> np.ndarray:
    """(N,) int: the frames between two of the track's confident detections that have none, in runs of at most
    max_gap frames."""
    confident = track.frames[track.confidences >= detected_conf]
    gaps = [np.arange(a + 1, b) for a, b in zip(confident[:-1], confident[1:], strict=True) if 1 < b - a <= max_gap + 1]
    return np.concatenate(gaps).astype(np.int64) if gaps else np.zeros(0, np.int64)


def expected_boxes(track: TrackSequence, frames: np.ndarray) -> np.ndarray:
    """(N, 4): the track's boxes linearly interpolated at `frames` (inside the track's span)."""
    return np.stack([np.interp(frames, track.frames, track.boxes[:, k]) for k in range(4)], axis=1)


def crop_around(frame: np.ndarray, box: np.ndarray, config: RecoveryConfig) -> tuple[np.ndarray, np.ndarray]:
    """The square of side `config.crop` x the box's larger side centred on `box` (4,), clipped to the frame: (crop,
    (x0, y0) its top-left corner in the frame)."""
    height, width = frame.shape[:2]
    centre = (np.asarray(box[:2], np.float64) + box[2:]) / 2
    half = config.crop * max(float(box[2] - box[0]), float(box[3] - box[1]), 1.0) / 2
    x0, y0 = (int(np.clip(np.floor(v - half), 0, size - 1)) for v, size in zip(centre, (width, height), strict=True))
    x1, y1 = (int(np.clip(np.ceil(v + half), lo + 1, size)) for v, lo, size in
              zip(centre, (x0, y0), (width, height), strict=True))
    return frame[y0:y1, x0:x1], np.array([x0, y0], np.float32)


def shifted(detections: FrameDetections, offset: np.ndarray) -> FrameDetections:
    """Detections in a crop's pixels -> in the frame's, the crop's top-left corner at `offset` (x0, y0)."""
    return FrameDetections(detections.boxes + np.tile(offset, 2), detections.confidences,
                           None if detections.keypoints is None else detections.keypoints + offset,
                           detections.keypoint_scores)


def match_detection(expected: np.ndarray, detections: FrameDetections, others: np.ndarray,
                    config: RecoveryConfig) -> int | None:
    """Index of the detection that is the person expected at box `expected` (4,), or None. `others` (K, 4): the boxes
    other tracks hold in this frame."""
    if len(detections) == 0:
        return None
    height = max(float(expected[3] - expected[1]), 1.0)
    centre = (expected[:2] + expected[2:]) / 2
    boxes = detections.boxes.astype(np.float64)
    distance = np.linalg.norm((boxes[:, :2] + boxes[:, 2:]) / 2 - centre, axis=1) / height
    ratio = np.clip(boxes[:, 3] - boxes[:, 1], 1.0, None) / height
    ok = (distance <= config.max_distance) & (ratio <= config.max_size_ratio) & (ratio >= 1 / config.max_size_ratio)
    if len(others):
        ok &= box_iou(boxes, np.asarray(others, np.float64)).max(axis=1) < config.other_iou
    if not ok.any():
        return None
    return int(np.flatnonzero(ok)[np.argmin(distance[ok])])


def with_detections(track: TrackSequence, frames: np.ndarray, found: list[FrameDetections],
                    chosen: list[int | None]) -> tuple[TrackSequence, int]:
    """The track with detection chosen[i] of found[i] at frames[i] added, or replacing the track's own detection in
    that frame where it is more confident; and how many frames changed."""
    def row(source, i: int) -> tuple:  # (box, confidence, keypoints, keypoint scores) of one detection
        return (source.boxes[i], source.confidences[i],
                None if source.keypoints is None else source.keypoints[i],
                None if source.keypoint_scores is None else source.keypoint_scores[i])

    rows = {int(f): row(track, i) for i, f in enumerate(track.frames)}
    changed = 0
    for frame, detections, index in zip(frames, found, chosen, strict=True):
        if index is None or (int(frame) in rows and rows[int(frame)][1] >= detections.confidences[index]):
            continue
        if track.keypoints is not None and detections.keypoints is None:
            raise ValueError("the track has keypoints, the recovered detections do not")
        rows[int(frame)] = row(detections, index)
        changed += 1
    order = sorted(rows)

    def column(k: int) -> np.ndarray | None:
        values = [rows[f][k] for f in order]
        return None if values[0] is None else np.stack(values).astype(np.float32)

    return TrackSequence(track.track_id, np.asarray(order, np.int64), column(0), column(1), column(2),
                         column(3)), changed


def other_boxes(tracks: list[TrackSequence], track_id: int, frame: int) -> np.ndarray:
    """(K, 4): the boxes the tracks other than `track_id` hold in `frame`."""
    boxes = []
    for t in tracks:
        row = int(np.searchsorted(t.frames, frame))
        if t.track_id != track_id and row < len(t.frames) and t.frames[row] == frame:
            boxes.append(t.boxes[row])
    return np.stack(boxes) if boxes else np.zeros((0, 4), np.float32)
