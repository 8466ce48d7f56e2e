#!/usr/bin/env bash
# Issue 14's measurements: every figure of docs/performance.md, "Prediction speed and bfloat16", in one go.
# Run it on an IDLE machine (nothing else running: the figures are ratios taken in one process, but a busy
# second core still distorts them), from the repository root or anywhere:
#
#   benchmarks/issue14_measure.sh [--out DIR] [--bundle FILE] [--nih DIR] [--no-training] [--quick]
#
#   --out DIR       where everything goes (default issue14-measure/)
#   --bundle FILE   compare float32 and bfloat16 prediction with this bundle instead of training one
#   --nih DIR       real X-rays for the comparison (default ../shared/data/nih-chestxray14/images; skipped
#                   when absent)
#   --no-training   skip the bfloat16 training run and its comparison with float32
#   --quick         tiny sizes everywhere: checks that the script runs (minutes), the figures mean nothing
#
# Steps (about 25 minutes on the 2-core machine of docs/performance.md without --quick):
#   1. `cianet bench` (all parts, defaults): predict.flop_fraction, predict.bf16_speedup, bf16_supported, the
#      stage breakdown of `cianet predict` over 64 PNGs of 1024 px, and the training figures;
#   2. unless --bundle: a phantom (700 images, 256 px), the tiny recipe's CIA-Net trained on it in float32
#      (`--precision fp32`) and bundled (200 negatives);
#   3. `python -m cianet.bench.precision_check`: float32 vs bfloat16 prediction with that bundle on up to 200
#      phantom images and the real X-rays (probabilities, heatmaps, box regions, against the tolerances);
#   4. unless --no-training: the same training in bfloat16 (`--precision bf16`); both runs evaluated with 1000
#      bootstrap resamples; is bfloat16's mean AUC and localization accuracy inside float32's interval?
#   5. memory (when the checkout has git history): peak RSS of Predictor in bank mode at batch 4 and 8, this
#      code against the code before issue 14 (74bd2a9), on one bundle written by the old code, twice, alternating;
#   6. the figures, one `key = value` per line: the placeholders of docs/performance.md have these keys.
# Without native bfloat16 (e.g. an AMD EPYC without AVX512-BF16) steps 3-4 still run, in emulated bfloat16,
# and bf16_speedup is null: what "auto" would never choose there.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=issue14-measure BUNDLE="" NIH=../shared/data/nih-chestxray14/images TRAIN=1 QUICK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --bundle) BUNDLE=$2; shift 2 ;;
    --nih) NIH=$2; shift 2 ;;
    --no-training) TRAIN=0; shift ;;
    --quick) QUICK=1; shift ;;
    -h|--help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "issue14_measure.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
C=.venv/bin/cianet PY=.venv/bin/python
[ -x "$C" ] || { echo "issue14_measure.sh: $C missing: run scripts/setup.sh first" >&2; exit 2; }
mkdir -p "$OUT"
say() { echo "[issue14 $(date -u +%H:%M:%S)] $*" >&2; }

if [ "$QUICK" = 1 ]; then
  BENCH=(--quick --threads 1) N=160 TRAINSET=(--epochs 1 --image-size 64) LIMIT=8 BOOT=50 MEMNET="resnet18 64 16"
else
  BENCH=() N=700 TRAINSET=() LIMIT=200 BOOT=1000 MEMNET="resnet50 512 128"
fi

say "1/6 cianet bench (load before: $(cut -d' ' -f1 /proc/loadavg))"
"$C" bench "${BENCH[@]}" --json --out "$OUT/bench.json" > /dev/null

if [ -z "$BUNDLE" ]; then
  say "2/6 phantom ($N images), tiny recipe CIA-Net in float32, bundle"
  [ -f "$OUT/phantom/Data_Entry_2017.csv" ] || "$C" synth "$OUT/phantom" --n-images "$N" --size 256 --seed 0 --overwrite > /dev/null
  rm -rf "$OUT/run-fp32"
  "$C" train --config tiny --data-root "$OUT/phantom" --out "$OUT/run-fp32" --precision fp32 --no-progress \
    "${TRAINSET[@]}" > "$OUT/train-fp32.txt"
  "$C" bundle --run "$OUT/run-fp32" --out "$OUT/phantom.cianet" --negatives 200 --no-progress > /dev/null
  BUNDLE=$OUT/phantom.cianet
fi

say "3/6 float32 vs bfloat16 prediction"
FOLDERS=()
[ -d "$OUT/phantom/images" ] && FOLDERS+=("$OUT/phantom/images")
[ -d "$NIH" ] && FOLDERS+=("$NIH")
[ ${#FOLDERS[@]} -gt 0 ] || { echo "issue14_measure.sh: no images to compare (no phantom, no $NIH)" >&2; exit 2; }
"$PY" -m cianet.bench.precision_check --bundle "$BUNDLE" "${FOLDERS[@]}" --limit "$LIMIT" --json > "$OUT/precision.json"

if [ "$TRAIN" = 1 ] && [ -d "$OUT/run-fp32" ]; then
  say "4/6 the same training in bfloat16; both evaluated with $BOOT bootstrap resamples"
  rm -rf "$OUT/run-bf16"
  "$C" train --config tiny --data-root "$OUT/phantom" --out "$OUT/run-bf16" --precision bf16 --no-progress \
    "${TRAINSET[@]}" > "$OUT/train-bf16.txt"
  for p in fp32 bf16; do
    "$C" evaluate --run "$OUT/run-$p" --bootstrap "$BOOT" --json --no-progress > "$OUT/eval-$p.json"
  done
fi

BEFORE=74bd2a9  # the last commit before issue 14's work: "no more memory than today per image"
if [ -d "$OUT/phantom/images" ] && git rev-parse -q --verify "$BEFORE^{commit}" > /dev/null 2>&1; then
  say "5/6 memory: Predictor (bank mode, batch 4) of this code and of $BEFORE on one bundle that both read"
  rm -rf "$OUT/before" && mkdir -p "$OUT/before" && git archive "$BEFORE" src | tar -x -C "$OUT/before"
  # the bundle as $BEFORE's bench made it (format 1, no alignment network), written by $BEFORE's own code
  PYTHONPATH="$OUT/before/src" "$PY" - "$OUT" $MEMNET <<'PYEOF'
import json, sys
from pathlib import Path
from cianet.bench.speed import make_predict_bundle
out, backbone, size, grid = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
paths = make_predict_bundle(out / "before-bundle.pt", out / "phantom", backbone, size, grid, 16)
(out / "before-paths.json").write_text(json.dumps((paths * 16)[:16]))
PYEOF
  : > "$OUT/memory.jsonl"
  for round in 1 2; do  # alternating, each in a fresh process; batch 4 and 8 give the memory per image
    for batch in 4 8; do
      SPEC=$("$PY" -c "import json,sys; print(json.dumps({'bundle': sys.argv[1] + '/before-bundle.pt', 'mode': 'bank',
        'batch': int(sys.argv[2]), 'images': 8, 'paths': json.load(open(sys.argv[1] + '/before-paths.json'))}))" "$OUT" $batch)
      for code in before now; do
        if [ "$code" = before ]; then R=$(PYTHONPATH="$OUT/before/src" "$PY" -m cianet.bench.speed --predict-worker "$SPEC" | tail -1)
        else R=$("$PY" -m cianet.bench.speed --predict-worker "$SPEC" | tail -1); fi
        echo "{\"code\": \"$code\", \"round\": $round, \"batch\": $batch, \"result\": $R}" >> "$OUT/memory.jsonl"
      done
    done
  done
fi

say "6/6 figures (load after: $(cut -d' ' -f1 /proc/loadavg))"
"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path

import numpy as np

out = Path(sys.argv[1])
b = json.loads((out / "bench.json").read_text())
p = b["predict"]
fig = {
    "env.cpu": b["env"]["cpu"], "env.threads": b["env"]["threads"],
    "env.loadavg": f"{b['env']['loadavg_1min']} -> {b['env'].get('loadavg_1min_end')}",
    "bf16_supported": b["bf16_supported"], "matmul_gflops": round(b["matmul_gflops"], 1),
    "predict.gflops_per_image": round(p["gflops_per_image"], 1),
    "predict.networks_images_per_s": round(p["networks_images_per_s"], 2),
    "predict.flop_fraction": round(p["flop_fraction"], 3),
    "predict.bf16_networks_images_per_s": None if p.get("bf16_networks_images_per_s") is None
    else round(p["bf16_networks_images_per_s"], 2),
    "predict.bf16_speedup": None if p.get("bf16_speedup") is None else round(p["bf16_speedup"], 2),
    "predict.bank_images_per_s": round(p["bank_images_per_s"], 2),
    "predict.bank_peak_rss_mb": round(p["bank_peak_rss_mb"]),
    "predict.profile_peak_rss_mb": round(p["profile_peak_rss_mb"]),
}
for suffix in ("", "_no_overlay", "_no_overlay_no_prefetch", "_bf16", "_bf16_no_overlay"):
    if f"folder_s{suffix}" in p:
        fig[f"predict.folder_images_per_s{suffix}"] = round(p[f"folder_images_per_s{suffix}"], 2)
        fig[f"predict.folder_vs_networks{suffix}"] = round(p[f"folder_vs_networks{suffix}"], 2)
        for stage, sec in p[f"stages{suffix}"].items():
            fig[f"predict.stages{suffix}.{stage}"] = round(sec, 4)
e = b.get("evaluate") or {}
for key in ("gflops_per_image", "images_per_s", "flop_fraction", "bf16_speedup"):
    v = e.get(key)
    fig[f"evaluate.{key}"] = round(v, 3) if isinstance(v, float) else v
for r in b["train"]["variants"]:
    layout = "channels_last" if r["channels_last"] else "nchw"
    fig[f"train.{r['kind']}.{layout}.flop_fraction"] = round(r["flop_fraction"], 3)
prec = json.loads((out / "precision.json").read_text())
for name, r in prec["folders"].items():
    for key in ("images", "max_prob_diff", "mean_prob_diff", "max_heatmap_diff", "box_pairs", "mean_box_iou",
                "box_presence_agreement", "within_tolerance"):
        v = r[key]
        fig[f"precision.{name}.{key}"] = round(v, 4) if isinstance(v, float) else v
for p_ in ("fp32", "bf16"):
    path = out / f"eval-{p_}.json"
    if not path.is_file():
        continue
    m = json.loads(path.read_text())
    ci = m.get("ci") or {}
    fig[f"train_{p_}.precision"] = m.get("precision")
    auc_ci = ci.get("auc") or {}  # {"value", "low", "high"} of the class-mean AUC
    fig[f"train_{p_}.auc_mean"] = auc_ci.get("value", m["auc"]["Mean"])
    fig[f"train_{p_}.auc_mean_ci"] = [auc_ci.get("low"), auc_ci.get("high")]
    for t in ("0.1", "0.5"):
        loc_ci = (ci.get("localization") or {}).get(t) or {}
        fig[f"train_{p_}.loc_mean_{t}"] = loc_ci.get("value", m["localization"][t]["Mean"])
        fig[f"train_{p_}.loc_mean_{t}_ci"] = [loc_ci.get("low"), loc_ci.get("high")]
mem = out / "memory.jsonl"
if mem.is_file():
    rows = [json.loads(line) for line in mem.read_text().splitlines() if line.strip()]
    for code in ("before", "now"):
        for batch in (4, 8):
            mine = [r["result"] for r in rows if r["code"] == code and r["batch"] == batch]
            fig[f"memory.{code}.batch{batch}.peak_rss_mb"] = [round(r["peak_rss_mb"]) for r in mine]
            fig[f"memory.{code}.batch{batch}.images_per_s"] = [round(r["images_per_s"], 2) for r in mine]
        # memory per image: the growth of the peak from batch 4 to batch 8, per added image (medians of the rounds)
        med = {b: float(np.median(fig[f"memory.{code}.batch{b}.peak_rss_mb"])) for b in (4, 8)}
        fig[f"memory.{code}.mb_per_image"] = round((med[8] - med[4]) / 4, 1)
    fig["memory.now_le_before.batch4"] = max(fig["memory.now.batch4.peak_rss_mb"]) <= min(fig["memory.before.batch4.peak_rss_mb"])
    fig["memory.now_le_before.per_image"] = fig["memory.now.mb_per_image"] <= fig["memory.before.mb_per_image"]
if "train_bf16.auc_mean" in fig:
    def inside(key: str) -> bool | None:
        lo, hi = fig[f"train_fp32.{key}_ci"]
        v = fig[f"train_bf16.{key}"]
        return None if lo is None or hi is None or v is None else bool(lo <= v <= hi)
    for key in ("auc_mean", "loc_mean_0.1", "loc_mean_0.5"):
        fig[f"train_bf16.{key}_inside_fp32_ci"] = inside(key)
for k, v in fig.items():
    print(f"{k} = {json.dumps(v)}")
(out / "figures.json").write_text(json.dumps(fig, indent=2))
print(f"(also in {out / 'figures.json'}; raw results: bench.json, precision.json, eval-*.json)", file=sys.stderr)
PYEOF
