"""Validation of lifters on real footage: calibrated multi-camera recordings give a triangulated 3D reference.

- `calibration`: Qualisys .qca.txt and pose2sim Calib.toml cameras (read, write, project, undistort)
- `triangulation`: confidence-weighted DLT with outlier-view rejection
- `multiview`: the 2D stage per view (cached), people across views, triangulation, lifting and scoring
- `refine`: the cameras' extrinsics bundle-adjusted on the people seen by several views
- `scores`: P-MPJPE per joint, bone-length variation, left/right symmetry, jitter
- `cli`: `python -m pipeline.evaluation multiview --recording DIR --checkpoint FILE`
"""
