"""HRNet top-down pose network (Sun et al., CVPR 2019) in plain PyTorch, and a strict loader for its checkpoints.

The module layout reproduces the official `lib/models/pose_hrnet.py` of leoxiaobin/deep-high-resolution-net.pytorch
so that the released `pose_hrnet_w32_256x192.pth` / `pose_hrnet_w48_384x288.pth` state dicts load key for key.
mmpose 0.x/1.x checkpoints hold the same network (their HRNet backbone uses the same module names) under
`state_dict` with a `backbone.` prefix and the output conv as `keypoint_head.final_layer` (0.x) or
`head.final_layer` (1.x); `load_hrnet` renames those explicitly.

The network maps normalised RGB crops (B, 3, H, W) to heatmaps (B, num_joints, H/4, W/4).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.checkpoints import CheckpointError, read_checkpoint, state_dict_differences

logger = logging.getLogger(__name__)

# Where the supported files come from; quoted in every loading error so the user knows what to fetch.
OFFICIAL_SOURCES = (
    "official files: pose_hrnet_w48_384x288.pth / pose_hrnet_w32_256x192.pth from the model zoo links in the README "
    "of github.com/leoxiaobin/deep-high-resolution-net.pytorch, or an mmpose top-down HRNet COCO checkpoint "
    "(download.openmmlab.com, mmpose model zoo)"
)

_BN_MOMENTUM = 0.1  # the official value; irrelevant in eval mode but kept so train() behaves like the original


@dataclass(frozen=True)
class HRNetConfig:
    """Architecture of a top-down HRNet pose network.

    width: channels of the highest-resolution branch (32 or 48); branch k has width * 2**k channels.
    input_size: (height, width) of the crops the network was trained on; the aspect ratio is width/height.
    stage_modules: number of HR modules in stages 2, 3 and 4 (stages have 2, 3 and 4 branches).
    """

    width: int = 32
    input_size: tuple[int, int] = (256, 192)
    num_joints: int = 17
    stem_blocks: int = 4  # Bottleneck blocks of stage 1 (`layer1`)
    stage_modules: tuple[int, int, int] = (1, 4, 3)
    blocks_per_branch: int = 4  # BasicBlocks in every branch of every HR module
    final_conv_kernel: int = 1

    def __post_init__(self) -> None:
        h, w = self.input_size
        if h % 32 or w % 32:
            raise ValueError(f"HRNet input size must be multiples of 32 (4 halvings after a stride-4 stem), "
                             f"got {h}x{w}")
        if self.final_conv_kernel not in (1, 3):
            raise ValueError(f"final_conv_kernel must be 1 or 3, got {self.final_conv_kernel}")

    @property
    def branch_channels(self) -> tuple[int, int, int, int]:
        return (self.width, 2 * self.width, 4 * self.width, 8 * self.width)

    @property
    def heatmap_stride(self) -> int:
        return 4

    @property
    def heatmap_size(self) -> tuple[int, int]:
        """(height, width) of the output heatmaps."""
        return (self.input_size[0] // self.heatmap_stride, self.input_size[1] // self.heatmap_stride)

    @property
    def aspect_ratio(self) -> float:
        """Crop width / height (0.75 for both released models)."""
        return self.input_size[1] / self.input_size[0]


PRESETS: dict[str, HRNetConfig] = {
    "w32_256x192": HRNetConfig(width=32, input_size=(256, 192)),
    "w32_384x288": HRNetConfig(width=32, input_size=(384, 288)),
    "w48_256x192": HRNetConfig(width=48, input_size=(256, 192)),
    "w48_384x288": HRNetConfig(width=48, input_size=(384, 288)),
}

# The released files are trained at these sizes when the file name does not say otherwise.
DEFAULT_INPUT_SIZE: dict[int, tuple[int, int]] = {32: (256, 192), 48: (384, 288)}


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int, relu: bool) -> nn.Sequential:
    """conv (no bias) + BatchNorm [+ ReLU]: the official Sequential layout, so keys are `.0.weight`, `.1.*`."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch, momentum=_BN_MOMENTUM),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (used in every HR branch; channels never change there)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels, momentum=_BN_MOMENTUM)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels, momentum=_BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 channels) residual block of the stem stage (`layer1`)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, momentum=_BN_MOMENTUM)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, momentum=_BN_MOMENTUM)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels, momentum=_BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        # Only the first block changes the channel count; the official name for its projection is `downsample`.
        self.downsample = (
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
                nn.BatchNorm2d(out_channels, momentum=_BN_MOMENTUM),
            )
            if in_channels != out_channels
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


def _fuse_path(channels: tuple[int, ...], src: int, dst: int) -> nn.Module:
    """Module bringing branch `src` to the resolution and channels of branch `dst` (official `fuse_layers[dst][src]`).

    Lower resolution -> 1x1 conv + BN + nearest upsampling; higher resolution -> a chain of stride-2 3x3 convs where
    only the last one changes channels and has no ReLU; same branch -> identity.
    """
    if src == dst:
        return nn.Identity()
    if src > dst:
        return nn.Sequential(
            nn.Conv2d(channels[src], channels[dst], 1, 1, 0, bias=False),
            nn.BatchNorm2d(channels[dst]),
            nn.Upsample(scale_factor=2 ** (src - dst), mode="nearest"),
        )
    steps = dst - src
    chain = [
        _conv_bn(channels[src], channels[dst] if k == steps - 1 else channels[src], 3, 2, relu=k < steps - 1)
        for k in range(steps)
    ]
    return nn.Sequential(*chain)


class HRModule(nn.Module):
    """Parallel branches of BasicBlocks followed by the all-to-all exchange between resolutions."""

    def __init__(self, channels: tuple[int, ...], num_blocks: int, num_outputs: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(*(BasicBlock(c) for _ in range(num_blocks))) for c in channels
        )
        # num_outputs < len(channels) only in the network's last module, which keeps just the highest resolution.
        self.fuse_layers = nn.ModuleList(
            nn.ModuleList(_fuse_path(channels, src, dst) for src in range(len(channels))) for dst in range(num_outputs)
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs, strict=True)]
        outputs = []
        for paths in self.fuse_layers:
            y = paths[0](xs[0])
            for path, x in zip(paths[1:], xs[1:], strict=True):
                y = y + path(x)
            outputs.append(self.relu(y))
        return outputs


def _transition(pre: tuple[int, ...], cur: tuple[int, ...]) -> nn.ModuleList:
    """Official `transitionN`: adapt existing branches (identity when channels agree) and spawn one new branch
    from the lowest-resolution one with a stride-2 conv."""
    layers: list[nn.Module] = []
    for i, out_ch in enumerate(cur):
        if i < len(pre):
            layers.append(nn.Identity() if pre[i] == out_ch else _conv_bn(pre[i], out_ch, 3, 1, relu=True))
        else:
            steps = i + 1 - len(pre)
            # Nested Sequential on purpose: the official keys are `transition1.1.0.0.weight`.
            layers.append(nn.Sequential(*(
                _conv_bn(pre[-1], out_ch if k == steps - 1 else pre[-1], 3, 2, relu=True) for k in range(steps)
            )))
    return nn.ModuleList(layers)


class PoseHRNet(nn.Module):
    """HRNet-W32/W48 top-down pose network: (B, 3, H, W) normalised RGB -> (B, num_joints, H/4, W/4) heatmaps."""

    def __init__(self, config: HRNetConfig) -> None:
        super().__init__()
        self.config = config
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, momentum=_BN_MOMENTUM)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64, momentum=_BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        stem_out = 64 * Bottleneck.expansion
        self.layer1 = nn.Sequential(
            *(Bottleneck(64 if i == 0 else stem_out, 64) for i in range(config.stem_blocks))
        )

        ch = config.branch_channels
        m2, m3, m4 = config.stage_modules
        self.transition1 = _transition((stem_out,), ch[:2])
        self.stage2 = self._stage(ch[:2], m2, last_outputs=2)
        self.transition2 = _transition(ch[:2], ch[:3])
        self.stage3 = self._stage(ch[:3], m3, last_outputs=3)
        self.transition3 = _transition(ch[:3], ch[:4])
        self.stage4 = self._stage(ch[:4], m4, last_outputs=1)
        k = config.final_conv_kernel
        self.final_layer = nn.Conv2d(ch[0], config.num_joints, k, 1, k // 2)

    def _stage(self, channels: tuple[int, ...], num_modules: int, last_outputs: int) -> nn.Sequential:
        n = len(channels)
        return nn.Sequential(*(
            HRModule(channels, self.config.blocks_per_branch, last_outputs if i == num_modules - 1 else n)
            for i in range(num_modules)
        ))

    @staticmethod
    def _enter(transition: nn.ModuleList, ys: list[torch.Tensor]) -> list[torch.Tensor]:
        # New branches are spawned from the lowest-resolution output of the previous stage.
        return [t(ys[i] if i < len(ys) else ys[-1]) for i, t in enumerate(transition)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.layer1(x)
        ys = self.stage2(self._enter(self.transition1, [x]))
        ys = self.stage3(self._enter(self.transition2, ys))
        ys = self.stage4(self._enter(self.transition3, ys))
        return self.final_layer(ys[0])


# ---------------------------------------------------------------------------------------------------------------
# Loading

# Exact renames of mmpose's head; the backbone needs only its `backbone.` prefix removed (same module names).
_MMPOSE_HEAD_NAMES = {
    "head.final_layer.": "final_layer.",  # mmpose 1.x HeatmapHead
    "keypoint_head.final_layer.": "final_layer.",  # mmpose 0.x TopdownHeatmapSimpleHead
}


def _describe_keys(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _extract_state_dict(obj: object, source: str) -> dict[str, torch.Tensor]:
    """The official files are a raw state dict; mmpose wraps it in {'state_dict': ..., 'meta': ...}."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        found = _describe_keys(sorted(map(str, obj))) if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"{source}: not an HRNet pose checkpoint: expected a state dict of tensors (raw, or under 'state_dict'), "
            f"found {found}; {OFFICIAL_SOURCES}"
        )
    return dict(obj)


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an mmpose (or DataParallel `module.`) HRNet state dict to the official key names; official names pass."""
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if not any(k.startswith("backbone.") for k in state):
        return dict(state)
    out = {}
    for key, value in state.items():
        if key.startswith("backbone."):
            out[key[len("backbone."):]] = value
            continue
        for old, new in _MMPOSE_HEAD_NAMES.items():
            if key.startswith(old):
                out[new + key[len(old):]] = value
                break
        else:
            out[key] = value  # left as is: the strict check below reports it as unexpected
    return out


def _size_from_name(name: str) -> tuple[int, int] | None:
    match = re.search(r"(\d{3})x(\d{3})", name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def config_from_state_dict(
    state: dict[str, torch.Tensor], *, input_size: tuple[int, int] | None = None, source: str = "state dict"
) -> HRNetConfig:
    """Infer width, joint count and output-kernel size from tensor shapes (official key names); the stage layout is
    the standard one of all released models (stem 4 Bottlenecks, stages of 1/4/3 modules with 4 BasicBlocks)."""
    probes = ("conv1.weight", "transition1.0.0.weight", "final_layer.weight")
    missing = [k for k in probes if k not in state]
    if missing:
        raise CheckpointError(
            f"{source}: not an HRNet pose checkpoint: expected keys such as {_describe_keys(list(probes))}, "
            f"found {_describe_keys(sorted(state))}; {OFFICIAL_SOURCES}"
        )
    for key in probes:
        if state[key].ndim != 4:
            raise CheckpointError(f"{source}: {key} has shape {tuple(state[key].shape)}, expected a 4-D conv "
                                  f"weight; {OFFICIAL_SOURCES}")
    width = int(state["transition1.0.0.weight"].shape[0])
    final = state["final_layer.weight"]
    if input_size is None:
        input_size = DEFAULT_INPUT_SIZE.get(width, (256, 192))
    # Module and block counts are not inferred: every released model has the same ones, and inferring them would
    # let a file with a missing module pass the strict check.
    return HRNetConfig(
        width=width,
        input_size=tuple(input_size),
        num_joints=int(final.shape[0]),
        final_conv_kernel=int(final.shape[-1]),
    )


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
    """Copy every tensor by name after checking that names and shapes match exactly; raise one clear error if not."""
    missing, unexpected, wrong_shapes = state_dict_differences(model, state)
    mismatched = [f"{k}: file {found} vs model {want}" for k, want, found in wrong_shapes]
    problems = []
    if missing:
        problems.append(f"missing {_describe_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected {_describe_keys(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch {'; '.join(mismatched[:3])}")
    if problems:
        raise CheckpointError(
            f"{source}: does not match HRNet-W{getattr(model, 'config', HRNetConfig()).width}: "
            f"{'; '.join(problems)}; {OFFICIAL_SOURCES}"
        )
    model.load_state_dict(state, strict=True)


def build_hrnet(state: dict[str, torch.Tensor], *, input_size: tuple[int, int] | None = None,
                device: str | torch.device = "cpu", source: str = "state dict") -> PoseHRNet:
    """Build the network that `state` (official or mmpose key names) describes, load it strictly, eval mode."""
    state = convert_state_dict(state)
    config = config_from_state_dict(state, input_size=input_size, source=source)
    model = PoseHRNet(config)
    load_state_dict_strict(model, state, source)
    return model.to(device).eval()


def load_hrnet(
    checkpoint: str | Path,
    *,
    device: str | torch.device = "cpu",
    input_size: tuple[int, int] | None = None,
) -> PoseHRNet:
    """Load an official or mmpose HRNet top-down checkpoint (.pth or .safetensors) as an eval-mode `PoseHRNet`.

    The width (32/48) and joint count come from the tensor shapes. The crop size is `input_size` (height, width) if
    given, else the `HHHxWWW` in the file name (e.g. `..._384x288.pth`), else 256x192 for W32 and 384x288 for W48.
    The model maps (B, 3, H, W) normalised RGB crops to (B, num_joints, H/4, W/4) heatmaps; its `config` tells
    the preprocessing which crop size and aspect ratio to use.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"HRNet checkpoint {path} does not exist; {OFFICIAL_SOURCES}")
    try:
        contents = read_checkpoint(path)
    except CheckpointError as exc:
        # One line, with what this loader wanted: the reader's message may span lines (torch's own text).
        raise CheckpointError(f"cannot load HRNet weights: {' '.join(str(exc).split())}; {OFFICIAL_SOURCES}") from None
    state = _extract_state_dict(contents, str(path))
    if input_size is None:
        input_size = _size_from_name(path.name)
    model = build_hrnet(state, input_size=input_size, device=device, source=str(path))
    logger.info("loaded HRNet-W%d %dx%d from %s", model.config.width, *model.config.input_size, path)
    return model
