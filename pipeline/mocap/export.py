"""Moving weights between training checkpoints and shippable lifter files.

`export_safetensors` turns a training checkpoint into the float16 safetensors file the demo loads;
`init_training_run` goes the other way: it seeds a new training run with the weights of any lifter file (for example
the shipped 27/3/3 safetensors), so a longer-window model starts from what a shorter one learnt. `average_checkpoints`
takes the element-wise mean of a run's saved checkpoints (weight averaging: single checkpoints of one fine-tuning run
swung by 3-6 mm on the real recording; version 3 of the default lifter is the mean of all nine of its run's).

A 27/3/3 and a 243/3/3 PoseFormerV2 have exactly the same tensors (the DCT keeps n coefficients and the f centre
frames whatever T is), so the weights carry over unchanged. A deeper model (`depth` above the file's) starts as the
same function (in eval mode): the file's blocks come first, and each added block's residual branches end in zeroed
layers (`grow_depth`), so it passes its input through until training gives it something to add. In training the
stochastic-depth rates are spread over the new depth (linspace(0, rate, depth)), so the file's own blocks are dropped
a little less often than in their first run (depth 4 -> 6 at rate 0.1: 0.033 / 0.067 / 0.1 -> 0.02 / 0.04 / 0.06).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

TRAINING_NOTE = ("PoseFormerV2 trained on Bandai-Namco-Research-Motiondataset 1+2 (CC BY-NC 4.0) rendered "
                 "through random virtual cameras with detector-like COCO-17 noise and the runtime COCO-to-H36M remap "
                 "(pipeline.mocap); see weights/MODEL_CARD.md")
LICENCE_NOTE = "CC BY-NC 4.0 (non-commercial use only), inherited from the Bandai-Namco-Research-Motiondataset"


def load_training_checkpoint(path: Path, half: bool = False):
    """(model in eval mode, its PoseFormerV2Config, the checkpoint dict) from a training checkpoint written by
    pipeline.training; `half` rounds the weights to float16 first (what the shipped file stores)."""
    from pipeline.poseformerv2 import PoseFormerV2, PoseFormerV2Config
    from pipeline.training.train import load_checkpoint, strip_module_prefix

    chk = load_checkpoint(path)
    config = PoseFormerV2Config.from_dict(chk["model_config"])
    model = PoseFormerV2(config)
    state = strip_module_prefix(chk["model_pos"])
    if half:
        state = {k: v.half().float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state)
    return model.eval(), config, chk


def export_safetensors(checkpoint: Path, out: Path, half: bool) -> Path:
    """A training checkpoint -> safetensors that `pipeline.lifting.load_lifter` reads (config in the metadata)."""
    from pipeline.checkpoints import save_safetensors
    from pipeline.lifting import SAFETENSORS_FORMAT

    model, config, chk = load_training_checkpoint(checkpoint)
    dtype = "float16" if half else "float32"
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in model.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(out, state, {
        "format": SAFETENSORS_FORMAT, "config": config.to_dict(), "dtype": dtype, "training": TRAINING_NOTE,
        "licence": LICENCE_NOTE, "samples_seen": chk["progress"]["samples_seen"],
        "validation": {k: round(v * 1000, 1) for k, v in chk.get("validation", {}).items()},
    })
    log.info("wrote %s (%s, %.1f MB)", out, dtype, out.stat().st_size / 1e6)
    return out


def average_checkpoints(checkpoints: list[Path], out: Path) -> Path:
    """Write a training checkpoint whose weights are the element-wise mean of `checkpoints` (same configuration and
    tensors); everything else (optimizer, progress) is the last one's. Export it like any other checkpoint."""
    import torch

    from pipeline.training.train import load_checkpoint

    if len(checkpoints) < 2:
        raise ValueError("averaging needs two checkpoints or more")
    loaded = [load_checkpoint(path) for path in checkpoints]
    base = loaded[-1]  # its optimizer state and progress are kept
    for path, chk in zip(checkpoints, loaded, strict=True):
        if chk["model_config"] != base["model_config"] or chk["model_pos"].keys() != base["model_pos"].keys() or \
                any(v.shape != base["model_pos"][k].shape for k, v in chk["model_pos"].items()):
            raise ValueError(f"{path} is not a checkpoint of the same model as {checkpoints[-1]}")
    base["model_pos"] = {k: torch.stack([c["model_pos"][k].float() for c in loaded]).mean(0).to(v.dtype)
                         if v.is_floating_point() else v for k, v in base["model_pos"].items()}
    base["averaged_from"] = [str(path) for path in checkpoints]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(base, tmp)
    tmp.replace(out)
    log.info("wrote %s: the mean of %d checkpoints", out, len(checkpoints))
    return out


def init_training_run(weights: Path, model_config, run_dir: Path, lr: float, seed: int = 1234,
                      weight_decay: float = 0.1, network: str = "first") -> Path:
    """Write `run_dir`/last.bin: step 0 of a training run whose model (built from `model_config`) starts from the
    weights of any lifter file `load_lifter` reads, with a fresh AdamW at `lr`. Resuming that run trains it.

    `network` picks which of a cross-flip ensemble's two networks to start from: "first" (the one on the 2D as it
    is; a single-network file has only it) or "mirror" (the flip test's mirrored pass).

    A `model_config.depth` above the file's grows the model (`grow_depth`): the same function, more capacity.
    Raises ValueError when the file's tensors do not fit `model_config` (another f, n or width; a shallower depth)."""
    import torch

    from pipeline.lifting import CONFIG_ENTRY, load_lifter
    from pipeline.poseformerv2 import PoseFormerV2
    from pipeline.training.train import LAST_CHECKPOINT, TrainConfig, make_optimizer, plain_config, save_checkpoint

    if network not in ("first", "mirror"):
        raise ValueError(f"network must be 'first' or 'mirror', not {network!r}")
    loaded = load_lifter(weights, device="cpu", frames=model_config.frames)
    if network == "mirror" and loaded.mirror_model is None:
        raise ValueError(f"{weights} holds one network, no mirror network to start from; leave out --init-network "
                         "mirror")
    if loaded.mirror_model is not None:
        log.info("%s holds two networks (a cross-flip ensemble); the run starts from the %s one", Path(weights).name,
                 network)
    source = loaded.mirror_model if network == "mirror" else loaded.model
    torch.manual_seed(seed)
    model = PoseFormerV2(model_config)
    source_depth = source.config.depth
    if model_config.depth < source_depth:
        raise ValueError(f"{weights} does not fit a depth-{model_config.depth} PoseFormerV2: it has "
                         f"{source_depth} blocks per stack; --depth must be {source_depth} or more")
    added = set(_added_block_keys(model.state_dict(), source_depth))
    mismatched = [k for k, v in model.state_dict().items() if k not in added
                  and (k not in source.state_dict() or source.state_dict()[k].shape != v.shape)]
    extra = sorted(set(source.state_dict()) - set(model.state_dict()))
    if mismatched or extra:
        raise ValueError(f"{weights} does not fit PoseFormerV2 f={model_config.frames_kept} "
                         f"n={model_config.coeffs_kept} embed_dim_ratio={model_config.embed_dim_ratio}: tensors "
                         f"{(mismatched or extra)[:3]} differ; pick matching --f/--n")
    if added:
        grow_depth(model, source_depth)
        log.info("grew the model from depth %d to %d: %d added tensors, the added blocks pass their input through",
                 source_depth, model_config.depth, len(added))
    loaded = model.load_state_dict({k: v.float() for k, v in source.state_dict().items()}, strict=False)
    assert set(loaded.missing_keys) == added and not loaded.unexpected_keys
    optimizer = make_optimizer(model, TrainConfig(run_dir=run_dir, lr=lr, weight_decay=weight_decay))
    config = plain_config(model_config)
    path = Path(run_dir) / LAST_CHECKPOINT
    save_checkpoint(path, model, optimizer, epoch=0, lr=lr, rng=np.random.RandomState(seed), extra={
        "torch_rng_state": torch.get_rng_state(), "model_config": config, CONFIG_ENTRY: config,
        "progress": {"step": 0, "samples_seen": 0, "samples_in_epoch": 0, "best": float("inf")},
        "validation": {}, "initial_weights": str(weights) + (" (mirror network)" if network == "mirror" else "")})
    log.info("initialised %s from the weights of %s", path, weights)
    return path


def _added_block_keys(state: dict, depth: int) -> list[str]:
    """Keys of the blocks at index `depth` and above in both stacks (`Spatial_blocks.i.*`, `blocks.i.*`)."""
    return [k for k in state if k.split(".")[0] in ("Spatial_blocks", "blocks") and int(k.split(".")[1]) >= depth]


def grow_depth(model, depth: int) -> None:
    """Make the blocks at index `depth` and above of both stacks identities: zero the last layer of every residual
    branch (attention projection, MLP output; weights and biases), so each block returns its input unchanged and the
    model computes what its first `depth` blocks do. Their other layers keep their random initialisation, so the
    zeroed layers get non-zero gradients and the blocks learn. The same function in eval mode (stochastic depth
    draws in training). In place."""
    import torch

    with torch.no_grad():
        for stack in (model.Spatial_blocks, model.blocks):
            for block in stack[depth:]:
                mlps = [block.mlp] if hasattr(block, "mlp") else [block.mlp1, block.mlp2]
                for layer in (block.attn.proj, *(m.fc2 for m in mlps)):
                    layer.weight.zero_()
                    layer.bias.zero_()


def load_any_lifter(path: Path, half: bool = False):
    """(model in eval mode, facts about it, the flip test's mirror network or None) from a training checkpoint (with
    its progress) or any lifter file `load_lifter` reads (the shipped safetensors, released .bin files); the mirror
    network is that of a cross-flip ensemble file (`export_flip_ensemble`)."""
    from pipeline.checkpoints import read_checkpoint
    from pipeline.lifting import load_lifter

    if Path(path).suffix != ".safetensors" and "model_config" in read_checkpoint(path):
        model, _, chk = load_training_checkpoint(path, half=half)
        return model, {"samples_seen": chk["progress"]["samples_seen"], "epoch": chk["epoch"],
                       "model_config": chk["model_config"]}, None
    lifter = load_lifter(path, device="cpu")
    networks = [net.float().eval() for net in (lifter.model, lifter.mirror_model) if net is not None]
    if half:
        for net in networks:
            net.load_state_dict({k: v.half().float() if v.is_floating_point() else v
                                 for k, v in net.state_dict().items()})
    facts = {"model_config": lifter.model.config.to_dict(), "flip_ensemble": lifter.mirror_model is not None}
    return lifter.model, facts, lifter.mirror_model


def export_flip_ensemble(checkpoint: Path, mirror: Path, out: Path) -> Path:
    """One float16 safetensors file holding the lifter of `checkpoint` and, for the flip test's mirrored pass, the
    lifter of `mirror` (any two files `load_lifter` reads, of the same configuration): a cross-flip ensemble that
    costs what one network's flip test costs. Each file's own metadata (safetensors files) is kept under "first" and
    "mirror"; the training and licence notes at the top are the first file's."""
    from pipeline.checkpoints import is_safetensors, read_safetensors_metadata, save_safetensors
    from pipeline.lifting import MIRROR_ENTRY, MIRROR_PREFIX, SAFETENSORS_FORMAT, load_lifter

    first, second = load_lifter(checkpoint, device="cpu"), load_lifter(mirror, device="cpu")
    if first.mirror_model is not None or second.mirror_model is not None:
        raise ValueError("an ensemble's two files must each hold one network")
    # What makes two networks interchangeable: the shapes and the output's meaning (not the training-only rates).
    mine = {**first.config.to_dict(), "skeleton": first.skeleton, "units": first.units}
    theirs = {**second.config.to_dict(), "skeleton": second.skeleton, "units": second.units}
    differ = [k for k in mine if k not in ("drop_rate", "attn_drop_rate", "drop_path_rate") and mine[k] != theirs[k]]
    if differ:
        raise ValueError(f"{Path(checkpoint).name} and {Path(mirror).name} are not the same configuration: "
                         + ", ".join(f"{k} {mine[k]} against {theirs[k]}" for k in differ))

    def metadata(path: Path) -> dict:
        """The file's own metadata, less what the ensemble's header says for itself."""
        meta = read_safetensors_metadata(path) if is_safetensors(path) else {}
        return {"file": Path(path).name, **{k: v for k, v in meta.items() if k not in ("format", "config", "dtype")}}

    state = {prefix + k: v.half() if v.is_floating_point() else v
             for prefix, net in (("", first.model), (MIRROR_PREFIX, second.model)) for k, v in net.state_dict().items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    notes = {k: v for k, v in metadata(checkpoint).items() if k in ("training", "licence")}
    save_safetensors(out, state, {
        "format": SAFETENSORS_FORMAT, "config": first.config.to_dict(), "skeleton": first.skeleton,
        "units": first.units, "dtype": "float16", **notes,
        MIRROR_ENTRY: MIRROR_PREFIX, "first": metadata(checkpoint), "mirror": metadata(mirror),
    })
    log.info("wrote %s: %s, and %s for the flip test's mirrored pass (float16, %.1f MB)", out, Path(checkpoint).name,
             Path(mirror).name, out.stat().st_size / 1e6)
    return out
