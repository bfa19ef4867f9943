"""Detector runtimes side by side: PyTorch, ONNX Runtime and OpenVINO on the same frames of the sample clip.

    python benchmarks/bench_runtimes.py                        # 2D stage: frames/s and keypoint deviation
    python benchmarks/bench_runtimes.py --end-to-end           # + whole demo.py runs, torch vs the default
    python benchmarks/bench_runtimes.py --skip-2d --end-to-end flip   # demo.py without the 2D flip test vs with it
    python benchmarks/bench_runtimes.py --hrnet w32_256x192    # + HRNet crops/s, PyTorch vs ONNX Runtime

2D stage: the decoded frames are held in memory and fed to `PersonDetector` (Ultralytics' letterboxing, the network,
NMS, boxes and keypoints back in frame pixels) in batches, as the demo does; decoding and tracking are the same for
every runtime and left out. The machine is shared and noisy, so the runtimes take turns: each repeat runs every
runtime once, in a rotated order, and the table gives the median and best of the repeats, and the median CPU time
per frame (this process's, all threads: steadier than wall time on a busy machine, but it counts threads spinning
while they wait). Keypoint deviation: every
PyTorch detection with confidence >= 0.5 is matched to the runtime's detection with the largest box overlap, and the
17 keypoints' distances are pooled (px); "unmatched" counts PyTorch detections without a counterpart (IoU < 0.5).

End to end: fresh `demo.py` processes, one after the other (torch, default, torch, default, ...), each into its own
output folder (so nothing is cached), their run.json per-stage timings, and how far the default's 2D keypoints (the
followed person's, keypoints.npz) are from the torch run's.

HRNet: our PyTorch HRNet (seeded random weights: speed and agreement do not depend on the values) against its
`torch.onnx.export` run by ONNX Runtime and by OpenVINO, on crops of the size the network takes, all with the same
number of threads (--threads): crops/s, CPU time per crop and the largest heatmap difference.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# The environment the demo.py runs get: this process's as it started. Importing Ultralytics (the in-process 2D
# comparison) sets OMP_NUM_THREADS=1 when it is unset, which a child would inherit: PyTorch on one thread.
DEMO_ENVIRONMENT = dict(os.environ)
SAMPLE_CANDIDATES = (REPO.parent / "shared" / "data" / "videos" / "sports2d_demo.mp4",
                     REPO / "videos" / "sports2d_demo.mp4")


def keypoint_deviation(reference: list, other: list, min_conf: float = 0.5) -> tuple[np.ndarray, int]:
    """Distances (px) between matched detections' keypoints, and the number of unmatched reference detections."""
    from pipeline.detection import box_iou

    distances, unmatched = [], 0
    for ref, oth in zip(reference, other, strict=True):
        for i in np.flatnonzero(ref.confidences >= min_conf):
            iou = box_iou(ref.boxes[i], oth.boxes)[0] if len(oth) else np.zeros(0)
            if len(iou) == 0 or iou.max() < 0.5:
                unmatched += 1
                continue
            j = int(np.argmax(iou))
            distances.append(np.linalg.norm(ref.keypoints[i] - oth.keypoints[j], axis=-1))
    return (np.concatenate(distances) if distances else np.zeros(0)), unmatched


def detect_all(detector, frames: list[np.ndarray], batch: int) -> list:
    out = []
    for start in range(0, len(frames), batch):
        out += detector(frames[start:start + batch])
    return out


def bench_2d(clip: Path, runtimes: list[str], num_frames: int, batch: int, repeats: int) -> dict[str, dict]:
    from pipeline.detection import DetectorConfig, PersonDetector
    from pipeline.media.decode import iter_frames

    frames = list(itertools.islice(iter_frames(clip), num_frames))
    detectors = {}
    for runtime in runtimes:
        t0 = time.perf_counter()
        detectors[runtime] = PersonDetector(DetectorConfig(runtime=runtime))  # exports on first use (cached)
        print(f"{runtime}: loaded in {time.perf_counter() - t0:.1f} s", flush=True)
    results = {runtime: detect_all(d, frames[:batch], batch) for runtime, d in detectors.items()}  # warm-up
    seconds: dict[str, list[float]] = {runtime: [] for runtime in runtimes}
    cpu: dict[str, list[float]] = {runtime: [] for runtime in runtimes}
    for rep in range(repeats):
        order = runtimes[rep % len(runtimes):] + runtimes[:rep % len(runtimes)]
        for runtime in order:
            t0, c0 = time.perf_counter(), time.process_time()
            results[runtime] = detect_all(detectors[runtime], frames, batch)
            seconds[runtime].append(time.perf_counter() - t0)
            cpu[runtime].append(time.process_time() - c0)
        print(f"repeat {rep + 1}/{repeats}: " + ", ".join(f"{r} {len(frames) / seconds[r][-1]:.1f} fps"
                                                          for r in runtimes), flush=True)
    table = {}
    for runtime in runtimes:
        dist, unmatched = keypoint_deviation(results[runtimes[0]], results[runtime])
        table[runtime] = {"fps_median": len(frames) / statistics.median(seconds[runtime]),
                          "fps_best": len(frames) / min(seconds[runtime]),
                          "cpu_ms": 1000 * statistics.median(cpu[runtime]) / len(frames),
                          "precision": detectors[runtime].precision,
                          "median_px": float(np.median(dist)) if len(dist) else float("nan"),
                          "max_px": float(dist.max()) if len(dist) else float("nan"),
                          "keypoints": len(dist), "unmatched": unmatched}
    return table


def print_2d(table: dict[str, dict], reference: str, num_frames: int) -> None:
    print(f"\n2D stage (detection), {num_frames} frames, vs {reference}")
    print(f"{'runtime':<10} {'precision':>9} {'fps median':>11} {'fps best':>9} {'x ' + reference:>8} "
          f"{'CPU ms/frame':>13} {'median px':>10} {'max px':>8} {'keypoints':>10} {'unmatched':>10}")
    base = table[reference]["fps_median"]
    for runtime, r in table.items():
        print(f"{runtime:<10} {r['precision']:>9} {r['fps_median']:>11.1f} {r['fps_best']:>9.1f} "
              f"{r['fps_median'] / base:>8.2f} {r['cpu_ms']:>13.0f} {r['median_px']:>10.2g} {r['max_px']:>8.2g} "
              f"{r['keypoints']:>10} {r['unmatched']:>10}")


def run_demo(clip: Path, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, str(REPO / "demo.py"), "--video", str(clip), "--out", str(out), "--force", "--quiet",
           *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=DEMO_ENVIRONMENT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"demo failed ({' '.join(extra) or 'default'}): {proc.stderr.strip().splitlines()[-2:]}")
    run = json.loads((out / clip.stem / "run.json").read_text())
    with np.load(out / clip.stem / "keypoints.npz") as arrays:
        keypoints = {name: arrays[name] for name in ("keypoints_2d_coco", "scores_2d_coco")}
    return {"wall_s": wall, "frames": run["video"]["frames"], "timings": run["timings"],
            "runtime": run["models"]["pose2d"].get("detector_runtime", "?"), **keypoints}


def output_deviation(a: dict, b: dict, min_score: float = 0.5) -> np.ndarray:
    """Distances (px) between two runs' followed-person COCO keypoints (keypoints.npz), where both scored them."""
    both = (a["scores_2d_coco"] >= min_score) & (b["scores_2d_coco"] >= min_score)
    return np.linalg.norm(a["keypoints_2d_coco"] - b["keypoints_2d_coco"], axis=-1)[both]


# End-to-end comparisons: the demo.py flags of the first run and of the second (the default).
END_TO_END = {
    "runtime": {"torch": ["--detector-runtime", "torch"], "default": []},
    # the 2D stage's flip test (each frame also detected mirrored), off against the default (on)
    "flip": {"no flip": ["--no-2d-flip-test"], "default": []},
}


def bench_end_to_end(clip: Path, repeats: int, variants: dict[str, list[str]]) -> None:
    print(f"\nend to end: demo.py on {clip.name}, fresh process and output folder each")
    stages = ("pose2d", "lift", "render_encode")
    print(f"{'run':<14} {'runtime':<9} {'wall s':>7} {'clip s':>7} {'clip fps':>9} "
          + " ".join(f"{s + ' fps':>17}" for s in stages))
    first, second = variants
    walls: dict[str, list[float]] = {name: [] for name in variants}
    last: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep, name in itertools.product(range(repeats), variants):
            r = run_demo(clip, Path(tmp) / f"{name.replace(' ', '_')}{rep}", variants[name])
            t = r["timings"]
            walls[name].append(r["wall_s"])
            last[name] = r
            fps = " ".join(f"{t.get(s, {}).get('frames_per_second') or float('nan'):>17.1f}" for s in stages)
            print(f"{name + ' #' + str(rep + 1):<14} {r['runtime']:<9} {r['wall_s']:>7.1f} {t['total_seconds']:>7.1f} "
                  f"{r['frames'] / t['total_seconds']:>9.1f} {fps}", flush=True)
    first_s, second_s = statistics.median(walls[first]), statistics.median(walls[second])
    print(f"median wall time: {first} {first_s:.1f} s, {second} {second_s:.1f} s: {first_s / second_s:.2f}x")
    distances = output_deviation(last[first], last[second])
    print(f"the followed person's 2D keypoints in keypoints.npz, {second} against {first} (both scored >= 0.5): "
          f"median {np.median(distances):.2f} px, 90th percentile {np.percentile(distances, 90):.2f}, "
          f"{len(distances)} keypoints")


def bench_hrnet(preset: str, crops: int, batch: int, repeats: int, threads: int) -> None:
    import onnxruntime as ort
    import openvino as ov
    import torch

    from pipeline.hrnet import PRESETS, PoseHRNet

    config = PRESETS[preset]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = PoseHRNet(config).eval()
    h, w = config.input_size
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((crops, 3, h, w)).astype(np.float32))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"hrnet_{preset}.onnx"
        torch.onnx.export(model, x[:1], str(path), input_names=["crops"], output_names=["heatmaps"],
                          opset_version=17, dynamic_axes={"crops": {0: "n"}, "heatmaps": {0: "n"}}, dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                              "PERFORMANCE_HINT": "LATENCY"})

    def run_torch() -> np.ndarray:
        with torch.inference_mode():
            return torch.cat([model(c) for c in torch.split(x, batch)]).numpy()

    def run_onnxruntime() -> np.ndarray:
        return np.concatenate([session.run(None, {"crops": c.numpy()})[0] for c in torch.split(x, batch)])

    def run_openvino() -> np.ndarray:
        return np.concatenate([next(iter(compiled(c.numpy()).values())) for c in torch.split(x, batch)])

    runs = {"torch": run_torch, "onnxruntime": run_onnxruntime, "openvino": run_openvino}
    out = {name: fn() for name, fn in runs.items()}  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            out[name] = fn()
            seconds[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    print(f"\nHRNet {preset}, {crops} crops {h}x{w}, batch {batch} (no flip test), {threads} thread(s) each; "
          f"largest heatmap value {float(np.abs(out['torch']).max()):.2f}")
    for name in runs:
        print(f"{name:<12} {crops / statistics.median(seconds[name]):>7.2f} crops/s median "
              f"({crops / min(seconds[name]):.2f} best), CPU {1000 * statistics.median(cpu[name]) / crops:.0f} "
              f"ms/crop, max |heatmap - torch's| {float(np.abs(out[name] - out['torch']).max()):.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", type=Path, default=None, help="default: the sample clip")
    parser.add_argument("--runtimes", default="torch,onnx,openvino", help="comma-separated; the first is the reference")
    parser.add_argument("--frames", type=int, default=64, help="frames from the start of the clip")
    parser.add_argument("--batch", type=int, default=8, help="frames per detector call (the demo's default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--end-to-end", nargs="?", const="runtime", choices=sorted(END_TO_END), default=None,
                        help="also whole demo.py runs: the detector in PyTorch against the default (runtime, the "
                        "default), or the 2D stage's flip test off against on (flip)")
    parser.add_argument("--e2e-repeats", type=int, default=2)
    parser.add_argument("--skip-2d", action="store_true", help="leave out the 2D-stage comparison")
    parser.add_argument("--hrnet", default=None, help="also HRNet in ONNX Runtime: a preset such as w32_256x192")
    parser.add_argument("--hrnet-crops", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="threads of each HRNet runtime")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from pipeline.app.process import configure_process

    configure_process()  # the in-process runs get demo.py's process settings (allocator, Ultralytics)
    clip = args.clip or next((p for p in SAMPLE_CANDIDATES if p.is_file()), None)
    if clip is None:
        raise SystemExit("no sample clip: run `python demo.py --sample` first or pass --clip")
    if not args.skip_2d:
        runtimes = args.runtimes.split(",")
        print_2d(bench_2d(clip, runtimes, args.frames, args.batch, args.repeats), runtimes[0], args.frames)
    if args.end_to_end:
        bench_end_to_end(clip, args.e2e_repeats, END_TO_END[args.end_to_end])
    if args.hrnet:
        bench_hrnet(args.hrnet, args.hrnet_crops, args.batch, args.repeats, args.threads)


if __name__ == "__main__":
    main()
