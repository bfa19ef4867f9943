"""Evaluate a lifter on a `SequenceSet` with the released per-frame protocol and report errors per group (action).

Every frame is predicted from the window centred on it (edge-padded at the sequence ends) with flip test, as the
released `run_poseformer.py --evaluate` does; targets are root-relative, predictions are used as the model outputs
them. MPJPE, P-MPJPE and N-MPJPE are frame-weighted within a group, MPJVE is computed per sequence and weighted by its
frame count, and the reported average is the mean over groups ("action-wise average").
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.lifting import load_lifter
from pipeline.skeleton import H36M
from pipeline.training.metrics import sequence_error_sums
from pipeline.training.train import predict_centre
from pipeline.geometry import root_relative
from pipeline.training.windows import SequenceSet, WindowSampler

log = logging.getLogger(__name__)

METRICS = ("mpjpe", "p_mpjpe", "n_mpjpe", "mpjve")


@dataclass
class EvaluationResult:
    per_group: dict[str, dict[str, float]]  # group -> metric -> error in metres (plus "frames")
    average: dict[str, float]  # metric -> mean over groups, metres

    def table_mm(self) -> str:
        """A plain-text table in millimetres, one row per group and the action-wise average last."""
        width = max([len("average")] + [len(g) for g in self.per_group])
        head = f"{'group':<{width}}  {'frames':>8}  " + "  ".join(f"{m.upper():>8}" for m in METRICS)
        rows = [head]
        for group, errors in self.per_group.items():
            rows.append(f"{group:<{width}}  {int(errors['frames']):>8}  "
                        + "  ".join(f"{errors[m] * 1000:8.1f}" for m in METRICS))
        total = int(sum(e["frames"] for e in self.per_group.values()))
        rows.append(f"{'average':<{width}}  {total:>8}  " + "  ".join(f"{self.average[m] * 1000:8.1f}" for m in METRICS))
        return "\n".join(rows)


def predict_sequences(model: torch.nn.Module, frames: int, sequences: SequenceSet, flip_test: bool = True,
                      batch_size: int = 256, flip_permutation: np.ndarray | None = None) -> list[np.ndarray]:
    """Per-frame predictions (T_i, J, 3) for every sequence, from windows centred on each frame."""
    perm = H36M.flip_permutation if flip_permutation is None else flip_permutation
    sampler = WindowSampler(sequences, frames=frames, flip=False, flip_permutation=perm)
    was_training = model.training
    model.eval()
    out = []
    start = 0
    for k, (name, x) in enumerate(zip(sequences.names, sequences.inputs_2d)):
        ids = np.arange(start, start + len(x))
        preds = [predict_centre(model, sampler.gather(ids[i:i + batch_size]).inputs_2d, flip_test, perm)
                 for i in range(0, len(ids), batch_size)]
        out.append(np.concatenate(preds))
        start += len(x)
        log.info("predicted %s (%d frames; sequence %d/%d)", name, len(x), k + 1, len(sequences))
    model.train(was_training)
    return out


def score(predictions: list[np.ndarray], sequences: SequenceSet) -> EvaluationResult:
    """Released-protocol errors of per-frame predictions against the sequences' root-relative targets."""
    if len(predictions) != len(sequences):
        raise ValueError(f"{len(predictions)} predicted sequences for {len(sequences)} sequences")
    groups = sequences.groups or ["all"] * len(sequences)
    sums: dict[str, dict[str, float]] = {}
    for pred, target, group in zip(predictions, sequences.targets_3d, groups):
        seq = sequence_error_sums(pred, root_relative(target))
        acc = sums.setdefault(group, dict.fromkeys(seq, 0.0))
        for k, v in seq.items():
            acc[k] += v
    per_group = {
        g: {"frames": s["frames"], **{m: s[m] / s["frames"] for m in METRICS}} for g, s in sums.items()
    }
    average = {m: float(np.mean([e[m] for e in per_group.values()])) for m in METRICS}
    return EvaluationResult(per_group=per_group, average=average)


def evaluate_model(model: torch.nn.Module, frames: int, sequences: SequenceSet, flip_test: bool = True,
                   batch_size: int = 256) -> EvaluationResult:
    return score(predict_sequences(model, frames, sequences, flip_test, batch_size), sequences)


def load_model(checkpoint: Path, frames: int | None = None) -> tuple[torch.nn.Module, int]:
    """A PoseFormerV2 in eval mode from a released or our checkpoint (via `pipeline.lifting.load_lifter`), and its
    window length (from `frames`, the config our checkpoints carry, or the released file name)."""
    lifter = load_lifter(checkpoint, frames=frames)
    return lifter.model.eval(), lifter.frames


# ----------------------------------------------------------------------------------------------------------------------
# Command line


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.training.evaluate",
        description="Evaluate a PoseFormerV2 checkpoint (released or ours) on VideoPose3D-format Human3.6M "
                    "(S9, S11): MPJPE, P-MPJPE, N-MPJPE and MPJVE per action and action-wise average, in mm.")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--h36m-dir", type=Path, required=True)
    p.add_argument("--keypoints", default="cpn_ft_h36m_dbb")
    p.add_argument("--subjects", default="S9,S11")
    p.add_argument("--frames", type=int, help="window length, if the checkpoint does not say it")
    p.add_argument("--no-flip-test", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--cache-dir", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from pipeline.training import run_cli

    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> int:
    from pipeline.training.h36m import DEFAULT_CACHE_DIR, load_h36m

    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    model, frames = load_model(args.checkpoint, args.frames)
    subjects = tuple(s.strip() for s in args.subjects.split(",") if s.strip())
    data = load_h36m(args.h36m_dir, args.keypoints, train_subjects=(), test_subjects=subjects,
                     cache_dir=args.cache_dir or DEFAULT_CACHE_DIR)
    log.info("evaluating %s (%d-frame windows) on %d frames of %s", args.checkpoint, frames, data.test.num_frames,
             ",".join(subjects))
    result = evaluate_model(model, frames, data.test, flip_test=not args.no_flip_test, batch_size=args.batch_size)
    print(result.table_mm())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
