"""Motion-capture data path for training the default lifter.

BVH / ASF+AMC parsing with forward kinematics, mapping of mocap skeletons to Human3.6M-17 (3D targets) and to
COCO-17 (what the 2D detector sees), randomised virtual cameras, detector-like 2D noise, and the cached
train/validation sequence sets that `pipeline.training` consumes.
"""
