#!/usr/bin/env bash
# The paper recipe's speed on a GPU, for whoever has one (docs/performance.md, "GPU"):
#   - training step of the baseline and CIA-Net, ResNet-50 at 512 px, AMP (float16 with a loss scaler, as
#     `cianet train` runs on CUDA), channels-last and NCHW, at the paper's batch 6 and at batch 24;
#   - prediction (`cianet bench --only predict`): bank vs recompute, the networks' FLOP fraction, float32 vs
#     bfloat16 and float16, and the stage breakdown of `cianet predict` over 64 PNGs of 1024 px.
# Each part is one `cianet bench` run; the JSON files land in --out and a short summary is printed.
#
# Usage: scripts/gpu-bench.sh [--device cuda|cuda:N|cpu] [--quick] [--out DIR] [--dry-run]
#   --device cpu --quick   checks that the script works on a machine without a GPU (tiny sizes, a few minutes
#                          on 2 cores; the figures mean nothing)
#   --dry-run              print the commands instead of running them
# Exit status: 0 done, 2 bad arguments or no such device, else the failing command's.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2; }
DEVICE=cuda QUICK=0 OUT=gpu-bench DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) [ $# -ge 2 ] || { echo "gpu-bench.sh: --device needs a value" >&2; exit 2; }; DEVICE=$2; shift 2 ;;
    --out) [ $# -ge 2 ] || { echo "gpu-bench.sh: --out needs a value" >&2; exit 2; }; OUT=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu-bench.sh: unknown argument $1" >&2; usage; exit 2 ;;
  esac
done
case "$DEVICE" in
  cpu|cuda|cuda:[0-9]*) ;;
  *) echo "gpu-bench.sh: --device must be cuda, cuda:N or cpu, got $DEVICE" >&2; exit 2 ;;
esac

if [ -x .venv/bin/cianet ]; then CIANET=.venv/bin/cianet PY=.venv/bin/python; else CIANET=cianet PY=python3; fi
if [ "$DRY" = 0 ] && [ "$DEVICE" != cpu ]; then
  "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "gpu-bench.sh: --device $DEVICE: CUDA is not available here (use --device cpu --quick to check the script)" >&2; exit 2; }
fi

if [ "$QUICK" = 1 ]; then
  SIZES=(--quick)  # tiny sizes everywhere (cianet bench --quick)
  PREDICT=(--quick)
else
  SIZES=(--backbone resnet50 --size 512)
  PREDICT=(--predict-backbone resnet50 --predict-size 512 --predict-batch 6 --predict-images 24)
fi

run() {
  echo "+ $*" >&2
  if [ "$DRY" = 0 ]; then "$@" > /dev/null; fi
}

[ "$DRY" = 1 ] || mkdir -p "$OUT"
run "$CIANET" bench --device "$DEVICE" --only matmul,train "${SIZES[@]}" --batch 6 --json --out "$OUT/train-b6.json"
run "$CIANET" bench --device "$DEVICE" --only matmul,train "${SIZES[@]}" --batch 24 --no-compare --json --out "$OUT/train-b24.json"
run "$CIANET" bench --device "$DEVICE" --only matmul,predict "${PREDICT[@]}" --json --out "$OUT/predict.json"
[ "$DRY" = 0 ] || exit 0

"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
for name in ("train-b6", "train-b24"):
    r = json.loads((out / f"{name}.json").read_text())
    t = r["train"]
    print(f"{name}: {t['backbone']} {t['size']} px batch {t['batch']}, matmul {r['matmul_gflops']:.0f} GFLOP/s")
    for v in t["variants"]:
        layout = "channels_last" if v["channels_last"] else "NCHW"
        print(f"  {v['kind']:<9} {layout:<14} {v['images_per_s']:8.2f} images/s  {v['flop_fraction']:.2f} of matmul"
              f"  amp={v['amp']}")
p = json.loads((out / "predict.json").read_text())
q = p["predict"]
print(f"predict: {q['backbone']} {q['size']} px batch {q['batch']}: bank {q['bank_images_per_s']:.2f} images/s,"
      f" networks {q['networks_images_per_s']:.2f} images/s = {q['flop_fraction']:.2f} of matmul (float32)")
for prec in ("bf16", "fp16"):
    if q.get(f"{prec}_speedup") is not None:
        print(f"  {prec}: {q[f'{prec}_networks_images_per_s']:.2f} images/s ({q[f'{prec}_speedup']:.2f}x float32)")
print(f"  folder of {q['folder_images']} PNGs: {q['folder_vs_networks']:.2f}x the networks alone "
      f"({q['folder_vs_networks_no_overlay']:.2f}x without overlays)")
print(f"results: {out}/train-b6.json, train-b24.json, predict.json")
PYEOF
