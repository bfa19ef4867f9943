"""The optional Rerun export (pipeline/rerun_export.py): written, then read back with rerun's own RRD reader.

Skips when rerun-sdk is not installed (`pip install -e .[rerun]`), except the test of the error that says so.
"""
from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from test_viewer import INVALID_FRAMES, example_arrays, root_relative_distance_mm

from pipeline.skeleton import H36M
from pipeline.viewer import COLORS

FRAMES = 30
OFFSET = 100  # rows are video frames 100..129, as with --start 100


def test_without_rerun_the_export_says_how_to_install_it(monkeypatch, tmp_path):
    from pipeline import rerun_export

    monkeypatch.setitem(sys.modules, "rerun", None)  # what an absent package looks like to `import`
    arrays = example_arrays(frames=3)
    arrays.pop("image_size")
    with pytest.raises(ImportError, match=r"pip install -e \.\[rerun\]") as err:
        rerun_export.write_rerun(tmp_path / "out.rrd", **arrays)
    assert "\n" not in str(err.value) and not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def rerun():
    return pytest.importorskip("rerun", reason="rerun-sdk is not installed (pip install -e .[rerun])")


def read_rrd(rerun, path: Path) -> dict[str, dict[int | None, dict]]:
    """entity path -> {frame (None for static): {column: value}} from rerun's own reader."""
    from rerun.chunk import RrdReader

    entities: dict[str, dict] = defaultdict(dict)
    for chunk in RrdReader(path).stream():
        batch = chunk.to_record_batch()
        table = {name: batch.column(name).to_pylist() for name in batch.schema.names if name == "frame" or ":" in name}
        frames = table.get("frame", [None] * chunk.num_rows)
        for row, frame in enumerate(frames):
            values = {name.split(":")[-1]: column[row] for name, column in table.items() if ":" in name}
            entities[chunk.entity_path].setdefault(frame, {}).update(values)
    return entities


def rgb_of(packed: int) -> tuple[int, int, int]:
    return packed >> 24 & 255, packed >> 16 & 255, packed >> 8 & 255


def test_recording_holds_the_clip_the_2d_and_each_checkpoints_3d_on_one_frame_timeline(rerun, shared_dir, tmp_path):
    from pipeline.rerun_export import write_rerun

    clip = shared_dir / "data" / "videos" / "sports2d_demo.mp4"
    if not clip.is_file():
        pytest.skip(f"sample clip {clip} is absent")
    arrays = example_arrays(frames=FRAMES, width=1768, height=994)
    arrays.pop("image_size")
    path = np.stack([np.linspace(0, 1, FRAMES), np.zeros(FRAMES), np.zeros(FRAMES)], axis=-1)
    dest = write_rerun(tmp_path / "clip.rrd", video_path=clip, frame_offset=OFFSET,
                       trajectory_world=np.broadcast_to(path, (2, 1, FRAMES, 3)), **arrays)
    assert [p.name for p in tmp_path.iterdir()] == ["clip.rrd"]
    data = read_rrd(rerun, dest)

    video = data["/video"]
    assert bytes(video[None]["blob"][0]) == clip.read_bytes() and video[None]["media_type"] == ["video/mp4"]
    expected_ns = rerun.AssetVideo(path=clip).read_frame_timestamps_nanos()[OFFSET:OFFSET + FRAMES]
    assert [video[f]["timestamp"][0] for f in range(OFFSET, OFFSET + FRAMES)] == list(expected_ns)

    for k, name in enumerate(arrays["checkpoint_names"]):
        rows = data[f"/world/{name}/person0"]
        assert sorted(rows) == list(range(OFFSET, OFFSET + FRAMES))
        got = np.array([rows[OFFSET + t]["positions"] for t in range(FRAMES)])
        np.testing.assert_allclose(got, arrays["poses_world"][k, 0], atol=1e-6)
        grey = [t for t in range(FRAMES) if set(map(rgb_of, rows[OFFSET + t]["colors"])) == {(150, 150, 150)}]
        assert grey == list(INVALID_FRAMES)
        np.testing.assert_allclose(data[f"/world/{name}/person0/trajectory"][None]["strips"][0], path, atol=1e-6)
    points_2d = data["/video/person0"]
    np.testing.assert_allclose([points_2d[OFFSET + t]["positions"] for t in range(FRAMES)],
                               arrays["keypoints_2d"][0], atol=1e-3)
    assert rgb_of(points_2d[OFFSET]["colors"][H36M.index("left_wrist")]) == tuple(bytes.fromhex(COLORS["left"][1:]))
    detected = [data["/detected/person0"][OFFSET + t]["scalars"][0] for t in range(FRAMES)]
    assert detected == [0.0 if t in INVALID_FRAMES else 1.0 for t in range(FRAMES)]
    disagreement = [data[f"/disagreement_mm/{arrays['checkpoint_names'][1]}"][OFFSET + t]["scalars"][0]
                    for t in range(FRAMES)]
    expected = root_relative_distance_mm(arrays["poses_world"][0, 0], arrays["poses_world"][1, 0])
    np.testing.assert_allclose(disagreement, expected, atol=1e-3)
    assert "/" in data and data["/"][None]["context"]  # the skeleton's joints and bones for Rerun to draw


def test_a_clip_that_is_not_mp4_is_reencoded_for_rerun(rerun, tmp_path):
    import imageio_ffmpeg

    from pipeline.rerun_export import write_rerun

    clip = tmp_path / "clip.webm"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-nostdin", "-f", "lavfi", "-i",
                    "testsrc=size=320x180:rate=30:duration=0.4", "-c:v", "libvpx-vp9", "-deadline", "realtime",
                    str(clip)], check=True)
    arrays = example_arrays(frames=12, width=320, height=180)
    arrays.pop("image_size")
    dest = write_rerun(tmp_path / "out" / "clip.rrd", video_path=clip, **arrays)
    video = read_rrd(rerun, dest)["/video"]
    assert video[None]["media_type"] == ["video/mp4"] and bytes(video[None]["blob"][0])[4:8] == b"ftyp"
    assert sorted(f for f in video if f is not None) == list(range(12))
    assert rerun.AssetVideo(contents=bytes(video[None]["blob"][0])).read_frame_timestamps_nanos().size == 12


def test_a_missing_clip_is_a_one_line_error(rerun, tmp_path):
    from pipeline.rerun_export import write_rerun

    arrays = example_arrays(frames=3)
    arrays.pop("image_size")
    with pytest.raises(ValueError, match="video file not found") as err:
        write_rerun(tmp_path / "out.rrd", video_path=tmp_path / "nope.mp4", **arrays)
    assert "\n" not in str(err.value) and not list(tmp_path.iterdir())
