"""Turn a video of a person into a side-by-side 2D/3D pose video: `python demo.py --video dance.mp4`."""
import sys

try:
    from pipeline.cli import run  # light (PyTorch comes after the flags parse); Ctrl-C gets the usual line
except KeyboardInterrupt:
    print("interrupted: no partial output was kept", file=sys.stderr)
    raise SystemExit(130) from None

if __name__ == "__main__":
    run()
