"""Videos stored turned: which quarter turn stands the people up for the detector, and frames turned that way.

Why: a phone stores portrait video as landscape pixels plus a rotation flag, and the decoder turns the frames by it
(`pipeline.media.ffmpeg`). A file that lost the flag (some editors and converters drop it, screen recordings never
had it) decodes lying on its side or upside down. The lifter copes with a turned picture (`pipeline.virtual_camera`
rolls its camera to stand the person up), but the detector does not: on the sample clip stored turned 90 degrees,
yolo11n-pose finds a person at >= 0.5 confidence in 77 of 230 frames instead of 226, upside down in 109, and
keypoints on those it finds score 0.60-0.65 instead of 0.85 (measured 2 December, all frames at 640).

How: the few probe frames the input-size choice reads anyway (`pipeline.imgsz`) are run through the detector as they
are; when a confident person standing up in the picture (trunk within 45 degrees of its up) is in at least half of
them, the picture is taken as upright and nothing more is done (the probe's detections are shared with the
input-size choice, so an upright clip costs nothing extra). Otherwise the three other quarter turns are probed too,
and the one that finds standing people in at least half the probe frames, with clearly more confidence than the
stored picture (`min_gain`), is chosen. Standing, not just found: at the probe's 1280 px the detector finds many
people lying in a turned picture, with their keypoints as they lie. The whole 2D stage then runs on frames
turned that way (`turned_frames`), and its keypoints and boxes are turned back into the stored picture's pixels, so
every output (the overlay, keypoints.npz, the viewer) stays in the coordinates of the video as it plays. The runner
(and the multi-view evaluation) lifts the people on the picture turned upright (`turn_points`), as it would lift the
upright video, and turns the 3D back into the stored camera's frame (`lift_turned`); only a turn given as a setting
also turns the world view (`pipeline.motion.level`), since people lying in an upright video stand up in a turned
picture just as well.

Turns are clockwise degrees (0, 90, 180, 270): what turns the stored picture so that its people stand up, as
`cv2.ROTATE_90_CLOCKWISE` is 90. Points are continuous pixel coordinates (a pixel's edges at whole numbers, as the
detector's letterbox scaling maps them): turned 90 degrees clockwise, a picture W wide and H high is H wide and W
high, and its point (x, y) lands at (H - y, x).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.virtual_camera import lift_aimed, roll_rotation

logger = logging.getLogger(__name__)

AUTO = "auto"
TURNS = (0, 90, 180, 270)

Detect = Callable[[Sequence[np.ndarray], int], list]  # (frames, turn) -> one FrameDetections per frame


@dataclass(frozen=True)
class AutoTurnConfig:
    probe_conf: float = 0.5  # boxes at least this confident count as people (the tracker's new_track_conf)
    # A person stands up when their trunk leans at most this far from the picture's up. The detector finds people
    # lying in a turned picture (at 1280 the sample clip turned a quarter has a person >= 0.5 in 4 of 6 probe frames)
    # but places their keypoints as they lie: trunks 80-121 degrees from the picture's up, against 0-19 upright.
    max_lean_deg: float = 45.0
    # A turn whose probe frames hold a confident, standing person at least this often stands the people up: the
    # stored picture is kept when it does, and another turn must.
    min_share: float = 0.5
    # Another turn is chosen only when its probe frames' confidences (of standing people) add up to this many times
    # the stored picture's. The sample clip turned a quarter / a half: 5.5 for the turn back, at most 2.1 / 1.3 for
    # the others and the stored picture (a person now and then found standing in a turned picture, keypoints wrong).
    min_gain: float = 1.5

    def __post_init__(self) -> None:
        if not 0 < self.min_share <= 1 or self.min_gain < 1 or not 0 < self.max_lean_deg < 90:
            raise ValueError("need 0 < min_share <= 1, min_gain >= 1 and 0 < max_lean_deg < 90")


def parse_turn(value: int | str) -> int | str:
    """'auto' or a clockwise quarter turn in degrees (0, 90, 180, 270); anything else is a ValueError that says so."""
    text = str(value).strip().lower()
    if text == AUTO:
        return AUTO
    if text.lstrip("-").isdigit() and int(text) % 360 in TURNS:
        return int(text) % 360
    raise ValueError(f"turn must be 'auto' or a clockwise quarter turn in degrees (0, 90, 180 or 270), not {value!r}")


def turned_size(size: tuple[int, int], turn: int) -> tuple[int, int]:
    """(width, height) of a picture of `size` turned by `turn` degrees."""
    return (size[1], size[0]) if turn % 180 else (size[0], size[1])


def turn_image(image: np.ndarray, turn: int) -> np.ndarray:
    """`image` (H, W, ...) turned `turn` degrees clockwise, as a new contiguous array (the detector needs one)."""
    return np.ascontiguousarray(np.rot90(image, -(turn // 90)))


def turn_points(points: np.ndarray, turn: int, size: tuple[int, int]) -> np.ndarray:
    """Points (..., 2) in a picture of `size` (width, height) -> where they are in the picture turned `turn` degrees
    clockwise. `turn_points(p, (360 - turn) % 360, turned_size(size, turn))` turns them back."""
    points = np.asarray(points)
    x, y = points[..., 0], points[..., 1]
    width, height = size
    turned = {0: (x, y), 90: (height - y, x), 180: (width - x, height - y), 270: (y, width - x)}[turn % 360]
    return np.stack(turned, axis=-1).astype(points.dtype)


def turn_boxes(boxes: np.ndarray, turn: int, size: tuple[int, int]) -> np.ndarray:
    """Boxes (..., 4) xyxy in a picture of `size` -> the same boxes in the picture turned `turn` degrees clockwise."""
    boxes = np.asarray(boxes)
    corners = turn_points(boxes.reshape(boxes.shape[:-1] + (2, 2)), turn, size)
    return np.concatenate([corners.min(axis=-2), corners.max(axis=-2)], axis=-1).astype(boxes.dtype)


def display_rotation(turn: int) -> int:
    """ffmpeg's `-display_rotation` (counter-clockwise degrees) whose rotation flag makes players, and this project's
    decoder, show a video upright whose picture needs turning `turn` degrees clockwise."""
    return (360 - turn) % 360


def turn_rotation(turn: int) -> np.ndarray:
    """(3, 3) the rotation that takes camera-frame vectors of the stored picture's camera (x right, y down, z forward)
    to those of the same camera turned as the picture is turned `turn` degrees clockwise (about its axis):
    `pipeline.virtual_camera.roll_rotation` of a quarter turn, exact."""
    return np.rint(roll_rotation(np.radians(turn % 360)))


def lift_turned(lifter, keypoints_px: np.ndarray, size: tuple[int, int], turn: int, focal_px: float | None,
                frames: np.ndarray | None = None, upright: bool = True, quiet: bool = False,
                **lift_options) -> np.ndarray:
    """A person's (T, 17, 2) Human3.6M keypoints in the pixels of a picture stored `size` (width, height) and turned
    `turn` degrees from upright -> (T, 17, 3) root-relative poses in the stored picture's camera frame, metres.
    Lifted as the upright picture would be (`turn_points`): through a virtual camera aimed at the person
    (`pipeline.virtual_camera.lift_aimed`, with `focal_px`, `frames` and `upright`) or, with focal_px None, as the
    camera sees them; then turned back (`turn_rotation`). demo.py and the multi-view evaluation both lift so.
    `quiet`: the virtual camera logs nothing (a second pass over a track). `lift_options` go to `lifter.lift` (flip,
    batch_size, progress, stride, flip_difference)."""
    width, height = turned_size(size, turn)
    points = turn_points(keypoints_px, turn, size) if turn else np.asarray(keypoints_px)
    if focal_px is None:
        poses = lifter.lift(points, width, height, **lift_options).camera
    else:
        poses = lift_aimed(lifter, points, width, height, focal_px, frames=frames, upright=upright, quiet=quiet,
                           **lift_options)
    if turn:  # row vectors: X_stored = X_turned @ R
        poses = poses @ turn_rotation(turn).astype(poses.dtype)
    return poses


def stands_up(detections, index: int, max_lean_deg: float) -> bool:
    """Whether person `index` of a frame's detections stands up in the picture: their trunk (mid-hips to
    mid-shoulders, COCO keypoints 11/12 and 5/6) within `max_lean_deg` of the picture's up; without keypoints (a
    detection-only model), a box at least as tall as it is wide."""
    if detections.keypoints is None:
        x0, y0, x1, y1 = detections.boxes[index]
        return bool(y1 - y0 >= x1 - x0)
    k = detections.keypoints[index]
    trunk = (k[5] + k[6] - k[11] - k[12]) / 2
    return bool(np.degrees(np.arctan2(abs(trunk[0]), -trunk[1])) <= max_lean_deg)


def probe_scores(detections: list, config: AutoTurnConfig) -> np.ndarray:
    """(frames,) each probe frame's best person's confidence where it reaches `probe_conf` and that person stands up
    in the picture (`stands_up`), else 0."""
    scores = np.zeros(len(detections))
    for frame, found in enumerate(detections):
        if len(found.confidences):
            best = int(np.argmax(found.confidences))
            if found.confidences[best] >= config.probe_conf and stands_up(found, best, config.max_lean_deg):
                scores[frame] = float(found.confidences[best])
    return scores


def choose_turn(detect: Detect, frames: Sequence[np.ndarray], config: AutoTurnConfig) -> tuple[int, dict]:
    """The clockwise quarter turn that stands the people of `frames` (a sample of the clip) up for the detector, and
    what run.json should record: per probed turn, the probe frames with a confident person standing up and the sum of
    their confidences."""
    if not frames:
        raise ValueError("choosing the turn needs at least one frame")
    needed = config.min_share * len(frames)
    probed: dict[int, np.ndarray] = {0: probe_scores(detect(frames, 0), config)}
    chosen = 0
    if np.count_nonzero(probed[0]) < needed:
        for turn in TURNS[1:]:
            probed[turn] = probe_scores(detect(frames, turn), config)
        best = max(TURNS[1:], key=lambda turn: probed[turn].sum())
        if np.count_nonzero(probed[best]) >= needed and probed[best].sum() >= config.min_gain * probed[0].sum():
            chosen = best
    probes = {str(turn): {"standing_frames": int(np.count_nonzero(scores)), "confidence": round(float(scores.sum()), 2)}
              for turn, scores in probed.items()}
    record = {"turn": chosen, "chosen": AUTO, "probe_frames": len(frames), "probed": probes}
    if chosen:
        logger.info("the video looks stored turned: the detector finds people standing in %d of %d probe frames "
                    "turned %d degrees clockwise, %d as stored; the 2D stage detects on frames turned so (--turn 0: "
                    "as stored). To play it upright: ffmpeg -display_rotation:v:0 %d -i IN -c copy OUT",
                    np.count_nonzero(probed[chosen]), len(frames), chosen, np.count_nonzero(probed[0]),
                    display_rotation(chosen))
    return chosen, record


class TurnedFrames:
    """A frame source that can seek and decode at another size (`pipeline.media.decode.VideoFrames`), its frames
    turned `turn` degrees clockwise. The size it reports, `at_size` and `read_ahead` are those of the turned frames;
    the underlying source decodes at the matching stored size, so a read-ahead started before the turn was known is
    still taken."""

    def __init__(self, frames, turn: int):
        self.frames, self.turn = frames, turn

    def __call__(self) -> Iterator[np.ndarray]:
        return (turn_image(frame, self.turn) for frame in self.frames())

    @property
    def size(self) -> tuple[int, int]:
        return turned_size(self.frames.size, self.turn)

    def at_size(self, size: tuple[int, int]) -> Callable[[], Iterator[np.ndarray]]:
        opener = self.frames.at_size(turned_size(size, self.turn))
        return lambda: (turn_image(frame, self.turn) for frame in opener())

    def read_ahead(self, size: tuple[int, int], depth: int) -> None:
        read_ahead = getattr(self.frames, "read_ahead", None)
        if callable(read_ahead):
            read_ahead(turned_size(size, self.turn), depth)

    def count(self) -> int | None:
        return self.frames.count()

    def keyframes(self) -> list[int] | None:
        return getattr(self.frames, "keyframes", lambda: None)()

    def frames_at(self, numbers: Sequence[int]) -> list[np.ndarray] | None:
        images = self.frames.frames_at(numbers)
        return None if images is None else [turn_image(image, self.turn) for image in images]

    def prefetch(self, pick: Callable[[int, list[int]], Sequence[int]]) -> None:
        prefetch = getattr(self.frames, "prefetch", None)
        if callable(prefetch):
            prefetch(pick)

    def close(self) -> None:
        close = getattr(self.frames, "close", None)
        if callable(close):
            close()


class _TurnedSequence(Sequence):
    """A sequence of frames, each turned when it is read."""

    def __init__(self, frames: Sequence[np.ndarray], turn: int):
        self.frames, self.turn = frames, turn

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [turn_image(frame, self.turn) for frame in self.frames[index]]
        return turn_image(self.frames[index], self.turn)


def turned_frames(frames, turn: int):
    """The frame source `frames` (a seekable, scalable source; a sequence; a function that opens an iterator; or an
    iterable) with every frame turned `turn` degrees clockwise, offering what the source offers; `frames` itself for
    0."""
    if turn == 0:
        return frames
    if all(callable(getattr(frames, name, None)) for name in ("frames_at", "count", "at_size")):
        return TurnedFrames(frames, turn)
    if isinstance(frames, Sequence):
        return _TurnedSequence(frames, turn)
    if callable(frames):
        return lambda: (turn_image(frame, turn) for frame in frames())
    return (turn_image(frame, turn) for frame in frames)

