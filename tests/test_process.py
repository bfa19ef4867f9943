"""Process-wide settings (pipeline.app.process): the allocator tuning, measured by its effect on page faults."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

# Allocates, touches and frees a 512 KB buffer 400 times, as a video pipeline does with every frame's smaller
# buffers, and prints the minor page faults that took. Whether it calls configure_process is the first argument.
_FAULTS = """
import ctypes, ctypes.util, json, os, resource, sys
if sys.argv[1] == "configure":
    from pipeline.app.process import configure_process
    configure_process()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 512 * 1024
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(400):
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    libc.free(p)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"faults": faults, "thp": os.environ.get("THP_MEM_ALLOC_ENABLE")}))
"""

glibc_only = pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
                                reason="the allocator tuning applies to glibc only")


def _faults(mode: str, **env: str) -> dict:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    environment.pop("THP_MEM_ALLOC_ENABLE", None)
    environment.update(env)
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True,
                         env=environment)
    return json.loads(out.stdout)


@glibc_only
def test_configured_process_reuses_freed_buffers_instead_of_faulting_them_in_again():
    # With the mmap threshold fixed (for flat memory, below) and nothing else, glibc also stops adapting its trim
    # threshold and gives the freed heap top back after every buffer: its 128 pages fault in again each time.
    threshold_only = _faults("plain", MALLOC_MMAP_THRESHOLD_=str(1 << 20))
    configured = _faults("configure", MALLOC_MMAP_THRESHOLD_=str(1 << 20))
    assert threshold_only["faults"] > 20_000
    assert configured["faults"] < threshold_only["faults"] / 20
    assert _faults("configure")["faults"] < threshold_only["faults"] / 20


@glibc_only
def test_an_allocator_setting_the_user_made_in_the_environment_is_kept():
    kept = _faults("configure", MALLOC_MMAP_THRESHOLD_=str(1 << 20), MALLOC_TOP_PAD_="0")
    assert kept["faults"] > 20_000


def test_configured_process_puts_pytorch_tensors_on_huge_pages_unless_the_user_said_otherwise():
    assert _faults("configure")["thp"] == "1"
    assert _faults("configure", THP_MEM_ALLOC_ENABLE="0")["thp"] == "0"


# Registers an exit handler that writes a file, prints without a newline, then ends through quick_exit(3).
_QUICK_EXIT = """
import atexit, sys
from pathlib import Path
from pipeline.app.process import quick_exit
atexit.register(lambda: Path(sys.argv[1]).write_text("handled"))
print("written before the end", end="")
quick_exit(3)
"""


def test_quick_exit_runs_the_exit_handlers_flushes_and_keeps_the_exit_code(tmp_path):
    marker = tmp_path / "marker.txt"
    result = subprocess.run([sys.executable, "-c", _QUICK_EXIT, str(marker)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 3 and result.stdout == "written before the end"
    assert marker.read_text() == "handled"


def test_quick_exit_under_a_profiler_ends_the_usual_way_so_the_profile_is_written(tmp_path):
    script = tmp_path / "ends_quickly.py"
    script.write_text(_QUICK_EXIT)
    profile = tmp_path / "out.prof"
    result = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(profile), str(script),
                             str(tmp_path / "marker.txt")], capture_output=True, text=True, timeout=60)
    # cProfile's runner swallows SystemExit (its exit code is its own): what matters is that it could write.
    assert result.returncode == 0, result.stderr
    assert profile.is_file() and profile.stat().st_size > 0 and (tmp_path / "marker.txt").read_text() == "handled"
