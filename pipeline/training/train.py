"""Train a PoseFormerV2 lifter on a `SequenceSet` with the released recipe, resumably, on the CPU or a GPU.

Recipe (released `run_poseformer.py`): AdamW (lr 1e-4, weight decay 0.1), lr x0.99 after every epoch, loss = MPJPE of
the centre frame's root-relative 3D pose, flip augmentation, validation with flip test. An "epoch" is a fixed number
of samples (by default the training frames x2 with flipping, the released epoch length), so that huge datasets still
decay the learning rate at a sensible pace. Checkpoints use the released layout (`epoch`, `lr`, `optimizer`,
`model_pos` with the `module.` prefix, `random_state` = numpy RandomState) plus our own keys for exact resumption
(`torch_rng_state`, `progress`, `model_config` (also as `poseformerv2_config`, read by `load_lifter`),
`train_config`, `validation`); they hold only tensors, plain Python
values and the RandomState, so `pipeline.checkpoints.read_checkpoint` (weights_only=True + allow-list) reads them.
A run may move between machines: a checkpoint written on a GPU resumes on a CPU and the other way round (only the
random draws of stochastic depth then differ from an uninterrupted run). On a GPU the CUDA generator is saved and
restored too, but CUDA kernels need not be deterministic: bit-exact resumption is a CPU property.

MPI-INF-3DHP (`--dataset mpi_inf_3dhp`) follows the 3DHP release's `run_3dhp.py` instead: Adam with amsgrad (lr 7e-4,
no weight decay), lr x0.97 per epoch, batch 512, 79 epochs, drop path 0.1, flip augmentation with the 3DHP left/right
lists, centre-frame MPJPE in millimetres on pelvis-relative (joint 14) targets, validation on every valid test frame
with flip test and the predicted pelvis set to 0. Besides `last.bin`/`best.bin`, the best weights are also written as
`best.pth` in the release's own layout (a flat `module.` state dict), which the released `run_3dhp.py --reload` reads.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.checkpoints import read_checkpoint, strip_prefix
from pipeline.devices import resolve_device
from pipeline.geometry import flip_poses
from pipeline.lifting import CONFIG_ENTRY, save_lifter_checkpoint
from pipeline.poseformerv2 import PoseFormerV2, PoseFormerV2Config
from pipeline.skeleton import LIFTER_SKELETONS
from pipeline.training.metrics import mpjpe, mpjpe_torch, p_mpjpe
from pipeline.training.windows import SequenceSet, WindowSampler

log = logging.getLogger(__name__)

DEFAULT_TRAIN_ROOT = Path.home() / ".cache" / "poseformerv2-demo" / "train"
LAST_CHECKPOINT = "last.bin"
BEST_CHECKPOINT = "best.bin"
BEST_RELEASE_CHECKPOINT = "best.pth"  # MPI-INF-3DHP runs: the best weights in the release's flat layout
OPTIMIZERS = ("adamw", "adam_amsgrad")  # the Human3.6M release's, the MPI-INF-3DHP release's
PRECISIONS = ("fp32", "bf16")  # training passes: float32, or bfloat16 autocast (TrainConfig.precision)


def default_run_dir(run_name: str) -> Path:
    return DEFAULT_TRAIN_ROOT / run_name


@dataclass
class TrainConfig:
    run_dir: Path
    batch_size: int = 64
    threads: int = 2
    lr: float = 1e-4
    weight_decay: float = 0.1
    lr_decay: float = 0.99  # per epoch
    epochs: int = 200  # released default
    samples_per_epoch: int | None = None  # None: training frames (x2 with flip augmentation), as released
    max_samples: int | None = None  # stop this call after this many training samples (then checkpoint)
    max_minutes: float | None = None  # stop this call after this much wall time (then checkpoint)
    checkpoint_minutes: float = 10.0  # write last.bin this often (cheap)
    checkpoint_every_steps: int | None = None  # additionally write last.bin every this many steps
    # Also keep every checkpoint as step_<step>.bin (to average a run's weights, `pipeline.mocap average`); a
    # training checkpoint of the 27/3/3 lifter is about 170 MB, so mind the disk on long CPU runs.
    keep_checkpoints: bool = False
    # Validate (and update best.bin) this often and when stopping. On a busy CPU a validation pass costs minutes,
    # so it runs less often than checkpointing.
    validation_minutes: float = 30.0
    validation_frames: int = 2048  # fixed, evenly spaced subset of the validation frames
    validation_batch: int = 128
    best_metric: str = "mpjpe"  # or "p_mpjpe": which validation error picks best.bin
    flip_augment: bool = True
    short_clips: float = 0.0  # share of training windows cut as if from a short clip (WindowSampler.short_clips)
    flip_test: bool = True
    seed: int = 1234
    resume: bool = False  # continue from run_dir/last.bin if it exists
    log_every_steps: int = 50
    optimizer: str = "adamw"  # "adam_amsgrad": torch Adam(amsgrad=True), the MPI-INF-3DHP release's
    skeleton: str = "h36m"  # joint order of the data (flip lists, root joint), stored in the checkpoints
    device: str = "auto"  # where the model trains: auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N, mps
    # torch.compile the model (Module.compile: the checkpoints' keys stay the same). 27/3/3, batch 64, one thread on
    # this CPU beside two training runs: 89-104 -> 106-114 samples/s, after 7-40 s of compiling. Drop path then
    # draws from the compiled graph's own generator, so a resumed run is no longer bit-exact.
    compile: bool = False
    # "bf16": the forward and backward passes under bfloat16 autocast (matrix products in bfloat16; weights, optimizer
    # state, loss and validation stay float32). 27/3/3, batch 64, one thread on an AMD EPYC with AVX-512 BF16 beside
    # two training runs: 186-188 -> 238-243 samples/s (`--benchmark`), compiled 195 -> 245 (a one-off script); the
    # network's output then differs from float32's by 1.5 mm on average (p99 7 mm, held-out Bandai; 1.7 mm before the
    # head was kept in float32). GPUs with bfloat16 gain more; CPUs without it emulate it: measure with
    # `--benchmark --precision bf16` before choosing it.
    precision: str = "fp32"
    units: str = "m"  # unit of the 3D targets ("m" or "mm"), stored in the checkpoints

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir).expanduser()
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.skeleton not in LIFTER_SKELETONS:
            raise ValueError(f"skeleton must be one of {sorted(LIFTER_SKELETONS)}, got {self.skeleton!r}")
        if self.units not in ("m", "mm"):
            raise ValueError(f"units must be 'm' or 'mm', got {self.units!r}")
        if self.best_metric not in ("mpjpe", "p_mpjpe"):
            raise ValueError(f"best_metric must be 'mpjpe' or 'p_mpjpe', got {self.best_metric!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.batch_size < 1 or self.threads < 1:
            raise ValueError("batch_size and threads must be positive")


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    epoch: int
    samples_seen: int
    losses: list[float] = field(default_factory=list)  # training loss of every step of this call, in config.units
    validation: dict[str, float] = field(default_factory=dict)  # last validation errors, in config.units
    finished: bool = False  # all epochs done


def build_model(model_config: PoseFormerV2Config) -> torch.nn.Module:
    return PoseFormerV2(model_config)


def model_frames(model_config: PoseFormerV2Config) -> int:
    return int(model_config.frames)


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints


def plain_config(config) -> dict:
    """A dataclass config as a dict of plain values (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(config).items()}


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, epoch: int, lr: float,
                    rng: np.random.RandomState, extra: dict | None = None) -> None:
    """Write a checkpoint in the released layout, atomically (temp file, then rename)."""
    payload = {
        "epoch": int(epoch),
        "lr": float(lr),
        # A numpy RandomState, as the released code stores its generator's; `pipeline.checkpoints` allow-lists it.
        "random_state": rng,
        "optimizer": optimizer.state_dict(),
        # The released checkpoints come from nn.DataParallel, hence the prefix; their loaders expect it.
        "model_pos": {f"module.{k}": v for k, v in model.state_dict().items()},
    }
    payload.update(extra or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint read with `torch.load(weights_only=True)` and the project's allow-list (numpy RandomState)."""
    return read_checkpoint(path)


def strip_module_prefix(state: dict) -> dict:
    """`model_pos` keys without nn.DataParallel's `module.` prefix."""
    return strip_prefix(state, "module.")


# ----------------------------------------------------------------------------------------------------------------------
# Inference with flip test


def predict_centre(model: torch.nn.Module, inputs_2d: np.ndarray, flip_test: bool,
                   flip_permutation: np.ndarray, mirror_model: torch.nn.Module | None = None) -> np.ndarray:
    """Windows (B, T, J, 2) -> centre-frame predictions (B, J, 3); with flip test, averaged with the un-mirrored
    prediction of the mirrored input, as the released evaluation does (by `mirror_model` when given: a cross-flip
    ensemble, `pipeline.lifting.Lifter.mirror_model`). Runs where the model's weights are."""
    device = next(model.parameters(), torch.empty(0)).device  # the CPU for a model without weights

    def forward(net: torch.nn.Module, windows: np.ndarray) -> np.ndarray:
        return net(torch.from_numpy(np.ascontiguousarray(windows)).to(device))[:, 0].cpu().numpy()

    with torch.inference_mode():
        pred = forward(model, inputs_2d)
        if flip_test:
            mirrored = forward(model if mirror_model is None else mirror_model, flip_poses(inputs_2d, flip_permutation))
            pred = (pred + flip_poses(mirrored, flip_permutation)) / 2
    return pred


def validate(model: torch.nn.Module, sampler: WindowSampler, frame_ids: np.ndarray, batch_size: int,
             flip_test: bool, root: int = 0) -> dict[str, float]:
    """MPJPE and P-MPJPE (in the data's units) of the centre frames of a fixed set of validation windows.

    With a `root` other than joint 0 (MPI-INF-3DHP's pelvis, 14), targets are made relative to it and the predicted
    root is set to 0, as the released 3DHP test does; Human3.6M predictions are scored as the model outputs them."""
    was_training = model.training
    model.eval()
    preds, targets = [], []
    for i in range(0, len(frame_ids), batch_size):
        batch = sampler.gather(frame_ids[i:i + batch_size])
        pred = predict_centre(model, batch.inputs_2d, flip_test, sampler.flip_permutation)
        if root != 0:
            pred[:, root] = 0
        preds.append(pred)
        targets.append(centre_on_root(batch.targets_3d, root))
    model.train(was_training)
    pred, target = np.concatenate(preds), np.concatenate(targets)
    return {"mpjpe": mpjpe(pred, target), "p_mpjpe": p_mpjpe(pred, target)}


def centre_on_root(targets: np.ndarray, root: int) -> np.ndarray:
    """Targets (B, J, 3) relative to joint `root`. The window sampler makes them relative to joint 0; subtracting
    the root of that gives `x - x[root]` for skeletons whose root is another joint (MPI-INF-3DHP)."""
    return targets if root == 0 else targets - targets[:, root : root + 1]


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The recipe's optimizer, fused: one kernel over all parameters instead of a loop over tensors (the same update).
    Measured for 27/3/3 (14.4 M parameters), batch 64, one thread on this CPU: the AdamW step 89-102 -> 24 ms, a
    training step 95 -> 109 samples/s."""
    if config.optimizer == "adam_amsgrad":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, amsgrad=True,
                                fused=True)
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a saved optimizer state, keeping this optimizer's implementation. The saved groups carry the options of
    the optimizer that wrote them, and torch takes `fused` from them too (which also decides that the step counts live
    on the parameters' device): a checkpoint written before the optimizer was fused, or on another device, must go
    on with this one's."""
    groups = [{**saved, "fused": current.get("fused")}
              for saved, current in zip(state["param_groups"], optimizer.param_groups, strict=True)]
    optimizer.load_state_dict({**state, "param_groups": groups})


# ----------------------------------------------------------------------------------------------------------------------
# Training loop


def train(model_config: PoseFormerV2Config, train_set: SequenceSet, val_set: SequenceSet | None, config: TrainConfig,
          val_frame_ids: np.ndarray | None = None) -> TrainResult:
    """Train (or continue training) a PoseFormerV2 built from `model_config`; checkpoints go to `config.run_dir`.

    `val_frame_ids`: the frames of `val_set` (global ids over its concatenated sequences) that may be validated on,
    e.g. MPI-INF-3DHP's valid test frames; by default all of them. `config.validation_frames` of them, evenly spaced,
    are used."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        with _logging_to(config.run_dir):
            return _train(model_config, train_set, val_set, config, val_frame_ids)
    finally:
        torch.set_num_threads(previous_threads)


def _check_model_config(path: Path, checkpoint: dict, wanted: dict) -> None:
    """Refuse to continue a run whose checkpoint holds another model than `wanted` (`plain_config` of the model's
    config) describes."""
    saved = checkpoint.get("model_config")
    if saved is not None and saved != wanted:
        raise ValueError(f"{path} was trained with model config {saved}, not {wanted}; use another run directory or "
                         "the same model config")


@contextlib.contextmanager
def _logging_to(run_dir: Path):
    """While inside, this module's log lines also go to the run's train.log (created with the run folder)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    level = log.level
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.setLevel(level)
        log.removeHandler(handler)
        handler.close()


def train_on_fresh_sets(model_config: PoseFormerV2Config, training_set: Callable[[int], SequenceSet],
                        val_set: SequenceSet | None, config: TrainConfig, samples_per_set: int) -> TrainResult:
    """`train` in stretches of `samples_per_set` samples, the k-th stretch (counted from the run's first sample) on
    `training_set(k)`, e.g. the same clips rendered with seed k: a network that meets each rendering about once
    cannot learn its cameras and noise by heart. Resumes like `train` (the stretch follows from the samples seen);
    each stretch continues from `last.bin`. `config.max_samples` and `config.max_minutes` bound the whole call (a set
    whose making ends past the time limit is not trained on). `config.samples_per_epoch` must be given: an epoch (the
    learning-rate schedule) must not follow each set's own length."""
    if samples_per_set < 1:
        raise ValueError(f"samples_per_set must be positive, got {samples_per_set}")
    if config.samples_per_epoch is None:
        raise ValueError("training on fresh sets needs a fixed samples_per_epoch")
    last = config.run_dir / LAST_CHECKPOINT
    deadline = None if config.max_minutes is None else time.monotonic() + config.max_minutes * 60
    budget = config.max_samples
    resume = config.resume
    losses: list[float] = []  # of every stretch
    result: TrainResult | None = None
    while True:
        saved = load_checkpoint(last) if resume and last.exists() else None
        seen = saved["progress"]["samples_seen"] if saved is not None else 0
        if saved is not None and saved["epoch"] >= config.epochs:  # nothing left to train: no set to make
            _check_model_config(last, saved, plain_config(model_config))
            with _logging_to(config.run_dir):
                log.info("%s has finished all %d epochs", last, config.epochs)
            return TrainResult(run_dir=config.run_dir, step=saved["progress"]["step"], epoch=saved["epoch"],
                               samples_seen=seen, losses=losses, validation=dict(saved.get("validation", {})),
                               finished=True)
        stretch = seen // samples_per_set
        left = (stretch + 1) * samples_per_set - seen
        if budget is not None:
            left = min(left, budget)
        with _logging_to(config.run_dir):
            log.info("samples %d-%d: training set %d", seen, seen + left, stretch)
        sequences = training_set(stretch)
        minutes = None if deadline is None else (deadline - time.monotonic()) / 60
        if minutes is not None and minutes <= 0 and result is not None:
            return dataclasses.replace(result, losses=losses)
        result = train(model_config, sequences, val_set,
                       dataclasses.replace(config, resume=resume, max_minutes=minutes, max_samples=left))
        resume = True
        losses += result.losses
        if budget is not None:
            budget -= result.samples_seen - seen
        out_of_time = deadline is not None and time.monotonic() >= deadline
        if result.finished or out_of_time or (budget is not None and budget <= 0):
            return dataclasses.replace(result, losses=losses)


def _train(model_config: PoseFormerV2Config, train_set: SequenceSet, val_set: SequenceSet | None, config: TrainConfig,
           val_frame_ids: np.ndarray | None = None) -> TrainResult:
    trainer = Trainer(model_config, train_set, val_set, config, val_frame_ids)
    if config.resume:
        trainer.resume()
    return trainer.run()


@dataclass
class TrainState:
    """What changes while training; saved in every checkpoint so that a resumed run continues bit-exactly."""

    lr: float
    rng: np.random.RandomState  # all sampling randomness (the released checkpoints' `random_state`)
    epoch: int = 0
    step: int = 0
    samples_seen: int = 0
    samples_in_epoch: int = 0
    best: float = math.inf  # the best validation error so far (config.best_metric)
    validation: dict[str, float] = field(default_factory=dict)  # the latest validation errors


class Trainer:
    """One training call: the samplers, model, optimizer and `TrainState`; `run` is the loop."""

    def __init__(self, model_config: PoseFormerV2Config, train_set: SequenceSet, val_set: SequenceSet | None,
                 config: TrainConfig, val_frame_ids: np.ndarray | None = None):
        self.config = config
        self.frames = model_frames(model_config)
        self.skeleton = LIFTER_SKELETONS[config.skeleton]
        self.to_mm = 1000.0 if config.units == "m" else 1.0  # for the log
        self.sampler = WindowSampler(train_set, frames=self.frames, flip=config.flip_augment,
                                     flip_permutation=self.skeleton.flip_permutation, short_clips=config.short_clips)
        self.val_sampler = (WindowSampler(val_set, frames=self.frames, flip=False,
                                          flip_permutation=self.skeleton.flip_permutation)
                            if val_set is not None and len(val_set) else None)
        self.val_ids = self._validation_frames(val_frame_ids)
        self.samples_per_epoch = config.samples_per_epoch or \
            self.sampler.num_frames * (2 if config.flip_augment else 1)
        torch.manual_seed(config.seed)
        self.device = resolve_device(config.device)
        self.model = build_model(model_config).to(self.device)
        if config.compile:
            self.model.compile()
        self.optimizer = make_optimizer(self.model, config)
        self.state = TrainState(lr=config.lr, rng=np.random.RandomState(config.seed))
        self.model_config_plain = plain_config(model_config)
        self.last_path = config.run_dir / LAST_CHECKPOINT
        log.info("training %d frames in %d sequences, validating on %d frames; window %d, batch %d, on %s%s, "
                 "epoch = %d samples, %d epochs", self.sampler.num_frames, len(train_set),
                 0 if self.val_ids is None else len(self.val_ids), self.frames, config.batch_size, self.device,
                 f" with {config.threads} threads" if self.device.type == "cpu" else "",
                 self.samples_per_epoch, config.epochs)

    def _validation_frames(self, val_frame_ids: np.ndarray | None) -> np.ndarray | None:
        """`config.validation_frames` evenly spaced validation frames (among `val_frame_ids` when given)."""
        if self.val_sampler is None:
            return None
        count = self.config.validation_frames
        if val_frame_ids is None:
            return self.val_sampler.evenly_spaced_frames(count)
        chosen = np.linspace(0, len(val_frame_ids) - 1, min(count, len(val_frame_ids)))
        return np.asarray(val_frame_ids, dtype=np.int64)[chosen.round().astype(np.int64)]

    def resume(self) -> None:
        """Continue from run_dir/last.bin: weights, optimizer, learning rate, counters and both random generators."""
        if not self.last_path.exists():
            log.warning("no checkpoint at %s: starting a new run", self.last_path)
            return
        chk = load_checkpoint(self.last_path)
        _check_model_config(self.last_path, chk, self.model_config_plain)
        self.model.load_state_dict(strip_prefix(chk["model_pos"]))
        load_optimizer_state(self.optimizer, chk["optimizer"])
        torch.set_rng_state(chk["torch_rng_state"])
        if self.device.type == "cuda" and "cuda_rng_state" in chk:
            torch.cuda.set_rng_state(chk["cuda_rng_state"], self.device)
        progress = chk["progress"]
        self.state = TrainState(lr=chk["lr"], rng=chk["random_state"], epoch=chk["epoch"], step=progress["step"],
                                samples_seen=progress["samples_seen"], samples_in_epoch=progress["samples_in_epoch"],
                                best=progress["best"], validation=dict(chk.get("validation", {})))
        s = self.state
        log.info("resumed %s: epoch %d, step %d, %d samples, lr %.3g", self.last_path, s.epoch, s.step,
                 s.samples_seen, s.lr)

    def checkpoint(self, fresh: bool) -> None:
        """Write last.bin; with a `fresh` validation that beats the best so far, also best.bin."""
        config, s = self.config, self.state
        extra = {
            "torch_rng_state": torch.get_rng_state(),
            # stochastic depth draws on the model's device: on a GPU from its generator
            **({"cuda_rng_state": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {}),
            "model_config": self.model_config_plain,
            # Where `pipeline.lifting.load_lifter` looks for T, the skeleton and the units.
            CONFIG_ENTRY: {**self.model_config_plain, "skeleton": config.skeleton, "units": config.units},
            "train_config": plain_config(config),
            "progress": {"step": s.step, "samples_seen": s.samples_seen, "samples_in_epoch": s.samples_in_epoch,
                         "best": s.best},
            "validation": s.validation,  # the latest validation errors (config.units), possibly from an earlier step
        }
        value = s.validation.get(config.best_metric)
        if fresh and value is not None and value < s.best:
            s.best = value
            extra["progress"]["best"] = s.best
            save_checkpoint(config.run_dir / BEST_CHECKPOINT, self.model, self.optimizer, epoch=s.epoch, lr=s.lr,
                            rng=s.rng, extra=extra)
            if config.skeleton == "mpi_inf_3dhp":
                tmp = config.run_dir / (BEST_RELEASE_CHECKPOINT + ".tmp")
                save_lifter_checkpoint(tmp, self.model, skeleton=config.skeleton, units=config.units)
                os.replace(tmp, config.run_dir / BEST_RELEASE_CHECKPOINT)
        save_checkpoint(self.last_path, self.model, self.optimizer, epoch=s.epoch, lr=s.lr, rng=s.rng, extra=extra)
        if config.keep_checkpoints:
            kept = config.run_dir / f"step_{s.step}.bin"
            shutil.copyfile(self.last_path, kept.with_name(kept.name + ".tmp"))
            os.replace(kept.with_name(kept.name + ".tmp"), kept)

    def validate(self) -> dict[str, float]:
        if self.val_sampler is None:
            return {}
        t0 = time.perf_counter()
        c = self.config
        result = validate(self.model, self.val_sampler, self.val_ids, c.validation_batch, c.flip_test,
                          self.skeleton.root)
        log.info("validation at step %d (epoch %d): MPJPE %.1f mm, P-MPJPE %.1f mm (%.0f s)", self.state.step,
                 self.state.epoch, result["mpjpe"] * self.to_mm, result["p_mpjpe"] * self.to_mm,
                 time.perf_counter() - t0)
        return result

    def train_step(self) -> tuple[float, int]:
        """One optimiser step on a random batch: (loss, samples); advances the epoch and decays lr at its end."""
        s = self.state
        batch = self.sampler.sample(self.config.batch_size, s.rng)
        inputs = torch.from_numpy(batch.inputs_2d).to(self.device)
        targets = torch.from_numpy(centre_on_root(batch.targets_3d, self.skeleton.root)).to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.config.precision):
            predicted = self.model(inputs)[:, 0]
        loss = mpjpe_torch(predicted.float(), targets)
        loss.backward()
        self.optimizer.step()
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"training loss became {loss_value} at step {s.step}; lower the learning rate "
                                     "or check the data for NaNs")
        n = len(inputs)
        s.step += 1
        s.samples_seen += n
        s.samples_in_epoch += n
        if s.samples_in_epoch >= self.samples_per_epoch:
            s.samples_in_epoch -= self.samples_per_epoch
            s.epoch += 1
            s.lr *= self.config.lr_decay
            for group in self.optimizer.param_groups:
                group["lr"] *= self.config.lr_decay
            log.info("epoch %d done at step %d; lr now %.4g", s.epoch, s.step, s.lr)
        return loss_value, n

    def run(self) -> TrainResult:
        """Train until the epochs are done or this call's sample/time budget is spent; checkpoint and validate on
        the way (validation time does not count in the logged samples/s)."""
        config, s = self.config, self.state
        self.model.train()
        start = time.monotonic()
        last_checkpoint_time = last_validation_time = start
        window_loss, window_samples, window_start = 0.0, 0, time.perf_counter()
        samples_this_call = 0
        losses: list[float] = []
        while s.epoch < config.epochs:
            loss_value, n = self.train_step()
            losses.append(loss_value)
            samples_this_call += n
            window_loss += loss_value * n
            window_samples += n
            if s.step % config.log_every_steps == 0:
                elapsed = time.perf_counter() - window_start
                log.info("step %d epoch %d: loss %.1f mm, %.1f samples/s, lr %.4g", s.step, s.epoch,
                         window_loss / window_samples * self.to_mm, window_samples / max(elapsed, 1e-9), s.lr)
                window_loss, window_samples, window_start = 0.0, 0, time.perf_counter()
            now = time.monotonic()
            stop = (s.epoch >= config.epochs
                    or (config.max_samples is not None and samples_this_call >= config.max_samples)
                    or (config.max_minutes is not None and now - start >= config.max_minutes * 60))
            checkpoint_due = (now - last_checkpoint_time >= config.checkpoint_minutes * 60
                              or (config.checkpoint_every_steps is not None
                                  and s.step % config.checkpoint_every_steps == 0))
            validation_due = stop or now - last_validation_time >= config.validation_minutes * 60
            if checkpoint_due or validation_due:
                pause_start = time.perf_counter()
                if validation_due:
                    s.validation = self.validate()
                    last_validation_time = time.monotonic()
                self.checkpoint(fresh=validation_due)
                last_checkpoint_time = time.monotonic()
                log.info("checkpoint %s (step %d, epoch %d)", self.last_path, s.step, s.epoch)
                window_start += time.perf_counter() - pause_start  # keep samples/s about training alone
            if stop:
                break
        return TrainResult(run_dir=config.run_dir, step=s.step, epoch=s.epoch, samples_seen=s.samples_seen,
                           losses=losses, validation=s.validation, finished=s.epoch >= config.epochs)


# ----------------------------------------------------------------------------------------------------------------------
# Throughput measurement


def measure_throughput(model_config: PoseFormerV2Config, batch_size: int, threads: int, steps: int = 5,
                       warmup: int = 1, seed: int = 0, device: str = "cpu", precision: str = "fp32") -> float:
    """Training samples per second (forward, backward, the training's optimizer step) on random inputs, after
    `warmup` steps."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    device = resolve_device(device)
    try:
        torch.manual_seed(seed)
        model = build_model(model_config).to(device).train()
        config = TrainConfig(run_dir=Path("."), lr=1e-4, precision=precision)  # checks the precision
        optimizer = make_optimizer(model, config)
        gen = torch.Generator().manual_seed(seed)
        inputs = torch.randn(batch_size, model_config.frames, model_config.num_joints, 2, generator=gen).to(device)
        targets = torch.randn(batch_size, model_config.num_joints, 3, generator=gen).to(device)
        for i in range(warmup + steps):
            if i == warmup:
                _synchronize(device)
                t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, config.precision):
                predicted = model(inputs)[:, 0]
            mpjpe_torch(predicted.float(), targets).backward()
            optimizer.step()
        _synchronize(device)
        return steps * batch_size / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(previous_threads)


def autocast(device: torch.device, precision: str):
    """The training passes' precision (`TrainConfig.precision`, checked there): float32 as it is, or bfloat16
    autocast on the device."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a timing covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


# ----------------------------------------------------------------------------------------------------------------------
# Command line


# Command-line defaults per dataset: the released recipes (`run_poseformer.py`, `run_3dhp.py`), except the
# Human3.6M batch size, which is this project's CPU choice (see README).
RECIPES = {
    "h36m": {"frames": 243, "frames_kept": 27, "coeffs_kept": 27, "batch_size": 64, "lr": 1e-4, "lr_decay": 0.99,
             "weight_decay": 0.1, "epochs": 200, "optimizer": "adamw", "val_frames": 2048},
    # 79 epochs: `for epoch in range(1, 80)`; 2,929 validation frames: every valid test frame.
    "mpi_inf_3dhp": {"frames": 81, "frames_kept": 9, "coeffs_kept": 9, "batch_size": 512, "lr": 7e-4,
                     "lr_decay": 0.97, "weight_decay": 0.0, "epochs": 79, "optimizer": "adam_amsgrad",
                     "val_frames": 2929},
}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.training.train",
        description="Train PoseFormerV2 with the released recipe on VideoPose3D-format Human3.6M files (train S1 S5 "
                    "S6 S7 S8, validate on S9 S11) or on MPI-INF-3DHP (P-STMO's data_train_3dhp.npz, validated on "
                    "the valid frames of data_test_3dhp.npz); checkpoints and log go outside the repository. "
                    "Defaults marked [recipe] depend on --dataset.")
    p.add_argument("--dataset", choices=sorted(RECIPES), default="h36m")
    p.add_argument("--data-dir", "--h36m-dir", dest="data_dir", type=Path,
                   help="h36m: folder with data_3d_h36m.npz and data_2d_h36m_<keypoints>.npz; mpi_inf_3dhp: folder "
                        "with data_train_3dhp.npz and data_test_3dhp.npz")
    p.add_argument("--keypoints", default="cpn_ft_h36m_dbb", help="h36m: 2D detections name (default %(default)s)")
    p.add_argument("--frames", type=int, help="input window T [recipe: 243 / 81]")
    p.add_argument("--f", "--frames-kept", dest="frames_kept", type=int, help="centre frames kept [recipe]")
    p.add_argument("--n", "--coeffs-kept", dest="coeffs_kept", type=int, help="DCT coefficients kept [recipe]")
    p.add_argument("--embed-dim-ratio", type=int, default=32)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth rate (released training: 0.1)")
    p.add_argument("--run", help="run name; checkpoints in ~/.cache/poseformerv2-demo/train/<run>")
    p.add_argument("--run-dir", type=Path, help="explicit run directory (overrides --run)")
    p.add_argument("--resume", action="store_true", help="continue from <run dir>/last.bin")
    p.add_argument("--batch-size", type=int, help="[recipe: 64 / 512]")
    p.add_argument("--threads", type=int, default=2,
                   help="torch CPU threads; use 1 when other jobs share the cores (a 2-thread step then stalls on "
                        "every parallel region; measure with --benchmark)")
    p.add_argument("--lr", type=float, help="[recipe: 1e-4 / 7e-4]")
    p.add_argument("--lr-decay", type=float, help="lr factor per epoch [recipe: 0.99 / 0.97]")
    p.add_argument("--weight-decay", type=float, help="[recipe: 0.1 / 0]")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="[recipe: adamw / adam_amsgrad]")
    p.add_argument("--epochs", type=int, help="[recipe: 200 / 79]")
    p.add_argument("--samples-per-epoch", type=int, help="epoch length in samples (default: training frames x2)")
    p.add_argument("--max-minutes", type=float, help="stop (with a checkpoint) after this many minutes")
    p.add_argument("--max-samples", type=int, help="stop (with a checkpoint) after this many samples")
    p.add_argument("--checkpoint-minutes", type=float, default=10.0, help="write last.bin this often")
    p.add_argument("--validation-minutes", type=float, default=30.0,
                   help="validate (and update best.bin) this often, and when stopping")
    p.add_argument("--val-frames", type=int, help="size of the fixed validation subset [recipe: 2048 / 2929]")
    p.add_argument("--no-flip", action="store_true", help="disable flip augmentation and flip test")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where converted Human3.6M arrays are cached (default ~/.cache/poseformerv2-demo/h36m)")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then the CPU), cpu, cuda or mps")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (about 10 %% faster on a CPU)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16: bfloat16 autocast for the training passes (faster on GPUs and CPUs with bfloat16; "
                        "measure with --benchmark)")
    p.add_argument("--benchmark", action="store_true",
                   help="only measure training samples/s for batch sizes and threads (no data needed)")
    p.add_argument("--benchmark-batch-sizes", default="64")
    p.add_argument("--benchmark-threads", default="1,2")
    args = p.parse_args(argv)
    for key, value in RECIPES[args.dataset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    from pipeline.training import run_cli

    return run_cli(_main, argv)


def _load_data(args: argparse.Namespace) -> tuple[SequenceSet, SequenceSet, np.ndarray | None]:
    """Training set, validation set and (MPI-INF-3DHP) the validation set's valid frames."""
    if args.dataset == "mpi_inf_3dhp":
        from pipeline.training.mpi_inf_3dhp import load_test, load_train, validation_set

        val_set, valid_ids = validation_set(load_test(args.data_dir))
        return load_train(args.data_dir), val_set, valid_ids
    from pipeline.training.h36m import DEFAULT_CACHE_DIR, load_h36m

    data = load_h36m(args.data_dir, args.keypoints, cache_dir=args.cache_dir or DEFAULT_CACHE_DIR)
    return data.train, data.test, None


def _main(argv: list[str] | None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    model_config = PoseFormerV2Config(frames=args.frames, frames_kept=args.frames_kept, coeffs_kept=args.coeffs_kept,
                                      embed_dim_ratio=args.embed_dim_ratio, depth=args.depth,
                                      drop_path_rate=args.drop_path)
    if args.benchmark:
        for threads in (int(t) for t in args.benchmark_threads.split(",")):
            for batch in (int(b) for b in args.benchmark_batch_sizes.split(",")):
                rate = measure_throughput(model_config, batch, threads, device=args.device, precision=args.precision)
                log.info("%d/%d/%d batch %d threads %d %s: %.1f samples/s", args.frames, args.frames_kept,
                         args.coeffs_kept, batch, threads, args.precision, rate)
        return 0
    if args.data_dir is None:
        raise SystemExit("--data-dir is required (h36m: the folder with data_3d_h36m.npz and data_2d_h36m_<k>.npz; "
                         "mpi_inf_3dhp: the folder with data_train_3dhp.npz and data_test_3dhp.npz)")
    name = args.keypoints if args.dataset == "h36m" else "gt"
    run_dir = args.run_dir or default_run_dir(
        args.run or f"{args.dataset}_{name}_{args.frames}_{args.frames_kept}_{args.coeffs_kept}")
    train_set, val_set, val_ids = _load_data(args)
    config = TrainConfig(
        run_dir=run_dir, batch_size=args.batch_size, threads=args.threads, lr=args.lr, weight_decay=args.weight_decay,
        lr_decay=args.lr_decay, epochs=args.epochs, samples_per_epoch=args.samples_per_epoch,
        max_samples=args.max_samples, max_minutes=args.max_minutes, checkpoint_minutes=args.checkpoint_minutes,
        validation_minutes=args.validation_minutes,
        validation_frames=args.val_frames, flip_augment=not args.no_flip, flip_test=not args.no_flip,
        seed=args.seed, resume=args.resume, optimizer=args.optimizer, skeleton=args.dataset, device=args.device,
        compile=args.compile, precision=args.precision,
        units="mm" if args.dataset == "mpi_inf_3dhp" else "m")
    result = train(model_config, train_set, val_set, config, val_frame_ids=val_ids)
    log.info("stopped at step %d, epoch %d (%s); checkpoints in %s", result.step, result.epoch,
             "finished" if result.finished else "resume with --resume", result.run_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
