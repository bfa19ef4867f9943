"""How a lifter copes with a rolled camera, and what turning the 2D upright before lifting would buy.

    python benchmarks/bench_roll.py [--checkpoint weights/poseformerv2_mocap_27_3_3.safetensors] [--frames 4000]

Lifters are trained on upright people seen by cameras with little roll (the default lifter: roll ~N(0, 7.5)
degrees). A phone held sideways without rotation metadata, a camera mounted upside down, or a handstand, a cartwheel
and a somersault all show the lifter a body turned in the picture. Here the CMU clips (another studio, never trained
on; the held-out CMU set `python -m pipeline.mocap evaluate` scores, cached in ~/.cache) are turned about
the picture's centre by 0-180 degrees and lifted three ways, scored by P-MPJPE (per-frame Procrustes, so the roll
itself costs nothing; only the pose's shape counts):
- as they are;
- turned upright per clip: by the circular mean over the clip of the angle between the pelvis -> thorax direction and
  the picture's up (what a whole rolled camera needs);
- turned upright per frame: every frame by its own torso angle (what a flip needs; it also straightens the natural
  lean of the torso, which the lifter then has to lift without).
Nothing in the demo turns the 2D upright yet: this measures whether it is worth building.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ROLLS_DEG = (0, 45, 90, 135, 180)
WAYS = ("as it is", "upright per clip", "upright per frame")


def turned(points: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """(F, J, 2) screen-normalised points turned about the picture's centre by (F,) angles (radians, from +x to
    +y: clockwise on screen, where y points down)."""
    c, s = np.cos(angles)[:, None], np.sin(angles)[:, None]
    x, y = points[..., 0], points[..., 1]
    return np.stack([c * x - s * y, s * x + c * y], axis=-1).astype(np.float32)


def torso_angles(points: np.ndarray) -> np.ndarray:
    """(F,) angle (radians) by which each frame's pelvis -> thorax direction (Human3.6M joints 0 -> 8) is turned
    away from the picture's up, in turned()'s sense: turned(points, -torso_angles(points)) stands the torso up."""
    v = points[:, 8] - points[:, 0]
    return np.arctan2(v[:, 0], -v[:, 1])


def circular_mean(angles: np.ndarray) -> float:
    return float(np.arctan2(np.sin(angles).mean(), np.cos(angles).mean()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=REPO / "weights" / "poseformerv2_mocap_27_3_3.safetensors")
    parser.add_argument("--frames", type=int, default=4000, help="evenly spaced centre frames scored per row")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    from pipeline.mocap.dataset import build_sets
    from pipeline.mocap.evaluation import evaluate_model
    from pipeline.mocap.export import load_any_lifter
    from pipeline.training.windows import SequenceSet

    torch.set_num_threads(args.threads)
    cmu = build_sets(with_train=False).cmu
    model, _, mirror = load_any_lifter(args.checkpoint)

    def upright(points: np.ndarray, way: str) -> np.ndarray:
        if way == "as it is":
            return points
        angles = torso_angles(points)
        return turned(points, -(np.full(len(points), circular_mean(angles)) if way == "upright per clip" else angles))

    sets = {}
    for degrees in ROLLS_DEG:
        rolled = [turned(x, np.full(len(x), np.radians(degrees))) for x in cmu.inputs_2d]
        for way in WAYS:
            sets[(degrees, way)] = SequenceSet([upright(x, way) for x in rolled], cmu.targets_3d, cmu.names,
                                               cmu.groups)
    results = evaluate_model(model, model.config.frames, sets, args.frames, mirror_model=mirror)
    print(f"{args.checkpoint.name}: held-out CMU, P-MPJPE in mm on {args.frames} frames")
    print(f"{'roll':>5}" + "".join(f" {way:>18}" for way in WAYS))
    for degrees in ROLLS_DEG:
        print(f"{degrees:>5}" + "".join(f" {results[(degrees, way)]['p_mpjpe_mm']:>18.1f}" for way in WAYS))


if __name__ == "__main__":
    main()
