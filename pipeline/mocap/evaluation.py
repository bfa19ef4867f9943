"""Held-out evaluation of a lifter on rendered mocap sets: MPJPE and P-MPJPE overall and per part.

The numbers are frame-weighted over evenly spaced centre frames with the flip test, and broken down by CMU subject or
Bandai content, because the averages hide which motions a lifter cannot do (CMU climbing dominates its error).
"""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def subject_or_content(group: str) -> str:
    """Breakdown key: CMU subject ("01_05" -> "cmu_01", "resources_131_02" -> "cmu_131"), Bandai content
    ("dataset-2_walk_active" -> "walk")."""
    if group.startswith("dataset-"):
        return group.split("_")[1]
    return "cmu_" + (group.split("_")[1] if group.startswith("resources_") else group.split("_")[0])


def evaluate_model(model, frames: int, sets: dict, max_frames: int, batch_size: int = 256,
                   mirror_model=None) -> dict[str, dict]:
    """MPJPE / P-MPJPE (mm) with flip test on evenly spaced centre frames of every SequenceSet in `sets`, overall
    (frame-weighted) and per CMU subject / Bandai content; `mirror_model`: the flip test's second network."""
    from pipeline.skeleton import H36M
    from pipeline.training.metrics import procrustes_align
    from pipeline.training.train import predict_centre
    from pipeline.training.windows import WindowSampler

    for net in (model, mirror_model):
        if net is not None:
            net.eval()
    results = {}
    for name, sequences in sets.items():
        sampler = WindowSampler(sequences, frames, flip=False, flip_permutation=H36M.flip_permutation)
        ids = sampler.evenly_spaced_frames(max_frames)
        preds, targets = [], []
        for i in range(0, len(ids), batch_size):
            batch = sampler.gather(ids[i:i + batch_size])
            preds.append(predict_centre(model, batch.inputs_2d, True, H36M.flip_permutation, mirror_model))
            targets.append(batch.targets_3d)
        pred, target = np.concatenate(preds).astype(np.float64), np.concatenate(targets).astype(np.float64)
        err = np.linalg.norm(pred - target, axis=-1).mean(axis=-1) * 1000
        p_err = np.linalg.norm(procrustes_align(pred, target) - target, axis=-1).mean(axis=-1) * 1000
        ends = np.cumsum([len(x) for x in sequences.inputs_2d])
        keys = np.array([subject_or_content(sequences.groups[k]) for k in np.searchsorted(ends, ids, side="right")])
        results[name] = {"mpjpe_mm": round(float(err.mean()), 1), "p_mpjpe_mm": round(float(p_err.mean()), 1),
                         "frames": int(len(ids)), "sequences": len(sequences),
                         "by_group": {k: {"mpjpe_mm": round(float(err[keys == k].mean()), 1),
                                          "p_mpjpe_mm": round(float(p_err[keys == k].mean()), 1),
                                          "frames": int((keys == k).sum())} for k in sorted(set(keys))}}
        log.info("%s: MPJPE %.1f mm, P-MPJPE %.1f mm (%d frames of %d sequences)", name, err.mean(), p_err.mean(),
                 len(ids), len(sequences))
    return results
