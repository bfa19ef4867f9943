"""2D-to-3D lifting of whole sequences with a PoseFormerV2 checkpoint, batched, on any device.

Per frame the result is exactly what the released video demo (PoseFormerV2 `demo/vis.py`) computes: a T-frame window
centred on the frame, padded at the ends by repeating the first/last frame, screen normalisation, test-time flip
averaging and the root joint set to zero; the world view applies the demo's fixed camera-to-world rotation and puts
each frame's lowest joint at z = 0. Unlike the demo, many windows (and their mirror images) go through one forward
pass, and windows are gathered batch by batch from the sequence, so memory does not grow with its length.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.checkpoints import (
    CheckpointError,
    extract_state_dict,
    is_safetensors,
    read_checkpoint,
    read_safetensors_metadata,
    save_safetensors,
    strip_prefix,
)
from pipeline.devices import resolve_device
from pipeline.geometry import demo_world_view, flip_poses, normalize_screen_coordinates
from pipeline.poseformerv2 import (
    PoseFormerV2,
    PoseFormerV2Config,
    config_from_state_dict,
    load_state_dict_strict,
    released_state_dict,
)
from pipeline.skeleton import LIFTER_SKELETONS, MPI_INF_3DHP_FROM_H36M

log = logging.getLogger(__name__)

# Windows per forward pass (each also runs mirrored, so the model sees twice as many rows). On the CPU throughput is
# flat beyond ~64 windows while memory keeps growing (243-frame model: ~0.2 GB of activations at 64, ~0.6 GB at 256;
# see benchmarks/bench_lifting.py); GPUs profit from larger batches.
DEFAULT_BATCH_WINDOWS = {"cpu": 64, "cuda": 256, "mps": 256}
# Released file names: {frames kept}_{window length}_{MPJPE}.bin, e.g. 27_243_45.2.bin.
RELEASED_NAME = re.compile(r"^(?P<kept>\d+)_(?P<frames>\d+)_\d+(?:\.\d+)?\.[A-Za-z]+$")
SAFETENSORS_FORMAT = "poseformerv2"
CONFIG_ENTRY = "poseformerv2_config"  # extra top-level entry our .bin files carry; the released loader ignores it
# The MPI-INF-3DHP release: one file `no_refine_{epoch}_{test MPJPE x100}.pth` (a flat `module.` state dict), always
# T=81, f=9, n=9 (mpi_inf_3dhp/README.MD of the PoseFormerV2 repository).
RELEASED_3DHP_NAME = re.compile(r"^no_refine_\d+_\d+\.pth$")
RELEASED_3DHP_CONFIG = {"frames": 81, "frames_kept": 9, "coeffs_kept": 9}
# The unit a network predicts in, as a factor to metres, and what each skeleton's released checkpoints use:
# Human3.6M checkpoints predict metres, the MPI-INF-3DHP one millimetres (its targets are `univ_annot3` in mm).
UNITS_TO_METRES = {"m": 1.0, "mm": 0.001}
DEFAULT_UNITS = {"h36m": "m", "mpi_inf_3dhp": "mm"}
# A safetensors file may hold a second network of the same configuration for the flip test's mirrored pass (a
# cross-flip ensemble): its tensors are named with this prefix, and the metadata entry MIRROR_ENTRY names the prefix.
MIRROR_PREFIX = "mirror."
MIRROR_ENTRY = "mirror_network"
# The highest frame rate a window samples at. The shipped lifter was trained on 30 fps mocap played 0.45-1.6x as fast
# (`pipeline.mocap.dataset.RenderConfig.speed`), i.e. on the motion of 19-67 fps videos, and Human3.6M's checkpoints
# on 50 fps video; a faster video's windows take every s-th frame (`window_stride`), so that the window spans the
# time the network knows. Measured on CMU's 28 AMC clips at their recorded 120 fps, rendered like the held-out sets
# (version 6, one camera per clip, P-MPJPE / mean joint acceleration; benchmarks/bench_frame_rate.py): every frame
# 67.0 mm / 50 m/s^2, every second frame 64.8 mm / 15 m/s^2, every fourth 65.5 mm; the same clips at 60 fps: every
# frame 66.3 mm, every second 66.8.
MAX_WINDOW_FPS = 67.0


def window_stride(fps: float | None, max_fps: float = MAX_WINDOW_FPS) -> int:
    """Frames between a lifting window's samples for a video at `fps`: the smallest stride that brings the sampled
    rate to `max_fps` or below (1 up to 67 fps, 2 up to 134, 3 up to 201, 4 for 240); 1 when the rate is unknown."""
    if fps is None or not np.isfinite(fps) or fps <= 0:
        return 1
    return max(1, int(np.ceil(fps / max_fps - 1e-9)))


# A video fast enough that every second window sample would still be at least this many frames per second is lifted
# twice, at its window stride and at twice it, and the two poses averaged (`window_strides`): the same motion seen at
# two speeds, both inside the training range. Measured on the CMU clips as above (version 6, MPJPE / P-MPJPE): 60 fps
# 105.8 / 66.3 mm with every frame, 104.7 / 65.6 averaged with every second frame; 120 fps 104.9 / 64.8 with every
# second frame, 104.2 / 64.2 averaged with every fourth; joint acceleration halved. At 30 fps, averaging in every
# second frame (15 fps sampled) cost 1.5 mm; a third stride at 60 fps (20 fps sampled) cost 0.2-0.3 mm.
MIN_SECOND_STRIDE_FPS = 25.0


def window_strides(fps: float | None) -> tuple[int, ...]:
    """The window strides a video at `fps` is lifted with, whose poses are averaged: `window_stride`, and twice it
    when that still samples at least MIN_SECOND_STRIDE_FPS (from 50 fps on)."""
    stride = window_stride(fps)
    if fps is None or not np.isfinite(fps) or fps / (2 * stride) < MIN_SECOND_STRIDE_FPS:
        return (stride,)
    return (stride, 2 * stride)


def anti_alias(keypoints: np.ndarray, stride: int) -> np.ndarray:
    """(T, J, C) keypoints averaged over `stride` frames centred on each frame (ends repeated), before windows sample
    every `stride`-th frame: neighbouring windows then see nearly the same input, so their poses do not alternate
    between two interleaved sets of frames (CMU's clips at 120 fps, stride 2: joint acceleration 14.7 m/s^2 against
    302 without, P-MPJPE 64.8 against 65.0 mm)."""
    if stride <= 1:
        return keypoints
    weights = np.ones(stride + 1 - stride % 2)  # odd: stride taps; even: stride + 1 taps, half weight at the ends
    if stride % 2 == 0:
        weights[[0, -1]] = 0.5
    weights /= weights.sum()
    half = len(weights) // 2
    padded = np.concatenate([np.repeat(keypoints[:1], half, 0), keypoints, np.repeat(keypoints[-1:], half, 0)])
    return sum(w * padded[k : k + len(keypoints)] for k, w in enumerate(weights)).astype(keypoints.dtype)


# ----------------------------------------------------------------------------------------------------------------------
# Devices


_AUTOCAST = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def _autocast_dtype(precision: str | torch.dtype | None, device: torch.device) -> torch.dtype | None:
    if precision in (None, "fp32", "float32", torch.float32):
        return None
    dtype = precision if isinstance(precision, torch.dtype) else _AUTOCAST.get(str(precision))
    supported = {"cuda": (torch.float16, torch.bfloat16), "mps": (torch.float16, torch.bfloat16),
                 "cpu": (torch.bfloat16,)}
    if dtype is None or dtype not in supported.get(device.type, ()):
        raise ValueError(
            f"precision {precision!r} is not supported on {device.type}; use 'fp32', or 'fp16'/'bf16' on CUDA "
            "(and 'bf16' on the CPU)"
        )
    return dtype


# ----------------------------------------------------------------------------------------------------------------------
# Lifting


@dataclass(frozen=True)
class LiftResult:
    camera: np.ndarray  # (T, 17, 3) float32: root-relative camera-space joints per frame (root at 0)
    world: np.ndarray  # (T, 17, 3) float32: demo_world_view(camera)


@dataclass
class Lifter:
    """A loaded PoseFormerV2 ready to lift sequences. `model` maps (B, T, 17, 2) normalised 2D joints to (B, 1, 17, 3).

    `lift` and `lift_normalized` take and return Human3.6M-17 joints in metres whatever the checkpoint; `skeleton` and
    `units` say what `model` itself works in (an MPI-INF-3DHP checkpoint: 3DHP joint order, millimetres), and the
    lifting reorders, mirrors with that skeleton's left/right lists and rescales on the way in and out.

    `mirror_model`: a second network of the same configuration that the flip test runs on the mirrored windows in
    `model`'s place (a cross-flip ensemble: two networks' errors average out, for the compute of one network's flip
    test); without the flip test only `model` runs.
    """

    model: PoseFormerV2
    device: torch.device
    checkpoint: Path | None = None  # provenance: the file the weights came from
    autocast_dtype: torch.dtype | None = None
    batch_size: int | None = None  # windows per forward pass; None: DEFAULT_BATCH_WINDOWS for the device
    skeleton: str = "h36m"  # the joint order of the network's input and output, a key of LIFTER_SKELETONS
    units: str = "m"  # the unit of the network's output, a key of UNITS_TO_METRES
    mirror_model: PoseFormerV2 | None = None  # the flip test's network for the mirrored windows; None: `model`

    def __post_init__(self) -> None:
        if self.skeleton not in LIFTER_SKELETONS:
            raise ValueError(f"unknown lifter skeleton {self.skeleton!r}; use one of {sorted(LIFTER_SKELETONS)}")
        if self.units not in UNITS_TO_METRES:
            raise ValueError(f"unknown lifter units {self.units!r}; use one of {sorted(UNITS_TO_METRES)}")
        if self.mirror_model is not None and self.mirror_model.config != self.model.config:
            raise ValueError("the mirror network must have the configuration of the main network")

    @property
    def config(self) -> PoseFormerV2Config:
        return self.model.config

    @property
    def frames(self) -> int:
        """Window length T."""
        return self.model.config.frames

    @property
    def name(self) -> str:
        return self.checkpoint.name if self.checkpoint else "in-memory PoseFormerV2"

    def lift(
        self,
        keypoints_px: np.ndarray,
        width: float,
        height: float,
        *,
        flip: bool = True,
        batch_size: int | None = None,
        progress: Callable[[int], None] | None = None,
        stride: int | Sequence[int] = 1,
        flip_difference: bool = False,
    ) -> LiftResult:
        """(T, 17, 2) pixel keypoints of a width x height video, any T >= 1 -> 3D poses of every frame. `stride`:
        frames between a window's samples (`window_stride` of the video's frame rate), or several strides whose poses
        are averaged (`window_strides`). `flip_difference`: `camera` holds half the difference between the flip
        test's two passes instead of their mean (see `lift_normalized`)."""
        keypoints_px = np.asarray(keypoints_px)
        joints = self.config.num_joints
        if keypoints_px.ndim != 3 or keypoints_px.shape[1:] != (joints, 2) or keypoints_px.shape[0] < 1:
            raise ValueError(f"keypoints must have shape (T >= 1, {joints}, 2) in pixels, got {keypoints_px.shape}")
        bad = np.flatnonzero(~np.isfinite(keypoints_px).all(axis=(1, 2)))
        if bad.size:
            raise ValueError(
                f"keypoints are NaN/inf in {bad.size} frames (first: {bad[:5].tolist()}); fill missing detections "
                "before lifting"
            )
        camera = self.lift_normalized(
            normalize_screen_coordinates(keypoints_px, width, height), flip=flip, batch_size=batch_size,
            progress=progress, stride=stride, flip_difference=flip_difference,
        )
        return LiftResult(camera=camera, world=demo_world_view(camera))

    @torch.inference_mode()
    def lift_normalized(
        self,
        keypoints: np.ndarray,
        *,
        flip: bool = True,
        batch_size: int | None = None,
        progress: Callable[[int], None] | None = None,
        centres: np.ndarray | None = None,
        stride: int | Sequence[int] = 1,
        flip_difference: bool = False,
    ) -> np.ndarray:
        """(T, 17, 2) screen-normalised Human3.6M keypoints -> (T, 17, 3) root-relative camera-space poses, Human3.6M
        order, metres. `centres`: only these frames' poses (each still from its window over the whole sequence).
        `stride` > 1: each window takes every stride-th frame around its centre, from keypoints averaged over
        `stride` frames (`anti_alias`), for videos faster than the network's training data. Several strides: the mean
        of the poses lifted with each (`window_strides`; `progress` counts the last pass).

        `flip_difference`: instead of the mean of the flip test's two passes (the network on the 2D, and the mirror
        network or the network itself on the mirrored 2D, mirrored back), half their difference, first minus second:
        the mean plus and minus it gives each pass. Its length per joint is how far each pass is from the pose
        returned, and it turns with any rotation of the camera as a pose does, so the virtual camera's turns
        (`pipeline.virtual_camera`) carry it like the poses. Where the passes disagree, the lifter is unsure: on
        the shared real recording their distance tracks the per-frame error (docs/real_footage_gap.md)."""
        if flip_difference and not flip:
            raise ValueError("flip_difference needs the flip test (flip=True): without it there is one pass")
        if not isinstance(stride, int | np.integer):
            strides = [int(s) for s in stride]
            if not strides:
                raise ValueError("give at least one window stride")
            passes = [self.lift_normalized(keypoints, flip=flip, batch_size=batch_size, centres=centres, stride=s,
                                           progress=progress if k == len(strides) - 1 else None,
                                           flip_difference=flip_difference)
                      for k, s in enumerate(strides)]
            return passes[0] if len(passes) == 1 else np.mean(passes, axis=0, dtype=np.float32)
        if stride < 1:
            raise ValueError(f"the window stride must be at least 1 frame, got {stride}")
        if batch_size is None:
            batch_size = self.batch_size or DEFAULT_BATCH_WINDOWS.get(self.device.type, 64)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model.eval()
        if self.mirror_model is not None:
            self.mirror_model.eval()
        keypoints = anti_alias(np.asarray(keypoints, dtype=np.float32), stride)
        order = self._native_order()
        if order is not None:
            keypoints = keypoints[:, order]  # Human3.6M -> the network's joint order
        sequence = torch.as_tensor(keypoints, device=self.device)
        num_frames = sequence.shape[0]
        wanted = _check_centres(centres, num_frames)
        native = LIFTER_SKELETONS[self.skeleton]
        permutation = native.flip_permutation
        mirrored = torch.as_tensor(flip_poses(keypoints, permutation), device=self.device) if flip else None
        pad = (self.frames - 1) // 2
        offsets = torch.arange(-pad, pad + 1, device=self.device) * stride
        out = np.empty((len(wanted), sequence.shape[1], 3), dtype=np.float32)
        for start in range(0, len(wanted), batch_size):
            batch_centres = torch.as_tensor(wanted[start : start + batch_size], device=self.device)
            # Edge padding by repeating the first/last frame == clamping window indices into the sequence.
            index = (batch_centres[:, None] + offsets[None, :]).clamp_(0, num_frames - 1)
            windows = sequence[index]
            if flip and self.mirror_model is not None:  # two networks: a pass each
                outputs = torch.cat((self._forward(windows), self._forward(mirrored[index], self.mirror_model)))
            elif flip:
                outputs = self._forward(torch.cat((windows, mirrored[index])))
            else:
                outputs = self._forward(windows)
            poses = outputs[:, 0].float().cpu().numpy()
            if flip:
                n = len(batch_centres)
                second = flip_poses(poses[n:], permutation)
                poses = (poses[:n] - second) / 2 if flip_difference else (poses[:n] + second) / 2
            poses[:, native.root] = 0  # root-relative
            out[start : start + len(batch_centres)] = poses
            if progress is not None:
                progress(len(batch_centres))
        if self.units != "m":
            out *= np.float32(UNITS_TO_METRES[self.units])
        return out if order is None else out[:, np.argsort(order)]  # back to Human3.6M order

    def _native_order(self) -> np.ndarray | None:
        """For each of the network's joints, the Human3.6M joint it is; None when the network works in H36M order."""
        if self.skeleton == "h36m":
            return None
        return np.asarray(MPI_INF_3DHP_FROM_H36M)

    def _forward(self, windows: torch.Tensor, model: PoseFormerV2 | None = None) -> torch.Tensor:
        model = self.model if model is None else model
        if self.autocast_dtype is None:
            return model(windows)
        with torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype):
            return model(windows)


def _check_centres(centres: np.ndarray | None, num_frames: int) -> np.ndarray:
    """The frames to predict: all of them, or the given frame numbers after a range check."""
    if centres is None:
        return np.arange(num_frames)
    wanted = np.asarray(centres)
    if wanted.ndim != 1 or not np.issubdtype(wanted.dtype, np.integer):
        raise ValueError(f"centres must be a 1-D array of frame numbers, got shape {wanted.shape} {wanted.dtype}")
    if wanted.size and (wanted.min() < 0 or wanted.max() >= num_frames):
        raise ValueError(f"centres must lie in 0..{num_frames - 1} (the sequence's frames), got "
                         f"{wanted.min()}..{wanted.max()}")
    return wanted.astype(np.int64)


# ----------------------------------------------------------------------------------------------------------------------
# Loading and saving


def frames_from_filename(path: str | Path) -> tuple[int, int] | None:
    """(frames kept f, window length T) from a released file name like `27_243_45.2.bin`, else None."""
    match = RELEASED_NAME.match(Path(path).name)
    return (int(match["kept"]), int(match["frames"])) if match else None


def _stored_config(path: Path, checkpoint: dict) -> dict | None:
    """The config our own files carry (safetensors metadata or an extra .bin entry), if any; for safetensors the
    top-level `skeleton` / `units` metadata are merged in (in .bin files they are part of the config entry)."""
    if is_safetensors(path):
        meta = read_safetensors_metadata(path)
        stored = {k: meta[k] for k in ("skeleton", "units") if k in meta}
        if "config" not in meta:
            return stored or None
        try:
            stored.update(json.loads(meta["config"]))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: safetensors metadata 'config' is not valid JSON ({exc})") from None
    else:
        stored = checkpoint.get(CONFIG_ENTRY)
    return dict(stored) if isinstance(stored, dict) else None


def _lifter_skeleton(path: Path, stored: dict, skeleton: str | None) -> tuple[str, str, str]:
    """(skeleton, units, where the skeleton came from): the `skeleton` argument, else the file's metadata, else the
    released MPI-INF-3DHP file name, else Human3.6M. Units: the metadata's, else those of the skeleton's release."""
    choices = sorted(LIFTER_SKELETONS)
    if skeleton is not None and skeleton not in LIFTER_SKELETONS:
        raise ValueError(f"unknown skeleton {skeleton!r}; use one of {choices}")
    stored_skeleton = stored.get("skeleton")
    if stored_skeleton is not None and stored_skeleton not in LIFTER_SKELETONS:
        raise CheckpointError(f"{path.name} says it was trained on skeleton {stored_skeleton!r}, which this "
                              f"loader does not know (it knows {choices})")
    if skeleton is not None and stored_skeleton is not None and skeleton != stored_skeleton:
        raise CheckpointError(f"{path.name} was trained on the {stored_skeleton!r} skeleton (stored in the file), "
                              f"not {skeleton!r}; leave skeleton= out")
    if skeleton is not None:
        name, source = skeleton, "the skeleton argument"
    elif stored_skeleton is not None:
        name, source = stored_skeleton, "the metadata stored in the file"
    elif RELEASED_3DHP_NAME.match(path.name):
        name, source = "mpi_inf_3dhp", f"the released MPI-INF-3DHP file name {path.name!r}"
    else:
        name, source = "h36m", "the default"
    units = stored.get("units", DEFAULT_UNITS[name])
    if units not in UNITS_TO_METRES:
        raise CheckpointError(f"{path.name} says its network predicts in {units!r}; expected one of "
                              f"{sorted(UNITS_TO_METRES)}")
    return name, units, source


def _released_3dhp_window(path: Path, state_dict: dict) -> int:
    """T of a file named like the MPI-INF-3DHP release, after checking that its weights are the release's f and n."""
    kept = tuple(int(state_dict[k].shape[1]) for k in ("Temporal_pos_embed", "Temporal_pos_embed_") if k in state_dict)
    expected = (RELEASED_3DHP_CONFIG["frames_kept"], RELEASED_3DHP_CONFIG["coeffs_kept"])
    if kept and kept != expected:
        raise CheckpointError(
            f"file name {path.name!r} is that of the released MPI-INF-3DHP model (T=81, f=9, n=9), but the weights "
            f"have f={kept[0]}, n={kept[-1]}; the name does not describe this file, so pass frames=T explicitly"
        )
    return RELEASED_3DHP_CONFIG["frames"]


def load_lifter(
    checkpoint: str | Path,
    *,
    frames: int | None = None,
    device: str | torch.device = "cpu",
    precision: str | torch.dtype | None = None,
    num_heads: int | None = None,
    batch_size: int | None = None,
    skeleton: str | None = None,
) -> Lifter:
    """Load a PoseFormerV2 checkpoint: a released training file (`model_pos` with `module.` keys), a plain state dict
    (with or without `module.`, like the MPI-INF-3DHP release), or a safetensors file.

    The window length T comes from `frames`, else from the config stored in the file (our own saves), else from the
    released name patterns `{f}_{T}_{mpjpe}.bin` and `no_refine_{epoch}_{mpjpe}.pth` (T=81). `skeleton` ('h36m' or
    'mpi_inf_3dhp') is the joint order the network was trained on: by default the one stored in the file, else
    'mpi_inf_3dhp' for the `no_refine_*.pth` release, else 'h36m'. `precision` 'fp16'/'bf16' enables autocast (CUDA;
    bf16 on the CPU).
    """
    resolved = resolve_device(device)  # bad device/precision fail before a large file is read
    autocast_dtype = _autocast_dtype(precision, resolved)
    path = Path(checkpoint)
    raw = read_checkpoint(path)
    # A flat state dict of ours carries its config next to the tensors (see save_lifter_checkpoint).
    state_dict = strip_prefix(extract_state_dict({k: v for k, v in raw.items() if k != CONFIG_ENTRY}))
    mirror_state = _split_mirror(path, state_dict)
    stored = _stored_config(path, raw) or {}
    skeleton, units, skeleton_source = _lifter_skeleton(path, stored, skeleton)
    from_name = frames_from_filename(path)
    heads = num_heads or int(stored.get("num_heads", 8))

    if frames is not None:
        window, source = int(frames), "the frames argument"
    elif "frames" in stored:
        window, source = int(stored["frames"]), "the config stored in the file"
    elif from_name is not None:
        window, source = from_name[1], f"the file name {path.name!r}"
    elif RELEASED_3DHP_NAME.match(path.name):
        window, source = _released_3dhp_window(path, state_dict), f"the file name {path.name!r}"
    else:
        raise CheckpointError(
            f"cannot tell the window length T of {path.name}: it is not stored in the weights; pass frames=T "
            "(e.g. 243) or keep the released file name pattern {f}_{T}_{mpjpe}.bin (e.g. 27_243_45.2.bin)"
        )
    config = config_from_state_dict(state_dict, window, num_heads=heads)
    if stored:
        extras = {k: v for k, v in stored.items() if k in ("drop_rate", "attn_drop_rate", "drop_path_rate")}
        config = PoseFormerV2Config.from_dict({**config.to_dict(), **extras})
    if from_name is not None and from_name[0] != config.frames_kept and frames is None and "frames" not in stored:
        raise CheckpointError(
            f"file name {path.name!r} says f={from_name[0]} frames kept, but the weights have "
            f"f={config.frames_kept}; the name does not describe this file, so pass frames=T explicitly"
        )
    if from_name is not None and from_name[1] != window:
        log.warning("%s: using T=%d from %s although the file name says T=%d", path.name, window, source, from_name[1])

    model = PoseFormerV2(config)
    load_state_dict_strict(model, state_dict)
    model.to(resolved).eval()
    mirror = None
    if mirror_state is not None:
        mirror = PoseFormerV2(config)
        try:
            load_state_dict_strict(mirror, mirror_state)
        except CheckpointError as exc:
            raise CheckpointError(f"{path.name}, its mirror network ({MIRROR_PREFIX}*): {exc}") from None
        mirror.to(resolved).eval()
    log.info("loaded PoseFormerV2 %s (T=%d, f=%d, n=%d; T from %s; %s skeleton in %s from %s%s) on %s", path.name,
             config.frames, config.frames_kept, config.coeffs_kept, source, skeleton, units, skeleton_source,
             "; a second network runs the flip test's mirrored pass" if mirror is not None else "", resolved)
    return Lifter(model=model, device=resolved, checkpoint=path, autocast_dtype=autocast_dtype, batch_size=batch_size,
                  skeleton=skeleton, units=units, mirror_model=mirror)


def _split_mirror(path: Path, state_dict: dict) -> dict | None:
    """The mirror network's tensors (prefix removed), taken out of `state_dict`, when the file's metadata says it
    holds one (`MIRROR_ENTRY`); else None and `state_dict` untouched."""
    if not is_safetensors(path):
        return None
    prefix = read_safetensors_metadata(path).get(MIRROR_ENTRY)
    if prefix is None:
        return None
    if not prefix:
        raise CheckpointError(f"{path.name} names its mirror network's tensors by an empty prefix")
    mirror = {k[len(prefix):]: state_dict.pop(k) for k in [k for k in state_dict if k.startswith(prefix)]}
    if not mirror:
        raise CheckpointError(f"{path.name} says it holds a mirror network under {prefix!r}, but no tensor is named so")
    return mirror


def save_lifter_checkpoint(
    path: str | Path,
    model: PoseFormerV2,
    *,
    epoch: int = 0,
    lr: float = 0.0,
    optimizer_state: dict | None = None,
    random_state: object = None,
    skeleton: str = "h36m",
    units: str | None = None,
) -> Path:
    """Save `model` so that `load_lifter` (and, for .bin/.pth, the released PoseFormerV2 code) reads it.

    `.safetensors`: the weights (no `module.` prefix) with the config, T included, as JSON in the header metadata,
    and the `skeleton` and `units` (default: those of the skeleton's release) as metadata entries of their own.
    Anything else: the released layout of the skeleton, plus a `poseformerv2_config` entry of plain values with the
    skeleton and units: Human3.6M {epoch, lr, random_state, optimizer, model_pos with `module.` keys}; MPI-INF-3DHP
    a flat `module.` state dict (what `run_3dhp.py --reload` reads; it ignores the extra entry).
    """
    if skeleton not in LIFTER_SKELETONS:
        raise ValueError(f"unknown skeleton {skeleton!r}; use one of {sorted(LIFTER_SKELETONS)}")
    units = units or DEFAULT_UNITS[skeleton]
    if units not in UNITS_TO_METRES:
        raise ValueError(f"unknown units {units!r}; use one of {sorted(UNITS_TO_METRES)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        save_safetensors(path, state, {"format": SAFETENSORS_FORMAT, "config": model.config.to_dict(),
                                       "skeleton": skeleton, "units": units})
    elif skeleton == "mpi_inf_3dhp":
        torch.save({**released_state_dict(model),
                    CONFIG_ENTRY: {**model.config.to_dict(), "skeleton": skeleton, "units": units}}, path)
    else:
        torch.save(
            {
                "epoch": int(epoch),
                "lr": float(lr),
                "random_state": random_state,
                "optimizer": optimizer_state or {},
                "model_pos": released_state_dict(model),
                CONFIG_ENTRY: {**model.config.to_dict(), "skeleton": skeleton, "units": units},
            },
            path,
        )
    return path
