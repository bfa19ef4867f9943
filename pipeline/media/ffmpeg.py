"""The ffmpeg binary and what it says about a file: the one place the pipeline locates ffmpeg and reads headers.

Decoding (`pipeline.media.decode`) and encoding (`pipeline.media.encode`) both run the ffmpeg binary that
imageio-ffmpeg ships (imageio-ffmpeg has no ffprobe), so the properties of a file come from ffmpeg's own description
of its input (`ffmpeg -i FILE` prints it on stderr). `probe` turns that text into a `MediaInfo`: frame size after
rotation, frame rate (float and exact fraction), rotation, pixel format, codecs, audio. Frame counts in container
headers are estimates; `count_frames` counts what is really there.
"""
from __future__ import annotations

import logging
import re
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


class VideoError(ValueError):
    """A file that cannot be read as a video; the message is one line naming the file and the problem."""


def ffmpeg_exe(override: str | None = None) -> str:
    """The ffmpeg binary: `override` when given, else the one imageio-ffmpeg ships."""
    if override:
        return override
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def last_error_line(text: str) -> str:
    """The line of ffmpeg's stderr that names the problem (the last one that is not the "no output file" note)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    lines = [ln for ln in lines if "At least one output file" not in ln]
    return lines[-1] if lines else "unknown ffmpeg error"


def frame_rate_fraction(fps: float | Fraction | str) -> Fraction:
    """The exact frame rate as a fraction: 29.97002997 -> 30000/1001, 25.0 -> 25, '24000/1001' -> 24000/1001.

    Readers report NTSC rates as floats (29.97, 29.97002997...); writing those as decimals would make the output's
    timing drift from the input's by a frame every few minutes, so rates within 0.001 of N*1000/1001 are snapped.
    """
    if isinstance(fps, str):
        rate = Fraction(fps.strip())
    elif isinstance(fps, Fraction):
        rate = fps
    else:
        value = float(fps)
        if not np.isfinite(value):
            raise ValueError(f"frame rate must be a finite number, got {fps!r}")
        rate = None
        for base in (24, 30, 48, 60, 120, 240):
            if abs(value - base * 1000 / 1001) < 1e-3:
                rate = Fraction(base * 1000, 1001)
                break
        if rate is None:
            rate = Fraction(value).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"frame rate must be positive, got {fps!r}")
    return rate


@dataclass(frozen=True)
class MediaInfo:
    """Everything the pipeline needs to know about a video file, from one `ffmpeg -i`."""

    path: Path
    width: int  # of the decoded (upright, rotation applied) frames
    height: int
    fps: float
    frame_count_header: int | None  # duration x fps from the container header: an estimate, often wrong
    rotation: int  # degrees clockwise the stored frames are turned for display: 0, 90, 180 or 270
    codec: str  # of the decoded video stream
    pix_fmt: str | None
    audio_codec: str | None  # of the first audio stream; None when there is none
    duration: float | None  # seconds, from the container header
    stream: int = 0  # which video stream is decoded (cover art, an "attached pic", is skipped)
    focal_length_35mm: float | None = None  # the lens's 35 mm-equivalent focal length, where the file records it

    @property
    def has_audio(self) -> bool:
        return self.audio_codec is not None

    @property
    def frame_rate(self) -> Fraction:
        """The frame rate as an exact fraction (NTSC rates snapped to N*1000/1001)."""
        return frame_rate_fraction(self.fps)


def _header(path: Path) -> str:
    """ffmpeg's description of the input (`ffmpeg -i FILE` prints it on stderr and exits: no output file given)."""
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    return proc.stderr.decode("utf-8", errors="replace")


def _check_file(path: Path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise VideoError(f"video file not found: {path}")
    if not path.is_file():
        raise VideoError(f"not a file: {path}")
    if path.stat().st_size == 0:
        raise VideoError(f"video file is empty: {path}")
    return path


def _parse_rate(text: str) -> float:
    """'29.97' -> 29.97, '1k' -> 1000."""
    return float(text[:-1]) * 1000 if text.endswith("k") else float(text)


def _stream_block(text: str, line: str) -> str:
    """The metadata and side-data lines that follow a stream's line, up to the next stream."""
    lines = text.splitlines()
    block = []
    for ln in lines[lines.index(line) + 1:]:
        if re.match(r"\s*Stream #", ln):
            break
        block.append(ln)
    return "\n".join(block)


def _rotation(block: str, path: Path) -> int:
    matrix = re.search(r"rotation of (-?[\d.]+) degrees", block, flags=re.IGNORECASE)
    tag = re.search(r"^\s*rotate\s*:\s*(-?\d+)", block, flags=re.MULTILINE)
    rotation = 0
    if matrix:  # the display matrix angle is counter-clockwise
        rotation = int(round(-float(matrix.group(1)))) % 360
    elif tag:  # the legacy tag is clockwise
        rotation = int(tag.group(1)) % 360
    if rotation not in (0, 90, 180, 270):
        logger.warning("%s: rotation of %d degrees is not a multiple of 90; ffmpeg applies it as it can", path.name,
                       rotation)
    return rotation


def _stream_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if re.match(r"\s*Stream #\d+:\d+", ln)]


def _first_audio_codec(stream_lines: list[str]) -> str | None:
    audio = next((re.search(r": Audio: (\w+)", ln) for ln in stream_lines if ": Audio: " in ln), None)
    return audio.group(1) if audio else None


def _focal_length_35mm(text: str) -> float | None:
    """A 35 mm-equivalent focal length from the metadata (phones write e.g.
    `com.apple.quicktime.camera.focal_length.35mm_equivalent: 26`); None when absent or implausible."""
    match = re.search(r"focal[_.\s]?length[_.\s]?(?:in[_.\s]?)?35mm(?:[_.\s]?(?:equivalent|film))?\s*:\s*([\d.]+)",
                      text, flags=re.IGNORECASE)
    if match is None:
        return None
    value = float(match.group(1))
    return value if 5.0 <= value <= 2000.0 else None


def parse_ffmpeg_header(text: str, path: Path) -> MediaInfo:
    """The decoded video stream's (and the first audio stream's) properties from `ffmpeg -i` stderr."""
    stream_lines = _stream_lines(text)
    video_lines = [ln for ln in stream_lines if ": Video: " in ln]
    video_stream = next((i for i, ln in enumerate(video_lines) if "(attached pic)" not in ln), None)
    if video_stream is None:
        if "Input #" not in text:
            raise VideoError(f"not a readable video: {path} ({last_error_line(text)})")
        raise VideoError(f"no video stream in {path} (only {len(stream_lines)} other stream(s))")
    line = video_lines[video_stream]
    details = line.split(": Video: ", 1)[1]
    codec = details.split()[0].rstrip(",")
    size = re.search(r"(?<![\w/])(\d+)x(\d+)(?=[\s,\[])", details)
    if size is None:
        raise VideoError(f"cannot read the frame size of {path} from ffmpeg's description: {line.strip()}")
    width, height = int(size.group(1)), int(size.group(2))
    pix_fmt = re.search(r", (yuv\w+|yuvj\w+|rgb\w+|bgr\w+|gray\w*|nv\w+|gbr\w+)[(,\s]", details)
    rate = re.search(r"([\d.]+k?) fps", details) or re.search(r"([\d.]+k?) tbr", details)
    fps = _parse_rate(rate.group(1)) if rate else 0.0
    if not fps > 0:
        logger.warning("%s: no frame rate in the header, assuming 30 fps", path.name)
        fps = 30.0
    rotation = _rotation(_stream_block(text, line), path)
    if rotation in (90, 270):
        width, height = height, width
    duration = None
    dur = re.search(r"Duration: (\d+):(\d+):([\d.]+)", text)
    if dur:
        duration = int(dur.group(1)) * 3600 + int(dur.group(2)) * 60 + float(dur.group(3))
    return MediaInfo(path=path, width=width, height=height, fps=fps,
                     frame_count_header=int(round(duration * fps)) if duration is not None else None,
                     rotation=rotation, codec=codec, pix_fmt=pix_fmt.group(1) if pix_fmt else None,
                     audio_codec=_first_audio_codec(stream_lines), duration=duration, stream=video_stream,
                     focal_length_35mm=_focal_length_35mm(text))


def probe(path: str | Path) -> MediaInfo:
    """Frame size (after rotation), frame rate, header frame count, rotation, pixel format, codecs and audio."""
    path = _check_file(Path(path))
    return parse_ffmpeg_header(_header(path), path)


def probe_audio_codec(path: str | Path) -> str | None:
    """The codec of a media file's first audio stream (the file may have no video, e.g. an .m4a); None if none."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"media file not found: {path}")
    text = _header(path)
    if "Input #" not in text:
        raise VideoError(f"not a readable media file: {path} ({last_error_line(text)})")
    return _first_audio_codec(_stream_lines(text))


def count_frames(path: str | Path, decode: bool = True) -> int:
    """The number of frames in the video stream that `pipeline.media.decode.iter_frames` reads.

    decode=True decodes every frame (exact: what `iter_frames` will yield; the 230-frame sample takes about 1 s);
    decode=False counts packets without decoding (near-instant: what a finished encode is checked with, and good for a
    progress bar; a damaged stream may decode fewer).
    """
    info = probe(path)
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(info.path), "-map", f"0:v:{info.stream}", "-an", "-sn",
           "-dn"]
    cmd += (["-fps_mode", "passthrough"] if decode else ["-c", "copy"]) + ["-f", "null", "-"]
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    text = proc.stderr.decode("utf-8", errors="replace")
    counts = re.findall(r"frame=\s*(\d+)", text)
    if not counts or int(counts[-1]) == 0:
        raise VideoError(f"no decodable frame in {info.path} ({last_error_line(text)})")
    return int(counts[-1])
