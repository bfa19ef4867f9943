"""End-to-end tests of `python demo.py`: real detector (the bundled yolo11n-pose), real encoder, small clips made here
from the photographs Ultralytics ships, and the real sample clip from ../shared."""
from __future__ import annotations

import functools
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.geometry import DEMO_CAMERA_TO_WORLD, camera_to_world
from pipeline.lifting import save_lifter_checkpoint
from pipeline.media.encode import VideoWriter
from pipeline.media.ffmpeg import count_frames, ffmpeg_exe, probe
from pipeline.poseformerv2 import PoseFormerV2, PoseFormerV2Config

REPO = Path(__file__).resolve().parents[1]
SHIPPED_LIFTER = REPO / "weights" / "poseformerv2_mocap_27_3_3.safetensors"
ULTRALYTICS_ASSETS = Path(__import__("ultralytics").__file__).parent / "assets"


def _photo(name: str) -> np.ndarray:
    image = cv2.imread(str(ULTRALYTICS_ASSETS / name))
    assert image is not None, f"Ultralytics no longer ships assets/{name}"
    return image


def _write_clip(path: Path, frames: list[np.ndarray], fps: float = 25, audio: bool = False) -> Path:
    """Write frames as an H.264 mp4, with a sine tone as its audio track when asked."""
    source = None
    if audio:
        source = path.with_suffix(".tone.m4a")
        subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", "sine=frequency=440:duration=5",
                        "-c:a", "aac", str(source)], check=True)
    h, w = frames[0].shape[:2]
    with VideoWriter(path, (w, h), fps, frame_count=len(frames), audio_source=source) as writer:
        for frame in frames:
            writer.write(frame)
    if source:
        source.unlink()
    return path


def _panning(photo: np.ndarray, count: int, size: tuple[int, int], blank_first: int = 0) -> list[np.ndarray]:
    """`count` crops of `size` (w, h) sliding across the photo; the first `blank_first` frames are black (nobody)."""
    w, h = size
    scale = max(w / photo.shape[1], h / photo.shape[0]) * 1.15
    big = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    xs = np.linspace(0, big.shape[1] - w, count).astype(int)
    frames = [np.ascontiguousarray(big[: h, x: x + w]) for x in xs]
    for i in range(blank_first):
        frames[i] = np.zeros_like(frames[i])
    return frames


@pytest.fixture(scope="module")
def tiny_lifter(tmp_path_factory) -> Path:
    """A small randomly initialised PoseFormerV2 (T=27, f=3, n=3) saved as safetensors with its config."""
    torch.manual_seed(0)
    model = PoseFormerV2(PoseFormerV2Config(frames=27, frames_kept=3, coeffs_kept=3, embed_dim_ratio=16, depth=2))
    return save_lifter_checkpoint(tmp_path_factory.mktemp("weights") / "tiny_27_3_3.safetensors", model)


@pytest.fixture(scope="module")
def second_lifter(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    model = PoseFormerV2(PoseFormerV2Config(frames=9, frames_kept=1, coeffs_kept=3, embed_dim_ratio=16, depth=1))
    return save_lifter_checkpoint(tmp_path_factory.mktemp("weights2") / "other_9_1_3.safetensors", model)


@pytest.fixture(scope="module")
def clip_with_audio(tmp_path_factory) -> Path:
    """20 frames at 25 fps, 480x270, two people; the first 3 frames show nobody; an AAC tone."""
    frames = _panning(_photo("zidane.jpg"), 20, (480, 270), blank_first=3)
    return _write_clip(tmp_path_factory.mktemp("clips") / "two people.mp4", frames, fps=25, audio=True)


def _run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_end_to_end_with_audio_and_empty_first_frames(tmp_path, capsys, clip_with_audio, tiny_lifter):
    out_root = tmp_path / "out"
    code, out, err = _run(capsys, "--video", clip_with_audio, "--checkpoint", tiny_lifter, "--out", out_root, "--quiet")
    assert code == 0, err
    folder = out_root / "two people"
    video = folder / "two people_pose3d.mp4"
    assert sorted(p.name for p in folder.iterdir()) == sorted(["cache", "keypoints.npz", "run.json", video.name,
                                                              "two people.bvh", "two people_viewer.html"])
    # Exactly the input's frames and frame rate, H.264 yuv420p, the audio copied in.
    media = probe(video)
    assert (media.codec, media.pix_fmt) == ("h264", "yuv420p")
    assert media.fps == pytest.approx(25) and media.audio_codec == "aac"
    assert count_frames(video) == 20
    assert media.width % 2 == 0 and media.height == 270 - 270 % 2

    with np.load(folder / "keypoints.npz") as npz:
        data = {k: npz[k] for k in npz.files}
    assert data["keypoints_2d"].shape == (20, 17, 2) and data["scores_2d"].shape == (20, 17)
    assert data["pose3d_camera"].shape == (1, 20, 17, 3) and data["pose3d_world"].shape == (1, 20, 17, 3)
    assert np.isfinite(data["pose3d_camera"]).all() and np.isfinite(data["keypoints_2d"]).all()
    np.testing.assert_array_equal(data["pose3d_camera"][:, :, 0], 0)  # root-relative
    assert data["pose3d_world"][..., 2].min(axis=-1) == pytest.approx(0, abs=1e-5)  # lowest joint on the ground
    # Nobody in the first three frames: kept, filled, and marked invalid; the person is found afterwards.
    assert not data["valid"][:3].any() and data["valid"][3:].mean() > 0.8
    assert (data["scores_2d"][:3] == 0).all()
    assert list(data["frame_index"]) == list(range(20))
    assert float(data["fps"]) == pytest.approx(25) and list(data["image_size"]) == [480, 270]
    assert list(data["joint_names"])[0] == "pelvis" and data["joint_parents"][0] == -1
    assert list(data["checkpoints"]) == [tiny_lifter.name]

    run = json.loads((folder / "run.json").read_text())
    assert run["video"]["frames"] == 20 and run["video"]["has_audio"] is True
    assert {"pose2d", "lift", "render_encode"} <= set(run["timings"])
    assert run["versions"]["torch"] == metadata.version("torch") and run["versions"]["numpy"] == np.__version__
    assert out.strip().startswith("two people.mp4: 20 frames")
    # The random tiny lifter's poses are too degenerate to place: the clip is still done, pinned, and says why.
    assert run["trajectory"]["error"].startswith("no trajectory") and "trajectory_camera" not in data

    # Same settings again: skipped. Another view: re-rendered from the cached 2D result, no detection.
    code, out, err = _run(capsys, "--video", clip_with_audio, "--checkpoint", tiny_lifter, "--out", out_root, "--quiet")
    assert code == 0 and "skipped" in out
    code, out, err = _run(capsys, "--video", clip_with_audio, "--checkpoint", tiny_lifter, "--out", out_root,
                          "--quiet", "--azim", "10")
    assert code == 0, err
    run = json.loads((folder / "run.json").read_text())
    assert "cached" in run["timings"]["pose2d"] and run["settings"]["azim"] == 10
    assert len(list((folder / "cache").iterdir())) == 1


def test_two_checkpoints_side_by_side_and_disagreement(tmp_path, capsys, clip_with_audio, tiny_lifter, second_lifter):
    code, out, err = _run(capsys, "--video", clip_with_audio, "--checkpoint", tiny_lifter, "--checkpoint",
                          second_lifter, "--out", tmp_path, "--quiet", "--start", "5", "--end", "17")
    assert code == 0, err
    folder = tmp_path / "two people"
    with np.load(folder / "keypoints.npz") as npz:
        assert npz["pose3d_camera"].shape == (2, 12, 17, 3)
        assert list(npz["frame_index"]) == list(range(5, 17))
        distance = np.linalg.norm(npz["pose3d_camera"][1] - npz["pose3d_camera"][0], axis=-1).mean() * 1000
        spread, valid = npz["flip_disagreement_mm"], npz["valid"]
    assert spread.shape == (2, 12) and spread.dtype == np.float32 and (spread >= 0).all() and spread.max() > 0
    run = json.loads((folder / "run.json").read_text())
    assert run["checkpoint_disagreement_mm"][second_lifter.name] == pytest.approx(distance, abs=0.1)
    record = run["people"][0]["flip_disagreement_mm"]  # per checkpoint, over the frames the person was detected in
    assert [r["median"] for r in record] == pytest.approx(np.median(spread[:, valid], axis=1), abs=0.051)
    assert all(r["p90"] >= r["median"] for r in record)
    assert f"{second_lifter.name} {distance:.1f} mm" in out
    media = probe(folder / "two people_pose3d.mp4")
    assert count_frames(folder / "two people_pose3d.mp4") == 12
    assert media.width > media.height * 2  # the input panel plus two square 3D panels


def test_the_first_clip_is_read_ahead_while_the_models_load_unless_its_2d_stage_is_cached(tmp_path, capsys,
                                                                                           clip_with_audio,
                                                                                           tiny_lifter):
    """Before the models load, the first clip's probe frames and first detector frames start decoding
    (`early_frame_source`); a clip whose 2D stage is cached already is not read."""
    from pipeline.app.runner import early_frame_source
    from pipeline.cli import build_parser, config_from_args

    config = config_from_args(build_parser().parse_args(["--video", str(clip_with_audio), "--checkpoint",
                                                         str(tiny_lifter), "--out", str(tmp_path), "--quiet"]))
    source = early_frame_source(clip_with_audio, config)
    assert source is not None and source.count() == 20
    source.close()
    code, _, err = _run(capsys, "--video", clip_with_audio, "--checkpoint", tiny_lifter, "--out", tmp_path, "--quiet",
                        "--no-render")
    assert code == 0, err
    assert early_frame_source(clip_with_audio, config) is None  # its 2D stage is in the cache now


def test_no_render_and_portrait_clip(tmp_path, capsys, tiny_lifter):
    clip = _write_clip(tmp_path / "portrait.mp4", _panning(_photo("bus.jpg"), 8, (270, 360)), fps=30)
    code, out, err = _run(capsys, "--video", clip, "--checkpoint", tiny_lifter, "--out", tmp_path / "out", "--quiet",
                          "--no-render")
    assert code == 0, err
    folder = tmp_path / "out" / "portrait"
    assert sorted(p.name for p in folder.iterdir()) == ["cache", "keypoints.npz", "portrait.bvh",
                                                        "portrait_viewer.html", "run.json"]
    with np.load(folder / "keypoints.npz") as npz:
        assert npz["keypoints_2d"].shape == (8, 17, 2) and list(npz["image_size"]) == [270, 360]
        assert npz["valid"].mean() >= 0.75


def _assert_clean_failure(code: int, err: str, out_root: Path, *needles: str) -> None:
    assert code != 0
    lines = _error_lines(err)
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    leftovers = [p for p in out_root.rglob("*") if p.suffix in (".mp4", ".npz", ".json")] if out_root.exists() else []
    assert not [p for p in leftovers if "cache" not in p.parts], leftovers


@pytest.mark.parametrize("case", ["missing", "text", "empty", "truncated", "nobody"])
def test_bad_videos_fail_with_one_line(tmp_path, capsys, tiny_lifter, clip_with_audio, case):
    path = tmp_path / f"{case}.mp4"
    if case == "text":
        path.write_text("this is not a video\n")
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "truncated":
        data = clip_with_audio.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif case == "nobody":
        _write_clip(path, [np.full((120, 160, 3), 90 + i, np.uint8) for i in range(6)])
    out_root = tmp_path / "out"
    code, out, err = _run(capsys, "--video", path, "--checkpoint", tiny_lifter, "--out", out_root)
    expected = {"missing": ["not found", path.name], "text": ["not a readable video", path.name],
                "empty": ["empty", path.name], "nobody": ["no person"],
                # A third of the file decodes to its first, empty frames only: nobody in the 3 frames there are.
                "truncated": ["no person detected in any of the 3 frames"]}[case]
    _assert_clean_failure(code, err, out_root, *expected)


def test_bad_weights_fail_with_one_line(tmp_path, capsys, clip_with_audio, tiny_lifter):
    junk = tmp_path / "27_243_45.2.bin"
    torch.save({"state_dict": {"conv.weight": torch.zeros(3, 3)}}, junk)
    code, _, err = _run(capsys, "--video", clip_with_audio, "--checkpoint", junk, "--out", tmp_path / "out")
    _assert_clean_failure(code, err, tmp_path / "out", "PoseFormerV2")
    code, _, err = _run(capsys, "--video", clip_with_audio, "--checkpoint", tmp_path / "absent.bin",
                        "--out", tmp_path / "out")
    _assert_clean_failure(code, err, tmp_path / "out", "not found")
    code, _, err = _run(capsys, "--video", clip_with_audio, "--checkpoint", tiny_lifter, "--person", "99",
                        "--out", tmp_path / "out")
    _assert_clean_failure(code, err, tmp_path / "out", "99")


def test_command_line_entry_point(tmp_path):
    """The real `python demo.py`: --help documents the flags; a bad input exits non-zero with one stderr line."""
    help_text = subprocess.run([sys.executable, str(REPO / "demo.py"), "--help"], capture_output=True, text=True,
                               cwd=tmp_path, check=True).stdout
    for flag in ("--video", "--checkpoint", "--frames", "--device", "--detector", "--keypoints", "--person",
                 "--all-people", "--start", "--end", "--out", "--quiet", "--elev", "--azim", "--no-render", "--force"):
        assert flag in help_text
    proc = subprocess.run([sys.executable, str(REPO / "demo.py"), "--video", str(tmp_path / "nope.mp4")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: video not found")


@pytest.mark.slow
def test_sample_clip_end_to_end(tmp_path, capsys, shared_dir, tiny_lifter):
    """The real 1768x994 sample: every frame in the output, at 30 fps, with its audio; the jumper is followed."""
    clip = shared_dir / "data" / "videos" / "sports2d_demo.mp4"
    code, out, err = _run(capsys, "--video", clip, "--checkpoint", tiny_lifter, "--out", tmp_path, "--quiet")
    assert code == 0, err
    video = tmp_path / "sports2d_demo" / "sports2d_demo_pose3d.mp4"
    media = probe(video)
    assert count_frames(video) == 230 and media.fps == pytest.approx(30) and media.audio_codec is not None
    with np.load(tmp_path / "sports2d_demo" / "keypoints.npz") as npz:
        assert npz["keypoints_2d"].shape == (230, 17, 2)
        # The jumper stands on the box on the left half of the picture at the start (x < 884 of 1768).
        assert npz["keypoints_2d"][:30, :, 0].mean() < 884
        keypoints, valid = npz["keypoints_2d"].astype(np.float64), npz["valid"]
    _the_same_2d_turned_sideways_or_upside_down_lifts_as_upright(keypoints, valid, 1768, 994)


def _the_same_2d_turned_sideways_or_upside_down_lifts_as_upright(keypoints, valid, width, height):
    """The jumper's real 2D as a camera turned 90 or 180 degrees would see it (no rotation metadata), lifted by the
    shipped lifter as demo.py lifts: 3D within 12.4 / 6.8 mm (P-MPJPE, detected frames) of the upright picture's,
    against 133.4 / 162.9 mm with --no-upright (2 December, version 6). Only the lifting is compared: on the turned
    video itself the detector follows the jumper in fewer frames."""
    from pipeline.lifting import load_lifter
    from pipeline.motion.trajectory import focal_length_px
    from pipeline.training.metrics import p_mpjpe
    from pipeline.virtual_camera import lift_aimed

    lifter = load_lifter(SHIPPED_LIFTER, device="cpu")
    upright = lift_aimed(lifter, keypoints.astype(np.float32), width, height, focal_length_px(width, height))
    x, y = keypoints[..., 0], keypoints[..., 1]
    turned = {"sideways": (np.stack([height - 1 - y, x], axis=-1), height, width),  # 90 degrees clockwise
              "upside down": (np.stack([width - 1 - x, height - 1 - y], axis=-1), width, height)}
    for name, (points, w, h) in turned.items():
        lifted = {upright_turn: lift_aimed(lifter, points.astype(np.float32), w, h, focal_length_px(w, h),
                                           upright=upright_turn) for upright_turn in (True, False)}
        error_mm = {k: 1000 * p_mpjpe(v[valid], upright[valid]) for k, v in lifted.items()}
        assert error_mm[True] < 25.0 and error_mm[False] > 100.0, (name, error_mm)


def test_all_people(tmp_path, capsys, tiny_lifter):
    clip = _write_clip(tmp_path / "pair.mp4", _panning(_photo("zidane.jpg"), 12, (480, 270)), fps=24)
    code, out, err = _run(capsys, "--video", clip, "--checkpoint", tiny_lifter, "--out", tmp_path, "--quiet",
                          "--all-people")
    assert code == 0, err
    run = json.loads((tmp_path / "pair" / "run.json").read_text())
    assert len(run["people"]) == 2, run["tracks"]
    other = run["people"][1]["track_id"]
    assert f"keypoints_person{other}.npz" in run["outputs"]
    with np.load(tmp_path / "pair" / f"keypoints_person{other}.npz") as npz:
        assert int(npz["track_id"]) == other and npz["pose3d_world"].shape == (1, 12, 17, 3)
    with np.load(tmp_path / "pair" / "keypoints.npz") as npz:
        main_x = npz["keypoints_2d"][:, 0, 0].mean()
    assert count_frames(tmp_path / "pair" / "pair_pose3d.mp4") == 12
    assert main_x > 0


def test_bare_names_folders_and_unusual_file_names(tmp_path, capsys, monkeypatch, clip_with_audio, tiny_lifter):
    """A bare name is looked up in videos/; no --video processes every clip there; one bad clip does not stop the
    others (exit code 1); names with spaces, dots and non-ASCII characters work."""
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "Zoë's clip.v2.mp4").write_bytes(clip_with_audio.read_bytes())
    (videos / "broken.mov").write_text("not a video")
    (videos / "notes.txt").write_text("ignored: not a video suffix")
    monkeypatch.setattr("pipeline.app.inputs.VIDEOS_DIR", videos)
    out_root = tmp_path / "out"

    code, out, err = _run(capsys, "--video", "Zoë's clip.v2.mp4", "--checkpoint", tiny_lifter, "--out", out_root,
                          "--quiet", "--no-render")
    assert code == 0, err
    assert (out_root / "Zoë's clip.v2" / "keypoints.npz").is_file()

    code, out, err = _run(capsys, "--checkpoint", tiny_lifter, "--out", out_root, "--quiet", "--no-render")
    assert code == 1
    assert "skipped" in out  # the clip done above
    assert _error_lines(err) == [line for line in _error_lines(err) if line.startswith("error: broken.mov:")]
    assert len(_error_lines(err)) == 1
    assert not (out_root / "broken").exists()


def test_ctrl_c_leaves_no_partial_output(tmp_path, clip_with_audio, tiny_lifter):
    """SIGINT while rendering: exit code 130, one line on stderr, no half-written video, npz or json."""
    import signal
    import time

    frames = _panning(_photo("zidane.jpg"), 120, (480, 270))
    clip = _write_clip(tmp_path / "long.mp4", frames, fps=25)
    out_root = tmp_path / "out"
    # Cache the 2D stage first so that the interrupted run is busy rendering when the signal arrives.
    assert main(["--video", str(clip), "--checkpoint", str(tiny_lifter), "--out", str(out_root), "--quiet",
                 "--no-render"]) == 0
    for name in ("keypoints.npz", "run.json"):
        (out_root / "long" / name).unlink()
    # SIGINT as in a terminal even when the tests run as a background job (which inherits SIGINT ignored).
    proc = subprocess.Popen([sys.executable, str(REPO / "demo.py"), "--video", str(clip), "--checkpoint",
                             str(tiny_lifter), "--out", str(out_root)], stderr=subprocess.PIPE, text=True,
                            preexec_fn=functools.partial(signal.signal, signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300  # generous: a busy shared machine loads the models slowly
    partial_video = out_root / "long" / ".long_pose3d.partial.mp4"
    while time.monotonic() < deadline and not partial_video.exists() and proc.poll() is None:
        time.sleep(0.02)
    assert partial_video.exists(), "the encoder never started"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted")
    left = sorted(p.name for p in (out_root / "long").iterdir())
    # keypoints.npz and the BVH are written before the video starts; the video never landed, nor did run.json.
    assert left == ["cache", "keypoints.npz", "long.bvh", "long_viewer.html"], left



def test_ctrl_c_while_starting_up_prints_one_line_not_a_traceback(tmp_path):
    """SIGINT 0.2, 0.5 and 1 s in, while demo.py imports PyTorch once its flags have parsed (~3 s here): exit code 130,
    one line on stderr, nothing written."""
    import signal
    import time

    clip = _write_clip(tmp_path / "clip.mp4", _panning(_photo("zidane.jpg"), 10, (320, 180)), fps=25)
    for delay in (0.2, 0.5, 1.0):
        out_root = tmp_path / f"out_{delay}"
        proc = subprocess.Popen([sys.executable, str(REPO / "demo.py"), "--video", str(clip), "--out", str(out_root)],
                                stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                preexec_fn=functools.partial(signal.signal, signal.SIGINT, signal.SIG_DFL))
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert err.strip().splitlines() == ["interrupted: no partial output was kept"], err
        assert not out_root.exists()


def test_help_and_flag_errors_answer_before_the_networks_are_imported():
    """--help, a mistyped flag and a missing video need no PyTorch: the CLI imports the stages only after that."""
    code = ("import sys; from pipeline.cli import main\n"
            "for argv in (['--help'], ['--bogus'], ['--video', 'no_such_clip.mp4']):\n"
            "    try:\n"
            "        code = main(argv)\n"
            "    except SystemExit as exc:\n"
            "        code = exc.code\n"
            "    print(argv[0], code, file=sys.stderr)\n"
            "print('heavy imports:', sorted({'torch', 'cv2', 'ultralytics'} & set(sys.modules)), file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    lines = result.stderr.splitlines()
    assert "--help 0" in lines and "--bogus 2" in lines and "--video 2" in lines, result.stderr
    assert any(line.startswith("error: video not found: no_such_clip.mp4") for line in lines), result.stderr
    assert lines[-1] == "heavy imports: []", result.stderr




def test_shipped_lifter_loads_offline_and_is_the_default(tmp_path, capsys, clip_with_audio):
    """The project's own weights ship in the repository, load through load_lifter, and are used without --checkpoint;
    their 3D poses of a real person have plausible bone lengths, constant and symmetric unless --bones free."""
    from pipeline.detection import sha256_of
    from pipeline.evaluation.scores import bone_length_cv
    from pipeline.lifting import load_lifter
    from pipeline.skeleton import H36M

    row = next(line for line in (REPO / "weights" / "README.md").read_text().splitlines()
               if line.startswith(f"| `{SHIPPED_LIFTER.name}`"))
    # The file is the one weights/README.md documents (its hash cell starts with the current file's hash).
    assert row.split("|")[-2].strip().startswith(f"`{sha256_of(SHIPPED_LIFTER)}`")
    lifter = load_lifter(SHIPPED_LIFTER)
    assert (lifter.frames, lifter.config.frames_kept, lifter.config.coeffs_kept) == (27, 3, 3)

    code, out, err = _run(capsys, "--video", clip_with_audio, "--out", tmp_path, "--quiet", "--no-render")
    assert code == 0, err
    with np.load(tmp_path / "two people" / "keypoints.npz") as npz:
        assert list(npz["checkpoints"]) == [SHIPPED_LIFTER.name]
        pose = npz["pose3d_camera"][0][npz["valid"]]
    bones = {(H36M.joints[p], H36M.joints[c]): np.linalg.norm(pose[:, c] - pose[:, p], axis=-1).mean()
             for p, c in H36M.bones}
    thigh_r, thigh_l = bones[("right_hip", "right_knee")], bones[("left_hip", "left_knee")]
    shin_r, shin_l = bones[("right_knee", "right_ankle")], bones[("left_knee", "left_ankle")]
    assert 0.25 < thigh_r < 0.6 and 0.25 < shin_r < 0.6  # metres: an adult's thigh and shin
    assert abs(thigh_r - thigh_l) / thigh_r < 1e-5 and abs(shin_r - shin_l) / shin_r < 1e-5  # rigid bones (default)
    assert bone_length_cv(pose) < 1e-5

    # --bones free: the network's own poses (2D from the cache), bone lengths changing, the same bone directions.
    code, out, err = _run(capsys, "--video", clip_with_audio, "--out", tmp_path, "--quiet", "--no-render",
                          "--bones", "free")
    assert code == 0, err
    with np.load(tmp_path / "two people" / "keypoints.npz") as npz:
        free = npz["pose3d_camera"][0][npz["valid"]]
    assert bone_length_cv(free) > 0.003  # the network's own bones vary: 0.008 with version 3 on this clip
    parents, children = np.array(H36M.bones).T
    a, b = pose[:, children] - pose[:, parents], free[:, children] - free[:, parents]
    cosine = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cosine.min() > 1 - 1e-4


def test_trajectory_and_bvh_outputs_and_the_switches_that_turn_them_off(tmp_path, capsys, clip_with_audio):
    """Each checkpoint gets a pelvis trajectory in keypoints.npz and a BVH with the clip's frames and rate;
    --no-trajectory pins the skeleton (no trajectory arrays) and --no-bvh writes no BVH."""
    shipped = sorted((Path(__file__).resolve().parents[1] / "weights").glob("poseformerv2_mocap_*.safetensors"))[-1]
    second = tmp_path / "other_9_1_3.safetensors"
    second.write_bytes(shipped.read_bytes())
    out_root = tmp_path / "out"
    code, out, err = _run(capsys, "--video", clip_with_audio, "--checkpoint", shipped, "--checkpoint",
                          second, "--out", out_root, "--quiet", "--no-render", "--fov", "60")
    assert code == 0, err
    folder = out_root / "two people"
    with np.load(folder / "keypoints.npz") as npz:
        trajectory, world = npz["trajectory_camera"], npz["trajectory_world"]
        assert trajectory.shape == (2, 20, 3) and world.shape == (2, 20, 3) and np.isfinite(trajectory).all()
        assert (trajectory[..., 2] > 0).all()  # in front of the camera
        width, height = npz["image_size"]
        assert float(npz["focal_px"]) == pytest.approx(np.hypot(width, height) / 2 / np.tan(np.radians(30)))
    run = json.loads((folder / "run.json").read_text())
    assert run["trajectory"]["focal_source"] == "fov"
    # The world view is levelled with the camera tilt estimated from the people; keypoints.npz says how.
    with np.load(folder / "keypoints.npz") as npz:
        rotation = npz["camera_to_world"]
        assert rotation.shape == (4,) and run["world"]["rotation"] == pytest.approx(rotation.tolist(), abs=1e-6)
        world = camera_to_world(npz["pose3d_camera"], rotation)
        world[..., 2] -= world[..., 2].min(axis=-1, keepdims=True)  # each frame's lowest joint on the ground
        np.testing.assert_allclose(npz["pose3d_world"], world, atol=1e-5)
    assert run["world"]["levelled"] == (not np.allclose(rotation, DEMO_CAMERA_TO_WORLD))
    assert run["world"]["levelled"] or run["world"]["reason"]
    with np.load(folder / "keypoints.npz") as npz:  # the trajectory is turned by the same rotation
        shift = npz["trajectory_world"] - camera_to_world(npz["trajectory_camera"], rotation)
        np.testing.assert_allclose(shift - shift[:, :1], 0, atol=1e-4)  # one constant shift per checkpoint
        np.testing.assert_allclose(shift[..., :2], 0, atol=1e-4)  # and only upwards (the ground)
    for name in ("two people.bvh", "two people_other_9_1_3.bvh"):
        text = (folder / name).read_text()
        assert "ROOT pelvis" in text and "Frames: 20" in text and "Frame Time: 0.040000" in text
        assert name in run["outputs"]

    code, out, err = _run(capsys, "--video", clip_with_audio, "--checkpoint", shipped, "--out", out_root,
                          "--quiet", "--no-render", "--no-trajectory", "--no-bvh", "--no-level")
    assert code == 0 and "skipped" not in out, err  # other settings: not skipped
    with np.load(folder / "keypoints.npz") as npz:
        assert "trajectory_camera" not in npz.files
        np.testing.assert_allclose(npz["pose3d_world"][..., 2].min(axis=-1), 0, atol=1e-5)  # pinned, as before
        np.testing.assert_array_equal(npz["camera_to_world"], DEMO_CAMERA_TO_WORLD)  # --no-level: the fixed tilt
    run = json.loads((folder / "run.json").read_text())
    assert run["world"] == {**run["world"], "levelled": False, "reason": "turned off (--no-level)"}
    assert run["trajectory"] is None and not any(name.endswith(".bvh") for name in run["outputs"])


def test_a_3dhp_checkpoint_runs_beside_a_human36m_one_and_the_outputs_say_which_is_which(tmp_path, capsys,
                                                                                          clip_with_audio, tiny_lifter):
    torch.manual_seed(2)
    model = PoseFormerV2(PoseFormerV2Config(frames=9, frames_kept=3, coeffs_kept=3, embed_dim_ratio=16, depth=1))
    hp = save_lifter_checkpoint(tmp_path / "tiny_3dhp.pth", model, skeleton="mpi_inf_3dhp")
    code, out, err = _run(capsys, "--video", clip_with_audio, "--checkpoint", tiny_lifter, "--checkpoint", hp,
                          "--out", tmp_path / "out", "--quiet", "--no-render")
    assert code == 0, err
    with np.load(tmp_path / "out" / "two people" / "keypoints.npz") as npz:
        lifters = json.loads(str(npz["models_json"]))["lifters"]
        assert [(m["skeleton"], m["units"]) for m in lifters] == [("h36m", "m"), ("mpi_inf_3dhp", "mm")]
        poses = npz["pose3d_camera"]
    assert poses.shape == (2, 20, 17, 3)
    np.testing.assert_array_equal(poses[1][:, 0], 0)  # Human3.6M order: the pelvis (joint 0) is the root
    run = json.loads((tmp_path / "out" / "two people" / "run.json").read_text())
    assert run["models"]["lifters"][1]["skeleton"] == "mpi_inf_3dhp"


def test_the_saved_poses_are_lifted_through_the_virtual_camera_unless_turned_off(tmp_path, capsys, clip_with_audio,
                                                                                 tiny_lifter):
    """Default: each person through a virtual camera aimed at their mean position, with the default focal length;
    --no-virtual-camera: the lifter's poses as the camera sees them. Both recorded in run.json."""
    from pipeline.lifting import load_lifter
    from pipeline.motion.trajectory import focal_length_px
    from pipeline.virtual_camera import lift_aimed

    lifter = load_lifter(tiny_lifter, device="cpu")
    saved = {}
    for flag in ([], ["--no-virtual-camera"]):
        out_root = tmp_path / ("plain" if flag else "aimed")
        code, _, err = _run(capsys, "--video", clip_with_audio, "--checkpoint", tiny_lifter, "--out", out_root,
                            "--quiet", "--no-render", "--bones", "free", "--no-trajectory", *flag)
        assert code == 0, err
        folder = out_root / "two people"
        with np.load(folder / "keypoints.npz") as npz:
            saved[bool(flag)] = (npz["pose3d_camera"][0], npz["keypoints_2d"], npz["valid"])
        assert json.loads((folder / "run.json").read_text())["settings"]["virtual_camera"] is not bool(flag)
    code, _, err = _run(capsys, "--video", clip_with_audio, "--checkpoint", tiny_lifter, "--out",
                        tmp_path / "not turned", "--quiet", "--no-render", "--bones", "free", "--no-trajectory",
                        "--no-upright")
    assert code == 0, err
    folder = tmp_path / "not turned" / "two people"
    assert json.loads((folder / "run.json").read_text())["settings"]["upright"] is False
    with np.load(folder / "keypoints.npz") as npz:  # upright people: the roll changes nothing
        np.testing.assert_array_equal(npz["pose3d_camera"][0], saved[False][0])
    poses, keypoints, valid = saved[True]
    np.testing.assert_allclose(poses, lifter.lift(keypoints, 480, 270).camera, atol=1e-5)
    poses, keypoints, valid = saved[False]
    aimed = lift_aimed(lifter, keypoints, 480, 270, focal_length_px(480, 270), frames=np.flatnonzero(valid))
    np.testing.assert_allclose(poses, aimed, atol=1e-5)
    assert np.abs(saved[True][0] - saved[False][0]).max() > 1e-3  # the person is off-centre: it matters


def test_a_120_fps_clip_is_lifted_from_every_second_frame_unless_told_otherwise(tmp_path, capsys, tiny_lifter):
    """Windows of a fast clip span the time the lifter was trained on (pipeline.lifting.window_strides: at 120 fps
    every second frame, and the mean with every fourth); run.json records the strides; --window-stride sets one; a
    stride below 1 is a one-line error."""
    from pipeline.lifting import load_lifter

    lifter = load_lifter(tiny_lifter, device="cpu")
    clip = _write_clip(tmp_path / "fast.mp4", _panning(_photo("bus.jpg"), 16, (270, 360)), fps=120)
    for flag, strides in (([], (2, 4)), (["--window-stride", "1"], (1,))):
        out_root = tmp_path / f"stride{strides[0]}"
        code, _, err = _run(capsys, "--video", clip, "--checkpoint", tiny_lifter, "--out", out_root, "--quiet",
                            "--no-render", "--bones", "free", "--no-trajectory", "--no-virtual-camera", *flag)
        assert code == 0, err
        record = json.loads((out_root / "fast" / "run.json").read_text())
        assert record["video"]["fps"] == pytest.approx(120) and record["window_strides"] == list(strides)
        assert record["settings"]["window_stride"] == (None if not flag else 1)
        with np.load(out_root / "fast" / "keypoints.npz") as npz:
            expected = lifter.lift(npz["keypoints_2d"], 270, 360, stride=strides).camera
            np.testing.assert_allclose(npz["pose3d_camera"][0], expected, atol=1e-5)
    code, _, err = _run(capsys, "--video", clip, "--checkpoint", tiny_lifter, "--out", tmp_path / "bad", "--quiet",
                        "--no-render", "--window-stride", "0")
    _assert_clean_failure(code, err, tmp_path / "bad", "--window-stride", "1 frame or more")


def test_an_empty_videos_folder_says_to_add_clips_or_use_the_sample(tmp_path):
    from pipeline.app.inputs import UserError, resolve_clips

    (tmp_path / "notes.txt").write_text("not a video")
    with pytest.raises(UserError, match=r"no video files in .*; put clips there, or run with --sample"):
        resolve_clips(None, videos_dir=tmp_path)
    with pytest.raises(UserError, match=r"no video files in .*\)$"):  # a folder given by the user: no sample hint
        resolve_clips(tmp_path)


def test_json_outputs_are_strict_json_with_null_for_what_was_not_measured(tmp_path):
    """run.json and the evaluation's --json go through save_json: NaN is not JSON (browsers and most tools refuse
    it), so what was not measured is null, and numpy numbers are plain numbers."""
    from pipeline.app.outputs import save_json

    def refuse(name: str):
        raise AssertionError(f"{name} written")

    path = tmp_path / "out.json"
    save_json(path, {"unscored": float("nan"), "far": [np.inf, -np.inf], "score": np.float32(1.5),
                     "frames": np.int64(3), "array": np.array([[0.25, np.nan]]), "where": Path("a/b")})
    assert json.loads(path.read_text(), parse_constant=refuse) == {
        "unscored": None, "far": [None, None], "score": 1.5, "frames": 3, "array": [[0.25, None]], "where": "a/b"}
