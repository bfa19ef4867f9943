"""PoseFormerV2 (Zhao et al., CVPR 2023) in plain PyTorch, numerically the official `PoseTransformerV2`.

No timm, einops or torch_dct: the DCT is a fixed matrix. Parameter names (and so state-dict keys) are exactly those
of the released checkpoints without the `module.` prefix of `nn.DataParallel`, so a released `model_pos` dict loads
1:1 after stripping that prefix; see `load_state_dict_strict` and `config_from_state_dict`.

Facts the released weights depend on (see ../shared/fixtures/poseformerv2/README.md):
- the DCT is the unnormalised DCT-II (`X_k = 2 sum_t x_t cos(pi k (2t+1) / 2N)`, torch_dct's default) and the
  frequency MLP uses its exact inverse;
- LayerNorm eps is 1e-6 in the transformer blocks and norms, but the default 1e-5 in the head;
- the mixed blocks split their tokens at (f + n) // 2, which for f != n is not the frequency/time token boundary.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

BLOCK_NORM_EPS = 1e-6  # norm_layer = partial(nn.LayerNorm, eps=1e-6) in the reference
HEAD_NORM_EPS = 1e-5  # the head uses a plain nn.LayerNorm


@dataclass(frozen=True)
class PoseFormerV2Config:
    """Architecture of one PoseFormerV2 model. The six released ones differ only in frames/frames_kept/coeffs_kept."""

    frames: int = 243  # T: input window length; the output is the pose of the centre frame
    frames_kept: int = 27  # f: centre frames that go through the spatial transformer
    coeffs_kept: int = 27  # n: low-frequency DCT coefficients kept per joint coordinate
    embed_dim_ratio: int = 32  # per-joint embedding width; the temporal width is num_joints * embed_dim_ratio
    depth: int = 4  # number of spatial blocks and of mixed (temporal) blocks
    num_heads: int = 8
    mlp_ratio: float = 2.0
    qkv_bias: bool = True
    num_joints: int = 17
    in_chans: int = 2
    # Regularisation; only active in train mode. Defaults are those of the reference training code.
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.2

    def __post_init__(self) -> None:
        problems = []
        if self.frames < 1 or self.frames % 2 == 0:
            problems.append(f"frames={self.frames} must be a positive odd number (windows are centred on a frame)")
        if not 1 <= self.frames_kept <= self.frames or self.frames_kept % 2 == 0:
            problems.append(f"frames_kept={self.frames_kept} must be odd and between 1 and frames={self.frames}")
        if not 1 <= self.coeffs_kept <= self.frames:
            problems.append(f"coeffs_kept={self.coeffs_kept} must be between 1 and frames={self.frames}")
        if self.embed_dim_ratio < 1 or self.depth < 1 or self.num_heads < 1 or self.num_joints < 1:
            problems.append("embed_dim_ratio, depth, num_heads and num_joints must be positive")
        elif self.embed_dim_ratio % self.num_heads or self.embed_dim % self.num_heads:
            problems.append(
                f"embed_dim_ratio={self.embed_dim_ratio} and embed_dim={self.embed_dim} must be divisible by "
                f"num_heads={self.num_heads}"
            )
        if self.mlp_ratio <= 0:
            problems.append(f"mlp_ratio={self.mlp_ratio} must be positive")
        if problems:
            raise ValueError("invalid PoseFormerV2Config: " + "; ".join(problems))

    @property
    def embed_dim(self) -> int:
        return self.embed_dim_ratio * self.num_joints

    @property
    def mixed_split(self) -> int:
        """Token index where the mixed blocks switch from the plain MLP to the frequency MLP."""
        return (self.frames_kept + self.coeffs_kept) // 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> PoseFormerV2Config:
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown PoseFormerV2Config fields {unknown}; expected a subset of {sorted(known)}")
        return cls(**values)


def dct_matrix(n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(n, n) matrix D with D @ x = unnormalised DCT-II of x along its first axis (torch_dct.dct, norm=None)."""
    t = torch.arange(n, dtype=torch.float64)
    k = t[:, None]
    return (2.0 * torch.cos(math.pi * k * (2.0 * t[None, :] + 1.0) / (2.0 * n))).to(dtype)


def idct_matrix(n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(n, n) exact inverse of `dct_matrix(n)` (torch_dct.idct, norm=None): x_t = (X_0 / 2 + sum_k X_k cos(..)) / n."""
    t = torch.arange(n, dtype=torch.float64)
    k = t[None, :]
    m = torch.cos(math.pi * k * (2.0 * t[:, None] + 1.0) / (2.0 * n)) / n
    m[:, 0] *= 0.5
    return m.to(dtype)


class DropPath(nn.Module):
    """Stochastic depth per sample (timm's DropPath); identity in eval mode or with rate 0."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class FreqMlp(Mlp):
    """MLP applied in the DCT domain along the token axis: idct(mlp(dct(x)))."""

    def __init__(self, dim: int, hidden: int, tokens: int, drop: float = 0.0) -> None:
        super().__init__(dim, hidden, drop)
        # Fixed transforms, not parameters: kept out of the state dict like torch_dct's computations.
        self.register_buffer("dct", dct_matrix(tokens), persistent=False)
        self.register_buffer("idct", idct_matrix(tokens), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, tokens, C)
        x = torch.matmul(self.dct.to(x.dtype), x)
        x = super().forward(x)
        return torch.matmul(self.idct.to(x.dtype), x)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        # Default scale head_dim ** -0.5, as in the reference.
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class Block(nn.Module):
    """Pre-norm transformer block (spatial transformer)."""

    def __init__(self, dim: int, cfg: PoseFormerV2Config, drop_path: float) -> None:
        super().__init__()
        hidden = int(dim * cfg.mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.attn = Attention(dim, cfg.num_heads, cfg.qkv_bias, cfg.attn_drop_rate, cfg.drop_rate)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.mlp = Mlp(dim, hidden, cfg.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class MixedBlock(nn.Module):
    """Temporal block: joint attention over all tokens, then a plain MLP on the first `split` tokens and a
    frequency-domain MLP on the rest (the reference splits at half the token count)."""

    def __init__(self, dim: int, cfg: PoseFormerV2Config, drop_path: float) -> None:
        super().__init__()
        hidden = int(dim * cfg.mlp_ratio)
        tokens = cfg.frames_kept + cfg.coeffs_kept
        self.split = tokens // 2
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.attn = Attention(dim, cfg.num_heads, cfg.qkv_bias, cfg.attn_drop_rate, cfg.drop_rate)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.mlp1 = Mlp(dim, hidden, cfg.drop_rate)
        self.norm3 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.mlp2 = FreqMlp(dim, hidden, tokens - self.split, cfg.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        first, second = x[:, : self.split], x[:, self.split :]
        first = first + self.drop_path(self.mlp1(self.norm2(first)))
        second = second + self.drop_path(self.mlp2(self.norm3(second)))
        return torch.cat((first, second), dim=1)


class PoseFormerV2(nn.Module):
    """(B, T, J, 2) normalised 2D joints -> (B, 1, J, 3) root-relative 3D pose of the centre frame.

    Attribute names follow the released checkpoints (e.g. `Spatial_blocks`, `blocks`, `weighted_mean_`) so that
    their state dicts load without renaming.
    """

    def __init__(self, config: PoseFormerV2Config | None = None) -> None:
        super().__init__()
        cfg = config or PoseFormerV2Config()
        self.config = cfg
        dim_s, dim_t = cfg.embed_dim_ratio, cfg.embed_dim
        f, n = cfg.frames_kept, cfg.coeffs_kept

        self.Joint_embedding = nn.Linear(cfg.in_chans, dim_s)  # per joint, per kept frame
        self.Freq_embedding = nn.Linear(cfg.in_chans * cfg.num_joints, dim_t)  # per DCT coefficient
        self.Spatial_pos_embed = nn.Parameter(torch.zeros(1, cfg.num_joints, dim_s))
        self.Temporal_pos_embed = nn.Parameter(torch.zeros(1, f, dim_t))  # time tokens
        self.Temporal_pos_embed_ = nn.Parameter(torch.zeros(1, n, dim_t))  # frequency tokens
        self.pos_drop = nn.Dropout(cfg.drop_rate)

        rates = [x.item() for x in torch.linspace(0, cfg.drop_path_rate, cfg.depth)]
        self.Spatial_blocks = nn.ModuleList([Block(dim_s, cfg, r) for r in rates])
        self.blocks = nn.ModuleList([MixedBlock(dim_t, cfg, r) for r in rates])
        self.Spatial_norm = nn.LayerNorm(dim_s, eps=BLOCK_NORM_EPS)
        self.Temporal_norm = nn.LayerNorm(dim_t, eps=BLOCK_NORM_EPS)

        # Learned weighted means over tokens (Conv1d with kernel 1, as in the reference):
        # `weighted_mean` pools the n frequency tokens, `weighted_mean_` the f time tokens.
        self.weighted_mean = nn.Conv1d(n, 1, kernel_size=1)
        self.weighted_mean_ = nn.Conv1d(f, 1, kernel_size=1)
        self.head = nn.Sequential(nn.LayerNorm(dim_t * 2, eps=HEAD_NORM_EPS), nn.Linear(dim_t * 2, cfg.num_joints * 3))

        centre = (cfg.frames - 1) // 2
        self.kept_frames = slice(centre - f // 2, centre + f // 2 + 1)
        # Rows of the DCT-II over the whole window that give the n lowest coefficients.
        self.register_buffer("input_dct", dct_matrix(cfg.frames)[:n].contiguous(), persistent=False)

    def spatial_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, J, C) -> (B, f, J * dim_s): spatial transformer on the f centre frames."""
        b, _, j, c = x.shape
        f = self.config.frames_kept
        x = self.Joint_embedding(x[:, self.kept_frames].reshape(b * f, j, c))
        x = self.pos_drop(x + self.Spatial_pos_embed)
        for block in self.Spatial_blocks:
            x = block(x)
        return self.Spatial_norm(x).reshape(b, f, -1)

    def frequency_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, J, C) -> (B, n, J * C): the n lowest DCT coefficients of every joint coordinate."""
        b, t, j, c = x.shape
        return torch.matmul(self.input_dct.to(x.dtype), x.reshape(b, t, j * c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if x.ndim != 4 or x.shape[1:] != (cfg.frames, cfg.num_joints, cfg.in_chans):
            raise ValueError(
                f"PoseFormerV2 expects input (B, {cfg.frames}, {cfg.num_joints}, {cfg.in_chans}), got {tuple(x.shape)}"
            )
        b = x.shape[0]
        time_tokens = self.spatial_features(x) + self.Temporal_pos_embed
        freq_tokens = self.Freq_embedding(self.frequency_tokens(x)) + self.Temporal_pos_embed_
        tokens = torch.cat((freq_tokens, time_tokens), dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.Temporal_norm(tokens)
        n = cfg.coeffs_kept
        pooled = torch.cat((self.weighted_mean(tokens[:, :n]), self.weighted_mean_(tokens[:, n:])), dim=-1)
        # The head's output is the pose in metres: under bfloat16 autocast it would come out on a 2-4 mm grid (a joint
        # 0.9 m from the root), so the head, a small part of the cost, always computes in float32.
        with torch.autocast(x.device.type, enabled=False):
            return self.head(pooled.float()).reshape(b, 1, cfg.num_joints, 3)


# ----------------------------------------------------------------------------------------------------------------------
# Released state dicts: configuration inference and strict, shape-checked loading.

_REQUIRED_KEYS = ("Spatial_pos_embed", "Temporal_pos_embed", "Temporal_pos_embed_", "Joint_embedding.weight",
                  "Spatial_blocks.0.mlp.fc1.weight")


def config_from_state_dict(state_dict: dict[str, torch.Tensor], frames: int, num_heads: int = 8) -> PoseFormerV2Config:
    """The architecture a (prefix-free) PoseFormerV2 state dict was trained with.

    f, n, embed_dim_ratio, depth, mlp_ratio, qkv_bias and the joint count are read from tensor shapes; the window
    length T (`frames`) and the head count are not stored in the weights and must be given.
    """
    from pipeline.checkpoints import CheckpointError

    missing = [k for k in _REQUIRED_KEYS if k not in state_dict]
    if missing:
        found = ", ".join(sorted(state_dict)[:5]) or "nothing"
        raise CheckpointError(
            f"not a PoseFormerV2 state dict: expected tensors {', '.join(missing)}; found {found}, ... "
            f"({len(state_dict)} tensors)"
        )
    spatial = state_dict["Spatial_pos_embed"].shape  # (1, J, dim_s)
    joint_embedding = state_dict["Joint_embedding.weight"].shape  # (dim_s, in_chans)
    depth = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("Spatial_blocks."))
    hidden = state_dict["Spatial_blocks.0.mlp.fc1.weight"].shape[0]
    if len(spatial) != 3 or len(joint_embedding) != 2:
        raise CheckpointError(
            f"not a PoseFormerV2 state dict: Spatial_pos_embed has shape {tuple(spatial)}, expected (1, joints, dim)"
        )
    try:
        return PoseFormerV2Config(
            frames=int(frames),
            frames_kept=int(state_dict["Temporal_pos_embed"].shape[1]),
            coeffs_kept=int(state_dict["Temporal_pos_embed_"].shape[1]),
            embed_dim_ratio=int(spatial[2]),
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=hidden / int(spatial[2]),
            qkv_bias="Spatial_blocks.0.attn.qkv.bias" in state_dict,
            num_joints=int(spatial[1]),
            in_chans=int(joint_embedding[1]),
        )
    except ValueError as exc:
        raise CheckpointError(f"the weights do not fit a {frames}-frame window: {exc}") from None


def released_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights keyed as in the released checkpoints' `model_pos` (nn.DataParallel's `module.` prefix)."""
    return {f"module.{k}": v.detach().cpu() for k, v in model.state_dict().items()}


def load_state_dict_strict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy `state_dict` into `model` after checking every name and shape; one error lists all differences."""
    from pipeline.checkpoints import CheckpointError, state_dict_differences

    missing, unexpected, wrong_shapes = state_dict_differences(model, state_dict)
    mismatched = [f"{k}: expected {want}, found {found}" for k, want, found in wrong_shapes]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if items:
                parts.append(f"{len(items)} {label} ({'; '.join(items[:3])}{', ...' if len(items) > 3 else ''})")
        raise CheckpointError(f"weights do not match the {type(model).__name__} architecture: " + ", ".join(parts))
    model.load_state_dict(state_dict, strict=True)
