"""The interactive HTML viewer (pipeline/viewer.py): its data, and the page itself in a real browser.

Browser tests drive Debian's chromium (`apt-get install chromium`) with Playwright (`pip install playwright`, no
`playwright install`) and skip when either is missing. They open the page from file:// on the first 30 frames of the
real sample clip (skipped without ../shared) and poses of a walking skeleton projected into that clip.
"""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.skeleton import H36M
from pipeline.viewer import COLORS, SCALE_2D, SCALE_3D, viewer_html, viewer_payload, write_viewer

CLIP_FRAMES = 30
CLIP_WIDTH = 960
FPS = 30.0
INVALID_FRAMES = (10, 11, 12)  # person 0 "not detected" there
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

# A standing Human3.6M skeleton, metres, z up, facing -y (towards the default view), lowest joint at z = 0.
REST_POSE = np.array([
    [0.00, 0.00, 0.95], [-0.13, 0.00, 0.93], [-0.14, 0.02, 0.50], [-0.15, 0.04, 0.06],  # pelvis, right leg
    [0.13, 0.00, 0.93], [0.14, 0.02, 0.50], [0.15, 0.04, 0.06],  # left leg
    [0.00, 0.01, 1.20], [0.00, 0.02, 1.45], [0.00, -0.02, 1.55], [0.00, 0.00, 1.68],  # spine, thorax, nose, head
    [0.18, 0.02, 1.42], [0.42, 0.02, 1.42], [0.65, 0.02, 1.42],  # left arm held out sideways
    [-0.18, 0.02, 1.42], [-0.20, 0.02, 1.15], [-0.21, 0.00, 0.90],  # right arm down
], dtype=np.float64)


def walking_poses(frames: int) -> np.ndarray:
    """(T, 17, 3): the rest pose turning about the vertical axis, arms and legs swinging: every frame differs."""
    poses = np.repeat(REST_POSE[None], frames, axis=0)
    t = np.arange(frames)
    swing = 0.25 * np.sin(t * 0.4)
    for j in (H36M.index("left_wrist"), H36M.index("right_knee"), H36M.index("right_ankle")):
        poses[:, j, 2] += swing
    turn = t * 0.08
    c, s = np.cos(turn)[:, None], np.sin(turn)[:, None]
    x, y = poses[..., 0].copy(), poses[..., 1].copy()
    poses[..., 0], poses[..., 1] = c * x - s * y, s * x + c * y
    poses[..., 2] -= poses[..., 2].min(axis=1, keepdims=True)
    return poses


def project(poses: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pinhole image of world poses (T, 17, 3) seen from 4 m in front: (T, 17, 2) pixels, y down."""
    focal = float(width)
    depth = 4.0 + poses[..., 1]
    u = width * 0.55 + focal * poses[..., 0] / depth
    v = height * 0.75 - focal * (poses[..., 2] - 0.9) / depth
    return np.stack([u, v], axis=-1)


def example_arrays(frames: int = CLIP_FRAMES, width: int = CLIP_WIDTH, height: int = 540) -> dict:
    """Two checkpoints (the second off by a fixed 3-6 cm per joint), one person, three undetected frames."""
    first = walking_poses(frames)
    offsets = np.random.default_rng(0).normal(0.0, 0.03, size=(17, 3))
    second = first + offsets[None]
    valid = np.ones(frames, bool)
    valid[[t for t in INVALID_FRAMES if t < frames]] = False
    return {
        "keypoints_2d": project(first, width, height)[None].astype(np.float32),  # (1, T, 17, 2)
        "valid": valid[None],  # (1, T)
        "poses_world": np.stack([first, second])[:, None].astype(np.float32),  # (2, 1, T, 17, 3)
        "checkpoint_names": ["poseformerv2_mocap_27_3_3.safetensors", "27_243_45.2.bin"],
        "fps": FPS, "image_size": (width, height),
    }


def root_relative_distance_mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame mean per-joint distance of root-relative poses (T, 17, 3) -> (T,) mm: the runner's figure."""
    return np.linalg.norm((a - a[:, :1]) - (b - b[:, :1]), axis=-1).mean(axis=-1) * 1000


# ---- the data, no browser -------------------------------------------------------------------------------------


def test_payload_rounds_to_a_tenth_pixel_and_a_millimetre_and_keeps_missing_joints_missing():
    arrays = example_arrays(frames=5)
    arrays["keypoints_2d"][0, 2, 3] = np.nan
    arrays["poses_world"][1, 0, 4, 16] = np.nan
    payload = viewer_payload(video_relpath="clip.mp4", **arrays)
    kp = np.array([np.nan if v is None else v for v in payload["keypoints2d"][0]], float) / SCALE_2D
    np.testing.assert_allclose(kp.reshape(5, 17, 2), arrays["keypoints_2d"][0], atol=0.05 + 1e-4)
    assert np.isnan(kp.reshape(5, 17, 2)[2, 3]).all()
    pose = np.array([np.nan if v is None else v for v in payload["poses3d"][1][0]], float) / SCALE_3D
    np.testing.assert_allclose(pose.reshape(5, 17, 3), arrays["poses_world"][1, 0], atol=0.0005 + 1e-6)
    assert np.isnan(pose.reshape(5, 17, 3)[4, 16]).all()
    assert payload["valid"] == ["11111"] and payload["confident"] is None and payload["trajectory"] is None
    assert payload["flipSpread"] is None
    with pytest.raises(ValueError, match="flip_disagreement_mm has shape"):
        viewer_payload(video_relpath="clip.mp4", flip_disagreement_mm=np.zeros((1, 1, 5)), **arrays)
    assert payload["frames"] == 5 and payload["people"] == 1 and payload["checkpoints"] == arrays["checkpoint_names"]


def test_single_person_arrays_without_the_people_axis_give_the_same_page_data():
    arrays = example_arrays(frames=4)
    squeezed = {**arrays, "keypoints_2d": arrays["keypoints_2d"][0], "valid": arrays["valid"][0],
                "poses_world": arrays["poses_world"][:, 0]}
    assert viewer_payload(video_relpath="a.mp4", **squeezed) == viewer_payload(video_relpath="a.mp4", **arrays)


def test_scores_become_a_low_confidence_mask_and_the_video_path_a_relative_url():
    arrays = example_arrays(frames=2)
    scores = np.full((1, 2, 17), 0.9, np.float32)
    scores[0, 1, 5] = 0.1
    payload = viewer_payload(video_relpath="../../videos/my clip#1.mp4", scores_2d=scores, **arrays)
    assert payload["confident"] == ["1" * 17 + "1" * 5 + "0" + "1" * 11]
    assert payload["videoUrl"] == "../../videos/my%20clip%231.mp4" and payload["videoName"] == "my clip#1.mp4"


@pytest.mark.parametrize("change, message", [
    ({"video_relpath": "/abs/clip.mp4"}, "relative"),
    ({"video_relpath": "https://example.com/clip.mp4"}, "relative"),
    ({"fps": 0.0}, "fps"),
    ({"image_size": (0, 540)}, "image_size"),
    ({"valid": np.ones((1, 7), bool)}, "valid"),
    ({"keypoints_2d": np.zeros((1, 5, 16, 2))}, "keypoints_2d"),
    ({"poses_world": np.zeros((2, 1, 4, 17, 3))}, "poses_world"),
    ({"checkpoint_names": ["only_one.bin"]}, "checkpoint names"),
    ({"trajectory_world": np.zeros((2, 1, 5, 2))}, "trajectory_world"),
    ({"frame_offset": -1}, "frame_offset"),
])
def test_bad_input_is_one_line_value_error_naming_the_problem(tmp_path, change, message):
    arrays = {"video_relpath": "clip.mp4", **example_arrays(frames=5), **change}
    with pytest.raises(ValueError, match=message) as err:
        write_viewer(tmp_path / "viewer.html", **arrays)
    assert "\n" not in str(err.value)
    assert not list(tmp_path.iterdir())  # nothing written


def test_write_viewer_replaces_the_page_atomically_and_inlines_everything(tmp_path):
    dest = tmp_path / "out" / "viewer.html"
    dest.parent.mkdir()
    dest.write_text("old")
    arrays = example_arrays(frames=3)
    arrays["checkpoint_names"] = ["</script><script>alert(1)</script>.bin", "b.bin"]
    assert write_viewer(dest, video_relpath="clip.mp4", title="clip <1>", **arrays) == dest
    assert [p.name for p in dest.parent.iterdir()] == ["viewer.html"]  # no temporary file left
    page = dest.read_text(encoding="utf-8")
    assert page.count("</script>") == 3  # data, three.js, viewer: the checkpoint name did not close a script
    assert "<title>clip &lt;1&gt;</title>" in page
    data = json.loads(re.search(r'id="viewer-data">(.*?)</script>', page, re.S).group(1))
    assert data["checkpoints"][0].startswith("</script>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing loads from elsewhere


def test_a_minute_of_video_makes_a_page_of_a_few_megabytes():
    frames = 1800  # 60 s at 30 fps
    arrays = example_arrays(frames=frames, width=1920, height=1080)
    arrays["keypoints_2d"] += np.random.default_rng(1).normal(0, 40, arrays["keypoints_2d"].shape)  # full digits
    sizes = {k: len(viewer_html(viewer_payload(
        video_relpath="clip.mp4", **{**arrays, "poses_world": arrays["poses_world"][:k],
                                     "checkpoint_names": arrays["checkpoint_names"][:k]})).encode())
        for k in (1, 2)}
    # Measured: 1.32 MB with one checkpoint (0.60 MB of it three.js and the viewer, 0.37 MB the 2D keypoints), then
    # +0.37 MB per further checkpoint.
    assert sizes[1] < 1.6e6 and sizes[2] - sizes[1] < 0.45e6, sizes


# ---- the page in a real browser -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"chromium not found at {CHROMIUM} (apt-get install chromium)")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@pytest.fixture(scope="module")
def clip_folder(shared_dir, browser, tmp_path_factory) -> Path:
    """A folder with the first 30 frames of the sample clip, 960 px wide, as H.264 mp4 (what the runner writes) or,
    when this chromium cannot play H.264 (builds without proprietary codecs), as VP9 WebM: `clip.*`."""
    source = shared_dir / "data" / "videos" / "sports2d_demo.mp4"
    if not source.is_file():
        pytest.skip(f"sample clip {source} is absent")
    page = browser.new_page()
    plays_h264 = page.evaluate("document.createElement('video').canPlayType('video/mp4; codecs=\"avc1.64001f\"')")
    page.close()
    folder = tmp_path_factory.mktemp("viewer_clip")
    dest, codec = (folder / "clip.mp4", ["-c:v", "libx264", "-preset", "veryfast", "-crf", "16", "-pix_fmt",
                                         "yuv420p"]) if plays_h264 else \
        (folder / "clip.webm", ["-c:v", "libvpx-vp9", "-b:v", "0", "-crf", "20", "-deadline", "realtime"])
    subprocess.run([_ffmpeg(), "-v", "error", "-nostdin", "-i", str(source), "-frames:v", str(CLIP_FRAMES),
                    "-vf", f"scale={CLIP_WIDTH}:-2", "-an", *codec, str(dest)], check=True)
    return folder


@pytest.fixture(scope="module")
def clip_frames(clip_folder) -> np.ndarray:
    """The test clip decoded by the pipeline's own decoder: (30, H, W, 3) uint8 RGB, the reference for pixels."""
    from pipeline.media.decode import iter_frames

    (clip,) = clip_folder.glob("clip.*")
    frames = np.stack([f[..., ::-1] for f in iter_frames(clip)])  # BGR -> RGB
    assert len(frames) == CLIP_FRAMES
    return frames


class ViewerPage:
    """One opened viewer page, with every request, console error and page error it caused."""

    def __init__(self, browser, html_path: Path, bypass_csp: bool = True):
        # Playwright polls wait_for_function predicates through eval(), which the page's Content-Security-Policy
        # forbids; test_page_policy_refuses_network_requests checks the policy itself, without the bypass.
        self.context = browser.new_context(viewport={"width": 1400, "height": 640}, bypass_csp=bypass_csp)
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.finished: list[str] = []  # requests that got a response
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("requestfinished", lambda r: self.finished.append(r.url))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(html_path.as_uri())  # returns after the load event: the inline scripts have all run
        assert self.page.evaluate("window.viewerState && window.viewerState.ready"), self.errors

    def state(self) -> dict:
        return self.page.evaluate("window.viewerState")

    def wait_video_ready(self) -> None:
        self.page.wait_for_function("document.getElementById('video').readyState >= 2 || window.viewerState.videoError",
                                    timeout=15000)
        assert self.state()["videoError"] is None, self.state()["videoError"]

    def screenshot(self, selector: str, path: Path | None = None) -> np.ndarray:
        """The element as the user sees it, (h, w, 3) uint8 RGB."""
        import cv2

        png = self.page.locator(selector).screenshot(path=None if path is None else str(path))
        return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]

    def go_to(self, frame: int) -> None:
        """Move the slider (as a user dragging it does) and wait until the video shows that frame."""
        self.page.locator("#slider").fill(str(frame))
        self.page.wait_for_function(
            f"!document.getElementById('video').seeking && window.viewerState.shownVideoFrame === {frame}"
            f" && window.viewerState.frame === {frame}", timeout=10000)

    def drag_3d(self) -> tuple[float, float]:
        """Drag across the 3D view as a user orbiting it does; returns where the drag started."""
        box = self.page.locator("#canvas3d").bounding_box()
        x, y = box["x"] + box["width"] / 4, box["y"] + box["height"] / 2
        self.page.mouse.move(x, y)
        self.page.mouse.down()
        self.page.mouse.move(x + 160, y + 40, steps=8)
        self.page.mouse.up()
        return x, y

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def open_viewer(browser, clip_folder):
    """Factory: write a viewer for the test clip next to it (extra write_viewer arguments allowed) and open it."""
    pages = []

    def open_(name: str = "viewer.html", bypass_csp: bool = True, **overrides) -> ViewerPage:
        (clip,) = clip_folder.glob("clip.*")
        arrays = {"video_relpath": clip.name, "title": "sports2d_demo (first 30 frames)", **example_arrays(),
                  **overrides}
        page = ViewerPage(browser, write_viewer(clip_folder / name, **arrays), bypass_csp=bypass_csp)
        pages.append(page)
        return page

    yield open_
    for page in pages:
        page.close()


def color_pixels(image: np.ndarray, hex_color: str, tolerance: int = 40) -> int:
    rgb = np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(image.astype(int) - rgb).max(axis=-1) <= tolerance).sum())


def test_page_opens_from_disk_without_network_or_errors(open_viewer, clip_folder):
    viewer = open_viewer()
    viewer.wait_video_ready()
    assert viewer.requests, "the page made no request at all, not even for the clip"
    leaving = [u for u in viewer.requests if not u.startswith(("file://", "data:", "blob:"))]
    assert not leaving, leaving
    (clip,) = clip_folder.glob("clip.*")
    assert clip.as_uri() in viewer.requests  # the clip comes by its relative path, not inlined
    state = viewer.state()
    assert state["webglError"] is None and state["frames"] == CLIP_FRAMES and state["renders3d"] > 0
    assert viewer.errors == []


def test_page_policy_refuses_network_requests(open_viewer):
    viewer = open_viewer(bypass_csp=False)
    outcome = viewer.page.evaluate("""async () => {
        const refused = [];
        document.addEventListener("securitypolicyviolation", (e) => refused.push(e.blockedURI));
        const fetched = await fetch("https://example.com/pose.json").then(() => "fetched", (e) => "failed");
        const img = new Image();
        img.src = "https://example.com/pixel.png";
        await new Promise((done) => { img.onerror = done; img.onload = done; });
        return {fetched, refused};
    }""")
    assert outcome["fetched"] == "failed" and len(outcome["refused"]) == 2, outcome
    # Chromium reports the image request before refusing it: none may have been answered.
    assert not [u for u in viewer.finished if u.startswith("http")], viewer.finished
    assert viewer.state()["renders3d"] > 0 and viewer.state()["webglError"] is None  # the policy lets the page work


def test_3d_view_draws_both_sides_and_dragging_orbits_it_and_reset_brings_it_back(open_viewer, tmp_path):
    viewer = open_viewer()
    viewer.wait_video_ready()
    before = viewer.screenshot("#canvas3d", Path("/tmp/viewer_3d_before.png"))
    for side in ("left", "right", "center"):
        assert color_pixels(before, COLORS[side]) > 200, side
    assert len(np.unique(before.reshape(-1, 3), axis=0)) > 50  # not a blank canvas
    start = viewer.state()["camera"]

    x, y = viewer.drag_3d()
    turned = viewer.screenshot("#canvas3d", Path("/tmp/viewer_3d_turned.png"))
    assert np.abs(turned.astype(int) - before).max(axis=-1).astype(bool).mean() > 0.02
    assert not np.allclose(viewer.state()["camera"], start, atol=1e-3)

    viewer.page.mouse.move(x, y)
    viewer.page.mouse.wheel(0, -400)  # zoom in: the camera comes nearer its target
    zoomed = viewer.state()
    assert np.linalg.norm(np.subtract(zoomed["camera"], zoomed["target"])) < \
        np.linalg.norm(np.subtract(start, zoomed["target"])) - 0.05

    viewer.page.click("#reset")
    np.testing.assert_allclose(viewer.state()["camera"], start, atol=1e-6)
    back = viewer.screenshot("#canvas3d")
    assert np.abs(back.astype(int) - before).max() <= 2
    assert viewer.errors == []


def test_slider_moves_video_and_3d_to_the_same_frame(open_viewer, clip_frames):
    import cv2

    arrays = example_arrays()
    viewer = open_viewer()
    viewer.wait_video_ready()
    viewer.page.evaluate("document.getElementById('overlay').style.visibility = 'hidden'")  # the video's own pixels
    for frame in (5, 17, 29, 2):
        viewer.go_to(frame)
        state = viewer.state()
        assert frame / FPS <= state["videoTime"] < (frame + 1) / FPS
        np.testing.assert_allclose(state["pose3d"], arrays["poses_world"][:, :, frame], atol=0.0005 + 1e-6)
        np.testing.assert_allclose(state["keypoints2d"], arrays["keypoints_2d"][:, frame], atol=0.05 + 1e-3)
        assert state["valid"] == [frame not in INVALID_FRAMES]
        shown = viewer.screenshot("#video").astype(np.float32)
        h, w = shown.shape[:2]
        candidates = range(max(0, frame - 3), min(CLIP_FRAMES, frame + 4))
        errors = {i: float(np.abs(cv2.resize(clip_frames[i], (w, h), interpolation=cv2.INTER_AREA) - shown).mean())
                  for i in candidates}
        assert min(errors, key=errors.get) == frame, errors
        assert errors[frame] < 4.0, errors
    assert viewer.errors == []


def test_arrow_keys_and_buttons_step_frame_by_frame(open_viewer):
    viewer = open_viewer()
    viewer.wait_video_ready()
    viewer.go_to(3)
    viewer.page.keyboard.press("ArrowRight")
    assert viewer.state()["frame"] == 4
    viewer.page.keyboard.press("Shift+ArrowRight")
    assert viewer.state()["frame"] == 14
    viewer.page.click("#prev")
    viewer.page.click("#prev")
    assert viewer.state()["frame"] == 12
    viewer.page.click("#next")
    viewer.page.keyboard.press("ArrowLeft")
    viewer.page.keyboard.press("End")
    assert viewer.state()["frame"] == CLIP_FRAMES - 1
    viewer.page.keyboard.press("ArrowRight")  # stays on the last frame
    viewer.page.wait_for_function(f"window.viewerState.shownVideoFrame === {CLIP_FRAMES - 1}")
    assert viewer.state()["frame"] == CLIP_FRAMES - 1
    assert viewer.errors == []


def test_undetected_frames_are_labelled_and_drawn_grey(open_viewer):
    viewer = open_viewer()
    viewer.wait_video_ready()
    viewer.go_to(9)
    detected = viewer.screenshot("#canvas3d")
    assert viewer.page.locator("#banner2d").is_hidden()
    viewer.go_to(INVALID_FRAMES[1])
    undetected = viewer.screenshot("#canvas3d", Path("/tmp/viewer_3d_undetected.png"))
    assert viewer.page.locator("#banner2d").is_visible()
    assert viewer.page.locator("#labels3d .banner").first.is_visible()
    assert viewer.state()["valid"] == [False]
    assert color_pixels(detected, COLORS["left"]) > 200 and color_pixels(undetected, COLORS["left"]) == 0
    assert color_pixels(undetected, COLORS["invalid"], tolerance=12) > 200


def test_checkpoints_side_by_side_or_overlaid_with_their_disagreement(open_viewer):
    arrays = example_arrays()
    expected = root_relative_distance_mm(arrays["poses_world"][0, 0], arrays["poses_world"][1, 0])
    spread = np.stack([np.linspace(20, 80, CLIP_FRAMES), np.linspace(90, 30, CLIP_FRAMES)])[:, None]  # (K, P, T) mm
    spread[1, 0, 3] = np.nan
    viewer = open_viewer(flip_disagreement_mm=spread)
    viewer.wait_video_ready()
    viewer.go_to(7)
    state = viewer.state()
    assert [v["checkpoints"] for v in state["viewports"]] == [[0], [1]]
    assert state["disagreementMm"][0] is None
    assert abs(state["disagreementMm"][1] - expected[7]) < 1.0  # data rounded to 1 mm
    assert abs(state["clipMeanDisagreementMm"][1] - expected.mean()) < 1.0
    label = viewer.page.locator("#labels3d .view-label").nth(1).inner_text()
    assert arrays["checkpoint_names"][1] in label and f"{expected[7]:.0f} mm" in label
    # How far apart each checkpoint's flip test passes are, this frame (demo.py's flip_disagreement_mm).
    assert state["flipSpreadMm"] == [round(spread[0, 0, 7]), round(spread[1, 0, 7])]
    assert f"flip test passes {spread[1, 0, 7]:.0f} mm apart" in label
    assert f"flip test passes {spread[0, 0, 7]:.0f} mm apart" in viewer.page.locator("#labels3d .view-label").nth(
        0).inner_text()
    viewer.go_to(3)
    assert "flip test passes - apart" in viewer.page.locator("#labels3d .view-label").nth(1).inner_text()

    viewer.page.click("#mode")
    state = viewer.state()
    assert state["mode"] == "overlay" and [v["checkpoints"] for v in state["viewports"]] == [[0, 1]]
    overlaid = viewer.screenshot("#canvas3d", Path("/tmp/viewer_3d_overlay.png"))
    assert color_pixels(overlaid, "#ffffff", tolerance=30) > 100  # the second checkpoint, in its overlay colour
    assert color_pixels(overlaid, COLORS["left"]) > 100  # the first keeps the side colours
    assert viewer.errors == []


def play_slowly_from_the_start(viewer):
    """Play the clip from frame 0 at a quarter of the speed: the 1 s clip would otherwise end before this busy
    machine samples it a few times."""
    viewer.wait_video_ready()
    viewer.go_to(0)
    viewer.page.evaluate("document.getElementById('video').playbackRate = 0.25")
    viewer.page.click("#play")


def test_playing_advances_video_and_3d_in_step_and_pausing_keeps_them_together(open_viewer):
    viewer = open_viewer()
    play_slowly_from_the_start(viewer)
    seen = []
    for _ in range(6):
        viewer.page.wait_for_timeout(50)
        state = viewer.state()
        seen.append(state["frame"])
        if state["playing"] and state["shownVideoFrame"] is not None:
            assert state["shownVideoFrame"] == state["frame"]  # the 3D follows the presented video frame
    viewer.page.click("#play")  # pause mid-clip: both stay on the frame the video stopped on
    # The video is paused at once, and its 'pause' event, which brings picture, time and 3D onto one frame, follows:
    # a playing Chromium presents frames up to one ahead of currentTime, so wait for the time to agree as well.
    viewer.page.wait_for_function("!window.viewerState.playing && document.getElementById('video').paused && "
                                  "!document.getElementById('video').seeking && "
                                  "window.viewerState.shownVideoFrame === window.viewerState.frame && "
                                  f"Math.floor(document.getElementById('video').currentTime * {FPS} + 1e-3) === "
                                  "window.viewerState.frame")
    state = viewer.state()
    assert 0 < state["frame"] < CLIP_FRAMES - 1, seen
    assert state["shownVideoFrame"] == state["frame"] == math.floor(state["videoTime"] * FPS + 1e-3)

    viewer.page.keyboard.press("Space")  # play on to the end
    viewer.page.wait_for_function("!window.viewerState.playing", timeout=10000)
    state = viewer.state()
    seen.append(state["frame"])
    assert seen == sorted(seen) and state["frame"] == CLIP_FRAMES - 1, seen
    assert viewer.errors == []


def test_pausing_and_playing_again_at_once_keeps_playing(open_viewer):
    viewer = open_viewer()
    play_slowly_from_the_start(viewer)
    viewer.page.wait_for_function("window.viewerState.frame >= 1")
    # Both presses in one task: the video's 'pause' event from the first arrives after the second started it again.
    viewer.page.evaluate("document.getElementById('play').click(); document.getElementById('play').click()")
    viewer.page.wait_for_timeout(300)
    assert viewer.page.evaluate("window.viewerState.playing && !document.getElementById('video').paused")
    viewer.page.wait_for_function("!window.viewerState.playing", timeout=10000)
    assert viewer.state()["frame"] == CLIP_FRAMES - 1  # it played on to the end
    assert viewer.errors == []


def test_playback_stops_at_the_end_of_the_processed_part_of_a_longer_clip(open_viewer):
    viewer = open_viewer("part.html", **example_arrays(frames=10), frame_offset=5)  # as --start 5 --end 15
    viewer.wait_video_ready()
    viewer.page.wait_for_function("window.viewerState.shownVideoFrame === 5")  # opens on the first processed frame
    viewer.page.click("#play")
    viewer.page.wait_for_function("!window.viewerState.playing", timeout=10000)
    # The video may run a few frames on before it pauses; it is brought back to the last processed frame.
    viewer.page.wait_for_function("document.getElementById('video').paused && !document.getElementById('video').seeking"
                                  " && window.viewerState.shownVideoFrame === 14")
    assert viewer.state()["frame"] == 9
    assert viewer.errors == []


def test_trajectory_trail_follow_mode_and_frame_offset(open_viewer):
    rows = CLIP_FRAMES - 10  # rows 0..19 are video frames 10..29 (as with --start 10)
    arrays = example_arrays(frames=rows)
    walk = np.stack([np.linspace(-0.6, 0.6, rows), np.full(rows, -0.3), np.zeros(rows)], axis=-1)
    arrays["poses_world"] = arrays["poses_world"] + walk[:, None].astype(np.float32)  # moving along the path
    pelvis = arrays["poses_world"][:, :, :, H36M.index("pelvis")]  # (K, P, T, 3): what the runner passes
    viewer = open_viewer("offset.html", **arrays, frame_offset=10, trajectory_world=pelvis)
    viewer.wait_video_ready()
    start = viewer.state()
    assert start["trajectory"] is True and start["follow"] is True  # with a trajectory the view follows the person
    at_start = color_pixels(viewer.screenshot("#canvas3d"), COLORS["trajectory"])

    viewer.page.locator("#slider").fill("19")  # the slider holds rows, not video frames
    viewer.page.wait_for_function("!document.getElementById('video').seeking && "
                                  "window.viewerState.shownVideoFrame === 29")
    end = viewer.state()
    assert end["frame"] == 19 and 29 / FPS <= end["videoTime"] < 30 / FPS
    moved = pelvis[0, 0, 19] - pelvis[0, 0, 0]
    np.testing.assert_allclose(np.subtract(end["target"], start["target"]), moved, atol=0.002)
    np.testing.assert_allclose(np.subtract(end["camera"], start["camera"]), moved, atol=0.002)
    travelled = color_pixels(viewer.screenshot("#canvas3d", Path("/tmp/viewer_3d_trail.png")), COLORS["trajectory"])
    assert travelled > at_start + 100, (at_start, travelled)  # the bright trail grows along the path walked

    viewer.page.click("#follow")  # the whole scene: the view no longer moves with the person
    whole = viewer.state()
    assert whole["follow"] is False
    viewer.page.keyboard.press("Home")
    assert viewer.state()["target"] == whole["target"] and viewer.state()["frame"] == 0
    assert viewer.errors == []


def test_a_missing_clip_is_reported_and_the_poses_still_play(open_viewer):
    viewer = open_viewer("missing.html", video_relpath="no_such_clip.mp4")
    viewer.page.wait_for_function("window.viewerState.videoError !== null", timeout=10000)
    assert "no_such_clip.mp4" in viewer.state()["videoError"]
    assert viewer.page.locator("#message2d").is_visible()
    viewer.page.click("#play")
    viewer.page.wait_for_function("window.viewerState.frame >= 5", timeout=5000)
    assert all("no_such_clip.mp4" in e or "ERR_FILE_NOT_FOUND" in e for e in viewer.errors), viewer.errors
    assert math.isfinite(viewer.state()["pose3d"][0][0][0][0])


def test_the_demo_writes_a_viewer_page_that_opens_offline_and_orbits(browser, clip_folder, tmp_path, capsys):
    """The runner's own page for a real clip (the shipped lifter, its trajectory): it opens from disk with no request
    leaving the machine and no script error, draws the skeleton, and a drag on the 3D view changes the drawing."""
    from pipeline.cli import main

    (clip,) = clip_folder.glob("clip.*")
    assert main(["--video", str(clip), "--out", str(tmp_path / "out"), "--quiet", "--no-render", "--no-bvh"]) == 0
    page = tmp_path / "out" / clip.stem / f"{clip.stem}_viewer.html"
    viewer = ViewerPage(browser, page)
    try:
        viewer.wait_video_ready()
        assert not [u for u in viewer.requests if not u.startswith(("file://", "data:", "blob:"))], viewer.requests
        state = viewer.state()
        assert state["frames"] == CLIP_FRAMES and state["webglError"] is None and state["renders3d"] > 0
        before = viewer.screenshot("#canvas3d")
        assert color_pixels(before, COLORS["left"]) > 50 and color_pixels(before, COLORS["right"]) > 50
        viewer.drag_3d()
        after = viewer.screenshot("#canvas3d")
        assert np.abs(after.astype(int) - before).max(axis=-1).astype(bool).mean() > 0.02
        assert viewer.errors == []
    finally:
        viewer.close()
