"""Read the VideoPose3D-format Human3.6M files into train/test `SequenceSet`s with the released protocol.

Inputs: `data_3d_h36m.npz` (`positions_3d`: subject -> action -> (N, 32, 3) world metres) and
`data_2d_h36m_<keypoints>.npz` (`positions_2d`: subject -> action -> 4 cameras x (N, 17, 2) pixels; `metadata`).
As VideoPose3D does: keep 17 of the 32 mocap joints, rotate into each camera with the Human3.6M extrinsics, cut the 2D
to the mocap length, screen-normalise the 2D with each camera's resolution, train on S1 S5 S6 S7 S8, test on S9 S11.

The files hold pickled Python dicts. They are read with an unpickler that only builds dicts, lists and numpy arrays,
so a tampered file cannot run code. The converted sets are cached as plain arrays next to other caches.
"""
from __future__ import annotations

import hashlib
import logging
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.geometry import normalize_screen_coordinates, world_to_camera
from pipeline.skeleton import H36M
from pipeline.training.windows import SequenceSet

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "poseformerv2-demo" / "h36m"
CACHE_VERSION = 1
TRAIN_SUBJECTS = ("S1", "S5", "S6", "S7", "S8")
TEST_SUBJECTS = ("S9", "S11")
# Of the 32 mocap joints, VideoPose3D drops these (static or duplicated) to get the 17-joint skeleton.
REMOVED_MOCAP_JOINTS = (4, 5, 9, 10, 11, 16, 20, 21, 22, 23, 24, 28, 29, 30, 31)
KEPT_MOCAP_JOINTS = tuple(j for j in range(32) if j not in REMOVED_MOCAP_JOINTS)


@dataclass(frozen=True)
class Camera:
    id: str
    res_w: int
    res_h: int
    center: tuple[float, float]  # pixels
    focal_length: tuple[float, float]  # pixels


# Human3.6M intrinsics, in camera order (VideoPose3D `h36m_cameras_intrinsic_params`; distortion is not needed here).
CAMERAS = (
    Camera("54138969", 1000, 1002, (512.54150390625, 515.4514770507812), (1145.0494384765625, 1143.7811279296875)),
    Camera("55011271", 1000, 1000, (508.8486328125, 508.0649108886719), (1149.6756591796875, 1147.5916748046875)),
    Camera("58860488", 1000, 1000, (519.8158569335938, 501.40264892578125), (1149.1407470703125, 1148.7989501953125)),
    Camera("60457274", 1000, 1002, (514.9682006835938, 501.88201904296875), (1145.5113525390625, 1144.77392578125)),
)

# Extrinsics per subject and camera: orientation quaternion (w, x, y, z), camera-to-world; translation = camera
# position in world millimetres (VideoPose3D `h36m_cameras_extrinsic_params`).
EXTRINSICS: dict[str, tuple[tuple[tuple[float, float, float, float], tuple[float, float, float]], ...]] = {
    "S1": (
        ((0.1407056450843811, -0.1500701755285263, -0.755240797996521, 0.6223280429840088),
         (1841.1070556640625, 4955.28466796875, 1563.4454345703125)),
        ((0.6157187819480896, -0.764836311340332, -0.14833825826644897, 0.11794740706682205),
         (1761.278564453125, -5078.0068359375, 1606.2650146484375)),
        ((0.14651472866535187, -0.14647851884365082, 0.7653023600578308, -0.6094175577163696),
         (-1846.7777099609375, 5215.04638671875, 1491.972412109375)),
        ((0.5834008455276489, -0.7853162288665771, 0.14548823237419128, -0.14749594032764435),
         (-1794.7896728515625, -3722.698974609375, 1574.8927001953125)),
    ),
    "S5": (
        ((0.1467377245426178, -0.162370964884758, -0.7551892995834351, 0.6178938746452332),
         (2097.3916015625, 4880.94482421875, 1605.732421875)),
        ((0.6159758567810059, -0.7626792192459106, -0.15728192031383514, 0.1189815029501915),
         (2031.7008056640625, -5167.93310546875, 1612.923095703125)),
        ((0.14291371405124664, -0.12907841801643372, 0.7678384780883789, -0.6110143065452576),
         (-1620.5948486328125, 5171.65869140625, 1496.43701171875)),
        ((0.5920479893684387, -0.7814217805862427, 0.1274748593568802, -0.15036417543888092),
         (-1637.1737060546875, -3867.3173828125, 1547.033203125)),
    ),
    "S6": (
        ((0.1337897777557373, -0.15692396461963654, -0.7571090459823608, 0.6198879480361938),
         (1935.4517822265625, 4950.24560546875, 1618.0838623046875)),
        ((0.6147197484970093, -0.7628812789916992, -0.16174767911434174, 0.11819244921207428),
         (1969.803955078125, -5128.73876953125, 1632.77880859375)),
        ((0.1529948115348816, -0.13529130816459656, 0.7646096348762512, -0.6112781167030334),
         (-1769.596435546875, 5185.361328125, 1476.993408203125)),
        ((0.5916101336479187, -0.7804774045944214, 0.12832270562648773, -0.1561593860387802),
         (-1721.668701171875, -3884.13134765625, 1540.4879150390625)),
    ),
    "S7": (
        ((0.1435241848230362, -0.1631336808204651, -0.7548328638076782, 0.6188824772834778),
         (1974.512939453125, 4926.3544921875, 1597.8326416015625)),
        ((0.6141672730445862, -0.7638262510299683, -0.1596645563840866, 0.1177929937839508),
         (1937.0584716796875, -5119.7900390625, 1631.5665283203125)),
        ((0.14550060033798218, -0.12874816358089447, 0.7660516500473022, -0.6127139329910278),
         (-1741.8111572265625, 5208.24951171875, 1464.8245849609375)),
        ((0.5912848114967346, -0.7821764349937439, 0.12445473670959473, -0.15196487307548523),
         (-1734.7105712890625, -3832.42138671875, 1548.5830078125)),
    ),
    "S8": (
        ((0.14110587537288666, -0.15589867532253265, -0.7561917304992676, 0.619644045829773),
         (2150.65185546875, 4896.1611328125, 1611.9046630859375)),
        ((0.6169601678848267, -0.7647668123245239, -0.14846350252628326, 0.11158157885074615),
         (2219.965576171875, -5148.453125, 1613.0440673828125)),
        ((0.1471444070339203, -0.13377119600772858, 0.7670128345489502, -0.6100369691848755),
         (-1571.2215576171875, 5137.0185546875, 1498.1761474609375)),
        ((0.5927824378013611, -0.7825870513916016, 0.12147816270589828, -0.14631995558738708),
         (-1476.913330078125, -3896.7412109375, 1547.97216796875)),
    ),
    "S9": (
        ((0.15540587902069092, -0.15548215806484222, -0.7532095313072205, 0.6199594736099243),
         (2044.45849609375, 4935.1171875, 1481.2275390625)),
        ((0.618784487247467, -0.7634735107421875, -0.14132238924503326, 0.11933968216180801),
         (1990.959716796875, -5123.810546875, 1568.8048095703125)),
        ((0.13357827067375183, -0.1367100477218628, 0.7689454555511475, -0.6100738644599915),
         (-1670.9921875, 5211.98583984375, 1528.387939453125)),
        ((0.5879399180412292, -0.7823407053947449, 0.1427614390850067, -0.14794869720935822),
         (-1696.04345703125, -3827.099853515625, 1591.4127197265625)),
    ),
    "S11": (
        ((0.15232472121715546, -0.15442320704460144, -0.7547563314437866, 0.6191070079803467),
         (2098.440185546875, 4926.5546875, 1500.278564453125)),
        ((0.6189449429512024, -0.7600917220115662, -0.15300633013248444, 0.1255258321762085),
         (2083.182373046875, -4912.1728515625, 1561.07861328125)),
        ((0.14943228662014008, -0.15650227665901184, 0.7681233882904053, -0.6026304364204407),
         (-1609.8153076171875, 5177.3359375, 1537.896728515625)),
        ((0.5894251465797424, -0.7818877100944519, 0.13991211354732513, -0.14715361595153809),
         (-1590.738037109375, -3854.1689453125, 1578.017578125)),
    ),
}


# ----------------------------------------------------------------------------------------------------------------------
# Reading the pickled npz files without running code


def _multiarray():
    try:
        import numpy._core.multiarray as multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        import numpy.core.multiarray as multiarray
    return multiarray


class _DataUnpickler(pickle.Unpickler):
    """Builds only numpy arrays, dtypes and scalars (dicts, lists and numbers need no globals)."""

    def find_class(self, module: str, name: str):
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
            return getattr(_multiarray(), name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module in ("numpy.dtypes",) and name.endswith("DType"):
            return getattr(np.dtypes, name)
        if module == "_codecs" and name == "encode":  # how protocol 2/3 pickles store bytes
            import codecs

            return codecs.encode
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file: only numpy arrays and "
                                     "Python containers are expected")


def read_npz_entry(path: Path, key: str):
    """One entry of an .npz, unpickling object arrays safely; a 0-d object array gives back the object."""
    with zipfile.ZipFile(path) as archive:
        member = f"{key}.npy"
        if member not in archive.namelist():
            raise KeyError(f"{path} has no {key!r} entry (has {[n[:-4] for n in archive.namelist()]}); "
                           "is it a VideoPose3D-format file?")
        with archive.open(member) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            if dtype.hasobject:
                array = _DataUnpickler(f).load()
            else:
                data = np.frombuffer(f.read(), dtype=dtype)
                array = data.reshape(shape[::-1]).T if fortran else data.reshape(shape)
    if isinstance(array, np.ndarray) and array.dtype.hasobject and array.shape == ():
        return array.item()
    return array


# ----------------------------------------------------------------------------------------------------------------------
# Conversion


@dataclass
class H36MSplit:
    train: SequenceSet
    test: SequenceSet


def action_group(action: str) -> str:
    """'Walking 1' -> 'Walking': the released per-action report pools an action's takes."""
    return action.split(" ")[0]


def _check_metadata(metadata: dict, path: Path) -> None:
    symmetry = metadata.get("keypoints_symmetry")
    num_joints = metadata.get("num_joints")
    if num_joints != H36M.num_joints:
        raise ValueError(f"{path}: {num_joints} keypoints per frame, expected {H36M.num_joints} (Human3.6M order)")
    if symmetry is not None:
        left, right = (sorted(int(j) for j in side) for side in symmetry)
        if left != sorted(H36M.left) or right != sorted(H36M.right):
            raise ValueError(f"{path}: keypoints_symmetry {symmetry} is not the Human3.6M-17 layout the lifter uses")


def convert(positions_3d: dict, positions_2d: dict, subjects: tuple[str, ...]) -> SequenceSet:
    """Camera-space 3D and screen-normalised 2D for every (subject, action, camera) of `subjects`."""
    inputs, targets, names, groups = [], [], [], []
    for subject in subjects:
        if subject not in positions_3d:
            raise KeyError(f"subject {subject} is missing from the 3D file")
        if subject not in positions_2d:
            raise KeyError(f"subject {subject} is missing from the 2D keypoints file")
        if subject not in EXTRINSICS:
            raise KeyError(f"no Human3.6M camera extrinsics for subject {subject}")
        for action in sorted(positions_3d[subject]):
            world = np.asarray(positions_3d[subject][action], dtype=np.float32)
            if world.ndim != 3 or world.shape[1:] not in ((32, 3), (17, 3)):
                raise ValueError(f"{subject}/{action}: 3D positions have shape {world.shape}, expected (N, 32, 3)")
            if world.shape[1] == 32:
                world = world[:, list(KEPT_MOCAP_JOINTS)]
            if action not in positions_2d[subject]:
                raise KeyError(f"action {action!r} of subject {subject} is missing from the 2D keypoints file")
            cams_2d = positions_2d[subject][action]
            if len(cams_2d) != len(CAMERAS):
                raise ValueError(f"{subject}/{action}: {len(cams_2d)} cameras in the 2D file, expected {len(CAMERAS)}")
            cameras = zip(CAMERAS, EXTRINSICS[subject], strict=True)
            for cam_index, (camera, (orientation, translation_mm)) in enumerate(cameras):
                kp = np.asarray(cams_2d[cam_index], dtype=np.float32)[..., :2]
                if len(kp) < len(world):
                    raise ValueError(f"{subject}/{action}/cam{cam_index}: {len(kp)} 2D frames but {len(world)} "
                                     "3D frames; the 2D file must cover the whole mocap sequence")
                # Some videos have extra frames beyond the mocap; VideoPose3D drops them.
                kp = kp[: len(world)]
                inputs.append(normalize_screen_coordinates(kp, camera.res_w, camera.res_h))
                targets.append(world_to_camera(world, orientation, np.asarray(translation_mm) / 1000))
                names.append(f"{subject}/{action}/{camera.id}")
                groups.append(action_group(action))
    return SequenceSet(inputs_2d=inputs, targets_3d=targets, names=names, groups=groups)


def _cache_key(paths: list[Path], subjects: tuple[str, ...]) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}|{','.join(subjects)}".encode())
    for p in paths:
        st = p.stat()
        h.update(f"|{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _save_set(path: Path, sequences: SequenceSet) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, inputs_2d=np.concatenate(sequences.inputs_2d), targets_3d=np.concatenate(sequences.targets_3d),
             lengths=np.array([len(x) for x in sequences.inputs_2d], np.int64),
             names=np.array(sequences.names, dtype=str), groups=np.array(sequences.groups, dtype=str))
    tmp.replace(path)


def _load_set(path: Path) -> SequenceSet:
    with np.load(path, allow_pickle=False) as data:
        split = np.cumsum(data["lengths"])[:-1]
        return SequenceSet(
            inputs_2d=np.split(data["inputs_2d"], split), targets_3d=np.split(data["targets_3d"], split),
            names=[str(n) for n in data["names"]], groups=[str(g) for g in data["groups"]],
        )


def load_h36m(data_dir: Path, keypoints: str, train_subjects: tuple[str, ...] = TRAIN_SUBJECTS,
              test_subjects: tuple[str, ...] = TEST_SUBJECTS, cache_dir: Path | None = DEFAULT_CACHE_DIR) -> H36MSplit:
    """Train/test sets from `data_dir/data_3d_h36m.npz` and `data_dir/data_2d_h36m_<keypoints>.npz`.

    With `cache_dir`, the converted sets are stored as plain arrays keyed by the files' path, size and mtime, so the
    pickled files are parsed and projected once.
    """
    data_dir = Path(data_dir).expanduser()
    path_3d = data_dir / "data_3d_h36m.npz"
    path_2d = data_dir / f"data_2d_h36m_{keypoints}.npz"
    for p in (path_3d, path_2d):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: pass the folder holding VideoPose3D's data_3d_h36m.npz and "
                                    f"data_2d_h36m_{keypoints}.npz (see VideoPose3D DATASETS.md)")
    sets: dict[str, SequenceSet] = {}
    todo = {}
    for split, subjects in (("train", tuple(train_subjects)), ("test", tuple(test_subjects))):
        if not subjects:
            sets[split] = SequenceSet(inputs_2d=[], targets_3d=[], names=[], groups=[])
            continue
        key = _cache_key([path_3d, path_2d], subjects)
        cached = None if cache_dir is None else Path(cache_dir) / f"{keypoints}_{split}_{key}.npz"
        if cached is not None and cached.is_file():
            log.info("reading cached %s set %s", split, cached)
            sets[split] = _load_set(cached)
        else:
            todo[split] = (subjects, cached)
    if todo:
        log.info("reading %s and %s", path_3d, path_2d)
        positions_3d = read_npz_entry(path_3d, "positions_3d")
        positions_2d = read_npz_entry(path_2d, "positions_2d")
        _check_metadata(read_npz_entry(path_2d, "metadata"), path_2d)
        for split, (subjects, cached) in todo.items():
            sets[split] = convert(positions_3d, positions_2d, subjects)
            if cached is not None:
                _save_set(cached, sets[split])
    return H36MSplit(train=sets["train"], test=sets["test"])
