"""The 2D stage: decoded frames in, one Human3.6M-17 keypoint sequence per followed person out, one row per frame.

    frames -> (turned, for a video stored turned) -> PersonDetector (batches) -> PersonTracker -> select_tracks
        -> recovery -> keypoints -> gap filling -> H36M remap -> turned back

A video stored turned without its rotation flag (`pipeline.orientation`): the quarter turn that stands its people up
is chosen from the probe frames below (`turn="auto"`), the whole stage runs on frames turned so, and the keypoints and
boxes come back in the stored picture's pixels.

Recovery (`pipeline.recovery`): the frames inside a followed person's track where the detector missed them are
looked at once more, the detector run on a crop around where the track expects the person (twice their size, at 480
px), and a detection there fills the frame: a person lost against the light or in motion blur is often found so, at
the cost of those crops only.

Detector input size: `imgsz="auto"` (the default) chooses it once per clip from the people's size in a few probe
frames (`pipeline.imgsz`): 640 for large people, up to 1280 for a crowd of small ones. A frame source that can seek
(`SeekableFrames`, e.g. `pipeline.media.decode.VideoFrames`) gives just those frames; any other callable source is
read once more for them.

Keypoint backends:
- "yolo": the pose detector's own COCO-17 keypoints, linked by the tracker. One pass over the video.
- "hrnet": a top-down HRNet on the followed person's detector boxes. Whom to follow is known only once the whole
  clip is tracked, so this takes a second pass over the frames (the caller supplies a function that opens a fresh
  frame iterator) and runs HRNet on the selected boxes only, rather than on every person in every frame.

Only small per-frame arrays are kept; frames are dropped as soon as their batch is processed.

Frames where the person is not detected are never dropped: their keypoints are filled (linear interpolation across
gaps of up to `max_gap` frames; across longer gaps each frame takes the nearest detected frame, so no motion is
invented over seconds; before the first and after the last detection the edge values), their scores are 0 and
`valid` is False. Detections weaker than the tracker's `new_track_conf` (0.5) extend a track and fill their frame
with their keypoints and box, but count as not detected (scores 0, `valid` False): `valid` means detected as
confidently as a person who may start a track (on a crowd of small people, counting the weak ones too took the
share of reported boxes that a 1280 px reference run confirms from 0.99 down to 0.84; benchmarks/bench_crowd.py).
`span` marks the frames on which the person is there: detected (weakly or not), or inside a gap short enough to
interpolate; before their first and after their last detection, and across long gaps, they are not (renderers leave
them out there).
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from pipeline.detection import DetectorConfig, FrameDetections, PersonDetector
from pipeline.errors import SettingError
from pipeline.imgsz import AUTO, AutoImgszConfig, choose_imgsz, parse_imgsz, spread_indices, spread_sample
from pipeline.orientation import (
    AutoTurnConfig,
    choose_turn,
    parse_turn,
    turn_boxes,
    turn_image,
    turn_points,
    turned_frames,
    turned_size,
)
from pipeline.recovery import (
    RecoveryConfig,
    crop_around,
    expected_boxes,
    gap_frames,
    match_detection,
    other_boxes,
    shifted,
    with_detections,
)
from pipeline.runtimes import check_runtime
from pipeline.skeleton import COCO, coco_to_h36m
from pipeline.tracking import PersonTracker, TrackerConfig, TrackSequence, presence_span, select_tracks

logger = logging.getLogger(__name__)

Progress = Callable[[str, int], None]  # (pass name: "detect" or "hrnet", frames done in that pass)
FrameSource = Iterable[np.ndarray] | Callable[[], Iterable[np.ndarray]]
REFERENCE_FPS = 30.0  # the frame rate the frame-count defaults are meant for


@runtime_checkable
class SeekableFrames(Protocol):
    """A frame source (called, it returns a fresh frame iterator) that can also give single frames by number without
    decoding the others. `count` and `frames_at` return None when they cannot guarantee the frames iterating gives;
    the caller then iterates."""

    def __call__(self) -> Iterable[np.ndarray]: ...

    def count(self) -> int | None: ...

    def frames_at(self, numbers: Sequence[int]) -> list[np.ndarray] | None: ...


@runtime_checkable
class ScalableFrames(Protocol):
    """A frame source whose frames can also be decoded at another size (by the decoder, not the caller)."""

    @property
    def size(self) -> tuple[int, int]: ...

    def at_size(self, size: tuple[int, int]) -> Callable[[], Iterable[np.ndarray]]: ...


def letterbox_scale(size: tuple[int, int], imgsz: int) -> tuple[float, tuple[int, int]]:
    """Ultralytics' letterbox for a (width, height) frame at input size `imgsz`: the scale r and the frame's size
    scaled by it, rounded, before padding (`ultralytics.data.augment.LetterBox`; boxes and keypoints map back as
    x / r)."""
    width, height = size
    r = min(imgsz / height, imgsz / width)
    return r, (max(round(width * r), 1), max(round(height * r), 1))


@dataclass
class Pose2DConfig:
    detector: str | Path | None = None  # Ultralytics model name or path; None = bundled, sha256-checked yolo11n-pose
    # Where the 2D keypoints come from: "yolo" (the pose detector's own keypoints), "hrnet" (top-down HRNet on the
    # followed person's boxes, a second pass) or "auto" (hrnet when hrnet_weights is set, else yolo).
    keypoint_backend: str = "yolo"
    hrnet_weights: Path | None = None  # needed for "hrnet" unless a TopDownEstimator is passed in
    device: str = "cpu"  # "auto", "cpu", "cuda", "mps"
    runtime: str = "torch"  # what runs the detector and HRNet: "torch", "onnx", "openvino", "auto" (pipeline.runtimes)
    # Detector input size: "auto" (chosen per clip from the people's size, pipeline.imgsz) or pixels (640, 1280).
    imgsz: int | str = AUTO
    auto_imgsz: AutoImgszConfig = field(default_factory=AutoImgszConfig)
    # The clockwise quarter turn (0, 90, 180, 270 degrees) the frames are detected at, for a video stored turned
    # without its rotation flag: "auto" (the default) chooses it per clip from a few probe frames
    # (`pipeline.orientation`; an upright clip is kept as it is at no extra cost). Keypoints and boxes always come
    # back in the stored picture's pixels.
    turn: int | str = AUTO
    auto_turn: AutoTurnConfig = field(default_factory=AutoTurnConfig)
    detector_conf: float = 0.1  # raw detections kept for the tracker (it starts tracks only at new_track_conf)
    # The yolo backend's flip test (`pipeline.detection.merge_mirrored`): each frame detected as it is and mirrored,
    # every person's keypoints the mean of both. Twice the detector's work; on the shared calibrated recording the
    # views' keypoints agree 1.6-3.1 px better with the other views' triangulation (README). HRNet has its own.
    flip_test: bool = True
    batch_size: int = 8  # frames per detector call (and boxes per HRNet call)
    # The detector's frames decoded at the size the letterbox shrinks them to (ffmpeg scales them, an area average),
    # not at full size and then shrunk by Ultralytics (cv2 INTER_LINEAR). Only for sources that can
    # (`ScalableFrames`) and the yolo backend. Measured on the sample clip (1768x994 -> 640x360): 0.9 CPU s less
    # (the pipe carries 8x fewer bytes, no resize in Python); keypoints a median 0.9 px from the full-size path's,
    # without bias (mean 0.1 / 0.2 px): two resampling filters, not an offset (README, Performance).
    decode_at_input_size: bool = True
    person: int | None = None  # follow this track id instead of the main subject
    all_people: bool = False  # every track detected in >= min_track_frames frames, main subject first
    # Frame counts below are for 30 frames/s; `run(..., fps=...)` scales them to the clip's frame rate.
    min_track_frames: int = 30
    max_gap: int = 15  # longest run of undetected frames that is linearly interpolated
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    # The followed people's gaps looked at again, zoomed in (`pipeline.recovery`; enabled=False: off).
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)

    def __post_init__(self) -> None:
        if self.keypoint_backend not in ("auto", "yolo", "hrnet"):
            raise SettingError("keypoint_backend", f"must be 'auto', 'yolo' or 'hrnet', not {self.keypoint_backend!r}")
        if self.batch_size < 1 or self.max_gap < 0 or self.min_track_frames < 1:
            raise ValueError("batch_size and min_track_frames must be >= 1 and max_gap >= 0")
        check_runtime(self.runtime)
        try:
            self.imgsz = parse_imgsz(self.imgsz)
        except ValueError as exc:
            raise SettingError("imgsz", str(exc)) from None
        try:
            self.turn = parse_turn(self.turn)
        except ValueError as exc:
            raise SettingError("turn", str(exc)) from None

    @property
    def backend(self) -> str:
        """The keypoint backend in use: "auto" resolved to "hrnet" when HRNet weights are given, else "yolo"."""
        if self.keypoint_backend == "auto":
            return "hrnet" if self.hrnet_weights is not None else "yolo"
        return self.keypoint_backend

    def at_fps(self, fps: float | None) -> Pose2DConfig:
        """The same durations for a clip at `fps` frames/s: frame counts scaled by fps / 30 (None: unchanged)."""
        if fps is None or not fps > 0 or abs(fps - REFERENCE_FPS) < 0.5:
            return self

        def scaled(n: int) -> int:
            return max(1, int(round(n * fps / REFERENCE_FPS))) if n > 0 else 0

        tracker = dataclasses.replace(self.tracker, max_missed=scaled(self.tracker.max_missed),
                                      link_max_gap=scaled(self.tracker.link_max_gap))
        return dataclasses.replace(self, min_track_frames=scaled(self.min_track_frames), max_gap=scaled(self.max_gap),
                                   tracker=tracker,
                                   recovery=dataclasses.replace(self.recovery, max_gap=scaled(self.recovery.max_gap)))


@dataclass
class Pose2DResult:
    """One followed person over all T frames of the clip."""
    track_id: int
    keypoints_coco: np.ndarray  # (T, 17, 2) float32 pixels, COCO-17 order
    scores_coco: np.ndarray  # (T, 17) float32, 0 on filled frames
    keypoints: np.ndarray  # (T, 17, 2) float32 pixels, Human3.6M-17 order (the lifter's input)
    scores: np.ndarray  # (T, 17)
    valid: np.ndarray  # (T,) bool: the person was detected in this frame
    boxes: np.ndarray  # (T, 4) float32 xyxy pixels, filled like the keypoints
    span: np.ndarray  # (T,) bool: the person is there: detected, or inside a gap of at most max_gap frames

    @property
    def num_frames(self) -> int:
        return len(self.valid)


@dataclass
class Pose2DOutput:
    people: list[Pose2DResult]  # the followed person first (with all_people: every long-enough track)
    tracks: list[dict]  # a summary of every track found (id, first/last frame, detected frames, size, score)
    num_frames: int
    image_size: tuple[int, int]  # (width, height) of the frames
    detection: dict = field(default_factory=dict)  # the detector input size used and how it was chosen (run.json)
    # The clockwise quarter turn (degrees) the frames were detected at (`pipeline.orientation`); keypoints and boxes
    # are in the stored picture's pixels whatever it is.
    turn: int = 0
    # The turn was a setting (the user says the camera was held turned), not found from the people (who may be lying
    # in an upright picture: push-ups look like a camera on its side): only then is the world view levelled with it.
    turn_given: bool = False

    def stacked(self, name: str) -> np.ndarray:
        """One per-person array of every followed person, stacked: e.g. "keypoints" -> (P, T, 17, 2)."""
        return np.stack([getattr(person, name) for person in self.people])


def fill_gaps(frames: np.ndarray, values: np.ndarray, num_frames: int, max_gap: int) -> np.ndarray:
    """Values known at increasing `frames` (M, ...) -> (num_frames, ...) with every frame filled.

    Interior runs of at most max_gap missing frames: linear interpolation. Longer runs: the nearest known frame
    (ties go to the earlier one). Before the first / after the last known frame: the edge value.
    """
    frames = np.asarray(frames, np.int64)
    values = np.asarray(values)
    if len(frames) == 0:
        raise ValueError("fill_gaps needs at least one known frame")
    if np.any(np.diff(frames) <= 0) or frames[0] < 0 or frames[-1] >= num_frames:
        raise ValueError("known frames must be increasing and inside [0, num_frames)")
    out = np.empty((num_frames,) + values.shape[1:], dtype=np.float32)
    flat = values.reshape(len(frames), -1).astype(np.float64)
    t = np.arange(num_frames)
    # Index of the last known frame at or before each frame, and of the first at or after it.
    before = np.clip(np.searchsorted(frames, t, side="right") - 1, 0, len(frames) - 1)
    after = np.clip(np.searchsorted(frames, t, side="left"), 0, len(frames) - 1)
    f0, f1 = frames[before], frames[after]
    span = f1 - f0
    gap = span - 1  # missing frames between the two known ones
    inside = (t > f0) & (t < f1)
    weight = np.where(inside & (gap <= max_gap), (t - f0) / np.maximum(span, 1), 0.0)
    nearest_after = inside & (gap > max_gap) & ((f1 - t) < (t - f0))
    weight = np.where(nearest_after, 1.0, weight)
    weight = np.where(t >= f1, 1.0, weight)  # at a known frame, and after the last one (after == before there)
    weight = np.where(t <= f0, 0.0, weight)
    filled = flat[before] * (1 - weight[:, None]) + flat[after] * weight[:, None]
    out[:] = filled.reshape(out.shape)
    return out


def batched(frames: Iterable[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    batch: list[np.ndarray] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def build_topdown(config: Pose2DConfig):
    """The HRNet top-down estimator for config.hrnet_weights (pipeline.hrnet / pipeline.topdown)."""
    if config.hrnet_weights is None:
        raise SettingError("hrnet_weights", "the hrnet keypoint backend needs HRNet weights, e.g. the official "
                           "pose_hrnet_w48_384x288.pth (github.com/leoxiaobin/deep-high-resolution-net.pytorch)")
    from pipeline.devices import resolve_device
    from pipeline.hrnet import load_hrnet
    from pipeline.runtimes import heatmap_network
    from pipeline.topdown import TopDownEstimator

    device = resolve_device(config.device)
    model = load_hrnet(config.hrnet_weights, device=device)
    model, device = heatmap_network(model, config.hrnet_weights, config.runtime, device)  # PyTorch or an export
    return TopDownEstimator(model, device=device)


class Pose2DEstimator:
    """Holds the loaded models so several clips reuse them; `run` processes one clip."""

    def __init__(self, config: Pose2DConfig | None = None, detector: PersonDetector | None = None,
                 topdown: Callable[[Sequence[np.ndarray], np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None):
        self.config = config or Pose2DConfig()
        c = self.config
        fixed = c.imgsz if c.imgsz != AUTO else c.auto_imgsz.min_imgsz
        self.detector = detector or PersonDetector(DetectorConfig(weights=c.detector, device=c.device,
                                                                  imgsz=fixed, conf=c.detector_conf,
                                                                  runtime=c.runtime,
                                                                  flip_test=c.flip_test and c.backend == "yolo"))
        if c.backend == "yolo" and not self.detector.has_keypoints:
            raise SettingError("detector", "a detection-only model gives no keypoints: use a -pose model "
                               "(e.g. yolo11x-pose.pt) or the hrnet keypoint backend")
        self.topdown = topdown
        if c.backend == "hrnet" and self.topdown is None:
            self.topdown = build_topdown(c)

    def probe(self, frames: FrameSource) -> tuple[int, int, dict, FrameSource]:
        """The clockwise turn that stands the clip's people up (`pipeline.orientation`), the detector input size
        (`pipeline.imgsz`), what run.json records about both, and the frame source to use next, turned.

        Fixed settings are used as they are. "auto" probes a sample of the clip: frames spread over the whole clip
        when `frames` is a function that opens a fresh iterator (`probe_sample`), else the first `probe_frames`
        frames of the iterator, which are then chained back in front of the rest. The turn is probed at the input
        size probe's size (at a fixed input size: that size), so the stored picture's probe detections serve both."""
        c = self.config
        if c.turn != AUTO and c.imgsz != AUTO:
            turn, imgsz = int(c.turn), int(c.imgsz)
            return turn, imgsz, {"imgsz": imgsz, "chosen": "setting", "turn": {"turn": turn, "chosen": "setting"}}, \
                turned_frames(frames, turn)
        count = c.auto_imgsz.probe_frames
        if callable(frames):
            sample = probe_sample(frames, count)
        else:
            iterator = iter(frames)
            sample = list(itertools.islice(iterator, count))
            frames = itertools.chain(sample, iterator)
        if not sample:
            raise ValueError("the video gave no frames")
        turned: dict[int, list[np.ndarray]] = {0: sample}
        found: dict[tuple[int, int], list] = {}

        def sample_turned(turn: int) -> list[np.ndarray]:
            if turn not in turned:
                turned[turn] = [turn_image(frame, turn) for frame in sample]
            return turned[turn]

        def detect(turn: int, imgsz: int) -> list:  # the probe sample turned `turn`, detected at `imgsz`, once each
            if (turn, imgsz) not in found:
                found[(turn, imgsz)] = self.detector(sample_turned(turn), imgsz=imgsz)
            return found[(turn, imgsz)]

        probe_imgsz = c.auto_imgsz.probe_imgsz if c.imgsz == AUTO else int(c.imgsz)
        if c.turn == AUTO:
            turn, turn_record = choose_turn(lambda batch, turn: detect(turn, probe_imgsz), sample, c.auto_turn)
        else:
            turn, turn_record = int(c.turn), {"turn": int(c.turn), "chosen": "setting"}
        if c.imgsz == AUTO:
            imgsz, record = choose_imgsz(lambda batch, size: detect(turn, size), sample_turned(turn), c.auto_imgsz)
        else:
            imgsz, record = int(c.imgsz), {"imgsz": int(c.imgsz), "chosen": "setting"}
        return turn, imgsz, {**record, "turn": turn_record}, turned_frames(frames, turn)

    def track(self, frames: Iterable[np.ndarray], progress: Progress | None = None,
              tracker_config: TrackerConfig | None = None, imgsz: int | None = None,
              scaled_from: tuple[float, tuple[int, int]] | None = None) -> tuple[list[TrackSequence], int,
                                                                                   tuple[int, int]]:
        """Detect (at `imgsz`, None: the detector's own setting) and track every person: (tracks, number of frames,
        (width, height)). `scaled_from` (r, (width, height)): the frames were decoded scaled by r from frames of that
        size, and the boxes and keypoints are mapped back to those frames' pixels as Ultralytics maps them (x / r)."""
        tracker = PersonTracker(tracker_config or self.config.tracker)
        size: tuple[int, int] | None = None
        for batch in batched(frames, self.config.batch_size):
            for frame in batch:
                shape = (frame.shape[1], frame.shape[0])
                if size is None:
                    size = shape
                elif shape != size:
                    raise ValueError(f"frame {tracker.num_frames} is {shape[0]}x{shape[1]}, "
                                     f"the first frame was {size[0]}x{size[1]}")
            for detections in self.detector(batch, imgsz=imgsz):
                tracker.update(detections if scaled_from is None else detections.scaled(1 / scaled_from[0]))
            if progress is not None:
                progress("detect", tracker.num_frames)
        if size is None:
            raise ValueError("the video gave no frames")
        return tracker.tracks(), tracker.num_frames, size if scaled_from is None else scaled_from[1]

    def detector_frames(self, frames: FrameSource, imgsz: int) -> tuple[Iterable[np.ndarray],
                                                                        tuple[float, tuple[int, int]] | None]:
        """The frames to detect on, and how they were scaled (None: as the source gives them): decoded at the
        letterbox size when the source can (`decode_at_input_size`), for the yolo backend, when it shrinks them."""
        c = self.config
        if c.decode_at_input_size and c.backend == "yolo" and isinstance(frames, ScalableFrames):
            r, scaled = letterbox_scale(frames.size, imgsz)
            if r < 1:
                return frames.at_size(scaled)(), (r, frames.size)
        return (frames() if callable(frames) else frames), None

    def run(self, frames: FrameSource, progress: Progress | None = None, fps: float | None = None) -> Pose2DOutput:
        """Process one clip. `frames` is a callable returning a fresh frame iterator (needed for the hrnet
        backend, which reads the frames twice) or, for the yolo backend, simply an iterable of frames.
        `fps`, the clip's frame rate, scales the frame-count settings (given for 30 frames/s)."""
        c = self.config.at_fps(fps)
        if c.backend == "hrnet" and not callable(frames):
            raise TypeError("the hrnet backend reads the frames twice: pass a function that returns a new frame "
                            "iterator (e.g. lambda: iter_frames(path)), not an iterator")
        turn, imgsz, detection, frames = self.probe(frames)
        stream, scaled_from = self.detector_frames(frames, imgsz)
        tracks, num_frames, size = self.track(stream, progress, c.tracker, imgsz, scaled_from)
        chosen = select_tracks(tracks, num_frames, person=c.person, all_people=c.all_people,
                               min_track_frames=c.min_track_frames, max_gap=c.max_gap)
        chosen, recovery = self.recover(frames, chosen, tracks, c, progress)
        detection = {**detection, "recovery": recovery}
        logger.info("%d frames, %d track(s); following %s", num_frames, len(tracks),
                    ", ".join(f"track {t.track_id} ({t.num_detections} frames)" for t in chosen))
        if c.backend == "hrnet":
            keypoints = self._hrnet_keypoints(frames(), chosen, num_frames, progress)
        else:
            keypoints = [(t.keypoints, t.keypoint_scores) for t in chosen]
        people = [assemble_person(t, kp, sc, num_frames, c.max_gap, c.tracker.new_track_conf)
                  for t, (kp, sc) in zip(chosen, keypoints, strict=True)]
        output = Pose2DOutput(people=people, tracks=[t.summary(c.max_gap) for t in tracks], num_frames=num_frames,
                              image_size=size, detection=detection)
        return turned_back(output, turn, given=c.turn != AUTO)

    def recover(self, frames: FrameSource, chosen: list[TrackSequence], tracks: list[TrackSequence],
                c: Pose2DConfig, progress: Progress | None = None) -> tuple[list[TrackSequence], dict]:
        """The followed tracks with their gaps looked at again (`pipeline.recovery`: the detector on a crop around
        where each track expects its person), and what run.json records about it: the crops' input size, the frames
        read again and the crops, per person the gap frames and how many of them now hold a detection (and how many
        of those count as detected)."""
        r = c.recovery
        if not r.enabled:
            return chosen, {"enabled": False}
        gaps = [gap_frames(t, c.tracker.new_track_conf, r.max_gap) for t in chosen]
        expected = [expected_boxes(t, g) for t, g in zip(chosen, gaps, strict=True)]
        crops = sorted(((int(f), k, box) for k, (g, boxes) in enumerate(zip(gaps, expected, strict=True))
                        for f, box in zip(g, boxes, strict=True)), key=lambda crop: crop[:2])
        numbers = sorted({f for f, _, _ in crops})
        record: dict = {"imgsz": r.imgsz, "frames": len(numbers), "crops": len(crops)}
        if not crops:
            return chosen, record
        found: dict[tuple[int, int], FrameDetections] = {}
        # Full-size frames read in chunks of up to RECOVERY_BYTES: each seeking call decodes from the keyframe before
        # its first frame, and on the sample clip 45 frames in one call took 2.0 s, in calls of 8 frames 8.2 s.
        width, height = frames.size if isinstance(frames, ScalableFrames) else (1920, 1080)
        chunk = max(c.batch_size, RECOVERY_BYTES // (width * height * 3))
        for chunk_numbers, images in frames_by_number(frames, numbers, chunk):
            image = dict(zip(chunk_numbers, images, strict=True))
            todo = [(f, k, box) for f, k, box in crops if f in image]
            for start in range(0, len(todo), c.batch_size):
                batch = todo[start:start + c.batch_size]
                cut = [crop_around(image[f], box, r) for f, _, box in batch]
                for (f, k, _), (_, offset), detections in zip(
                        batch, cut, self.detector([crop for crop, _ in cut], imgsz=r.imgsz), strict=True):
                    found[(f, k)] = shifted(detections, offset)
                if progress is not None:
                    progress("recover", len(found))
        if len(found) < len(crops):
            logger.warning("the followed people's gaps were not looked at again: the frames cannot be read twice "
                           "(pass a function that opens the frames, or a sequence)")
            return chosen, {**record, "frames": 0, "crops": 0, "skipped": "frames not readable twice"}
        recovered, people = [], {}
        claimed: dict[int, list[np.ndarray]] = {}  # boxes given to a followed person so far, by frame
        for k, (track, at) in enumerate(zip(chosen, gaps, strict=True)):
            seen = [found[(int(f), k)] for f in at]
            picks = []
            for f, box, detections in zip(at, expected[k], seen, strict=True):
                others = np.concatenate([other_boxes(tracks, track.track_id, int(f)),
                                         np.reshape(claimed.get(int(f), []), (-1, 4))])
                picks.append(match_detection(box, detections, others, r))
                if picks[-1] is not None:
                    claimed.setdefault(int(f), []).append(detections.boxes[picks[-1]])
            track, changed = with_detections(track, at, seen, picks)
            confident = sum(detections.confidences[i] >= c.tracker.new_track_conf
                            for detections, i in zip(seen, picks, strict=True) if i is not None)
            people[str(track.track_id)] = {"gap_frames": len(at), "recovered": changed, "detected": int(confident)}
            recovered.append(track)
        return recovered, {**record, "people": people}

    def _hrnet_keypoints(self, frames: Iterable[np.ndarray], chosen: list[TrackSequence], num_frames: int,
                         progress: Progress | None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Second pass: HRNet on the chosen tracks' detected boxes only, batch_size boxes per call."""
        k = COCO.num_joints
        results = [(np.zeros((t.num_detections, k, 2), np.float32), np.zeros((t.num_detections, k), np.float32))
                   for t in chosen]
        # For each frame, which (track, row) pairs have a box there.
        wanted: dict[int, list[tuple[int, int]]] = {}
        for ti, track in enumerate(chosen):
            for row, f in enumerate(track.frames):
                wanted.setdefault(int(f), []).append((ti, row))
        pending_images: list[np.ndarray] = []
        pending: list[tuple[int, int]] = []

        def flush() -> None:
            boxes = np.stack([chosen[ti].boxes[row] for ti, row in pending]).astype(np.float32)
            kp, sc = self.topdown(pending_images, boxes)
            for (ti, row), kpi, sci in zip(pending, np.asarray(kp), np.asarray(sc), strict=True):
                results[ti][0][row] = kpi
                results[ti][1][row] = sci
            pending_images.clear()
            pending.clear()

        seen = 0
        for frame in frames:
            for ti, row in wanted.get(seen, []):
                pending_images.append(frame)
                pending.append((ti, row))
            seen += 1
            if len(pending) >= self.config.batch_size:
                flush()
            if progress is not None and seen % self.config.batch_size == 0:
                progress("hrnet", seen)
        if pending:
            flush()
        if progress is not None:
            progress("hrnet", seen)
        if seen != num_frames:
            raise ValueError(f"the second pass over the video gave {seen} frames, the first gave {num_frames}; "
                             "the frame source must give the same frames each time")
        return results


def frames_by_number(frames: FrameSource, numbers: Sequence[int],
                     size: int) -> Iterator[tuple[list[int], list[np.ndarray]]]:
    """The frames `numbers` (increasing) of a clip in batches of at most `size`, as (numbers, frames): by seeking when
    the source can (`SeekableFrames`), else by one more pass over a source that can be opened again (a function) or
    indexed (a sequence). Yields nothing for a one-shot iterator, which the first pass has used up."""
    chunks = [list(numbers[k:k + size]) for k in range(0, len(numbers), size)]
    if isinstance(frames, SeekableFrames):
        done = 0
        for chunk in chunks:
            images = frames.frames_at(chunk)
            if images is None:  # the source cannot guarantee seeking: one pass for the rest
                break
            done += 1
            yield chunk, images
        chunks = chunks[done:]
        if not chunks:
            return
    if isinstance(frames, Sequence):
        for chunk in chunks:
            yield chunk, [frames[n] for n in chunk]
    elif callable(frames):
        wanted = {n: k for k, chunk in enumerate(chunks) for n in chunk}
        batch: list[np.ndarray] = []
        for n, frame in enumerate(frames()):
            if n in wanted:
                batch.append(frame)
                if len(batch) == len(chunks[wanted[n]]):
                    yield chunks[wanted[n]], batch
                    batch = []
                    if wanted[n] == len(chunks) - 1:
                        return


def probe_numbers(total: int, count: int, keyframes: Sequence[int] = ()) -> list[int]:
    """The frames the input size probe reads from a clip of `total` frames that can seek: for each of the `count`
    frames `spread_sample` would pick, the nearest keyframe (ties: the earlier), once each, when that leaves at least
    half of `count` frames; else the spread frames themselves.

    Why keyframes: a seek decodes from the keyframe before its frame, so the six spread frames of the sample clip
    cost 2.4-2.5 CPU s (most of a decoding pass), and keyframes can be read in one pass that decodes nothing else
    (`pipeline.media.decode.frames_at`: 0.2 CPU s). Spread frames and their
    nearest keyframes sample the clip alike (every 1-2 s in phone and camera videos; the sample clip's keyframes are
    frames 0, 60, 120 and 180 of 230); a clip with too few keyframes keeps the exact spread frames."""
    spread = spread_indices(total, count)
    keys = sorted(set(int(k) for k in keyframes))
    if not keys:
        return spread
    nearest = sorted({min(keys, key=lambda k: (abs(k - n), k)) for n in spread})
    return nearest if len(nearest) >= max(1, (count + 1) // 2) else spread


def probe_sample(frames: Callable[[], Iterable[np.ndarray]], count: int) -> list[np.ndarray]:
    """About `count` frames spread over the clip: read by seeking when the source can (`SeekableFrames`, the frames
    `probe_numbers` picks), else by one extra decoding pass over the whole clip (those `spread_sample` picks)."""
    # Measured on the 230-frame 1768x994 sample (VideoFrames vs spread_sample over it, 2 runs each, busy 2-core
    # machine): seeking to the spread frames 2.8-2.9 s wall, 2.4-2.5 s CPU; the extra pass 3.5-3.6 s wall, 4.1-4.3 s
    # CPU; their nearest keyframes (1 December) 1.0 CPU s by seeks, 0.2 in one keyframes-only pass.
    if isinstance(frames, SeekableFrames):
        total = frames.count()
        keyframes = getattr(frames, "keyframes", lambda: None)()
        numbers = probe_numbers(total, count, keyframes or []) if total is not None else None
        sample = frames.frames_at(numbers) if numbers is not None else None
        if sample is not None:
            return sample
    return spread_sample(frames(), count)


# Bytes of detector frames decoded ahead while the models load (`start_reading`), and kept ahead for the rest of the
# pass (the same iterator): 92 frames of the sample clip's 640x360 letterbox, 4 at the least whatever the size.
READ_AHEAD_BYTES = 64 << 20
# Bytes of full-size frames the second look at the followed people's gaps holds at once (`Pose2DEstimator.recover`):
# 48 frames of the sample clip, 10 of a 4K video.
RECOVERY_BYTES = 256 << 20


def start_reading(frames: FrameSource, config: Pose2DConfig) -> None:
    """Start reading, in the background, what the 2D stage will read first, so that it is there when the caller has
    loaded the detector: the input size probe's frames (`probe_sample`) when the size is chosen per clip, and the
    detector's frames at the smallest input size it can choose (`detector_frames`: decoded at the letterbox size),
    `READ_AHEAD_BYTES` of them ahead. Only for a source that can (`pipeline.media.decode.VideoFrames`); nothing
    changes in what the stage gets. Measured on the sample clip (whole demo.py runs): the probe's frames and the first
    detector frames were 1-1.5 s of decoding on the critical path, now done on the core the start-up leaves idle."""
    prefetch = getattr(frames, "prefetch", None)
    if config.imgsz == AUTO and isinstance(frames, SeekableFrames) and callable(prefetch):
        count = config.auto_imgsz.probe_frames
        prefetch(lambda total, keyframes: probe_numbers(total, count, keyframes))
    read_ahead = getattr(frames, "read_ahead", None)
    if config.decode_at_input_size and config.backend == "yolo" and isinstance(frames, ScalableFrames) and \
            callable(read_ahead):
        imgsz = config.auto_imgsz.min_imgsz if config.imgsz == AUTO else int(config.imgsz)
        r, scaled = letterbox_scale(frames.size, imgsz)
        if r < 1:
            read_ahead(scaled, max(4, READ_AHEAD_BYTES // (scaled[0] * scaled[1] * 3)))


def assemble_person(track: TrackSequence, kp: np.ndarray | None, sc: np.ndarray | None,
                    num_frames: int, gap: int, detected_conf: float) -> Pose2DResult:
    """One person's per-frame arrays. Every linked detection gives its keypoints and box; only those at least
    `detected_conf` confident count as the person being detected (`valid`, keypoint scores): weaker ones (the
    tracker lets them extend a track, never start one) fill their frame instead of an interpolation."""
    if kp is None or sc is None:
        raise ValueError(f"track {track.track_id} has no keypoints")
    keypoints_coco = fill_gaps(track.frames, kp, num_frames, gap)
    boxes = fill_gaps(track.frames, track.boxes, num_frames, gap)
    confident = track.confidences >= detected_conf
    valid = np.zeros(num_frames, bool)
    valid[track.frames[confident]] = True
    scores_coco = np.zeros((num_frames, COCO.num_joints), np.float32)
    scores_coco[track.frames[confident]] = sc[confident]
    keypoints, scores = coco_to_h36m(keypoints_coco, scores_coco)
    return Pose2DResult(track_id=track.track_id, keypoints_coco=keypoints_coco, scores_coco=scores_coco,
                        keypoints=keypoints.astype(np.float32), scores=scores.astype(np.float32), valid=valid,
                        boxes=boxes, span=presence_span(track.frames, num_frames, gap))


def turned_back(output: Pose2DOutput, turn: int, given: bool) -> Pose2DOutput:
    """A 2D stage's output on frames turned `turn` degrees clockwise, with its keypoints, boxes and image size turned
    back into the stored picture's, and the turn recorded (`given`: as a setting)."""
    if turn == 0:
        return dataclasses.replace(output, turn_given=given)
    back, size = (360 - turn) % 360, output.image_size
    people = [dataclasses.replace(person, keypoints_coco=turn_points(person.keypoints_coco, back, size),
                                  keypoints=turn_points(person.keypoints, back, size),
                                  boxes=turn_boxes(person.boxes, back, size)) for person in output.people]
    return dataclasses.replace(output, people=people, image_size=turned_size(size, back), turn=turn, turn_given=given)


def estimate_2d(frames: FrameSource, config: Pose2DConfig | None = None, progress: Progress | None = None,
                detector: PersonDetector | None = None, topdown=None, fps: float | None = None) -> Pose2DOutput:
    """One call for the whole 2D stage; see Pose2DEstimator to reuse loaded models across clips."""
    return Pose2DEstimator(config, detector=detector, topdown=topdown).run(frames, progress, fps=fps)
