import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from pipeline.checkpoints import (
    CheckpointError,
    extract_state_dict,
    read_checkpoint,
    read_safetensors_metadata,
    save_safetensors,
    strip_prefix,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _RunsShell:
    """A pickle payload that runs a shell command when unpickled without restrictions."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _pickle_globals(path):
    import pickletools

    with zipfile.ZipFile(path) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))
    return {arg for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


def test_numpy1_released_layout_is_read(tmp_path, write_released_checkpoint):
    path = write_released_checkpoint(tmp_path / "27_243_45.2.bin", {"w": torch.arange(6.0).reshape(2, 3)})
    # The file names what numpy 1.26 writes, not what the installed numpy 2 would write.
    assert "numpy.core.multiarray _reconstruct" in _pickle_globals(path)
    assert "numpy.random._pickle __randomstate_ctor" in _pickle_globals(path)

    ckpt = read_checkpoint(path)
    assert set(ckpt) == {"epoch", "lr", "random_state", "optimizer", "model_pos"}
    assert ckpt["epoch"] == 80
    torch.testing.assert_close(ckpt["model_pos"]["module.w"], torch.arange(6.0).reshape(2, 3))
    assert isinstance(ckpt["random_state"], np.random.RandomState)
    expected = np.random.RandomState(1234)
    assert ckpt["random_state"].randint(0, 2**31, size=5).tolist() == expected.randint(0, 2**31, size=5).tolist()
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == 1e-3
    assert set(ckpt["optimizer"]["state"][0]) >= {"exp_avg", "exp_avg_sq"}


def test_numpy2_written_random_state_is_read(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"random_state": np.random.RandomState(7), "model_pos": {"a": torch.ones(1)}}, path)
    assert "numpy._core.multiarray _reconstruct" in _pickle_globals(path)  # numpy 2 names
    ckpt = read_checkpoint(path)
    assert ckpt["random_state"].randint(1000) == np.random.RandomState(7).randint(1000)


def test_allow_list_does_not_leak_into_torch_global_state(tmp_path, write_released_checkpoint):
    before = set(torch.serialization.get_safe_globals())
    read_checkpoint(write_released_checkpoint(tmp_path / "c.bin", {"w": torch.ones(1)}))
    assert set(torch.serialization.get_safe_globals()) == before


@pytest.mark.parametrize("legacy_format", [False, True])
def test_malicious_pickle_is_refused_without_running_it(tmp_path, legacy_format):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    payload = {"model_pos": {"module.w": torch.ones(2)}, "random_state": _RunsShell(marker)}
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy_format)
    with pytest.raises(CheckpointError, match=r"refused to load .*system.*may be malicious"):
        read_checkpoint(path)
    assert not marker.exists()


def test_raw_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(_RunsShell(marker), protocol=2))
    with pytest.raises(CheckpointError, match="may be malicious"):
        read_checkpoint(path)
    assert not marker.exists()


def test_whole_pickled_model_is_refused_naming_the_class(tmp_path):
    # Like an Ultralytics .pt: a pickled nn.Module rather than tensors.
    path = tmp_path / "yolo11n.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)
    with pytest.raises(CheckpointError, match=r"torch\.nn\.modules\.linear\.Linear"):
        read_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint file not found: .*nope.bin"):
        read_checkpoint(tmp_path / "nope.bin")


def test_directory_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not a file"):
        read_checkpoint(tmp_path)


@pytest.mark.parametrize("keep", [0.5, 0.05])
def test_truncated_torch_file(tmp_path, keep):
    full = tmp_path / "full.bin"
    torch.save({"model_pos": {"module.w": torch.randn(1000)}}, full)
    data = full.read_bytes()
    cut = tmp_path / "cut.bin"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(cut)


def test_unrecognised_content(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_text("<html>404 not found</html>")
    with pytest.raises(CheckpointError, match="not a PyTorch or safetensors checkpoint"):
        read_checkpoint(path)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty file"):
        read_checkpoint(empty)


def test_top_level_must_be_a_dict(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.ones(3), path)
    with pytest.raises(CheckpointError, match="holds a Tensor, not a checkpoint dict"):
        read_checkpoint(path)


def test_safetensors_round_trip_with_metadata(tmp_path):
    path = tmp_path / "lifter.weights"  # recognised by content, whatever the suffix
    save_safetensors(path, {"a": torch.arange(4.0), "b": torch.ones(2, 2)}, {"format": "x", "config": {"frames": 27}})
    ckpt = read_checkpoint(path)
    assert set(ckpt) == {"a", "b"}
    torch.testing.assert_close(ckpt["a"], torch.arange(4.0))
    assert read_safetensors_metadata(path) == {"format": "x", "config": '{"frames": 27}'}


def test_truncated_safetensors(tmp_path):
    path = tmp_path / "full.safetensors"
    save_safetensors(path, {"a": torch.randn(1000)}, {})
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(cut)


def test_extract_state_dict_and_strip_prefix():
    w = torch.ones(1)
    assert extract_state_dict({"epoch": 1, "model_pos": {"module.a": w}}) == {"module.a": w}
    assert extract_state_dict({"state_dict": {"a": w}, "meta": {}}) == {"a": w}
    assert extract_state_dict({"a": w}) == {"a": w}
    with pytest.raises(CheckpointError, match=r"no state dict found.*found entries \['epoch', 'lr'\]"):
        extract_state_dict({"epoch": 1, "lr": 0.1})
    assert strip_prefix({"module.a": w, "b": w}) == {"a": w, "b": w}


def test_numpy1_emulation_is_byte_identical_to_numpy_1_26(numpy1_random_state_pickle):
    # sha256 of pickle.dumps({"random_state": numpy.random.RandomState(1234)}, protocol=2) written by numpy 1.26.4
    # (recorded once in a throwaway venv): the emulated pickle used by the tests above is exactly that.
    import hashlib

    assert hashlib.sha256(numpy1_random_state_pickle(1234)).hexdigest() == (
        "de2914e4cbf429b3c011e679533685984e28ca6c9794d0a48a471e52782ddbfc"
    )
