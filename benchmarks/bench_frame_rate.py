"""How a lifter copes with videos faster than its training data, and what the window stride buys.

    python benchmarks/bench_frame_rate.py [--checkpoint weights/poseformerv2_mocap_27_3_3.safetensors]
        [--fps 120 60 30] [--strides 1 2 4] [--ensembles 1+2 2+4]

The shipped lifter was trained on 30 fps mocap played 0.45-1.6x as fast, the motion of 19-67 fps videos; lab
cameras and phones' slow motion record at 100-240 fps, where a 27-frame window spans a quarter of a second.
`demo.py` then lets each window take every s-th frame (`pipeline.lifting.window_stride`), from keypoints averaged over
s frames (`anti_alias`). This measures it on the CMU evaluation clips (subjects 01-03, ASF/AMC, recorded at 120 fps;
`python -m pipeline.mocap unpack` first), rendered as the held-out sets are (one random camera and detector noise per
clip, fixed seeds) at 120 fps and at every second or fourth frame (60, 30 fps), and lifted with each stride: MPJPE and
P-MPJPE (mm, about 300 evenly spaced frames per clip) and the mean acceleration of the lifted joints (m/s^2, every
frame; the noise-free motion has far less); strides above 1 also without the filter; and `--ensembles` (e.g. 1+2):
the mean of the poses lifted with each of those strides, as `demo.py` lifts from 50 fps on
(`pipeline.lifting.window_strides`). CMU is never trained on. One thread; about 20 minutes on this machine per frame
rate with every row.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch

from pipeline.lifting import load_lifter, window_strides
from pipeline.mocap.dataset import DEFAULT_MOCAP_DIR, RenderConfig, as_recorded, load_amc_clip, render_clips
from pipeline.training.metrics import procrustes_align

REPO = Path(__file__).resolve().parents[1]
RECORDED_FPS = 120.0  # CMU's ASF/AMC clips


def lift_unfiltered(lifter, x2: np.ndarray, stride: int) -> np.ndarray:
    """Strided windows without `anti_alias`: each phase's frames lifted as a sequence of their own."""
    out = np.empty(x2.shape[:2] + (3,), np.float32)
    for phase in range(stride):
        out[phase::stride] = lifter.lift_normalized(x2[phase::stride])
    return out


def scores(lifter, inputs_2d: list[np.ndarray], targets_3d: list[np.ndarray], fps: float, strides: tuple[int, ...],
           filtered: bool = True) -> dict:
    """Scores of the lifted clips; with several strides, of the mean of each stride's poses."""
    errors, aligned, accelerations = [], [], []
    for x2, x3 in zip(inputs_2d, targets_3d, strict=True):
        lifted = np.mean([lifter.lift_normalized(x2, stride=s) if filtered else lift_unfiltered(lifter, x2, s)
                          for s in strides], axis=0)
        predicted = lifted.astype(np.float64)
        target = (x3 - x3[:, :1]).astype(np.float64)
        frames = np.arange(0, len(x2), max(1, len(x2) // 300))
        errors.append(np.linalg.norm(predicted[frames] - target[frames], axis=-1).mean(-1))
        fitted = procrustes_align(predicted[frames], target[frames])
        aligned.append(np.linalg.norm(fitted - target[frames], axis=-1).mean(-1))
        second_difference = predicted[2:] - 2 * predicted[1:-1] + predicted[:-2]
        accelerations.append(np.linalg.norm(second_difference * fps**2, axis=-1).mean(-1))
    return {"mpjpe": np.concatenate(errors).mean() * 1000, "p_mpjpe": np.concatenate(aligned).mean() * 1000,
            "accel": np.concatenate(accelerations).mean()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=REPO / "weights" / "poseformerv2_mocap_27_3_3.safetensors")
    p.add_argument("--mocap-dir", type=Path, default=DEFAULT_MOCAP_DIR)
    p.add_argument("--fps", type=float, nargs="+", default=[120.0, 60.0, 30.0],
                   help="frame rates to render at: 120 divided by a whole number")
    p.add_argument("--strides", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--ensembles", nargs="*", default=["1+2", "2+4"],
                   help="strides whose poses are averaged, e.g. 1+2: every frame and every second frame")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    lifter = load_lifter(args.checkpoint, device="cpu")
    clips = [load_amc_clip(asf, amc) for asf in sorted(args.mocap_dir.glob("cmu_asfamc/*/*.asf"))
             for amc in sorted(asf.parent.glob("*.amc"))]
    if not clips:
        raise SystemExit(f"no CMU ASF/AMC clips under {args.mocap_dir}: run python -m pipeline.mocap unpack first")
    print(f"{lifter.name}, {len(clips)} CMU clips")
    print("| fps | stride | sampled rate | MPJPE mm | P-MPJPE mm | joint acceleration m/s^2 |")
    print("|---|---|---|---|---|---|")
    for fps in args.fps:
        step = int(round(RECORDED_FPS / fps))
        if step < 1 or abs(RECORDED_FPS / step - fps) > 1e-6:
            raise SystemExit(f"--fps {fps}: must be 120 divided by a whole number")
        at_rate = [dataclasses.replace(c, h36m_world=c.h36m_world[::step], coco_world=c.coco_world[::step], fps=fps)
                   for c in clips]
        data = render_clips(at_rate, as_recorded(RenderConfig()), 1)
        for stride in args.strides:
            if fps / stride < 15:
                continue
            for filtered in (True, False) if stride > 1 else (True,):
                r = scores(lifter, data.inputs_2d, data.targets_3d, fps, (stride,), filtered)
                label = f"{stride}{'' if filtered else ', without anti_alias'}"
                label += " (demo.py's)" if (stride,) == window_strides(fps) and filtered else ""
                print(f"| {fps:.0f} | {label} | {fps / stride:.0f} fps | {r['mpjpe']:.1f} | {r['p_mpjpe']:.1f} "
                      f"| {r['accel']:.1f} |", flush=True)
        for ensemble in args.ensembles:
            strides = tuple(int(s) for s in ensemble.split("+"))
            if fps / max(strides) < 15:
                continue
            r = scores(lifter, data.inputs_2d, data.targets_3d, fps, strides)
            label = f"{' and '.join(map(str, strides))}, averaged"
            label += " (demo.py's)" if strides == window_strides(fps) else ""
            rates = " and ".join(f"{fps / s:.0f}" for s in strides)
            print(f"| {fps:.0f} | {label} | {rates} fps | {r['mpjpe']:.1f} | {r['p_mpjpe']:.1f} | {r['accel']:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
