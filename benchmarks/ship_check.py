"""Everything a shipping rule for the default lifter looks at, for candidates side by side with the shipped lifter.

    python benchmarks/ship_check.py --candidate cand.safetensors [--candidate another.safetensors] \
        [--baseline weights/poseformerv2_mocap_27_3_3.safetensors] [--frames 20000] \
        [--set bandai_v1=~/.cache/poseformerv2-demo/data/legacy/bandai_val_v1.npz --set cmu_v1=.../cmu_v1.npz] \
        [--demo] [--json scores.json]

Why: a candidate is shipped only under a rule written before it is scored (`weights/MODEL_CARD.md`), and every
score the rule names must come from one side-by-side run. A candidate once passed a rule on P-MPJPE and then failed
two of the project's real-recording tests, because P-MPJPE aligns away the pose's orientation in the camera, which
the world view's levelling depends on. So this reports, for the baseline and each candidate:
- real footage (the shared 4-camera recording, `pipeline.evaluation.multiview`, as `demo.py` lifts): limb P-MPJPE on
  every joint and on the joints three views confirm, overall, per view and per person, with the bootstrap interval of
  the difference from the baseline; unaligned MPJPE; jitter;
- levelling: each camera's levelled vertical against the calibrated one (the bounds of
  `tests/test_multiview.py`: every camera under 15 degrees, the mean under 0.7x the fixed rotation's, the rolled
  cam04 10 degrees better than fixed);
- with `--demo`: `demo.py --all-people` on cam01 with the lifter, and the median height of each person's feet above
  the levelled ground, by track id (the test's bound: 0.5 m), and how far it gets the two dancers' distances from the
  camera relative to each other (`pipeline.evaluation.multiview.placement_spread`, the test's bound: 0.08), as
  `demo.py` gives them (the people sharing the floor) and, showing the lifter's own body sizes, with
  `--separate-grounds` (candidate J passed every score and failed that test, 0.0804);
- synthetic: `python -m pipeline.mocap evaluate` (flip test, float16) on the held-out Bandai and CMU renderings and
  on any `--set`.
It prints the numbers; the rule decides. With `--frames 2000 --demo` and two extra sets it took 3 minutes for two
lifters on this project's 2-core machine (both cores also training); three lifters at `--frames 20000` with `--demo`
took 14 minutes with the training paused, about 4 of them per lifter on the synthetic sets.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RECORDING = REPO.parent / "shared" / "data" / "multiview" / "pose2sim_multi"
SHIPPED = REPO / "weights" / "poseformerv2_mocap_27_3_3.safetensors"


def triangulate() -> tuple:
    """The recording and its people, triangulated once (calibration refined as the command does) for every part."""
    from pipeline.evaluation.multiview import MultiviewConfig, find_recording, reconstruct

    config = MultiviewConfig()
    recording = find_recording(RECORDING)
    views, people = reconstruct(recording, config)
    return config, recording, views, people


def real_footage(lifters: list[Path], scene: tuple) -> dict:
    """Every lifter scored against the triangulated recording (`triangulate`)."""
    from pipeline.evaluation.multiview import compare_lifters, evaluate_lifter, levelling_errors
    from pipeline.lifting import load_lifter

    config, recording, views, people = scene
    loaded = {str(path): load_lifter(path) for path in lifters}
    baseline = str(lifters[0])
    out: dict = {}
    for min_joint_views in (0, 3):
        scores = {name: evaluate_lifter(lifter, recording, views, people, config.bones, min_joint_views,
                                        config.virtual_camera, config.upright) for name, lifter in loaded.items()}
        out[f"min_joint_views_{min_joint_views}"] = {
            name: {"overall": s["overall"], "views": s["views"], "people": s["people"],
                   "comparison": None if name == baseline else compare_lifters(scores[baseline], s, views[0].fps,
                                                                               config.comparison_block_s)}
            for name, s in scores.items()}
    out["levelling"] = {name: levelling_errors(lifter, recording, views, people) for name, lifter in loaded.items()}
    return out


def demo_feet(lifter: Path, scene: tuple) -> dict:
    """demo.py on cam01 with this lifter: how far its levelled world view is from the calibrated vertical (degrees),
    each person's median feet height above its ground (m), by track id, and the spread of the people's distances
    relative to the triangulation's (`placement_spread`): as demo.py gives them (the people sharing the floor,
    `pipeline.motion.ground`) and placed by body size alone (`--separate-grounds`), which shows the lifter's own body
    sizes."""
    from pipeline.evaluation.multiview import feet_heights, placement_spread, vertical_error_deg
    from pipeline.geometry import quaternion_to_matrix

    _, recording, views, people = scene
    video = recording.videos[0]
    result: dict = {}
    with tempfile.TemporaryDirectory() as out:
        runs = (("median_feet_m_by_track", "placement_spread", []),
                ("separate_grounds_feet_m_by_track", "separate_grounds_placement_spread", ["--separate-grounds"]))
        for key, spread_key, flags in runs:
            subprocess.run([sys.executable, str(REPO / "demo.py"), "--video", str(video), "--all-people",
                            "--no-render", "--checkpoint", str(lifter), "--device", "cpu", "--detector-runtime",
                            "torch", "--quiet", "--out", out, *flags], check=True, cwd=REPO)
            folder = Path(out) / video.stem
            world = json.loads((folder / "run.json").read_text())["world"]
            rotation = np.array(world["rotation"])
            feet, outputs = {}, []
            for file in folder.glob("keypoints*.npz"):
                with np.load(file) as data:
                    outputs.append({name: data[name] for name in data.files})
                feet[int(outputs[-1]["track_id"])] = round(float(np.median(feet_heights(outputs[-1]))), 3)
            result[key] = dict(sorted(feet.items()))
            result[spread_key] = round(placement_spread(outputs, recording, views, people), 4)
    up = quaternion_to_matrix(rotation).T @ np.array([0.0, 0.0, 1.0])
    return {"levelled": world["levelled"], "cam01_degrees": vertical_error_deg(up, recording.cameras[0]), **result}


def synthetic(lifter: Path, frames: int, sets: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "scores.json"
        extra = [arg for name_file in sets for arg in ("--set", name_file)]
        subprocess.run([sys.executable, "-m", "pipeline.mocap", "evaluate", "--checkpoint", str(lifter), "--half",
                        "--threads", "1", "--max-frames", str(frames), *extra, "--json", str(path)],
                       check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        scores = json.loads(path.read_text())
    return {name: {"mpjpe_mm": s["mpjpe_mm"], "p_mpjpe_mm": s["p_mpjpe_mm"]} for name, s in scores.items()
            if isinstance(s, dict) and "p_mpjpe_mm" in s}


def mm(value: float) -> str:
    return f"{value * 1000:.1f}"


def print_report(report: dict, lifters: list[Path]) -> None:
    names = [str(path) for path in lifters]
    short = {name: Path(name).name for name in names}
    for key, title in (("min_joint_views_0", "every joint"), ("min_joint_views_3", "joints 3 views confirm")):
        print(f"\nreal footage, limb P-MPJPE (mm), {title}; MPJPE unaligned; jitter m/s^2")
        for name in names:
            s = report["real"][key][name]
            views = " / ".join(mm(v.get("p_mpjpe_limbs", np.nan)) for v in s["views"].values())
            people = " / ".join(mm(p.get("p_mpjpe_limbs", np.nan)) for p in s["people"])
            line = (f"  {short[name]:40s} {mm(s['overall']['p_mpjpe_limbs'])}  views {views}  people {people}  "
                    f"MPJPE {mm(s['overall']['mpjpe'])}  jitter {s['overall']['jitter']:.1f}")
            if s["comparison"]:
                c = s["comparison"]
                low, high = c["interval_95"]
                line += f"  minus baseline {mm(c['p_mpjpe_limbs_difference'])} [{mm(low)}, {mm(high)}]"
            print(line)
    print("\nlevelling, degrees from each camera's calibrated vertical (fixed rotation -> levelled)")
    for name in names:
        errors = report["real"]["levelling"][name]
        cells = "  ".join(f"{view} {e['fixed']:.1f} -> {e['levelled']:.1f}" + ("" if e["was_levelled"] else " (kept)")
                          for view, e in errors.items())
        print(f"  {short[name]:40s} {cells}")
    if "demo" in report:
        print("\ndemo.py on cam01: levelled vertical (degrees), median feet height of each person (m, by track id), "
              "placement spread (|log| of the dancers' relative distance error)")
        for name in names:
            d = report["demo"][name]
            print(f"  {short[name]:40s} {d['cam01_degrees']:.1f}  feet by track {d['median_feet_m_by_track']}  "
                  f"placement spread {d['placement_spread']:.4f}  (by body size alone "
                  f"{d['separate_grounds_feet_m_by_track']}, spread {d['separate_grounds_placement_spread']:.4f})")
    print("\nsynthetic (flip test, float16), MPJPE / P-MPJPE mm")
    for name in names:
        cells = "  ".join(f"{s}: {v['mpjpe_mm']} / {v['p_mpjpe_mm']}" for s, v in report["synthetic"][name].items())
        print(f"  {short[name]:40s} {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, default=SHIPPED)
    parser.add_argument("--candidate", type=Path, action="append", required=True)
    parser.add_argument("--frames", type=int, default=20000, help="frames per synthetic set")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=FILE.npz",
                        help="another cached synthetic set, as `pipeline.mocap evaluate --set`")
    parser.add_argument("--demo", action="store_true", help="also run demo.py on cam01 with each lifter")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    lifters = [args.baseline, *args.candidate]
    if len({p.resolve() for p in lifters}) < len(lifters):
        raise SystemExit("error: the baseline and the candidates must be different files")
    bad_sets = [s for s in args.set if "=" not in s or not Path(s.partition("=")[2]).expanduser().is_file()]
    missing = [str(p) for p in lifters if not p.is_file()] + ([str(RECORDING)] if not RECORDING.is_dir() else [])
    if missing or bad_sets:
        raise SystemExit(f"error: not found: {', '.join(missing + [f'--set {s}' for s in bad_sets])}")

    import torch

    from pipeline.app.outputs import save_json

    torch.set_num_threads(1)
    report: dict = {"lifters": [str(p) for p in lifters]}

    def save() -> None:  # after every part: a late failure keeps what was measured
        if args.json:
            save_json(args.json, report, indent=1)

    scene = triangulate()
    report["real"] = real_footage(lifters, scene)
    save()
    if args.demo:
        report["demo"] = {str(p): demo_feet(p, scene) for p in lifters}
        save()
    report["synthetic"] = {str(p): synthetic(p, args.frames, args.set) for p in lifters}
    save()
    print_report(report, lifters)


if __name__ == "__main__":
    main()
