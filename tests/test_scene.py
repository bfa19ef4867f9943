import numpy as np

from pipeline.geometry import DEMO_CAMERA_TO_WORLD, camera_to_world, matrix_to_quaternion, quaternion_to_matrix
from pipeline.scene import camera_positions, place_people


def test_camera_positions_follow_the_pinhole_model():
    # A person whose box is half as tall is twice as far; one at the image centre is on the optical axis.
    pelvis = np.array([[[320.0, 240.0]], [[480.0, 240.0]]])
    heights = np.array([[400.0], [200.0]])
    pos = camera_positions(pelvis, heights, (640, 480))
    focal = 640.0
    np.testing.assert_allclose(pos[0, 0], [0, 0, focal * 1.7 / 400])
    np.testing.assert_allclose(pos[1, 0], [160 * (focal * 1.7 / 200) / focal, 0, focal * 1.7 / 200])


def test_place_people_keeps_the_followed_person_and_the_ground():
    rng = np.random.default_rng(0)
    worlds = rng.normal(size=(3, 5, 17, 3)).astype(np.float32)
    worlds[..., 2] -= worlds[..., 2].min(axis=-1, keepdims=True)
    pelvis = np.stack([np.tile([x, 240.0], (5, 1)) for x in (300.0, 500.0, 100.0)])
    heights = np.full((3, 5), 300.0)
    placed = place_people(worlds, pelvis, heights, (640, 480))
    np.testing.assert_array_equal(placed[0], worlds[0])
    np.testing.assert_allclose(placed[..., 2], worlds[..., 2], atol=1e-6)  # nobody leaves the ground
    # Same depth, 200 px to the right in the image: moved along the camera's x axis as seen in the world.
    right = camera_to_world(np.array([1.0, 0.0, 0.0]))
    shift = placed[1, 0, 0] - worlds[1, 0, 0]
    expected = right * (200 * 1.7 / 300)
    np.testing.assert_allclose(shift[:2], expected[:2], rtol=1e-4)
    # The two others are on opposite sides of the followed person.
    assert np.dot(shift[:2], (placed[2, 0, 0] - worlds[2, 0, 0])[:2]) < 0


def test_place_people_moves_them_along_the_camera_axis_of_the_rotation_it_is_given():
    worlds = np.zeros((2, 1, 17, 3), np.float32)
    pelvis = np.array([[[300.0, 240.0]], [[500.0, 240.0]]])
    heights = np.full((2, 1), 300.0)
    c, s = np.cos(np.radians(30.0)), np.sin(np.radians(30.0))
    rolled = quaternion_to_matrix(DEMO_CAMERA_TO_WORLD) @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    rotation = matrix_to_quaternion(rolled)
    shift = place_people(worlds, pelvis, heights, (640, 480), rotation)[1, 0, 0]
    right = camera_to_world(np.array([1.0, 0.0, 0.0]), rotation) * (200 * 1.7 / 300)
    np.testing.assert_allclose(shift[:2], right[:2], rtol=1e-4)
    fixed = place_people(worlds, pelvis, heights, (640, 480))[1, 0, 0]
    assert np.linalg.norm(fixed[:2] - shift[:2]) > 0.1
