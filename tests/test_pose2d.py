"""The 2D stage: gap filling by hand, the whole stage on scripted detections, HRNet's second pass, random YOLO
weights end to end, and the real sample clip with the bundled weights."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.detection import DetectorConfig, FrameDetections, PersonDetector, load_yolo
from pipeline.media.decode import iter_frames
from pipeline.pose2d import Pose2DConfig, Pose2DEstimator, estimate_2d, fill_gaps
from pipeline.recovery import RecoveryConfig
from pipeline.skeleton import coco_to_h36m
from pipeline.tracking import NoPersonError, TrackerConfig

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos" / "sports2d_demo.mp4"


def test_fill_gaps_by_hand():
    frames = np.array([2, 5, 20])
    values = np.array([[0.0], [30.0], [100.0]])
    out = fill_gaps(frames, values, num_frames=25, max_gap=3)
    expected = np.zeros(25)
    expected[:3] = 0  # before the first detection: its value
    expected[3], expected[4], expected[5] = 10, 20, 30  # a 2-frame gap: linear
    expected[6:13] = 30  # a 14-frame gap is too long to interpolate: nearest detected frame...
    expected[13:] = 100  # ...and after the last detection its value
    np.testing.assert_allclose(out[:, 0], expected)
    long = fill_gaps(frames, values, num_frames=25, max_gap=14)
    np.testing.assert_allclose(long[6, 0], 30 + 70 / 15)
    np.testing.assert_allclose(long[19, 0], 30 + 70 * 14 / 15)
    single = fill_gaps(np.array([0]), np.ones((1, 17, 2)), num_frames=1, max_gap=5)
    assert single.shape == (1, 17, 2)
    with pytest.raises(ValueError):
        fill_gaps(np.array([3, 1]), np.zeros((2, 1)), 5, 1)


def coded_frames(n: int, h: int = 48, w: int = 64):
    """Tiny frames whose pixels carry their own index, so test doubles know which frame they are given."""
    for i in range(n):
        yield np.full((h, w, 3), i, np.uint8)


def pose_for(frame: int, person: int) -> np.ndarray:
    """Random keypoints inside the person's box, standing up: shoulders (COCO 5, 6) above the hips (11, 12)."""
    rng = np.random.default_rng(1000 * person + frame)
    pose = rng.uniform(0, 40, (17, 2))
    pose[[5, 6], 1], pose[[11, 12], 1] = rng.uniform(0, 10, 2), rng.uniform(25, 40, 2)
    return (pose + [100 * person, 0]).astype(np.float32)


def box_for(frame: int, person: int) -> np.ndarray:
    return np.array([100 * person + frame, 0, 100 * person + frame + 40, 40], np.float32)


class ScriptedDetector:
    """Stands in for PersonDetector: returns the detections a script gives for each frame index."""

    has_keypoints = True

    def __init__(self, script: dict[int, list[int]]):
        self.script = script  # frame index -> people (0, 1, ...) visible in it
        self.batches: list[int] = []
        self.sizes: list[int | None] = []  # the input size of each call

    def __call__(self, frames, imgsz=None):
        self.batches.append(len(frames))
        self.sizes.append(imgsz)
        out = []
        for frame in frames:
            i = int(frame[0, 0, 0])
            people = self.script.get(i, [])
            if not people:
                out.append(FrameDetections.empty(with_keypoints=True))
                continue
            out.append(FrameDetections(
                np.stack([box_for(i, p) for p in people]), np.full(len(people), 0.9, np.float32),
                np.stack([pose_for(i, p) for p in people]), np.full((len(people), 17), 0.8, np.float32)))
        return out


# Person 0: frames 3..39 except a 4-frame miss at 10..13; person 1 passes by in frames 20..25; frames 0..2 are empty.
SCRIPT = {i: [p for p in (0, 1) if (p == 0 and 3 <= i < 40 and not 10 <= i < 14) or (p == 1 and 20 <= i < 26)]
          for i in range(40)}


def test_stage_on_scripted_detections():
    detector = ScriptedDetector(SCRIPT)
    progress = []
    config = Pose2DConfig(batch_size=16, max_gap=5)
    out = estimate_2d(coded_frames(40), config, progress=lambda name, n: progress.append((name, n)),
                      detector=detector)
    # imgsz "auto": the first 6 frames are probed at 1280 (40 px people in a 64 px frame are large), then all 40
    # frames are detected at 640, the probe frames included.
    assert detector.batches == [6, 16, 16, 8] and detector.sizes == [1280, 640, 640, 640]
    assert out.detection == {"imgsz": 640, "chosen": "auto", "probe_frames": 6, "probe_imgsz": 1280,
                             "people_seen": 3, "small_height_px": 40.0,
                             # 3 of the 6 probe frames show a person standing up: the picture is upright
                             "turn": {"turn": 0, "chosen": "auto", "probe_frames": 6,
                                      "probed": {"0": {"standing_frames": 3, "confidence": 2.7}}},
                             # a one-shot iterator cannot be read again for the gap at 10-13 (test_recovery.py)
                             "recovery": {"imgsz": 480, "frames": 0, "crops": 0,
                                          "skipped": "frames not readable twice"}}
    assert progress == [("detect", 16), ("detect", 32), ("detect", 40)]
    assert out.num_frames == 40 and out.image_size == (64, 48)
    assert [t["track_id"] for t in out.tracks] == [1, 2]
    (person,) = out.people
    assert person.track_id == 1
    assert person.keypoints.shape == (40, 17, 2) and person.scores.shape == (40, 17)
    assert person.keypoints_coco.shape == (40, 17, 2) and person.boxes.shape == (40, 4)
    expected_valid = np.array([3 <= i and not 10 <= i < 14 for i in range(40)])
    np.testing.assert_array_equal(person.valid, expected_valid)
    for i in np.flatnonzero(expected_valid):
        np.testing.assert_allclose(person.keypoints_coco[i], pose_for(i, 0))
        np.testing.assert_allclose(person.boxes[i], box_for(i, 0))
    for i in range(3):  # the empty first frames take the first detection's values
        np.testing.assert_allclose(person.keypoints_coco[i], pose_for(3, 0))
    for i in range(10, 14):  # the short miss is interpolated
        w = (i - 9) / 5
        np.testing.assert_allclose(person.keypoints_coco[i], (1 - w) * pose_for(9, 0) + w * pose_for(14, 0),
                                   rtol=1e-5)
    assert np.all(person.scores_coco[~expected_valid] == 0) and np.all(person.scores_coco[expected_valid] == 0.8)
    h36m, h36m_scores = coco_to_h36m(person.keypoints_coco, person.scores_coco)
    np.testing.assert_allclose(person.keypoints, h36m)
    np.testing.assert_allclose(person.scores, h36m_scores)


def test_choosing_a_person_and_everyone():
    out = estimate_2d(coded_frames(40), Pose2DConfig(person=2), detector=ScriptedDetector(SCRIPT))
    (passer_by,) = out.people
    assert passer_by.track_id == 2 and passer_by.valid.sum() == 6 and passer_by.valid[20:26].all()
    np.testing.assert_allclose(passer_by.keypoints_coco[0], pose_for(20, 1))  # edge values before the first frame
    everyone = estimate_2d(coded_frames(40), Pose2DConfig(all_people=True, min_track_frames=5),
                           detector=ScriptedDetector(SCRIPT))
    assert [p.track_id for p in everyone.people] == [1, 2]
    assert len(estimate_2d(coded_frames(40), Pose2DConfig(all_people=True, min_track_frames=10),
                           detector=ScriptedDetector(SCRIPT)).people) == 1


def test_nobody_in_the_video_is_a_clear_error():
    with pytest.raises(NoPersonError, match="no person detected in any of the 12 frames"):
        estimate_2d(coded_frames(12), Pose2DConfig(), detector=ScriptedDetector({}))
    with pytest.raises(ValueError, match="gave no frames"):
        estimate_2d(iter([]), Pose2DConfig(), detector=ScriptedDetector({}))


def test_one_frame_video():
    out = estimate_2d(coded_frames(1), Pose2DConfig(), detector=ScriptedDetector({0: [0]}))
    assert out.num_frames == 1 and out.people[0].valid.tolist() == [True]


class RecordingTopDown:
    """Stands in for pipeline.topdown.TopDownEstimator: keypoints at the box corners, records what it is given."""

    def __init__(self):
        self.calls: list[tuple[list[int], np.ndarray]] = []

    def __call__(self, images, boxes):
        boxes = np.asarray(boxes, np.float32)
        self.calls.append(([int(im[0, 0, 0]) for im in images], boxes.copy()))
        kp = np.repeat(boxes[:, None, :2], 17, axis=1) + np.arange(17, dtype=np.float32)[None, :, None]
        return kp, np.full((len(boxes), 17), 0.7, np.float32)


def test_hrnet_backend_runs_on_the_chosen_boxes_in_a_second_pass():
    topdown = RecordingTopDown()
    progress = []
    # No probe and no second look at the gaps (pipeline.recovery): two passes exactly.
    config = Pose2DConfig(keypoint_backend="hrnet", batch_size=8, imgsz=640, turn=0,
                          recovery=RecoveryConfig(enabled=False))
    out = estimate_2d(lambda: coded_frames(40), config, progress=lambda name, n: progress.append((name, n)),
                      detector=ScriptedDetector(SCRIPT), topdown=topdown)
    seen_frames = [i for frames, _ in topdown.calls for i in frames]
    expected = [i for i in range(40) if 0 in SCRIPT[i]]
    assert seen_frames == expected  # the main subject's detected frames only, each once, in order
    assert all(len(frames) <= 8 for frames, _ in topdown.calls)
    boxes = np.concatenate([b for _, b in topdown.calls])
    np.testing.assert_allclose(boxes, np.stack([box_for(i, 0) for i in expected]))
    person = out.people[0]
    for i in expected:
        np.testing.assert_allclose(person.keypoints_coco[i, 5], box_for(i, 0)[:2] + 5)
    assert person.scores_coco[expected].min() == pytest.approx(0.7)
    assert progress[-1] == ("hrnet", 40) and ("detect", 40) in progress
    with pytest.raises(TypeError, match="reads the frames twice"):
        estimate_2d(coded_frames(40), config, detector=ScriptedDetector(SCRIPT), topdown=topdown)
    lengths = iter([40, 39])
    with pytest.raises(ValueError, match="second pass over the video gave 39 frames"):
        estimate_2d(lambda: coded_frames(next(lengths)), config, detector=ScriptedDetector(SCRIPT), topdown=topdown)


@pytest.mark.parametrize("backend", ["yolo", "hrnet"])
def test_a_given_turn_runs_the_stage_on_turned_frames_and_returns_the_stored_pictures_pixels(backend):
    """--turn 90: the detector (and HRNet) get every frame turned a quarter clockwise (48x64 frames become 64x48), and
    what they found there comes back turned into the stored 64x48 picture's pixels."""
    from pipeline.orientation import turn_boxes, turn_points

    class ShapeRecordingDetector(ScriptedDetector):
        def __call__(self, frames, imgsz=None):
            self.shapes = getattr(self, "shapes", set()) | {frame.shape for frame in frames}
            return super().__call__(frames, imgsz)

    detector, topdown = ShapeRecordingDetector(SCRIPT), RecordingTopDown()
    config = Pose2DConfig(keypoint_backend=backend, turn=90, imgsz=640, recovery=RecoveryConfig(enabled=False))
    out = estimate_2d(lambda: coded_frames(40), config, detector=detector, topdown=topdown)
    assert detector.shapes == {(64, 48, 3)} and out.image_size == (64, 48) and out.turn == 90 and out.turn_given
    assert out.detection["turn"] == {"turn": 90, "chosen": "setting"}
    person = out.people[0]
    for i in np.flatnonzero(person.valid):  # the scripted detections were in the turned (48 wide, 64 high) frame
        np.testing.assert_allclose(person.boxes[i], turn_boxes(box_for(i, 0), 270, (48, 64)), atol=1e-4)
        found = pose_for(i, 0) if backend == "yolo" else box_for(i, 0)[:2] + np.arange(17, dtype=np.float32)[:, None]
        np.testing.assert_allclose(person.keypoints_coco[i], turn_points(found, 270, (48, 64)), atol=1e-4)
    if backend == "hrnet":
        assert [i for frames, _ in topdown.calls for i in frames] == [i for i in range(40) if 0 in SCRIPT[i]]


def test_detection_only_model_needs_hrnet():
    detector = ScriptedDetector(SCRIPT)
    detector.has_keypoints = False
    with pytest.raises(ValueError, match="detection-only"):
        Pose2DEstimator(Pose2DConfig(keypoint_backend="yolo"), detector=detector)
    with pytest.raises(ValueError, match="needs HRNet weights"):
        Pose2DEstimator(Pose2DConfig(keypoint_backend="hrnet"), detector=detector)
    with pytest.raises(ValueError, match="'yolo' or 'hrnet'"):
        Pose2DConfig(keypoint_backend="openpose")


def test_random_yolo_model_end_to_end():
    """The real detector plumbing with untrained weights: every frame gets a row whatever the model sees."""
    detector = PersonDetector(DetectorConfig(conf=0.0, imgsz=160), model=load_yolo("yolo11n-pose.yaml"))
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (90, 160, 3), dtype=np.uint8) for _ in range(5)]
    config = Pose2DConfig(batch_size=2, imgsz=160, tracker=TrackerConfig(new_track_conf=0.0, min_conf=0.0))
    out = estimate_2d(iter(frames), config, detector=detector)
    person = out.people[0]
    assert out.num_frames == 5 and person.keypoints.shape == (5, 17, 2) and person.valid.shape == (5,)
    assert person.valid.any() and np.isfinite(person.keypoints).all()


@pytest.fixture(scope="module")
def sample_result():
    if not SAMPLE.exists():
        pytest.skip("../shared sample clip not present")
    start = time.perf_counter()
    out = estimate_2d(lambda: iter_frames(SAMPLE), Pose2DConfig(all_people=True, batch_size=8))
    return out, time.perf_counter() - start


@pytest.mark.slow
def test_sample_clip_follows_the_jumper(sample_result):
    out, seconds = sample_result
    assert out.num_frames == 230 and out.image_size == (1768, 994)
    jumper, *others = out.people
    assert jumper.keypoints.shape == (230, 17, 2) and jumper.valid.shape == (230,)
    assert jumper.valid.sum() >= 180 and jumper.valid[0] and jumper.valid[-10:].any()
    feet_y = jumper.boxes[:, 3]
    centre_x = (jumper.boxes[:, 0] + jumper.boxes[:, 2]) / 2
    # Frames 0-120: standing on the roof of the hut (feet above y=520), left of centre.
    assert np.all(feet_y[:120] < 520) and np.all((centre_x[:120] > 550) & (centre_x[:120] < 950))
    # After the jump, on the grass in the lower right (feet below y=800).
    assert np.all(feet_y[195:][jumper.valid[195:]] > 800) and centre_x[200] > 1000
    # The walker crosses from right to left on the ground and is a different track.
    walker = next(p for p in others if p.valid.sum() > 100)
    walked = (walker.boxes[walker.valid, 0] + walker.boxes[walker.valid, 2]) / 2
    assert walked[0] - walked[-1] > 1000 and np.all(walker.boxes[walker.valid, 3] > 850)
    # Keypoints lie on the jumper: the confident ones inside the box (5 % margin) in every detected frame.
    box = jumper.boxes[jumper.valid]
    kp = jumper.keypoints_coco[jumper.valid]
    confident = jumper.scores_coco[jumper.valid] > 0.5
    margin = 0.05 * (box[:, 3] - box[:, 1])[:, None]
    inside = ((kp[..., 0] >= box[:, None, 0] - margin) & (kp[..., 0] <= box[:, None, 2] + margin)
              & (kp[..., 1] >= box[:, None, 1] - margin) & (kp[..., 1] <= box[:, None, 3] + margin))
    assert inside[confident].mean() > 0.98 and confident.mean() > 0.6
    # Undetected frames are filled and marked.
    assert np.isfinite(jumper.keypoints).all() and np.all(jumper.scores[~jumper.valid] == 0)
    print(f"sample clip: {out.num_frames} frames in {seconds:.1f} s ({out.num_frames / seconds:.1f} frames/s)")


@pytest.mark.slow
def test_the_sample_clips_jump_is_found_by_the_second_look_only(sample_result):
    """The jumper, backlit by the sun, leaves the hut's roof around frame 140; at the clip's 640 px the detector
    misses him in most of his jump, zoomed in on where his track puts him it finds him (pipeline.recovery)."""
    from pipeline.detection import DetectorConfig, PersonDetector
    from pipeline.media.decode import frames_at

    out, _ = sample_result
    jumper = out.people[0]
    record = out.detection["recovery"]
    assert record["imgsz"] == 480 and record["people"][str(jumper.track_id)]["detected"] >= 15
    jump = np.arange(140, 166)
    first_look = PersonDetector(DetectorConfig(imgsz=640))(frames_at(SAMPLE, jump.tolist()))
    missed = []
    for found, box in zip(first_look, jumper.boxes[jump], strict=True):
        centres = (found.boxes[:, :2] + found.boxes[:, 2:]) / 2
        near = np.linalg.norm(centres - (box[:2] + box[2:]) / 2, axis=1) < 0.5 * (box[3] - box[1])
        missed.append(not (near & (found.confidences >= 0.5)).any())
    found_again = jump[np.array(missed) & jumper.valid[jump]]
    assert len(found_again) >= 8, f"found again only in frames {found_again}"
    # Up on and above the roof, not the walker on the grass below (boxes from y 500 down).
    assert np.all(jumper.boxes[found_again, 1] < 300) and np.all(jumper.boxes[found_again, 3] < 560)


def test_hrnet_backend_with_a_small_random_hrnet():
    """The real TopDownEstimator (pipeline.topdown) with an untrained, shrunken HRNet behind the 2D stage."""
    import torch

    from pipeline.hrnet import HRNetConfig, PoseHRNet
    from pipeline.topdown import TopDownConfig, TopDownEstimator

    torch.manual_seed(0)
    net = PoseHRNet(HRNetConfig(width=8, input_size=(64, 64), stem_blocks=1, stage_modules=(1, 1, 1),
                                blocks_per_branch=1)).eval()
    topdown = TopDownEstimator(net, TopDownConfig(flip_test=False, batch_size=4))
    frames = lambda: coded_frames(20, h=48, w=400)  # noqa: E731
    script = {i: [0] for i in range(2, 20)}
    out = estimate_2d(frames, Pose2DConfig(keypoint_backend="hrnet", batch_size=4), detector=ScriptedDetector(script),
                      topdown=topdown)
    person = out.people[0]
    assert person.keypoints.shape == (20, 17, 2) and person.valid.sum() == 18
    assert np.isfinite(person.keypoints).all() and np.all(person.scores_coco[2:] != 0)
    # Every keypoint comes from inside the (1.25x enlarged, square) crop around its box.
    for i in range(2, 20):
        x0, y0, x1, y1 = box_for(i, 0)
        cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, 1.25 * max(x1 - x0, y1 - y0) / 2 + 1
        kp = person.keypoints_coco[i]
        assert np.all(np.abs(kp[:, 0] - cx) <= half) and np.all(np.abs(kp[:, 1] - cy) <= half)
        assert not np.allclose(kp, pose_for(i, 0))  # HRNet's, not the detector's keypoints


def test_real_clip_with_empty_first_frames():
    """The released demo crashes when frame 0 has nobody in it; here those frames are filled and marked invalid."""
    if not SAMPLE.exists():
        pytest.skip("../shared sample clip not present")
    import itertools

    black = [np.zeros((994, 1768, 3), np.uint8)] * 6
    frames = itertools.chain(black, iter_frames(SAMPLE, end=24))
    out = estimate_2d(frames, Pose2DConfig(batch_size=10))
    person = out.people[0]
    assert out.num_frames == 30 and person.keypoints.shape == (30, 17, 2)
    assert not person.valid[:6].any() and person.valid[6:].all()
    np.testing.assert_array_equal(person.keypoints[:6], np.repeat(person.keypoints[6:7], 6, axis=0))
    assert np.all(person.scores[:6] == 0) and np.all(person.boxes[6:, 3] < 520)  # the person on the hut's roof


def test_frame_counts_follow_the_frame_rate():
    """max_gap and friends are meant at 30 frames/s: a 20-frame miss is 0.67 s at 30 fps but 0.33 s at 60 fps."""
    script = {i: [0] for i in range(50) if not 10 <= i < 30}
    config = Pose2DConfig(max_gap=15)
    assert config.at_fps(60).max_gap == 30 and config.at_fps(60).tracker.max_missed == 60
    assert config.at_fps(29.97) is config and config.at_fps(None) is config
    at_30 = estimate_2d(coded_frames(50), config, detector=ScriptedDetector(script), fps=30).people[0]
    at_60 = estimate_2d(coded_frames(50), config, detector=ScriptedDetector(script), fps=60).people[0]
    np.testing.assert_allclose(at_30.keypoints_coco[15], pose_for(9, 0))  # too long at 30 fps: held
    w = (15 - 9) / 21
    np.testing.assert_allclose(at_60.keypoints_coco[15], (1 - w) * pose_for(9, 0) + w * pose_for(30, 0), rtol=1e-5)
    assert not at_60.valid[10:30].any() and at_60.track_id == at_30.track_id == 1


@pytest.mark.slow
def test_sample_clip_walker_is_drawn_only_while_there(sample_result):
    """The second person walks in at about 1.3 s and out before the end: their `span` is the stretch from their first
    to their last detection, and the renderer draws them only there (not as a held pose before and after)."""
    from pipeline.render import PERSON_BGR, SideBySideRenderer, WorldLimits

    out, _ = sample_result
    jumper, walker = out.people[0], max(out.people[1:], key=lambda p: p.valid.sum())
    track = next(t for t in out.tracks if t["track_id"] == walker.track_id)
    first, last = track["first_frame"], track["last_frame"]  # the first and last detection, weak ones included
    assert 20 < first < 60 and 180 < last < 229  # measured: 38 and 211
    assert not walker.span[:first].any() and not walker.span[last + 1:].any() and walker.span[first:last + 1].all()
    assert jumper.span.all() or jumper.span.mean() > 0.9
    worlds = np.zeros((2, 17, 3))
    worlds[:, :, 2] = np.linspace(0, 1.7, 17)
    worlds[1, :, 0] = 1.0
    renderer = SideBySideRenderer(out.image_size, ["lifter"], WorldLimits.from_worlds([worlds]))
    people = [jumper, walker]
    frames = dict(enumerate(iter_frames(SAMPLE, end=last + 10)))

    def walker_pixels(t: int) -> int:
        image = renderer.render(frames[t], np.stack([p.keypoints[t] for p in people]),
                                np.stack([p.scores[t] for p in people]), [p.valid[t] for p in people], [worlds],
                                shown=np.array([p.span[t] for p in people]), labels=["1", "2"])
        return int(np.all(image == np.array(PERSON_BGR[1], np.uint8), axis=-1).sum())

    assert walker_pixels(first - 10) == 0 and walker_pixels(last + 5) == 0  # not there yet / gone: not drawn
    assert walker_pixels(first + 30) > 100  # walking through: outlined in their colour


def test_spread_indices_are_the_frames_spread_sample_picks():
    from pipeline.imgsz import spread_indices, spread_sample

    for count in (1, 2, 3, 6, 7):
        for n in range(0, 300):
            picked = [int(frame[0]) for frame in spread_sample((np.array([i]) for i in range(n)), count)]
            assert spread_indices(n, count) == picked, (n, count)
    assert spread_indices(230, 6) == [0, 32, 96, 128, 192, 224]  # the sample clip's probe frames


class SeekableCodedFrames:
    """A frame source that can seek (pipeline.pose2d.SeekableFrames) over coded frames; it counts its passes."""

    def __init__(self, n: int, can_seek: bool = True):
        self.n, self.can_seek = n, can_seek
        self.passes = 0
        self.seeks: list[list[int]] = []

    def __call__(self):
        self.passes += 1
        return coded_frames(self.n)

    def count(self):
        return self.n if self.can_seek else None

    def frames_at(self, numbers):
        self.seeks.append(list(numbers))
        return [np.full((48, 64, 3), i, np.uint8) for i in numbers]


def test_a_source_that_can_seek_gives_the_probe_frames_without_another_pass():
    from pipeline.pose2d import SeekableFrames, probe_sample

    source = SeekableCodedFrames(100)
    assert isinstance(source, SeekableFrames) and not isinstance(lambda: coded_frames(3), SeekableFrames)
    sample = probe_sample(source, 6)
    assert source.passes == 0 and source.seeks == [[0, 16, 32, 64, 80, 96]]
    assert [int(f[0, 0, 0]) for f in sample] == [0, 16, 32, 64, 80, 96]
    unseekable = SeekableCodedFrames(100, can_seek=False)  # e.g. a file without packet timestamps
    assert [int(f[0, 0, 0]) for f in probe_sample(unseekable, 6)] == [0, 16, 32, 64, 80, 96]
    assert unseekable.passes == 1 and unseekable.seeks == []
    # The whole stage: the probe seeks, detection reads the clip once, the second look at the followed person's
    # gap (frames 10-13, pipeline.recovery) seeks those frames.
    detector, source = ScriptedDetector(SCRIPT), SeekableCodedFrames(40)
    out = estimate_2d(source, Pose2DConfig(batch_size=16, max_gap=5), detector=detector)
    assert detector.batches == [6, 16, 16, 8, 4] and out.num_frames == 40
    assert source.passes == 1 and source.seeks[-1] == [10, 11, 12, 13]


class RememberingDetector:
    """The bundled detector, answering a frame it has seen before (same pixels, same input size) from memory, and
    recording the frames of each call."""

    has_keypoints = True

    def __init__(self):
        self.detector = PersonDetector(DetectorConfig())
        self.answers: dict[tuple[bytes, int | None], FrameDetections] = {}
        self.calls: list[list[np.ndarray]] = []

    def __call__(self, frames, imgsz=None):
        import hashlib

        self.calls.append([np.array(f) for f in frames])
        keys = [(hashlib.sha256(np.ascontiguousarray(f)).digest(), imgsz) for f in frames]
        new = [(k, f) for k, f in zip(keys, frames, strict=True) if k not in self.answers]
        if new:
            answers = self.detector([f for _, f in new], imgsz=imgsz)
            self.answers.update({k: a for (k, _), a in zip(new, answers, strict=True)})
        return [self.answers[k] for k in keys]


def test_sample_clip_probe_by_seeking_reads_keyframes_and_chooses_the_same_size():
    """The runner's frame source seeks to the keyframes nearest the spread frames (one decoded frame each: the
    sample's are frames 0, 60, 120 and 180); a source that cannot seek gives the spread frames in one more decoding
    pass. The frames the probe gets are the clip's, and the size chosen is the same."""
    if not SAMPLE.exists():
        pytest.skip("../shared sample clip not present")
    from pipeline.media.decode import VideoFrames

    detector = RememberingDetector()
    estimator = Pose2DEstimator(Pose2DConfig(), detector=detector)
    _, size, record, _ = estimator.probe(lambda: iter_frames(SAMPLE))  # a plain function: one more pass
    _, seek_size, seek_record, _ = estimator.probe(VideoFrames(SAMPLE))
    assert seek_size == size == 640 and record["probe_frames"] == 6 and seek_record["probe_frames"] == 4
    _, seeked = detector.calls
    wanted = {0: None, 60: None, 120: None, 180: None}
    for number, frame in enumerate(iter_frames(SAMPLE, end=181)):  # keeps only the wanted frames
        if number in wanted:
            wanted[number] = frame
    for got, number in zip(seeked, wanted, strict=True):
        np.testing.assert_array_equal(got, wanted[number])


def test_the_probe_reads_the_keyframes_nearest_the_spread_frames_unless_too_few():
    from pipeline.pose2d import probe_numbers

    assert probe_numbers(230, 6) == [0, 32, 96, 128, 192, 224]  # no keyframes known: the spread frames
    assert probe_numbers(230, 6, [0, 60, 120, 180]) == [0, 60, 120, 180]
    assert probe_numbers(230, 6, range(0, 230, 30)) == [0, 30, 90, 120, 180, 210]  # ties go to the earlier
    assert probe_numbers(230, 6, [0, 200]) == [0, 32, 96, 128, 192, 224]  # 2 of 6: too few, spread frames kept
    assert probe_numbers(4, 6, [0, 2]) == [0, 1, 2, 3]  # a 4-frame clip: its frames, whatever its keyframes


@pytest.mark.parametrize("size,imgsz", [((1768, 994), 640), ((1088, 1920), 640), ((1080, 1920), 960),
                                        ((640, 480), 640), ((33, 1999), 1280)])
def test_letterbox_scale_is_ultralytics_letterbox(size, imgsz):
    """The size the detector's frames are decoded at is the one Ultralytics' letterbox resizes them to."""
    from ultralytics.data.augment import LetterBox

    from pipeline.pose2d import letterbox_scale

    r, scaled = letterbox_scale(size, imgsz)
    params = LetterBox((imgsz, imgsz)).get_params({"img": np.zeros((size[1], size[0], 3), np.uint8)})
    assert params["ratio"] == (r, r) and tuple(params["new_unpad"]) == scaled


def test_frames_decoded_at_the_letterbox_size_give_the_full_size_keypoints():
    """`decode_at_input_size`: the detector's frames come from ffmpeg already shrunk, and the keypoints are mapped
    back to the clip's pixels. On the sample clip they land a median 0.9 px from the full-size path's (two resampling
    filters; no offset), for the same people in the same frames."""
    if not SAMPLE.exists():
        pytest.skip("../shared sample clip not present")
    from pipeline.media.decode import VideoFrames

    detector = PersonDetector(DetectorConfig())
    runs = {}
    for scaled in (True, False):
        estimator = Pose2DEstimator(Pose2DConfig(imgsz=640, decode_at_input_size=scaled), detector=detector)
        runs[scaled] = estimator.run(VideoFrames(SAMPLE, 0, 60), fps=30)
    small, full = runs[True], runs[False]
    assert small.image_size == full.image_size == (1768, 994) and small.num_frames == full.num_frames == 60
    a, b = small.people[0], full.people[0]
    assert a.track_id == b.track_id
    both = a.valid & b.valid & (a.scores > 0.5).all(axis=1) & (b.scores > 0.5).all(axis=1)
    assert both.sum() >= 30
    distance = np.linalg.norm(a.keypoints[both] - b.keypoints[both], axis=-1)
    assert np.median(distance) < 1.5
    assert np.abs((a.keypoints[both] - b.keypoints[both]).reshape(-1, 2).mean(axis=0)).max() < 0.5  # no offset
