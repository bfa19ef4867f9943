"""Detector runtimes: the export cache, what "auto" picks, and the exported detector's keypoints on real footage.

The cache's bookkeeping (made once, reused, redone for other weights, nothing left by a failed export) is tested with
an exporter that writes a small file, so it takes milliseconds; the real Ultralytics export of yolo11n-pose is made
once per session (about a minute) into a temporary cache and checked against PyTorch on real frames.
"""
from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.app.models import pose2d_identity
from pipeline.cli import build_parser, config_from_args, error_message
from pipeline.detection import (
    DEFAULT_DETECTOR_SHA256,
    DetectorConfig,
    DetectorError,
    PersonDetector,
    default_detector_weights,
    load_yolo,
    sha256_of,
)
from pipeline.errors import SettingError
from pipeline.pose2d import Pose2DConfig
from pipeline.runtimes import (
    EXPORTED_NAME,
    ExportedHeatmapNet,
    RuntimeUnavailable,
    export_key,
    exported_model,
    heatmap_network,
    inference_precision,
    resolve_runtime,
)

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos" / "sports2d_demo.mp4"
CPU = torch.device("cpu")


class FileExporter:
    """Writes the file an export would (a few bytes), records each call; `fail` makes it stop half-way."""

    def __init__(self, fail: BaseException | None = None):
        self.calls: list[tuple[Path, str, int]] = []
        self.fail = fail

    def __call__(self, model_path: Path, runtime: str, imgsz: int) -> Path:
        self.calls.append((model_path, runtime, imgsz))
        target = model_path.parent / EXPORTED_NAME[runtime]
        target.write_bytes(b"half an onnx graph" if self.fail else b"an onnx graph")
        if self.fail:
            raise self.fail
        return target


def read_path(path: Path) -> Path:
    """A loader for FileExporter: hands over the copied weights' path (nothing to unpickle)."""
    assert path.is_file() and path.name == "model.pt"
    return path


@pytest.fixture
def weights(tmp_path) -> Path:
    path = tmp_path / "weights" / "detector.pt"
    path.parent.mkdir()
    path.write_bytes(b"the first weights")
    return path


def test_an_export_is_made_once_and_then_reused(tmp_path, weights):
    root, export = tmp_path / "exports", FileExporter()
    first = exported_model(weights, "a" * 64, "onnx", 640, load=read_path, cache_root=root, export=export)
    second = exported_model(weights, "a" * 64, "onnx", 640, load=read_path, cache_root=root, export=export)
    assert first == second == root / export_key("a" * 64, "onnx", 640) / "model.onnx"
    assert first.read_bytes() == b"an onnx graph"
    assert len(export.calls) == 1 and export.calls[0][1:] == ("onnx", 640)
    assert [p.name for p in root.iterdir()] == [f"{'a' * 64}-onnx-640-fp32"]  # no temporary folder left
    assert sorted(p.name for p in first.parent.iterdir()) == ["export.json", "model.onnx"]  # the .pt copy is gone
    record = json.loads((first.parent / "export.json").read_text())
    assert record["sha256"] == "a" * 64 and record["weights"] == str(weights) and record["dynamic"] is True


def test_other_weights_runtime_or_size_get_their_own_export(tmp_path, weights):
    root, export = tmp_path / "exports", FileExporter()
    paths = {exported_model(weights, sha, runtime, imgsz, load=read_path, cache_root=root, export=export)
             for sha, runtime, imgsz in [("a" * 64, "onnx", 640), ("b" * 64, "onnx", 640), ("a" * 64, "openvino", 640),
                                         ("a" * 64, "onnx", 1280)]}
    assert len(paths) == 4 and len(export.calls) == 4
    assert all(p.exists() for p in paths)


def test_changed_weights_are_exported_again_through_the_detector(tmp_path, monkeypatch):
    """PersonDetector keys the cache by the .pt's sha256: a different file gets a new export, the old one stays."""
    import pipeline.detection as detection

    seen: list[str] = []

    def recording_export(weights, sha, runtime, imgsz, load, cache_root):
        seen.append(sha)
        raise RuntimeUnavailable("stop here")  # the key is what this test is about; the real export is tested below

    pytest.importorskip("openvino")
    monkeypatch.setattr(detection, "exported_model", recording_export)
    original = default_detector_weights()
    copy = tmp_path / "copy.pt"
    copy.write_bytes(original.read_bytes())
    changed = tmp_path / "changed.pt"
    changed.write_bytes(original.read_bytes() + b"\0")  # a zip with trailing bytes still loads
    for path in (copy, changed):
        with pytest.raises(RuntimeUnavailable, match="stop here"):
            PersonDetector(DetectorConfig(weights=path, runtime="openvino"), export_root=tmp_path / "exports")
    assert seen[0] == DEFAULT_DETECTOR_SHA256 and seen[1] != seen[0] and len(seen[1]) == 64


@pytest.mark.parametrize("failure", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failed_or_interrupted_export_leaves_nothing_in_the_cache(tmp_path, weights, failure):
    root = tmp_path / "exports"
    expected = RuntimeUnavailable if isinstance(failure, Exception) else KeyboardInterrupt
    with pytest.raises(expected) as info:
        exported_model(weights, "a" * 64, "onnx", 640, load=read_path, cache_root=root,
                       export=FileExporter(fail=failure))
    if expected is RuntimeUnavailable:
        assert "disk full" in info.value.message and "torch runtime" in info.value.message
    assert list(root.iterdir()) == []
    export = FileExporter()
    path = exported_model(weights, "a" * 64, "onnx", 640, load=read_path, cache_root=root, export=export)
    assert path.read_bytes() == b"an onnx graph" and len(export.calls) == 1


def test_a_cache_folder_without_its_model_is_exported_again(tmp_path, weights):
    root = tmp_path / "exports"
    broken = root / export_key("a" * 64, "onnx", 640)
    broken.mkdir(parents=True)
    (broken / "export.json").write_text("{}")  # the model itself was deleted by hand
    export = FileExporter()
    path = exported_model(weights, "a" * 64, "onnx", 640, load=read_path, cache_root=root, export=export)
    assert len(export.calls) == 1 and path.read_bytes() == b"an onnx graph"
    assert [p.name for p in root.iterdir()] == [broken.name]


def test_an_unwritable_cache_is_a_clear_error(tmp_path, weights):
    not_a_folder = tmp_path / "exports"
    not_a_folder.write_text("a file where the cache folder should be")
    with pytest.raises(RuntimeUnavailable, match="failed"):
        exported_model(weights, "a" * 64, "onnx", 640, load=read_path, cache_root=not_a_folder,
                       export=FileExporter())


class _RunsCode:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_weights_that_would_run_code_are_refused_before_anything_is_exported(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    torch.save({"model": _RunsCode()}, evil)
    root, export = tmp_path / "exports", FileExporter()
    with pytest.raises(DetectorError, match="refusing to load"):
        exported_model(evil, "e" * 64, "openvino", 640, load=load_yolo, cache_root=root, export=export)
    assert export.calls == [] and list(root.iterdir()) == []
    assert "pickled code ran" not in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------------
# What "auto" picks


def test_auto_picks_openvino_on_an_x86_cpu():
    choice = resolve_runtime("auto", CPU, installed=["openvino", "onnx"], machine="x86_64")
    assert choice.runtime == "openvino"


def test_auto_runs_pytorch_on_a_gpu():
    for device in (torch.device("cuda"), torch.device("mps")):
        choice = resolve_runtime("auto", device, installed=["openvino", "onnx"], machine="x86_64")
        assert choice.runtime == "torch" and device.type.upper() in choice.reason


def test_auto_falls_back_to_pytorch_and_says_why():
    missing = resolve_runtime("auto", CPU, installed=["onnx"], machine="x86_64")  # onnxruntime is not faster here
    assert missing.runtime == "torch" and "pip install openvino" in missing.reason
    arm = resolve_runtime("auto", CPU, installed=["openvino"], machine="aarch64")
    assert arm.runtime == "torch" and "aarch64" in arm.reason
    not_pt = resolve_runtime("auto", CPU, exportable=False, installed=["openvino"], machine="x86_64")
    assert not_pt.runtime == "torch" and ".pt" in not_pt.reason


def test_an_explicit_runtime_is_used_or_says_what_to_install():
    assert resolve_runtime("onnx", CPU, installed=["onnx"]).runtime == "onnx"
    assert resolve_runtime("torch", CPU, installed=[]).runtime == "torch"
    with pytest.raises(RuntimeUnavailable, match="pip install openvino"):
        resolve_runtime("openvino", CPU, installed=["onnx"])
    with pytest.raises(RuntimeUnavailable, match="not one"):
        resolve_runtime("onnx", CPU, exportable=False, installed=["onnx"])


def test_an_unknown_runtime_is_named_by_its_flag():
    for make in (lambda: DetectorConfig(runtime="tensorrt"), lambda: Pose2DConfig(runtime="tensorrt")):
        with pytest.raises(SettingError) as info:
            make()
        assert info.value.setting == "runtime"
        assert error_message(info.value).startswith("--detector-runtime: must be one of auto, torch, onnx, openvino")


def test_the_flag_reaches_the_2d_settings_and_defaults_to_auto():
    assert config_from_args(build_parser().parse_args([])).pose2d.runtime == "auto"
    assert config_from_args(build_parser().parse_args(["--detector-runtime", "onnx"])).pose2d.runtime == "onnx"


def test_the_2d_cache_key_records_the_runtime_and_its_precision():
    torch_identity = pose2d_identity(Pose2DConfig(runtime="torch"))
    assert torch_identity["detector_runtime"] == "torch" and torch_identity["detector_precision"] == "f32"
    auto = pose2d_identity(Pose2DConfig(runtime="auto"))
    assert auto["detector_runtime"] == resolve_runtime("auto", CPU).runtime
    if auto["detector_runtime"] != "torch":
        assert {k: v for k, v in auto.items() if not k.startswith("detector_")} == \
            {k: v for k, v in torch_identity.items() if not k.startswith("detector_")}
        assert auto != torch_identity


def test_auto_falls_back_to_pytorch_when_the_export_fails(tmp_path, caplog):
    pytest.importorskip("openvino")
    unwritable = tmp_path / "exports"
    unwritable.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="pipeline.detection"):
        detector = PersonDetector(DetectorConfig(runtime="auto"), export_root=unwritable)
    if resolve_runtime("auto", CPU).runtime == "torch":
        pytest.skip("auto runs PyTorch on this machine anyway")
    assert detector.runtime == "torch" and detector.precision == "f32"
    assert "runs in PyTorch instead of openvino" in caplog.text
    with pytest.raises(RuntimeUnavailable, match="failed"):
        PersonDetector(DetectorConfig(runtime="openvino"), export_root=unwritable)


# ---------------------------------------------------------------------------------------------------------------
# The real export


@pytest.fixture(scope="session")
def openvino_exports(tmp_path_factory) -> Path:
    """yolo11n-pose exported for OpenVINO by Ultralytics' exporter, once per session, into a temporary cache."""
    pytest.importorskip("openvino")
    root = tmp_path_factory.mktemp("exports")
    detector = PersonDetector(DetectorConfig(runtime="openvino"), export_root=root)
    assert detector.runtime == "openvino"
    return root


def test_the_real_export_is_cached_under_the_weights_hash_and_reused(openvino_exports):
    folder = openvino_exports / f"{DEFAULT_DETECTOR_SHA256}-openvino-640-fp32"
    assert [p.name for p in openvino_exports.iterdir()] == [folder.name]
    model = folder / "model_openvino_model"
    assert sorted(p.name for p in model.iterdir()) == ["metadata.yaml", "model.bin", "model.xml"]
    assert not (folder / "model.pt").exists()
    record = json.loads((folder / "export.json").read_text())
    assert record["sha256"] == DEFAULT_DETECTOR_SHA256 and record["runtime"] == "openvino"
    assert "openvino" in record["versions"] and record["task"] == "pose"

    def must_not_export(*args):
        raise AssertionError("exported again")

    path = exported_model(default_detector_weights(), DEFAULT_DETECTOR_SHA256, "openvino", 640, load=load_yolo,
                          cache_root=openvino_exports, export=must_not_export)
    assert path == model


def test_a_cached_export_runs_without_unpickling_the_pt(openvino_exports, monkeypatch):
    """Start-up: with the export cached, the .pt is neither loaded nor unpickled (0.56 s of every run); the export's
    own metadata says it is a COCO-17 pose model. A cache entry without the task in export.json (made before it was
    recorded) reads it from the OpenVINO export's metadata.yaml."""
    import pipeline.detection as detection

    def no_pt(*args, **kwargs):
        raise AssertionError("the .pt was loaded")

    monkeypatch.setattr(detection, "load_yolo", no_pt)
    detector = PersonDetector(DetectorConfig(runtime="openvino"), export_root=openvino_exports)
    assert detector.runtime == "openvino" and detector.has_keypoints
    frame = np.zeros((120, 160, 3), np.uint8)
    assert len(detector([frame], imgsz=160)) == 1
    folder = openvino_exports / f"{DEFAULT_DETECTOR_SHA256}-openvino-640-fp32"
    record = json.loads((folder / "export.json").read_text())
    del record["task"]
    (folder / "export.json").write_text(json.dumps(record))
    try:
        assert detection.exported_task(folder / "model_openvino_model") == "pose"
    finally:
        (folder / "export.json").write_text(json.dumps({**record, "task": "pose"}))


@pytest.mark.slow
def test_the_default_runtime_gives_pytorchs_keypoints_on_the_sample_clip(openvino_exports):
    if not SAMPLE.is_file():
        pytest.skip(f"sample clip {SAMPLE} is absent")
    from pipeline.media.decode import iter_frames

    default = PersonDetector(DetectorConfig(runtime="auto"), export_root=openvino_exports)
    if default.runtime == "torch":
        pytest.skip("the default runtime is PyTorch on this machine")
    # OpenVINO computes in float32 on CPUs without native bfloat16 and in bfloat16 on CPUs with it (AVX-512 BF16, AMX)
    bfloat16 = inference_precision(default.runtime) == "bf16"
    reference = PersonDetector(DetectorConfig(runtime="torch"))
    frames = list(itertools.islice(iter_frames(SAMPLE), 16))
    ours, theirs = [], []
    for start in range(0, 16, 8):
        ours += default(frames[start:start + 8])
        theirs += reference(frames[start:start + 8])
    distances = []
    for a, b in zip(ours, theirs, strict=True):
        confident = b.confidences >= 0.5
        assert (a.confidences >= 0.5).sum() == confident.sum() >= 1  # the same people, in the same order
        # bfloat16 on an AMD EPYC with AVX-512 BF16, 64 frames: boxes a median 0.3 px off, at most 2.6
        np.testing.assert_allclose(a.boxes[confident], b.boxes[confident], atol=5.0 if bfloat16 else 0.5)
        distances.append(np.linalg.norm(a.keypoints[confident] - b.keypoints[confident], axis=-1).ravel())
    distances = np.concatenate(distances)
    assert len(distances) >= 16 * 17
    assert np.median(distances) < 1.0  # the criterion for a default runtime
    if bfloat16:  # measured (64 frames): median 0.47 px, 90th percentile 2.4, a few faint keypoints up to 34
        assert np.percentile(distances, 90) < 5.0
    else:
        assert distances.max() < 1.0  # float32 exports: in fact identical to about 1e-3 px


# ---------------------------------------------------------------------------------------------------------------
# HRNet from its ONNX export


def test_hrnet_runs_from_its_onnx_export_with_pytorchs_heatmaps(tmp_path, monkeypatch, one_torch_thread):
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    from pipeline.hrnet import PRESETS, PoseHRNet
    from pipeline.pose2d import build_topdown
    from pipeline.topdown import TopDownEstimator

    torch.manual_seed(0)
    model = PoseHRNet(PRESETS["w32_256x192"]).eval()
    weights = tmp_path / "pose_hrnet_w32_256x192.pth"
    torch.save(model.state_dict(), weights)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the default export cache, in tmp
    estimator = build_topdown(Pose2DConfig(keypoint_backend="hrnet", hrnet_weights=weights, runtime="openvino"))
    assert isinstance(estimator.model, ExportedHeatmapNet) and estimator.model.runtime == "openvino"
    exports = list((tmp_path / "cache" / "poseformerv2-demo" / "exports").iterdir())
    assert [p.name for p in exports] == [f"{sha256_of(weights)}-hrnet-256x192-fp32"]

    crops = torch.randn(3, 3, 256, 192, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model(crops)
    onnx, device = heatmap_network(model, weights, "onnx", CPU, cache_root=exports[0].parent)
    assert device == CPU and onnx.runtime == "onnx"
    assert list(exports[0].parent.iterdir()) == exports  # one ONNX file serves both runtimes
    for network in (estimator.model, onnx):
        heatmaps = network(crops)
        assert heatmaps.shape == expected.shape == (3, 17, 64, 48)
        assert float((heatmaps - expected).abs().max()) < 1e-4 * float(expected.abs().max())

    rng = np.random.default_rng(2)
    images = [rng.integers(0, 255, (240, 320, 3), dtype=np.uint8) for _ in range(2)]
    boxes = np.array([[40, 30, 160, 220], [100, 20, 300, 230]], np.float32)
    _, scores = estimator(images, boxes)
    _, reference_scores = TopDownEstimator(model, device=CPU)(images, boxes)
    np.testing.assert_allclose(scores, reference_scores, rtol=1e-4, atol=1e-6)  # flip test included
