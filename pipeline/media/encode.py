"""H.264 mp4 writing through the ffmpeg binary (`pipeline.media.ffmpeg`): frames go straight from memory into ffmpeg.

`VideoWriter` converts each BGR frame to yuv420p (the pixel format every browser plays) with OpenCV and pipes it into
`ffmpeg -f rawvideo ... -c:v libx264`, optionally muxing in the audio track of the source clip. Why convert in Python:
OpenCV's BT.601 conversion costs ~1.7 ms for a 2000x720 frame where ffmpeg's default swscale path costs ~5 ms and
shifts greys by up to 5 levels (the brightness check in tests/test_encode.py fails with it), and the pipe carries half
the bytes. The stream is tagged BT.601 limited range (smpte170m, tv) so that players convert back with that matrix.

The file is written under a temporary name in the destination folder and renamed into place only when ffmpeg finished
cleanly with exactly the expected number of frames; an exception or Ctrl-C kills ffmpeg and deletes the temporary
file, so the destination is never half-written.
"""
from __future__ import annotations

import collections
import logging
import os
import re
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from pipeline.media.ffmpeg import count_frames, ffmpeg_exe, frame_rate_fraction, probe_audio_codec
from pipeline.media.interrupts import Handoff, interrupts_deferred

log = logging.getLogger(__name__)

# Audio codecs that go into an mp4 unchanged and play in browsers; anything else is re-encoded to AAC.
MP4_AUDIO_CODECS = ("aac", "mp3")
QUEUE_FRAMES = 4  # frames waiting for the pump (a 2000x720 BGR frame is 4.3 MB)


@dataclass(frozen=True)
class EncoderConfig:
    # superfast/crf 23 (30 November): the same picture quality as veryfast/crf 20 for 35 % less encoder CPU and a
    # 1.4x larger file. Measured on the sample's 230 rendered 2000x720 frames against the raw frames: SSIM 0.992 and
    # PSNR 45.2 dB for both, 2.2 against 3.4 CPU s, 3.0 against 2.1 MB; the encoder shares the two cores with the
    # renderer, so its CPU is wall time (README, Performance).
    preset: str = "superfast"
    crf: int = 23
    audio_bitrate: str = "160k"  # only used when the source audio has to be re-encoded
    ffmpeg: str | None = None  # path of the ffmpeg binary; None = the one imageio-ffmpeg ships


class VideoWriter:
    """Context manager writing BGR uint8 frames of one size into an H.264/yuv420p mp4.

        with VideoWriter(path, (width, height), fps, frame_count=n, audio_source=clip) as writer:
            for frame in frames:
                writer.write(frame)

    `frame_count`: when given, closing with any other number of frames written is an error (nothing is kept), and the
    copied audio is cut to the video's duration. `audio_source`: a media file whose first audio track (if it has one)
    is copied in, starting at `audio_start` seconds (for clips rendered from the middle of a video).
    The video keeps exactly the frames written at exactly `fps` (no -shortest: a short audio track never cuts video).
    """

    def __init__(
        self,
        path: Path,
        size: tuple[int, int],
        fps: float | Fraction | str,
        *,
        frame_count: int | None = None,
        audio_source: Path | None = None,
        audio_start: float = 0.0,
        config: EncoderConfig = EncoderConfig(),
    ):
        self.path = Path(path)
        self.width, self.height = int(size[0]), int(size[1])
        if self.width <= 0 or self.height <= 0 or self.width % 2 or self.height % 2:
            raise ValueError(f"frame size must be positive and even for yuv420p, got {self.width}x{self.height}")
        self.fps = frame_rate_fraction(fps)
        if frame_count is not None and frame_count < 0:
            raise ValueError(f"frame_count must be >= 0, got {frame_count}")
        self.frame_count = frame_count
        self.audio_source = Path(audio_source) if audio_source is not None else None
        if self.audio_source is not None and not self.audio_source.is_file():
            raise FileNotFoundError(f"audio source not found: {self.audio_source}")
        if audio_start < 0:
            raise ValueError(f"audio_start must be >= 0 seconds, got {audio_start}")
        self.audio_start = float(audio_start)
        self.config = config
        self.frames_written = 0
        self.temp_path = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix or '.mp4'}")
        self._process: subprocess.Popen | None = None
        self._stderr = None
        # A pump thread feeds ffmpeg, so that converting and drawing the next frame overlap with piping this one
        # (the pipe blocks while ffmpeg encodes); at most QUEUE_FRAMES frames wait, so memory stays bounded. A Handoff,
        # not a queue.Queue: Ctrl-C at the wrong moment can leave a queue.Queue's lock held and hang the exit.
        self._queue: Handoff | None = None
        self._pump: threading.Thread | None = None
        self._pipe_error: BaseException | None = None
        # Frame buffers handed out by frame_buffer() and back from the pump once converted, and the pump's one YUV
        # buffer: the same few arrays for every frame. A fresh 4.3 MB frame and 2.2 MB YUV array per frame each
        # cost a new mapping and its page faults (the process maps every allocation of 1 MB or more on its own,
        # `pipeline.app.process`): 0.4 CPU s over the sample clip's 230 frames.
        self._free_buffers: collections.deque[np.ndarray] = collections.deque()
        self._pooled: dict[int, np.ndarray] = {}  # the buffers frame_buffer() made, by id (kept: ids stay unique)
        self._yuv: np.ndarray | None = None

    # ------------------------------------------------------------------------------------------------ lifecycle

    def __enter__(self) -> VideoWriter:
        try:
            self.open()
        except BaseException:  # including Ctrl-C between open() and the with block, which would skip __exit__
            self.abort()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def open(self) -> None:
        if self._process is not None:
            raise RuntimeError("VideoWriter is already open")
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"output folder does not exist: {self.path.parent}")
        command = self._command()
        log.debug("ffmpeg command: %s", " ".join(command))
        self._stderr = tempfile.TemporaryFile()
        self._pipe_error = None
        self._queue = Handoff(QUEUE_FRAMES)
        self._pump = threading.Thread(target=self._feed_ffmpeg, name="encoder-pipe", daemon=True)
        try:
            # A new session: Ctrl-C in the terminal reaches only Python, which then kills ffmpeg and removes the
            # temporary file; ffmpeg must not finalise a half video on its own. Ctrl-C is held back until both ffmpeg
            # and its pump are running, so that abort() always finds them (pipeline/media/interrupts.py).
            with interrupts_deferred():
                self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                                 stderr=self._stderr, start_new_session=True)
                self._pump.start()
        except BaseException:
            self.abort()
            raise

    def _feed_ffmpeg(self) -> None:
        """The pump thread: write queued frames into ffmpeg's stdin until the end marker (None) or an abort."""
        process, slots = self._process, self._queue
        while True:
            try:
                data = slots.get()
            except Handoff.Closed:
                return
            if data is None:
                return
            if self._pipe_error is not None:
                continue  # drain what the writer still queues; the error is raised on its side
            try:
                # BT.601, limited range: (h * 3 / 2, w) planes. Converted here, beside the caller's drawing of the
                # next frame (OpenCV releases the GIL): 1.1 ms a 2000x720 frame that the renderer no longer waits for.
                if self._yuv is None:
                    self._yuv = np.empty((self.height * 3 // 2, self.width), np.uint8)
                cv2.cvtColor(data, cv2.COLOR_BGR2YUV_I420, dst=self._yuv)
                if id(data) in self._pooled:
                    self._free_buffers.append(data)  # drawn into again by the caller
                process.stdin.write(self._yuv.data)
            except Exception as exc:  # a broken pipe, or a conversion that failed: write() and close() raise it
                self._pipe_error = exc

    def frame_buffer(self) -> np.ndarray:
        """A (height, width, 3) uint8 array to draw the next frame into and `write`: one the writer has finished
        with, or a new one (at most a few exist: the queue's, and those being drawn)."""
        try:
            return self._free_buffers.popleft()
        except IndexError:
            buffer = np.empty((self.height, self.width, 3), np.uint8)
            self._pooled[id(buffer)] = buffer
            return buffer

    def write(self, frame_bgr: np.ndarray) -> None:
        """Queue one frame. It is converted and piped later, in the pump thread: do not change the array afterwards
        (a new array per frame, or one from `frame_buffer`, which the writer hands out again once it is done)."""
        if self._process is None:
            raise RuntimeError("VideoWriter is not open: use it as a context manager or call open()")
        if frame_bgr.shape != (self.height, self.width, 3) or frame_bgr.dtype != np.uint8:
            raise ValueError(f"expected a {self.width}x{self.height} BGR uint8 frame, "
                             f"got shape {frame_bgr.shape} {frame_bgr.dtype}")
        if self.frame_count is not None and self.frames_written >= self.frame_count:
            raise ValueError(f"more frames written than the {self.frame_count} announced")
        self._raise_if_ffmpeg_stopped()
        self._queue.put(frame_bgr)
        self.frames_written += 1

    def _raise_if_ffmpeg_stopped(self) -> None:
        error = self._pipe_error
        if error is not None and not isinstance(error, (BrokenPipeError, ValueError, OSError)):
            raise RuntimeError(f"converting a frame for {self.path.name} failed: {type(error).__name__}: {error}")
        if error is not None:
            self._process.wait()
            raise RuntimeError(f"ffmpeg stopped while encoding {self.path.name}: {self._ffmpeg_message()}")

    def _stop_pump(self, finish: bool) -> None:
        """finish: let the pump write every queued frame first; otherwise it drops them and stops at once."""
        if self._pump is not None:
            if finish:
                self._queue.put(None)
            else:
                self._queue.close()
            if self._pump.ident is not None:  # started
                self._pump.join()
            self._pump = None

    def close(self) -> None:
        """Finish the file, check it and move it into place; on any problem nothing is left behind."""
        if self._process is None:
            raise RuntimeError("VideoWriter is not open")
        try:
            if self.frame_count is not None and self.frames_written != self.frame_count:
                raise RuntimeError(f"{self.frames_written} frames written to {self.path.name}, "
                                   f"{self.frame_count} expected: the output was not kept")
            if self.frames_written == 0:
                raise RuntimeError(f"no frame written to {self.path.name}: the output was not kept")
            self._stop_pump(finish=True)
            self._raise_if_ffmpeg_stopped()
            try:
                self._process.stdin.close()
            except BrokenPipeError:
                pass
            code = self._process.wait()
            if code != 0:
                raise RuntimeError(f"ffmpeg failed (exit code {code}) writing {self.path.name}: "
                                   f"{self._ffmpeg_message()}")
            encoded = count_frames(self.temp_path, decode=False)
            if encoded != self.frames_written:
                raise RuntimeError(f"{self.path.name}: ffmpeg encoded {encoded} frames of the {self.frames_written} "
                                   f"written: the output was not kept")
            os.replace(self.temp_path, self.path)
        except BaseException:
            self.abort()
            raise
        self._release()

    def abort(self) -> None:
        """Kill ffmpeg and delete the temporary file; the destination is left as it was."""
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()  # a pump blocked on the pipe then fails at once
            if self._pump is not None:
                self._pipe_error = self._pipe_error or BrokenPipeError("aborted")
                self._stop_pump(finish=False)
            try:
                self._process.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            self._process.wait()
        self.temp_path.unlink(missing_ok=True)
        self._release()

    def _release(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
        self._process = None
        self._stderr = None

    # ------------------------------------------------------------------------------------------------- helpers

    def _ffmpeg_message(self) -> str:
        if self._stderr is None:
            return "no message"
        self._stderr.seek(0)
        text = self._stderr.read().decode("utf-8", errors="replace")
        log.debug("ffmpeg stderr:\n%s", text)
        # The first line names the cause ("invalid preset", "No space left on device"); later ones are consequences.
        lines = [re.sub(r"^(\[[^\]]*@ 0x[0-9a-f]+\] ?)+", "", ln.strip()) for ln in text.splitlines() if ln.strip()]
        return lines[0] if lines else "no message"

    def _audio_args(self) -> tuple[list[str], list[str]]:
        """(input arguments, output arguments) for the audio track, or two empty lists when there is none."""
        if self.audio_source is None:
            return [], []
        audio_codec = probe_audio_codec(self.audio_source)
        if audio_codec is None:
            return [], []
        inputs = []
        if self.audio_start > 0:
            inputs += ["-ss", f"{self.audio_start:.6f}"]
        if self.frame_count is not None:
            # Cut the audio at the video's end instead of -shortest, which could cut the video when audio is short.
            inputs += ["-t", f"{float(self.frame_count / self.fps):.6f}"]
        inputs += ["-i", str(self.audio_source)]
        codec = ["-c:a", "copy"] if audio_codec in MP4_AUDIO_CODECS else ["-c:a", "aac", "-b:a",
                                                                         self.config.audio_bitrate]
        return inputs, ["-map", "1:a:0?", *codec]

    def _command(self) -> list[str]:
        audio_inputs, audio_outputs = self._audio_args()
        rate = f"{self.fps.numerator}/{self.fps.denominator}"
        return [
            ffmpeg_exe(self.config.ffmpeg), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{self.width}x{self.height}", "-framerate", rate,
            "-i", "pipe:0",
            *audio_inputs,
            "-map", "0:v:0", *audio_outputs,
            "-c:v", "libx264", "-preset", self.config.preset, "-crf", str(self.config.crf), "-pix_fmt", "yuv420p",
            "-colorspace", "smpte170m", "-color_primaries", "smpte170m", "-color_trc", "smpte170m",
            "-color_range", "tv",
            "-r", rate, "-fps_mode", "cfr",
            "-movflags", "+faststart", "-f", "mp4", str(self.temp_path),
        ]
