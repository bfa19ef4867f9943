import pytest
import torch

from pipeline.devices import resolve_device, ultralytics_device


def test_auto_picks_cuda_then_mps_then_the_cpu():
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


def test_unavailable_or_unknown_devices_are_clear_errors():
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    if not torch.backends.mps.is_available():
        with pytest.raises(ValueError, match="MPS is not available"):
            resolve_device("mps")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu9")


def test_ultralytics_gets_an_indexed_cuda_device():
    assert ultralytics_device(torch.device("cuda")) == "cuda:0"
    assert ultralytics_device(torch.device("cuda", 1)) == "cuda:1"
    assert ultralytics_device(torch.device("cpu")) == "cpu"
    assert ultralytics_device(torch.device("mps")) == "mps"


def test_torch_threads_sets_the_count_for_its_body_and_puts_it_back():
    """The demo lifts under the thread count PyTorch had before Ultralytics set it to cores - 1."""
    from pipeline.devices import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("a failing lift")
    assert torch.get_num_threads() == before
