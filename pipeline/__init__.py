"""PoseFormerV2 video-to-3D pipeline: each stage takes arrays and returns arrays; only the CLI knows about files."""
