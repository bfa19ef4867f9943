"""Tracking people across frames and choosing whom to follow.

Our own small tracker instead of Ultralytics' ByteTrack/BoT-SORT: those are fed one frame per `model.track` call
(stateful predictor, no batching), need the `lap` package (not installed; Ultralytics would try to pip-install it at
run time), and their Kalman filters make the result depend on Ultralytics internals. This one consumes the
detector's per-frame output after batched inference, is deterministic, keeps the keypoints of every detection it
links, and is short enough to test exhaustively. Measured on the same detections of a crowd of 18 small people
(benchmarks/bench_crowd.py, mosaic_sports at 1280 px): Ultralytics' ByteTrack made 63 tracks, this one 31, and with
the 30-frame minimum of --all-people ByteTrack's fragments reported 0.89 of the reference person-frames, ours 0.97.

Association per frame, ByteTrack style: tracks predict their box with a constant-velocity model; confident
detections are matched first, weak ones (conf below `new_track_conf`) may only extend existing tracks, never start
one. A detection may join a track when the IoU of the predicted and detected boxes reaches `match_iou`; among the
allowed pairs, the ranking adds a keypoint similarity (OKS) bonus when the detector gives keypoints: two people
overlapping in the image rarely have the same pose, so the keypoints keep identities apart when boxes cross, while a
sudden change of pose (a jump, a fall) never stops a match on its own. The pose is compared in box-relative
coordinates (pose_shape), so where a box is stays the IoU's business. Matching is greedy on similarity
(deterministic, and for a handful of people as good as the Hungarian method). A confident detection no track takes
starts a new one, unless its keypoints lie on those of a detection linked in the same frame: a second box on one
person (`duplicate_oks`), such as a box on their upper half that non-maximum suppression keeps. A track survives up
to `max_missed` frames without a detection and keeps its id when it is found again; its predicted box grows while it
is lost.
After the last frame, fragments of one person lost for longer (behind someone, in glare) are joined (link_tracks):
the next fragment must start where the first one's motion leads (or where it stopped), at a similar size.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.detection import FrameDetections, box_iou
from pipeline.errors import SettingError


@dataclass
class TrackerConfig:
    new_track_conf: float = 0.5  # a detection at least this confident may start a new track
    min_conf: float = 0.1  # detections below this are ignored entirely
    match_iou: float = 0.1  # a detection may join a track only when its box overlaps the predicted box this much
    keypoint_weight: float = 1.0  # weight of the keypoint similarity bonus in the ranking (when keypoints exist)
    keypoint_min_score: float = 0.3  # keypoints below this score are left out of the keypoint similarity
    # A confident detection that no track took starts a new one, unless its keypoints lie where those of a detection
    # linked in the same frame lie (OKS in image coordinates, per the larger box's height, at least this): a second
    # box on one person, which non-maximum suppression keeps when it covers only part of them. Measured on the sample
    # clip's somersault: a box on the jumper's upper half beside the whole-body box in 10 frames, OKS 0.72-0.94 to it;
    # one such box at 0.50 confidence started a track that took the jumper over, split him in two and made the
    # passer-by the main subject (in the clip stored turned, 2 December).
    duplicate_oks: float = 0.5
    max_missed: int = 30  # frames a track may go undetected and still keep its id
    # Fragments of one person (lost in glare, fast motion or behind someone longer than max_missed) are joined after
    # tracking when the next one starts where the first one's motion leads:
    link_max_gap: int = 60  # frames between the end of one track and the start of the next
    link_max_distance: float = 1.0  # centre distance, in box heights, between the predicted and the first box
    link_max_size_ratio: float = 1.5  # box heights of the two ends may differ at most this much
    link_max_speed: float = 0.1  # box heights per frame (3 per second: running); faster estimates are capped


@dataclass
class TrackSequence:
    """Everything the tracker linked to one person: arrays over the frames where that person was detected."""
    track_id: int
    frames: np.ndarray  # (M,) int, increasing frame indices (0 = first frame given to the tracker)
    boxes: np.ndarray  # (M, 4) float32 xyxy pixels
    confidences: np.ndarray  # (M,) float32
    keypoints: np.ndarray | None  # (M, 17, 2) float32 COCO-17 pixels, pose detectors only
    keypoint_scores: np.ndarray | None  # (M, 17)

    @property
    def num_detections(self) -> int:
        return len(self.frames)

    @property
    def first_frame(self) -> int:
        return int(self.frames[0])

    @property
    def last_frame(self) -> int:
        return int(self.frames[-1])

    @property
    def present_frames(self) -> int:
        """Frames from the first to the last detection: the tracker bridges only short misses inside a track."""
        return self.last_frame - self.first_frame + 1

    def seen_frames(self, max_gap: int) -> int:
        """Frames on which the person is there: detected, or inside a gap of at most max_gap frames between two
        detections (long stretches unseen, which fragment linking may bridge, do not count)."""
        return int(presence_span(self.frames - self.first_frame, self.present_frames, max_gap).sum())

    @property
    def median_height(self) -> float:
        return float(np.median(np.clip(self.boxes[:, 3] - self.boxes[:, 1], 0, None)))

    def main_subject_score(self, max_gap: int = 15) -> float:
        """Seen longest and largest: frames seen (seen_frames) x median box height (pixels).

        Height, not area: it measures how big a person is whatever the pose (arms spread, side view), and a
        passer-by close to the camera is not counted four times over for being twice as tall. Frames seen, not
        frames from first to last detection: in a crowd, someone glimpsed now and then over the whole clip is not
        the person to follow.
        """
        return self.seen_frames(max_gap) * self.median_height

    def summary(self, max_gap: int = 15) -> dict:
        """What run.json lists for every track (ids for --person): its span, detections, size and score."""
        return {"track_id": self.track_id, "first_frame": self.first_frame, "last_frame": self.last_frame,
                "detected_frames": self.num_detections, "seen_frames": self.seen_frames(max_gap),
                "median_box_height": round(self.median_height, 1), "score": round(self.main_subject_score(max_gap), 1)}


def presence_span(frames: np.ndarray, num_frames: int, max_gap: int) -> np.ndarray:
    """(num_frames,) bool: the detected `frames` and every frame of a gap of at most max_gap frames between two of
    them (what gap filling interpolates); not the frames before the first or after the last detection."""
    frames = np.asarray(frames, np.int64)
    span = np.zeros(num_frames, bool)
    span[frames] = True
    for start, stop in zip(frames[:-1], frames[1:], strict=True):
        if 1 < stop - start <= max_gap + 1:
            span[start + 1:stop] = True
    return span


def pose_shape(keypoints: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Keypoints relative to their box: centre at 0, box height 1. Where the person is, is the IoU's business."""
    centre = (box[:2] + box[2:]) / 2
    return (keypoints - centre) / max(float(box[3] - box[1]), 1.0)


def keypoint_similarity(shape_a: np.ndarray, sc_a: np.ndarray, shape_b: np.ndarray, sc_b: np.ndarray,
                        min_score: float, sigma: float = 0.1) -> float:
    """OKS-like similarity in [0, 1] of two pose shapes (pose_shape) over the joints both see; 0 if they share none.

    sigma: the joint distance, in box heights, at which a joint's similarity is exp(-1/2).
    """
    seen = (sc_a >= min_score) & (sc_b >= min_score)
    if not seen.any():
        return 0.0
    d2 = np.sum((shape_a[seen] - shape_b[seen]) ** 2, axis=-1)
    return float(np.mean(np.exp(-d2 / (2 * sigma ** 2))))


def _to_cxcywh(box: np.ndarray) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0], box[3] - box[1]], np.float64)


def _to_xyxy(c: np.ndarray) -> np.ndarray:
    return np.array([c[0] - c[2] / 2, c[1] - c[3] / 2, c[0] + c[2] / 2, c[1] + c[3] / 2], np.float64)


@dataclass
class _LiveTrack:
    track_id: int
    state: np.ndarray  # cx, cy, w, h at last_frame
    velocity: np.ndarray  # per frame change of the state
    last_frame: int
    last_keypoints: np.ndarray | None
    last_scores: np.ndarray | None
    frames: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)
    keypoints: list[np.ndarray] = field(default_factory=list)
    keypoint_scores: list[np.ndarray] = field(default_factory=list)

    def predicted_box(self, frame: int) -> np.ndarray:
        dt = frame - self.last_frame
        c = self.state + self.velocity * dt
        c[2:] = np.maximum(c[2:], 1.0) * min(1.0 + 0.1 * (dt - 1), 2.0)  # a lost person may be anywhere nearby
        return _to_xyxy(c)

    def add(self, frame: int, box: np.ndarray, conf: float, kp: np.ndarray | None, sc: np.ndarray | None) -> None:
        new_state = _to_cxcywh(box)
        if self.frames:
            dt = frame - self.last_frame
            step = (new_state - self.state) / dt
            self.velocity = step if len(self.frames) == 1 else 0.5 * self.velocity + 0.5 * step
        self.state, self.last_frame = new_state, frame
        self.frames.append(frame)
        self.boxes.append(np.asarray(box, np.float32))
        self.confidences.append(float(conf))
        if kp is not None:
            self.keypoints.append(kp)
            self.keypoint_scores.append(sc)
            self.last_keypoints, self.last_scores = kp, sc

    def to_sequence(self) -> TrackSequence:
        has_kp = len(self.keypoints) == len(self.frames) and len(self.frames) > 0
        return TrackSequence(
            track_id=self.track_id,
            frames=np.asarray(self.frames, np.int64),
            boxes=np.stack(self.boxes).astype(np.float32),
            confidences=np.asarray(self.confidences, np.float32),
            keypoints=np.stack(self.keypoints).astype(np.float32) if has_kp else None,
            keypoint_scores=np.stack(self.keypoint_scores).astype(np.float32) if has_kp else None,
        )


class PersonTracker:
    """Feed detections frame by frame with `update`; `tracks()` returns every track found so far, by id."""

    def __init__(self, config: TrackerConfig | None = None):
        self.config = config or TrackerConfig()
        self._live: list[_LiveTrack] = []
        self._done: list[_LiveTrack] = []
        self._next_id = 1
        self.num_frames = 0

    def update(self, detections: FrameDetections) -> None:
        """Link the detections of the next frame (frame index = number of frames seen before)."""
        c = self.config
        frame = self.num_frames
        self.num_frames += 1
        keep = detections.confidences >= c.min_conf
        boxes = detections.boxes[keep]
        confs = detections.confidences[keep]
        kps = detections.keypoints[keep] if detections.keypoints is not None else None
        kscores = detections.keypoint_scores[keep] if detections.keypoint_scores is not None else None

        # Tracks lost for too long end here and never come back.
        still = [t for t in self._live if frame - t.last_frame <= c.max_missed]
        self._done += [t for t in self._live if frame - t.last_frame > c.max_missed]
        self._live = still

        iou, similarity = self._similarity(frame, boxes, kps, kscores)
        matched_tracks: set[int] = set()
        matched_dets: set[int] = set()
        strong = confs >= c.new_track_conf
        for stage_mask in (strong, ~strong):  # confident detections claim tracks first
            pairs = [(similarity[t, d], t, d) for t in range(len(self._live)) for d in np.flatnonzero(stage_mask)
                     if iou[t, d] >= c.match_iou]
            # Ties broken by the older track and the more confident detection, so results never depend on chance.
            pairs.sort(key=lambda p: (-p[0], self._live[p[1]].track_id, -confs[p[2]]))
            for _, t, d in pairs:
                if t in matched_tracks or d in matched_dets:
                    continue
                matched_tracks.add(t)
                matched_dets.add(int(d))
                self._live[t].add(frame, boxes[d], confs[d], None if kps is None else kps[d],
                                  None if kscores is None else kscores[d])

        for d in np.flatnonzero(strong):  # the most confident first (the detector's order)
            if d in matched_dets or (kps is not None and self._same_person(kps, kscores, boxes, d, matched_dets)):
                continue
            matched_dets.add(int(d))
            track = _LiveTrack(self._next_id, _to_cxcywh(boxes[d]), np.zeros(4), frame, None, None)
            self._next_id += 1
            track.add(frame, boxes[d], confs[d], None if kps is None else kps[d],
                      None if kscores is None else kscores[d])
            self._live.append(track)

    def _same_person(self, kps: np.ndarray, kscores: np.ndarray, boxes: np.ndarray, d: int, linked: set[int]) -> bool:
        """Whether detection d's keypoints lie where those of a detection in `linked` (this frame's) lie: a second box
        on that person (`duplicate_oks`)."""
        c = self.config
        for other in linked:
            height = max(boxes[d][3] - boxes[d][1], boxes[other][3] - boxes[other][1], 1.0)
            if keypoint_similarity(kps[d] / height, kscores[d], kps[other] / height, kscores[other],
                                   c.keypoint_min_score) >= c.duplicate_oks:
                return True
        return False

    def _similarity(self, frame: int, boxes: np.ndarray, kps: np.ndarray | None,
                    kscores: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(IoU of predicted and detected boxes, ranking similarity = IoU + keypoint_weight x OKS), (tracks, dets)."""
        c = self.config
        if not self._live or len(boxes) == 0:
            empty = np.zeros((len(self._live), len(boxes)))
            return empty, empty
        predicted = np.stack([t.predicted_box(frame) for t in self._live])
        iou = box_iou(predicted, boxes)
        if kps is None or c.keypoint_weight <= 0:
            return iou, iou
        sim = iou.copy()
        for ti, track in enumerate(self._live):
            if track.last_keypoints is None:
                continue
            last_shape = pose_shape(track.last_keypoints, track.boxes[-1])
            for di in np.flatnonzero(iou[ti] > 0):  # the pose only decides between boxes that overlap at all
                oks = keypoint_similarity(last_shape, track.last_scores, pose_shape(kps[di], boxes[di]), kscores[di],
                                          c.keypoint_min_score)
                sim[ti, di] = iou[ti, di] + c.keypoint_weight * oks
        return iou, sim

    def tracks(self, link: bool = True) -> list[TrackSequence]:
        """Every track with at least one detection, by increasing id; with link, fragments joined (link_tracks)."""
        every = sorted(self._done + self._live, key=lambda t: t.track_id)
        found = [t.to_sequence() for t in every if t.frames]
        if not link:
            return found
        c = self.config
        return link_tracks(found, c.link_max_gap, c.link_max_distance, c.link_max_size_ratio, c.link_max_speed)


def _concat(a: TrackSequence, b: TrackSequence) -> TrackSequence:
    def cat(x, y):
        return None if x is None or y is None else np.concatenate([x, y])

    return TrackSequence(a.track_id, np.concatenate([a.frames, b.frames]), np.concatenate([a.boxes, b.boxes]),
                         np.concatenate([a.confidences, b.confidences]), cat(a.keypoints, b.keypoints),
                         cat(a.keypoint_scores, b.keypoint_scores))


def _centres(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, :2] + boxes[:, 2:]) / 2


def end_velocity(track: TrackSequence, at_end: bool, frames: int = 15, max_speed: float = 0.1) -> np.ndarray:
    """The box centre's velocity (pixels per frame) over the last (at_end) or first `frames` frames of a track:
    a least-squares line through the centres, capped at max_speed box heights per frame; 0 for a single box."""
    keep = track.frames >= track.last_frame - frames if at_end else track.frames <= track.first_frame + frames
    t = track.frames[keep].astype(np.float64)
    if len(t) < 2:
        return np.zeros(2)
    centres = _centres(track.boxes[keep].astype(np.float64))
    dt = t - t.mean()
    velocity = (dt[:, None] * (centres - centres.mean(axis=0))).sum(axis=0) / (dt ** 2).sum()
    limit = max_speed * float(np.median(track.boxes[keep, 3] - track.boxes[keep, 1]))
    speed = float(np.hypot(*velocity))
    return velocity * (limit / speed) if speed > limit else velocity


def end_height(track: TrackSequence, at_end: bool, frames: int = 15) -> float:
    """The median box height over the last (at_end) or first `frames` frames: a person's size, whatever the pose of
    one frame (a crouch, a jump)."""
    keep = track.frames >= track.last_frame - frames if at_end else track.frames <= track.first_frame + frames
    return float(np.median(track.boxes[keep, 3] - track.boxes[keep, 1]))


def link_distance(a: TrackSequence, b: TrackSequence, max_speed: float = 0.1) -> float:
    """How far (box heights) track b starts from where track a's motion leads, b starting after a ends: a's end
    carried forward by its velocity, and b's start carried back by its own, whichever fits better (a person may
    stop or turn while unseen, so standing still counts too)."""
    gap = b.first_frame - a.last_frame
    end, start = _centres(a.boxes[-1:])[0], _centres(b.boxes[:1])[0]
    height = max(a.boxes[-1, 3] - a.boxes[-1, 1], b.boxes[0, 3] - b.boxes[0, 1], 1.0)
    forward = end + end_velocity(a, True, max_speed=max_speed) * gap
    backward = start - end_velocity(b, False, max_speed=max_speed) * gap
    misses = (np.hypot(*(start - forward)), np.hypot(*(end - backward)), np.hypot(*(start - end)))
    return float(min(misses)) / height


def link_tracks(tracks: list[TrackSequence], max_gap: int, max_distance: float, max_size_ratio: float = 1.5,
                max_speed: float = 0.1) -> list[TrackSequence]:
    """Join a track to one that ended shortly before where its motion leads (the same person, lost for a while).

    Candidate pairs (A ends, B starts at most max_gap frames later, at most max_distance box heights from where
    A's motion leads (link_distance), end box heights within max_size_ratio of each other) are taken closest
    first; each track gets at most one successor and one predecessor. The joined track keeps the earlier id.
    """
    if max_gap <= 0 or len(tracks) < 2:
        return list(tracks)
    candidates = []
    for a in tracks:
        for b in tracks:
            gap = b.first_frame - a.last_frame
            if a is b or gap <= 0 or gap > max_gap:
                continue
            heights = (end_height(a, True), end_height(b, False))
            if max(heights) > max_size_ratio * max(min(heights), 1.0):
                continue
            dist = link_distance(a, b, max_speed)
            if dist <= max_distance:
                candidates.append((dist, gap, a.track_id, b.track_id))
    successor: dict[int, int] = {}
    predecessor: dict[int, int] = {}
    for _, _, a_id, b_id in sorted(candidates):
        if a_id not in successor and b_id not in predecessor:
            successor[a_id], predecessor[b_id] = b_id, a_id
    by_id = {t.track_id: t for t in tracks}
    linked = []
    for t in tracks:
        if t.track_id in predecessor:
            continue
        joined, current = t, t.track_id
        while current in successor:
            current = successor[current]
            joined = _concat(joined, by_id[current])
        linked.append(joined)
    return linked


def track_detections(per_frame: list[FrameDetections], config: TrackerConfig | None = None) -> list[TrackSequence]:
    """Track a whole list of per-frame detections at once, fragments linked (for tests and small clips)."""
    tracker = PersonTracker(config)
    for detections in per_frame:
        tracker.update(detections)
    return tracker.tracks()


class NoPersonError(ValueError):
    """Nobody was detected in the whole video."""


def select_tracks(tracks: list[TrackSequence], num_frames: int, person: int | None = None, all_people: bool = False,
                  min_track_frames: int = 30, max_gap: int = 15) -> list[TrackSequence]:
    """Whom to follow: the main subject, the chosen `person` id, or every track detected long enough.

    The main subject is the track with the largest frames-seen x median-box-height (main_subject_score, gaps of up
    to max_gap frames counted as seen): the person seen longest and largest, not a passer-by who crosses the picture,
    not someone glimpsed now and then, and not necessarily whoever was there first. With all_people,
    every track detected in at least min(min_track_frames, num_frames) frames is returned, main subject first, the
    rest by decreasing score (the main subject always, even when it is shorter than that).
    """
    if not tracks:
        raise NoPersonError(f"no person detected in any of the {num_frames} frames; check that the video shows a "
                            "person, or try a larger detector (e.g. yolo11x-pose.pt)")
    ranked = sorted(tracks, key=lambda t: (-t.main_subject_score(max_gap), t.track_id))
    if person is not None:
        chosen = [t for t in tracks if t.track_id == person]
        if not chosen:
            listing = ", ".join(f"{t.track_id} ({t.num_detections} frames)" for t in ranked[:20])
            raise SettingError("person", f"no person with track id {person}; the tracks found are: {listing}")
        return chosen
    if not all_people:
        return ranked[:1]
    needed = min(min_track_frames, num_frames)
    return ranked[:1] + [t for t in ranked[1:] if t.num_detections >= needed]
