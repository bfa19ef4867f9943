"""Randomised virtual cameras that film a mocap clip like real footage, and pinhole projection.

World frames are Y up in metres with the floor at y = 0; camera frames are x right, y down, z forward (the lifter's
convention). The distributions follow what monocular lifters trained for in-the-wild video use (WHAM / GVHMR style
camera augmentation) rather than a studio rig: pitch ~N(5, 22.5) degrees (positive looks down), roll ~N(0, 7.5),
1-12 m away, phone-like focal lengths (13-80 mm equivalent) on landscape and portrait frames. Some cameras move: they
pan to keep the subject framed, dolly along, or shake like a hand-held phone; the 3D target is then in the camera
frame of each frame, exactly as a lifter sees a moving camera at run time. Every camera backs off until the subject
stays inside the image in most frames.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# (width, height): landscape HD/4K-like, phone portrait (the most common real-world upload), the sample clip's size.
IMAGE_SIZES = ((1920, 1080), (1280, 720), (1080, 1920), (720, 1280), (1768, 994), (3840, 2160), (640, 480),
               (1088, 1920), (2160, 3840))

# 35 mm-equivalent focal lengths of phone and consumer cameras, (low, high, weight): ultra-wide, main, portrait/tele.
LENSES = ((13.0, 18.0, 0.15), (22.0, 30.0, 0.6), (35.0, 80.0, 0.25))


@dataclass(frozen=True)
class Camera:
    rotation: np.ndarray  # (3, 3) world -> camera, or (F, 3, 3) per frame for a moving camera
    position: np.ndarray  # (3,) camera centre in the world, or (F, 3)
    focal: float  # pixels (square pixels)
    center: tuple[float, float]  # principal point, pixels
    width: int
    height: int

    def to_camera(self, points_world: np.ndarray) -> np.ndarray:
        """(..., 3) world points -> camera frame (x right, y down, z forward), metres. A moving camera needs
        (F, K, 3) points, one row per frame."""
        points = np.asarray(points_world)
        if self.rotation.ndim == 2:
            return (points - self.position) @ self.rotation.T
        if points.ndim != 3 or points.shape[0] != self.rotation.shape[0]:
            raise ValueError(f"a moving camera of {self.rotation.shape[0]} frames needs (F, K, 3) points with "
                             f"F = {self.rotation.shape[0]}, got {points.shape}")
        return np.einsum("fij,fkj->fki", self.rotation, points - self.position[:, None])

    def project(self, points_camera: np.ndarray) -> np.ndarray:
        """(..., 3) camera-frame points -> (..., 2) pixels."""
        z = np.maximum(points_camera[..., 2:3], 1e-6)
        return points_camera[..., :2] / z * self.focal + np.asarray(self.center)

    def unproject(self, pixels: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """(..., 2) pixels and (...) depths -> (..., 3) camera-frame points (inverse of `project`)."""
        xy = (np.asarray(pixels) - np.asarray(self.center)) / self.focal * depth[..., None]
        return np.concatenate([xy, depth[..., None]], axis=-1)


@dataclass(frozen=True)
class CameraConfig:
    distance_m: tuple[float, float] = (1.0, 12.0)  # log-uniform, before backing off to fit the subject
    pitch_deg: tuple[float, float] = (5.0, 22.5)  # mean, std; positive looks down
    pitch_limit_deg: float = 75.0
    roll_deg: float = 7.5  # standard deviation
    min_height_m: float = 0.15  # camera centre above the floor
    lenses: tuple[tuple[float, float, float], ...] = LENSES  # 35 mm-equivalent focal length ranges and weights
    aim_height_m: tuple[float, float] = (0.7, 1.3)  # where on the subject the camera points
    aim_jitter_m: float = 0.3  # off-centre framing
    inside_fraction: float = 0.9  # the subject's keypoints must all be inside the image in this share of frames
    image_sizes: tuple[tuple[int, int], ...] = IMAGE_SIZES
    pan_share: float = 0.25  # cameras that turn to follow the subject (smoothly, with a lag)
    dolly_share: float = 0.1  # cameras that also travel (tracking shots), up to dolly_speed m/s
    dolly_speed: float = 1.0
    shake_share: float = 0.3  # hand-held cameras: slow rotational wobble
    shake_deg: tuple[float, float] = (0.2, 1.5)  # std of the wobble
    fps: float = 30.0


def look_at(position: np.ndarray, target: np.ndarray, roll_rad: float | np.ndarray = 0.0) -> np.ndarray:
    """World->camera rotation of a camera at `position` looking at `target`, Y-up world, image y down.
    Batched: (F, 3) positions/targets and (F,) rolls give (F, 3, 3)."""
    forward = np.asarray(target, float) - position
    forward = forward / np.linalg.norm(forward, axis=-1, keepdims=True)
    right = np.cross(forward, np.array([0.0, 1.0, 0.0]))
    right = right / np.linalg.norm(right, axis=-1, keepdims=True)
    down = np.cross(forward, right)
    c, s = np.cos(roll_rad)[..., None], np.sin(roll_rad)[..., None]
    right, down = c * right + s * down, -s * right + c * down
    return np.stack([right, down, forward], axis=-2)


def focal_length_px(width: int, height: int, equivalent_mm: float) -> float:
    """Pixels of a 35 mm-equivalent focal length: the frame's long side spans the film's 36 mm."""
    return float(max(width, height) * equivalent_mm / 36.0)


def sample_focal(width: int, height: int, rng: np.random.Generator, lenses=LENSES) -> float:
    weights = np.array([w for _, _, w in lenses])
    low, high, _ = lenses[rng.choice(len(lenses), p=weights / weights.sum())]
    return focal_length_px(width, height, np.exp(rng.uniform(np.log(low), np.log(high))))


def _smooth(rng: np.random.Generator, num: int, sigma_frames: float, dims: int) -> np.ndarray:
    """(num, dims) unit-variance noise correlated over ~sigma_frames (gaussian-weighted keyframes)."""
    keys = max(int(num / sigma_frames) + 2, 2)
    values = rng.standard_normal((keys, dims))
    t = np.linspace(0, keys - 1, num)
    return np.stack([np.interp(t, np.arange(keys), values[:, d]) for d in range(dims)], axis=1)


def _follow(middle: np.ndarray, lag_frames: float) -> np.ndarray:
    """(F, 3) exponentially smoothed track of (F, 3) subject centres: where a following operator aims."""
    alpha = 1.0 / max(lag_frames, 1.0)
    out = np.empty_like(middle)
    out[0] = middle[0]
    for i in range(1, len(middle)):
        out[i] = out[i - 1] + alpha * (middle[i] - out[i - 1])
    return out


def _trajectory(points_world: np.ndarray, rng: np.random.Generator, config: CameraConfig):
    """Per-frame aim offsets (F, 3), camera travel (F, 3) and extra rotation noise (F, 3) radians of one camera."""
    num = points_world.shape[0]
    middle = points_world.mean(axis=1)
    aim = np.zeros((num, 3))
    travel = np.zeros((num, 3))
    if rng.random() < config.pan_share:
        aim = _follow(middle, rng.uniform(3, 30)) - middle.mean(axis=0)
        aim[:, 1] = 0.0  # operators pan and tilt little with the body's bobbing
    if rng.random() < config.dolly_share:
        heading = rng.uniform(0, 2 * np.pi)
        speed = rng.uniform(0.1, config.dolly_speed) / config.fps
        travel = np.outer(np.arange(num) - num / 2, [np.cos(heading), 0.0, np.sin(heading)]) * speed
    wobble = np.zeros((num, 3))
    if rng.random() < config.shake_share:
        wobble = _smooth(rng, num, rng.uniform(5, 30), 3) * np.deg2rad(rng.uniform(*config.shake_deg))
    return aim, travel, wobble


def _rotate_small(rotation: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """(F, 3, 3) rotations turned further by small (F, 3) angles about the camera's own axes."""
    x, y, z = angles[:, 0], angles[:, 1], angles[:, 2]
    skew = np.zeros((len(angles), 3, 3))
    skew[:, 0, 1], skew[:, 0, 2], skew[:, 1, 2] = -z, y, -x
    skew -= np.transpose(skew, (0, 2, 1))
    # First-order rotation, re-orthonormalised: the angles are a degree or two.
    u, _, vt = np.linalg.svd(np.eye(3) + skew)
    return (u @ vt) @ rotation


def sample_camera(points_world: np.ndarray, rng: np.random.Generator, config: CameraConfig = CameraConfig()) -> Camera:
    """A random camera filming `points_world` (F, K, 3): the keypoints that must stay in view."""
    width, height = config.image_sizes[rng.integers(len(config.image_sizes))]
    focal = sample_focal(width, height, rng, config.lenses)
    center = (width / 2 + rng.normal(0, 0.01 * width), height / 2 + rng.normal(0, 0.01 * height))
    floor = points_world[..., 1].min()
    middle = points_world.reshape(-1, 3).mean(axis=0)
    yaw = rng.uniform(0, 2 * np.pi)
    distance = np.exp(rng.uniform(*np.log(config.distance_m)))
    pitch = np.deg2rad(np.clip(rng.normal(*config.pitch_deg), -config.pitch_limit_deg, config.pitch_limit_deg))
    target = np.array([middle[0], floor + rng.uniform(*config.aim_height_m), middle[2]])
    target[[0, 2]] += rng.normal(0, config.aim_jitter_m, 2)
    roll = np.deg2rad(rng.normal(0, config.roll_deg))
    aim, travel, wobble = _trajectory(points_world, rng, config)
    moving = bool(np.any(aim) or np.any(travel) or np.any(wobble))
    for _ in range(30):
        # A camera below the floor is impossible: looking up is limited by how low the camera can go.
        lowest = np.arcsin(np.clip((floor + config.min_height_m - target[1]) / distance, -1, 1))
        p = max(pitch, lowest)
        offset = distance * np.array([np.cos(p) * np.sin(yaw), np.sin(p), np.cos(p) * np.cos(yaw)])
        if moving:
            position = target + offset + travel
            rotation = _rotate_small(look_at(position, target + aim, np.full(len(aim), roll)), wobble)
        else:
            position = target + offset
            rotation = look_at(position, target, roll)
        camera = Camera(rotation, position, float(focal), center, int(width), int(height))
        if inside_share(camera, points_world) >= config.inside_fraction:
            return camera
        distance *= 1.15  # back off, like a camera operator would
    return camera


def camera_angles(camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    """(pitch, roll) in degrees of a camera (per frame for a moving one): pitch > 0 looks down, roll > 0 turns the
    image clockwise."""
    rotation = camera.rotation if camera.rotation.ndim == 3 else camera.rotation[None]
    forward, right = rotation[:, 2], rotation[:, 0]
    pitch = np.rad2deg(np.arcsin(np.clip(-forward[:, 1], -1, 1)))
    level_right = np.cross(forward, [0.0, 1.0, 0.0])
    level_right /= np.maximum(np.linalg.norm(level_right, axis=-1, keepdims=True), 1e-9)
    down = np.cross(forward, level_right)
    roll = np.rad2deg(np.arctan2((right * down).sum(-1), (right * level_right).sum(-1)))
    return pitch, roll


def inside_share(camera: Camera, points_world: np.ndarray) -> float:
    """Share of frames whose keypoints are all in front of the camera and inside the image."""
    cam = camera.to_camera(points_world)
    px = camera.project(cam)
    ok = (cam[..., 2] > 0.1) & (px[..., 0] >= 0) & (px[..., 0] < camera.width) & (px[..., 1] >= 0) & (
        px[..., 1] < camera.height)
    return float(ok.all(axis=-1).mean())
