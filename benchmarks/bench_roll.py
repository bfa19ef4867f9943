"""How a lifter copes with a rolled camera or a body turning in the picture, and what the demo's upright turn buys.

    python benchmarks/bench_roll.py [--checkpoint weights/poseformerv2_mocap_27_3_3.safetensors] [--frames 150]

Lifters are trained on upright people seen by cameras with little roll (the default lifter: roll ~N(0, 7.5)
degrees). A phone held sideways without rotation metadata, a camera mounted upside down, or a handstand, a cartwheel
and a somersault all show the lifter a body turned in the picture. Here the CMU clips (another studio, never trained
on; the held-out CMU set `python -m pipeline.mocap evaluate` scores, cached in ~/.cache; the first `--frames` frames
of each clip, 30 frames/s) are turned about the picture's centre and lifted, scored by P-MPJPE over every frame
(per-frame Procrustes, so the roll itself costs nothing; only the pose's shape counts). The turns:
- a camera rolled by a fixed angle for the whole clip;
- a camera spinning about its axis once a second or once in three seconds (to the lifter, a body cartwheeling in the
  picture plane);
- a somersault: upright, then one full turn over 24 frames (0.8 s) in the middle of the clip, then upright again.
Each lifted three ways:
- as it is;
- as demo.py lifts (`pipeline.virtual_camera.lift_upright`: one turn per clip where the person leans more than
  UPRIGHT_MIN_ROLL_DEG on average over the frames they stand straight in; where the body tips further than
  TURNOVER_MIN_DEG from that, frame by frame);
- every frame turned upright by its own smoothed ankles -> shoulders angle before lifting (it also straightens the
  body's natural lean and its turning, which the lifter then has to lift without).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FPS = 30.0
WAYS = ("as it is", "as demo.py lifts", "upright per frame")


def roll_profiles(frames: int) -> dict[str, np.ndarray]:
    """Per-frame camera roll (radians) of every tested turn, for a clip of `frames` frames."""
    t = np.arange(frames) / FPS
    somersault = np.zeros(frames)
    start = frames // 2 - 12
    somersault[start:start + 24] = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    profiles = {f"rolled {d} degrees": np.full(frames, np.radians(d)) for d in (0, 20, 45, 90, 180)}
    profiles.update({"spinning once a second": 2 * np.pi * t, "spinning once in 3 s": 2 * np.pi * t / 3,
                     "a somersault": somersault})
    return profiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=REPO / "weights" / "poseformerv2_mocap_27_3_3.safetensors")
    parser.add_argument("--frames", type=int, default=150, help="the first frames of each clip")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.frames < 48:
        parser.error("--frames must be 48 or more (the somersault turns over 24 frames in the middle of the clip)")
    import torch

    from pipeline.lifting import load_lifter
    from pipeline.mocap.dataset import build_sets
    from pipeline.training.metrics import p_mpjpe
    from pipeline.virtual_camera import body_angles, lift_upright, roll_rotation, smoothed, turn_picture

    torch.set_num_threads(args.threads)
    cmu = build_sets(with_train=False).cmu
    lifter = load_lifter(args.checkpoint, device="cpu")
    clips = [(x[:args.frames], y[:args.frames]) for x, y in zip(cmu.inputs_2d, cmu.targets_3d, strict=True)]
    centre = (0.0, 0.0)  # the picture's centre in screen-normalised coordinates

    def lift(points: np.ndarray) -> np.ndarray:
        return lifter.lift_normalized(points)

    def lifted(points: np.ndarray, way: str) -> np.ndarray:
        if way == "as it is":
            return lift(points)
        if way == "as demo.py lifts":
            return lift_upright(lift, points, centre)
        angles = -smoothed(body_angles(points))
        turned = turn_picture(points, angles, centre).astype(np.float32)
        return np.einsum("tjk,tkl->tjl", lift(turned), roll_rotation(angles))  # back, frame by frame

    print(f"{args.checkpoint.name}: held-out CMU, {len(clips)} clips x the first {args.frames} frames, "
          "P-MPJPE in mm over every frame")
    print(f"{'turn':<24}" + "".join(f" {way:>18}" for way in WAYS), flush=True)
    for name, _ in roll_profiles(args.frames).items():
        scores = {way: [] for way in WAYS}
        for points, truth in clips:
            roll = roll_profiles(len(points))[name]
            rolled = turn_picture(points, roll, centre).astype(np.float32)
            for way in WAYS:
                scores[way].append((len(points), p_mpjpe(lifted(rolled, way), truth)))
        mean = {way: 1000 * sum(n * e for n, e in s) / sum(n for n, _ in s) for way, s in scores.items()}
        print(f"{name:<24}" + "".join(f" {mean[way]:>18.1f}" for way in WAYS), flush=True)


if __name__ == "__main__":
    main()
