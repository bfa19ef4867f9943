"""Rebuild the held-out sets the first default lifter was measured on, with the renderer of its own commit.

    python benchmarks/build_version1_sets.py [--out-dir ~/.cache/poseformerv2-demo/data/legacy]
    python benchmarks/ship_check.py --candidate cand.safetensors \
        --set bandai_v1=~/.cache/poseformerv2-demo/data/legacy/bandai_val_v1.npz \
        --set cmu_v1=~/.cache/poseformerv2-demo/data/legacy/cmu_v1.npz

Why: issue 9's synthetic targets ("held-out Bandai and CMU no worse than today, 28 / 68 mm P-MPJPE") were set on the
renderings of version 1 (commit 2677ac8: static studio cameras, mild noise, COCO hips at the hip joints). Today's
renderer draws realistic cameras and detector noise instead, so its held-out sets are different files, and the old
ones were lost twice with the cache. This script takes `pipeline/` from that commit out of this clone's history (`git
archive`, nothing in the work tree changes), runs its renderer in a subprocess on the unpacked mocap (`python -m
pipeline.mocap unpack`), and writes the held-out Bandai groups (2 cameras per clip, bodies and speed as recorded) and
the CMU subset, exactly as that commit's `build` did. The renderer is seeded, so the files are the same every time:
rebuilt on 3 December, version 6 scored 52.4 / 29.2 mm (MPJPE / P-MPJPE) and 97.0 / 63.8 on them, the numbers it had
on the sets built by the old code at the time. About 20 seconds on one core.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VERSION1_COMMIT = "2677ac8"  # "Ship the default lifter": version 1's weights and the renderer they were scored with
CACHE = Path.home() / ".cache" / "poseformerv2-demo"

# Runs inside the old commit's `pipeline` package: the same calls its `build_sets` made for these two sets.
RENDER = """
import dataclasses, sys
from pathlib import Path
from pipeline.mocap import dataset as d
mocap_dir, bandai_out, cmu_out = (Path(a) for a in sys.argv[1:4])
config = d.RenderConfig()
paths = d.bandai_clip_paths(mocap_dir)
held_out = [p for p in paths if d.is_validation_group(d.bandai_group(p.stem))]
as_recorded = dataclasses.replace(config, proportions=False, body_scale=(1.0, 1.0), speed=(1.0, 1.0))
bandai = d.render_bandai(held_out, as_recorded, 2)
d.save_set(bandai_out, bandai)
cmu = d.render_clips(d.cmu_clips(mocap_dir, config.body), config, 2)
d.save_set(cmu_out, cmu)
print(f"held-out Bandai: {len(bandai)} sequences, {bandai.num_frames} frames; CMU: {len(cmu)} sequences, "
      f"{cmu.num_frames} frames")
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", type=Path, default=CACHE / "data" / "legacy")
    p.add_argument("--mocap-dir", type=Path, default=CACHE / "mocap", help="from `python -m pipeline.mocap unpack`")
    args = p.parse_args(argv)
    if not (args.mocap_dir / "dataset").is_dir():
        raise SystemExit(f"no unpacked mocap in {args.mocap_dir}; run `python -m pipeline.mocap unpack` first")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir()
        archive = Path(tmp) / "pipeline.tar"
        try:
            subprocess.run(["git", "-C", str(REPO), "archive", "--output", str(archive), VERSION1_COMMIT, "pipeline"],
                           check=True, capture_output=True, text=True)
        except subprocess.CalledProcessError as exc:
            raise SystemExit(f"git archive {VERSION1_COMMIT} failed ({exc.stderr.strip()}); this needs a clone "
                             "with the full history (not --depth 1)") from exc
        with tarfile.open(archive) as tar:  # this clone's own history; the "data" filter where Python has it
            tar.extractall(tree, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        # Written under partial names next to their place, renamed only when both are complete: a failed run
        # leaves no half-written set in the cache.
        final = [args.out_dir / "bandai_val_v1.npz", args.out_dir / "cmu_v1.npz"]
        staged = [path.with_suffix(".partial.npz") for path in final]
        env = {**os.environ, "PYTHONPATH": str(tree)}
        try:
            subprocess.run([sys.executable, "-c", RENDER, str(args.mocap_dir), *map(str, staged)], cwd=tree,
                           env=env, check=True)
        except subprocess.CalledProcessError as exc:
            for path in staged:
                path.unlink(missing_ok=True)
            raise SystemExit(f"the version 1 renderer failed (exit {exc.returncode}); nothing was written") from exc
        for path, done in zip(staged, final, strict=True):
            os.replace(path, done)
            print(done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
