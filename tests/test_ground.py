"""People who share a floor get their distances back from it (`pipeline.motion.ground`).

Known scenes: people standing on one floor (z = 0) filmed by a camera 1.6 m up, looking 20 degrees down. A
body-size trajectory places each person at their true distance times the ratio of the lifter's body to theirs, with
the pose scaled alike (the image does not change): that is what `pipeline.motion.trajectory` does with a wrong body
size. The real recording's check is in tests/test_multiview.py."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.geometry import matrix_to_quaternion
from pipeline.motion.ground import GroundConfig, shared_ground_scales, standing_heights
from pipeline.skeleton import H36M

J = H36M.index
FRAMES = 40

# Standing upright, z up, pelvis at the origin (metres): a stick figure of an adult.
STANDING = {
    "pelvis": (0, 0, 0), "right_hip": (-0.13, 0, 0), "right_knee": (-0.13, 0, -0.45), "right_ankle": (-0.13, 0, -0.87),
    "left_hip": (0.13, 0, 0), "left_knee": (0.13, 0, -0.45), "left_ankle": (0.13, 0, -0.87), "spine": (0, 0, 0.25),
    "thorax": (0, 0, 0.5), "neck_nose": (0, 0, 0.6), "head": (0, 0, 0.72), "left_shoulder": (0.19, 0, 0.5),
    "left_elbow": (0.22, 0, 0.22), "left_wrist": (0.24, 0, -0.03), "right_shoulder": (-0.19, 0, 0.5),
    "right_elbow": (-0.22, 0, 0.22), "right_wrist": (-0.24, 0, -0.03),
}
PELVIS_HEIGHT = 0.95  # ankles 0.08 m above the floor


def camera_rotation(pitch_deg: float = 20.0) -> np.ndarray:
    """Camera -> world (z up) for a camera looking along world +y, pitched down by `pitch_deg`."""
    level = np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])  # camera x right, y down, z forward -> world
    c, s = np.cos(np.radians(pitch_deg)), np.sin(np.radians(pitch_deg))
    down = np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])  # about the camera's x axis: forward tips downwards
    return level @ down


def filmed(people_xy: list[tuple[float, float]], body_ratios: list[float], steps: list[float] | None = None,
           pitch_deg: float = 20.0):
    """Root-relative camera-space poses (P, T, 17, 3) and pelvis paths (P, T, 3) of people standing at world (x, y)
    (a little sway over time), as a body-size trajectory gives them: pose and path times the lifter's body over the
    person's (`body_ratios`). `steps`: how high each person stands above the floor. Returns (poses, paths, truth
    paths, rotation quaternion)."""
    rotation = camera_rotation(pitch_deg)
    camera_height = 1.6
    steps = steps or [0.0] * len(people_xy)
    figure = np.array([STANDING[name] for name in H36M.joints])
    poses, paths, truths = [], [], []
    t = np.arange(FRAMES) / 30.0
    for (x, y), ratio, step in zip(people_xy, body_ratios, steps, strict=True):
        pelvis_world = np.stack([x + 0.05 * np.sin(t), y + 0.05 * np.cos(t),
                                 np.full(FRAMES, PELVIS_HEIGHT + step - camera_height)], axis=-1)
        pelvis_camera = pelvis_world @ rotation  # world -> camera: the inverse rotation
        pose_camera = np.broadcast_to(figure @ rotation, (FRAMES, 17, 3))
        poses.append(ratio * pose_camera)
        paths.append(ratio * pelvis_camera)
        truths.append(pelvis_camera)
    return np.array(poses), np.array(paths), np.array(truths), matrix_to_quaternion(rotation)


def seen(people: int) -> tuple[np.ndarray, np.ndarray]:
    return np.ones((people, FRAMES), bool), np.ones((people, FRAMES, 17))


def test_the_filmed_people_stand_where_the_scene_says():
    poses, paths, _, rotation = filmed([(0.0, 3.0), (1.0, 5.0)], [1.0, 1.0])
    heights = standing_heights(poses, paths, *seen(2), rotation)
    np.testing.assert_allclose(heights, -1.6 + 0.08, atol=0.02)  # ankles 0.08 m up, the camera 1.6 m up


def test_a_person_given_a_body_20_percent_too_large_gets_their_relative_distance_back():
    poses, paths, truths, rotation = filmed([(0.0, 3.0), (1.0, 5.0)], [1.0, 1.2])
    heights = standing_heights(poses, paths, *seen(2), rotation)
    assert heights[1] - heights[0] < -0.25  # alone, the far person sinks a quarter metre below the near one's floor
    scales = shared_ground_scales(heights)
    distance = np.linalg.norm(paths * scales[:, None, None], axis=-1) / np.linalg.norm(truths, axis=-1)
    before = np.log(1.2)
    after = abs(np.log(distance[1] / distance[0])).max()
    assert after < 0.3 * before, (scales, after)  # 0.18 -> 0.05 (the size prior keeps a little)
    floors = scales * heights
    assert abs(floors[1] - floors[0]) < 0.1  # 0.3 m apart alone, 0.08 sharing the floor


def test_one_person_or_one_floor_changes_nothing():
    poses, paths, _, rotation = filmed([(0.0, 3.0)], [1.2])
    np.testing.assert_array_equal(shared_ground_scales(standing_heights(poses, paths, *seen(1), rotation)), [1.0])
    poses, paths, _, rotation = filmed([(0.0, 3.0), (1.0, 5.0)], [1.0, 1.0])
    np.testing.assert_allclose(shared_ground_scales(standing_heights(poses, paths, *seen(2), rotation)), 1.0,
                               atol=0.01)


def test_someone_whose_ankles_were_not_seen_gives_no_floor_and_keeps_their_size():
    poses, paths, _, rotation = filmed([(0.0, 3.0), (1.0, 5.0), (-1.0, 4.0)], [1.0, 1.2, 1.3])
    valid, scores = seen(3)
    scores[2][:, [J("left_ankle"), J("right_ankle")]] = 0.1  # filmed from the waist up
    heights = standing_heights(poses, paths, valid, scores, rotation)
    assert np.isnan(heights[2]) and np.isfinite(heights[:2]).all()
    scales = shared_ground_scales(heights)
    assert scales[2] == 1.0 and scales[1] < 0.95
    scores[1][:, [J("left_ankle"), J("right_ankle")]] = 0.1  # now only one floor is left: nothing to share
    np.testing.assert_array_equal(shared_ground_scales(standing_heights(poses, paths, valid, scores, rotation)), 1.0)


def test_someone_on_a_low_stage_is_pulled_towards_the_floor_only_as_far_as_body_sizes_allow():
    """The documented limit: a person standing 0.4 m up all along is taken for a larger, further person (the feet
    alone cannot tell), by about what the size prior allows."""
    poses, paths, _, rotation = filmed([(0.0, 3.0), (1.0, 5.0)], [1.0, 1.0], steps=[0.0, 0.4])
    scales = shared_ground_scales(standing_heights(poses, paths, *seen(2), rotation))
    size_sd = GroundConfig().size_sd
    assert 1.0 < scales[1] < 1.0 + size_sd and 1.0 - 2 * size_sd < scales[0] < 1.0, scales  # measured 1.08, 0.89


@pytest.mark.parametrize("steps", [[0.0, 0.0, 0.0, 1.0], [0.0, 0.8]])
def test_someone_on_a_high_stage_gives_no_floor_and_nobody_is_resized(steps):
    """A 1 m stage among three people on the floor would shrink all three by a fifth if it counted; 0.8 m with two
    people would take them for a dwarf and a giant. Such a fit costs far more than bodies allow: nobody is resized."""
    places = [(0.0, 3.0), (1.0, 5.0), (-1.0, 4.0), (0.5, 6.0)][:len(steps)]
    poses, paths, _, rotation = filmed(places, [1.0] * len(steps), steps=steps)
    scales = shared_ground_scales(standing_heights(poses, paths, *seen(len(steps)), rotation))
    np.testing.assert_allclose(scales, 1.0, atol=1e-9)


def test_the_scales_are_the_least_squares_fit_of_the_size_prior_and_one_floor():
    """Two people 0.3 m apart in standing height: the closed form of the two-person problem."""
    config = GroundConfig()
    g = np.array([-1.5, -1.8])
    scales = shared_ground_scales(g, config)

    def cost(s):  # h at its optimum for these s: minus the mean floor height
        floor = s * g
        prior = ((s - 1) ** 2).sum() / config.size_sd ** 2
        return prior + ((floor - floor.mean()) ** 2).sum() / config.ground_sd_m ** 2

    best = cost(scales)
    for delta in ([1e-3, 0], [-1e-3, 0], [0, 1e-3], [0, -1e-3]):
        assert cost(scales + np.array(delta)) > best
    assert scales[0] > 1 > scales[1]  # the near floor comes down, the far one up


def test_a_person_who_jumps_stands_where_their_feet_land():
    """The standing height is a low percentile of the lower ankle: a jump in a third of the frames does not lift it."""
    poses, paths, _, rotation = filmed([(0.0, 3.0), (1.0, 5.0)], [1.0, 1.0])
    jumping = paths.copy()
    up_in_camera = np.asarray(camera_rotation()).T @ np.array([0.0, 0.0, 1.0])
    jumping[1, :FRAMES // 3] += 0.5 * up_in_camera  # half a metre up
    lifted_foot = poses.copy()
    lifted_foot[:, :, J("left_ankle")] += 0.2 * up_in_camera  # one foot off the ground all along: the other stands
    heights = standing_heights(lifted_foot, jumping, *seen(2), rotation)
    np.testing.assert_allclose(heights, -1.52, atol=0.02)
    valid, scores = seen(2)
    scores[1][:, J("right_ankle")] = 0.0  # one ankle never seen: no floor from this person
    assert np.isnan(standing_heights(poses, paths, valid, scores, rotation)[1])


def test_shapes_that_do_not_match_are_refused():
    poses, paths, _, rotation = filmed([(0.0, 3.0), (1.0, 5.0)], [1.0, 1.0])
    with pytest.raises(ValueError, match="expected poses"):
        standing_heights(poses, paths[:1], *seen(2), rotation)
    with pytest.raises(ValueError, match="expected poses"):
        standing_heights(poses, paths[:, :-1], *seen(2), rotation)
