"""Turn a video of a person into a side-by-side 2D/3D pose video: `python demo.py --video dance.mp4`."""
from pipeline.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
