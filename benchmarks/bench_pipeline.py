"""Whole-pipeline benchmark: per-stage frames per second and peak memory of `demo.py` on the sample clip and on a
clip ten times as long (the sample played ten times, made with ffmpeg's concat demuxer without re-encoding).

    python benchmarks/bench_pipeline.py                       # default lifter, sample clip from ../shared or videos/
    python benchmarks/bench_pipeline.py --checkpoint 27_243_45.2.bin --repeat 10

Each run is a fresh `demo.py` process (so the peak RSS is that run's own), with --force and --quiet; the figures come
from the run.json it writes. "clip fps" is frames / the clip's processing time (decode to encoded mp4); "wall s"
adds process start-up and model loading. Peak memory is the demo process's maximum resident set size (ffmpeg children
excluded: they hold a few frames at most).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE_CANDIDATES = (REPO.parent / "shared" / "data" / "videos" / "sports2d_demo.mp4",
                     REPO / "videos" / "sports2d_demo.mp4")

# Runs the demo in this process and prints its peak RSS: the child's own figure, not the max over all children. An
# exit handler, because demo.py ends its process without returning (pipeline.app.process.quick_exit runs them).
_MEASURE = """
import atexit, resource, sys, runpy
atexit.register(lambda: print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr))
sys.argv = [{demo!r}] + sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def repeated_clip(source: Path, times: int, folder: Path) -> Path:
    from pipeline.media.ffmpeg import ffmpeg_exe

    listing = folder / "list.txt"
    listing.write_text("".join(f"file '{source}'\n" for _ in range(times)))
    target = folder / f"{source.stem}_x{times}{source.suffix}"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy",
                    str(target)], check=True)
    return target


def run_demo(clip: Path, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-c", _MEASURE.format(demo=str(REPO / "demo.py")), "--video", str(clip), "--out", str(out),
           "--force", "--quiet", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"demo failed on {clip.name}: {proc.stderr.strip().splitlines()[-2:]}")
    peak_kb = int(next(line.split()[1] for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB")))
    run = json.loads((out / clip.stem / "run.json").read_text())
    size = f"{run['video']['width']}x{run['video']['height']}"
    return {"clip": clip.name, "frames": run["video"]["frames"], "size": size,
            "wall_s": wall, "peak_rss_mb": peak_kb / 1024, "timings": run["timings"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", type=Path, default=None, help="default: the sample clip")
    parser.add_argument("--repeat", type=int, default=10, help="length of the long clip, in copies of the clip")
    parser.add_argument("--checkpoint", default=None, help="lifter (default: the demo's default)")
    parser.add_argument("--skip-long", action="store_true", help="only the short clip")
    args = parser.parse_args()
    clip = args.clip or next((p for p in SAMPLE_CANDIDATES if p.is_file()), None)
    if clip is None:
        raise SystemExit("no sample clip: run `python demo.py --sample` first or pass --clip")
    extra = ["--checkpoint", args.checkpoint] if args.checkpoint else []
    with tempfile.TemporaryDirectory() as tmp:
        clips = [clip] if args.skip_long else [clip, repeated_clip(clip, args.repeat, Path(tmp))]
        print(f"{'clip':<28} {'frames':>6} {'2D fps':>7} {'lift fps':>9} {'render+enc fps':>15} "
              f"{'clip fps':>9} {'wall s':>7} {'peak RSS':>9}")
        for c in clips:
            r = run_demo(c, Path(tmp) / "out", extra)
            t = r["timings"]
            print(f"{r['clip']:<28} {r['frames']:>6} {t['pose2d']['frames_per_second']:>7.1f} "
                  f"{t['lift']['frames_per_second']:>9.1f} {t['render_encode']['frames_per_second']:>15.1f} "
                  f"{r['frames'] / t['total_seconds']:>9.1f} {r['wall_s']:>7.1f} {r['peak_rss_mb']:>6.0f} MB",
                  flush=True)


if __name__ == "__main__":
    main()
