"""Evaluate a lifter with the released protocols: Human3.6M (errors per action) and MPI-INF-3DHP (MPJPE, PCK, AUC).

Human3.6M: every frame is predicted from the window centred on it (edge-padded at the sequence ends) with flip test,
as the released `run_poseformer.py --evaluate` does; targets are root-relative, predictions are used as the model
outputs them. MPJPE, P-MPJPE and N-MPJPE are frame-weighted within a group, MPJVE is computed per sequence and
weighted by its frame count, and the reported average is the mean over groups ("action-wise average").

MPI-INF-3DHP (`run_3dhp.py` and its MATLAB scripts): every valid test frame, each from the window centred on it over
the whole sequence (invalid frames give 2D context), edge-padded, 2D normalised with the sequence's own frame size,
flip test, the predicted pelvis set to 0; MPJPE over all 17 joints, PCK (< 150 mm) and AUC (PCK averaged over
0, 5, ..., 150 mm) over the 14 joints of the MATLAB groups, per sequence and pooled over all valid frames (the
reported numbers: the frame-weighted mean of the sequences). Any checkpoint goes through `Lifter.lift_normalized`
(Human3.6M order and metres in and out): a 3DHP checkpoint works in its own order and units inside, a Human3.6M one
is evaluated through the joint mapping (the cross-dataset numbers papers report).
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.app.outputs import save_json
from pipeline.geometry import root_relative
from pipeline.lifting import Lifter, load_lifter
from pipeline.skeleton import H36M, h36m_to_mpi_inf_3dhp, mpi_inf_3dhp_to_h36m
from pipeline.training.metrics import auc, joint_errors, pck, sequence_error_sums
from pipeline.training.mpi_inf_3dhp import PCK_JOINTS, EvaluationSequence
from pipeline.training.train import predict_centre
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
        rows.append(f"{'average':<{width}}  {total:>8}  "
                    + "  ".join(f"{self.average[m] * 1000:8.1f}" for m in METRICS))
        return "\n".join(rows)


def predict_sequences(model: torch.nn.Module, frames: int, sequences: SequenceSet, flip_test: bool = True,
                      batch_size: int = 256, flip_permutation: np.ndarray | None = None,
                      mirror_model: torch.nn.Module | None = None) -> list[np.ndarray]:
    """Per-frame predictions (T_i, J, 3) for every sequence, from windows centred on each frame; `mirror_model`: the
    flip test's second network (`predict_centre`)."""
    perm = H36M.flip_permutation if flip_permutation is None else flip_permutation
    sampler = WindowSampler(sequences, frames=frames, flip=False, flip_permutation=perm)
    networks = [net for net in (model, mirror_model) if net is not None]
    was_training = [net.training for net in networks]
    for net in networks:
        net.eval()
    out = []
    start = 0
    for k, (name, x) in enumerate(zip(sequences.names, sequences.inputs_2d, strict=True)):
        ids = np.arange(start, start + len(x))
        preds = [predict_centre(model, sampler.gather(ids[i:i + batch_size]).inputs_2d, flip_test, perm, mirror_model)
                 for i in range(0, len(ids), batch_size)]
        out.append(np.concatenate(preds))
        start += len(x)
        log.info("predicted %s (%d frames; sequence %d/%d)", name, len(x), k + 1, len(sequences))
    for net, mode in zip(networks, was_training, strict=True):
        net.train(mode)
    return out


def score(predictions: list[np.ndarray], sequences: SequenceSet) -> EvaluationResult:
    """Released-protocol errors of per-frame predictions against the sequences' root-relative targets."""
    if len(predictions) != len(sequences):
        raise ValueError(f"{len(predictions)} predicted sequences for {len(sequences)} sequences")
    groups = sequences.groups or ["all"] * len(sequences)
    sums: dict[str, dict[str, float]] = {}
    for pred, target, group in zip(predictions, sequences.targets_3d, groups, strict=True):
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
                   batch_size: int = 256, mirror_model: torch.nn.Module | None = None) -> EvaluationResult:
    return score(predict_sequences(model, frames, sequences, flip_test, batch_size, mirror_model=mirror_model),
                 sequences)


# ----------------------------------------------------------------------------------------------------------------------
# MPI-INF-3DHP


@dataclass
class PCKResult:
    """MPI-INF-3DHP metrics: MPJPE in mm, PCK and AUC in %, and the frames scored, per sequence and pooled."""

    sequences: dict[str, dict[str, float]]
    all: dict[str, float]

    def table(self) -> str:
        width = max([len("sequence")] + [len(name) for name in self.sequences])
        rows = [f"{'sequence':<{width}}  {'frames':>6}  {'MPJPE':>7}  {'PCK':>6}  {'AUC':>6}"]
        for name, m in [*self.sequences.items(), ("all", self.all)]:
            rows.append(f"{name:<{width}}  {int(m['frames']):>6}  {m['mpjpe']:7.2f}  {m['pck']:6.2f}  {m['auc']:6.2f}")
        return "\n".join(rows)

    def to_json(self) -> dict:
        return {"sequences": self.sequences, "all": self.all}


def pck_metrics(errors: np.ndarray) -> dict[str, float]:
    """Per-joint errors (N, 17) in mm of 3DHP-order poses -> MPJPE (17 joints), PCK and AUC (14 joints), frames."""
    scored = errors[:, list(PCK_JOINTS)]
    return {"mpjpe": float(errors.mean()), "pck": pck(scored), "auc": auc(scored), "frames": int(len(errors))}


def predict_mpi_inf_3dhp(lifter: Lifter, sequences: list[EvaluationSequence], flip_test: bool = True,
                         batch_size: int | None = None) -> list[np.ndarray]:
    """For every sequence, the poses of its valid frames (N_valid, 17, 3): MPI-INF-3DHP order, mm, pelvis at 0."""
    predictions = []
    for k, sequence in enumerate(sequences):
        valid = np.flatnonzero(sequence.valid)
        lifted = lifter.lift_normalized(mpi_inf_3dhp_to_h36m(sequence.normalized_2d), flip=flip_test,
                                        batch_size=batch_size, centres=valid)
        predictions.append(h36m_to_mpi_inf_3dhp(lifted).astype(np.float64) * 1000.0)
        log.info("predicted %s (%d valid of %d frames; sequence %d/%d)", sequence.name, len(valid),
                 len(sequence.valid), k + 1, len(sequences))
    return predictions


def score_mpi_inf_3dhp(predictions: list[np.ndarray], sequences: list[EvaluationSequence]) -> PCKResult:
    """MPJPE/PCK/AUC of valid-frame predictions (3DHP order, mm) against the pelvis-relative ground truth."""
    if len(predictions) != len(sequences):
        raise ValueError(f"{len(predictions)} predicted sequences for {len(sequences)} sequences")
    per_sequence, pooled = {}, []
    for pred, sequence in zip(predictions, sequences, strict=True):
        errors = joint_errors(pred, sequence.targets_mm[sequence.valid])
        per_sequence[sequence.name] = pck_metrics(errors)
        pooled.append(errors)
    return PCKResult(sequences=per_sequence, all=pck_metrics(np.concatenate(pooled)))


def evaluate_mpi_inf_3dhp(lifter: Lifter, sequences: list[EvaluationSequence], flip_test: bool = True,
                          batch_size: int | None = None) -> PCKResult:
    return score_mpi_inf_3dhp(predict_mpi_inf_3dhp(lifter, sequences, flip_test, batch_size), sequences)


def load_model(checkpoint: Path, frames: int | None = None) -> tuple[torch.nn.Module, int]:
    """A PoseFormerV2 in eval mode from a released or our checkpoint (via `pipeline.lifting.load_lifter`), and its
    window length (from `frames`, the config our checkpoints carry, or the released file name). Of a cross-flip
    ensemble (two networks in one file) only the first: use `load_lifter` for both."""
    lifter = load_lifter(checkpoint, frames=frames)
    return lifter.model.eval(), lifter.frames


# ----------------------------------------------------------------------------------------------------------------------
# Command line


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.training.evaluate",
        description="Evaluate a PoseFormerV2 checkpoint (released or ours) with the released protocols: on "
                    "VideoPose3D-format Human3.6M (S9, S11; MPJPE, P-MPJPE, N-MPJPE and MPJVE per action and "
                    "action-wise average, mm), or on the MPI-INF-3DHP test set (MPJPE in mm, PCK@150mm and AUC in % "
                    "per sequence and over all valid frames; Human3.6M checkpoints through the joint mapping).")
    p.add_argument("--dataset", choices=("h36m", "mpi_inf_3dhp"), default="h36m")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data-dir", "--h36m-dir", dest="data_dir", type=Path, required=True,
                   help="h36m: the folder with data_3d_h36m.npz and data_2d_h36m_<keypoints>.npz; mpi_inf_3dhp: the "
                        "folder with data_test_3dhp.npz")
    p.add_argument("--keypoints", default="cpn_ft_h36m_dbb", help="h36m: the 2D detections' name")
    p.add_argument("--subjects", default="S9,S11", help="h36m: the test subjects")
    p.add_argument("--frames", type=int, help="window length, if the checkpoint does not say it")
    p.add_argument("--skeleton", choices=("h36m", "mpi_inf_3dhp"),
                   help="the checkpoint's joint order, if the file does not say it (load_lifter's default otherwise)")
    p.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    p.add_argument("--no-flip-test", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--cache-dir", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from pipeline.training import run_cli

    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    lifter = load_lifter(args.checkpoint, frames=args.frames, skeleton=args.skeleton)
    if args.dataset == "mpi_inf_3dhp":
        from pipeline.training.mpi_inf_3dhp import load_test

        sequences = load_test(args.data_dir)
        log.info("evaluating %s (%s skeleton, %d-frame windows) on %d valid frames of %s", args.checkpoint,
                 lifter.skeleton, lifter.frames, sum(int(s.valid.sum()) for s in sequences),
                 ",".join(s.name for s in sequences))
        result = evaluate_mpi_inf_3dhp(lifter, sequences, flip_test=not args.no_flip_test, batch_size=args.batch_size)
        print(result.table())
        report = result.to_json()
    else:
        report = _evaluate_h36m(args, lifter)
    if args.json is not None:
        _write_json(args.json, {"checkpoint": str(args.checkpoint), "dataset": args.dataset, **report})
    return 0


def _evaluate_h36m(args: argparse.Namespace, lifter: Lifter) -> dict:
    from pipeline.training.h36m import DEFAULT_CACHE_DIR, load_h36m

    if lifter.skeleton != "h36m":
        raise ValueError(f"{args.checkpoint} is a {lifter.skeleton} checkpoint; evaluate it with --dataset "
                         f"{lifter.skeleton}")
    subjects = tuple(s.strip() for s in args.subjects.split(",") if s.strip())
    data = load_h36m(args.data_dir, args.keypoints, train_subjects=(), test_subjects=subjects,
                     cache_dir=args.cache_dir or DEFAULT_CACHE_DIR)
    log.info("evaluating %s (%d-frame windows) on %d frames of %s", args.checkpoint, lifter.frames,
             data.test.num_frames, ",".join(subjects))
    result = evaluate_model(lifter.model.eval(), lifter.frames, data.test, flip_test=not args.no_flip_test,
                            batch_size=args.batch_size, mirror_model=lifter.mirror_model)
    print(result.table_mm())
    in_mm = {g: {k: (v if k == "frames" else v * 1000) for k, v in e.items()} for g, e in result.per_group.items()}
    return {"groups": in_mm, "average": {k: v * 1000 for k, v in result.average.items()}}


def _write_json(path: Path, report: dict) -> None:
    """The report as JSON, written through a temporary file (errors in mm, PCK/AUC in %)."""
    save_json(path, report)
    log.info("wrote %s", path)


if __name__ == "__main__":
    raise SystemExit(main())
