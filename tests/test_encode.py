"""VideoWriter: exact frame count and rate, H.264/yuv420p, audio copied exactly when the source has some, and nothing
half-written left behind on errors or Ctrl-C. Every check decodes the written file with OpenCV or ffmpeg."""
from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import textwrap
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.media.encode import EncoderConfig, VideoWriter
from pipeline.media.ffmpeg import count_frames, ffmpeg_exe, frame_rate_fraction, probe

SIZE = (160, 120)
REPO_ROOT = Path(__file__).resolve().parents[1]


def pattern(index: int) -> np.ndarray:
    """A frame whose brightness encodes its index (steps of 6 grey levels), so order and duplicates are visible."""
    frame = np.full((SIZE[1], SIZE[0], 3), 10 + 6 * (index % 40), np.uint8)
    frame[40:80, 20:60] = (0, 0, 255)
    return frame


def write_clip(path: Path, count: int, fps, **kwargs) -> None:
    with VideoWriter(path, SIZE, fps, frame_count=count, **kwargs) as writer:
        for i in range(count):
            writer.write(pattern(i))


def decoded_frames(path: Path) -> tuple[list[np.ndarray], float]:
    capture = cv2.VideoCapture(str(path))
    fps = capture.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames, fps


def make_source(path: Path, seconds: float, audio: str | None) -> Path:
    """A small clip made by ffmpeg's lavfi: test pattern video, plus a 440 Hz tone in `audio` codec when given."""
    command = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
               "-i", f"testsrc=size=64x48:rate=30:duration={seconds}"]
    if audio:
        command += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}", "-c:a", audio]
    command += ["-c:v", "mpeg4", str(path)]
    subprocess.run(command, check=True)
    return path


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "partial" in p.name)


@pytest.mark.parametrize("fps,expected", [(30, 30.0), (Fraction(30000, 1001), 30000 / 1001), (25.0, 25.0)])
def test_frames_rate_codec_and_pixel_format_are_exact(tmp_path, fps, expected):
    path = tmp_path / "out.mp4"
    write_clip(path, 37, fps)
    frames, decoded_fps = decoded_frames(path)
    assert len(frames) == 37 and count_frames(path) == 37
    assert decoded_fps == pytest.approx(expected, abs=1e-3)
    # Frame i is the i-th pattern: nothing dropped, duplicated or reordered.
    brightness = [float(np.median(f[:, 80:])) for f in frames]
    np.testing.assert_allclose(brightness, [10 + 6 * i for i in range(37)], atol=1.5)
    info = probe(path)
    assert (info.codec, info.pix_fmt, info.width, info.height) == ("h264", "yuv420p", *SIZE)
    assert info.audio_codec is None
    assert leftovers(tmp_path) == []


def test_frame_rates_are_written_as_exact_fractions():
    assert frame_rate_fraction(29.97) == Fraction(30000, 1001)
    assert frame_rate_fraction(30000 / 1001) == Fraction(30000, 1001)
    assert frame_rate_fraction(59.94) == Fraction(60000, 1001)
    assert frame_rate_fraction(23.976) == Fraction(24000, 1001)
    assert frame_rate_fraction(25) == 25
    assert frame_rate_fraction(12.5) == Fraction(25, 2)
    assert frame_rate_fraction("24000/1001") == Fraction(24000, 1001)
    for bad in (0, -30, float("nan")):
        with pytest.raises(ValueError, match="frame rate"):
            frame_rate_fraction(bad)


def test_aac_audio_is_copied_and_cut_to_the_video(tmp_path):
    source = make_source(tmp_path / "source.mp4", 3.0, "aac")
    path = tmp_path / "out.mp4"
    write_clip(path, 45, 30, audio_source=source, audio_start=1.0)
    info = probe(path)
    assert info.codec == "h264" and info.audio_codec == "aac"
    assert count_frames(path) == 45
    audio_seconds = _stream_seconds(path, "a")
    assert 1.4 <= audio_seconds <= 1.55  # 45 frames at 30 fps = 1.5 s, from a 3 s source started at 1 s


def test_audio_that_does_not_fit_mp4_is_reencoded_to_aac(tmp_path):
    source = make_source(tmp_path / "source.mkv", 2.0, "pcm_s16le")
    assert probe(source).audio_codec == "pcm_s16le"
    path = tmp_path / "out.mp4"
    write_clip(path, 30, 30, audio_source=source)
    assert probe(path).audio_codec == "aac"
    assert count_frames(path) == 30


def test_short_audio_never_cuts_the_video_and_silent_sources_add_no_track(tmp_path):
    short = make_source(tmp_path / "short.mp4", 0.5, "aac")
    path = tmp_path / "out.mp4"
    write_clip(path, 60, 30, audio_source=short)
    assert count_frames(path) == 60 and probe(path).audio_codec == "aac"

    silent = make_source(tmp_path / "silent.mp4", 1.0, None)
    write_clip(path, 20, 30, audio_source=silent)
    assert probe(path).audio_codec is None and count_frames(path) == 20


@pytest.mark.parametrize("interrupt", [RuntimeError, KeyboardInterrupt])
def test_an_exception_midway_leaves_the_destination_untouched(tmp_path, interrupt):
    path = tmp_path / "out.mp4"
    path.write_bytes(b"previous result")
    with pytest.raises(interrupt):
        with VideoWriter(path, SIZE, 30, frame_count=20) as writer:
            for i in range(8):
                writer.write(pattern(i))
            deadline = time.monotonic() + 30  # frames reach ffmpeg through a queue: wait for its partial file
            while not writer.temp_path.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert writer.temp_path.exists()
            raise interrupt("stopped")
    assert path.read_bytes() == b"previous result"
    assert leftovers(tmp_path) == []


def test_a_wrong_frame_count_keeps_nothing(tmp_path):
    path = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="5 frames written to out.mp4, 10 expected"):
        write_clip_short = VideoWriter(path, SIZE, 30, frame_count=10)
        with write_clip_short as writer:
            for i in range(5):
                writer.write(pattern(i))
    assert not path.exists() and leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="more frames written than the 2 announced"):
        with VideoWriter(path, SIZE, 30, frame_count=2) as writer:
            for i in range(3):
                writer.write(pattern(i))
    assert not path.exists() and leftovers(tmp_path) == []


def test_ffmpeg_failure_is_reported_and_nothing_is_kept(tmp_path):
    path = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="ffmpeg .*invalid preset 'no-such-preset'"):
        with VideoWriter(path, SIZE, 30, config=EncoderConfig(preset="no-such-preset")) as writer:
            for i in range(50):
                writer.write(pattern(i))
                time.sleep(0.01)
    assert not path.exists() and leftovers(tmp_path) == []


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="even"):
        VideoWriter(tmp_path / "x.mp4", (161, 120), 30)
    with pytest.raises(FileNotFoundError, match="audio source not found"):
        VideoWriter(tmp_path / "x.mp4", SIZE, 30, audio_source=tmp_path / "missing.mp4")
    with pytest.raises(FileNotFoundError, match="output folder does not exist"):
        with VideoWriter(tmp_path / "nowhere" / "x.mp4", SIZE, 30):
            pass
    with VideoWriter(tmp_path / "x.mp4", SIZE, 30, frame_count=1) as writer:
        with pytest.raises(ValueError, match="160x120 BGR uint8 frame"):
            writer.write(np.zeros((120, 160), np.uint8))
        writer.write(pattern(0))
    assert count_frames(tmp_path / "x.mp4") == 1


@pytest.mark.skipif(os.name != "posix", reason="sends SIGINT")
def test_ctrl_c_leaves_no_file(tmp_path):
    """A real SIGINT to a process that is writing: it stops, the destination never appears, no temporary is left."""
    path = tmp_path / "out.mp4"
    script = textwrap.dedent(f"""
        import sys, time
        import numpy as np
        from pipeline.media.encode import VideoWriter
        with VideoWriter({str(path)!r}, (160, 120), 30, frame_count=100000) as writer:
            for i in range(100000):
                writer.write(np.full((120, 160, 3), i % 256, np.uint8))
                if i == 5:
                    print("writing", flush=True)
                time.sleep(0.005)
    """)
    # SIGINT as in a terminal even when the tests run as a background job (which inherits SIGINT ignored).
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=functools.partial(signal.signal, signal.SIGINT, signal.SIG_DFL))
    assert process.stdout.readline().strip() == "writing"
    deadline = time.monotonic() + 30  # frames reach ffmpeg through a queue: wait for its partial file
    while leftovers(tmp_path) != [".out.partial.mp4"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert leftovers(tmp_path) == [".out.partial.mp4"]
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode != 0 and "KeyboardInterrupt" in stderr
    assert not path.exists() and leftovers(tmp_path) == []



def test_ctrl_c_at_any_moment_leaves_no_thread_ffmpeg_or_partial_file(tmp_path):
    """SIGINT at 150 random moments of decoding (prefetched) into a VideoWriter, as Ctrl-C lands while the demo
    renders: every time the helper threads and both ffmpeg processes end, and no file is left. With queue.Queue
    hand-offs this failed within seconds (an interrupt between a lock's acquire and its with block left the lock held;
    CI hung in the demo's Ctrl-C test that way), and 1 in 1,500 interrupts inside Popen left a partial file
    (pipeline/media/interrupts.py)."""
    script = textwrap.dedent(f"""
        import os, random, signal, threading, time, traceback
        from pathlib import Path
        import numpy as np
        from pipeline.media.decode import iter_frames, prefetched
        from pipeline.media.encode import VideoWriter

        def interrupt(*_):  # a SIGINT at a random moment, as from Ctrl-C in a terminal
            signal.raise_signal(signal.SIGINT)

        def children():
            found = []
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{{pid}}/stat") as stat:
                        fields = stat.read().rsplit(")", 1)[1].split()
                    if fields[1] == str(os.getpid()) and fields[0] != "Z":  # a probe lost inside Popen exits
                        with open(f"/proc/{{pid}}/cmdline") as cmdline:
                            found.append(fields[0] + " " + cmdline.read().replace("\\0", " ")[-80:])
                except OSError:
                    pass
            return found
        signal.signal(signal.SIGALRM, interrupt)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # also when the tests run as a background job
        out = Path({str(tmp_path)!r})
        source = out / "source.mp4"
        with VideoWriter(source, (64, 48), 25, frame_count=40) as writer:
            for i in range(40):
                writer.write(np.full((48, 64, 3), 6 * i, np.uint8))
        def copy():
            with VideoWriter(out / "v.mp4", (64, 48), 25, frame_count=40) as writer:
                for frame in prefetched(iter_frames(source)):
                    writer.write(frame)
        spans = []
        for _ in range(3):
            start = time.monotonic()
            copy()
            spans.append(time.monotonic() - start)
        span = 2 * min(spans)  # interrupts fall over twice the fastest whole copy: about half interrupt it
        rng, interrupted, last = random.Random(0), 0, None
        for trial in range(150):
            (out / "v.mp4").unlink(missing_ok=True)
            try:
                signal.setitimer(signal.ITIMER_REAL, rng.uniform(0.0, span))
                copy()
                signal.setitimer(signal.ITIMER_REAL, 0)
            except KeyboardInterrupt:
                interrupted += 1
                last = traceback.format_exc()
            deadline = time.monotonic() + 5  # threads see a closed hand-off at their next poll
            while (threading.active_count() > 1 or children()) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert threading.active_count() == 1, (trial, threading.enumerate())
            assert not children(), (trial, children(), last)
            assert sorted(p.name for p in out.iterdir()) in (["source.mp4"], ["source.mp4", "v.mp4"]), trial
        print("interrupted", interrupted)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    interrupted = int(result.stdout.split()[-1])
    assert 30 <= interrupted <= 145  # both interrupted and finished trials happened


def _stream_seconds(path: Path, stream: str) -> float:
    """Duration of the first `stream` ('a' or 'v') by remuxing it: ffmpeg's last `time=` is the stream's end."""
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path), "-map", f"0:{stream}:0",
                           "-c", "copy", "-f", "null", "-"], capture_output=True, text=True, check=True)
    hours, minutes, seconds = proc.stderr.rsplit("time=", 1)[1].split()[0].split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)



def test_frames_drawn_into_the_writers_buffers_are_encoded_in_order_and_the_buffers_reused(tmp_path):
    """`frame_buffer()` hands out arrays the writer has finished with: a few for a whole clip, and every frame
    written into one comes out as it was drawn, although the array is drawn into again for a later frame."""
    path = tmp_path / "pooled.mp4"
    seen: set[int] = set()
    with VideoWriter(path, SIZE, 25, frame_count=40) as writer:
        for i in range(40):
            buffer = writer.frame_buffer()
            seen.add(id(buffer))
            buffer[:] = pattern(i)
            writer.write(buffer)
    frames, _ = decoded_frames(path)
    assert len(frames) == 40 and len(seen) <= 8  # the queue's frames, the pump's and the one being drawn
    for i, frame in enumerate(frames):
        assert abs(int(frame[5, 5, 0]) - int(pattern(i)[5, 5, 0])) <= 3, f"frame {i}"


def test_a_frame_the_pump_cannot_convert_is_an_error_not_a_hang(tmp_path, monkeypatch):
    """The BGR-to-YUV conversion runs in the pump thread: when it fails, the next write or the close raises and
    nothing is kept, instead of the writer waiting forever on a pump that died."""
    import pipeline.media.encode as encode

    def broken(*args, **kwargs):
        raise cv2.error("conversion failed")

    monkeypatch.setattr(encode.cv2, "cvtColor", broken)
    path = tmp_path / "broken.mp4"
    with pytest.raises(RuntimeError, match="converting a frame for broken.mp4 failed"):
        with VideoWriter(path, SIZE, 25, frame_count=30) as writer:
            for i in range(30):
                writer.write(pattern(i))
    assert not path.exists() and leftovers(tmp_path) == []
