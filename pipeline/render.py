"""Side-by-side rendering: the input frame with the 2D skeleton on the left, one 3D skeleton panel per checkpoint.

Drawn with OpenCV, not Matplotlib: a Matplotlib 3D figure costs tens of milliseconds per frame, far from the 40
frames/s target. Everything that does not change during a clip (output size, view, scale, ground grid, titles) is
computed once in `SideBySideRenderer.__init__`; `render` only resizes the frame and draws a few dozen lines.

World poses (T, 17, 3) are in the world view, z up, metres, the ground at z = 0, in either of two forms: pinned, as
the released PoseFormerV2 demo draws them (pelvis at x = y = 0, each frame's lowest joint at z = 0), or moving, placed
along the pelvis trajectory (`pipeline.motion.trajectory.world_view`: one ground for the clip, so jumps show). The
renderer does not need to know which: the 3D limits hold every pose of the clip either way, and a moving view can pass
each frame's pelvis path so far (`trails`), drawn as a fading trail with its shadow on the ground. The view follows
Matplotlib's meaning: `elev` is the angle of the eye above the ground plane, `azim` the rotation of the eye about the
vertical z axis (defaults: the released demo's 15/70).

Several people: only those `shown` on a frame are drawn (the caller passes who is there: detected, or inside a short
interpolated gap), so nobody's held pose stands where nobody is. With `labels`, each person gets a colour of their own
(`PERSON_BGR`, by position in the list, so the same in every frame and both panels) for an outline around their
skeleton (on detected frames) and a small label (their track id) in both panels; the limbs keep the left/right
colours.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.skeleton import H36M, Skeleton

log = logging.getLogger(__name__)

# One palette for both panels (BGR). Left = blue, right = orange-red, centre = green, as in the released demo's
# 3D plot (left blue, right red); green keeps the spine visible on dark and on bright footage.
LEFT_BGR = (235, 140, 30)
RIGHT_BGR = (40, 90, 240)
CENTER_BGR = (90, 215, 90)
# Skeleton colour on frames where the target was not detected (pose interpolated): grey, drawn dashed.
INVALID_BGR = (150, 150, 150)
BANNER_BGR = (30, 30, 200)
PANEL_BACKGROUND_BGR = (32, 32, 32)
GROUND_BGR = (58, 58, 58)
GRID_BGR = (95, 95, 95)
SHADOW_BGR = (22, 22, 22)
TEXT_BGR = (235, 235, 235)
# The pelvis trail: yellow, a colour no skeleton part uses; its ground shadow in a darker shade of it.
TRAIL_BGR = (60, 215, 245)
TRAIL_SHADOW_BGR = (40, 110, 125)
# One colour per person (outline and label) when several are drawn: none of them is a limb, trail or grey colour.
PERSON_BGR = ((245, 245, 245), (200, 60, 230), (230, 220, 60), (255, 110, 150), (200, 150, 255), (100, 150, 200),
              (140, 160, 0), (160, 90, 255))
LABEL_SHADOW_BGR = (20, 20, 20)

_SUBPIXEL_BITS = 4  # cv2 drawing `shift`: coordinates in 1/16 pixel, so slow motion does not jump pixel by pixel
_SUBPIXEL = 1 << _SUBPIXEL_BITS
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_TRAIL_SHADES = 9  # steps of the trail's fade


@dataclass(frozen=True)
class RenderConfig:
    max_height: int = 720  # output height: the input height, scaled down to at most this (rounded down to even)
    elev: float = 15.0  # degrees of the eye above the ground plane
    azim: float = 70.0  # degrees of rotation of the eye about the vertical axis
    panel_aspect: float = 1.0  # width / height of each 3D panel
    min_score: float = 0.3  # 2D joints scored below this are drawn dimmed
    grid_spacing: float = 0.25  # world units between ground grid lines (at least; coarser on a large ground)
    max_grid_lines: int = 16  # per direction: a long path gets 0.5, 1, 2 or 5 m grid spacing instead
    margin: float = 0.15  # world units of free space around the clip's poses in the 3D panels
    trail_frames: int = 45  # the pelvis trail shows this many frames back, fading out (1.5 s at 30 frames/s)


def side_color(skeleton: Skeleton, parent: int, child: int) -> tuple[int, int, int]:
    side = skeleton.bone_side(parent, child)
    return LEFT_BGR if side == "left" else RIGHT_BGR if side == "right" else CENTER_BGR


@dataclass(frozen=True)
class WorldLimits:
    """Axis-aligned box (world units) that holds every pose of the clip: the 3D panels never rescale or jitter."""

    low: tuple[float, float, float]
    high: tuple[float, float, float]

    @classmethod
    def from_worlds(cls, worlds: Sequence[np.ndarray], margin: float = 0.15) -> WorldLimits:
        """Limits over every frame of every checkpoint's (T, J, 3) poses; NaN joints are ignored.

        The horizontal extent is a square centred on the poses (so turning the view never clips), the vertical one
        starts at the ground (z=0) or below it if a joint goes lower.
        """
        points = [np.asarray(w, dtype=np.float64).reshape(-1, 3) for w in worlds]
        points = np.concatenate(points) if points else np.zeros((0, 3))
        points = points[np.isfinite(points).all(axis=1)]
        if len(points) == 0:
            raise ValueError("no finite 3D joint in the world poses: nothing to set the 3D view limits from")
        low, high = points.min(axis=0), points.max(axis=0)
        centre_xy = (low[:2] + high[:2]) / 2
        half_xy = max((high[:2] - low[:2]).max() / 2, 0.5) + margin  # at least ~1 m of ground: context
        z_low = min(0.0, low[2]) - margin / 3
        z_high = max(high[2], z_low + 0.5) + margin
        return cls(
            low=(centre_xy[0] - half_xy, centre_xy[1] - half_xy, z_low),
            high=(centre_xy[0] + half_xy, centre_xy[1] + half_xy, z_high),
        )


def grid_step(extent: float, minimum: float, max_lines: int) -> float:
    """Ground grid spacing: the first of minimum x (1, 2, 4, 10, 20, 40, 100, ...) (0.25, 0.5, 1, 2.5, 5, 10 m from
    the default 0.25) that draws at most `max_lines` lines across `extent` world units."""
    step, k = minimum, 0
    while extent / step > max_lines:
        step *= (2.0, 2.0, 2.5)[k % 3]
        k += 1
    return step


def view_axes(elev: float, azim: float) -> np.ndarray:
    """(3, 3) rows: screen right, screen up and the direction towards the eye, in world coordinates."""
    e, a = math.radians(elev), math.radians(azim)
    right = [-math.sin(a), math.cos(a), 0.0]
    up = [-math.sin(e) * math.cos(a), -math.sin(e) * math.sin(a), math.cos(e)]
    towards_eye = [math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)]
    return np.array([right, up, towards_eye])


def even_floor(value: float) -> int:
    return max(2, int(value) // 2 * 2)


def output_layout(input_size: tuple[int, int], num_panels: int, config: RenderConfig) -> tuple[int, int, int]:
    """(output height, left panel width, width of each 3D panel), all even as yuv420p needs."""
    in_w, in_h = input_size
    if in_w <= 0 or in_h <= 0:
        raise ValueError(f"input frame size must be positive, got {in_w}x{in_h}")
    height = even_floor(min(in_h, config.max_height))
    left_width = even_floor(round(in_w * height / in_h / 2) * 2)
    panel_width = even_floor(round(height * config.panel_aspect / 2) * 2) if num_panels else 0
    return height, left_width, panel_width


class _Panel3D:
    """The fixed parts of one 3D panel: projection, pre-drawn background (ground, grid, title, axes)."""

    def __init__(self, size: tuple[int, int], title: str, limits: WorldLimits, config: RenderConfig):
        width, height = size
        self.axes = view_axes(config.elev, config.azim)
        low, high = np.array(limits.low), np.array(limits.high)
        title_height = max(18, height // 16)
        pad = max(6, height // 40)
        # Fit the projection of the whole limit box into the panel below the title, once for the clip.
        corners = np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])])
        uv = corners @ self.axes[:2].T
        uv_low, uv_high = uv.min(axis=0), uv.max(axis=0)
        avail_w, avail_h = width - 2 * pad, height - title_height - 2 * pad
        self.scale = min(avail_w / (uv_high[0] - uv_low[0]), avail_h / (uv_high[1] - uv_low[1]))
        uv_mid = (uv_low + uv_high) / 2
        self.offset = np.array([width / 2, title_height + pad + avail_h / 2])
        self.uv_mid = uv_mid
        self.line_thickness = max(2, round(height / 200))
        self.background = self._draw_background((width, height), title, low, high, config, title_height)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (..., 3) -> pixel coordinates (..., 2) and depth (...,) (larger = nearer the eye)."""
        view = points @ self.axes.T
        pixels = np.empty(view.shape[:-1] + (2,))
        pixels[..., 0] = self.offset[0] + (view[..., 0] - self.uv_mid[0]) * self.scale
        pixels[..., 1] = self.offset[1] - (view[..., 1] - self.uv_mid[1]) * self.scale
        return pixels, view[..., 2]

    def _draw_background(self, size, title, low, high, config, title_height) -> np.ndarray:
        width, height = size
        panel = np.full((height, width, 3), PANEL_BACKGROUND_BGR, dtype=np.uint8)
        ground = np.array([[low[0], low[1], 0], [high[0], low[1], 0], [high[0], high[1], 0], [low[0], high[1], 0]])
        ground_px, _ = self.project(ground)
        cv2.fillConvexPoly(panel, _fixed(ground_px), GROUND_BGR, cv2.LINE_AA, _SUBPIXEL_BITS)
        step = grid_step(float(high[0] - low[0]), config.grid_spacing, config.max_grid_lines)
        for axis in (0, 1):
            first = math.ceil(low[axis] / step) * step
            for value in np.arange(first, high[axis] + 1e-9, step):
                a, b = np.array([low[0], low[1], 0.0]), np.array([high[0], high[1], 0.0])
                a[axis] = b[axis] = value
                ends, _ = self.project(np.stack([a, b]))
                cv2.line(panel, *_fixed_points(ends), GRID_BGR, 1, cv2.LINE_AA, _SUBPIXEL_BITS)
        self._draw_axes_gizmo(panel)
        _put_title(panel, title, title_height)
        return panel

    def _draw_axes_gizmo(self, panel: np.ndarray) -> None:
        """Small x/y/z triad in the bottom-left corner so the viewing direction can be read."""
        height = panel.shape[0]
        length = height / 14
        origin = np.array([height / 20 + length, height - height / 20 - length])
        font_scale = max(0.3, height / 1800)
        for k, name in enumerate("xyz"):
            direction = self.axes[:2, k] * np.array([1.0, -1.0])
            tip = origin + direction * length
            cv2.line(panel, *_fixed_points(np.stack([origin, tip])), GRID_BGR, 1, cv2.LINE_AA, _SUBPIXEL_BITS)
            label = origin + direction * (length + 9 * font_scale / 0.4)
            cv2.putText(panel, name, (int(label[0]) - 3, int(label[1]) + 4), _FONT, font_scale, TEXT_BGR, 1,
                        cv2.LINE_AA)


def _fixed(points: np.ndarray) -> np.ndarray:
    return np.round(points * _SUBPIXEL).astype(np.int32)


def _fixed_points(points: np.ndarray) -> tuple[tuple[int, int], ...]:
    return tuple((int(x), int(y)) for x, y in _fixed(points))


def _put_title(panel: np.ndarray, text: str, title_height: int) -> None:
    font_scale = title_height / 34
    thickness = max(1, round(title_height / 20))
    (text_w, _), _ = cv2.getTextSize(text, _FONT, font_scale, thickness)
    max_w = panel.shape[1] - 8
    while text_w > max_w and len(text) > 4:  # a long file name: keep its end, which holds the distinguishing part
        text = "..." + text[len(text) // 8 + 4:]
        (text_w, _), _ = cv2.getTextSize(text, _FONT, font_scale, thickness)
    x = max(4, (panel.shape[1] - text_w) // 2)
    cv2.putText(panel, text, (x, int(title_height * 0.8)), _FONT, font_scale, TEXT_BGR, thickness, cv2.LINE_AA)


def _draw_segment(canvas, a, b, color, thickness, dashed: bool) -> None:
    """A line between two float pixel points; dashed draws every other piece of length ~4 thicknesses."""
    if not dashed:
        cv2.line(canvas, *_fixed_points(np.stack([a, b])), color, thickness, cv2.LINE_AA, _SUBPIXEL_BITS)
        return
    length = float(np.hypot(*(b - a)))
    pieces = max(1, int(length / (4 * thickness)))
    for k in range(0, pieces, 2):
        p = a + (b - a) * (k / pieces)
        q = a + (b - a) * (min(k + 1, pieces) / pieces)
        cv2.line(canvas, *_fixed_points(np.stack([p, q])), color, thickness, cv2.LINE_AA, _SUBPIXEL_BITS)


def _paths(trail) -> np.ndarray:
    """A trail (N, 3) or (P, N, 3) -> (P, N, 3) float64 (P = 0 when there is no point yet)."""
    trail = np.asarray(trail, dtype=np.float64)
    if trail.ndim < 2 or trail.shape[-1] != 3:
        raise ValueError(f"a pelvis trail must be (N, 3) or (P, N, 3), got shape {trail.shape}")
    return trail.reshape(-1, trail.shape[-2], 3) if trail.shape[-2] else np.zeros((0, 0, 3))


def _dim(color: tuple[int, int, int], amount: float = 0.55) -> tuple[int, int, int]:
    """Blend a colour towards grey: how low-confidence joints are shown."""
    return tuple(int(c * (1 - amount) + 128 * amount) for c in color)


def _draw_banner(canvas: np.ndarray, text: str) -> None:
    height, width = canvas.shape[:2]
    bar = max(16, height // 22)
    cv2.rectangle(canvas, (0, height - bar), (width - 1, height - 1), BANNER_BGR, -1)
    font_scale = bar / 34
    thickness = max(1, round(bar / 18))
    (text_w, _), _ = cv2.getTextSize(text, _FONT, font_scale, thickness)
    cv2.putText(canvas, text, (max(4, (width - text_w) // 2), height - bar // 4 - 1), _FONT, font_scale, TEXT_BGR,
                thickness, cv2.LINE_AA)


def _draw_outline(canvas: np.ndarray, points: np.ndarray, finite: np.ndarray, bones, color, thickness: int) -> None:
    """A person's colour around their skeleton: every bone drawn wider in `color`, under the limb colours."""
    for p, c in bones:
        if finite[p] and finite[c]:
            cv2.line(canvas, *_fixed_points(points[[p, c]]), color, thickness + 4, cv2.LINE_AA, _SUBPIXEL_BITS)


def _draw_label(canvas: np.ndarray, points: np.ndarray, label: tuple[str, tuple[int, int, int]],
                height: int) -> None:
    """`label` = (text, colour) centred above the highest of `points` (pixels), on a dark shadow so it reads on any
    background."""
    if len(points) == 0:
        return
    text, color = label
    font_scale = max(0.4, height / 1100)  # 0.65 at 720 output rows
    thickness = max(1, round(height / 400))
    (text_w, text_h), _ = cv2.getTextSize(text, _FONT, font_scale, thickness)
    x = int(np.clip(points[:, 0].mean() - text_w / 2, 2, canvas.shape[1] - text_w - 2))
    y = int(np.clip(points[:, 1].min() - text_h, text_h + 2, canvas.shape[0] - 2))
    cv2.putText(canvas, text, (x, y), _FONT, font_scale, LABEL_SHADOW_BGR, thickness + 2, cv2.LINE_AA)
    cv2.putText(canvas, text, (x, y), _FONT, font_scale, color, thickness, cv2.LINE_AA)


NO_DETECTION_TEXT = "no detection: pose interpolated"


def no_detection_text(shown: bool) -> str:
    """The input panel's banner on a frame where the followed person is not detected: their pose is drawn
    interpolated (grey, dashed) inside a short gap, and not at all outside their span, where saying it is
    interpolated would promise a skeleton that is not there."""
    return NO_DETECTION_TEXT if shown else "no detection"


class SideBySideRenderer:
    """Renders one output frame: input frame + 2D skeleton, then one 3D panel per checkpoint.

    Construct once per clip (the fixed limits must come from all the clip's world poses, see `WorldLimits`), then
    call `render` per frame. Pure arrays in, array out; the output size is `output_size` (width, height), even.
    """

    def __init__(
        self,
        input_size: tuple[int, int],
        panel_titles: Sequence[str],
        limits: WorldLimits,
        config: RenderConfig = RenderConfig(),
        skeleton: Skeleton = H36M,
    ):
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.config = config
        self.skeleton = skeleton
        self.num_panels = len(panel_titles)
        self.height, self.left_width, self.panel_width = output_layout(self.input_size, self.num_panels, config)
        self.output_size = (self.left_width + self.num_panels * self.panel_width, self.height)
        self.panels = [_Panel3D((self.panel_width, self.height), str(t), limits, config) for t in panel_titles]
        self._keypoint_scale = np.array([self.left_width / self.input_size[0], self.height / self.input_size[1]])
        self._line_2d = max(2, round(self.height / 240))
        self._bones = skeleton.bones
        self._bone_colors = [side_color(skeleton, p, c) for p, c in self._bones]
        self._joint_colors = [
            LEFT_BGR if skeleton.side(j) == "left" else RIGHT_BGR if skeleton.side(j) == "right" else CENTER_BGR
            for j in range(skeleton.num_joints)
        ]

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) at which the input frame is drawn: `render` takes frames of this size as they are (decode
        them so, `pipeline.media.decode.iter_frames(size=...)`) and resizes frames of the input size to it."""
        return self.left_width, self.height

    @classmethod
    def for_clip(
        cls,
        input_size: tuple[int, int],
        panel_titles: Sequence[str],
        worlds_per_panel: Sequence[np.ndarray],
        config: RenderConfig = RenderConfig(),
        skeleton: Skeleton = H36M,
    ) -> SideBySideRenderer:
        """A renderer whose 3D limits hold every frame of every panel's (T, J, 3) poses: the usual way to build one."""
        if len(worlds_per_panel) != len(panel_titles):
            raise ValueError(f"got {len(worlds_per_panel)} world pose arrays for {len(panel_titles)} panel titles")
        limits = WorldLimits.from_worlds(worlds_per_panel, margin=config.margin) if len(panel_titles) else \
            WorldLimits((-1.0, -1.0, 0.0), (1.0, 1.0, 2.0))
        return cls(input_size, panel_titles, limits, config, skeleton)

    def render(
        self,
        frame_bgr: np.ndarray,
        keypoints_2d: np.ndarray,
        scores: np.ndarray | None,
        valid: bool | np.ndarray,
        worlds: Sequence[np.ndarray],
        trails: Sequence[np.ndarray] | None = None,
        shown: np.ndarray | None = None,
        labels: Sequence[str] | None = None,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """frame (H, W, 3) uint8 BGR of the input size or of `frame_size`, keypoints (J, 2) input pixels, scores
        (J,) or None, valid = the target was detected in this frame, worlds = one (J, 3) pose per panel -> (h, w, 3)
        uint8 BGR.

        Several people: keypoints (P, J, 2), scores (P, J), valid (P,), worlds = one (P, J, 3) array per panel, the
        followed person first (the "no detection" banner is about that person).

        trails (moving view only): one array (or None) per panel of pelvis positions up to this frame, oldest first,
        (N, 3) or (P, N, 3) for several people, e.g. `root[: t + 1]`; the last `config.trail_frames` are drawn,
        fading out towards the oldest, under the skeletons.

        shown (P,) bool: the people drawn on this frame (None: everyone); the others, their trails included, are
        left out. labels: one short text per person (e.g. the track id): each person is outlined in the 2D panel
        and labelled in both panels in their own colour, PERSON_BGR[p]. out: a (h, w, 3) uint8 array to draw into
        (every pixel is overwritten) instead of a new one, e.g. `pipeline.media.encode.VideoWriter.frame_buffer()`."""
        in_w, in_h = self.input_size
        shapes = {(in_h, in_w, 3), (self.height, self.left_width, 3)}
        if frame_bgr.shape not in shapes or frame_bgr.dtype != np.uint8:
            raise ValueError(f"expected a {in_w}x{in_h} or {self.left_width}x{self.height} BGR uint8 frame, got shape "
                             f"{frame_bgr.shape} {frame_bgr.dtype}")
        if len(worlds) != self.num_panels:
            raise ValueError(f"got {len(worlds)} world poses for {self.num_panels} 3D panels")
        if trails is not None and len(trails) != self.num_panels:
            raise ValueError(f"got {len(trails)} pelvis trails for {self.num_panels} 3D panels")
        joints = self.skeleton.num_joints
        people_2d = np.asarray(keypoints_2d, dtype=np.float64).reshape(-1, joints, 2)
        people_scores = [None] * len(people_2d) if scores is None else np.asarray(scores).reshape(-1, joints)
        people_valid = np.atleast_1d(np.asarray(valid, dtype=bool))
        people_shown = np.ones(len(people_2d), bool) if shown is None else np.atleast_1d(np.asarray(shown, bool))
        if len(people_shown) != len(people_2d) or (labels is not None and len(labels) != len(people_2d)):
            raise ValueError(f"got shown/labels for {len(people_shown)}/{len(labels or [])} people, "
                             f"keypoints for {len(people_2d)}")
        shape = (self.height, self.output_size[0], 3)
        if out is None:
            out = np.empty(shape, dtype=np.uint8)
        elif out.shape != shape or out.dtype != np.uint8:
            raise ValueError(f"out must be a {shape} uint8 array, got {out.shape} {out.dtype}")
        left = out[:, : self.left_width]
        if frame_bgr.shape[:2] == (self.height, self.left_width):
            left[:] = frame_bgr
        else:
            # INTER_LINEAR: 2 ms for 1768x994 -> 1280x720 where INTER_AREA takes 13 ms (benchmarks/bench_render.py);
            # at these downscale factors (< 2x) the difference in sharpness is hard to see.
            left[:] = cv2.resize(frame_bgr, (self.left_width, self.height), interpolation=cv2.INTER_LINEAR)
        for p, (person, person_scores, person_valid) in enumerate(zip(people_2d, people_scores, people_valid,
                                                                      strict=False)):
            if people_shown[p]:
                self._draw_2d(left, person * self._keypoint_scale, person_scores, bool(person_valid),
                              None if labels is None else (labels[p], PERSON_BGR[p % len(PERSON_BGR)]))
        if not people_valid[0]:
            _draw_banner(left, no_detection_text(bool(people_shown[0])))
        for k, (panel, world) in enumerate(zip(self.panels, worlds, strict=True)):
            x0 = self.left_width + k * self.panel_width
            target = out[:, x0 : x0 + self.panel_width]
            target[:] = panel.background
            if trails is not None and trails[k] is not None:
                for p, path in enumerate(_paths(trails[k])):
                    if p >= len(people_shown) or people_shown[p]:
                        self._draw_trail(target, panel, path[-self.config.trail_frames:])
            people_3d = np.asarray(world, dtype=np.float64).reshape(-1, joints, 3)
            for p, (person, person_valid) in enumerate(zip(people_3d, people_valid, strict=False)):
                if people_shown[p]:
                    self._draw_3d(target, panel, person, bool(person_valid),
                                  None if labels is None else (labels[p], PERSON_BGR[p % len(PERSON_BGR)]))
            if not people_valid[0]:
                _draw_banner(target, "no detection")
        return out

    def _draw_2d(self, canvas: np.ndarray, points: np.ndarray, scores: np.ndarray | None, valid: bool,
                 label: tuple[str, tuple[int, int, int]] | None = None) -> None:
        """One 2D skeleton; with a label (text, colour): an outline of that colour under the bones, the text above."""
        thickness = self._line_2d
        confident = np.ones(len(points), bool) if scores is None else np.asarray(scores) >= self.config.min_score
        finite = np.isfinite(points).all(axis=1)
        if label is not None:
            if valid:  # an interpolated (grey, dashed) pose keeps only its label
                _draw_outline(canvas, points, finite, self._bones, label[1], thickness)
            _draw_label(canvas, points[finite], label, self.height)
        for (p, c), color in zip(self._bones, self._bone_colors, strict=True):
            if not (finite[p] and finite[c]):
                continue
            if not valid:
                color = INVALID_BGR
            elif not (confident[p] and confident[c]):
                color = _dim(color)
            _draw_segment(canvas, points[p], points[c], color, thickness, dashed=not valid)
        for j in np.flatnonzero(finite):
            color = INVALID_BGR if not valid else self._joint_colors[j] if confident[j] else _dim(self._joint_colors[j])
            centre = tuple(int(v) for v in np.round(points[j] * _SUBPIXEL))
            cv2.circle(canvas, centre, (thickness + 1) * _SUBPIXEL, color, -1, cv2.LINE_AA, _SUBPIXEL_BITS)

    def _draw_3d(self, canvas: np.ndarray, panel: _Panel3D, world: np.ndarray, valid: bool,
                 label: tuple[str, tuple[int, int, int]] | None = None) -> None:
        finite = np.isfinite(world).all(axis=1)
        safe = np.where(finite[:, None], world, 0.0)
        pixels, depth = panel.project(safe)
        shadow = safe.copy()
        shadow[:, 2] = 0.0
        shadow_px, _ = panel.project(shadow)
        thickness = panel.line_thickness
        bones = [(p, c, col) for (p, c), col in zip(self._bones, self._bone_colors, strict=True)
                 if finite[p] and finite[c]]
        for p, c, _ in bones:  # the pose's shadow on the ground helps reading depth and height
            cv2.line(canvas, *_fixed_points(shadow_px[[p, c]]), SHADOW_BGR, thickness, cv2.LINE_AA, _SUBPIXEL_BITS)
        if label is not None and valid:
            _draw_outline(canvas, pixels, finite, self._bones, label[1], thickness)
        # Far bones first, so that nearer limbs are drawn over them.
        bones.sort(key=lambda bone: depth[bone[0]] + depth[bone[1]])
        for p, c, color in bones:
            _draw_segment(canvas, pixels[p], pixels[c], color if valid else INVALID_BGR, thickness, dashed=not valid)
        for j in np.flatnonzero(finite):
            color = self._joint_colors[j] if valid else INVALID_BGR
            centre = tuple(int(v) for v in np.round(pixels[j] * _SUBPIXEL))
            cv2.circle(canvas, centre, thickness * _SUBPIXEL, color, -1, cv2.LINE_AA, _SUBPIXEL_BITS)
        if label is not None:
            _draw_label(canvas, pixels[finite], label, canvas.shape[0])

    def _draw_trail(self, canvas: np.ndarray, panel: _Panel3D, path: np.ndarray) -> None:
        """Pelvis positions (N, 3), oldest first: a line whose colour fades from the background (oldest) to
        `TRAIL_BGR` (now), and its shadow on the ground fading the same way. Drawn as `_TRAIL_SHADES` polylines of
        one shade each, not one line per segment: measured 1.5 ms instead of 9.4 ms for a 45-frame trail."""
        path = path[np.isfinite(path).all(axis=1)]
        if len(path) < 2:
            return
        shadow = path.copy()
        shadow[:, 2] = 0.0
        thickness = max(1, panel.line_thickness - 1)
        background = np.array(PANEL_BACKGROUND_BGR, np.float64)
        bounds = np.linspace(0, len(path) - 1, min(_TRAIL_SHADES, len(path) - 1) + 1).round().astype(int)
        for points, color in ((shadow, TRAIL_SHADOW_BGR), (path, TRAIL_BGR)):
            pixels = _fixed(panel.project(points)[0])
            for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
                strength = stop / (len(path) - 1)  # the newest piece at full colour
                faded = tuple(int(round(c)) for c in background + strength * (np.array(color) - background))
                cv2.polylines(canvas, [pixels[start:stop + 1]], False, faded, thickness, cv2.LINE_AA, _SUBPIXEL_BITS)
