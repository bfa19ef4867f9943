"""Lifters against MediaPipe BlazePose's 3D world landmarks on the shared 4-camera recording, scored alike.

    python3 -m venv /tmp/mediapipe && /tmp/mediapipe/bin/pip install mediapipe==0.10.14
    python benchmarks/bench_blazepose.py --mediapipe-python /tmp/mediapipe/bin/python \
        [--checkpoint weights/poseformerv2_mocap_27_3_3.safetensors ...]

Issue 9 names BlazePose's world landmarks as the alternative the default lifter must clearly beat on real footage.
The mediapipe 0.10.14 wheel bundles the BlazePose Full model for its `solutions.pose` API (Heavy, and every model
of the 1.x wheels, is fetched at run time, which an offline machine cannot); it runs in its own virtual environment,
since its protobuf and OpenCV pins clash with the project's, and this script calls itself there with
`--blazepose-only`.

Both methods see the same people: BlazePose gets a square crop around each person the project's 2D stage tracks in
each view (1.3x the extent of the keypoints, 256 px), frame after frame in video mode (its own tracking and
smoothing); frames it misses are interpolated. Its 33 landmarks give 12 joints that mean the same in 3D as the
reference's (shoulders, elbows, wrists, hips, knees, ankles) and the pelvis (mid-hip). The Human3.6M joints the demo
synthesises from face and shoulder points (spine, thorax, neck, head) have no BlazePose counterpart, so here every
method is aligned (per-frame Procrustes) and scored on those 13 joints alone; the limb joints' P-MPJPE is reported,
every joint and only those three views confirm, with each lifter's difference from BlazePose and its 95 % interval
(`compare_lifters`). The lifters are lifted as demo.py lifts: virtual camera, rigid bones (and free, for the network
alone).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RECORDING = REPO.parent / "shared" / "data" / "multiview" / "pose2sim_multi"
# BlazePose landmark index of each Human3.6M joint with the same 3D meaning (the pelvis is the mid-hip).
BLAZEPOSE = {"left_shoulder": 11, "right_shoulder": 12, "left_elbow": 13, "right_elbow": 14, "left_wrist": 15,
             "right_wrist": 16, "left_hip": 23, "right_hip": 24, "left_knee": 25, "right_knee": 26, "left_ankle": 27,
             "right_ankle": 28}
CROP_PX, CROP_MARGIN = 256, 1.3


def run_blazepose(boxes_file: Path, out_file: Path) -> None:
    """(mediapipe's environment) World landmarks (T, 33, 3) for every (view, person) box sequence in `boxes_file`."""
    import cv2
    import mediapipe as mp

    data = np.load(boxes_file)
    out = {}
    for key in (k for k in data.files if k.startswith("boxes_")):
        _, view, person = key.split("_")
        boxes = data[key]  # (T, 4) x0 y0 x1 y1 pixels, NaN where the person was not detected
        capture = cv2.VideoCapture(str(data[f"video_{view}"]))
        world = np.full((len(boxes), 33, 3), np.nan, np.float32)
        with mp.solutions.pose.Pose(static_image_mode=False, model_complexity=1, smooth_landmarks=True) as pose:
            for t, box in enumerate(boxes):
                ok, frame = capture.read()
                if not ok or not np.isfinite(box).all():
                    continue
                centre, size = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]).max() * CROP_MARGIN
                scale = CROP_PX / size
                warp = np.array([[scale, 0, CROP_PX / 2 - centre[0] * scale],
                                 [0, scale, CROP_PX / 2 - centre[1] * scale]], np.float32)
                crop = cv2.warpAffine(frame, warp, (CROP_PX, CROP_PX), borderValue=(0, 0, 0))
                found = pose.process(cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)).pose_world_landmarks
                if found is not None:
                    world[t] = [(p.x, p.y, p.z) for p in found.landmark]
        out[f"world_{view}_{person}"] = world
        print(f"view {view} person {person}: BlazePose found {np.isfinite(world[:, 0, 0]).sum()} of "
              f"{np.isfinite(boxes[:, 0]).sum()} frames", flush=True)
    np.savez(out_file, **out)


def blazepose_h36m(world: np.ndarray) -> np.ndarray:
    """BlazePose world landmarks (T, 33, 3; metres, x right, y down, z away like the lifter's camera frame: with z
    negated BlazePose scores 147 instead of 109 mm) -> root-relative Human3.6M-17 with the joints BlazePose lacks
    parked at the pelvis (never aligned on nor scored here); missed frames interpolated."""
    from pipeline.skeleton import H36M

    frames = np.arange(len(world))
    seen = np.isfinite(world[:, 0, 0])
    if seen.sum() < 2:
        raise SystemExit(f"BlazePose found a person in {seen.sum()} of {len(world)} frames; nothing to score")
    world = np.stack([[np.interp(frames, frames[seen], world[seen, j, a]) for a in range(3)]
                      for j in range(world.shape[1])]).transpose(2, 0, 1)
    out = np.repeat(world[:, [23, 24]].mean(axis=1, keepdims=True), 17, axis=1)
    for name, index in BLAZEPOSE.items():
        out[:, H36M.index(name)] = world[:, index]
    return (out - out[:, :1]).astype(np.float32)


def score(world_file: Path, checkpoints: list[str]) -> None:
    import torch

    from pipeline.evaluation import multiview
    from pipeline.evaluation.scores import root_relative
    from pipeline.lifting import load_lifter
    from pipeline.motion.bones import rigid_bones
    from pipeline.motion.trajectory import focal_length_px
    from pipeline.skeleton import H36M
    from pipeline.virtual_camera import lift_aimed

    torch.set_num_threads(1)
    recording = multiview.find_recording(RECORDING)
    views, people = multiview.reconstruct(recording, multiview.MultiviewConfig())
    blazepose = np.load(world_file)
    lifters = {Path(c).name: load_lifter(c, device="cpu") for c in checkpoints}
    shared = [H36M.index(name) for name in BLAZEPOSE] + [H36M.index("pelvis")]
    for min_views in (0, 3):
        results: dict[str, list[dict]] = {}
        for p, person in enumerate(people):
            mean_pose = root_relative(person.reference[person.complete]).mean(axis=0)
            for v, row in person.tracks.items():
                frames = np.flatnonzero(person.complete & views[v].valid[row])
                camera, (width, height) = recording.cameras[v], views[v].image_size
                target = root_relative(camera.to_camera(person.reference[frames]))
                trusted = np.zeros((len(frames), 17), bool)
                trusted[:, shared] = True
                if min_views:
                    trusted &= person.h36m.num_views[frames] >= min_views
                detected = np.flatnonzero(views[v].valid[row])
                poses = {"BlazePose": blazepose_h36m(blazepose[f"world_{v}_{p}"])[frames]}
                for name, lifter in lifters.items():
                    lifted = lift_aimed(lifter, views[v].keypoints[row], width, height,
                                        focal_length_px(width, height), frames=detected)
                    poses[f"{name} (rigid, as demo.py)"] = rigid_bones(lifted, frames=detected)[frames]
                    poses[f"{name} (free)"] = lifted[frames]
                for name, pose in poses.items():
                    scores = multiview.sequence_scores(pose, target, mean_pose @ camera.R.T, views[v].fps, frames,
                                                       trusted)
                    results.setdefault(name, []).append({"view": views[v].name, "person": p, **scores})
        print(f"\nlimb P-MPJPE (mm), aligned and scored on the 13 joints BlazePose shares with the reference"
              f"{', only those 3+ views confirm' if min_views else ''}; per view cam01-cam04; per person")
        print(f"{'method':<58}{'all':>7}  {'per view':<28}{'per person':<14}{'vs BlazePose [95 %]'}")
        for name, sequences in results.items():
            overall = multiview.combine(sequences)
            per_view = [multiview.combine([s for s in sequences if s["view"] == view.name]) for view in views]
            per_person = [multiview.combine([s for s in sequences if s["person"] == p]) for p in range(len(people))]
            line = (f"{name:<58}{overall['p_mpjpe_limbs'] * 1000:>7.1f}  {_mm(per_view):<28}{_mm(per_person):<14}")
            if name != "BlazePose":
                c = multiview.compare_lifters({"sequences": results["BlazePose"]}, {"sequences": sequences},
                                              views[0].fps)
                low, high = c["interval_95"]
                line += f"{c['p_mpjpe_limbs_difference'] * 1000:+.1f} [{low * 1000:+.1f}, {high * 1000:+.1f}]"
            print(line)
        print(f"{'the reference mean pose held still':<58}{overall['constant_p_mpjpe_limbs'] * 1000:>7.1f}")


def _mm(scores: list[dict]) -> str:
    return " ".join(f"{s['p_mpjpe_limbs'] * 1000:.1f}" for s in scores)


def boxes_of_people(out_file: Path) -> None:
    """Each tracked person's box per frame in each view, from the 2D stage the evaluation runs (cached)."""
    from pipeline.evaluation import multiview

    recording = multiview.find_recording(RECORDING)
    views, people = multiview.reconstruct(recording, multiview.MultiviewConfig())
    out = {}
    for p, person in enumerate(people):
        for v, row in person.tracks.items():
            keypoints = views[v].keypoints_coco[row]
            boxes = np.concatenate([keypoints.min(axis=1), keypoints.max(axis=1)], axis=1).astype(np.float64)
            boxes[~views[v].valid[row]] = np.nan
            out[f"boxes_{v}_{p}"], out[f"video_{v}"] = boxes, str(recording.videos[v])
    np.savez(out_file, **out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mediapipe-python", type=Path, help="python of a venv with mediapipe==0.10.14")
    parser.add_argument("--checkpoint", action="append",
                        default=None, help="lifter file (repeatable; default: the shipped one)")
    parser.add_argument("--blazepose-only", nargs=2, type=Path, metavar=("BOXES", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.blazepose_only:
        run_blazepose(*args.blazepose_only)
        return 0
    if not (RECORDING / "Calib.qca.txt").is_file():
        raise SystemExit(f"the shared recording is not at {RECORDING}")
    if args.mediapipe_python is None or not args.mediapipe_python.is_file():
        raise SystemExit("give --mediapipe-python: the python of a virtual environment with mediapipe==0.10.14")
    with tempfile.TemporaryDirectory() as tmp:
        boxes, world = Path(tmp) / "boxes.npz", Path(tmp) / "world.npz"
        boxes_of_people(boxes)
        subprocess.run([str(args.mediapipe_python), __file__, "--blazepose-only", str(boxes), str(world)], check=True)
        score(world, args.checkpoint or [str(REPO / "weights" / "poseformerv2_mocap_27_3_3.safetensors")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
