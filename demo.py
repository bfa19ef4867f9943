"""Turn a video of a person into a side-by-side 2D/3D pose video: `python demo.py --video dance.mp4`."""
import sys

try:
    from pipeline.cli import main  # ~3 s, mostly PyTorch: Ctrl-C then gets the same one line as later
except KeyboardInterrupt:
    print("interrupted: no partial output was kept", file=sys.stderr)
    raise SystemExit(130) from None

if __name__ == "__main__":
    raise SystemExit(main())
