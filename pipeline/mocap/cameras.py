"""Randomised static virtual cameras that film a mocap clip like real footage, and pinhole projection.

World frames are Y up in metres with the floor at y = 0; camera frames are x right, y down, z forward (the lifter's
convention). A camera stands at a random yaw around the clip's mean position, 2.5-10 m away, 0.5-2.5 m high, looks
at the subject's torso with a little roll, and has a 40-90 degree horizontal field of view on a common video size;
it backs off until the subject stays inside the image in most frames.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# (width, height): landscape HD/4K-like, phone portrait, and the sample clip's size.
IMAGE_SIZES = ((1920, 1080), (1280, 720), (1080, 1920), (720, 1280), (1768, 994), (3840, 2160), (640, 480))


@dataclass(frozen=True)
class Camera:
    rotation: np.ndarray  # (3, 3) world -> camera
    position: np.ndarray  # (3,) camera centre in the world
    focal: float  # pixels (square pixels)
    center: tuple[float, float]  # principal point, pixels
    width: int
    height: int

    def to_camera(self, points_world: np.ndarray) -> np.ndarray:
        """(..., 3) world points -> camera frame (x right, y down, z forward), metres."""
        return (np.asarray(points_world) - self.position) @ self.rotation.T

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
    distance_m: tuple[float, float] = (2.5, 10.0)
    height_m: tuple[float, float] = (0.5, 2.5)
    horizontal_fov_deg: tuple[float, float] = (40.0, 90.0)
    roll_deg: float = 2.0  # standard deviation
    aim_height_m: tuple[float, float] = (0.7, 1.3)  # where on the subject the camera points
    aim_jitter_m: float = 0.3  # off-centre framing
    inside_fraction: float = 0.9  # the subject's keypoints must all be inside the image in this share of frames
    image_sizes: tuple[tuple[int, int], ...] = IMAGE_SIZES


def look_at(position: np.ndarray, target: np.ndarray, roll_rad: float = 0.0) -> np.ndarray:
    """World->camera rotation of a camera at `position` looking at `target`, Y-up world, image y down."""
    forward = target - position
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, np.array([0.0, 1.0, 0.0]))
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    c, s = np.cos(roll_rad), np.sin(roll_rad)
    right, down = c * right + s * down, -s * right + c * down
    return np.stack([right, down, forward])


def sample_camera(points_world: np.ndarray, rng: np.random.Generator, config: CameraConfig = CameraConfig()) -> Camera:
    """A random camera filming `points_world` (F, K, 3): the keypoints that must stay in view."""
    width, height = config.image_sizes[rng.integers(len(config.image_sizes))]
    fov = np.deg2rad(rng.uniform(*config.horizontal_fov_deg))
    focal = width / 2 / np.tan(fov / 2)
    center = (width / 2 + rng.normal(0, 0.01 * width), height / 2 + rng.normal(0, 0.01 * height))
    floor = points_world[..., 1].min()
    middle = points_world.reshape(-1, 3).mean(axis=0)
    yaw = rng.uniform(0, 2 * np.pi)
    distance = np.exp(rng.uniform(*np.log(config.distance_m)))
    cam_height = floor + rng.uniform(*config.height_m)
    target = np.array([middle[0], floor + rng.uniform(*config.aim_height_m), middle[2]])
    target[[0, 2]] += rng.normal(0, config.aim_jitter_m, 2)
    roll = np.deg2rad(rng.normal(0, config.roll_deg))
    for _ in range(30):
        position = np.array([middle[0] + distance * np.sin(yaw), cam_height, middle[2] + distance * np.cos(yaw)])
        camera = Camera(look_at(position, target, roll), position, float(focal), center, int(width), int(height))
        if inside_share(camera, points_world) >= config.inside_fraction:
            return camera
        distance *= 1.15  # back off, like a camera operator would
    return camera


def inside_share(camera: Camera, points_world: np.ndarray) -> float:
    """Share of frames whose keypoints are all in front of the camera and inside the image."""
    cam = camera.to_camera(points_world)
    px = camera.project(cam)
    ok = (cam[..., 2] > 0.1) & (px[..., 0] >= 0) & (px[..., 0] < camera.width) & (px[..., 1] >= 0) & (
        px[..., 1] < camera.height)
    return float(ok.all(axis=-1).mean())
