"""Shared test fixtures: the read-only ../shared folder and the PoseFormerV2 conformance fixture."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"
POSEFORMERV2_FIXTURE_DIR = SHARED_DIR / "fixtures" / "poseformerv2"
_EXIT_STATUS = pytest.StashKey[int]()


@pytest.fixture
def one_torch_thread():
    """Run a test with one intra-op thread (restored afterwards). Small models on a shared 2-core machine run many
    times faster this way: with two threads they mostly wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared relative to the repository root; tests using it skip when it is absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared data folder {SHARED_DIR} is absent")
    return SHARED_DIR


@pytest.fixture(scope="session")
def cmu_clip(shared_dir, tmp_path_factory):
    """Factory: a CMU subject 02 trial ("02_01" a walk, "02_04" jumps) as Human3.6M-17 world joints in metres, z up,
    30 frames/s; skips when the shared CMU archive is absent."""
    import tarfile

    import numpy as np

    archive = shared_dir / "data" / "mocap" / "cmu_mocap_subset.tar.xz"
    if not archive.is_file():
        pytest.skip(f"CMU mocap archive missing: {archive}")
    from pipeline.mocap.dataset import load_amc_clip

    def load(trial: str) -> np.ndarray:
        folder = tmp_path_factory.mktemp("cmu")
        with tarfile.open(archive) as tar:
            members = [tar.getmember(f"./cmu_asfamc/02/{name}") for name in ("02.asf", f"{trial}.amc")]
            tar.extractall(folder, members=members, filter="data")
        clip = load_amc_clip(folder / "cmu_asfamc/02/02.asf", folder / f"cmu_asfamc/02/{trial}.amc")
        y_up = clip.h36m_world[::4]  # 120 -> 30 frames/s
        return np.stack([y_up[..., 0], -y_up[..., 2], y_up[..., 1]], axis=-1)

    return load


def _read_manifest(path: Path) -> list[tuple[int, str, tuple[int, ...], str]]:
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        index, key, shape, init = line.split("\t")
        rows.append((int(index), key, tuple(int(s) for s in shape.split(",")) if shape else (), init))
    return rows


def _deterministic_weights(rows) -> dict[str, torch.Tensor]:
    """The fixture README's weight rule: default_rng(index).standard_normal(shape) * 0.05 (+1 for LayerNorm weights)."""
    weights = {}
    for index, key, shape, init in rows:
        w = np.random.default_rng(index).standard_normal(shape).astype(np.float32) * np.float32(0.05)
        if init.startswith("1+"):
            w = w + np.float32(1.0)
        weights[key] = torch.from_numpy(w)
    return weights


@pytest.fixture(scope="session")
def read_manifest():
    """The fixture manifests' reader: path -> [(index, key, shape, init)] (shape () for scalars)."""
    return _read_manifest


@pytest.fixture(scope="session")
def poseformerv2_reference(shared_dir):
    """The 243/27/27 conformance fixture: {"state_dict": released-style `module.` weights, "npz": arrays}."""
    manifest = POSEFORMERV2_FIXTURE_DIR / "manifest_243_27_27.tsv"
    arrays = POSEFORMERV2_FIXTURE_DIR / "fixture_243_27_27.npz"
    if not manifest.is_file() or not arrays.is_file():
        pytest.skip(f"PoseFormerV2 fixture missing in {POSEFORMERV2_FIXTURE_DIR}")
    with np.load(arrays) as npz:
        data = {name: npz[name] for name in npz.files}
    return {"state_dict": _deterministic_weights(_read_manifest(manifest)), "npz": data}


@pytest.fixture(scope="session")
def released_state_dict(shared_dir):
    """Factory: deterministic `module.`-prefixed weights for a released-style T/f/n configuration.

    Built from the 243/27/27 manifest by analogy: only the temporal position embeddings and the two weighted-mean
    poolings depend on f (frames kept) and n (coefficients kept).
    """
    manifest = POSEFORMERV2_FIXTURE_DIR / "manifest_243_27_27.tsv"
    if not manifest.is_file():
        pytest.skip(f"PoseFormerV2 manifest missing in {POSEFORMERV2_FIXTURE_DIR}")
    rows = _read_manifest(manifest)

    def build(frames_kept: int, coeffs_kept: int) -> dict[str, torch.Tensor]:
        reshaped = {
            "module.Temporal_pos_embed": lambda s: (1, frames_kept, s[2]),
            "module.Temporal_pos_embed_": lambda s: (1, coeffs_kept, s[2]),
            "module.weighted_mean.weight": lambda s: (1, coeffs_kept, 1),
            "module.weighted_mean_.weight": lambda s: (1, frames_kept, 1),
        }
        return _deterministic_weights(
            [(i, k, reshaped[k](s) if k in reshaped else s, init) for i, k, s, init in rows]
        )

    return build


class _Numpy1RandomState:
    """Pickles the way numpy 1.26's RandomState.__reduce__ does: (__randomstate_ctor, ('MT19937',
    __bit_generator_ctor), state), the layout of the released checkpoints' `random_state` entry."""

    def __init__(self, seed: int) -> None:
        self.state = np.random.RandomState(seed).get_state(legacy=False)

    def __reduce__(self):
        from numpy.random import _pickle as random_pickle

        # getattr: a literal `random_pickle.__randomstate_ctor` would be name-mangled inside this class.
        ctor = getattr(random_pickle, "__randomstate_ctor")
        return ctor, ("MT19937", getattr(random_pickle, "__bit_generator_ctor")), self.state


def _as_numpy1_pickle(data: bytes) -> bytes:
    """Rename numpy 2's `numpy._core` module to numpy 1.x's `numpy.core` in a protocol-2 pickle (text GLOBALs)."""
    return data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


@pytest.fixture(scope="session")
def numpy1_random_state_pickle():
    """Factory: pickle.dumps({"random_state": RandomState(seed)}, protocol=2) as numpy 1.26 writes it."""
    import pickle

    return lambda seed: _as_numpy1_pickle(pickle.dumps({"random_state": _Numpy1RandomState(seed)}, protocol=2))


def _numpy1_style_torch_file(path: Path, payload: dict) -> None:
    """torch.save with pickle protocol 2 (text GLOBAL opcodes), then rename numpy 2's `numpy._core` module in the
    pickle to numpy 1.x's `numpy.core`, so the file names exactly the globals a numpy-1.26 writer puts there."""
    import io
    import zipfile

    buffer = io.BytesIO()
    torch.save(payload, buffer, pickle_protocol=2)
    buffer.seek(0)
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                data = _as_numpy1_pickle(data)
                assert b"numpy._core" not in data and b"cnumpy.core.multiarray\n_reconstruct\n" in data
            dst.writestr(info, data)


@pytest.fixture(scope="session")
def write_released_checkpoint():
    """Factory: write `state_dict` into a file shaped like a released PoseFormerV2 checkpoint, as numpy 1.26 + torch
    write it: {'epoch', 'lr', 'random_state' (numpy-1.x RandomState pickle), 'optimizer', 'model_pos' (`module.`)}."""

    def write(path: Path, state_dict: dict[str, torch.Tensor], epoch: int = 80) -> Path:
        param = torch.nn.Parameter(torch.zeros(3))
        optimizer = torch.optim.AdamW([param], lr=1e-3)
        param.grad = torch.ones(3)
        optimizer.step()
        payload = {
            "epoch": epoch,
            "lr": 1e-3 * 0.99**epoch,
            "random_state": _Numpy1RandomState(1234),
            "optimizer": optimizer.state_dict(),
            "model_pos": {k if k.startswith("module.") else f"module.{k}": v for k, v in state_dict.items()},
        }
        _numpy1_style_torch_file(Path(path), payload)
        return Path(path)

    return write


def pytest_sessionfinish(session, exitstatus):
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


def pytest_unconfigure(config):
    """Leave at once with pytest's own exit status, once every result is reported, without the interpreter's
    teardown. Why: on 3 December a fresh clone's `bash .ci/run` reported "619 passed, 3 skipped" and then the process
    died with a segmentation fault (exit 139) in that teardown, after the summary: native threads of the libraries the
    tests load (torch.compile's worker pool, Ray, Playwright, ffmpeg readers) being torn down in the wrong order, a
    known class of crash (pytorch/pytorch#84756, #113691). The same commit's rerun exited 0: it does not happen every
    time, and a CI run must not fail on it. A crash while a test runs still fails it: this only skips the teardown
    after the last report."""
    status = config.stash.get(_EXIT_STATUS, None)
    if status is None:  # e.g. a usage error before the session started: the normal way out
        return
    import logging
    import os
    import sys

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
