"""``cianet demo``: the whole pipeline on the synthetic phantom, on a laptop CPU, with a report.

Stages (each is the same command a user runs on real data, and each is skipped or resumed when its output
already exists in the demo folder, so an interrupted demo continues where it stopped):
  1. ``cianet synth``       phantom data set in NIH layout (with scan deformations and ground truth)
  2. ``cianet prepare``     the uint8 image cache at the training size
  3. ``cianet canonical``   the canonical chest
  4. ``cianet train-align`` the alignment network
  5. ``cianet hash``        the perceptual-hash negative index
  6. ``cianet train``       the baseline (Li et al.) and CIA-Net, tiny recipe, Table 1 protocol (80% annotated
                            + 50% unannotated), both with alignment, so the comparison isolates the attention
  7. report.md             Table-1-style comparison, AUCs, figures
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _run(argv: list[str]) -> None:
    from cianet.cli import main

    print(f"\n$ cianet {' '.join(argv)}", file=sys.stderr, flush=True)
    code = main(argv)
    if code:
        raise RuntimeError(f"demo stage `cianet {' '.join(argv)}` failed with exit status {code}")


def demo_settings(fast: bool, n_images: int | None) -> dict:
    if fast:
        return {"n_images": n_images or 240, "size": 128, "epochs": 1, "align_epochs": 3, "align_images": 240,
                "canonical_n": 60, "max_images": None}
    return {"n_images": n_images or 1200, "size": 128, "epochs": 8, "align_epochs": 3, "align_images": 400,
            "canonical_n": 200, "max_images": None}


def run_demo(out: str | Path = "cianet-demo", fast: bool = False, seed: int = 0, n_images: int | None = None,
             resume: bool = True, progress: bool = True) -> Path:
    """Run every stage into ``out``; returns the path of ``report.md``."""
    import shutil

    out = Path(out)
    if not resume and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    st = demo_settings(fast, n_images)
    size = st["size"]
    data, cache = out / "data", out / "cache"
    canonical, align_dir, hash_npz = out / "canonical.png", out / "align", out / "hash.npz"
    quiet = [] if progress else ["--no-progress"]
    timings: dict[str, float] = {}
    t_all = time.time()

    def stage(name: str, done: bool, argv: list[str]) -> None:
        t0 = time.time()
        if done:
            print(f"[demo] {name}: already done, skipped", file=sys.stderr)
        else:
            _run(argv)
        timings[name] = round(time.time() - t0, 1)

    stage("synth", (data / "synth_truth.csv").exists(),
          ["synth", str(data), "--n-images", str(st["n_images"]), "--size", str(size), "--seed", str(seed)])
    stage("prepare", (cache / "index.json").exists(),
          ["prepare", "--data-root", str(data), "--size", str(size), "--cache", str(cache)])
    stage("canonical", canonical.exists(),
          ["canonical", "--data-root", str(data), "--n", str(st["canonical_n"]), "--size", str(size),
           "--seed", str(seed), "--out", str(canonical), "--cache", str(cache)])
    common = ["--config", "tiny", "--data-root", str(data), "--cache", str(cache), "--image-size", str(size),
              "--seed", str(seed), "--canonical", str(canonical), *quiet]
    align_done = _align_done(align_dir, st["align_epochs"])
    stage("train-align", align_done,
          ["train-align", *common, "--out", str(align_dir), "--resume",
           "--set", f"align.epochs={st['align_epochs']}", "--set", f"align.max_images={st['align_images']}"])
    stage("hash", hash_npz.exists(), ["hash", "--data-root", str(data), "--cache", str(cache), "--out", str(hash_npz), *quiet])
    runs = {}
    for kind in ("baseline", "cianet"):
        run_dir = out / "runs" / kind
        runs[kind] = run_dir
        stage(f"train {kind}", (run_dir / "metrics.json").exists(),
              ["train", *common, "--model", kind, "--out", str(run_dir), "--align", str(align_dir / "align.pt"),
               "--hash-index", str(hash_npz), "--epochs", str(st["epochs"]), "--resume",
               "--annotated-ratio", "0.8", "--unannotated-ratio", "0.5"])
    t0 = time.time()
    from cianet.engine.report import write_demo_report

    report = write_demo_report(out, runs, canonical, align_dir / "align.pt", timings, settings=st)
    timings["report"] = round(time.time() - t0, 1)
    total = round(time.time() - t_all, 1)
    (out / "timings.json").write_text(json.dumps({**timings, "total": total}, indent=2))
    print(f"[demo] finished in {total} s", file=sys.stderr)
    return report


def _align_done(align_dir: Path, epochs: int) -> bool:
    ckpt = align_dir / "align.pt"
    if not ckpt.exists():
        return False
    import torch

    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"]) + 1 >= epochs
    except Exception:
        return False
