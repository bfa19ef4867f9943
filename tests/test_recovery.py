"""Recovery: a followed person's gaps looked at again, zoomed in (pipeline.recovery), by hand, through the
whole 2D stage on scripted detections (the sample clip's jump, which only the second look finds: test_pose2d.py)."""
from __future__ import annotations

import numpy as np
from test_pose2d import SCRIPT, ScriptedDetector, box_for, coded_frames, pose_for

from pipeline.detection import FrameDetections
from pipeline.pose2d import Pose2DConfig, estimate_2d
from pipeline.recovery import (
    RecoveryConfig,
    crop_around,
    gap_frames,
    match_detection,
    other_boxes,
    shifted,
    with_detections,
)
from pipeline.tracking import TrackSequence


def track(frames, confidences, boxes=None, track_id=1) -> TrackSequence:
    frames = np.asarray(frames, np.int64)
    if boxes is None:
        boxes = np.stack([[f, 0, f + 40, 40] for f in frames]).astype(np.float32)
    n = len(frames)
    return TrackSequence(track_id, frames, np.asarray(boxes, np.float32), np.asarray(confidences, np.float32),
                         np.zeros((n, 17, 2), np.float32) + frames[:, None, None],
                         np.full((n, 17), 0.8, np.float32))


def detections(boxes, confidences, fill: float = -1.0) -> FrameDetections:
    n = len(boxes)
    return FrameDetections(np.asarray(boxes, np.float32).reshape(n, 4), np.asarray(confidences, np.float32),
                           np.full((n, 17, 2), fill, np.float32), np.full((n, 17), 0.7, np.float32))


def test_the_crop_is_twice_the_expected_box_around_its_centre_clipped_to_the_frame():
    frame = np.arange(100 * 200 * 3, dtype=np.int64).reshape(100, 200, 3)
    crop, offset = crop_around(frame, np.array([90, 40, 110, 60]), RecoveryConfig())  # 20 px: a 40 px square
    np.testing.assert_array_equal(offset, [80, 30])
    np.testing.assert_array_equal(crop, frame[30:70, 80:120])
    crop, offset = crop_around(frame, np.array([-10, 70, 30, 110]), RecoveryConfig(crop=3.0))  # past the corner
    np.testing.assert_array_equal(offset, [0, 30])
    np.testing.assert_array_equal(crop, frame[30:100, 0:70])
    found = shifted(detections([[1, 2, 11, 22]], [0.9], fill=5.0), offset)
    np.testing.assert_allclose(found.boxes, [[1, 32, 11, 52]])
    np.testing.assert_allclose(found.keypoints[0, 0], [5, 35])


def test_gaps_are_the_misses_between_two_confident_detections_up_to_max_gap():
    # Frame 6 is a weak detection (it extends the track but does not count as detected); 8-19 is 12 frames, too long.
    t = track([0, 1, 2, 5, 6, 7, 20, 30], [0.9, 0.9, 0.9, 0.9, 0.3, 0.9, 0.9, 0.9])
    np.testing.assert_array_equal(gap_frames(t, 0.5, max_gap=10), [3, 4, 6, 21, 22, 23, 24, 25, 26, 27, 28, 29])
    assert len(gap_frames(t, 0.5, max_gap=12)) == 12 + 12
    assert len(gap_frames(track([4], [0.9]), 0.5, 10)) == 0  # before the first and after the last: never


def test_the_detection_nearest_where_the_track_expects_the_person_is_taken_unless_it_is_someone_else():
    config = RecoveryConfig()
    expected = np.array([100, 100, 140, 200], np.float64)  # 100 px tall, centre (120, 150)
    found = detections([[400, 100, 440, 200], [130, 110, 170, 210], [90, 95, 130, 195]], [0.9, 0.8, 0.3])
    assert match_detection(expected, found, np.zeros((0, 4)), config) == 2  # the nearest, not the most confident
    # The nearest is held by another track in that frame: the next nearest within one box height is taken.
    assert match_detection(expected, found, np.array([[90, 95, 130, 195]]), config) == 1
    # Too far (more than one box height) or the wrong size is nobody.
    assert match_detection(expected, detections([[400, 100, 440, 200]], [0.9]), np.zeros((0, 4)), config) is None
    assert match_detection(expected, detections([[110, 140, 130, 170]], [0.9]), np.zeros((0, 4)), config) is None
    assert match_detection(expected, FrameDetections.empty(True), np.zeros((0, 4)), config) is None


def test_recovered_detections_are_added_in_frame_order_and_replace_only_weaker_ones():
    t = track([0, 2, 5], [0.9, 0.2, 0.9])
    found = [detections([[1, 0, 41, 40]], [0.6], fill=1), detections([[2, 0, 42, 40]], [0.7], fill=2),
             detections([[3, 0, 43, 40]], [0.1], fill=3), detections([[4, 0, 44, 40]], [0.9], fill=4)]
    new, changed = with_detections(t, np.array([1, 2, 3, 4]), found, [0, 0, None, 0])
    assert changed == 3
    np.testing.assert_array_equal(new.frames, [0, 1, 2, 4, 5])
    np.testing.assert_allclose(new.confidences, [0.9, 0.6, 0.7, 0.9, 0.9])
    np.testing.assert_allclose(new.keypoints[:, 0, 0], [0, 1, 2, 4, 5])
    np.testing.assert_allclose(new.boxes[:, 0], [0, 1, 2, 4, 5])
    # A detection weaker than the one the track has keeps the track's.
    same, none = with_detections(t, np.array([2]), [detections([[9, 0, 49, 40]], [0.1])], [0])
    assert none == 0 and same.boxes[1, 0] == 2


def test_other_tracks_boxes_in_a_frame():
    a, b = track([1, 2, 3], [0.9] * 3, track_id=1), track([2, 4], [0.9] * 2, track_id=2)
    np.testing.assert_allclose(other_boxes([a, b], 1, 2), [[2, 0, 42, 40]])
    assert other_boxes([a, b], 1, 3).shape == (0, 4)


class LooksAgain(ScriptedDetector):
    """The scripted detector, which on a second look (at 480 px: a crop, here the whole of the tiny frame) also finds
    person 0 in the 4 frames it misses at first (10-13)."""

    def __call__(self, frames, imgsz=None):
        out = super().__call__(frames, imgsz)
        if imgsz != 480:
            return out
        for k, frame in enumerate(frames):
            i = int(frame[0, 0, 0])
            if 10 <= i < 14:
                out[k] = FrameDetections(box_for(i, 0)[None], np.array([0.8], np.float32), pose_for(i, 0)[None],
                                         np.full((1, 17), 0.6, np.float32))
        return out


def test_the_stage_detects_the_followed_persons_gap_again_and_fills_it_with_what_it_finds():
    detector = LooksAgain(SCRIPT)
    progress = []
    out = estimate_2d(lambda: coded_frames(40), Pose2DConfig(batch_size=16, max_gap=5), detector=detector,
                      progress=lambda name, n: progress.append((name, n)))
    person = out.people[0]
    np.testing.assert_array_equal(person.valid, np.arange(40) >= 3)  # the gap is detected now
    for i in range(10, 14):
        np.testing.assert_allclose(person.keypoints_coco[i], pose_for(i, 0))
        np.testing.assert_allclose(person.scores_coco[i], 0.6)
    assert detector.sizes[-1] == 480 and detector.batches[-1] == 4 and progress[-1] == ("recover", 4)
    assert out.detection["recovery"] == {"imgsz": 480, "frames": 4, "crops": 4,
                                         "people": {"1": {"gap_frames": 4, "recovered": 4, "detected": 4}}}
    # Off: the gap stays an interpolation, and nothing is detected twice.
    off = LooksAgain(SCRIPT)
    plain = estimate_2d(lambda: coded_frames(40), Pose2DConfig(batch_size=16, max_gap=5,
                                                               recovery=RecoveryConfig(enabled=False)), detector=off)
    assert not plain.people[0].valid[10:14].any() and 480 not in off.sizes
    assert plain.detection["recovery"] == {"enabled": False}


def test_a_one_shot_frame_iterator_cannot_be_read_again_and_says_so(caplog):
    detector = LooksAgain(SCRIPT)
    out = estimate_2d(coded_frames(40), Pose2DConfig(batch_size=16, max_gap=5), detector=detector)
    assert not out.people[0].valid[10:14].any()
    assert out.detection["recovery"] == {"imgsz": 480, "frames": 0, "crops": 0, "skipped": "frames not readable twice"}
    assert "cannot be read twice" in caplog.text


class TwoClose:
    """Two people 25 px apart (boxes 40 px tall), both missed in frames 10-13; the second look finds only one box,
    where both their tracks expect someone."""

    has_keypoints = True

    def __init__(self):
        self.sizes = []

    @staticmethod
    def box(i, p):
        return np.array([100 + 25 * p, 0, 140 + 25 * p, 40], np.float32) + [i, 0, i, 0]

    def __call__(self, frames, imgsz=None):
        self.sizes.append(imgsz)
        out = []
        for frame in frames:
            i, x0 = int(frame[0, 0, 0]), int(frame[0, 0, 1])  # a crop's left edge is in its pixels
            people = [0, 1] if not 10 <= i < 14 else ([0] if imgsz == 480 else [])
            boxes = np.stack([self.box(i, p) - [x0, 0, x0, 0] for p in people]) if people else np.zeros((0, 4),
                                                                                                     np.float32)
            out.append(FrameDetections(boxes, np.full(len(people), 0.9, np.float32),
                                       np.zeros((len(people), 17, 2), np.float32) + boxes[:, None, :2],
                                       np.full((len(people), 17), 0.8, np.float32)))
        return out


def test_one_box_found_again_goes_to_one_followed_person_only():
    def frames():  # the frame index in the first channel, the column in the second
        for frame in coded_frames(40, w=250):
            frame[:, :, 1] = np.arange(250)
            yield frame

    out = estimate_2d(frames, Pose2DConfig(batch_size=16, max_gap=5, imgsz=640,
                                                                   all_people=True, min_track_frames=10),
                      detector=TwoClose())
    assert len(out.people) == 2
    filled = [int(p.valid[10:14].sum()) for p in out.people]
    assert sorted(filled) == [0, 4], filled
    record = out.detection["recovery"]["people"]
    assert sorted(v["recovered"] for v in record.values()) == [0, 4] and out.detection["recovery"]["crops"] == 8
