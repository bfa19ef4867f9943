"""The networks of a run, loaded once and reused for every clip: the lifters, and the 2D stage on first use.

Also what identifies them (file fingerprints: part of the 2D cache key and of the skip check) and their provenance
(written into keypoints.npz and run.json).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.app.cache import POSE2D_CACHE_VERSION, file_fingerprint
from pipeline.app.inputs import (
    WEIGHTS_HELP,
    UserError,
    default_hrnet_weights,
    default_lifter_checkpoint,
    resolve_weight_file,
)
from pipeline.errors import SettingError
from pipeline.pose2d import Pose2DConfig


@dataclass
class LiftingConfig:
    """The lifter checkpoints (one 3D panel each; empty = the shipped default) and where they run."""

    checkpoints: list[Path] = field(default_factory=list)
    frames: int | None = None  # window length T when a checkpoint's file name does not give it
    device: str = "auto"


@dataclass
class Models:
    """Everything loaded once per run and reused for every clip."""

    lifters: list  # pipeline.lifting.Lifter, one per checkpoint
    pose2d_config: Pose2DConfig  # with the detector path and the HRNet weights resolved
    pose2d_identity: dict  # what decides the 2D result: part of the cache key and of the provenance
    lifter_threads: int = 1  # PyTorch's thread count before the detector loads (Ultralytics changes it)
    _pose2d: object = None

    def pose2d(self):
        """The 2D stage, loaded on first use: a run whose 2D results are all cached never loads the detector."""
        if self._pose2d is None:
            from pipeline.pose2d import Pose2DEstimator

            self._pose2d = Pose2DEstimator(self.pose2d_config)
            # What runs: "auto" falls back to PyTorch when an export fails; provenance records the runtime used.
            detector = self._pose2d.detector
            self.pose2d_identity.update(detector_runtime=detector.runtime, detector_precision=detector.precision)
        return self._pose2d

    def provenance(self) -> dict:
        """The models as keypoints.npz (models_json) and run.json record them."""
        return {
            "pose2d": {k: v for k, v in self.pose2d_identity.items() if k != "version"},
            "lifters": [{"checkpoint": str(lifter.checkpoint), "frames": lifter.frames,
                         "frames_kept": lifter.config.frames_kept, "coeffs_kept": lifter.config.coeffs_kept,
                         "skeleton": lifter.skeleton, "units": lifter.units, "device": str(lifter.device),
                         **({"flip_ensemble": True} if lifter.mirror_model is not None else {})}
                        for lifter in self.lifters],
        }


def load_lifters(config: LiftingConfig) -> list:
    """One `pipeline.lifting.Lifter` per checkpoint (the shipped default when none is given)."""
    from pipeline.lifting import load_lifter

    checkpoints = [resolve_weight_file(p, "lifter checkpoint") for p in config.checkpoints] or \
        [default_lifter_checkpoint()]
    names = [p.name for p in checkpoints]
    if len(set(names)) != len(names):
        raise UserError(f"two checkpoints share a file name ({', '.join(names)}): rename one so their panels differ")
    lifters = []
    for path in checkpoints:
        try:
            lifters.append(load_lifter(path, frames=config.frames, device=config.device))
        except ValueError as exc:
            raise UserError(f"{exc} ({WEIGHTS_HELP})") from exc
    return lifters


def resolve_pose2d_config(config: Pose2DConfig) -> Pose2DConfig:
    """The 2D settings with files resolved: HRNet weights (given, or found in weights/ for the auto backend) and a
    detector given as a local file turned into an absolute path."""
    hrnet = resolve_weight_file(config.hrnet_weights, "HRNet weights") if config.hrnet_weights else None
    if config.keypoint_backend == "auto":
        hrnet = hrnet or default_hrnet_weights()
    if config.keypoint_backend == "hrnet" and hrnet is None:
        raise SettingError("hrnet_weights", "the hrnet keypoint backend needs HRNet weights: pass "
                           "pose_hrnet_w48_384x288.pth or put that file into weights/ (official files: "
                           "github.com/leoxiaobin/deep-high-resolution-net.pytorch)")
    detector = config.detector
    if detector is not None and Path(detector).expanduser().is_file():
        detector = str(Path(detector).expanduser().resolve())
    resolved = dataclasses.replace(config, detector=detector, hrnet_weights=hrnet)
    return dataclasses.replace(resolved, keypoint_backend=resolved.backend)


def pose2d_identity(config: Pose2DConfig) -> dict:
    """What decides the 2D result of a resolved config (the clip aside). The detector's runtime is the one "auto"
    resolves to here (pipeline.runtimes), and its compute precision (OpenVINO's bfloat16 moves keypoints slightly)."""
    from pipeline.detection import default_detector_weights
    from pipeline.devices import resolve_device
    from pipeline.runtimes import inference_precision, resolve_runtime

    detector_file = Path(config.detector) if config.detector and Path(config.detector).is_file() else None
    exportable = str(config.detector or ".pt").endswith(".pt")
    runtime = resolve_runtime(config.runtime, resolve_device(config.device), exportable=exportable).runtime
    return {
        "version": POSE2D_CACHE_VERSION,
        "detector": config.detector or default_detector_weights().name,
        "detector_file": file_fingerprint(detector_file) if detector_file else None,
        "detector_runtime": runtime,
        "detector_precision": inference_precision(runtime),
        "keypoints": config.keypoint_backend,  # the keypoint backend; the key name is kept for existing outputs
        "hrnet_weights": file_fingerprint(config.hrnet_weights) if config.hrnet_weights else None,
        "imgsz": config.imgsz,
        "auto_imgsz": dataclasses.asdict(config.auto_imgsz) if config.imgsz == "auto" else None,
        "turn": config.turn,
        "auto_turn": dataclasses.asdict(config.auto_turn) if config.turn == "auto" else None,
        "person": config.person,
        "all_people": config.all_people,
        "decode_at_input_size": config.decode_at_input_size,
        "flip_test": config.flip_test and config.keypoint_backend == "yolo",
        "recovery": dataclasses.asdict(config.recovery),
    }


def load_models(lifting: LiftingConfig, pose2d: Pose2DConfig) -> Models:
    import torch

    lifters = load_lifters(lifting)
    pose2d = resolve_pose2d_config(pose2d)
    return Models(lifters=lifters, pose2d_config=pose2d, pose2d_identity=pose2d_identity(pose2d),
                  lifter_threads=torch.get_num_threads())
