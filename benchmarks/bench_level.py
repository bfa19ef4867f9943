"""How well the levelled world view finds the vertical: `pipeline.motion.level` against the demo's fixed tilt.

    python benchmarks/bench_level.py [--checkpoint weights/poseformerv2_mocap_27_3_3.safetensors] \
        [--renderings-per-clip 3] [--threads 1]

Two sets with a known vertical, each scored as the angle between the world's true up direction and the one the world
view assumes (degrees: median, mean, 90th percentile), plus the signed pitch and roll errors (estimated minus true):
- synthetic: the CMU clips (another studio, never trained on) rendered through the training camera distribution
  (pitch ~N(5, 22.5), roll ~N(0, 7.5) degrees, 1-12 m, phone lenses, some panning and hand-held cameras) with the
  detector-like noise, lifted by the checkpoint over whole clips. "true bodies" runs the same estimator on the
  rendered ground-truth poses: the best a body-based estimate can do;
- real: the shared 4-camera recording (../shared/data/multiview/pose2sim_multi), each view's two dancers lifted and
  levelled as demo.py does (`pipeline.evaluation.multiview.view_levellings`: virtual camera, rigid bones,
  `level_world`), together and each alone, against the calibrated vertical of that camera.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RECORDING = REPO.parent / "shared" / "data" / "multiview" / "pose2sim_multi"


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1.0, 1.0))))


def pitch_roll(up: np.ndarray) -> tuple[float, float]:
    return float(np.degrees(np.arcsin(-up[2]))), float(np.degrees(np.arctan2(up[0], -up[1])))


def summary(name: str, rows: list[tuple[np.ndarray, np.ndarray]]) -> str:
    """rows: (estimated up, true up) pairs, camera space."""
    angles = np.array([angle_deg(e, t) for e, t in rows])
    signed = np.array([np.subtract(pitch_roll(e), pitch_roll(t)) for e, t in rows])
    return (f"  {name:14s} angle median {np.median(angles):5.1f}  mean {angles.mean():5.1f}  p90 "
            f"{np.percentile(angles, 90):5.1f}   pitch error mean {signed[:, 0].mean():+5.1f} "
            f"(sd {signed[:, 0].std():4.1f})  roll error mean {signed[:, 1].mean():+5.1f} "
            f"(sd {signed[:, 1].std():4.1f})   n={len(rows)}")


def synthetic(lifter, renderings_per_clip: int) -> dict[str, list]:
    from pipeline.mocap.cameras import sample_camera
    from pipeline.mocap.dataset import DEFAULT_MOCAP_DIR, RenderConfig, cmu_clips, perturb_landmarks, render
    from pipeline.motion.level import estimate_up, fixed_up_camera

    config = RenderConfig()
    rows: dict[str, list] = {"fixed": [], "levelled": [], "true bodies": []}
    for c, clip in enumerate(cmu_clips(DEFAULT_MOCAP_DIR, config.body)):
        rng = np.random.default_rng([7, c])
        for _ in range(renderings_per_clip):
            coco = perturb_landmarks(clip.coco_world, clip.h36m_world, rng, config.landmark_std_m)
            camera = sample_camera(coco, rng, config.camera)
            inputs, targets = render(clip.h36m_world, coco, camera, rng, config.noise)
            rotation = camera.rotation if camera.rotation.ndim == 2 else camera.rotation.mean(axis=0)
            true = rotation @ np.array([0.0, 1.0, 0.0])  # the mocap world is Y up
            true /= np.linalg.norm(true)
            lifted = lifter.lift_normalized(inputs)
            for name, up in (("fixed", fixed_up_camera()), ("levelled", estimate_up(lifted[None])),
                             ("true bodies", estimate_up(targets[None] - targets[None, :, :1]))):
                rows[name].append((up, true))
        print(f"  rendered and lifted {c + 1} clips", flush=True)
    return rows


def real(lifter) -> dict[str, dict[str, list]]:
    """Per camera: the fixed rotation's vertical, the levelled one from both dancers (as demo.py levels,
    `pipeline.evaluation.multiview.view_levellings`) and from each dancer alone, each with the calibrated vertical."""
    from pipeline.evaluation.multiview import MultiviewConfig, find_recording, reconstruct, view_levellings
    from pipeline.motion.level import fixed_up_camera

    recording = find_recording(RECORDING)
    views, people = reconstruct(recording, MultiviewConfig())
    together = view_levellings(lifter, views, people)
    alone = [view_levellings(lifter, views, [person]) for person in people]
    rows: dict[str, dict[str, list]] = {}
    for v, view in enumerate(views):
        truth = recording.cameras[v].R @ np.array([0.0, 0.0, 1.0])  # the room's z is up
        rows[view.name] = {"fixed": [(fixed_up_camera(), truth)],
                           "levelled": [(together[view.name].up_camera, truth)],
                           **{f"person {i} only": [(levellings[view.name].up_camera, truth)]
                              for i, levellings in enumerate(alone)}}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(REPO / "weights" / "poseformerv2_mocap_27_3_3.safetensors"))
    parser.add_argument("--renderings-per-clip", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-synthetic", action="store_true")
    args = parser.parse_args()

    import torch

    from pipeline.lifting import load_lifter

    torch.set_num_threads(args.threads)
    lifter = load_lifter(args.checkpoint, device="cpu")
    if RECORDING.is_dir():
        print("real recording, each camera against its calibrated vertical (angle in degrees):")
        per_view = real(lifter)
        for view, rows in per_view.items():
            print(f"  {view}: " + ", ".join(f"{name} {angle_deg(*pairs[0]):.1f}" for name, pairs in rows.items()))
        for name in ("fixed", "levelled"):
            print(summary(name, [pair for rows in per_view.values() for pair in rows[name]]))
    if not args.skip_synthetic:
        print(f"synthetic CMU renderings ({args.renderings_per_clip} per clip):")
        rows = synthetic(lifter, args.renderings_per_clip)
        for name, pairs in rows.items():
            print(summary(name, pairs))


if __name__ == "__main__":
    main()
