"""Batch mode on Ray (`demo.py --video FOLDER --ray ADDRESS`) against a real Ray cluster on loopback with two
single-CPU workers: the same outputs as the serial run, one line per failed clip, run.json and batch.json saying who
did what, and a re-run that skips the finished clips. Skipped when Ray is not installed."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pipeline.app.inputs import UserError
from pipeline.cli import main
from pipeline.lifting import save_lifter_checkpoint
from pipeline.media.encode import EncoderConfig, VideoWriter
from pipeline.poseformerv2 import PoseFormerV2, PoseFormerV2Config

ULTRALYTICS_ASSETS = Path(__import__("ultralytics").__file__).parent / "assets"
# Keep Ray on 127.0.0.1 on this machine (the driver reads them too) and without a token.
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "ray start exited early"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"the Ray head did not listen on port {port} within {timeout} s")


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A Ray head with 2 CPUs on 127.0.0.1 (`ray start --head --block`, stopped by its pid afterwards, also when a
    test fails); yields its address."""
    port = _free_port()
    command = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
               "--node-ip-address=127.0.0.1", "--num-cpus", "2", "--port", str(port), "--disable-usage-stats",
               "--include-dashboard=false", "--dashboard-port", str(_free_port()),
               "--ray-client-server-port", str(_free_port()), "--dashboard-agent-listen-port", str(_free_port())]
    log = tmp_path_factory.mktemp("ray") / "ray_start.log"
    with pytest.MonkeyPatch.context() as mp, open(log, "w") as log_file:
        for name, value in RAY_ENV.items():
            mp.setenv(name, value)
        ray = pytest.importorskip("ray")
        # Ray reads the first one when it is imported: for a `ray` imported before this fixture, set what it read.
        mp.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", False)
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_for_port(port, proc, timeout=120)
            yield f"127.0.0.1:{port}"
        finally:
            proc.terminate()  # `ray start --block` stops the processes it started
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def tiny_lifter(tmp_path_factory) -> Path:
    """A small randomly initialised PoseFormerV2 (T=27, f=3, n=3) saved as safetensors with its config."""
    torch.manual_seed(0)
    model = PoseFormerV2(PoseFormerV2Config(frames=27, frames_kept=3, coeffs_kept=3, embed_dim_ratio=16, depth=2))
    return save_lifter_checkpoint(tmp_path_factory.mktemp("weights") / "tiny_27_3_3.safetensors", model)


def _write_panning_clip(path: Path, photo: str, count: int, size=(480, 270), fps: float = 25) -> Path:
    """`count` crops of `size` sliding across one of the photographs Ultralytics ships, as an H.264 mp4."""
    image = cv2.imread(str(ULTRALYTICS_ASSETS / photo))
    assert image is not None, f"Ultralytics no longer ships assets/{photo}"
    w, h = size
    scale = max(w / image.shape[1], h / image.shape[0]) * 1.15
    big = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    # The encoder settings are pinned: the bus clip's people are detected in only 2 of its 10 frames, and the
    # demo's own output setting (superfast, crf 23) blurs them below the detector's threshold.
    with VideoWriter(path, size, fps, frame_count=count, config=EncoderConfig(preset="veryfast", crf=20)) as writer:
        for x in np.linspace(0, big.shape[1] - w, count).astype(int):
            writer.write(np.ascontiguousarray(big[:h, x: x + w]))
    return path


@pytest.fixture(scope="module")
def batch_folder(tmp_path_factory) -> Path:
    """Two good clips (12 and 10 frames) and a damaged one (the first third of a good clip's bytes)."""
    folder = tmp_path_factory.mktemp("batch")
    first = _write_panning_clip(folder / "first.mp4", "zidane.jpg", 12)
    _write_panning_clip(folder / "second.mp4", "bus.jpg", 10, fps=30)
    data = first.read_bytes()
    (folder / "damaged.mp4").write_bytes(data[: len(data) // 3])
    return folder


def _run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        return {name: npz[name] for name in npz.files}


def test_ray_batch_matches_the_serial_run_reports_the_damaged_clip_and_resumes(tmp_path, capsys, ray_cluster,
                                                                               batch_folder, tiny_lifter):
    common = ["--video", batch_folder, "--checkpoint", tiny_lifter, "--quiet"]
    code, _, err = _run(capsys, *common, "--out", tmp_path / "serial")
    assert code == 1, err

    out_root = tmp_path / "ray"
    code, out, err = _run(capsys, *common, "--out", out_root, "--ray", ray_cluster)
    assert code == 1, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: damaged.mp4: "), err
    assert not (out_root / "damaged").exists()  # nothing left behind for it
    assert sorted(line.split(":")[0] for line in out.splitlines() if "frames" in line) == ["first.mp4", "second.mp4"]

    for name, frames in (("first", 12), ("second", 10)):
        ours, serial = _arrays(out_root / name / "keypoints.npz"), _arrays(tmp_path / "serial" / name / "keypoints.npz")
        assert ours.keys() == serial.keys() and ours["pose3d_camera"].shape == (1, frames, 17, 3)
        for key in serial:
            np.testing.assert_array_equal(ours[key], serial[key], err_msg=key)
        assert (out_root / name / f"{name}_pose3d.mp4").is_file()
        run = json.loads((out_root / name / "run.json").read_text())
        assert run["ray"]["node"] == "127.0.0.1" and run["ray"]["address"] == ray_cluster
        assert run["ray"]["worker_pid"] != os.getpid()
        assert "ray" not in json.loads((tmp_path / "serial" / name / "run.json").read_text())

    batch = json.loads((out_root / "batch.json").read_text())
    results = {r["clip"]: r for r in batch["results"]}
    assert [r["clip"] for r in batch["results"]] == ["damaged.mp4", "first.mp4", "second.mp4"]
    assert [results[c]["status"] for c in results] == ["failed", "done", "done"]
    assert results["damaged.mp4"]["message"] in errors[0]
    assert (results["first.mp4"]["frames"], results["second.mp4"]["frames"]) == (12, 10)
    assert batch["workers"] == 2 and batch["frames"] == 22 and (batch["done"], batch["failed"]) == (2, 1)
    assert len({r["worker"]["worker_pid"] for r in batch["results"]}) == 2  # both workers took clips
    assert all(r["seconds"] > 0 and r["worker"]["node"] == "127.0.0.1" for r in batch["results"])

    # Interrupted or not, a re-run skips the finished clips (and still reports the damaged one).
    run_json_time = (out_root / "first" / "run.json").stat().st_mtime_ns
    code, out, err = _run(capsys, *common, "--out", out_root, "--ray", ray_cluster)
    assert code == 1, err
    assert sorted(line.split(":")[0] for line in out.splitlines() if "skipped" in line) == ["first.mp4", "second.mp4"]
    batch = json.loads((out_root / "batch.json").read_text())
    assert [r["status"] for r in batch["results"]] == ["failed", "skipped", "skipped"]
    assert batch["frames"] == 0 and [r["frames"] for r in batch["results"]] == [None, 12, 10]
    assert (out_root / "first" / "run.json").stat().st_mtime_ns == run_json_time


def test_ray_mode_without_ray_installed_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch, batch_folder,
                                                                     tiny_lifter):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code, out, err = _run(capsys, "--video", batch_folder, "--checkpoint", tiny_lifter, "--out", tmp_path, "--ray")
    assert code == 2
    assert err.strip().splitlines() == ["error: --ray needs Ray, an optional extra: pip install -e .[ray]"]
    assert not list(tmp_path.iterdir())


def test_workers_are_as_many_as_the_cluster_fits_and_a_too_small_cluster_is_one_error():
    from pipeline.app.distributed import RayConfig, worker_count, worker_resources
    from pipeline.app.runner import RunConfig

    gib = 2**30
    config = RunConfig(out_root=Path("out"))
    gpu_cluster = {"CPU": 16.0, "memory": 40.0 * gib, "GPU": 2.0}
    resources = worker_resources(RayConfig(), config, gpu_cluster)
    assert resources == {"CPU": 1.0, "memory": 1.5 * gib, "GPU": 0.25}
    assert worker_count(gpu_cluster, resources, clips=100, wanted=None) == 8  # 2 GPUs / 0.25
    assert worker_count(gpu_cluster, resources, clips=3, wanted=None) == 3
    assert worker_count(gpu_cluster, resources, clips=100, wanted=5) == 5
    config.lifting.device = "cpu"
    assert "GPU" not in worker_resources(RayConfig(), config, gpu_cluster)
    assert worker_count({"CPU": 16.0, "memory": 6.0 * gib}, worker_resources(RayConfig(), config, {}), 100, None) == 4
    with pytest.raises(UserError, match="not enough for one worker"):
        worker_count({"CPU": 0.5, "memory": 8.0 * gib}, {"CPU": 1.0, "memory": 1.5 * gib}, clips=10, wanted=None)


def test_workers_get_absolute_weight_paths(tmp_path, monkeypatch, tiny_lifter):
    """A worker starts in another folder, maybe on another machine: a relative --checkpoint is sent absolute."""
    from pipeline.app.distributed import with_absolute_paths
    from pipeline.app.models import LiftingConfig, load_models
    from pipeline.app.runner import RunConfig

    monkeypatch.chdir(tiny_lifter.parent)
    config = RunConfig(out_root=tmp_path, lifting=LiftingConfig(checkpoints=[Path(tiny_lifter.name)]))
    sent = with_absolute_paths(config, load_models(config.lifting, config.pose2d))
    assert sent.lifting.checkpoints == [tiny_lifter.resolve()]
    assert sent.pose2d.detector is None and sent.pose2d.keypoint_backend == "auto"  # unchanged: not named
    default = RunConfig(out_root=tmp_path)
    assert with_absolute_paths(default, load_models(default.lifting, default.pose2d)).lifting.checkpoints == []
