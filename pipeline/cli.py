"""Command line: `python demo.py --video dance.mp4` (also installed as `poseformerv2-demo`).

Only this module and `pipeline.app` know about files and flags; the stages take arrays and return arrays.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from pipeline.app.inputs import PROJECT_ROOT, ClipRange, UserError, resolve_clips
from pipeline.app.process import configure_process, quick_exit
from pipeline.errors import SettingError

if TYPE_CHECKING:
    from pipeline.app.runner import RunConfig

# The flag that sets each setting a library error can name (pipeline.errors.SettingError).
FLAG_OF_SETTING = {
    "detector": "--detector", "keypoint_backend": "--keypoints", "hrnet_weights": "--hrnet-weights",
    "person": "--person", "all_people": "--all-people", "start": "--start", "end": "--end",
    "checkpoints": "--checkpoint", "frames": "--frames", "device": "--device", "runtime": "--detector-runtime",
    "fov_deg": "--fov", "focal_px": "--focal", "imgsz": "--imgsz", "turn": "--turn", "bones": "--bones",
    "window_stride": "--window-stride",
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only when it says something (not for None / False switches)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or isinstance(action.default, list):
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="demo.py",
        description="Turn a video of a person into a side-by-side 2D/3D pose video with PoseFormerV2. "
        "Results go to outputs/<clip>/: <clip>_pose3d.mp4, keypoints.npz, <clip>.bvh, <clip>_viewer.html, run.json.",
        formatter_class=_HelpFormatter,
    )
    add_input_output_flags(p.add_argument_group("input and output"))
    add_model_flags(p.add_argument_group("models"))
    add_motion_and_view_flags(p)
    o = p.add_argument_group("messages")
    o.add_argument("--quiet", action="store_true", help="no progress bars, only errors and the summary line")
    o.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return p


def add_input_output_flags(io: argparse._ArgumentGroup) -> None:
    io.add_argument("--video", type=Path, default=None,
                    help="a video file; a bare file name is looked up in videos/; a folder processes every clip in it; "
                    "omitted: every clip in videos/")
    io.add_argument("--sample", action="store_true",
                    help="fetch the README's sample clip (sports2d_demo.mp4, from the PyPI wheel sports2d==0.8.34) "
                    "into videos/ if it is not there, and process it")
    io.add_argument("--out", type=Path, default=PROJECT_ROOT / "outputs",
                    help="output root; each clip writes into OUT/<clip name>/")
    io.add_argument("--force", action="store_true", help="redo clips whose outputs are already complete")
    io.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                    help="process the clips in parallel on Ray, one worker per core (pip install -e .[ray]): no "
                    "ADDRESS starts Ray on this machine; 'auto', HOST:PORT or ray://HOST:PORT joins a cluster whose "
                    "nodes all see the clips and --out at the same paths. Writes OUT/batch.json")
    io.add_argument("--no-render", action="store_true",
                    help="write no mp4 (keypoints.npz, the BVH and the viewer page are still written)")
    io.add_argument("--start", default=None,
                    help="first frame to process: a frame index (120) or a time in seconds (4.5s)")
    io.add_argument("--end", default=None,
                    help="frame (exclusive) or time in seconds at which to stop; default: the end of the clip")
    io.add_argument("--no-viewer", action="store_true", help="do not write the interactive <clip>_viewer.html")
    io.add_argument("--rerun", action="store_true",
                    help="also write a Rerun recording <clip>.rrd (needs pip install -e .[rerun])")


def add_model_flags(m: argparse._ArgumentGroup) -> None:
    m.add_argument("--checkpoint", type=Path, action="append", default=None,
                   help="PoseFormerV2 lifter: a released .bin (e.g. 27_243_45.2.bin), a state dict or a .safetensors "
                   "file; a bare name is looked up in weights/. Repeat to compare checkpoints side by side. "
                   "Default: the project's shipped weights in weights/")
    m.add_argument("--frames", type=int, default=None,
                   help="lifter window length T when the checkpoint file name does not give it ({f}_{T}_{mpjpe}.bin)")
    m.add_argument("--detector", default=None,
                   help="Ultralytics model for person detection: a name (yolo11x-pose.pt, yolo11m.pt; downloaded by "
                   "Ultralytics when online) or a local path. Default: the bundled, sha256-checked yolo11n-pose.pt")
    m.add_argument("--imgsz", default="auto",
                   help="detector input size in pixels (a multiple of 32: 640, 960, 1280), or auto: chosen per clip "
                   "from the people's size in a few probe frames, 640 for large people, up to 1280 for small ones")
    m.add_argument("--turn", default="auto",
                   help="for a video stored turned without its rotation flag: the clockwise turn (0, 90, 180, 270 "
                   "degrees) that stands its people up for the detector, or auto: chosen per clip from a few probe "
                   "frames (an upright video is kept as it is). Outputs stay in the stored picture's pixels")
    m.add_argument("--no-recovery", action="store_true",
                   help="do not look again at the frames where the detector lost a followed person (default: each "
                   "is detected once more on a crop around where the person's track puts them, at 480 px)")
    m.add_argument("--no-2d-flip-test", action="store_true",
                   help="detect each frame once, not also mirrored (default for YOLO-pose keypoints: each person's "
                   "keypoints are the mean of the frame's and its mirror image's, at twice the detector's work)")
    m.add_argument("--keypoints", choices=("auto", "yolo", "hrnet"), default="auto",
                   help="2D keypoint backend; auto = HRNet when --hrnet-weights or weights/pose_hrnet_*.pth exist, "
                   "else the YOLO-pose keypoints")
    m.add_argument("--hrnet-weights", type=Path, default=None,
                   help="HRNet checkpoint (official pose_hrnet_w48_384x288.pth / pose_hrnet_w32_256x192.pth or mmpose)")
    m.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                   help="where the networks run; auto = CUDA, then MPS, then CPU")
    m.add_argument("--detector-runtime", choices=("auto", "torch", "onnx", "openvino"), default="auto",
                   help="what runs the detector and HRNet: PyTorch, or an OpenVINO / ONNX Runtime export (made "
                   "once, cached in ~/.cache/poseformerv2-demo/exports); auto = OpenVINO on an x86 CPU when "
                   "installed, else PyTorch")


def add_motion_and_view_flags(p: argparse.ArgumentParser) -> None:
    t = p.add_argument_group("who to follow")
    t.add_argument("--person", type=int, default=None,
                   help="track id to lift (ids are listed in run.json); default: the person present longest and "
                   "largest")
    t.add_argument("--all-people", action="store_true",
                   help="lift every person tracked for long enough, not only the main subject")

    mo = p.add_argument_group("motion")
    mo.add_argument("--bones", choices=("rigid", "free"), default="rigid",
                    help="rigid: one length per bone for the whole clip, the same left and right, each bone along "
                    "the lifter's direction; free: the lifter's poses as they come, bone lengths changing per frame")
    mo.add_argument("--no-trajectory", action="store_true",
                    help="keep every pelvis at the origin (the released demo's view) instead of estimating where the "
                    "person moves")
    mo.add_argument("--fov", type=float, default=None,
                    help="the camera's diagonal field of view in degrees, when known (default: 53, the diagonal in "
                    "pixels as focal length; or the video's metadata); the trajectory's depth scales with it")
    mo.add_argument("--focal", type=float, default=None, help="the camera's focal length in pixels, when known")
    mo.add_argument("--no-bvh", action="store_true", help="do not write the .bvh files")
    mo.add_argument("--no-virtual-camera", action="store_true",
                    help="lift each person as the camera sees them (the released demo's way) instead of through a "
                    "virtual camera turned to look at them, which helps people far from the picture's centre")
    mo.add_argument("--no-upright", action="store_true",
                    help="never turn the virtual camera about its axis; by default it turns to stand up a person who "
                    "lies more than 20 degrees from upright in the picture over the clip (a sideways or upside-down "
                    "camera), and frame by frame a body that turns over (a somersault)")
    mo.add_argument("--window-stride", type=int, default=None, metavar="N",
                    help="frames between a lifting window's samples (default: from the frame rate, 1 up to 67 fps, "
                    "2 up to 134, 3 up to 201, 4 for 240: a window spans the time the lifter was trained on)")
    mo.add_argument("--no-level", action="store_true",
                    help="draw and export the world view with the released demo's fixed camera tilt instead of "
                    "levelling it with the camera tilt estimated from the people")
    mo.add_argument("--separate-grounds", action="store_true",
                    help="place each person by their body size alone, instead of also by the floor everyone stands "
                    "on (with several people in a levelled world view; pipeline.motion.ground)")
    v = p.add_argument_group("rendering")
    v.add_argument("--elev", type=float, default=15.0, help="3D view elevation in degrees")
    v.add_argument("--azim", type=float, default=70.0, help="3D view azimuth in degrees")


def parse_frame_or_time(value: str | None, name: str) -> int | float | None:
    """'120' -> frame 120; '4.5s' -> 4.5 seconds (a float)."""
    if value is None:
        return None
    text = value.strip().lower()
    try:
        if text.endswith("s"):
            seconds = float(text[:-1])
            if seconds < 0:
                raise ValueError
            return seconds
        frame = int(text)
        if frame < 0:
            raise ValueError
        return frame
    except ValueError:
        raise UserError(f"--{name} {value!r} is neither a frame index (120) nor a time in seconds (4.5s)") from None


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Flags -> the run's config, one stage config at a time."""
    # The stages import PyTorch, OpenCV and Ultralytics (3-4 s): only once the flags have parsed, so that --help
    # and a mistyped flag answer at once (0.1 s).
    from pipeline.app.models import LiftingConfig
    from pipeline.app.runner import MotionConfig, RunConfig
    from pipeline.motion.ground import GroundConfig
    from pipeline.pose2d import Pose2DConfig
    from pipeline.recovery import RecoveryConfig
    from pipeline.render import RenderConfig

    return RunConfig(
        out_root=args.out.expanduser().resolve(),
        pose2d=Pose2DConfig(detector=args.detector, keypoint_backend=args.keypoints, hrnet_weights=args.hrnet_weights,
                            device=args.device, person=args.person, all_people=args.all_people, imgsz=args.imgsz,
                            turn=args.turn, runtime=args.detector_runtime, flip_test=not args.no_2d_flip_test,
                            recovery=RecoveryConfig(enabled=not args.no_recovery)),
        lifting=LiftingConfig(checkpoints=list(args.checkpoint or []), frames=args.frames, device=args.device),
        render=RenderConfig(elev=args.elev, azim=args.azim),
        clip_range=ClipRange(start=parse_frame_or_time(args.start, "start"), end=parse_frame_or_time(args.end, "end")),
        motion=MotionConfig(bones=args.bones, trajectory=not args.no_trajectory, fov_deg=args.fov, focal_px=args.focal,
                            bvh=not args.no_bvh, virtual_camera=not args.no_virtual_camera,
                            upright=not args.no_upright,
                            level=not args.no_level, window_stride=args.window_stride,
                            ground=None if args.separate_grounds else GroundConfig()),
        write_video=not args.no_render,
        viewer=not args.no_viewer,
        rerun=args.rerun,
        force=args.force,
        show_progress=not args.quiet,
    )


def error_message(exc: BaseException) -> str:
    """One line for the user: a setting named by its flag, an unexpected error with a hint to --debug."""
    if isinstance(exc, SettingError):
        message = f"{FLAG_OF_SETTING.get(exc.setting, exc.setting)}: {exc.message}"
    else:
        message = str(exc).strip()
    message = message.splitlines()[0] if message.strip() else type(exc).__name__
    if not isinstance(exc, (UserError, ValueError, FileNotFoundError, RuntimeError, OSError)):
        message = f"unexpected {type(exc).__name__}: {message} (run with --debug for the traceback)"
    return message


def run() -> NoReturn:
    """The command (`demo.py`, the `poseformerv2-demo` script): main() on the process's arguments, then the process
    ends without the interpreter's slow teardown (`pipeline.app.process.quick_exit`)."""
    quick_exit(main())


def main(argv: list[str] | None = None) -> int:
    args = None
    try:  # from the first moment: a Ctrl-C while the flags parse gets the same one line
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
        # PyTorch sets its loggers to WARNING at the end of its import; a Ctrl-C during that import left them at the
        # INFO above, and an exit hook of PyTorch's then printed its FakeTensor cache statistics under the one line
        # (1 run in 3 of the startup-interrupt test, on torch 2.14.1).
        logging.getLogger("torch").setLevel(logging.WARNING)
        configure_process()  # Ultralytics' safe loading, no auto-install, quiet; the allocator (pipeline.app.process)
        clips = resolve_clips(args.video, sample=args.sample)  # a missing video is named before the slow imports
        config = config_from_args(args)
        from pipeline.app.runner import process_clips

        return process_clips(clips, config, describe_error=error_message, ray_address=args.ray)
    except KeyboardInterrupt:
        print("interrupted: no partial output was kept", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for the user; --debug shows the traceback
        if args is None or args.debug:
            raise
        print(f"error: {error_message(exc)}", file=sys.stderr)
        return 2
