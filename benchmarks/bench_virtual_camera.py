"""Accuracy of lifting with and without the virtual camera aimed at the person, by the angle off the optical axis.

    python benchmarks/bench_virtual_camera.py [--checkpoint weights/poseformerv2_mocap_27_3_3.safetensors]
        [--every 2] [--aim-jitter 2.0]

Held-out Bandai clips (the validation groups `pipeline.mocap` never trains on, every `--every`-th), each through one
random camera as the training renderings draw them (`pipeline.mocap.cameras.sample_camera`) but static and framed
anywhere in the picture (`--aim-jitter` metres off the person instead of 0.3), with the detector-like noise of
training; up to 300 frames at 15 fps. Prints P-MPJPE and MPJPE (mm) per band of the angle between the optical axis
and the ray through the person's mean 2D position, for the real camera, the virtual camera aimed once per clip (what
demo.py does), and aimed anew at every frame (smoothed over a second). Needs `python -m pipeline.mocap unpack`.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import uniform_filter1d

from pipeline.lifting import load_lifter
from pipeline.mocap.cameras import sample_camera
from pipeline.mocap.dataset import (
    BANDAI,
    DEFAULT_MOCAP_DIR,
    RenderConfig,
    bandai_clip_paths,
    bandai_group,
    is_validation_group,
    load_bvh_clip,
    perturb_landmarks,
)
from pipeline.mocap.noise import corrupt_keypoints
from pipeline.skeleton import coco_to_h36m
from pipeline.training.metrics import mpjpe, p_mpjpe
from pipeline.virtual_camera import aim_rotation, lift_aimed, warp_to_virtual

REPO = Path(__file__).resolve().parents[1]
BANDS = ((0, 5), (5, 10), (10, 15), (15, 20), (20, 30), (30, 90))


def lift_aimed_per_frame(lifter, keypoints, width, height, focal, principal, window=31) -> np.ndarray:
    """The alternative demo.py does not use: a virtual camera aimed anew at every frame (centre smoothed)."""
    centres = uniform_filter1d(keypoints.mean(axis=1), window, axis=0, mode="nearest")
    rotations = np.stack([aim_rotation(c, focal, principal) for c in centres])
    warped = np.stack([warp_to_virtual(k, r, focal, principal) for k, r in zip(keypoints, rotations, strict=True)])
    poses = lifter.lift(warped.astype(np.float32), width, height).camera
    return np.einsum("tkj,tji->tki", poses, rotations)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=REPO / "weights" / "poseformerv2_mocap_27_3_3.safetensors")
    p.add_argument("--every", type=int, default=2, help="use every N-th held-out clip")
    p.add_argument("--aim-jitter", type=float, default=2.0, help="metres between the person and where the camera aims")
    args = p.parse_args()
    torch.set_num_threads(1)
    lifter = load_lifter(args.checkpoint, device="cpu")
    config = RenderConfig()
    cameras = dataclasses.replace(config.camera, aim_jitter_m=args.aim_jitter, pan_share=0.0, dolly_share=0.0,
                                  shake_share=0.0)
    paths = [q for q in bandai_clip_paths(DEFAULT_MOCAP_DIR) if is_validation_group(bandai_group(q.stem))]
    rows = []
    for i, path in enumerate(paths[:: args.every]):
        rng = np.random.default_rng([7, i])
        clip = load_bvh_clip(path, BANDAI, bandai_group(path.stem))
        h36m, coco = clip.h36m_world[::2][:300], clip.coco_world[::2][:300]
        coco = perturb_landmarks(coco, h36m, rng, config.landmark_std_m)
        camera = sample_camera(coco, rng, cameras)
        keypoints = coco_to_h36m(corrupt_keypoints(camera.project(camera.to_camera(coco)), rng, config.noise))[0]
        keypoints = keypoints.astype(np.float32)
        truth = camera.to_camera(h36m)
        truth = truth - truth[:, :1]
        w, h, f = camera.width, camera.height, camera.focal
        centre = keypoints.reshape(-1, 2).mean(axis=0)
        ray = np.array([(centre[0] - camera.center[0]) / f, (centre[1] - camera.center[1]) / f, 1.0])
        angle = np.degrees(np.arccos(1.0 / np.linalg.norm(ray)))
        predictions = (lifter.lift(keypoints, w, h).camera,
                       lift_aimed(lifter, keypoints, w, h, f),  # demo.py puts the principal point at the centre too
                       lift_aimed_per_frame(lifter, keypoints, w, h, f, camera.center))
        rows.append([angle, *[1000 * p_mpjpe(x, truth) for x in predictions],
                     *[1000 * mpjpe(x, truth) for x in predictions]])
    rows = np.array(rows)
    print(f"{len(rows)} held-out Bandai sequences, aim jitter {args.aim_jitter} m, {args.checkpoint.name}")
    print("off-axis degrees  sequences  P-MPJPE: real camera / aimed per clip / per frame   MPJPE: the same")
    for low, high in BANDS:
        band = rows[(rows[:, 0] >= low) & (rows[:, 0] < high)]
        if len(band):
            m = band.mean(axis=0)
            print(f"{low:>5}-{high:<5}       {len(band):>9}  {m[1]:6.1f} / {m[2]:6.1f} / {m[3]:6.1f}"
                  f"              {m[4]:6.1f} / {m[5]:6.1f} / {m[6]:6.1f}")
    m = rows.mean(axis=0)
    print(f"all               {len(rows):>9}  {m[1]:6.1f} / {m[2]:6.1f} / {m[3]:6.1f}"
          f"              {m[4]:6.1f} / {m[5]:6.1f} / {m[6]:6.1f}")


if __name__ == "__main__":
    main()
