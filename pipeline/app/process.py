"""Process-wide settings a run needs, in the command's process and in every Ray worker alike.

- Ultralytics reads its settings from the environment when it is imported: its own loader unpickles with
  weights_only=True and its allow-list only with ULTRALYTICS_SAFE_LOAD (pipeline.detection refuses unsafe files
  before that, and this closes the second load too); it pip-installs packages it misses (e.g. for exporting) unless
  YOLO_AUTOINSTALL is off (pipeline.runtimes checks them first and says what to install); and it logs every model call
  and load at INFO unless YOLO_VERBOSE is off (its import resets its logger's level, so setting the level before the
  import is not enough).
- glibc's mmap threshold, fixed so that memory stays flat in the length of a video.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

ULTRALYTICS_ENVIRONMENT = {"ULTRALYTICS_SAFE_LOAD": "1", "YOLO_AUTOINSTALL": "false", "YOLO_VERBOSE": "false"}


def ultralytics_environment() -> dict[str, str]:
    """The Ultralytics settings this process runs with (the defaults above unless the user set them)."""
    return {name: os.environ.get(name, value) for name, value in ULTRALYTICS_ENVIRONMENT.items()}


def configure_process() -> None:
    """Apply both settings to this process: before Ultralytics is imported, and before frames are decoded."""
    for name, value in ULTRALYTICS_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    return_large_buffers_to_the_system()


def return_large_buffers_to_the_system() -> None:
    """Serve every allocation of 1 MB or more (decoded frames, detector inputs) with its own mmap.

    glibc otherwise raises its mmap threshold after the first large free and then carves multi-megabyte frames out of
    per-thread heaps, which fragment: the process grew by ~2 GB per 1000 frames of the sample clip. A fixed threshold
    keeps memory flat in the length of the video. Other C libraries (macOS, musl) manage this themselves.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        libc = None
    if libc is not None and hasattr(libc, "mallopt") and platform.libc_ver()[0] == "glibc":
        M_MMAP_THRESHOLD = -3
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)
