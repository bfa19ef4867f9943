"""Process-wide settings a run needs, in the command's process and in every Ray worker alike.

- Ultralytics reads its settings from the environment when it is imported: its own loader unpickles with
  weights_only=True and its allow-list only with ULTRALYTICS_SAFE_LOAD (pipeline.detection refuses unsafe files
  before that, and this closes the second load too); it pip-installs packages it misses (e.g. for exporting) unless
  YOLO_AUTOINSTALL is off (pipeline.runtimes checks them first and says what to install); and it logs every model call
  and load at INFO unless YOLO_VERBOSE is off (its import resets its logger's level, so setting the level before the
  import is not enough).
- glibc's malloc: memory flat in the length of a video, and no page faults for every frame's buffers
  (`tune_allocator`).
- The end: once the outputs are written the command's process ends without tearing its modules down (`quick_exit`).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
from typing import NoReturn

ULTRALYTICS_ENVIRONMENT = {"ULTRALYTICS_SAFE_LOAD": "1", "YOLO_AUTOINSTALL": "false", "YOLO_VERBOSE": "false"}
# PyTorch's CPU tensors of 2 MB and more on transparent huge pages (read by PyTorch at its first allocation): one
# page fault per 2 MB instead of per 4 KB for the detector's activations, which the 1 MB mmap threshold below hands
# back to the system after every call (see tune_allocator).
TORCH_ENVIRONMENT = {"THP_MEM_ALLOC_ENABLE": "1"}


# mallopt parameter, value, and the environment variable and glibc tunable through which a user may set it instead.
ALLOCATOR_SETTINGS = (
    (-3, 1 << 20, "MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold"),  # M_MMAP_THRESHOLD: 1 MB
    (-2, 64 << 20, "MALLOC_TOP_PAD_", "glibc.malloc.top_pad"),  # M_TOP_PAD: 64 MB
)


def ultralytics_environment() -> dict[str, str]:
    """The Ultralytics settings this process runs with (the defaults above unless the user set them)."""
    return {name: os.environ.get(name, value) for name, value in ULTRALYTICS_ENVIRONMENT.items()}


def configure_process() -> None:
    """Apply these settings to this process: before PyTorch and Ultralytics are imported, and before frames are
    decoded."""
    for name, value in {**ULTRALYTICS_ENVIRONMENT, **TORCH_ENVIRONMENT}.items():
        os.environ.setdefault(name, value)
    tune_allocator()


def tune_allocator() -> None:
    """glibc's malloc set for a video pipeline: large buffers in their own mmaps, and a padded heap top.

    - Allocations of 1 MB or more (decoded frames, detector inputs) that the heap cannot serve get their own mmap.
      glibc otherwise raises its mmap threshold after the first large free and then carves multi-megabyte frames out
      of per-thread heaps, which fragment: the process grew by ~2 GB per 1000 frames of the sample clip. With a fixed
      threshold a heap grows only for smaller allocations, and memory stays flat in the length of the video.
    - Fixing the threshold also stops glibc adapting its trim threshold, so every heap top was given back to the
      system after each frame's smaller buffers (detector tensors, NMS, drawing) and faulted in again on the next
      one. The heap now grows and shrinks 64 MB at a time (M_TOP_PAD) instead of 128 KB. On the sample clip
      (230 frames, whole demo.py process, side by side) the default took 1.7-1.8 million minor page faults and
      8.5-9.8 s of system time before, 0.5 million and 4.5 s after, together with PyTorch's huge pages
      (TORCH_ENVIRONMENT) (README, Performance).
    A setting the user made in the environment (MALLOC_MMAP_THRESHOLD_, MALLOC_TOP_PAD_, GLIBC_TUNABLES) is left
    as it is. Other C libraries (macOS, musl) manage this themselves.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        libc = None
    if libc is None or not hasattr(libc, "mallopt") or platform.libc_ver()[0] != "glibc":
        return
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    for parameter, value, variable, tunable in ALLOCATOR_SETTINGS:
        if variable not in os.environ and tunable not in tunables:
            libc.mallopt(parameter, value)



def quick_exit(code: int) -> NoReturn:
    """End the command's process with `code` once its work is done, skipping the interpreter's teardown.

    Why: by then every output is written, closed and renamed into place, and all Python would still do is tear down
    its modules: PyTorch, OpenVINO and Ultralytics took 0.55 s of a 14 s `demo.py` run on the sample clip (main()
    returning to the process ending: 0.65 s, against 0.1 s this way; measured 30 November). The exit handlers still
    run (logging's flush, joining idle worker threads: 13 ms there); only the module teardown is skipped. Under a
    profiler, tracer or coverage tool the process exits the usual way, so that they can write their results."""
    import atexit

    if _observed():
        raise SystemExit(code)

    atexit._run_exitfuncs()  # the handlers a normal exit runs first (there is no public name for this)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can reach it anyway
            pass
    os._exit(code)


def _observed() -> bool:
    """Whether a profiler, tracer, debugger or coverage tool watches this process: the old hooks, or (Python 3.12 on,
    where cProfile uses them) a `sys.monitoring` tool."""
    if sys.getprofile() is not None or sys.gettrace() is not None:
        return True
    monitoring = getattr(sys, "monitoring", None)
    return monitoring is not None and any(monitoring.get_tool(tool) is not None for tool in range(6))
