"""Command line for the mocap data path: `python -m pipeline.mocap {unpack,pack,build,train,evaluate,average,export,
                                                                   ensemble}`.

    python -m pipeline.mocap unpack     # archives from ../shared/data/mocap -> ~/.cache/poseformerv2-demo/mocap
    python -m pipeline.mocap pack --out bandai.pack     # the Bandai clips in 26 MB; `unpack --pack` writes them back
    python -m pipeline.mocap build      # render + cache train/validation/CMU sets
    nohup nice -n 10 python -m pipeline.mocap train --frames 243 --f 3 --n 3 --run mocap_243 --threads 1 \\
        --init-weights weights/poseformerv2_mocap_27_3_3.safetensors &   # later: the same with --resume
    python -m pipeline.mocap evaluate --checkpoint ~/.cache/poseformerv2-demo/train/mocap_243/best.bin --half
    python -m pipeline.mocap export --checkpoint .../best.bin --half \\
        --out weights/poseformerv2_mocap_243_3_3.safetensors
    python -m pipeline.mocap ensemble --checkpoint first.safetensors --mirror second.safetensors --out both.safetensors
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import subprocess
from pathlib import Path

from pipeline.mocap.dataset import (
    DEFAULT_DATA_DIR,
    DEFAULT_MOCAP_DIR,
    RenderConfig,
    build_sets,
    fresh_render_seed,
    load_set,
    render_training_set,
)

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
    u = sub.add_parser("unpack", help="unpack the shared mocap archives into --mocap-dir")
    u.add_argument("--pack", type=Path, help="instead, write the Bandai clips of a pack (see pack) into --mocap-dir")
    k = sub.add_parser("pack", help="the unpacked Bandai clips in one 26 MB file (to carry to a machine without "
                       "../shared, e.g. a lent GPU)")
    k.add_argument("--out", type=Path, required=True)
    b = sub.add_parser("build", help="render and cache the train/validation/CMU sets")
    b.add_argument("--limit-clips", type=int, help="use only this many Bandai clips (quick experiments)")
    b.add_argument("--render-workers", type=int, default=1, help="processes that render (the same sets, faster)")
    _add_mixing_flags(b, "share of training renderings whose {} move as in another training clip (e.g. 0.5)")

    t = sub.add_parser("train", help="train PoseFormerV2 on the cached Bandai sets (resumable)")
    t.add_argument("--frames", type=int, default=243)
    t.add_argument("--f", dest="frames_kept", type=int, default=27)
    t.add_argument("--n", dest="coeffs_kept", type=int, default=27)
    t.add_argument("--depth", type=int, default=4,
                   help="spatial and temporal blocks (the released models: 4); with --init-weights of a shallower "
                   "file the model grows: the file's blocks first, the added ones start as identities")
    t.add_argument("--run", required=True, help="run name: checkpoints in ~/.cache/poseformerv2-demo/train/<run>")
    t.add_argument("--resume", action="store_true")
    t.add_argument("--warm-start", type=Path,
                   help="start a new run from this training checkpoint's weights, optimizer, lr and step count "
                   "(e.g. after re-rendering the data); its best-so-far validation is forgotten")
    t.add_argument("--init-weights", type=Path,
                   help="start a new run from the weights of any lifter file load_lifter reads (e.g. the shipped "
                   "27/3/3 safetensors for a 243/3/3 run: same tensors), with a fresh optimizer at --lr")
    t.add_argument("--init-network", choices=("first", "mirror"), default="first",
                   help="which network of a cross-flip ensemble --init-weights starts from: the first (on the 2D as "
                   "it is) or the mirror network (the flip test's mirrored pass)")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then the CPU), cpu, cuda or mps")
    t.add_argument("--compile", action="store_true", help="torch.compile the model (about 10 %% faster on a CPU)")
    t.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: bfloat16 autocast for the training passes (faster on GPUs and CPUs with bfloat16)")
    t.add_argument("--lr", type=float, default=4e-4)
    t.add_argument("--lr-decay", type=float, default=0.97)
    t.add_argument("--samples-per-epoch", type=int, default=50_000)
    t.add_argument("--epochs", type=int, default=200)
    t.add_argument("--max-minutes", type=float)
    t.add_argument("--checkpoint-minutes", type=float, default=5.0)
    t.add_argument("--render-workers", type=int, default=1,
                   help="processes that render the training clips (the same renderings, faster; e.g. on a GPU "
                   "machine's idle cores)")
    t.add_argument("--keep-checkpoints", action="store_true",
                   help="also keep every checkpoint as step_<step>.bin in the run folder, for `average`")
    t.add_argument("--validation-minutes", type=float, default=10.0)
    t.add_argument("--val-frames", type=int, default=4096)
    t.add_argument("--short-clips", type=float, default=0.0,
                   help="share of training windows that see only a random stretch of 8 to 2T frames, edge-padded "
                   "beyond it, as the demo pads a clip shorter than the window (e.g. 0.5 for a 243-frame model)")
    t.add_argument("--fresh-renders", type=int, metavar="SAMPLES",
                   help="render the training clips anew every SAMPLES samples (the first stretch on the --render-seed "
                   "set, then seeds of their own, 1,000,000 + 1,000 x the render seed + 1, 2, ...; in memory, about "
                   "2 minutes each), so that the network meets each rendering about once instead of learning the "
                   "cached one by heart (e.g. 1000000)")
    _add_mixing_flags(t, "train on the set rendered with this share of renderings whose {} move as in another "
                      "training clip (see build)")

    e = sub.add_parser("evaluate", help="MPJPE / P-MPJPE of a checkpoint on held-out Bandai and CMU")
    e.add_argument("--checkpoint", type=Path, required=True, help="a training checkpoint or any lifter file")
    e.add_argument("--max-frames", type=int, default=20000, help="evenly spaced centre frames per set")
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--half", action="store_true", help="round the weights to float16 first")
    e.add_argument("--set", dest="extra_sets", action="append", default=[], metavar="NAME=FILE.npz",
                   help="also evaluate on this cached set (e.g. one rendered with older settings); repeatable")
    e.add_argument("--only-extra", action="store_true", help="skip the default held-out Bandai and CMU sets")
    e.add_argument("--json", type=Path, help="also write the metrics here")

    a = sub.add_parser("average", help="the element-wise mean of several training checkpoints of one model")
    a.add_argument("--checkpoint", dest="checkpoints", type=Path, action="extend", nargs="+", required=True,
                   help="training checkpoints (several after one flag, or the flag repeated)")
    a.add_argument("--out", type=Path, required=True, help="the averaged training checkpoint (export it after)")

    x = sub.add_parser("export", help="a training checkpoint -> safetensors with the config in its metadata")
    x.add_argument("--checkpoint", type=Path, required=True)
    x.add_argument("--out", type=Path, required=True)
    x.add_argument("--half", action="store_true", help="store float16 weights")

    n = sub.add_parser("ensemble", help="two lifter files -> one float16 safetensors whose flip test runs the second "
                                        "network on the mirrored input (a cross-flip ensemble, no extra compute)")
    n.add_argument("--checkpoint", type=Path, required=True, help="the network for the input as it is")
    n.add_argument("--mirror", type=Path, required=True, help="the network for the mirrored input")
    n.add_argument("--out", type=Path, required=True)
    return p


def _unpack(mocap_dir: Path) -> None:
    mocap_dir.mkdir(parents=True, exist_ok=True)
    for name in ARCHIVES:
        archive = SHARED_MOCAP / name
        if not archive.exists():
            raise SystemExit(f"{archive} not found; the shared data folder must sit next to the repository")
        log.info("unpacking %s -> %s", archive, mocap_dir)
        subprocess.run(["tar", "xJf", str(archive), "-C", str(mocap_dir)], check=True)


def _add_mixing_flags(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument("--arm-mixing", type=float, default=0.0, metavar="SHARE", help=text.format("arms"))
    p.add_argument("--upper-body-mixing", type=float, default=0.0, metavar="SHARE",
                   help=text.format("trunk, head and arms") + "; drawn apart from --arm-mixing, the two add up to "
                   "at most 1")
    p.add_argument("--pose-perturbation", type=float, default=0.0, metavar="SHARE",
                   help="share of training renderings whose spine, neck, shoulders and hips are turned smoothly away "
                   "from the recorded angles (e.g. 0.5); drawn apart from the mixing")
    p.add_argument("--glitches", type=float, default=0.0, metavar="SHARE",
                   help="share of training renderings whose detections glitch as often as a real detector's (wrists "
                   "and elbows put far off for a few frames; e.g. 0.75)")
    p.add_argument("--render-seed", type=int, default=0, metavar="N",
                   help="render the training clips anew with this seed (cameras, bodies, speeds, noise; a cache file "
                   "of its own); the held-out sets stay as they are")


def _render_config(args: argparse.Namespace) -> RenderConfig:
    if args.render_workers < 1:
        raise SystemExit(f"error: --render-workers is a number of processes, 1 or more, not {args.render_workers}")
    try:
        return RenderConfig(arm_mixing=args.arm_mixing, upper_body_mixing=args.upper_body_mixing,
                            pose_perturbation=args.pose_perturbation, glitches=args.glitches, seed=args.render_seed)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "unpack" and args.pack is not None:
        from pipeline.mocap.pack import unpack_pack

        if not args.pack.is_file():
            raise SystemExit(f"error: {args.pack} not found; make it with python -m pipeline.mocap pack --out FILE")
        log.info("wrote %d Bandai clips from %s into %s", unpack_pack(args.pack, args.mocap_dir), args.pack,
                 args.mocap_dir)
    elif args.command == "unpack":
        _unpack(args.mocap_dir)
    elif args.command == "pack":
        from pipeline.mocap.pack import pack_bandai

        try:
            pack_bandai(args.mocap_dir, args.out)
        except FileNotFoundError as exc:
            raise SystemExit(f"error: {exc}") from None
    elif args.command == "build":
        data = build_sets(args.mocap_dir, args.data_dir, _render_config(args),
                          limit_clips=args.limit_clips, workers=args.render_workers)
        for name, s in (("train", data.train), ("validation", data.validation), ("cmu", data.cmu)):
            log.info("%s: %d sequences, %d frames", name, len(s), s.num_frames)
    elif args.command == "train":
        _train(args)
    elif args.command == "evaluate":
        _evaluate(args)
    elif args.command == "average":
        from pipeline.mocap.export import average_checkpoints

        average_checkpoints(args.checkpoints, args.out)
    elif args.command == "export":
        from pipeline.mocap.export import export_safetensors

        export_safetensors(args.checkpoint, args.out, args.half)
    elif args.command == "ensemble":
        from pipeline.mocap.export import export_flip_ensemble

        export_flip_ensemble(args.checkpoint, args.mirror, args.out)
    return 0


def _train(args: argparse.Namespace) -> None:
    import torch

    from pipeline.mocap.export import init_training_run
    from pipeline.poseformerv2 import PoseFormerV2Config
    from pipeline.training.train import (
        LAST_CHECKPOINT,
        TrainConfig,
        default_run_dir,
        load_checkpoint,
        plain_config,
        train,
        train_on_fresh_sets,
    )

    if args.fresh_renders is not None and args.fresh_renders < 1:
        raise SystemExit(f"error: --fresh-renders is a number of samples, 1 or more, not {args.fresh_renders}")
    render_config = _render_config(args)  # bad flags end here, before the run folder is touched
    torch.set_num_threads(args.threads)
    run_dir = default_run_dir(args.run)
    model_config = PoseFormerV2Config(frames=args.frames, frames_kept=args.frames_kept, coeffs_kept=args.coeffs_kept,
                                      depth=args.depth, drop_path_rate=0.1)
    if args.warm_start is not None and args.init_weights is not None:
        raise SystemExit("give either --warm-start (a training checkpoint) or --init-weights (a lifter file)")
    if args.init_network != "first" and args.init_weights is None:
        raise SystemExit("error: --init-network picks a network of the --init-weights file; give --init-weights too")
    if (args.warm_start or args.init_weights) and (run_dir / LAST_CHECKPOINT).exists():
        raise SystemExit(f"{run_dir} already has {LAST_CHECKPOINT}; use --resume, or another --run name")
    if args.warm_start is not None:
        chk = load_checkpoint(args.warm_start)
        chk["progress"]["best"] = float("inf")  # validation data may differ: best.bin restarts with this run
        run_dir.mkdir(parents=True, exist_ok=True)
        torch.save(chk, run_dir / LAST_CHECKPOINT)
        log.info("warm start from %s (step %d)", args.warm_start, chk["progress"]["step"])
    if args.init_weights is not None:
        try:
            init_training_run(args.init_weights, model_config, run_dir, args.lr, network=args.init_network)
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from None
    if args.resume and (run_dir / LAST_CHECKPOINT).exists():
        _check_resumed_architecture(run_dir / LAST_CHECKPOINT, plain_config(model_config))
    data = build_sets(args.mocap_dir, args.data_dir, render_config, with_cmu=False, workers=args.render_workers)
    config = TrainConfig(run_dir=run_dir, batch_size=args.batch_size, threads=args.threads,
                         lr=args.lr, lr_decay=args.lr_decay, epochs=args.epochs,
                         samples_per_epoch=args.samples_per_epoch, max_minutes=args.max_minutes,
                         checkpoint_minutes=args.checkpoint_minutes, keep_checkpoints=args.keep_checkpoints,
                         validation_minutes=args.validation_minutes, validation_frames=args.val_frames,
                         short_clips=args.short_clips, device=args.device, compile=args.compile,
                         precision=args.precision,
                         resume=args.resume or args.warm_start is not None or args.init_weights is not None)
    if args.fresh_renders is None:
        result = train(model_config, data.train, data.validation, config)
    else:
        cached, validation = [data.train], data.validation
        del data  # the cached set is dropped once stretch 0 is over

        def training_set(k: int):  # the k-th rendering of the training clips; the 0th is the cached one
            if k == 0 and cached:
                return cached[0]
            cached.clear()
            return render_training_set(args.mocap_dir, dataclasses.replace(
                render_config, seed=fresh_render_seed(render_config.seed, k)), workers=args.render_workers)

        result = train_on_fresh_sets(model_config, training_set, validation, config, args.fresh_renders)
    log.info("stopped at step %d, epoch %d; validation %s; checkpoints in %s", result.step, result.epoch,
             json.dumps({k: round(v * 1000, 1) for k, v in result.validation.items()}), result.run_dir)


def _check_resumed_architecture(path: Path, wanted: dict) -> None:
    """Refuse, before the data is loaded, to resume a run whose model the flags describe differently."""
    from pipeline.training.train import load_checkpoint

    saved = load_checkpoint(path).get("model_config") or {}
    flags = {"frames": "--frames", "frames_kept": "--f", "coeffs_kept": "--n", "depth": "--depth"}
    differ = [f"{flags.get(k, k)} {saved[k]}" for k in saved if k in wanted and saved[k] != wanted[k]]
    if differ:
        raise SystemExit(f"error: {path} was trained with {', '.join(differ)}; resume it with the same flags")


def _evaluate(args: argparse.Namespace) -> None:
    import torch

    from pipeline.mocap.evaluation import evaluate_model
    from pipeline.mocap.export import load_any_lifter

    torch.set_num_threads(args.threads)
    model, info, mirror = load_any_lifter(args.checkpoint, half=args.half)
    sets = {}
    if not args.only_extra:
        data = build_sets(args.mocap_dir, args.data_dir, with_train=False)
        sets = {"bandai_heldout": data.validation, "cmu": data.cmu}
    for spec in args.extra_sets:
        name, sep, path = spec.partition("=")
        if not sep or not Path(path).is_file():
            raise SystemExit(f"--set wants NAME=FILE.npz with an existing file, got {spec!r}")
        sets[name] = load_set(Path(path))
    results = evaluate_model(model, model.config.frames, sets, args.max_frames, mirror_model=mirror)
    results["checkpoint"] = {"path": str(args.checkpoint), "half": args.half, **info}
    text = json.dumps(results, indent=2)
    print(text)  # the command's output (this is the CLI entry point)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
