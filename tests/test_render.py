"""SideBySideRenderer: output layout, colours by side on both panels, fixed 3D limits, marking of undetected frames;
and the sample clip rendered and encoded end to end."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.media.encode import VideoWriter
from pipeline.media.ffmpeg import probe
from pipeline.render import (
    BANNER_BGR,
    CENTER_BGR,
    INVALID_BGR,
    LEFT_BGR,
    PANEL_BACKGROUND_BGR,
    RIGHT_BGR,
    TRAIL_BGR,
    RenderConfig,
    SideBySideRenderer,
    WorldLimits,
    grid_step,
    no_detection_text,
    output_layout,
    view_axes,
)
from pipeline.skeleton import H36M

J = H36M.index


def star_pose() -> np.ndarray:
    """(17, 3) a standing person with arms and legs spread sideways (along world y), z up, feet at z=0."""
    pose = np.zeros((17, 3))
    pose[J("pelvis")] = [0, 0, 0.95]
    pose[J("spine")] = [0, 0, 1.2]
    pose[J("thorax")] = [0, 0, 1.45]
    pose[J("neck_nose")] = [0, 0, 1.58]
    pose[J("head")] = [0, 0, 1.75]
    for side, sign in (("left", 1.0), ("right", -1.0)):
        pose[J(f"{side}_hip")] = [0, sign * 0.15, 0.95]
        pose[J(f"{side}_knee")] = [0, sign * 0.3, 0.5]
        pose[J(f"{side}_ankle")] = [0, sign * 0.45, 0.0]
        pose[J(f"{side}_shoulder")] = [0, sign * 0.2, 1.45]
        pose[J(f"{side}_elbow")] = [0, sign * 0.5, 1.5]
        pose[J(f"{side}_wrist")] = [0, sign * 0.8, 1.55]
    return pose


def image_points(pose: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(17, 2) pixels: the pose seen from the front, filling most of a frame of `size`."""
    width, height = size
    scale = height * 0.45
    return np.stack([width / 2 + pose[:, 1] * scale, height * 0.95 - pose[:, 2] * scale], axis=-1)


def count_color(image: np.ndarray, color) -> int:
    return int(np.all(image == np.array(color, np.uint8), axis=-1).sum())


def panels(renderer: SideBySideRenderer, out: np.ndarray) -> list[np.ndarray]:
    """The left panel, then each 3D panel."""
    parts = [out[:, : renderer.left_width]]
    for k in range(renderer.num_panels):
        x0 = renderer.left_width + k * renderer.panel_width
        parts.append(out[:, x0 : x0 + renderer.panel_width])
    return parts


@pytest.fixture
def frame() -> np.ndarray:
    """A mid-grey 1768x994 frame (the sample clip's size): none of the skeleton colours occur in it."""
    return np.full((994, 1768, 3), 100, np.uint8)


@pytest.mark.parametrize("size,num_panels", [((1768, 994), 1), ((1768, 994), 3), ((641, 479), 2), ((480, 854), 1),
                                             ((320, 240), 0)])
def test_output_size_is_even_bounded_and_keeps_the_aspect(size, num_panels):
    pose = star_pose()
    renderer = SideBySideRenderer(size, [f"c{k}.bin" for k in range(num_panels)], WorldLimits.from_worlds([pose]))
    width, height = renderer.output_size
    assert width % 2 == 0 and height % 2 == 0
    assert height == min(size[1], 720) // 2 * 2
    assert abs(renderer.left_width / height - size[0] / size[1]) < 2.5 / height
    assert width == renderer.left_width + num_panels * renderer.panel_width
    assert renderer.panel_width == (height if num_panels else 0)
    frame = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = renderer.render(frame, image_points(pose, size), None, True, [pose] * num_panels)
    assert out.shape == (height, width, 3) and out.dtype == np.uint8


def test_layout_of_the_sample_clip_size():
    assert output_layout((1768, 994), 1, RenderConfig()) == (720, 1280, 720)
    assert output_layout((1768, 994), 2, RenderConfig(max_height=540, panel_aspect=0.75)) == (540, 960, 404)


def test_side_colours_appear_on_both_panels_where_the_joints_are(frame):
    pose = star_pose()
    renderer = SideBySideRenderer((1768, 994), ["a.bin", "b.bin"], WorldLimits.from_worlds([pose]),
                                  RenderConfig(elev=0.0, azim=0.0))  # a front view: left and right apart
    keypoints = image_points(pose, (1768, 994))
    out = renderer.render(frame, keypoints, None, True, [pose, pose])
    for part in panels(renderer, out):
        for color in (LEFT_BGR, RIGHT_BGR, CENTER_BGR):
            assert count_color(part, color) > 50
    # At each wrist and ankle (joints far from any other) the pixel has that side's colour on every panel.
    left_2d = panels(renderer, out)[0]
    scaled = keypoints * renderer.left_width / 1768
    for panel_index, part in enumerate(panels(renderer, out)):
        for side, color in (("left", LEFT_BGR), ("right", RIGHT_BGR)):
            for joint in (J(f"{side}_wrist"), J(f"{side}_ankle")):
                if panel_index == 0:
                    x, y = np.round(scaled[joint]).astype(int)
                    assert tuple(left_2d[y, x]) == color
                else:
                    (x, y), _ = renderer.panels[panel_index - 1].project(pose[joint])
                    assert tuple(part[int(round(y)), int(round(x))]) == color


def test_the_view_follows_matplotlib_elevation_and_azimuth():
    right, up, towards_eye = view_axes(elev=0.0, azim=0.0)
    np.testing.assert_allclose(towards_eye, [1, 0, 0], atol=1e-12)  # azim 0: the eye on the +x axis
    np.testing.assert_allclose(up, [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(view_axes(0.0, 90.0)[2], [0, 1, 0], atol=1e-12)  # azim 90: the eye on +y
    np.testing.assert_allclose(view_axes(90.0, 30.0)[2], [0, 0, 1], atol=1e-12)  # elev 90: looking straight down
    axes = view_axes(15.0, 70.0)
    np.testing.assert_allclose(axes @ axes.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(np.cross(axes[0], axes[1]), axes[2], atol=1e-12)  # right-handed

    # On screen: z goes up, and at azim=0 the +y axis goes to the right.
    pose = star_pose()
    renderer = SideBySideRenderer((640, 480), ["a"], WorldLimits.from_worlds([pose]),
                                  RenderConfig(elev=0.0, azim=0.0))
    (origin, top, side), depth = renderer.panels[0].project(np.array([[0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]]))
    assert top[1] < origin[1] and abs(top[0] - origin[0]) < 1e-9
    assert side[0] > origin[0] and abs(side[1] - origin[1]) < 1e-9


def test_3d_limits_are_fixed_for_the_clip(frame):
    """The same pose gives the same 3D panel whatever comes before or after it: no autoscaling jitter."""
    rng = np.random.default_rng(1)
    clip = np.stack([star_pose() + rng.normal(0, 0.2, (17, 3)) * (t % 3) for t in range(12)])
    clip[:, :, 2] -= clip[:, :, 2].min(axis=1, keepdims=True)
    renderer = SideBySideRenderer((1768, 994), ["a.bin"], WorldLimits.from_worlds([clip]))
    keypoints = image_points(star_pose(), (1768, 994))
    first = renderer.render(frame, keypoints, None, True, [clip[0]])
    for pose in clip[1:]:
        renderer.render(frame + 20, keypoints + 30, None, True, [pose])
    again = renderer.render(frame, keypoints, None, True, [clip[0]])
    np.testing.assert_array_equal(panels(renderer, first)[1], panels(renderer, again)[1])
    # Different poses do give different panels (the comparison above can fail).
    other = renderer.render(frame, keypoints, None, True, [clip[1]])
    assert not np.array_equal(panels(renderer, first)[1], panels(renderer, other)[1])
    # Every joint of every frame projects inside its panel, below the title.
    panel = renderer.panels[0]
    pixels, _ = panel.project(clip)
    assert pixels[..., 0].min() >= 0 and pixels[..., 0].max() < renderer.panel_width
    assert pixels[..., 1].min() >= renderer.height / 16 and pixels[..., 1].max() < renderer.height


def test_limits_hold_every_checkpoint_and_start_at_the_ground():
    a = star_pose()[None]
    b = star_pose()[None] * [1, 2, 1.2] + [0.3, 0, 0]
    limits = WorldLimits.from_worlds([a, b], margin=0.1)
    low, high = np.array(limits.low), np.array(limits.high)
    points = np.concatenate([a, b]).reshape(-1, 3)
    assert (points >= low).all() and (points <= high).all()
    assert low[2] <= 0.0
    assert high[0] - low[0] == pytest.approx(high[1] - low[1])  # square on the ground
    with pytest.raises(ValueError, match="no finite 3D joint"):
        WorldLimits.from_worlds([np.full((3, 17, 3), np.nan)])


def test_undetected_frames_are_marked_on_both_panels(frame):
    pose = star_pose()
    renderer = SideBySideRenderer((1768, 994), ["a.bin"], WorldLimits.from_worlds([pose]))
    keypoints = image_points(pose, (1768, 994))
    detected = renderer.render(frame, keypoints, None, True, [pose])
    missing = renderer.render(frame, keypoints, None, False, [pose])
    for shown, marked in zip(panels(renderer, detected), panels(renderer, missing), strict=True):
        assert count_color(shown, BANNER_BGR) == 0 and count_color(marked, BANNER_BGR) > 1000
        assert count_color(marked, INVALID_BGR) > count_color(shown, INVALID_BGR) + 50  # (text edges have greys)
        for color in (LEFT_BGR, RIGHT_BGR, CENTER_BGR):  # the skeleton is grey, not in side colours
            assert count_color(shown, color) > 50 and count_color(marked, color) == 0


def test_the_banner_promises_an_interpolated_pose_only_where_one_is_drawn(frame):
    assert no_detection_text(True) == "no detection: pose interpolated" and no_detection_text(False) == "no detection"
    pose = star_pose()
    renderer = SideBySideRenderer((1768, 994), ["a.bin"], WorldLimits.from_worlds([pose]))
    keypoints = image_points(pose, (1768, 994))
    inside = renderer.render(frame, keypoints, None, False, [pose], shown=np.array([True]))
    outside = renderer.render(frame, keypoints, None, False, [pose], shown=np.array([False]))
    rows = np.flatnonzero((inside[:, : renderer.left_width] == BANNER_BGR).all(axis=2).any(axis=1))
    assert len(rows) > 10  # the banner is there either way
    def text_pixels(image):
        strip = image[rows.min(): rows.max() + 1, : renderer.left_width]
        return int((strip.min(axis=2) > 200).sum())  # the white letters
    assert text_pixels(inside) > 1.8 * text_pixels(outside) > 0


def test_low_confidence_joints_are_dimmed(frame):
    pose = star_pose()
    renderer = SideBySideRenderer((1768, 994), [], WorldLimits.from_worlds([pose]), RenderConfig(min_score=0.3))
    keypoints = image_points(pose, (1768, 994))
    scores = np.ones(17)
    scores[J("left_wrist")] = 0.1
    out = renderer.render(frame, keypoints, scores, True, [])
    x, y = np.round(keypoints[J("left_wrist")] * renderer.left_width / 1768).astype(int)
    assert tuple(out[y, x]) != LEFT_BGR and tuple(out[y, x]) != tuple(frame[0, 0])
    x, y = np.round(keypoints[J("right_wrist")] * renderer.left_width / 1768).astype(int)
    assert tuple(out[y, x]) == RIGHT_BGR


def test_missing_joints_are_skipped_and_bad_input_is_rejected(frame):
    pose = star_pose()
    renderer = SideBySideRenderer((1768, 994), ["a.bin"], WorldLimits.from_worlds([pose]))
    keypoints = image_points(pose, (1768, 994))
    holes = pose.copy()
    holes[J("left_wrist")] = np.nan
    out = renderer.render(frame, np.full((17, 2), np.nan), None, True, [holes])
    assert count_color(panels(renderer, out)[0], LEFT_BGR) == 0  # no 2D keypoints: nothing drawn on the frame
    with pytest.raises(ValueError, match="1768x994 or 1280x720 BGR uint8 frame"):
        renderer.render(frame[:-2], keypoints, None, True, [pose])
    with pytest.raises(ValueError, match="2 world poses for 1 3D panels"):
        renderer.render(frame, keypoints, None, True, [pose, pose])


def test_a_frame_decoded_at_the_panel_size_is_drawn_as_the_full_frame_shrunk(frame):
    """The demo decodes the frames for rendering at `frame_size` (ffmpeg scales them): the keypoints stay in the
    input's pixels and land on the same spots; a full-size frame is shrunk by the renderer itself."""
    pose = star_pose()
    renderer = SideBySideRenderer((1768, 994), ["a.bin"], WorldLimits.from_worlds([pose]))
    assert renderer.frame_size == (1280, 720) == (renderer.left_width, renderer.height)
    keypoints = image_points(pose, (1768, 994))
    small = cv2.resize(frame, renderer.frame_size, interpolation=cv2.INTER_LINEAR)
    full = renderer.render(frame, keypoints, None, True, [pose])
    shrunk = renderer.render(small, keypoints, None, True, [pose])
    np.testing.assert_array_equal(full, shrunk)
    assert count_color(panels(renderer, shrunk)[0], LEFT_BGR) > 0
    # Drawn into a given array (the encoder's reused buffers): every pixel is overwritten, the same picture.
    out = np.full_like(full, 77)
    assert renderer.render(small, keypoints, None, True, [pose], out=out) is out
    np.testing.assert_array_equal(out, full)
    with pytest.raises(ValueError, match="out must be a"):
        renderer.render(small, keypoints, None, True, [pose], out=out[:, :-2])


def test_panel_titles_are_drawn(frame):
    pose = star_pose()
    limits = WorldLimits.from_worlds([pose])
    keypoints = image_points(pose, (1768, 994))
    a = SideBySideRenderer((1768, 994), ["27_243_45.2.bin"], limits).render(frame, keypoints, None, True, [pose])
    b = SideBySideRenderer((1768, 994), ["81_243_47.6.bin"], limits).render(frame, keypoints, None, True, [pose])
    top = slice(0, 720 // 16)
    assert not np.array_equal(a[top], b[top])
    np.testing.assert_array_equal(a[100:], b[100:])


def test_for_clip_takes_the_limits_from_every_panel(frame):
    rng = np.random.default_rng(2)
    a = np.stack([star_pose() for _ in range(5)])
    b = a * 1.5 + rng.normal(0, 0.05, a.shape)
    renderer = SideBySideRenderer.for_clip((1768, 994), ["a.bin", "b.bin"], [a, b])
    assert renderer.panels[0].scale == renderer.panels[1].scale  # one scale: checkpoints compare at a glance
    for panel in renderer.panels:
        pixels, _ = panel.project(np.concatenate([a, b]))
        assert pixels.min() >= 0 and pixels[..., 0].max() < renderer.panel_width
    out = renderer.render(frame, image_points(star_pose(), (1768, 994)), None, True, [a[0], b[0]])
    assert out.shape == (720, 1280 + 2 * 720, 3)
    with pytest.raises(ValueError, match="1 world pose arrays for 2 panel titles"):
        SideBySideRenderer.for_clip((1768, 994), ["a.bin", "b.bin"], [a])


@pytest.mark.slow
def test_sample_clip_renders_and_encodes_with_its_audio(tmp_path, shared_dir):
    """Real footage end to end: 30 frames of the 1768x994 sample from frame 100, side by side, with its AAC audio."""
    clip = shared_dir / "data" / "videos" / "sports2d_demo.mp4"
    if not clip.is_file():
        pytest.skip(f"sample clip missing: {clip}")
    capture = cv2.VideoCapture(str(clip))
    capture.set(cv2.CAP_PROP_POS_FRAMES, 100)
    frames = [capture.read()[1] for _ in range(30)]
    capture.release()
    poses = np.stack([star_pose() * [1, 1 + 0.01 * t, 1] for t in range(30)])
    renderer = SideBySideRenderer.for_clip((1768, 994), ["27_243_45.2.bin"], [poses])
    path = tmp_path / "sports2d_demo_pose3d.mp4"
    with VideoWriter(path, renderer.output_size, 30, frame_count=30, audio_source=clip, audio_start=100 / 30) as writer:
        for t, frame in enumerate(frames):
            writer.write(renderer.render(frame, image_points(poses[t], (1768, 994)), None, t % 10 != 9, [poses[t]]))
    info = probe(path)
    assert (info.codec, info.pix_fmt, info.width, info.height) == ("h264", "yuv420p", 2000, 720)
    assert info.audio_codec == "aac" and info.fps == 30.0
    decoded = _decode_all(path)
    assert len(decoded) == 30
    # The left panel is the input frame, downscaled: compare away from the drawn skeleton.
    expected = cv2.resize(frames[0], (1280, 720), interpolation=cv2.INTER_LINEAR)
    assert np.abs(decoded[0][:, :300].astype(int) - expected[:, :300]).mean() < 4


def _decode_all(path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


# ----------------------------------------------------------------------------------------------------------------------
# The moving view: skeletons placed along their trajectory, a fading pelvis trail


def test_a_moving_skeleton_is_drawn_where_its_trajectory_puts_it(frame):
    here = star_pose()
    there = star_pose() + [1.5, -2.0, 0.4]  # 2.5 m away and up on a step
    renderer = SideBySideRenderer.for_clip((1768, 994), ["a.bin"], [np.stack([here, there])])
    panel = renderer.panels[0]
    for pose in (here, there):  # the limits hold the whole path: every joint inside the panel, below the title
        pixels, _ = panel.project(pose)
        assert pixels[:, 0].min() > 0 and pixels[:, 0].max() < renderer.panel_width
        assert pixels[:, 1].min() > renderer.height / 16 and pixels[:, 1].max() < renderer.height
    keypoints = image_points(here, (1768, 994))

    def skeleton_centre(pose):
        part = panels(renderer, renderer.render(frame, keypoints, None, True, [pose]))[1]
        mask = np.zeros(part.shape[:2], bool)
        for color in (LEFT_BGR, RIGHT_BGR, CENTER_BGR):
            mask |= np.all(part == np.array(color, np.uint8), axis=-1)
        return np.argwhere(mask).mean(axis=0)[::-1]  # (x, y)

    moved = skeleton_centre(there) - skeleton_centre(here)
    expected = (panel.project(there)[0] - panel.project(here)[0]).mean(axis=0)
    np.testing.assert_allclose(moved, expected, atol=3.0)
    assert np.linalg.norm(expected) > 50  # a visible move, so the comparison above can fail


def test_the_pelvis_trail_fades_out_towards_its_oldest_frame(frame):
    config = RenderConfig(trail_frames=45)
    pose = star_pose()
    # 100 frames of pelvis path: the first 55 far off to one side (older than the trail shows), then 45 frames
    # walking 2 m towards the pose.
    far = np.tile([2.5, 2.5, 0.95], (55, 1))
    walk = np.stack([np.linspace(-2.0, -0.2, 45), np.zeros(45), np.full(45, 0.95)], axis=-1)
    path = np.concatenate([far, walk])
    renderer = SideBySideRenderer.for_clip((1768, 994), ["a.bin"], [np.stack([pose, pose + [-2, 0, 0]])], config)
    keypoints = image_points(pose, (1768, 994))
    plain = panels(renderer, renderer.render(frame, keypoints, None, True, [pose]))[1]
    trailed = panels(renderer, renderer.render(frame, keypoints, None, True, [pose], trails=[path]))[1]
    assert count_color(plain, TRAIL_BGR) == 0 and count_color(trailed, TRAIL_BGR) > 5
    panel = renderer.panels[0]

    def brightness(points):
        (x, y), _ = panel.project(points.mean(axis=0))
        return int(np.abs(trailed[int(round(y)), int(round(x))].astype(int) - PANEL_BACKGROUND_BGR).sum())

    recent, old = brightness(walk[-6:-4]), brightness(walk[3:5])
    assert recent > 2 * old > 0  # both drawn, the recent part much brighter
    shadow = walk[-6:-4].copy()
    shadow[:, 2] = 0.0
    assert brightness(shadow) > 0  # its shadow on the ground
    # Nothing older than `trail_frames` is drawn: the far-off frames leave the panel as it was.
    (x, y), _ = panel.project(far[0])
    np.testing.assert_array_equal(trailed[int(y) - 3:int(y) + 4, int(x) - 3:int(x) + 4],
                                  plain[int(y) - 3:int(y) + 4, int(x) - 3:int(x) + 4])
    # Several people: one (P, N, 3) trail per panel; and a panel may have none.
    both = renderer.render(frame, keypoints, None, True, [pose], trails=[np.stack([walk, walk + [0, 1, 0]])])
    assert count_color(panels(renderer, both)[1], TRAIL_BGR) > count_color(trailed, TRAIL_BGR)
    np.testing.assert_array_equal(renderer.render(frame, keypoints, None, True, [pose], trails=[None]),
                                  renderer.render(frame, keypoints, None, True, [pose]))
    with pytest.raises(ValueError, match="1 pelvis trails for"):
        SideBySideRenderer.for_clip((1768, 994), ["a", "b"], [pose[None], pose[None]]).render(
            frame, keypoints, None, True, [pose, pose], trails=[path])
    with pytest.raises(ValueError, match=r"a pelvis trail must be \(N, 3\)"):
        renderer.render(frame, keypoints, None, True, [pose], trails=[path[:, :2]])


def test_the_ground_grid_gets_coarser_on_a_long_path():
    assert grid_step(2.0, 0.25, 16) == 0.25
    assert grid_step(10.0, 0.25, 16) == 1.0
    assert grid_step(30.0, 0.25, 16) == 2.5
    assert grid_step(60.0, 0.25, 16) == 5.0
    for extent in (1.0, 7.3, 44.0, 500.0):
        assert extent / grid_step(extent, 0.25, 16) <= 16
