"""Command line for the mocap data path: `python -m pipeline.mocap {unpack,build,train,evaluate,export}`.

    python -m pipeline.mocap unpack                # archives from ../shared/data/mocap -> ~/.cache/poseformerv2-demo/mocap
    python -m pipeline.mocap build                 # render + cache train/validation/CMU sets (~3 min)
    nohup nice -n 10 python -m pipeline.mocap train --frames 27 --f 3 --n 3 --run mocap_27 --resume &
    python -m pipeline.mocap evaluate --checkpoint ~/.cache/poseformerv2-demo/train/mocap_27/best.bin
    python -m pipeline.mocap export --checkpoint .../best.bin --out weights/poseformerv2_mocap_27_3_3.safetensors
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
from pathlib import Path

import numpy as np

from pipeline.mocap.dataset import DEFAULT_DATA_DIR, DEFAULT_MOCAP_DIR, RenderConfig, build_sets

log = logging.getLogger("pipeline.mocap")

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHARED_MOCAP = PROJECT_ROOT.parent / "shared" / "data" / "mocap"
ARCHIVES = ("bandai_namco_research_motion_bvh.tar.xz", "cmu_mocap_subset.tar.xz")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.mocap", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mocap-dir", type=Path, default=DEFAULT_MOCAP_DIR, help="unpacked archives")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="cache of rendered sets")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("unpack", help="unpack the shared mocap archives into --mocap-dir")
    b = sub.add_parser("build", help="render and cache the train/validation/CMU sets")
    b.add_argument("--limit-clips", type=int, help="use only this many Bandai clips (quick experiments)")

    t = sub.add_parser("train", help="train PoseFormerV2 on the cached Bandai sets (resumable)")
    t.add_argument("--frames", type=int, default=243)
    t.add_argument("--f", dest="frames_kept", type=int, default=27)
    t.add_argument("--n", dest="coeffs_kept", type=int, default=27)
    t.add_argument("--run", required=True, help="run name: checkpoints in ~/.cache/poseformerv2-demo/train/<run>")
    t.add_argument("--resume", action="store_true")
    t.add_argument("--warm-start", type=Path,
                   help="start a new run from this training checkpoint's weights, optimizer, lr and step count "
                   "(e.g. after re-rendering the data); its best-so-far validation is forgotten")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--lr", type=float, default=4e-4)
    t.add_argument("--lr-decay", type=float, default=0.97)
    t.add_argument("--samples-per-epoch", type=int, default=50_000)
    t.add_argument("--epochs", type=int, default=200)
    t.add_argument("--max-minutes", type=float)
    t.add_argument("--checkpoint-minutes", type=float, default=5.0)
    t.add_argument("--validation-minutes", type=float, default=10.0)
    t.add_argument("--val-frames", type=int, default=4096)

    e = sub.add_parser("evaluate", help="MPJPE / P-MPJPE of a checkpoint on held-out Bandai and CMU")
    e.add_argument("--checkpoint", type=Path, required=True)
    e.add_argument("--max-frames", type=int, default=20000, help="evenly spaced centre frames per set")
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--half", action="store_true", help="round the weights to float16 first")
    e.add_argument("--json", type=Path, help="also write the metrics here")

    x = sub.add_parser("export", help="a training checkpoint -> safetensors with the config in its metadata")
    x.add_argument("--checkpoint", type=Path, required=True)
    x.add_argument("--out", type=Path, required=True)
    x.add_argument("--half", action="store_true", help="store float16 weights")
    return p


def _unpack(mocap_dir: Path) -> None:
    mocap_dir.mkdir(parents=True, exist_ok=True)
    for name in ARCHIVES:
        archive = SHARED_MOCAP / name
        if not archive.exists():
            raise SystemExit(f"{archive} not found; the shared data folder must sit next to the repository")
        log.info("unpacking %s -> %s", archive, mocap_dir)
        subprocess.run(["tar", "xJf", str(archive), "-C", str(mocap_dir)], check=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "unpack":
        _unpack(args.mocap_dir)
        return 0
    if args.command == "build":
        data = build_sets(args.mocap_dir, args.data_dir, limit_clips=args.limit_clips)
        for name, s in (("train", data.train), ("validation", data.validation), ("cmu", data.cmu)):
            log.info("%s: %d sequences, %d frames", name, len(s), s.num_frames)
        return 0
    if args.command == "train":
        return _train(args)
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "export":
        return _export(args)
    return 2


def _train(args: argparse.Namespace) -> int:
    import torch

    from pipeline.poseformerv2 import PoseFormerV2Config
    from pipeline.training.train import LAST_CHECKPOINT, TrainConfig, default_run_dir, load_checkpoint, train

    torch.set_num_threads(args.threads)
    run_dir = default_run_dir(args.run)
    if args.warm_start is not None:
        if (run_dir / LAST_CHECKPOINT).exists():
            raise SystemExit(f"{run_dir} already has {LAST_CHECKPOINT}; use --resume, or another --run name")
        chk = load_checkpoint(args.warm_start)
        chk["progress"]["best"] = float("inf")  # validation data may differ: best.bin restarts with this run
        run_dir.mkdir(parents=True, exist_ok=True)
        torch.save(chk, run_dir / LAST_CHECKPOINT)
        log.info("warm start from %s (step %d)", args.warm_start, chk["progress"]["step"])
    data = build_sets(args.mocap_dir, args.data_dir, with_cmu=False)
    model_config = PoseFormerV2Config(frames=args.frames, frames_kept=args.frames_kept, coeffs_kept=args.coeffs_kept,
                                      drop_path_rate=0.1)
    config = TrainConfig(run_dir=run_dir, batch_size=args.batch_size, threads=args.threads,
                         lr=args.lr, lr_decay=args.lr_decay, epochs=args.epochs,
                         samples_per_epoch=args.samples_per_epoch, max_minutes=args.max_minutes,
                         checkpoint_minutes=args.checkpoint_minutes,
                         validation_minutes=args.validation_minutes, validation_frames=args.val_frames,
                         resume=args.resume or args.warm_start is not None)
    result = train(model_config, data.train, data.validation, config)
    log.info("stopped at step %d, epoch %d; validation %s; checkpoints in %s", result.step, result.epoch,
             json.dumps({k: round(v * 1000, 1) for k, v in result.validation.items()}), result.run_dir)
    return 0


def subject_or_content(group: str) -> str:
    """Breakdown key: CMU subject ("01_05" -> "cmu_01", "resources_131_02" -> "cmu_131"), Bandai content
    ("dataset-2_walk_active" -> "walk")."""
    if group.startswith("dataset-"):
        return group.split("_")[1]
    return "cmu_" + (group.split("_")[1] if group.startswith("resources_") else group.split("_")[0])


def evaluate_model(model, frames: int, sets: dict, max_frames: int, batch_size: int = 256) -> dict[str, dict]:
    """MPJPE / P-MPJPE (mm) with flip test on evenly spaced centre frames of every SequenceSet in `sets`, overall
    (frame-weighted) and per CMU subject / Bandai content."""
    from pipeline.skeleton import H36M
    from pipeline.training.metrics import procrustes_align
    from pipeline.training.train import predict_centre
    from pipeline.training.windows import WindowSampler

    results = {}
    for name, sequences in sets.items():
        sampler = WindowSampler(sequences, frames, flip=False, flip_permutation=H36M.flip_permutation)
        ids = sampler.evenly_spaced_frames(max_frames)
        preds, targets = [], []
        for i in range(0, len(ids), batch_size):
            batch = sampler.gather(ids[i:i + batch_size])
            preds.append(predict_centre(model, batch.inputs_2d, True, H36M.flip_permutation))
            targets.append(batch.targets_3d)
        pred, target = np.concatenate(preds).astype(np.float64), np.concatenate(targets).astype(np.float64)
        err = np.linalg.norm(pred - target, axis=-1).mean(axis=-1) * 1000
        p_err = np.linalg.norm(procrustes_align(pred, target) - target, axis=-1).mean(axis=-1) * 1000
        ends = np.cumsum([len(x) for x in sequences.inputs_2d])
        keys = np.array([subject_or_content(sequences.groups[k]) for k in np.searchsorted(ends, ids, side="right")])
        results[name] = {"mpjpe_mm": round(float(err.mean()), 1), "p_mpjpe_mm": round(float(p_err.mean()), 1),
                         "frames": int(len(ids)), "sequences": len(sequences),
                         "by_group": {k: {"mpjpe_mm": round(float(err[keys == k].mean()), 1),
                                          "p_mpjpe_mm": round(float(p_err[keys == k].mean()), 1),
                                          "frames": int((keys == k).sum())} for k in sorted(set(keys))}}
        log.info("%s: MPJPE %.1f mm, P-MPJPE %.1f mm (%d frames of %d sequences)", name, err.mean(), p_err.mean(),
                 len(ids), len(sequences))
    return results


def load_training_checkpoint(path: Path, half: bool = False):
    """(model in eval mode, its PoseFormerV2Config) from a training checkpoint written by pipeline.training."""
    import torch

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


def _evaluate(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    model, config, chk = load_training_checkpoint(args.checkpoint, half=args.half)
    data = build_sets(args.mocap_dir, args.data_dir)
    results = evaluate_model(model, config.frames, {"bandai_heldout": data.validation, "cmu": data.cmu},
                             args.max_frames)
    results["checkpoint"] = {"path": str(args.checkpoint), "samples_seen": chk["progress"]["samples_seen"],
                             "epoch": chk["epoch"], "model_config": chk["model_config"], "half": args.half}
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


TRAINING_NOTE = ("PoseFormerV2 trained from scratch on Bandai-Namco-Research-Motiondataset 1+2 (CC BY-NC 4.0) rendered "
                 "through random virtual cameras with detector-like COCO-17 noise and the runtime COCO-to-H36M remap "
                 "(pipeline.mocap); see weights/MODEL_CARD.md")
LICENCE_NOTE = "CC BY-NC 4.0 (non-commercial use only), inherited from the Bandai-Namco-Research-Motiondataset"


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


def _export(args: argparse.Namespace) -> int:
    export_safetensors(args.checkpoint, args.out, args.half)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
