#!/usr/bin/env bash
# Train one network of the default lifter on a lent GPU machine (the workplace's `device` tool), in one call.
#
# Why a script: a session is lent a GPU for about 15 minutes at most, and a call carries at most 64 MiB of the
# working tree, of which the shipped weights file alone is 57 MB and the Bandai archive 87 MB. So the data goes as a
# pack (python -m pipeline.mocap pack: 26 MB), one network of the ensemble goes as float16 (29 MB), the shipped file
# stays behind for the call, and the trained network comes back in 15 MB parts (a file back is at most 16 MB).
#
#   bash benchmarks/device_train.sh prepare mirror     # here: .devdata/ (ignored) and the shipped file untracked
#   device run: command "bash benchmarks/device_train.sh train mirror", carry [".devdata"], timeout_s 590
#   bash benchmarks/device_train.sh collect <files_at> mirror   # here: parts joined, checked, and `restore` run
#   bash benchmarks/device_train.sh restore            # here: the shipped file tracked again (collect runs it too)
#
# `train` (on the GPU machine, its python3 has PyTorch): checks the CUDA paths (the GPU tests of
# tests/test_training.py, and a lift on the GPU against the CPU's), renders the training clips (another seed, on
# every core: --render-workers), trains
# the network for TRAIN_MINUTES (default 4) from its shipped weights, keeps a checkpoint every 30 s, and writes the
# mean of those after the first, float16, to $OUT in parts, with the training log. Settings by environment: BATCH
# (256), LR (1.2e-4: the CPU runs' 6e-5 at batch 64, scaled by the square root of the batch ratio), SEED (21).
# Never run `git commit` between prepare and restore: the index then lacks the shipped weights file.
set -euo pipefail
cd "$(dirname "$0")/.."
SHIPPED=weights/poseformerv2_mocap_27_3_3.safetensors
DEVDATA=.devdata
PY=${PY:-python3}

recipe() {  # the flags each network was trained with (weights/MODEL_CARD.md)
    case "$1" in
        first) echo "--arm-mixing 0.25 --upper-body-mixing 0.5" ;;
        mirror) echo "--arm-mixing 0.25 --upper-body-mixing 0.5 --pose-perturbation 0.5" ;;
        *) echo "error: the network is 'first' or 'mirror', not '$1'" >&2; exit 2 ;;
    esac
}

case "${1:-}" in
prepare)
    net=${2:?"usage: $0 prepare first|mirror"}
    recipe "$net" > /dev/null
    PY=${PY_HERE:-.venv/bin/python}
    mkdir -p "$DEVDATA"
    mkdir -p .git/info
    grep -qxsF "/$DEVDATA/" .git/info/exclude || echo "/$DEVDATA/" >> .git/info/exclude
    [ -f "$DEVDATA/bandai.pack" ] || "$PY" -m pipeline.mocap pack --out "$DEVDATA/bandai.pack"
    rm -f "$DEVDATA"/first.safetensors "$DEVDATA"/mirror.safetensors
    "$PY" - "$SHIPPED" "$net" "$DEVDATA/$net.safetensors" <<'EOF'
import sys, tempfile
from pathlib import Path
from pipeline.mocap.export import export_safetensors, init_training_run
from pipeline.poseformerv2 import PoseFormerV2Config
weights, network, out = sys.argv[1:]
with tempfile.TemporaryDirectory() as run:
    config = PoseFormerV2Config(frames=27, frames_kept=3, coeffs_kept=3, drop_path_rate=0.1)
    export_safetensors(init_training_run(Path(weights), config, Path(run), 1e-4, network=network), Path(out), True)
EOF
    if git ls-files --error-unmatch "$SHIPPED" > /dev/null 2>&1; then git rm -q --cached "$SHIPPED"; fi
    # .gitignore tracks the shipped file by a negated pattern, which info/exclude cannot override; a .gitignore in
    # weights/ can (the deeper file wins), and it ignores itself.
    printf '/.gitignore\n/%s\n' "$(basename "$SHIPPED")" > "$(dirname "$SHIPPED")/.gitignore"
    tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
    data=$(du -cb "$DEVDATA" | tail -1 | cut -f1)
    echo "travels: tree $((tree / 1000000)) MB + $DEVDATA $((data / 1000000)) MB (limit 67 MB)"
    echo "the shipped weights are untracked until: bash $0 restore (collect runs it)"
    ;;
restore)
    rm -f "$(dirname "$SHIPPED")/.gitignore"
    git reset -q -- "$SHIPPED"
    git ls-files --error-unmatch "$SHIPPED" > /dev/null && echo "$SHIPPED is tracked again"
    ;;
train)
    net=${2:?"usage: $0 train first|mirror"}
    flags=$(recipe "$net")
    out=${OUT:?"OUT must name the folder whose files come back"}
    export PYTHONUNBUFFERED=1
    work=/tmp/pfv2; run=gpu_$net; mkdir -p "$work"
    device=${DEVICE:-cuda}  # DEVICE=cpu: a dry run of the same steps on a machine without a GPU
    if [ "$device" = cuda ]; then
        nvidia-smi -L || true
    fi
    "$PY" -m pipeline.mocap --mocap-dir "$work/mocap" unpack --pack "$DEVDATA/bandai.pack"
    if [ "$device" = cuda ]; then  # a failed check is reported, and the training still runs
        { "$PY" -m pytest -q -p no:cacheprovider tests/test_training.py -k "gpu" 2>&1 | tail -n 3
          "$PY" - "$DEVDATA/$net.safetensors" <<'EOF' 2>&1
import sys
import numpy as np, torch
from pipeline.lifting import load_lifter
assert torch.cuda.is_available(), "no CUDA"
keypoints = (np.random.default_rng(0).random((120, 17, 2)) * [640, 480]).astype(np.float32)
cpu = load_lifter(sys.argv[1], device="cpu").lift(keypoints, 640, 480).camera
for precision in (None, "fp16", "bf16"):
    gpu = load_lifter(sys.argv[1], device="cuda", precision=precision).lift(keypoints, 640, 480).camera
    print(f"lift on cuda ({precision or 'fp32'}) against the CPU: max {np.abs(gpu - cpu).max() * 1000:.3f} mm")
EOF
        } | tee "$out/cuda_checks.txt" || echo "the CUDA checks failed" | tee -a "$out/cuda_checks.txt"
    fi
    dir=$HOME/.cache/poseformerv2-demo/train/$run
    start="--init-weights $DEVDATA/$net.safetensors"
    [ -f "$dir/last.bin" ] && start="--resume"  # a second call on the same (still warm) machine goes on
    # shellcheck disable=SC2086
    "$PY" -m pipeline.mocap --mocap-dir "$work/mocap" --data-dir "$work/data" train --frames 27 --f 3 --n 3 \
        --run "$run" --device "$device" --threads 8 --batch-size "${BATCH:-256}" --lr "${LR:-1.2e-4}" \
        --lr-decay 0.9 --samples-per-epoch 1000000 $flags --render-seed "${SEED:-21}" \
        --max-minutes "${TRAIN_MINUTES:-4}" --checkpoint-minutes 0.5 --keep-checkpoints --validation-minutes 1000 \
        --render-workers "$(nproc)" \
        $start > "$work/train.out" 2>&1 || { tail -n 30 "$work/train.out"; exit 1; }
    grep -v "rendered .* clips" "$work/train.out" | tail -n 30
    cp "$dir/train.log" "$out/train.log"
    mapfile -t kept < <(cd "$dir" && ls step_*.bin | sort -t_ -k2 -n | sed "s#^#$dir/#")
    if [ "${#kept[@]}" -ge 3 ]; then  # the mean of every checkpoint after the first, chosen before scoring
        "$PY" -m pipeline.mocap average --checkpoint "${kept[@]:1}" --out "$work/mean.bin"
        echo "the mean of ${kept[*]:1}" > "$out/averaged.txt"
    else
        cp "$dir/last.bin" "$work/mean.bin"
        echo "too few checkpoints to average (${#kept[@]}): the last one" > "$out/averaged.txt"
    fi
    "$PY" -m pipeline.mocap export --checkpoint "$work/mean.bin" --half --out "$work/$run.safetensors"
    split -b 15M -d "$work/$run.safetensors" "$out/$run.safetensors.part"
    ls -l "$out"
    ;;
collect)
    from=${2:?"usage: $0 collect <files_at> first|mirror"}; net=${3:?"usage: $0 collect <files_at> first|mirror"}
    dest=$HOME/.cache/poseformerv2-demo/gpu; mkdir -p "$dest"
    cat "$from"/gpu_"$net".safetensors.part* > "$dest/gpu_$net.safetensors"
    cp "$from"/train.log "$dest/gpu_$net.train.log"
    ${PY_HERE:-.venv/bin/python} -c "import sys; from pipeline.lifting import load_lifter; load_lifter(sys.argv[1])" \
        "$dest/gpu_$net.safetensors" && echo "wrote $dest/gpu_$net.safetensors"
    bash "$0" restore
    ;;
*)
    sed -n '2,21p' "$0"; exit 2 ;;
esac
