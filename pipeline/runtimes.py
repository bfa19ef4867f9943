"""Where the 2D networks run: PyTorch, or an OpenVINO / ONNX Runtime export of the same weights, made once and cached.

Why: the YOLO detector is the slowest stage of the demo on a CPU. Exported with Ultralytics' own exporter it gives
the same keypoints: the exports here are float32 and dynamic in batch, height and width, so Ultralytics feeds them
exactly the letterboxed frames it feeds the PyTorch model (a fixed 640x640 export pads the frames differently: median
0.6 px, and some boxes matched differently, on the sample clip). How much faster depends on the CPU. On this
project's 2-core AVX2 machine, shared with other jobs (benchmarks/bench_runtimes.py, 64 frames of the sample clip):
the whole detector call (letterbox, network, NMS) ran at 4.6 (torch), 4.5 (OpenVINO) and 3.9 (ONNX Runtime) frames/s,
using 139, 127 and 169 CPU ms per frame; under heavier load OpenVINO's lower CPU time showed (2D stage 2.4-2.8 vs
1.5-1.9 frames/s in whole demo runs). Keypoints differ from PyTorch's by at most 0.002 px (OpenVINO) and 0.007 px
(ONNX Runtime). On CPUs with AVX-512 BF16 / AMX, OpenVINO was reported about 4x faster than PyTorch (bfloat16, below).
HRNet exported to ONNX (`heatmap_network`) gives the same heatmaps to 1e-6 at 1.4-1.5x less CPU time per crop.

Exports are cached outside the repository, keyed by the weights file's bytes:
`~/.cache/poseformerv2-demo/exports/<sha256 of the .pt>-<runtime>-<imgsz>-<precision>/` (`$XDG_CACHE_HOME` is
honoured; HRNet: `<sha256>-hrnet-<H>x<W>-fp32/`). Each is written into a temporary folder and renamed into place only
when complete, so an export that fails or is interrupted leaves nothing behind, and two processes exporting at once
both end with one complete copy. A changed file has another hash and is exported afresh. Exported models are not
pickles; the export itself loads the .pt, which the caller's loader checks first (`pipeline.detection.load_yolo`
refuses files that would run code).

Precision: the exports hold float32 weights. OpenVINO then computes in its CPU default precision: float32 on CPUs
without native bfloat16 (this project's machine), bfloat16 on CPUs with AVX-512 BF16 or AMX, which Ultralytics keeps.
bfloat16 keeps 8 bits of mantissa: on such a CPU the keypoints were reported to move by a median 0.5 px on the sample
clip (within the 1 px asked of a default; not measurable on this machine). `inference_precision` says which one runs;
the 2D cache key and the provenance record it.

Ultralytics pip-installs missing export packages at run time unless YOLO_AUTOINSTALL is off; the packages each
runtime needs are checked here first (`missing_packages`), so a missing one is a clear error (or, for "auto", a logged
fallback to PyTorch) and the exporter never reaches for the network.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import SettingError

logger = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnx", "openvino")
EXPORTED_RUNTIMES = ("openvino", "onnx")
# What "auto" uses on an x86 CPU when installed: ONNX Runtime took more CPU time per frame than PyTorch on this
# project's shared 2-core machine (its two spinning threads lose on a busy CPU), so it is not an automatic choice.
AUTO_RUNTIMES = ("openvino",)
# What Ultralytics' exporter and inference backends check for each format (a tuple: any one of these builds).
# Checked here with install=False, so Ultralytics' own check always passes and never runs pip.
REQUIREMENTS: dict[str, tuple[str | tuple[str, ...], ...]] = {
    "onnx": ("onnx>=1.12.0,<2.0.0", ("onnxruntime", "onnxruntime-gpu"), "onnxslim>=0.1.82"),
    "openvino": ("openvino>=2024.0.0",),
}
PIP_NAMES = {"onnx": "onnx onnxruntime onnxslim", "openvino": "openvino"}
EXPORT_PRECISION = "fp32"  # the exported weights; see the module docstring for OpenVINO's compute precision
MODEL_STEM = "model"  # the .pt is exported as model.pt, so the export's path inside its folder is fixed
EXPORTED_NAME = {"onnx": f"{MODEL_STEM}.onnx", "openvino": f"{MODEL_STEM}_openvino_model"}
X86_MACHINES = ("x86_64", "amd64", "i686", "i386")
HRNET_ONNX = "hrnet.onnx"


class RuntimeUnavailable(SettingError):
    """The requested runtime cannot run here (a package is missing, the model cannot be exported); says what to do."""

    def __init__(self, message: str):
        super().__init__("runtime", message)


@dataclass(frozen=True)
class RuntimeChoice:
    runtime: str  # "torch", "onnx" or "openvino"
    reason: str  # why this one (logged, and recorded when "auto" falls back)


def check_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise RuntimeUnavailable(f"must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
    return runtime


def missing_packages(runtime: str) -> list[str]:
    """The requirements of an exported runtime that are not installed (or too old); [] when it can run."""
    from ultralytics.utils.checks import check_requirements

    return [req if isinstance(req, str) else req[0] for req in REQUIREMENTS[runtime]
            if not check_requirements([req], install=False)]


def installed_runtimes() -> list[str]:
    """The exported runtimes whose packages are all installed, fastest first."""
    return [runtime for runtime in EXPORTED_RUNTIMES if not missing_packages(runtime)]


def resolve_runtime(requested: str, device: torch.device, exportable: bool = True,
                    installed: Sequence[str] | None = None, machine: str | None = None) -> RuntimeChoice:
    """The runtime to use for `requested` ("auto", "torch", "onnx", "openvino") on `device`.

    "auto": PyTorch on a GPU (CUDA, MPS) and for a model that is not a .pt file; on an x86 CPU OpenVINO when it is
    installed (AUTO_RUNTIMES: measured faster than PyTorch there); PyTorch otherwise (other CPUs: not measured). An
    explicit runtime whose packages are missing is a RuntimeUnavailable error that says what to install.
    `installed` and `machine` default to this machine's (given: for tests)."""
    check_runtime(requested)
    installed = installed_runtimes() if installed is None else list(installed)
    if requested == "torch":
        return RuntimeChoice("torch", "requested")
    if requested != "auto":
        if requested not in installed:
            raise RuntimeUnavailable(f"{requested} needs the packages {PIP_NAMES[requested]}: "
                                     f"pip install {PIP_NAMES[requested]}, or use the torch runtime")
        if not exportable:
            raise RuntimeUnavailable(f"{requested} runs an export of an Ultralytics .pt file; the detector is not "
                                     "one: give a .pt, or use the torch runtime")
        return RuntimeChoice(requested, "requested")
    if device.type != "cpu":
        return RuntimeChoice("torch", f"PyTorch on the {device.type.upper()} device")
    if not exportable:
        return RuntimeChoice("torch", "the detector is not a .pt file that could be exported")
    machine = (machine or platform.machine()).lower()
    if machine not in X86_MACHINES:
        return RuntimeChoice("torch", f"exported runtimes are measured faster only on x86 CPUs, this is {machine}")
    for runtime in AUTO_RUNTIMES:
        if runtime in installed:
            return RuntimeChoice(runtime, f"{runtime} is installed and this is an x86 CPU")
    return RuntimeChoice("torch", "openvino is not installed (pip install openvino for faster detection on a CPU)")


def inference_precision(runtime: str) -> str:
    """The precision the runtime computes in on the CPU: "f32", or OpenVINO's CPU default ("bf16" on CPUs with
    native bfloat16, which Ultralytics keeps)."""
    if runtime != "openvino":
        return "f32"
    import openvino as ov

    return ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()  # "f32", "bf16", "f16"


def default_export_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "poseformerv2-demo" / "exports"


def export_key(weights_sha256: str, runtime: str, imgsz: int, precision: str = EXPORT_PRECISION) -> str:
    """The cache folder name of one export."""
    return f"{weights_sha256}-{runtime}-{imgsz}-{precision}"


def ultralytics_export(model: Any, runtime: str, imgsz: int) -> Path:
    """Ultralytics' exporter on a loaded YOLO model: float32, dynamic batch/height/width, on the CPU. The export is
    written next to the model's .pt file; returns its path."""
    with warnings.catch_warnings():  # torch.jit.trace's deprecation notice, once per export: not the user's concern
        warnings.simplefilter("ignore", FutureWarning)
        # No half/int8/quantize argument: Ultralytics' default is float32, and the names changed across versions.
        path = model.export(format=runtime, imgsz=imgsz, dynamic=True, simplify=True, batch=1, device="cpu",
                            verbose=False)
    return Path(path)


def exported_model(weights: Path, weights_sha256: str, runtime: str, imgsz: int, load: Callable[[Path], Any],
                   cache_root: Path | None = None,
                   export: Callable[[Any, str, int], Path] = ultralytics_export) -> Path:
    """The path of `weights` (.pt) exported for `runtime` at `imgsz`, from the cache or exported now.

    `load(path)` loads a .pt for exporting: pass a loader that refuses unsafe files (pipeline.detection.load_yolo).
    `weights_sha256` is the file's digest, the cache key. Raises RuntimeUnavailable when the export fails; nothing
    is left in the cache then."""
    if runtime not in EXPORTED_RUNTIMES:
        raise ValueError(f"only {', '.join(EXPORTED_RUNTIMES)} are exported, not {runtime!r}")

    def make(folder: Path) -> dict:
        copy = folder / f"{MODEL_STEM}.pt"  # Ultralytics writes the export next to the .pt it loaded
        shutil.copyfile(weights, copy)
        loaded = load(copy)
        path = export(loaded, runtime, imgsz)
        if path.resolve() != (folder / EXPORTED_NAME[runtime]).resolve() or not path.exists():
            raise RuntimeError(f"the exporter wrote {path}, not {folder / EXPORTED_NAME[runtime]}")
        copy.unlink()
        return {"weights": str(weights), "sha256": weights_sha256, "runtime": runtime, "imgsz": imgsz,
                "task": getattr(loaded, "task", None), "precision": EXPORT_PRECISION, "dynamic": True,
                "versions": _versions(runtime)}

    return cached_export(export_key(weights_sha256, runtime, imgsz), EXPORTED_NAME[runtime], make,
                         f"{weights.name} for {runtime}", cache_root)


def cached_export(key: str, name: str, make: Callable[[Path], dict], what: str,
                  cache_root: Path | None = None) -> Path:
    """`<cache>/<key>/<name>`, made first if missing: `make(folder)` writes `name` into a fresh temporary folder and
    returns what export.json records; the folder is renamed into place only when complete. An export that fails is
    a RuntimeUnavailable error and leaves nothing behind."""
    root = Path(cache_root) if cache_root is not None else default_export_root()
    final = root / key
    if (final / name).exists():
        return final / name
    logger.info("exporting %s once (later runs reuse it); cached in %s", what, final)
    started = time.perf_counter()
    temp = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
        record = make(temp)
        if not (temp / name).exists():
            raise RuntimeError(f"the export did not write {name}")
        (temp / "export.json").write_text(json.dumps(record, indent=1) + "\n")
        _move_into_place(temp, final, name)
    except BaseException as exc:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
        if isinstance(exc, Exception) and not isinstance(exc, SettingError):
            raise RuntimeUnavailable(f"exporting {what} failed ({_first_line(exc)}); use the torch runtime") from exc
        raise
    logger.info("exported in %.0f s", time.perf_counter() - started)
    return final / name


def _move_into_place(temp: Path, final: Path, name: str) -> None:
    """Rename the finished export into place. A complete copy that another process made meanwhile is kept (it may be
    in use); a folder without its model (deleted by hand, or from before atomic writes) is replaced."""
    if final.exists() and not (final / name).exists():
        stale = final.with_name(f".{final.name}.stale-{os.getpid()}")
        final.rename(stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        temp.rename(final)
    except OSError:
        if not (final / name).exists():  # not a concurrent export that finished first
            raise
        shutil.rmtree(temp, ignore_errors=True)


def exported_hrnet(model: torch.nn.Module, weights_sha256: str, cache_root: Path | None = None) -> Path:
    """The ONNX export (torch.onnx.export, float32, any number of crops) of a PyTorch HRNet loaded from a file with
    digest `weights_sha256`, from the cache or exported now."""
    h, w = model.config.input_size

    def make(folder: Path) -> dict:
        crops = torch.zeros((1, 3, h, w))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript-exporter deprecation notices
            torch.onnx.export(model.cpu().eval(), crops, str(folder / HRNET_ONNX), input_names=["crops"],
                              output_names=["heatmaps"], opset_version=17, dynamo=False,
                              dynamic_axes={"crops": {0: "n"}, "heatmaps": {0: "n"}})
        return {"sha256": weights_sha256, "network": "hrnet", "width": model.config.width, "input_size": [h, w],
                "precision": EXPORT_PRECISION, "versions": _versions("onnx")}

    return cached_export(f"{weights_sha256}-hrnet-{h}x{w}-{EXPORT_PRECISION}", HRNET_ONNX, make,
                         f"HRNet-W{model.config.width} {h}x{w}", cache_root)


class ExportedHeatmapNet(torch.nn.Module):
    """An exported heatmap network run by OpenVINO or ONNX Runtime on the CPU, in place of the PyTorch module for
    pipeline.topdown.TopDownEstimator: (B, 3, H, W) float32 crops -> (B, 17, H/4, W/4) heatmaps, same `config`."""

    def __init__(self, path: Path, runtime: str, config: Any) -> None:
        super().__init__()
        self.config = config
        self.runtime = runtime
        if runtime == "openvino":
            import openvino as ov

            compiled = ov.Core().compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "LATENCY"})
            self._run = lambda crops: next(iter(compiled(crops).values()))
        elif runtime == "onnx":
            import onnxruntime as ort

            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            self._run = lambda crops: session.run(None, {"crops": crops})[0]
        else:
            raise ValueError(f"no exported heatmap network for the {runtime!r} runtime")

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        heatmaps = self._run(crops.detach().cpu().numpy().astype("float32", copy=False))
        return torch.from_numpy(heatmaps.copy())


def heatmap_network(model: torch.nn.Module, weights: Path, requested: str, device: torch.device,
                    cache_root: Path | None = None) -> tuple[torch.nn.Module, torch.device]:
    """HRNet `model` (loaded from `weights`) as it runs for the `requested` runtime, and the device to feed it on:
    itself for PyTorch; else its ONNX export (cached by the file's sha256) run by OpenVINO or ONNX Runtime on the
    CPU, which gives the same heatmaps to about 1e-6 at 1.4-1.5x less CPU time per crop (benchmarks/bench_runtimes.py
    --hrnet). "auto" falls back to PyTorch, with a logged reason, when the export fails."""
    choice = resolve_runtime(requested, device)
    if choice.runtime == "torch":
        return model, device
    from pipeline.detection import sha256_of

    try:
        network = ExportedHeatmapNet(exported_hrnet(model, sha256_of(Path(weights)), cache_root), choice.runtime,
                                     model.config)
    except RuntimeUnavailable as exc:
        if requested != "auto":
            raise
        logger.warning("HRNet runs in PyTorch instead of %s: %s", choice.runtime, exc.message)
        return model, device
    logger.info("HRNet runs in %s", choice.runtime)
    return network, torch.device("cpu")


def _versions(runtime: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    names = ["ultralytics", "torch", *(["onnx", "onnxruntime", "onnxslim"] if runtime == "onnx" else ["openvino"])]
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
