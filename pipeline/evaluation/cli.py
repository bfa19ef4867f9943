"""Command line of the real-footage validation: `python -m pipeline.evaluation {multiview,gap} ...`.

    python -m pipeline.evaluation multiview --recording ../shared/data/multiview/pose2sim_multi \\
        --checkpoint weights/poseformerv2_mocap_27_3_3.safetensors [--checkpoint other.bin ...] [--json scores.json]
        [--outputs DIR]   # also score what `demo.py --video <recording> --all-people --out DIR` wrote
    python -m pipeline.evaluation gap --recording ../shared/data/multiview/pose2sim_multi \\
        --checkpoint weights/poseformerv2_mocap_27_3_3.safetensors --mocap-clips 40
    ... [--write-calibration Calib_refined.toml] [--no-refine-extrinsics]   # the cameras' poses are refined first

The 2D stage of every view is cached (~/.cache/poseformerv2-demo/multiview/, keyed by the video's bytes and the 2D
settings), so scoring another checkpoint on the same recording takes seconds. Bad input (a missing folder, no
calibration, a wrong checkpoint) ends in one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

import numpy as np

from pipeline.app.outputs import save_json
from pipeline.app.process import configure_process
from pipeline.evaluation.calibration import write_calib_toml
from pipeline.evaluation.gap import OUTLIER_STATURE
from pipeline.evaluation.multiview import (
    MultiviewConfig,
    MultiviewReport,
    Recording,
    default_cache_dir,
    evaluate_recording,
    find_recording,
    reconstruct,
)
from pipeline.evaluation.triangulation import TriangulationConfig
from pipeline.pose2d import Pose2DConfig
from pipeline.recovery import RecoveryConfig

log = logging.getLogger(__name__)


def _recording_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recording", required=True, type=Path,
                   help="folder with one video per camera, named after the camera (cam01.mp4 ...)")
    p.add_argument("--calibration", type=Path,
                   help="Qualisys .qca.txt or pose2sim Calib.toml (default: the one calibration file in the folder)")
    p.add_argument("--json", type=Path, help="write every number shown (and more) to this JSON file")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (detector and lifter)")
    p.add_argument("--detector", help="Ultralytics pose model (default: the bundled yolo11n-pose)")
    p.add_argument("--imgsz", help="detector input size in pixels (640, 1280) or auto (default: the 2D stage's)")
    p.add_argument("--full-size-frames", action="store_true",
                   help="decode the detector's frames at full size and let Ultralytics shrink them (before 1 December "
                   "the only way; default: decoded at the letterbox size, as demo.py does)")
    p.add_argument("--no-recovery", action="store_true",
                   help="do not look again, on crops, at the frames where the detector lost a person (default: "
                   "it does, as demo.py does)")
    p.add_argument("--no-2d-flip-test", action="store_true",
                   help="detect each frame once, not also mirrored (default: each person's keypoints are the mean of "
                   "the frame's and its mirror image's, as demo.py does)")
    p.add_argument("--min-views", type=int, default=3,
                   help="people seen by fewer views are left out (default 3, capped at the number of views)")
    p.add_argument("--smooth-hz", type=float,
                   help="denoise the triangulated reference along time with this cutoff (e.g. 6); default: raw")
    p.add_argument("--keep-swaps", action="store_true",
                   help="triangulate the keypoints as detected (default: a left/right pair one view has the wrong way "
                   "round, judged by the other views, is un-swapped first, as pose2sim's handle_LR_swap)")
    p.add_argument("--refine-extrinsics", action=argparse.BooleanOptionalAction, default=True,
                   help="bundle-adjust every camera's rotation and position on the people seen by several views "
                   "before triangulating, intrinsics kept (default; --no-refine-extrinsics: the calibration as read)")
    p.add_argument("--write-calibration", type=Path, metavar="CALIB_TOML",
                   help="write the calibration used (refined unless --no-refine-extrinsics) as a pose2sim "
                   "Calib.toml, to reuse with --calibration")
    p.add_argument("--cache-dir", type=Path, default=default_cache_dir(), help="where the 2D stage is cached")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the 2D cache")
    p.add_argument("--quiet", action="store_true", help="only the tables")
    p.add_argument("--debug", action="store_true", help="full traceback on errors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluation",
                                     description="Validate lifters on real footage.")
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("multiview", help="score lifters per view against a calibrated multi-camera recording",
                       description="Triangulate the people of a calibrated multi-camera recording from the 2D "
                                   "keypoints of every view, lift every view with each checkpoint, and print "
                                   "per-view and overall scores against the triangulation.")
    _recording_arguments(m)
    m.add_argument("--checkpoint", action="append", type=Path, default=[],
                   help="lifter checkpoint; repeat to compare several")
    m.add_argument("--outputs", type=Path, metavar="DIR",
                   help="also score demo.py's own results as they are (any 2D backend, lifter or flag it ran with): "
                   "the --out folder of `demo.py --video <recording> --all-people --out DIR`")
    m.add_argument("--bones", choices=("rigid", "free"), default="rigid",
                   help="score the lifter's poses as demo.py outputs them (rigid: one length per bone per sequence) "
                   "or as the network gives them (free)")
    m.add_argument("--no-virtual-camera", action="store_true",
                   help="lift each view as the camera sees the person, as demo.py --no-virtual-camera does (default: "
                   "through a virtual camera aimed at the person, with demo.py's default focal length)")
    m.add_argument("--no-upright", action="store_true",
                   help="never turn the virtual camera about its axis, as demo.py --no-upright (default: turned to "
                   "stand up a person who lies far from upright in the picture)")
    m.add_argument("--min-joint-views", type=int, default=0, metavar="N",
                   help="score only the reference joints triangulated from N views or more, each frame aligned on "
                   "those (3: joints a third view confirms; default 0: every joint)")
    g = sub.add_parser("gap", help="how the detector's COCO keypoints differ from the triangulation and from the "
                                   "joints lifters are trained on (docs/real_footage_gap.md)")
    _recording_arguments(g)
    g.add_argument("--checkpoint", action="append", type=Path, default=[],
                   help="also report the body proportions of this lifter's output; repeatable")
    g.add_argument("--mocap-clips", type=int, default=0,
                   help="also report the proportions of N Bandai mocap clips and how far their synthetic detections "
                   "stray (needs python -m pipeline.mocap unpack)")
    return parser


def _mm(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value * 1000:.1f}"


def _signed_mm(value: float) -> str:
    return f"{round(value * 1000, 1) + 0.0:+.1f}"  # + 0.0: no "-0.0"


def _num(value: float, digits: int) -> str:
    return "-" if not math.isfinite(value) else f"{value:.{digits}f}"


def reference_table(report: MultiviewReport) -> str:
    head = (f"{'person':<8}{'views':>6}{'frames':>8}{'reproj COCO px':>16}{'reproj H36M px':>16}"
            f"{'views/joint':>13}{'bone CV':>9}{'worst L/R':>11}{'jitter m/s2':>13}{'halves limbs':>14}"
            f"  un-swapped pairs per view")
    rows = [head]
    for i, ref in enumerate(report.reference):
        halves = ref.get("split_views")
        rows.append(f"{i:<8}{len(ref['views']):>6}{ref['frames']:>8}{_num(ref['reprojection_px_coco'], 2):>16}"
                    f"{_num(ref['reprojection_px_h36m'], 2):>16}{_num(ref['views_per_joint'], 2):>13}"
                    f"{_num(ref['bone_cv'], 3):>9}{_num(ref['lr_ratio'], 2):>11}{_num(ref['jitter'], 1):>13}"
                    f"{'-' if halves is None else _mm(halves['p_mpjpe_limbs']):>14}  "
                    + " ".join(f"{name} {n}" for name, n in (ref.get("swapped_pairs_per_view") or {}).items()))
    return "\n".join(rows)


def lifter_table(scores: dict) -> str:
    head = (f"{'view':<10}{'frames':>7}{'P-MPJPE limbs':>15}{'P-MPJPE all':>13}{'MPJPE':>8}"
            f"{'const limbs':>13}{'const all':>11}{'bone CV':>9}{'worst L/R':>11}{'jitter m/s2':>13}")
    rows = [head]
    for name, s in [*scores["views"].items(), ("overall", scores["overall"])]:
        if not s.get("frames"):
            rows.append(f"{name:<10}{0:>7}  (not scored: no triangulated person detected here, or no demo.py output)")
            continue
        rows.append(f"{name:<10}{s['frames']:>7}{_mm(s['p_mpjpe_limbs']):>15}{_mm(s['p_mpjpe']):>13}"
                    f"{_mm(s['mpjpe']):>8}{_mm(s['constant_p_mpjpe_limbs']):>13}{_mm(s['constant_p_mpjpe']):>11}"
                    f"{_num(s['bone_cv'], 3):>9}{_num(s['lr_ratio'], 2):>11}{_num(s['jitter'], 1):>13}")
    return "\n".join(rows)


def refinement_table(refinement: dict | None) -> list[str]:
    """The calibration refinement's lines (none when the calibration was used as read)."""
    if refinement is None:
        return []
    rows = [f"calibration refined on {refinement['points']} joints ({refinement['observations']} detections), "
            f"{refinement['fixed_camera']} held fixed, the {' - '.join(refinement['scale_cameras'])} distance kept "
            "(reprojection against the triangulation from all views, px)",
            f"{'camera':<8}{'n':>6}{'median before':>15}{'after':>8}{'p90 before':>12}{'after':>8}{'turned deg':>12}"
            f"{'moved m':>9}"]
    for name, r in refinement["cameras"].items():
        rows.append(f"{name:<8}{r['observations']:>6}{r['median_px_before']:>15.1f}{r['median_px_after']:>8.1f}"
                    f"{r['p90_px_before']:>12.1f}{r['p90_px_after']:>8.1f}{r['rotation_deg']:>12.2f}"
                    f"{r['shift_m']:>9.3f}")
    return rows + [""]


def format_report(report: MultiviewReport) -> str:
    parts = [f"recording {report.recording}: views {' '.join(report.views)} at {report.fps:g} fps", "",
             *refinement_table(report.refinement),
             "triangulated reference (root-relative; jitter = mean joint acceleration; halves limbs = limb P-MPJPE in "
             "mm between references triangulated from disjoint halves of the views, the scale of the reference's own "
             "noise, which every lifter's score includes)", reference_table(report)]
    for checkpoint, scores in report.lifters.items():
        scored = "" if not report.min_joint_views else \
            f"; only joints triangulated from {report.min_joint_views}+ views: {scores['overall']['scored_joints']}"
        camera = ("no virtual camera" if not report.virtual_camera else "virtual camera" if report.upright
                  else "virtual camera never turned upright")
        how = ("demo.py's output, scored as it was written" if "demo_output" in scores
               else f"{report.bones} bones, {camera}")
        parts += ["", f"lifter {checkpoint}, {how} (errors in mm; P-MPJPE after per-frame Procrustes; const = the "
                      f"reference's mean pose held still{scored})", lifter_table(scores)]
    if report.comparisons:
        block = next(iter(report.comparisons.values()))["block_frames"]
        parts += ["", f"against {next(iter(report.lifters))} (limb P-MPJPE, mm, this one minus that one; 95 % "
                      f"interval from a bootstrap over {block}-frame stretches of each person, every view together)"]
        baseline = len(next(iter(report.lifters.values()))["sequences"])
        for checkpoint, c in report.comparisons.items():
            low, high, difference = (_signed_mm(x) for x in (*c["interval_95"], c["p_mpjpe_limbs_difference"]))
            common = "" if c["sequences"] == baseline else \
                f" on the {c['sequences']} of {baseline} sequences both scored"
            parts.append(f"  {checkpoint}: {difference} [{low}, {high}]{common}")
    return "\n".join(parts)


def _imgsz(text: str) -> int | str:
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 32:
        raise ValueError(f"--imgsz must be a number of pixels (e.g. 640, 1280) or auto, not {text!r}")
    return int(text)


def _config(args: argparse.Namespace) -> MultiviewConfig:
    return MultiviewConfig(
        pose2d=Pose2DConfig(detector=args.detector, device=args.device, all_people=True,
                            decode_at_input_size=not args.full_size_frames,
                            recovery=RecoveryConfig(enabled=not args.no_recovery), flip_test=not args.no_2d_flip_test,
                            **({} if args.imgsz is None else {"imgsz": _imgsz(args.imgsz)})),
        triangulation=TriangulationConfig(fix_swaps=not args.keep_swaps),
        min_person_views=args.min_views, smoothing_hz=args.smooth_hz, bones=getattr(args, "bones", "rigid"),
        min_joint_views=getattr(args, "min_joint_views", 0), refine_extrinsics=args.refine_extrinsics,
        virtual_camera=not getattr(args, "no_virtual_camera", False), upright=not getattr(args, "no_upright", False),
        cache_dir=None if args.no_cache else args.cache_dir)


def _check_checkpoints(paths: list[Path]) -> None:
    for checkpoint in paths:
        if not checkpoint.is_file():
            raise ValueError(f"checkpoint not found: {checkpoint}")


def _write_json(path: Path | None, data: dict) -> None:
    if path is None:
        return
    save_json(path, data, indent=1)
    log.info("written to %s", path)


def residual_table(residuals: dict) -> str:
    bins = list(next(iter(residuals.values()))["by_speed"])
    head = (f"{'joint':<15}{'n':>5}{'out %':>7}{'up %':>7}{'median %':>10}{'p90 %':>7}{'>5% share':>10}"
            f"{'acf 1':>7}{'acf 5':>7}{'acf 15':>7}" + "".join(f"{'med @' + b + ' m/s':>16}" for b in bins))
    rows = [head]
    for joint, r in residuals.items():
        acf = [_num(r["acf"][lag], 2) for lag in (1, 5, 15)]
        speed = "".join(f"{_num(r['by_speed'][b]['median'] * 100, 2) + ' (' + str(r['by_speed'][b]['n']) + ')':>16}"
                        for b in bins)
        rows.append(f"{joint:<15}{r['n']:>5}{r['bias_out'] * 100:>7.2f}{r['bias_up'] * 100:>7.2f}"
                    f"{r['median'] * 100:>10.2f}{r['p90'] * 100:>7.2f}{r['outliers'] * 100:>10.1f}"
                    f"{acf[0]:>7}{acf[1]:>7}{acf[2]:>7}{speed}")
    return "\n".join(rows)


def format_gap(report: dict) -> str:
    statures = ", ".join(f"{s:.2f}" for s in report["stature_m"])
    parts = [*refinement_table(report.get("calibration_refinement")),
             f"detector keypoint minus the projection of the triangulated point, in % of stature (estimated "
             f"statures: {statures} m); out = away from the body's midline, up = along the trunk",
             residual_table(report["residuals"]), "",
             "each view's keypoints against the points triangulated from the other views (px): calibration consistency",
             f"{'view':<8}{'n':>6}{'median':>9}{'median dx':>11}{'median dy':>11}"]
    for name, r in report["leave_one_view_out"].items():
        parts.append(f"{name:<8}{r['n']:>6}{r['median_px']:>9.1f}{r['median_dx_px']:>11.1f}{r['median_dy_px']:>11.1f}")
    parts += ["", "body proportions (medians over frames)"]
    keys = list(next(iter(report["proportions"].values())))
    width = max(len(name) for name in report["proportions"]) + 2
    parts.append(f"{'':<{width}}" + "".join(f"{k:>{len(k) + 2}}" for k in keys))
    for name, values in report["proportions"].items():
        parts.append(f"{name:<{width}}" + "".join(f"{values[k]:>{len(k) + 2}.3f}" for k in keys))
    if report.get("mocap_tails"):
        parts += ["", f"keypoints more than {OUTLIER_STATURE:.0%} of stature off, in % (p90 in % of stature): this "
                  "recording's detections against the triangulation, the mocap training data's against the clean "
                  "points",
                  f"{'joint':<16}{'recording':>16}" + "".join(f"{name:>24}" for name in report["mocap_tails"])]
        for joint, real in report["residuals"].items():
            cells = [f"{real['outliers'] * 100:.1f} ({real['p90'] * 100:.1f})"]
            cells += [f"{t[joint]['outliers'] * 100:.1f} ({t[joint]['p90'] * 100:.1f})"
                      for t in report["mocap_tails"].values()]
            parts.append(f"{joint:<16}{cells[0]:>16}" + "".join(f"{c:>24}" for c in cells[1:]))
    return "\n".join(parts)


def _write_calibration(path: Path | None, recording: Recording) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    refinement = recording.refinement
    error = 0.0 if refinement is None else float(
        np.mean([r["median_px_after"] for r in refinement["cameras"].values()]))
    write_calib_toml(path, recording.cameras, adjusted=refinement is not None, error=error)
    log.info("calibration (%s) written to %s", "refined" if refinement else "as read", path)


def run_multiview(args: argparse.Namespace) -> int:
    if not args.checkpoint and args.outputs is None:
        raise ValueError("nothing to score: give --checkpoint FILE (repeatable) and/or --outputs DIR")
    _check_checkpoints(args.checkpoint)
    recording = find_recording(args.recording, args.calibration)
    report = evaluate_recording(recording, args.checkpoint, _config(args), device=args.device, outputs=args.outputs)
    print(format_report(report))
    _write_json(args.json, report.to_dict())
    _write_calibration(args.write_calibration, recording)
    return 0


def run_gap(args: argparse.Namespace) -> int:
    from pipeline.evaluation.gap import gap_report
    from pipeline.lifting import load_lifter

    _check_checkpoints(args.checkpoint)
    recording = find_recording(args.recording, args.calibration)
    views, people = reconstruct(recording, _config(args))
    lifters = {str(c): load_lifter(c, device=args.device) for c in args.checkpoint}
    report = gap_report(recording.cameras, views, people, lifters, mocap_clips=args.mocap_clips)
    report["calibration_refinement"] = recording.refinement
    print(format_gap(report))
    _write_json(args.json, report)
    _write_calibration(args.write_calibration, recording)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    configure_process()  # as demo.py: Ultralytics' safe loading, quiet; the allocator (pipeline.app.process)
    try:
        return run_multiview(args) if args.command == "multiview" else run_gap(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
