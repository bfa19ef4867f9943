"""The tracker and target selection on synthetic detections with known identities."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.detection import FrameDetections
from pipeline.tracking import (
    NoPersonError,
    PersonTracker,
    TrackerConfig,
    TrackSequence,
    box_iou,
    link_tracks,
    presence_span,
    select_tracks,
    track_detections,
)


def person_box(cx: float, cy: float, h: float) -> np.ndarray:
    return np.array([cx - h / 4, cy - h / 2, cx + h / 4, cy + h / 2], np.float32)


def pose_in(box: np.ndarray, kind: str) -> np.ndarray:
    """17 keypoints spread over the box; 'arms_up' and 'arms_down' differ in the arm joints."""
    x0, y0, x1, y1 = box
    rng = np.random.default_rng(0)
    rel = rng.uniform(0.2, 0.8, size=(17, 2)).astype(np.float32)
    if kind == "arms_up":
        rel[5:11, 1] = 0.05
    return np.stack([x0 + rel[:, 0] * (x1 - x0), y0 + rel[:, 1] * (y1 - y0)], axis=-1)


def frame_of(boxes: list[np.ndarray], confs: list[float], poses: list[str] | None = None) -> FrameDetections:
    if not boxes:
        return FrameDetections.empty(with_keypoints=poses is not None)
    b = np.stack(boxes).astype(np.float32)
    c = np.asarray(confs, np.float32)
    if poses is None:
        return FrameDetections(b, c)
    kp = np.stack([pose_in(box, kind) for box, kind in zip(boxes, poses, strict=True)])
    return FrameDetections(b, c, kp, np.full(kp.shape[:2], 0.9, np.float32))


def test_box_iou_by_hand():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 5, 15, 15], [20, 20, 30, 30], [0, 0, 10, 10]])
    np.testing.assert_allclose(box_iou(a, b), [[25 / 175, 0.0, 1.0]])


def test_two_people_keep_their_ids_and_survive_misses():
    frames = []
    for f in range(40):
        boxes, confs = [], []
        if not 10 <= f < 15:  # person A is missed for 5 frames
            boxes.append(person_box(100 + 3 * f, 200, 200))
            confs.append(0.9)
        if f >= 5:  # person B enters at frame 5
            boxes.append(person_box(600 - 2 * f, 220, 180))
            confs.append(0.8)
        frames.append(frame_of(boxes, confs))
    tracks = track_detections(frames)
    assert [t.track_id for t in tracks] == [1, 2]
    a, b = tracks
    assert list(a.frames) == [f for f in range(40) if not 10 <= f < 15]
    assert list(b.frames) == list(range(5, 40))
    np.testing.assert_allclose(a.boxes[-1], person_box(100 + 3 * 39, 200, 200))
    assert a.keypoints is None


def overlapping_pair(seed: int, frames: int = 40) -> list[FrameDetections]:
    """Two people one partly behind the other (box IoU 0.6, as much as the detector's NMS lets through), boxes
    jittering, listed in random order each frame."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(frames):
        a = person_box(300 + rng.normal(0, 8), 300 + rng.normal(0, 8), 200)
        b = person_box(326 + rng.normal(0, 8), 300 + rng.normal(0, 8), 200)
        people = [(a, "arms_up"), (b, "arms_down")]
        if rng.random() < 0.5:
            people.reverse()
        out.append(frame_of([p[0] for p in people], [0.9, 0.9], [p[1] for p in people]))
    return out


def arms_up_throughout(track: TrackSequence) -> bool | None:
    up = track.keypoints[:, 5:11, 1].mean(axis=1) < (track.boxes[:, 1] + track.boxes[:, 3]) / 2 - 60
    return bool(up.all()) if up.all() or not up.any() else None  # None: the identity switched


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_overlapping_people_are_told_apart_by_pose(seed):
    frames = overlapping_pair(seed)
    tracks = track_detections(frames)
    assert len(tracks) == 2
    assert {arms_up_throughout(t) for t in tracks} == {True, False}
    # The boxes alone cannot do it: without the keypoint term the identities get mixed up.
    boxes_only = track_detections(frames, TrackerConfig(keypoint_weight=0.0))
    assert any(arms_up_throughout(t) is None for t in boxes_only)


def test_weak_detections_extend_tracks_but_never_start_one():
    frames = [frame_of([person_box(100, 100, 100)], [0.9])]
    frames += [frame_of([person_box(100 + f, 100, 100)], [0.3]) for f in range(1, 6)]  # weak: continues track 1
    frames += [frame_of([person_box(900, 100, 100)], [0.3])]  # weak and alone: ignored
    tracks = track_detections(frames)
    assert len(tracks) == 1 and list(tracks[0].frames) == [0, 1, 2, 3, 4, 5]


def test_a_second_box_on_part_of_a_tracked_person_starts_no_track_but_another_person_does():
    """Non-maximum suppression keeps a box on someone's upper half beside their whole-body box (IoU 0.5; the sample
    clip's jumper mid-somersault): its keypoints lie on theirs, so however confident it starts no track. Someone else
    whose box overlaps as much has their own keypoints, and starts one."""
    def frame(f: int, other: str) -> FrameDetections:
        whole = person_box(300 + 2 * f, 300, 200)
        keypoints = pose_in(whole, "arms_down")
        scores = np.full(17, 0.9, np.float32)
        if other == "upper half":
            box = np.array([whole[0], whole[1], whole[2], whole[1] + 100], np.float32)
            second, second_scores = keypoints.copy(), scores.copy()
            second[11:, 1] = box[3] - 5  # hips, knees and ankles squeezed into the half box, unsure
            second_scores[11:] = 0.2
        else:
            box = whole + np.array([33, 0, 33, 0], np.float32)  # beside them: IoU 0.5
            second, second_scores = pose_in(box, "arms_up"), scores
        return FrameDetections(np.stack([whole, box]), np.array([0.9, 0.8], np.float32), np.stack([keypoints, second]),
                               np.stack([scores, second_scores]))

    assert box_iou(person_box(300, 300, 200), person_box(300, 300, 200) + [33, 0, 33, 0])[0, 0] == pytest.approx(
        0.5, abs=0.01)
    part = track_detections([frame(f, "upper half") for f in range(20)])
    assert len(part) == 1 and part[0].num_detections == 20 and np.all(part[0].boxes[:, 3] - part[0].boxes[:, 1] == 200)
    assert len(track_detections([frame(f, "upper half") for f in range(20)], TrackerConfig(duplicate_oks=1.01))) == 2
    assert [t.num_detections for t in track_detections([frame(f, "someone else") for f in range(20)])] == [20, 20]


def test_empty_first_frames_and_frame_indices():
    tracker = PersonTracker()
    for _ in range(3):
        tracker.update(FrameDetections.empty(with_keypoints=True))
    assert tracker.tracks() == []
    tracker.update(frame_of([person_box(50, 50, 80)], [0.9], ["arms_up"]))
    tracks = tracker.tracks()
    assert tracker.num_frames == 4 and len(tracks) == 1
    assert list(tracks[0].frames) == [3] and tracks[0].keypoints.shape == (1, 17, 2)


def test_lost_too_long_gets_a_new_id_unless_linked():
    frames = [frame_of([person_box(100, 100, 100)], [0.9]) for _ in range(5)]
    frames += [frame_of([], []) for _ in range(40)]
    frames += [frame_of([person_box(130, 100, 100)], [0.9]) for _ in range(5)]
    config = TrackerConfig(max_missed=30, link_max_gap=0)
    assert [t.track_id for t in track_detections(frames, config)] == [1, 2]
    linked = track_detections(frames, TrackerConfig(max_missed=30, link_max_gap=60))
    assert len(linked) == 1 and linked[0].track_id == 1
    assert list(linked[0].frames) == list(range(5)) + list(range(45, 50))
    far = track_detections(frames[:45] + [frame_of([person_box(900, 100, 100)], [0.9]) for _ in range(5)])
    assert len(far) == 2  # a person appearing elsewhere is somebody else


def seq(track_id: int, first: int, last: int, height: float, cx: float = 100.0) -> TrackSequence:
    frames = np.arange(first, last + 1)
    boxes = np.stack([person_box(cx, 300, height)] * len(frames))
    return TrackSequence(track_id, frames, boxes, np.ones(len(frames), np.float32), None, None)


def test_link_tracks_picks_the_closest_fragment():
    a = seq(1, 0, 9, 100, cx=100)
    near = seq(2, 20, 29, 100, cx=150)
    nearer = seq(3, 15, 29, 100, cx=110)
    out = link_tracks([a, near, nearer], max_gap=30, max_distance=1.0)
    assert [t.track_id for t in out] == [1, 2]
    assert out[0].present_frames == 30 and out[0].num_detections == 25


def test_main_subject_is_present_longest_and_largest():
    passer_by = seq(1, 0, 59, 400)  # first and tall, but only 60 frames
    subject = seq(2, 10, 199, 300)  # 190 frames
    background = seq(3, 0, 199, 80)  # whole clip, but small
    chosen = select_tracks([passer_by, subject, background], num_frames=200)
    assert [t.track_id for t in chosen] == [2]
    assert [t.track_id for t in select_tracks([passer_by, subject, background], 200, person=3)] == [3]
    everyone = select_tracks([passer_by, subject, background, seq(4, 0, 9, 300)], 200, all_people=True,
                             min_track_frames=30)
    assert [t.track_id for t in everyone] == [2, 1, 3]  # main subject first; the 10-frame track 4 is left out
    with pytest.raises(ValueError, match="no person with track id 7.*2 \\(190 frames\\)"):
        select_tracks([passer_by, subject], 200, person=7)
    with pytest.raises(NoPersonError, match="no person detected in any of the 200 frames"):
        select_tracks([], 200)


def test_summary_is_json_ready():
    s = seq(5, 3, 12, 200).summary()
    assert s == {"track_id": 5, "first_frame": 3, "last_frame": 12, "detected_frames": 10, "seen_frames": 10,
                 "median_box_height": 200.0, "score": 2000.0}


def crossing(frames: int = 120, hidden: tuple[int, int] | None = (52, 68), speed: float = 4.0,
             heights: tuple[float, float] = (120, 120)) -> list[FrameDetections]:
    """Two people walking towards each other along the same line and crossing at frame 60: A (arms up) from the
    left, B (arms down) from the right. While B is behind A (frames `hidden`) the detector sees only A."""
    out = []
    for f in range(frames):
        a = person_box(100 + speed * f, 300, heights[0])
        b = person_box(100 + speed * 120 - speed * f, 300 + (heights[0] - heights[1]) / 2, heights[1])
        people = [(a, "arms_up")]
        if hidden is None or not hidden[0] <= f < hidden[1]:
            people.append((b, "arms_down"))
        out.append(frame_of([p[0] for p in people], [0.9] * len(people), [p[1] for p in people]))
    return out


def arms_up(track: TrackSequence) -> np.ndarray:
    """Per detection: are the arm joints in the top quarter of the box (the 'arms_up' pose of pose_in)?"""
    top, height = track.boxes[:, 1], track.boxes[:, 3] - track.boxes[:, 1]
    return track.keypoints[:, 5:11, 1].mean(axis=1) < top + 0.25 * height


def moving_right(track: TrackSequence) -> bool:
    centres = (track.boxes[:, 0] + track.boxes[:, 2]) / 2
    return bool(np.all(np.diff(centres) > 0))


@pytest.mark.parametrize("hidden", [None, (52, 68), (40, 80)])
def test_two_people_crossing_keep_their_ids(hidden):
    """Through the crossing, with the one behind unseen for 0, 16 or 40 frames (longer than max_missed: the
    fragments are joined where B's motion leads), each person keeps one id and every box is theirs."""
    tracks = track_detections(crossing(hidden=hidden), TrackerConfig(max_missed=30))
    assert len(tracks) == 2
    a, b = sorted(tracks, key=lambda t: t.boxes[0, 0])
    assert moving_right(a) and a.num_detections == 120 and arms_up(a).all()
    assert not moving_right(b) and not arms_up(b).any()
    assert b.num_detections == 120 - (0 if hidden is None else hidden[1] - hidden[0])


def test_crossing_people_of_different_sizes_keep_their_ids():
    """A near person (150 px) passes in front of a far one (100 px), both seen throughout."""
    tracks = track_detections(crossing(hidden=None, heights=(150, 100)))
    assert len(tracks) == 2 and sorted(t.num_detections for t in tracks) == [120, 120]
    assert {moving_right(t) for t in tracks} == {True, False}
    assert {float(np.ptp(t.boxes[:, 3] - t.boxes[:, 1])) for t in tracks} == {0.0}  # no box of the other size


def test_fragments_are_joined_where_the_motion_leads_not_where_the_person_was():
    """A walker (3 px/frame, 100 px tall) lost for 45 frames reappears 135 px further on (1.35 heights: too far
    for a link by position alone); meanwhile somebody else starts where the walker was lost."""
    frames = []
    for f in range(100):
        boxes = []
        if not 40 <= f < 85:
            boxes.append(person_box(100 + 3 * f, 300, 100))
        if f >= 60:
            boxes.append(person_box(100 + 3 * 39 + 5, 300, 100))  # a standing person where the walker vanished
        frames.append(frame_of(boxes, [0.9] * len(boxes)))
    tracks = track_detections(frames, TrackerConfig(max_missed=30))
    walker = next(t for t in tracks if t.track_id == 1)
    assert list(walker.frames) == [f for f in range(100) if not 40 <= f < 85]
    assert moving_right(walker) and len(tracks) == 2
    # Without the motion the walker is joined to the person standing where he vanished.
    static = track_detections(frames, TrackerConfig(max_missed=30, link_max_speed=0.0))
    assert 60 in next(t for t in static if t.track_id == 1).frames


def test_fragments_of_very_different_size_are_not_joined():
    near = seq(1, 0, 29, 200, cx=100)
    far = seq(2, 40, 69, 100, cx=120)
    assert len(link_tracks([near, far], max_gap=60, max_distance=1.0)) == 2
    assert len(link_tracks([near, seq(3, 40, 69, 180, cx=120)], max_gap=60, max_distance=1.0)) == 1


def test_main_subject_in_a_crowd_is_the_one_seen_longest_not_glimpsed_over_the_whole_clip():
    """Someone detected every 20th frame over 600 frames (fragments linked) against someone seen throughout 300
    frames at the same size: the second is followed. Gaps up to max_gap count as seen."""
    glimpsed = TrackSequence(1, np.arange(0, 600, 20), np.stack([person_box(100, 300, 100)] * 30),
                             np.ones(30, np.float32), None, None)
    steady = seq(2, 100, 399, 100)
    assert glimpsed.seen_frames(max_gap=15) == 30 and glimpsed.seen_frames(max_gap=19) == 581
    assert [t.track_id for t in select_tracks([glimpsed, steady], 600)] == [2]
    assert [t.track_id for t in select_tracks([glimpsed, steady], 600, max_gap=19)] == [1]


def test_presence_span_covers_detections_and_short_gaps_only():
    span = presence_span(np.array([2, 3, 6, 20, 21]), num_frames=25, max_gap=3)
    expected = np.zeros(25, bool)
    expected[[2, 3, 4, 5, 6, 20, 21]] = True  # 4-5: a 2-frame gap; 7-19 is too long; nothing before 2 or after 21
    np.testing.assert_array_equal(span, expected)
    np.testing.assert_array_equal(presence_span(np.array([0]), 3, 5), [True, False, False])
