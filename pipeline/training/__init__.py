"""Training and evaluation of the PoseFormerV2 lifter: data as `SequenceSet`s, released recipe and metrics."""
