"""Camera calibrations of a multi-camera recording: read Qualisys `.qca.txt` and OpenCV/pose2sim `Calib.toml`, write
`Calib.toml`, project world points into the pictures.

Every camera becomes one `CameraCalibration` in OpenCV's pinhole convention: x = K * distort(R @ X + t), with X in
world metres, (R, t) world -> camera (x right, y down, z forward), pixels of the upright picture and OpenCV's
distortion order (k1, k2, p1, p2[, k3]).

Why a Qualisys file needs converting (read from pose2sim 0.10.49, `Pose2Sim/calibration.py` `read_qca` /
`calib_qca_fun`, and its inverse `Utilities/calib_toml_to_qca.py`):
- `transform` gives the camera position (x, y, z) in world millimetres and a rotation whose rows, read r11 r12 r13 /
  r21 ... as written, take world axes to Qualisys camera axes (x right, y up, z backwards). OpenCV's camera looks down
  +z with y down, a half turn about the camera's x axis: R = diag(1, -1, -1) @ A, t = -R @ position.
- `intrinsic` is in sensor sub-pixel units, 64 per pixel: focal lengths, principal point and (because pose2sim's
  writer multiplies them by 64 too) the distortion coefficients are divided by 64. The principal point is relative
  to the `fov_video` window, whose right/bottom are inclusive pixel indices (1087 x 1919 -> a 1088 x 1920 picture).
- The recording's file was written from a portrait ("rotated") Calib.toml, so its sensor window is already the
  upright 1088 x 1920 picture the decoder gives: no further rotation. `read_qualisys` refuses `viewrotation` != 0
  rather than guess.
The conversion is checked by reprojection in tests/test_multiview.py: the people triangulated from the four views
reproject onto the detected keypoints within a few pixels (measured: see docs/real_footage_gap.md).
"""
from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

SUBPIXELS_PER_PIXEL = 64.0  # Qualisys sensor units
QUALISYS_TO_OPENCV = np.diag([1.0, -1.0, -1.0])  # camera axes: y up / z backwards -> y down / z forward


@dataclass(frozen=True)
class CameraCalibration:
    """One camera: intrinsics, OpenCV distortion and world -> camera pose (metres)."""

    name: str
    image_size: tuple[int, int]  # (width, height) of the upright picture
    K: np.ndarray  # (3, 3) pixels
    dist: np.ndarray  # (4,) or (5,): k1, k2, p1, p2[, k3]
    R: np.ndarray  # (3, 3) world -> camera rotation
    t: np.ndarray  # (3,) world -> camera translation, metres
    fisheye: bool = False

    def __post_init__(self) -> None:
        for attr, shape in (("K", (3, 3)), ("R", (3, 3)), ("t", (3,))):
            value = np.asarray(getattr(self, attr), np.float64)
            if value.shape != shape or not np.isfinite(value).all():
                raise ValueError(f"camera {self.name!r}: {attr} must be a finite {shape} array, got {value.shape}")
            object.__setattr__(self, attr, value)
        dist = np.asarray(self.dist, np.float64).ravel()
        if dist.size not in (4, 5, 8) or not np.isfinite(dist).all():
            raise ValueError(f"camera {self.name!r}: distortions must be 4, 5 or 8 finite OpenCV coefficients")
        object.__setattr__(self, "dist", dist)
        if abs(np.linalg.det(self.R) - 1.0) > 1e-4 or not np.allclose(self.R @ self.R.T, np.eye(3), atol=1e-4):
            raise ValueError(f"camera {self.name!r}: R is not a rotation matrix")
        object.__setattr__(self, "image_size", (int(self.image_size[0]), int(self.image_size[1])))

    @property
    def rvec(self) -> np.ndarray:
        """Rodrigues vector of R (what Calib.toml stores)."""
        return cv2.Rodrigues(self.R)[0].ravel()

    @property
    def center(self) -> np.ndarray:
        """Camera position in world metres."""
        return -self.R.T @ self.t

    @property
    def extrinsic(self) -> np.ndarray:
        """(3, 4) [R | t]: the projection of undistorted, normalised image coordinates."""
        return np.hstack([self.R, self.t[:, None]])

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """World points (..., 3) -> camera coordinates (..., 3)."""
        return np.asarray(points, np.float64) @ self.R.T + self.t

    def project(self, points: np.ndarray) -> np.ndarray:
        """World points (..., 3) metres -> distorted pixels (..., 2). Points behind the camera give NaN."""
        self._check_pinhole()
        cam = self.to_camera(points)
        shape = cam.shape[:-1]
        flat = cam.reshape(-1, 3)
        out = np.full((len(flat), 2), np.nan)
        ok = np.isfinite(flat).all(axis=1) & (flat[:, 2] > 1e-9)
        if ok.any():
            px, _ = cv2.projectPoints(flat[ok][:, None, :], np.zeros(3), np.zeros(3), self.K, self.dist)
            out[ok] = px.reshape(-1, 2)
        return out.reshape(shape + (2,))

    def undistort(self, pixels: np.ndarray) -> np.ndarray:
        """Distorted pixels (..., 2) -> normalised image coordinates (..., 2) (z = 1 plane), NaN kept as NaN."""
        self._check_pinhole()
        pts = np.asarray(pixels, np.float64)
        shape = pts.shape[:-1]
        flat = pts.reshape(-1, 2)
        out = np.full_like(flat, np.nan)
        ok = np.isfinite(flat).all(axis=1)
        if ok.any():
            # Iterate to convergence: OpenCV's default 5 iterations leave ~0.1 px at the picture's corners.
            criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-12)
            src = flat[ok][:, None, :]
            if hasattr(cv2, "undistortPointsIter"):  # OpenCV 4
                und = cv2.undistortPointsIter(src, self.K, self.dist, None, None, criteria)
            else:  # OpenCV 5: undistortPoints takes the criteria itself
                und = cv2.undistortPoints(src, self.K, self.dist, criteria=criteria)
            out[ok] = und.reshape(-1, 2)
        return out.reshape(shape + (2,))

    def _check_pinhole(self) -> None:
        if self.fisheye:
            raise ValueError(f"camera {self.name!r} is a fisheye calibration; only the pinhole model is supported "
                             "for projection and triangulation: recalibrate with the pinhole model")


def _attr(element: ElementTree.Element, name: str, path: Path) -> float:
    value = element.get(name)
    if value is None:
        raise ValueError(f"{path}: camera element <{element.tag}> lacks attribute {name!r}; not a Qualisys "
                         "calibration as exported by QTM or pose2sim")
    return float(value)


def _qualisys_camera(camera: ElementTree.Element, path: Path) -> CameraCalibration:
    name = camera.get("serial") or f"cam{camera.get('id', '?')}"
    fov, transform, intrinsic = (camera.find(tag) for tag in ("fov_video", "transform", "intrinsic"))
    if fov is None or transform is None or intrinsic is None:
        raise ValueError(f"{path}: camera {name!r} lacks fov_video, transform or intrinsic; not a Qualisys "
                         "calibration file")
    if float(camera.get("viewrotation", "0")) != 0:
        raise ValueError(f"{path}: camera {name!r} has viewrotation={camera.get('viewrotation')}; rotated Qualisys "
                         "views are not supported: export the calibration for the upright picture")
    left, top = _attr(fov, "left", path), _attr(fov, "top", path)
    width = int(round(_attr(fov, "right", path) - left + 1))
    height = int(round(_attr(fov, "bottom", path) - top + 1))

    def sub(key: str) -> float:
        return _attr(intrinsic, key, path) / SUBPIXELS_PER_PIXEL

    K = np.array([[sub("focalLengthU"), 0.0, sub("centerPointU") - left],
                  [0.0, sub("focalLengthV"), sub("centerPointV") - top],
                  [0.0, 0.0, 1.0]])
    dist = np.array([sub("radialDistortion1"), sub("radialDistortion2"), sub("tangentalDistortion1"),
                     sub("tangentalDistortion2"), sub("radialDistortion3")])
    rows = np.array([[_attr(transform, f"r{i}{j}", path) for j in (1, 2, 3)] for i in (1, 2, 3)])
    position = np.array([_attr(transform, axis, path) for axis in "xyz"]) / 1000.0
    R = QUALISYS_TO_OPENCV @ rows
    return CameraCalibration(name=name, image_size=(width, height), K=K, dist=dist, R=R, t=-R @ position)


def read_qualisys(path: str | Path) -> list[CameraCalibration]:
    """Every active camera of a Qualisys `.qca.txt` calibration, in file order."""
    path = Path(path)
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as exc:
        raise ValueError(f"{path}: not a valid XML (Qualisys .qca.txt) file: {exc}") from None
    cameras = [_qualisys_camera(c, path) for c in root.iter("camera") if c.get("active", "1") != "0"]
    if not cameras:
        raise ValueError(f"{path}: no active <camera> in this file; not a Qualisys calibration")
    return cameras


def _toml_camera(section: str, data: dict, path: Path) -> CameraCalibration:
    missing = [k for k in ("size", "matrix", "distortions", "rotation", "translation") if k not in data]
    if missing:
        raise ValueError(f"{path}: camera section [{section}] lacks {', '.join(missing)}; not a pose2sim Calib.toml")
    rvec = np.asarray(data["rotation"], np.float64).reshape(-1)
    if rvec.shape != (3,):
        raise ValueError(f"{path}: [{section}] rotation must be a Rodrigues vector of 3 numbers")
    size = data["size"]
    return CameraCalibration(name=str(data.get("name", section)), image_size=(round(size[0]), round(size[1])),
                             K=np.asarray(data["matrix"], np.float64), dist=np.asarray(data["distortions"]),
                             R=cv2.Rodrigues(rvec)[0], t=np.asarray(data["translation"], np.float64).reshape(-1),
                             fisheye=bool(data.get("fisheye", False)))


def read_calib_toml(path: str | Path) -> list[CameraCalibration]:
    """Every camera section of an OpenCV/pose2sim `Calib.toml` (sections that are tables with a `matrix`)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not a valid TOML file: {exc}") from None
    cameras = [_toml_camera(key, value, path) for key, value in data.items()
               if isinstance(value, dict) and "matrix" in value]
    if not cameras:
        raise ValueError(f"{path}: no camera section (a table with name, size, matrix, ...) in this file")
    return cameras


def _toml_array(values) -> str:
    if isinstance(values, np.ndarray) and values.ndim > 1:
        return "[ " + ", ".join(_toml_array(row) for row in values) + "]"
    return "[ " + ", ".join(repr(float(v)) for v in np.ravel(values)) + "]"


def write_calib_toml(path: str | Path, cameras: list[CameraCalibration], adjusted: bool = False,
                     error: float = 0.0) -> Path:
    """Write `cameras` in pose2sim's Calib.toml layout (floats at full precision, so reading gives them back);
    `adjusted` and `error` (pixels) fill pose2sim's [metadata] (true and the residual after a bundle adjustment)."""
    path = Path(path)
    lines = []
    for cam in cameras:
        if not cam.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"camera name {cam.name!r} cannot be a TOML section name: use letters, digits, _ and -")
        lines += [f"[{cam.name}]", f'name = "{cam.name}"', f"size = {_toml_array(cam.image_size)}",
                  f"matrix = {_toml_array(cam.K)}", f"distortions = {_toml_array(cam.dist)}",
                  f"rotation = {_toml_array(cam.rvec)}", f"translation = {_toml_array(cam.t)}",
                  f"fisheye = {'true' if cam.fisheye else 'false'}", ""]
    lines += ["[metadata]", f"adjusted = {'true' if adjusted else 'false'}", f"error = {float(error)!r}", ""]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)
    return path


def load_calibration(path: str | Path) -> list[CameraCalibration]:
    """A `.qca.txt` (Qualisys) or `.toml` (OpenCV/pose2sim) calibration, chosen by the file name."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"calibration file not found: {path}")
    name = path.name.lower()
    if name.endswith(".qca.txt") or name.endswith(".qca"):
        return read_qualisys(path)
    if name.endswith(".toml"):
        return read_calib_toml(path)
    raise ValueError(f"{path}: unknown calibration format; give a Qualisys .qca.txt or a pose2sim Calib.toml")


def look_at_camera(name: str, center: np.ndarray, target: np.ndarray, focal: float, size: tuple[int, int],
                   dist: np.ndarray | None = None) -> CameraCalibration:
    """A camera at `center` looking at `target` with the picture upright in a z-up world (synthetic tests)."""
    up = np.array([0.0, 0.0, 1.0])
    forward = np.asarray(target, np.float64) - center
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-9:
        raise ValueError("the camera looks straight along `up`: choose another up direction")
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    R = np.stack([right, down, forward])
    K = np.array([[focal, 0.0, size[0] / 2], [0.0, focal, size[1] / 2], [0.0, 0.0, 1.0]])
    return CameraCalibration(name=name, image_size=size, K=K, dist=np.zeros(5) if dist is None else dist, R=R,
                             t=-R @ np.asarray(center, np.float64))

