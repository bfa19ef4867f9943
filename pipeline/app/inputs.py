"""What a run reads: the clips, the weights files and the part of a clip to process.

Everything a user names (a clip, a folder, a checkpoint) is resolved here to a checked path, or rejected with a
`UserError` that says what to do. Bare file names are looked up in the project's `videos/` and `weights/` folders.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import SettingError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
VIDEOS_DIR = PROJECT_ROOT / "videos"
WEIGHTS_DIR = PROJECT_ROOT / "weights"
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp")
WEIGHTS_HELP = (
    "official PoseFormerV2 checkpoints (e.g. 27_243_45.2.bin) are linked from github.com/QitaoZhao/PoseFormerV2; "
    "put them in weights/ or pass --checkpoint PATH"
)


class UserError(Exception):
    """A problem with what the user asked for; the CLI prints it as one line."""


def resolve_clips(video: Path | None, *, sample: bool = False, videos_dir: Path | None = None) -> list[Path]:
    """The clips to process: one file, every clip in a folder, or every clip in `videos_dir` (default videos/)."""
    videos_dir = videos_dir or VIDEOS_DIR
    if sample:
        from pipeline.sample_clip import fetch_sample_clip

        return [fetch_sample_clip(videos_dir)]
    if video is None:
        folder = videos_dir
    else:
        video = video.expanduser()
        if not video.exists() and not video.is_absolute() and len(video.parts) == 1 and (videos_dir / video).exists():
            video = videos_dir / video
        if not video.exists():
            raise UserError(f"video not found: {video} (give a path, or a file name in {videos_dir})")
        if video.is_file():
            return [video.resolve()]
        folder = video
    clips = sorted(p.resolve() for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not clips:
        hint = "; put clips there, or run with --sample to fetch the sample clip" if video is None else ""
        raise UserError(f"no video files in {folder} (expected one of {', '.join(VIDEO_SUFFIXES)}){hint}")
    return clips


def resolve_weight_file(path: Path, what: str) -> Path:
    """An existing weights file: the path as given, or a bare name found in weights/."""
    path = Path(path).expanduser()
    if not path.exists() and len(path.parts) == 1 and (WEIGHTS_DIR / path).exists():
        path = WEIGHTS_DIR / path
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    return path.resolve()


# The project's own lifter that the demo uses without --checkpoint (weights/README.md, weights/MODEL_CARD.md).
DEFAULT_LIFTER = "poseformerv2_mocap_27_3_3.safetensors"


def default_lifter_checkpoint() -> Path:
    """The project's shipped lifter weights, weights/DEFAULT_LIFTER."""
    shipped = WEIGHTS_DIR / DEFAULT_LIFTER
    if not shipped.is_file():
        raise UserError(f"no lifter weights: the shipped default {DEFAULT_LIFTER} is missing from {WEIGHTS_DIR}; "
                        f"{WEIGHTS_HELP}")
    return shipped


def default_hrnet_weights() -> Path | None:
    """Official HRNet weights the user put into weights/, if any (W48 preferred)."""
    for name in ("pose_hrnet_w48_384x288.pth", "pose_hrnet_w32_256x192.pth"):
        if (WEIGHTS_DIR / name).is_file():
            return WEIGHTS_DIR / name
    return None


@dataclass(frozen=True)
class ClipRange:
    """The part of each clip to process: frame numbers (int) or seconds (float); None = from the start / to the end."""

    start: int | float | None = None
    end: int | float | None = None

    def frames(self, fps: float) -> tuple[int, int | None]:
        """Frame indices [first, stop) of a clip at `fps` frames per second."""
        def to_frame(value: int | float | None) -> int | None:
            if value is None:
                return None
            return int(value) if isinstance(value, int) else int(round(value * fps))

        first, stop = to_frame(self.start) or 0, to_frame(self.end)
        if stop is not None and stop <= first:
            raise SettingError("end", f"must come after the start (frames {first} to {stop})")
        return first, stop
