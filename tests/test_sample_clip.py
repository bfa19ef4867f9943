import shutil

import pytest

from pipeline.detection import sha256_of
from pipeline.sample_clip import SAMPLE_NAME, SAMPLE_SHA256, fetch_sample_clip


def test_the_shared_clip_is_the_readme_sample(shared_dir, tmp_path, monkeypatch):
    """The README's sample is byte-identical to ../shared's clip; when present and intact it is used as it is."""
    clip = shared_dir / "data" / "videos" / "sports2d_demo.mp4"
    assert sha256_of(clip) == SAMPLE_SHA256
    shutil.copy(clip, tmp_path / SAMPLE_NAME)

    def no_download(*args, **kwargs):
        raise AssertionError("an intact sample clip must not be downloaded again")

    monkeypatch.setattr("pipeline.sample_clip.subprocess.run", no_download)
    assert fetch_sample_clip(tmp_path) == tmp_path / SAMPLE_NAME


def test_a_failed_download_is_one_clear_error(tmp_path, monkeypatch):
    class Failed:
        returncode = 1
        stderr = "ERROR: Could not find a version that satisfies the requirement sports2d==0.8.34\n"

    monkeypatch.setattr("pipeline.sample_clip.subprocess.run", lambda *a, **k: Failed())
    with pytest.raises(RuntimeError, match="could not download sports2d==0.8.34"):
        fetch_sample_clip(tmp_path)
    assert list(tmp_path.iterdir()) == []
