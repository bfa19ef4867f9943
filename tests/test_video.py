"""Video decoding on small synthetic clips made with the imageio-ffmpeg binary, and on the shared sample clip."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.media.decode import iter_frames
from pipeline.media.ffmpeg import VideoError, count_frames, ffmpeg_exe, probe

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos" / "sports2d_demo.mp4"


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-y", *args], check=True)


def make_clip(path: Path, frames: int, size: str = "160x90", rate: int = 25, extra: tuple[str, ...] = (),
              pix_fmt: str = "yuv420p") -> Path:
    ffmpeg("-f", "lavfi", "-i", f"testsrc=size={size}:rate={rate}", *extra, "-frames:v", str(frames),
           "-pix_fmt", pix_fmt, "-c:v", "libx264", "-g", "5", str(path))
    return path


def raw_frames(path: Path, width: int, height: int) -> np.ndarray:
    """Decoded frames without any rotation, straight from ffmpeg, as the reference."""
    out = subprocess.run([ffmpeg_exe(), "-v", "error", "-noautorotate", "-i", str(path), "-f", "rawvideo",
                          "-pix_fmt", "bgr24", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(out, np.uint8).reshape(-1, height, width, 3)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    base = make_clip(d / "base.mp4", 12)
    rotated = d / "rotated.mp4"  # a phone held upright: stored landscape, displayed turned 90 degrees
    ffmpeg("-display_rotation", "90", "-i", str(base), "-c", "copy", str(rotated))
    single = make_clip(d / "single.mp4", 1, size="33x17", pix_fmt="yuv444p")  # odd sizes, one frame
    with_audio = d / "audio.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-f", "lavfi", "-i", "sine=frequency=440",
           "-frames:v", "7", "-t", "0.7", "-pix_fmt", "yuv420p", "-c:v", "libx264", "-c:a", "aac", str(with_audio))
    audio_only = d / "audio_only.mp4"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=0.5", "-c:a", "aac", str(audio_only))
    text = d / "notes.mp4"
    text.write_text("this is not a video\n")
    # Truncations: a file cut in its middle keeps its header only when the index (moov) comes first.
    faststart = make_clip(d / "faststart.mp4", 40, extra=("-movflags", "+faststart"))
    data = faststart.read_bytes()
    cut_data = d / "cut_data.mp4"
    cut_data.write_bytes(data[: len(data) * 2 // 3])
    cut_index = d / "cut_index.mp4"
    cut_index.write_bytes(base.read_bytes()[:2000])  # moov at the end: nothing but the start of the data
    cover = d / "cover.png"
    ffmpeg("-f", "lavfi", "-i", "color=c=blue:size=32x32", "-frames:v", "1", str(cover))
    with_cover = d / "with_cover.mp4"
    ffmpeg("-i", str(base), "-i", str(cover), "-map", "0", "-map", "1", "-c", "copy", "-disposition:v:1",
           "attached_pic", str(with_cover))
    return {"with_cover": with_cover, "base": base, "rotated": rotated, "single": single, "audio": with_audio,
            "audio_only": audio_only,
            "text": text, "faststart": faststart, "cut_data": cut_data, "cut_index": cut_index}


def test_probe_and_decode_plain_clip(clips):
    info = probe(clips["base"])
    assert (info.width, info.height, info.rotation, info.codec, info.has_audio) == (160, 90, 0, "h264", False)
    assert info.fps == pytest.approx(25.0)
    frames = list(iter_frames(clips["base"]))
    assert len(frames) == 12 == count_frames(clips["base"]) == count_frames(clips["base"], decode=False)
    assert all(f.shape == (90, 160, 3) and f.dtype == np.uint8 for f in frames)
    np.testing.assert_array_equal(np.stack(frames), raw_frames(clips["base"], 160, 90))


def test_frames_are_bgr(tmp_path):
    red = tmp_path / "red.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=red:size=32x32:rate=5", "-frames:v", "2", "-pix_fmt", "yuv444p",
           "-c:v", "libx264", "-qp", "0", str(red))
    frame = next(iter_frames(red))
    b, g, r = frame[16, 16].astype(int)
    assert r > 240 and g < 15 and b < 15


def test_rotation_metadata_is_applied(clips):
    info = probe(clips["rotated"])
    assert (info.width, info.height) == (90, 160)
    assert info.rotation == 270  # 90 degrees counter-clockwise = 270 clockwise
    frames = np.stack(list(iter_frames(clips["rotated"])))
    assert frames.shape == (12, 160, 90, 3)
    stored = raw_frames(clips["base"], 160, 90)
    np.testing.assert_array_equal(frames, np.rot90(stored, k=1, axes=(1, 2)))


def test_one_frame_video_with_odd_size(clips):
    info = probe(clips["single"])
    assert (info.width, info.height) == (33, 17)
    frames = list(iter_frames(clips["single"]))
    assert len(frames) == 1 and frames[0].shape == (17, 33, 3)
    assert count_frames(clips["single"]) == 1


def test_audio_is_reported_and_ignored(clips):
    info = probe(clips["audio"])
    assert info.has_audio and info.fps == pytest.approx(10.0)
    assert len(list(iter_frames(clips["audio"]))) == 7


def test_frame_range_is_exact(clips):
    every = list(iter_frames(clips["base"]))
    part = list(iter_frames(clips["base"], start=3, end=8))
    assert len(part) == 5
    for a, b in zip(part, every[3:8], strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(list(iter_frames(clips["base"], start=10, end=100))) == 2  # past the end: stops at the last frame
    with pytest.raises(VideoError, match="from frame 50"):
        list(iter_frames(clips["base"], start=50))
    with pytest.raises(ValueError, match="bad frame range"):
        list(iter_frames(clips["base"], start=5, end=5))


def test_stopping_early_ends_ffmpeg(clips, monkeypatch):
    started = []

    class RecordingPopen(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if "rawvideo" in self.args:  # the decoder, not the header probe
                started.append(self)

    monkeypatch.setattr("pipeline.media.decode.subprocess.Popen", RecordingPopen)
    gen = iter_frames(clips["base"])
    next(gen)
    assert len(started) == 1 and started[0].poll() is None  # ffmpeg is still decoding the rest
    gen.close()  # the generator's cleanup kills the ffmpeg process and waits for it: nothing hangs or leaks
    assert started[0].returncode is not None and started[0].stdout.closed


def test_truncated_files(clips):
    full = count_frames(clips["faststart"])
    frames = list(iter_frames(clips["cut_data"]))
    assert 0 < len(frames) < full == 40
    assert probe(clips["cut_data"]).frame_count_header == 40  # the header still claims the full length
    with pytest.raises(VideoError, match="cut_index.mp4"):
        probe(clips["cut_index"])


@pytest.mark.parametrize("name, message", [("text", "not a readable video"), ("audio_only", "no video stream")])
def test_files_that_are_not_videos(clips, name, message):
    with pytest.raises(VideoError, match=message) as err:
        probe(clips[name])
    assert "\n" not in str(err.value)
    with pytest.raises(VideoError, match=message):
        list(iter_frames(clips[name]))
    with pytest.raises(VideoError, match=message):
        count_frames(clips[name])


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(VideoError, match="not found"):
        probe(tmp_path / "nope.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoError, match="empty"):
        probe(tmp_path / "empty.mp4")
    with pytest.raises(VideoError, match="not a file"):
        probe(tmp_path)


def test_sample_clip():
    if not SAMPLE.exists():
        pytest.skip("../shared sample clip not present")
    info = probe(SAMPLE)
    assert (info.width, info.height, info.fps, info.codec) == (1768, 994, 30.0, "vp9")
    assert count_frames(SAMPLE, decode=False) == 230
    frames = list(iter_frames(SAMPLE, start=228))
    assert len(frames) == 2 and frames[0].shape == (994, 1768, 3)


# What other ffmpeg versions print for phone videos: the legacy `rotate` tag, and the display matrix side data.
OLD_FFMPEG_PHONE_HEADER = """Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'IMG_0001.MOV':
  Duration: 00:00:03.02, start: 0.000000, bitrate: 10432 kb/s
    Stream #0:0(und): Video: hevc (Main 10) (hvc1 / 0x31637668), yuv420p10le(tv, bt2020nc/bt2020/arib-std-b67), \
1920x1080, 10210 kb/s, 29.98 fps, 30 tbr, 600 tbn, 600 tbc (default)
    Metadata:
      rotate          : 90
      handler_name    : Core Media Video
    Side data:
      displaymatrix: rotation of -90.00 degrees
    Stream #0:1(und): Audio: aac (LC) (mp4a / 0x6134706D), 44100 Hz, mono, fltp, 91 kb/s (default)
"""


def test_cover_art_is_not_the_video(clips):
    info = probe(clips["with_cover"])
    assert (info.width, info.height, info.stream) == (160, 90, 0)
    assert len(list(iter_frames(clips["with_cover"]))) == 12 == count_frames(clips["with_cover"])
    header = """Input #0, matroska,webm, from 'x.mkv':
  Duration: 00:00:01.00, start: 0.000000, bitrate: 46 kb/s
  Stream #0:0: Video: mjpeg (Baseline), yuvj420p(pc, bt470bg/unknown/unknown), 600x600, 90k tbr (attached pic)
  Stream #0:1: Video: h264 (High), yuv420p(progressive), 640x360, 25 fps, 25 tbr, 1k tbn (default)
"""
    from pipeline.media.ffmpeg import parse_ffmpeg_header

    info = parse_ffmpeg_header(header, Path("x.mkv"))
    assert (info.width, info.height, info.stream, info.codec) == (640, 360, 1, "h264")


def test_parse_headers_of_other_ffmpeg_versions():
    from pipeline.media.ffmpeg import parse_ffmpeg_header

    info = parse_ffmpeg_header(OLD_FFMPEG_PHONE_HEADER, Path("IMG_0001.MOV"))
    assert (info.width, info.height, info.rotation) == (1080, 1920, 90)
    assert info.fps == pytest.approx(29.98) and info.codec == "hevc" and info.has_audio
    assert info.frame_count_header == round(3.02 * 29.98)
    tag_only = OLD_FFMPEG_PHONE_HEADER.replace("      displaymatrix: rotation of -90.00 degrees\n", "")
    tag_only = tag_only.replace("rotate          : 90", "rotate          : 180")
    assert parse_ffmpeg_header(tag_only, Path("x.mov")).rotation == 180
    assert parse_ffmpeg_header(tag_only, Path("x.mov")).width == 1920


def test_prefetched_frames_are_the_same_frames_and_errors_reach_the_consumer(clips):
    from pipeline.media.decode import prefetched

    direct = list(iter_frames(clips["base"]))
    ahead = list(prefetched(iter_frames(clips["base"]), depth=2))
    assert len(ahead) == len(direct) == 12
    for a, b in zip(ahead, direct, strict=True):
        np.testing.assert_array_equal(a, b)

    def broken():
        yield direct[0]
        raise VideoError("damaged at frame 1")

    got = []
    with pytest.raises(VideoError, match="damaged at frame 1"):
        for frame in prefetched(broken()):
            got.append(frame)
    assert len(got) == 1


@pytest.fixture
def decoders_started(monkeypatch) -> list[subprocess.Popen]:
    """The ffmpeg decoding processes that pipeline.media.decode starts from now on (those that pipe raw frames)."""
    started = []

    class RecordingPopen(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if "rawvideo" in self.args:
                started.append(self)

    monkeypatch.setattr("pipeline.media.decode.subprocess.Popen", RecordingPopen)
    return started


def test_stopping_a_prefetched_read_early_ends_its_ffmpeg(clips, decoders_started):
    from pipeline.media.decode import prefetched

    started = decoders_started
    frames = prefetched(iter_frames(clips["base"]), depth=1)
    next(frames)
    frames.close()
    assert len(started) == 1 and started[0].returncode is not None


@pytest.fixture(scope="module")
def seek_clips(clips, tmp_path_factory) -> dict[str, Path]:
    """Clips that make seeking by time hard: B-frames (x264's default), a rotation, audio, a video stream that starts
    0.7 s after the audio, a variable frame rate, a single keyframe, and a container without packet timestamps."""
    d = tmp_path_factory.mktemp("seek")
    late = d / "late.mp4"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=3", "-itsoffset", "0.7", "-f", "lavfi", "-i",
           "testsrc=size=160x90:rate=25", "-map", "1:v", "-map", "0:a", "-frames:v", "30", "-pix_fmt", "yuv420p",
           "-c:v", "libx264", "-g", "7", "-c:a", "aac", "-shortest", str(late))
    vfr = make_clip(d / "vfr.mp4", 40, extra=("-vf", "setpts='if(lt(N,20),N*2,40+(N-20)*5)/50/TB'", "-fps_mode",
                                              "passthrough", "-g", "6"))
    one_keyframe = make_clip(d / "one_keyframe.mp4", 30, extra=("-g", "600"))
    offset = d / "offset.mp4"  # a container whose timestamps start 10 s in
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x90:rate=25", "-frames:v", "30", "-pix_fmt", "yuv420p", "-c:v",
           "libx264", "-g", "7", "-output_ts_offset", "10", str(offset))
    no_timestamps = d / "mpeg4.avi"  # AVI packets carry no presentation times
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x90:rate=25", "-frames:v", "30", "-c:v", "mpeg4", "-bf", "2",
           str(no_timestamps))
    return {"base": clips["base"], "rotated": clips["rotated"], "audio": clips["audio"], "late": late, "vfr": vfr,
            "one_keyframe": one_keyframe, "offset": offset, "no_timestamps": no_timestamps}


@pytest.mark.parametrize("method", ["seek", "pass"])
@pytest.mark.parametrize("name", ["base", "rotated", "audio", "late", "vfr", "one_keyframe"])
def test_frames_reached_by_seeking_are_the_frames_decoding_in_order_gives(seek_clips, name, method):
    from pipeline.media.decode import VideoFrames, frames_at

    path = seek_clips[name]
    everything = list(iter_frames(path))
    n = len(everything)
    numbers = [n - 1, 0, 1, n // 3, n // 2, n - 2, 1]  # any order, repeats allowed
    for number, frame in zip(numbers, frames_at(path, numbers, method=method), strict=True):
        np.testing.assert_array_equal(frame, everything[number], err_msg=f"{name} frame {number}")
    # Within the range the runner decodes: frame 0 is frame `first`.
    first, stop = 3, n - 2
    source = VideoFrames(path, first, stop)
    assert source.count() == stop - first == sum(1 for _ in source())
    picks = [0, 1, (stop - first) // 2, stop - first - 1]
    for number, frame in zip(picks, frames_at(path, picks, first, stop, method=method), strict=True):
        np.testing.assert_array_equal(frame, everything[first + number], err_msg=f"{name} frame {first + number}")
    with pytest.raises(IndexError):
        frames_at(path, [stop - first], first, stop)


@pytest.mark.parametrize("name", ["base", "rotated", "late", "offset", "vfr"])
def test_keyframes_read_alone_are_the_frames_decoding_in_order_gives(seek_clips, name, monkeypatch):
    """The probe's frames are keyframes where it can: one pass that decodes keyframes only gives each exactly as
    decoding every frame does, in a stream with B-frames, rotated, starting after its audio or with timestamps that
    start 10 s in, and "auto" takes that pass (no seek, no whole pass). Where the decoder gives some keyframes other
    times (the variable-frame-rate clip), the time check refuses them and they are read another way: never another
    frame."""
    import pipeline.media.decode as decode
    from pipeline.media.decode import InexactSeek, frame_times, frames_at

    path = seek_clips[name]
    everything = list(iter_frames(path))
    keyframes = list(frame_times(probe(path)).keyframes)
    assert len(keyframes) >= 3, f"{name} needs keyframes after the first"
    numbers = keyframes[::-1] + keyframes[1:2]  # any order, repeats allowed
    other_ways = []  # seeks and whole passes "auto" made
    for way in ("_seek_frame", "_select_frames"):
        original = getattr(decode, way)
        monkeypatch.setattr(decode, way, lambda *args, way=way, original=original: other_ways.append(way)
                            or original(*args))
    for number, frame in zip(numbers, frames_at(path, numbers), strict=True):
        np.testing.assert_array_equal(frame, everything[number], err_msg=f"{name} keyframe {number}")
    assert name == "vfr" or not other_ways, f"{name}: read by {other_ways}"
    try:
        alone = frames_at(path, numbers, method="keyframes")
    except InexactSeek:
        assert name == "vfr", f"{name}: its keyframes should decode alone"
    else:
        for number, frame in zip(numbers, alone, strict=True):
            np.testing.assert_array_equal(frame, everything[number], err_msg=f"{name} keyframe {number} alone")
    with pytest.raises(ValueError, match="not keyframes"):
        frames_at(path, [keyframes[1] + 1], method="keyframes")


def test_sample_clip_frames_reached_by_seeking_are_the_decoded_frames():
    if not SAMPLE.exists():
        pytest.skip("../shared sample clip not present")
    from pipeline.media.decode import frame_times, frames_at

    times = frame_times(probe(SAMPLE))
    assert len(times.times) == 230 and times.keyframes == (0, 60, 120, 180)
    numbers = [0, 1, 32, 59, 60, 96, 128, 181, 224, 229]  # the first and last, around keyframes, the probe's
    wanted = {}
    for number, frame in enumerate(iter_frames(SAMPLE)):  # keeps only the wanted frames: 230 would take 1.2 GB
        if number in numbers or number in (120, 180):
            wanted[number] = frame
    for number, frame in zip(numbers, frames_at(SAMPLE, numbers, times=times), strict=True):
        np.testing.assert_array_equal(frame, wanted[number], err_msg=f"frame {number}")
    keyframes = [0, 60, 120, 180]  # what the input size probe reads: one pass over the keyframes alone
    for number, frame in zip(keyframes, frames_at(SAMPLE, keyframes, times=times, method="keyframes"), strict=True):
        np.testing.assert_array_equal(frame, wanted[number], err_msg=f"keyframe {number}")


def test_files_where_seeking_cannot_be_trusted_say_so_and_are_read_in_order(seek_clips, caplog):
    from pipeline.media.decode import FrameTimes, InexactSeek, VideoFrames, frame_times, frames_at

    source = VideoFrames(seek_clips["no_timestamps"])
    with caplog.at_level("INFO", logger="pipeline.media.decode"):
        assert source.count() is None and source.frames_at([0, 5]) is None
    assert "cannot seek to single frames exactly (some packets have no timestamp)" in caplog.text
    assert "decoded in order instead" in caplog.text
    assert sum(1 for _ in source()) == 30  # reading in order still works
    caplog.clear()
    with caplog.at_level("INFO", logger="pipeline.media.decode"):
        assert VideoFrames(seek_clips["base"], first=20).count() is None  # the clip has 12 frames
    assert "no frame from frame 20 on among its 12 packets" in caplog.text
    # A seek that gives another frame than the packets promise is caught: here the packet list lacks frame 5.
    times = frame_times(probe(seek_clips["base"]))
    gap = FrameTimes(times.times[:5] + times.times[6:], times.keyframes)
    with pytest.raises(InexactSeek, match="seeking to frame 5"):
        frames_at(seek_clips["base"], [5], times=gap, method="seek")


def test_frames_decoded_at_a_size_are_the_upright_frames_scaled(clips):
    """`size` scales in ffmpeg, after the rotation and the frame range: the renderer's frames come at the size it
    draws them, close to the full frames shrunk by an area average."""
    import cv2

    full = list(iter_frames(clips["rotated"], start=2, end=9))  # upright: 90x160
    small = list(iter_frames(clips["rotated"], start=2, end=9, size=(45, 80)))
    assert len(small) == len(full) == 7 and small[0].shape == (80, 45, 3) and small[0].dtype == np.uint8
    for a, b in zip(small, full, strict=True):
        shrunk = cv2.resize(b, (45, 80), interpolation=cv2.INTER_AREA)
        assert np.abs(a.astype(int) - shrunk).mean() < 4  # testsrc's sharp edges: different filters, same picture
    with pytest.raises(ValueError, match="frame size must be positive"):
        next(iter_frames(clips["base"], size=(0, 10)))


def test_prefetched_seeks_give_the_frames_seeking_gives_and_other_numbers_still_work(seek_clips):
    """`VideoFrames.prefetch` reads the probe's frames in the background while the detector loads; frames_at of the
    same numbers returns them, other numbers are read as before, and a file that cannot seek still says None."""
    from pipeline.media.decode import VideoFrames

    path = seek_clips["late"]
    everything = list(iter_frames(path, 2, 25))
    source = VideoFrames(path, 2, 25)
    picked = []
    source.prefetch(lambda total, keyframes: picked.append((total, keyframes)) or [0, total // 2, total - 1])
    frames = source.frames_at([0, 11, 22])
    assert picked == [(23, source.keyframes())] and source.keyframes() == [5, 12, 19]  # -g 7, from frame 2 on
    for number, frame in zip([0, 11, 22], frames, strict=True):
        np.testing.assert_array_equal(frame, everything[number])
    source.prefetch(lambda total, keyframes: [1, 2])  # a prefetch of other numbers is read again, rightly
    np.testing.assert_array_equal(source.frames_at([3])[0], everything[3])
    unseekable = VideoFrames(seek_clips["no_timestamps"])
    unseekable.prefetch(lambda total, keyframes: [0])
    assert unseekable.frames_at([0]) is None and unseekable.count() is None


def test_a_read_ahead_is_the_first_iterator_at_its_size_and_an_unused_one_ends_its_ffmpeg(clips,
                                                                                           decoders_started):
    """`VideoFrames.read_ahead` starts decoding before anyone iterates (the demo's start-up); the first `at_size`
    iterator of that size takes those frames, the same as a fresh decode; `close` ends one nobody took."""
    from pipeline.media.decode import VideoFrames

    started = decoders_started
    expected = list(iter_frames(clips["rotated"], 1, 10, size=(46, 80)))
    started.clear()
    source = VideoFrames(clips["rotated"], 1, 10)
    source.read_ahead((46, 80), depth=3)
    got = list(source.at_size((46, 80))())
    assert len(started) == 1 and len(got) == len(expected) == 9
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(list(source.at_size((46, 80))())) == 9 and len(started) == 2  # a second iterator decodes again
    unused = VideoFrames(clips["base"])
    unused.read_ahead((80, 45), depth=1)
    unused.close()
    assert len(started) == 3 and started[2].returncode is not None
    seeking = VideoFrames(clips["base"])
    seeking.prefetch(lambda total, keyframes: [0])
    seeking.close()  # also drops prefetched frames nobody asked for: asked for again, they are read again
    assert seeking._prefetch is None and len(seeking.frames_at([0])) == 1
