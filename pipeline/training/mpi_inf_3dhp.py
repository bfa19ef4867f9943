"""MPI-INF-3DHP as the PoseFormerV2 3DHP release uses it: P-STMO's data files, read without running code.

The released 3DHP model (`no_refine_39_2758.pth`) was trained and tested on two files that P-STMO distributes and
that `prepare` rebuilds from the raw dataset (`common/data_to_npz_3dhp*.py` of the reference code):
- `data_train_3dhp.npz`: `{"S1 Seq1": [{"0": {"data_2d": (T, 17, 2), "data_3d": (T, 17, 3)}, "1": ...}, fps], ...}`,
  16 sequences x 8 cameras ('0', '1', '2', '4'..'8'), 131,592 frames per camera;
- `data_test_3dhp.npz`: `{"TS1": {"data_2d": (N, 17, 2), "data_3d": (N, 17, 3), "valid": (N,)}, ...}`, whole
  sequences, invalid frames included (they still give 2D context; only the 2,929 valid frames are scored).
2D is the ground-truth `annot2` in pixels, 3D the camera-space `univ_annot3` in millimetres (scaled to the Human3.6M
"universal" skeleton), joints in MPI-INF-3DHP "relevant" order (`pipeline.skeleton.MPI_INF_3DHP`, pelvis 14).
As the release: training 2D is normalised as a 2048 x 2048 frame for every camera, test 2D with each sequence's own
frame (TS5/TS6 are 1920 x 1080); 3D targets are pelvis-relative millimetres; the `fps` entry is never used (the
50 fps sequences are not resampled). Both files hold pickled dicts; they are read with `h36m.read_npz_entry`, whose
unpickler builds only arrays and containers.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.geometry import normalize_screen_coordinates
from pipeline.skeleton import MPI_INF_3DHP
from pipeline.training.h36m import read_npz_entry
from pipeline.training.windows import SequenceSet

log = logging.getLogger(__name__)

TRAIN_FILE = "data_train_3dhp.npz"
TEST_FILE = "data_test_3dhp.npz"
TRAIN_CAMERAS = (0, 1, 2, 4, 5, 6, 7, 8)  # camera 3 and the ceiling cameras 9-13 are left out, as released
TRAIN_FRAME_SIZE = (2048, 2048)  # (width, height) used to normalise every training camera
TEST_FRAME_SIZES = {"TS1": (2048, 2048), "TS2": (2048, 2048), "TS3": (2048, 2048), "TS4": (2048, 2048),
                    "TS5": (1920, 1080), "TS6": (1920, 1080)}
VALID_TEST_FRAMES = {"TS1": 603, "TS2": 540, "TS3": 505, "TS4": 553, "TS5": 276, "TS6": 452}  # 2,929 in all
# Video frames and frame rate of every training sequence (`mpii_get_sequence_info`); annotations beyond the video's
# last frame are cut.
SEQUENCE_INFO = {
    "S1 Seq1": (6416, 25), "S1 Seq2": (12430, 50), "S2 Seq1": (6502, 25), "S2 Seq2": (6081, 25),
    "S3 Seq1": (12488, 50), "S3 Seq2": (12283, 50), "S4 Seq1": (6171, 25), "S4 Seq2": (6675, 25),
    "S5 Seq1": (12820, 50), "S5 Seq2": (12312, 50), "S6 Seq1": (6188, 25), "S6 Seq2": (6145, 25),
    "S7 Seq1": (6239, 25), "S7 Seq2": (6320, 25), "S8 Seq1": (6468, 25), "S8 Seq2": (6054, 25),
}
# The 17 "relevant" joints among the 28 of the raw training annotations (0-based), in MPI_INF_3DHP order.
RELEVANT_OF_28 = (7, 5, 14, 15, 16, 9, 10, 11, 23, 24, 25, 18, 19, 20, 4, 3, 6)
# Joints scored by PCK/AUC (`mpii_get_pck_auc_joint_groups.m`): head top, neck, shoulders, elbows, wrists, hips,
# knees, ankles; pelvis, spine and head are not.
PCK_JOINTS = tuple(range(14))
ROOT = MPI_INF_3DHP.root


@dataclass
class EvaluationSequence:
    """One test sequence (TS1..TS6) as stored: every frame, in 3DHP order."""

    name: str
    keypoints_px: np.ndarray  # (N, 17, 2) float32, pixels of a width x height frame
    poses_mm: np.ndarray  # (N, 17, 3) float32, camera space, millimetres, absolute (not root-relative)
    valid: np.ndarray  # (N,) bool: frames that are scored
    width: int
    height: int

    @property
    def normalized_2d(self) -> np.ndarray:
        """The 2D as the released test feeds it: normalised with this sequence's own frame size."""
        return normalize_screen_coordinates(self.keypoints_px, self.width, self.height)

    @property
    def targets_mm(self) -> np.ndarray:
        """Pelvis-relative 3D (the pelvis at 0), millimetres."""
        return root_relative(self.poses_mm)


def root_relative(poses: np.ndarray) -> np.ndarray:
    """Subtract the pelvis (3DHP joint 14) from every joint; the pelvis itself becomes 0."""
    poses = np.asarray(poses, dtype=np.float32)
    return poses - poses[..., ROOT : ROOT + 1, :]


# ----------------------------------------------------------------------------------------------------------------------
# Reading the P-STMO files


def _data_file(data_dir: Path, name: str) -> Path:
    path = Path(data_dir).expanduser() / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass the folder holding {TRAIN_FILE} and {TEST_FILE} (P-STMO's "
                                "files, or build them from the raw dataset with `python -m "
                                "pipeline.training.mpi_inf_3dhp prepare`)")
    data = read_npz_entry(path, "data")
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: 'data' holds {type(data).__name__}, expected a non-empty dict of sequences")
    return data


def _checked_pair(where: str, data_2d, data_3d) -> tuple[np.ndarray, np.ndarray]:
    data_2d, data_3d = np.asarray(data_2d, np.float32), np.asarray(data_3d, np.float32)
    joints = MPI_INF_3DHP.num_joints
    if data_2d.ndim != 3 or data_2d.shape[1:] != (joints, 2) or data_3d.shape != (len(data_2d), joints, 3):
        raise ValueError(f"{where}: data_2d {data_2d.shape} and data_3d {data_3d.shape}, expected (N, {joints}, 2) "
                         f"and (N, {joints}, 3) in MPI-INF-3DHP joint order")
    if len(data_2d) == 0:
        raise ValueError(f"{where}: no frames")
    return data_2d, data_3d


def load_train(data_dir: Path) -> SequenceSet:
    """Every (sequence, camera) of `data_train_3dhp.npz`: 2D normalised as a 2048 x 2048 frame, pelvis-relative
    millimetres. Names are 'S1 Seq1/cam0', groups the sequence ('S1 Seq1')."""
    data = _data_file(data_dir, TRAIN_FILE)
    inputs, targets, names, groups = [], [], [], []
    width, height = TRAIN_FRAME_SIZE
    for sequence in sorted(data, key=_natural_key):
        entry = data[sequence]
        if not isinstance(entry, (list, tuple)) or not entry or not isinstance(entry[0], dict):
            raise ValueError(f"{TRAIN_FILE}: {sequence!r} holds {type(entry).__name__}, expected [{{camera: "
                             "{'data_2d', 'data_3d'}}, fps]")
        for camera in sorted(entry[0], key=_natural_key):
            anim = entry[0][camera]
            where = f"{TRAIN_FILE}: {sequence} camera {camera}"
            if not isinstance(anim, dict) or "data_2d" not in anim or "data_3d" not in anim:
                raise ValueError(f"{where} has no 'data_2d'/'data_3d' arrays")
            data_2d, data_3d = _checked_pair(where, anim["data_2d"], anim["data_3d"])
            inputs.append(normalize_screen_coordinates(data_2d, width, height))
            targets.append(root_relative(data_3d))
            names.append(f"{sequence}/cam{camera}")
            groups.append(str(sequence))
    log.info("MPI-INF-3DHP training set: %d frames in %d (sequence, camera) pairs", sum(map(len, inputs)),
             len(inputs))
    return SequenceSet(inputs_2d=inputs, targets_3d=targets, names=names, groups=groups)


def load_test(data_dir: Path) -> list[EvaluationSequence]:
    """The test sequences of `data_test_3dhp.npz` in TS order, every frame, with their valid masks."""
    data = _data_file(data_dir, TEST_FILE)
    sequences = []
    for name in sorted(data, key=_natural_key):
        anim = data[name]
        if name not in TEST_FRAME_SIZES:
            raise ValueError(f"{TEST_FILE}: unknown test sequence {name!r}; expected some of "
                             f"{sorted(TEST_FRAME_SIZES)} (each has its own frame size)")
        if not isinstance(anim, dict) or not {"data_2d", "data_3d", "valid"} <= set(anim):
            raise ValueError(f"{TEST_FILE}: {name} needs 'data_2d', 'data_3d' and 'valid' arrays")
        data_2d, data_3d = _checked_pair(f"{TEST_FILE}: {name}", anim["data_2d"], anim["data_3d"])
        valid = np.asarray(anim["valid"]).reshape(-1).astype(bool)
        if len(valid) != len(data_2d):
            raise ValueError(f"{TEST_FILE}: {name} has {len(valid)} valid flags for {len(data_2d)} frames")
        if not valid.any():
            raise ValueError(f"{TEST_FILE}: {name} has no valid frame to score")
        expected = VALID_TEST_FRAMES[name]
        if valid.sum() != expected:
            log.warning("%s: %d valid frames, the released test set has %d", name, valid.sum(), expected)
        width, height = TEST_FRAME_SIZES[name]
        sequences.append(EvaluationSequence(name, data_2d, data_3d, valid, width, height))
    return sequences


def validation_set(sequences: list[EvaluationSequence]) -> tuple[SequenceSet, np.ndarray]:
    """The test sequences as a `SequenceSet` (each normalised with its own frame size, pelvis-relative mm) and the
    global frame ids of their valid frames: what training validates on, the released test protocol."""
    data = SequenceSet(inputs_2d=[s.normalized_2d for s in sequences], targets_3d=[s.targets_mm for s in sequences],
                       names=[s.name for s in sequences], groups=[s.name for s in sequences])
    starts = np.cumsum([0] + [len(s.valid) for s in sequences[:-1]])
    valid_ids = np.concatenate([start + np.flatnonzero(s.valid) for start, s in zip(starts, sequences, strict=True)])
    return data, valid_ids.astype(np.int64)


def _natural_key(name) -> list:
    """'S10 Seq2' after 'S2 Seq1', 'TS10' after 'TS9'."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(name))]


# ----------------------------------------------------------------------------------------------------------------------
# Building the files from the raw dataset


def _require(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"reading the raw MPI-INF-3DHP annotations needs scipy and h5py ({exc}); install them with "
                          "`pip install scipy h5py`") from None


def _mat_cells(annot: dict, key: str, path: Path) -> np.ndarray:
    if key not in annot:
        raise KeyError(f"{path} has no {key!r} (is it an MPI-INF-3DHP annot.mat?)")
    return np.asarray(annot[key]).reshape(-1)  # MATLAB cell (14, 1) -> one array per camera


def prepare_train_sequence(path: Path) -> tuple[dict, int]:
    """One raw `S*/Seq*/annot.mat` -> ({camera: {'data_2d', 'data_3d'}}, fps) as `data_to_npz_3dhp.py` builds it."""
    scipy_io = _require("scipy.io")
    sequence = f"{path.parent.parent.name} {path.parent.name}"
    if sequence not in SEQUENCE_INFO:
        raise ValueError(f"{path}: {sequence!r} is not a training sequence (S1..S8 / Seq1..Seq2)")
    frames, fps = SEQUENCE_INFO[sequence]
    try:
        annot = scipy_io.loadmat(path)
    except (scipy_io.matlab.MatReadError, OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable MATLAB file ({exc})") from None
    cameras = np.asarray(annot.get("cameras", [])).reshape(-1)
    if not np.array_equal(cameras, np.arange(len(cameras))) or len(cameras) <= max(TRAIN_CAMERAS):
        raise ValueError(f"{path}: cameras {cameras.tolist()}, expected 0..13 in order")
    annot2, annot3 = _mat_cells(annot, "annot2", path), _mat_cells(annot, "univ_annot3", path)
    out = {}
    for camera in TRAIN_CAMERAS:
        data_2d = np.asarray(annot2[camera]).reshape(-1, 28, 2)[:frames, list(RELEVANT_OF_28)]
        data_3d = np.asarray(annot3[camera]).reshape(-1, 28, 3)[:frames, list(RELEVANT_OF_28)]
        if len(data_2d) != len(data_3d):
            raise ValueError(f"{path}: camera {camera} has {len(data_2d)} 2D and {len(data_3d)} 3D frames")
        out[str(camera)] = {"data_2d": data_2d, "data_3d": data_3d}
    return out, fps


def prepare_test_sequence(path: Path) -> dict:
    """One raw `TS*/annot_data.mat` (MATLAB v7.3, HDF5) -> {'data_2d', 'data_3d', 'valid'} as
    `data_to_npz_3dhp_test.py` builds it (already in the 17-joint order)."""
    h5py = _require("h5py")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("annot2", "univ_annot3", "valid_frame") if k not in f]
            if missing:
                raise KeyError(f"{path} has no {missing} (is it an MPI-INF-3DHP test annot_data.mat?)")
            data_2d, data_3d, valid = (np.asarray(f[k][()]) for k in ("annot2", "univ_annot3", "valid_frame"))
    except OSError as exc:
        raise ValueError(f"{path} is not a readable MATLAB v7.3 file ({exc})") from None
    joints = MPI_INF_3DHP.num_joints
    return {"data_2d": data_2d.reshape(-1, joints, 2), "data_3d": data_3d.reshape(-1, joints, 3),
            "valid": valid.reshape(-1)}


def prepare(raw_dir: Path, out_dir: Path) -> list[Path]:
    """Write `data_train_3dhp.npz` (from `S*/Seq*/annot.mat`) and `data_test_3dhp.npz` (from
    `[mpi_inf_3dhp_test_set/]TS*/annot_data.mat`) under `out_dir`, in P-STMO's layout; returns the files written."""
    raw_dir, out_dir = Path(raw_dir).expanduser(), Path(out_dir).expanduser()
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"raw MPI-INF-3DHP folder {raw_dir} not found")
    train_files = sorted(raw_dir.glob("S*/Seq*/annot.mat"), key=lambda p: _natural_key(p.relative_to(raw_dir)))
    test_files = [*raw_dir.glob("TS*/annot_data.mat"), *raw_dir.glob("mpi_inf_3dhp_test_set/TS*/annot_data.mat")]
    test_files.sort(key=lambda p: _natural_key(p.parent.name))
    if not train_files and not test_files:
        raise FileNotFoundError(f"no S*/Seq*/annot.mat or [mpi_inf_3dhp_test_set/]TS*/annot_data.mat under {raw_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if train_files:
        train = {}
        for path in train_files:
            log.info("reading %s", path)
            train[f"{path.parent.parent.name} {path.parent.name}"] = list(prepare_train_sequence(path))
        written.append(_save(out_dir / TRAIN_FILE, train))
    if test_files:
        test = {}
        for path in test_files:
            log.info("reading %s", path)
            test[path.parent.name] = prepare_test_sequence(path)
        written.append(_save(out_dir / TEST_FILE, test))
    return written


def _save(path: Path, data: dict) -> Path:
    """np.savez_compressed(path, data=dict), as the reference scripts write it, through a temporary file."""
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, data=data)
    tmp.replace(path)
    log.info("wrote %s", path)
    return path


# ----------------------------------------------------------------------------------------------------------------------
# Command line


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline.training.mpi_inf_3dhp",
                                description="MPI-INF-3DHP data for PoseFormerV2 training and evaluation.")
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help=f"build {TRAIN_FILE} and {TEST_FILE} from the raw dataset (needs scipy, "
                                          "h5py)")
    prep.add_argument("--raw-dir", type=Path, required=True,
                      help="the raw dataset: S1..S8/Seq1..Seq2/annot.mat and mpi_inf_3dhp_test_set/TS1..TS6/"
                           "annot_data.mat")
    prep.add_argument("--out-dir", type=Path, required=True, help="where the two .npz files go")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from pipeline.training import run_cli

    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        prepare(args.raw_dir, args.out_dir)
    except ImportError as exc:
        raise SystemExit(f"error: {exc}") from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
