"""Video decoding that streams frames through the ffmpeg binary (`pipeline.media.ffmpeg`).

Why the ffmpeg binary and not cv2.VideoCapture: both decode the 1768x994 VP9 sample at 230-290 frames/s on one core
(far faster than detection), but the pinned ffmpeg binary behaves the same whatever OpenCV build is installed, reads
every codec ffmpeg knows, and rotates phone videos upright by default (display matrix / legacy `rotate` tag).
Frames come out one at a time through a pipe, so memory stays at one frame whatever the video length.
Frame counts in container headers are not trusted: `iter_frames` yields what actually decodes, every decoded frame
exactly once (`-fps_mode passthrough`: no duplicated or dropped frames for variable-frame-rate phone clips).

A few frames out of a whole clip (the detector input size probe's six, `pipeline.imgsz`) are reached by seeking
(`frames_at`) instead of decoding the clip once more: each seek decodes from the keyframe before the frame only,
and keyframes alone are read in one pass that hands the decoder keyframes only.
Seeking goes by time and frame numbers count decoded frames, so the frames' times come from the packets (no decoding,
`frame_times`), each seek checks the time of the frame it got, and a file where that cannot be trusted raises
`InexactSeek` (the caller reads the frames in order instead).
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from pipeline.media.ffmpeg import MediaInfo, VideoError, ffmpeg_exe, last_error_line, probe
from pipeline.media.interrupts import Handoff, interrupts_deferred

logger = logging.getLogger(__name__)


# How frames are scaled when a caller asks for another size (`size`): an area average, what a smaller picture of
# the frame should be. Decoding the 230-frame 1768x994 sample and scaling it to 1280x720 in ffmpeg took 1.8 CPU s
# (fast_bilinear 1.6, bilinear 2.3) against 1.6 for the frames at full size, but it takes the scaling off the
# consumer: `cv2.resize` of every full-size frame cost the renderer 6 ms a frame with the encoder running beside it.
SCALE_FLAGS = "area"


def frame_size(info: MediaInfo, size: tuple[int, int] | None = None) -> tuple[int, int]:
    """(width, height) of the frames the decoders give: `size`, or the video's upright size when None."""
    if size is None:
        return info.width, info.height
    width, height = int(size[0]), int(size[1])
    if width < 1 or height < 1:
        raise ValueError(f"frame size must be positive, not {size}")
    return width, height


def decode_command(info: MediaInfo, filters: Sequence[str] = (), before_input: Sequence[str] = (),
                   loglevel: str = "error", max_frames: int | None = None,
                   size: tuple[int, int] | None = None) -> list[str]:
    """The ffmpeg command that writes the video stream's frames, upright, as raw BGR24 to stdout; `filters` run after
    the automatic rotation, `before_input` are input options (e.g. `-ss`), `size` (width, height) scales every frame
    last (None: the video's own size). Every decoder of this module uses it, so that they all give the same pixels."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", loglevel, *before_input,
           "-i", str(info.path), "-map", f"0:v:{info.stream}", "-an", "-sn", "-dn"]
    if size is not None:
        width, height = frame_size(info, size)
        filters = [*filters, f"scale={width}:{height}:flags={SCALE_FLAGS}"]
    if filters:
        cmd += ["-vf", ",".join(filters)]
    if max_frames is not None:
        cmd += ["-frames:v", str(max_frames)]
    return cmd + ["-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "bgr24", "-"]


def iter_frames(path: str | Path, start: int = 0, end: int | None = None,
                info: MediaInfo | None = None, size: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    """Yield the frames [start, end) of a video, upright, as BGR uint8 arrays (H, W, 3), one at a time; scaled to
    `size` (width, height) by ffmpeg when given (`SCALE_FLAGS`), for a consumer that would shrink them anyway.

    Raises VideoError when not a single frame decodes in the range. A range that runs past the last frame simply
    stops at the last frame; callers count what they get.
    """
    if start < 0 or (end is not None and end <= start):
        raise ValueError(f"bad frame range [{start}, {end}): need 0 <= start < end")
    info = info or probe(path)
    width, height = frame_size(info, size)
    frame_bytes = width * height * 3
    # `trim` selects by decoded frame index (exact even for variable frame rate, unlike seeking by time); it runs
    # after ffmpeg's automatic rotation filter.
    filters = []
    if start > 0 or end is not None:
        filters.append(f"trim=start_frame={start}" + (f":end_frame={end}" if end is not None else ""))
    cmd = decode_command(info, filters, size=size)
    count = 0
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a chatty ffmpeg can never block on stderr
        proc = None
        try:
            with interrupts_deferred():  # a Ctrl-C inside Popen would lose the running ffmpeg
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                        bufsize=frame_bytes)
            assert proc.stdout is not None
            while True:
                buf = proc.stdout.read(frame_bytes)
                if len(buf) < frame_bytes:
                    break
                count += 1
                yield np.frombuffer(buf, dtype=np.uint8).reshape(height, width, 3)
                if end is not None and count >= end - start:
                    break
        finally:
            if proc is not None:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                proc.stdout.close()
        err.seek(0)
        messages = err.read().decode("utf-8", errors="replace")
    if count == 0:
        if start > 0:
            raise VideoError(f"no frame decodes from frame {start} on in {info.path}: the video is shorter than that "
                             f"(or damaged); choose an earlier start")
        raise VideoError(f"no decodable frame in {info.path} ({last_error_line(messages)})")
    if messages.strip():
        logger.warning("%s: ffmpeg reported decoding errors after %d frames: %s", info.path.name, count,
                       last_error_line(messages))


class InexactSeek(Exception):
    """Seeking in this video cannot be trusted to give the frames that decoding in order gives (the message says
    why): read the frames in order instead."""


_NOPTS = -(2**63)  # AV_NOPTS_VALUE, how framecrc writes a missing timestamp
_CORRUPT, _DISCARD = 0x2, 0x4  # AV_PKT_FLAG_CORRUPT, AV_PKT_FLAG_DISCARD (packets the decoder drops: edit lists)
# A seek costs about as much as decoding this many more frames: starting ffmpeg and opening the file (measured on
# the sample clip: 0.1-0.2 s per process, 7-8 ms per decoded 1768x994 frame).
SEEK_OVERHEAD_FRAMES = 15


@dataclass(frozen=True)
class FrameTimes:
    """When each frame of a video stream is shown, read from its packets without decoding them (0.15 s for the
    230-frame sample): times in seconds from the file's start, the origin `-ss` counts from, in frame order, and the
    frame numbers of the keyframes that a seek decodes from."""

    times: tuple[Fraction, ...]
    keyframes: tuple[int, ...]

    def keyframe_before(self, number: int) -> int:
        return max((k for k in self.keyframes if k <= number), default=0)


def frame_times(info: MediaInfo) -> FrameTimes:
    """The frame times of the video stream, from its packets (`-c copy -f framecrc`: no decoding).

    The n-th frame in time order is the n-th frame decoding gives only when every packet is one frame with its own
    timestamp; raises InexactSeek when the packets say otherwise (no or shared timestamps, damaged packets)."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-i", str(info.path), "-map",
           f"0:v:{info.stream}", "-c", "copy", "-f", "framecrc", "-"]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    text = proc.stdout.decode("utf-8", errors="replace")
    base = re.search(r"^#tb 0: (\d+)/(\d+)", text, flags=re.MULTILINE)
    if proc.returncode != 0 or base is None or proc.stderr.strip():
        raise InexactSeek(f"its packets cannot be listed cleanly "
                          f"({last_error_line(proc.stderr.decode('utf-8', errors='replace'))})")
    packets = []  # (pts, flags) of the packets the decoder gets
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        fields = [field.strip() for field in line.split(",")]
        flags = next((int(f[2:], 16) for f in fields[6:] if f.startswith("F=")), 1)  # no F=: a plain keyframe
        if not flags & _DISCARD:
            packets.append((int(fields[2]), flags))
    pts = sorted(p for p, _ in packets)
    if not packets:
        raise InexactSeek("no video packets")
    if pts[0] == _NOPTS:
        raise InexactSeek("some packets have no timestamp")
    if any(flags & _CORRUPT for _, flags in packets):
        raise InexactSeek("some packets are marked damaged")
    if len(set(pts)) != len(pts):
        raise InexactSeek("some packets share a timestamp")
    rank = {p: i for i, p in enumerate(pts)}
    unit = Fraction(int(base.group(1)), int(base.group(2)))
    return FrameTimes(times=tuple(p * unit for p in pts),
                      keyframes=tuple(sorted(rank[p] for p, flags in packets if flags & 1)))


def _seek_frame(info: MediaInfo, times: FrameTimes, number: int) -> np.ndarray:
    """Frame `number` (counted from the first frame of the file) by input seeking to halfway between it and the
    frame before: ffmpeg decodes from the keyframe before and drops the frames shown before that time. The time of
    the frame it gives is checked against the packets' (`showinfo`)."""
    shown = times.times[number]
    half = (shown - (times.times[number - 1] if number else Fraction(0))) / 2
    after = times.times[number + 1] - shown if number + 1 < len(times.times) else half
    seek = f"{float(shown - half):.6f}" if half > 0 else None
    cmd = decode_command(info, ["showinfo"], ["-ss", seek] if seek else [], loglevel="level+info", max_frames=1)
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    messages = proc.stderr.decode("utf-8", errors="replace")
    errors = [ln for ln in messages.splitlines() if re.search(r"\[(error|fatal|panic)\]", ln)]
    got = re.search(r"\] \[info\] n:\s*0\s+pts:\s*-?\d+\s+pts_time:(\S+)", messages)
    frame_bytes = info.width * info.height * 3
    if proc.returncode != 0 or errors or got is None or len(proc.stdout) != frame_bytes:
        raise InexactSeek(f"seeking to frame {number} failed ({last_error_line(chr(10).join(errors) or messages)})")
    expected = shown - Fraction(seek or 0)
    tolerance = min(x for x in (half, after, Fraction(1)) if x > 0) / 2
    if abs(Fraction(got.group(1)) - expected) >= tolerance:
        raise InexactSeek(f"seeking to frame {number} (at {float(shown):.3f} s) gave the frame at "
                          f"{float(Fraction(seek or 0) + Fraction(got.group(1))):.3f} s")
    return np.frombuffer(proc.stdout, dtype=np.uint8).reshape(info.height, info.width, 3)


def _select_frames(info: MediaInfo, numbers: list[int]) -> list[np.ndarray]:
    """Frames `numbers` (sorted, distinct, counted from the file's first frame) in one pass: every frame up to the
    last one is decoded, but only these are converted and piped (`select` counts decoded frames, as `trim` does)."""
    wanted = "+".join(f"eq(n\\,{n})" for n in numbers)
    cmd = decode_command(info, [f"select={wanted}"], max_frames=len(numbers))
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    frame_bytes = info.width * info.height * 3
    if proc.returncode != 0 or len(proc.stdout) != frame_bytes * len(numbers):
        raise InexactSeek(f"frames {numbers} do not all decode "
                          f"({last_error_line(proc.stderr.decode('utf-8', errors='replace'))})")
    frames = np.frombuffer(proc.stdout, dtype=np.uint8).reshape(len(numbers), info.height, info.width, 3)
    return list(frames)


def _keyframes_only(info: MediaInfo, times: FrameTimes, numbers: list[int]) -> list[np.ndarray]:
    """Keyframes `numbers` (sorted, distinct, counted from the file's first frame) in one pass that hands the
    decoder only keyframe packets (`-discard nokey`): a seek cannot do that cheaply, since ffmpeg seeks 3/23 s before
    the asked time in a stream with B-frames and lands on the keyframe before, decoding a whole GOP (0.3 CPU s a
    frame on the sample). The frames are picked by their time (`select`; `-copyts -start_at_zero` keeps the
    packets' times counted from the file's start, the origin `frame_times` uses), so the few non-keyframes ffmpeg
    decodes while it probes the file are not mistaken for keyframes, and each frame's time is checked against the
    packets' (`showinfo`). MP4 and MOV hand the decoder keyframes only; some demuxers (Matroska, MPEG-TS) ignore
    `-discard` and every frame up to the last one asked for is decoded, as the "pass" method does."""
    gaps = [b - a for a, b in zip(times.times, times.times[1:], strict=False)]
    margin = min(gaps) / 4 if gaps else Fraction(1, 1000)
    wanted = [times.times[n] for n in numbers]
    pick = "+".join(f"between(t\\,{float(t - margin):.9f}\\,{float(t + margin):.9f})" for t in wanted)
    cmd = decode_command(info, [f"select={pick}", "showinfo"], ["-copyts", "-start_at_zero", "-discard", "nokey"],
                         loglevel="level+info", max_frames=len(numbers))
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    messages = proc.stderr.decode("utf-8", errors="replace")
    got = [Fraction(t) for t in re.findall(r"\] \[info\] n:\s*\d+\s+pts:\s*-?\d+\s+pts_time:(\S+)", messages)]
    frame_bytes = info.width * info.height * 3
    if proc.returncode != 0:
        raise InexactSeek(f"keyframes {numbers} do not decode alone ({last_error_line(messages)})")
    if (len(proc.stdout) != frame_bytes * len(numbers) or len(got) != len(numbers)
            or any(abs(g - t) >= margin for g, t in zip(got, wanted, strict=True))):
        raise InexactSeek(f"keyframes {numbers} (at {', '.join(f'{float(t):.3f}' for t in wanted)} s) decode alone "
                          f"as frames at {', '.join(f'{float(g):.3f}' for g in got) or 'no time'} s")
    return list(np.frombuffer(proc.stdout, dtype=np.uint8).reshape(len(numbers), info.height, info.width, 3))


def frames_at(path: str | Path, numbers: Sequence[int], start: int = 0, end: int | None = None,
              info: MediaInfo | None = None, times: FrameTimes | None = None, method: str = "auto") -> list[np.ndarray]:
    """The frames `numbers` of the range [start, end) (0 is frame `start`), as `iter_frames(path, start, end)` would
    yield them, pixel for pixel, without decoding the rest of the video.

    Each frame is reached by a seek that decodes from the keyframe before it (the seeks run in parallel); when the
    keyframes are so sparse that this would decode more than one pass up to the last wanted frame, that one pass is
    made instead; when every frame asked for is a keyframe, one pass that decodes keyframes only (`method`: "auto"
    chooses so, "seek", "pass" or "keyframes" force one). Raises InexactSeek when seeking cannot be
    trusted in this file (`frame_times`, or a seek that gives a frame of another time) and IndexError for a number
    outside the range."""
    info = info or probe(path)
    times = times or frame_times(info)
    stop = len(times.times) if end is None else min(end, len(times.times))
    absolute = [start + int(n) for n in numbers]
    if any(n < 0 or not start + n < stop for n in numbers):
        raise IndexError(f"frame numbers {list(numbers)} outside the {max(stop - start, 0)} frames of {info.path.name}"
                         f" from frame {start}")
    distinct = sorted(set(absolute))
    if not distinct:
        return []
    if method not in ("auto", "seek", "pass", "keyframes"):
        raise ValueError(f"method must be 'auto', 'seek', 'pass' or 'keyframes', not {method!r}")
    if method == "keyframes" and not set(distinct) <= set(times.keyframes):
        raise ValueError(f"frames {sorted(set(distinct) - set(times.keyframes))} are not keyframes")
    if method == "auto":
        seeks = sum(n - times.keyframe_before(n) + 1 + SEEK_OVERHEAD_FRAMES for n in distinct)
        method = "pass" if seeks > distinct[-1] + 1 + SEEK_OVERHEAD_FRAMES else "seek"
        keyframes_read = sum(1 for k in times.keyframes if k <= distinct[-1]) + SEEK_OVERHEAD_FRAMES
        if set(distinct) <= set(times.keyframes) and keyframes_read < seeks:
            # Seen in a variable-frame-rate stream with B-frames: some keyframes come out with other times, which
            # the time check refuses; the frames are then read by seeks or one pass, as chosen above.
            try:
                found = dict(zip(distinct, _keyframes_only(info, times, distinct), strict=True))
                return [found[n] for n in absolute]
            except InexactSeek as exc:
                logger.debug("%s: %s; seeking to them instead", info.path.name, exc)
    if method == "keyframes":
        found = dict(zip(distinct, _keyframes_only(info, times, distinct), strict=True))
    elif method == "pass":
        found = dict(zip(distinct, _select_frames(info, distinct), strict=True))
    else:
        # Ctrl-C waits for these few seeks (5 full-HD frames: 2.1 s with both cores busy): the executor's locks are
        # Python-level and could be left held by it (pipeline/media/interrupts.py).
        with interrupts_deferred(), ThreadPoolExecutor(max_workers=min(len(distinct), os.cpu_count() or 1)) as pool:
            found = dict(zip(distinct, pool.map(lambda n: _seek_frame(info, times, n), distinct), strict=True))
    return [found[n] for n in absolute]


class VideoFrames:
    """Frames [first, stop) of a video file as a frame source: calling it opens a fresh iterator over them (decoded
    ahead in a thread, `prefetched`); `count` and `frames_at` reach single frames by seeking, without decoding the
    rest (the 2D stage's probe frames, `pipeline.pose2d`). Both return None, after logging why, when seeking cannot
    be trusted in this file: the caller then reads the frames in order. `prefetch` starts such a read in the
    background, for a caller that has other work to do first (loading the detector)."""

    def __init__(self, path: str | Path, first: int = 0, stop: int | None = None, info: MediaInfo | None = None):
        self.info = info or probe(path)
        self.first, self.stop = first, stop
        self._times: FrameTimes | None = None
        self._problem: str | None = None  # why seeking is not trusted in this file, once found
        self._lock = threading.Lock()  # the packet list is read once, by the prefetch thread or the caller's
        self._prefetch: tuple[threading.Thread, dict] | None = None
        self._ahead: _ReadAhead | None = None

    def __call__(self) -> Iterator[np.ndarray]:
        return self._open()

    def _open(self, size: tuple[int, int] | None = None, depth: int = 4) -> Iterator[np.ndarray]:
        """A fresh iterator over the frames (scaled to `size` when given), decoded up to `depth` ahead."""
        return prefetched(iter_frames(self.info.path, self.first, self.stop, self.info, size=size), depth=depth)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the frames, upright."""
        return self.info.width, self.info.height

    def at_size(self, size: tuple[int, int]) -> Callable[[], Iterator[np.ndarray]]:
        """The same frames scaled by ffmpeg to `size` (width, height), as a function that opens a fresh iterator;
        the first one opened at the size `read_ahead` reads is that read-ahead."""
        size = (int(size[0]), int(size[1]))

        def open_frames() -> Iterator[np.ndarray]:
            ahead, self._ahead = self._ahead, None
            if ahead is not None and ahead.size == size:
                return ahead.frames()
            if ahead is not None:
                ahead.close()
            return self._open(size)

        return open_frames

    def read_ahead(self, size: tuple[int, int], depth: int) -> None:
        """Start decoding the frames at `size` now, up to `depth` of them ahead of the caller, for the first iterator
        `at_size(size)` opens: ffmpeg decodes them on a core that the caller's start-up (importing PyTorch, loading
        the detector) leaves idle. `close` stops a read-ahead nobody took."""
        if self._ahead is None:
            self._ahead = _ReadAhead((int(size[0]), int(size[1])), self._open(size, depth))

    def close(self) -> None:
        """Stop a read-ahead that was not used (its ffmpeg ends) and drop prefetched frames nobody asked for (their
        seeks end on their own); frames already handed out are unaffected."""
        ahead, self._ahead = self._ahead, None
        self._prefetch = None
        if ahead is not None:
            ahead.close()

    def _cannot_seek(self, problem: str) -> None:
        self._problem = problem
        logger.info("%s: cannot seek to single frames exactly (%s); they are decoded in order instead, one extra "
                       "pass over the clip", self.info.path.name, problem)

    def count(self) -> int | None:
        """The number of frames iterating gives, as far as seeking goes (from the packets, `frame_times`)."""
        with self._lock:
            return self._count()

    def _count(self) -> int | None:
        if self._times is None and self._problem is None:
            try:
                self._times = frame_times(self.info)
            except InexactSeek as exc:
                self._cannot_seek(str(exc))
        if self._times is None or self._problem is not None:
            return None
        total = len(self._times.times)
        count = (total if self.stop is None else min(self.stop, total)) - self.first
        if count <= 0:
            self._cannot_seek(f"no frame from frame {self.first} on among its {total} packets")
            return None
        return count

    def keyframes(self) -> list[int] | None:
        """The numbers (0 is frame `first`) of the keyframes in the range: frames a seek decodes alone, without the
        frames before them. None when seeking cannot be trusted in this file."""
        with self._lock:
            count = self._count()
            if count is None:
                return None
            return [k - self.first for k in self._times.keyframes if 0 <= k - self.first < count]

    def frames_at(self, numbers: Sequence[int]) -> list[np.ndarray] | None:
        """The frames `numbers` (0 is frame `first`), exactly as iterating gives them; see `frames_at`. Frames that
        `prefetch` is reading are waited for instead of read again."""
        ready = self._prefetched(numbers)
        if ready is not None:
            return ready["frames"]
        return self._frames_at(numbers)

    def _frames_at(self, numbers: Sequence[int]) -> list[np.ndarray] | None:
        if self.count() is None:
            return None
        try:
            return frames_at(self.info.path, numbers, self.first, self.stop, self.info, self._times)
        except InexactSeek as exc:
            self._cannot_seek(str(exc))
            return None

    def prefetch(self, pick: Callable[[int, list[int]], Sequence[int]]) -> None:
        """Start reading the frames `pick(count(), keyframes())` in a background thread (seeks run in ffmpeg
        processes, so they take little of this process); a later `frames_at` of the same numbers waits for them,
        while the caller loads its models."""
        if self._prefetch is not None:
            return
        result: dict = {}

        def read() -> None:
            try:
                total, keyframes = self.count(), self.keyframes()
                result["numbers"] = None if total is None else [int(n) for n in pick(total, keyframes or [])]
                result["frames"] = None if total is None else self._frames_at(result["numbers"])
            except BaseException as exc:  # raised in the caller's frames_at
                result["error"] = exc

        thread = threading.Thread(target=read, name="frame-prefetch", daemon=True)
        with interrupts_deferred():  # Ctrl-C inside Thread.start() can leave the new thread unable to start
            thread.start()
        self._prefetch = (thread, result)

    def _prefetched(self, numbers: Sequence[int]) -> dict | None:
        """The prefetch's result if it read `numbers` (waiting for it), else None; either way it is used up."""
        if self._prefetch is None:
            return None
        thread, result = self._prefetch
        self._prefetch = None
        thread.join()
        if "error" in result:
            raise result["error"]
        return result if result["numbers"] == [int(n) for n in numbers] else None


class _ReadAhead:
    """A `prefetched` iterator started at once: a thread takes its first frame, which starts its reader thread
    (and ffmpeg) without waiting for the consumer. `frames()` hands it over, the first frame put back in front."""

    def __init__(self, size: tuple[int, int], frames: Iterator[np.ndarray]):
        self.size = size
        self._frames = frames
        self._first: list = []
        self._thread = threading.Thread(target=self._take_first, name="frame-read-ahead", daemon=True)
        with interrupts_deferred():  # Ctrl-C inside Thread.start() can leave the new thread unable to start
            self._thread.start()

    def _take_first(self) -> None:
        try:
            self._first.append(next(self._frames, _DONE))
        except BaseException as exc:  # a decoding error: raised to the consumer at the first frame
            self._first.append(exc)

    def frames(self) -> Iterator[np.ndarray]:
        self._thread.join()
        first = self._first[0]
        if isinstance(first, BaseException):
            raise first
        return self._frames if first is _DONE else self._with_first(first)

    def _with_first(self, first: np.ndarray) -> Iterator[np.ndarray]:
        try:
            yield first
            yield from self._frames
        finally:  # closing this closes the reader and its ffmpeg, as closing a `prefetched` iterator does
            self._frames.close()

    def close(self) -> None:
        self._thread.join()
        self._frames.close()  # started by the first frame, so its reader and ffmpeg stop


_DONE = object()


def prefetched(frames: Iterator[np.ndarray], depth: int = 4) -> Iterator[np.ndarray]:
    """The same frames, read up to `depth` ahead in a background thread, so that reading the pipe and copying the
    bytes (a few ms per full-HD frame) overlap with the consumer's work (detection, drawing) instead of adding to it.

    Memory stays bounded (`depth` frames in flight). An error while decoding is raised in the consumer at the frame
    where it happened; when the consumer stops early (break, an exception, Ctrl-C) the reader thread stops and the
    source generator is closed, which ends its ffmpeg process. The frames pass through a `Handoff`, which Ctrl-C
    cannot wedge (a queue.Queue can be left locked by it, see pipeline/media/interrupts.py).
    """
    slots = Handoff(depth)

    def read() -> None:
        try:
            for frame in frames:
                if not slots.put(frame):
                    return
            slots.put(_DONE)
        except BaseException as exc:  # handed to the consumer, which raises it
            slots.put(exc)
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                close()

    reader = threading.Thread(target=read, name="frame-reader", daemon=True)
    try:
        with interrupts_deferred():  # Ctrl-C inside Thread.start() can leave the new thread unable to start
            reader.start()
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        slots.close()  # the reader stops at its next put
        if reader.ident is not None:  # started
            reader.join()
