"""``cianet demo``: the whole pipeline on the synthetic phantom, on a laptop CPU, with a report.

Stages (each runs the library function behind the command a user runs on real data, and each is skipped or
resumed when its output already exists in the demo folder, so an interrupted demo continues where it stopped):
  1. synth       phantom data set in NIH layout (with scan deformations and ground truth)   (`cianet synth`)
  2. prepare     the uint8 image cache at the training size                                (`cianet prepare`)
  3. canonical   the canonical chest                                                       (`cianet canonical`)
  4. train-align the alignment network                                                     (`cianet train-align`)
  5. hash        the perceptual-hash negative index                                        (`cianet hash`)
  6. train       the baseline (Li et al.) and CIA-Net, tiny recipe, Table 1 protocol (80% annotated
                 + 50% unannotated), both with alignment, so the comparison isolates the attention; CIA-Net's
                 negative is the patient's earlier normal study where there is one (:data:`DEMO_NEGATIVES`)
                 (`cianet train`)
  7. evaluate    both runs as `cianet evaluate` scores them (ROC/PR curves, bootstrap intervals, test grids)
  8. report.md   Table-1-style comparison, AUCs, figures
  9. site/       the viewer's page of both runs (`cianet view`), linked from report.md
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cianet.config import CANONICAL_CHEST, PRIOR, Config, load_config
from cianet.data.cache import prepare_cache
from cianet.data.canonical import make_canonical
from cianet.errors import UsageError
from cianet.evaluation.evaluate import evaluate_run
from cianet.evaluation.report import write_demo_report
from cianet.evaluation.viewer import build_site
from cianet.phantom import generate_dataset
from cianet.run.checkpoints import alignment_trained
from cianet.run.pairing import hash_data_root
from cianet.training.alignment import train_alignment
from cianet.training.loop import fit
from cianet.utils.atomic import atomic_write_json, atomic_write_text
from cianet.utils.output_folders import claim_output, output_lock


def demo_settings(fast: bool, n_images: int | None) -> dict:
    if fast:
        return {
            "n_images": n_images or 240,
            "size": 128,
            "epochs": 1,
            "lr_step": 1,
            "align_epochs": 1,
            "align_images": 120,
            "canonical_n": 60,
            "max_images": None,
            "val_share": 0.0,
        }
    # Sized for the slower 2-core machine (README, docs/method.md "The demo's recipe"): 900 images, the tiny
    # recipe's 16 epochs (the last four at lr / 10), alignment 5 epochs over up to 800 images.
    return {
        "n_images": n_images or 900,
        "size": 128,
        "epochs": 16,
        "lr_step": 12,
        "align_epochs": 5,
        "align_images": 800,
        "canonical_n": 200,
        "max_images": None,
        # a tenth of the training patients validate after every epoch: the report's learning curves and plateau
        # verdicts (the recipe was tuned with this split, docs/method.md "The demo's recipe")
        "val_share": 0.1,
    }


#: CIA-Net's negatives in the demo: the patient's own earlier No Finding study where there is one, else the
#: paper's hash-nearest image (negatives.prior_fallback: sim). Chosen from the evidence experiment's five
#: pre-registered seeds (docs/method.md "Results"): prior beat Base on the pointing game and AUC, and beat sim
#: at T(IoU) 0.5, while sim's gains over Base were smaller (issue 20 item 5).
DEMO_NEGATIVES = PRIOR


def demo_config(data: Path, cache: Path, canonical: Path, size: int, seed: int, progress: bool):
    """The tiny recipe on the demo's data, as ``--config tiny --data-root --cache --image-size --seed
    --canonical`` set it for every training stage."""
    cfg = load_config("tiny")
    cfg.data.data_root, cfg.data.cache, cfg.data.image_size = str(data), str(cache), size
    cfg.run.seed, cfg.align.canonical = seed, str(canonical)
    cfg.negatives.strategy = DEMO_NEGATIVES
    if not progress:
        cfg.run.progress = False
    return cfg


def run_demo(
    out: str | Path = "cianet-demo",
    fast: bool = False,
    seed: int = 0,
    n_images: int | None = None,
    resume: bool = True,
    progress: bool = True,
    settings: dict | None = None,
) -> Path:
    """Run every stage into ``out``; returns the path of ``report.md``.

    ``out`` must be new, empty or a demo folder; ``resume=False`` deletes the demo's own outputs in it first.
    ``settings`` replaces entries of :func:`demo_settings` (e.g. ``{"align_images": 16}`` for a smaller smoke
    run in tests); unknown keys are an error.
    """
    out = Path(out)
    st = demo_settings(fast, n_images)
    unknown = sorted(set(settings or {}) - set(st))
    if unknown:
        raise UsageError(f"unknown demo setting(s) {', '.join(unknown)}; known: {', '.join(sorted(st))}")
    st.update(settings or {})
    if st["n_images"] < 20:  # the 5-fold protocol needs images in every split
        raise UsageError(f"--n-images must be >= 20, got {st['n_images']}")
    claim_output(out, "demo", adopt=DEMO_ENTRIES)  # never writes into (or empties) a folder it did not make
    with output_lock(out, "cianet demo"):
        if not resume:
            for name in sorted(DEMO_ENTRIES):  # only what a demo writes; anything else in the folder stays
                path = out / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                elif path.exists() or path.is_symlink():
                    path.unlink()
        return _run_stages(out, st, fast, seed, progress)


#: every entry a demo writes at the top of its folder (what --fresh deletes, and nothing else)
DEMO_ENTRIES = frozenset(
    {
        "data",
        "cache",
        "canonical.png",
        "canonical_mean.png",
        "canonical.json",
        "align",
        "hash.npz",
        "runs",
        "figures",
        "alignment.json",
        "report.md",
        "timings.json",
        "site",
    }
)


def _run_stages(out: Path, st: dict, fast: bool, seed: int, progress: bool) -> Path:
    size = st["size"]
    data, cache = out / "data", out / "cache"
    canonical, align_dir, hash_npz = out / "canonical.png", out / "align", out / "hash.npz"
    base = demo_config(data, cache, canonical, size, seed, progress)
    timings: dict[str, float] = {}
    ran: list[str] = []
    t_all = time.time()

    def stage(name: str, done: bool, run: Callable[[], object]) -> None:
        t0 = time.time()
        if done:
            print(f"[demo] {name}: already done, skipped", file=sys.stderr)
        else:
            print(f"\n[demo] {name}", file=sys.stderr, flush=True)
            run()
            ran.append(name)
        timings[name] = round(time.time() - t0, 1)

    def say(msg: str) -> None:
        print(msg, file=sys.stderr)

    stage(
        "synth",
        (data / "synth_truth.csv").exists(),
        lambda: generate_dataset(data, n_images=st["n_images"], size=size, seed=seed),
    )
    stage("prepare", (cache / "index.json").exists(), lambda: prepare_cache(data, size, cache, log=say))
    stage(
        CANONICAL_CHEST,
        canonical.exists(),  # the stage that builds it
        lambda: make_canonical(data, canonical, n=st["canonical_n"], size=size, seed=seed, cache=cache),
    )

    align_cfg = copy.deepcopy(base)
    align_cfg.run.out, align_cfg.align.epochs = str(align_dir), st["align_epochs"]
    align_cfg.align.max_images = st["align_images"]
    aligned = alignment_trained(align_dir, st["align_epochs"])
    stage("train-align", aligned, lambda: train_alignment(align_cfg, resume=True))
    stage(
        "hash",
        hash_npz.exists(),  # codes of the aligned images, as the runs pair (negatives.aligned_codes)
        lambda: hash_data_root(
            data,
            hash_npz,
            cache=cache,
            progress=None if progress else False,
            align=align_dir / "align.pt" if base.negatives.aligned_codes else None,
            image_size=size,
        ),
    )
    runs = {}
    for kind in ("baseline", "cianet"):
        run_dir = out / "runs" / kind
        runs[kind] = run_dir
        cfg = run_config(base, kind, run_dir, align_dir / "align.pt", hash_npz, st)
        stage(f"train {kind}", (run_dir / "metrics.json").exists(), lambda cfg=cfg: fit(cfg, resume=True))
    for kind, run_dir in runs.items():  # as `cianet evaluate`: ROC/PR curves, intervals, the viewer's test grids
        stage(
            f"evaluate {kind}",
            _evaluated(run_dir),
            lambda run_dir=run_dir: evaluate_run(run_dir, device=base.run.device, progress=progress),
        )
    report = out / "report.md"
    # The report and the page are drawn from the stages' outputs: when no stage ran, the finished ones stand (a
    # resume would redraw a dozen identical figures; the report keeps the timings of the run that did the work).
    stage(
        "report",
        not ran and _reported(report),
        lambda: write_demo_report(out, runs, canonical, align_dir / "align.pt", timings, settings=st),
    )
    stage("site", not ran and _reported(report), lambda: _write_site(report, runs, progress))
    total = round(time.time() - t_all, 1)
    atomic_write_json(out / "timings.json", {**timings, "total": total})
    print(f"[demo] finished in {total} s", file=sys.stderr)
    return report


def run_config(base: Config, kind: str, run_dir: Path, align: Path, hash_npz: Path, st: dict) -> Config:
    """The config of the demo's ``kind`` run (baseline or cianet): the demo's stages' files and settings."""
    cfg = copy.deepcopy(base)
    cfg.model.kind, cfg.run.out, cfg.align.checkpoint = kind, str(run_dir), str(align)
    cfg.negatives.hash_index, cfg.optim.epochs, cfg.optim.lr_step = str(hash_npz), st["epochs"], st["lr_step"]
    cfg.protocol.annotated_ratio, cfg.protocol.unannotated_ratio = 0.8, 0.5
    if st["val_share"]:  # validate after every epoch: the report's learning curves
        cfg.protocol.val_share, cfg.run.eval_every = st["val_share"], 1
    return cfg


def _write_site(report: Path, runs: dict[str, Path], progress: bool) -> None:
    """The page of both runs side by side (`cianet view`), linked from the report."""
    site = build_site([runs["cianet"], runs["baseline"]], report.parent / SITE, progress=None if progress else False)
    link_site(report, site.index)


def _reported(report: Path) -> bool:
    """Whether a finished demo's report is there: written, and linked to its page (the last step)."""
    try:
        return "## Viewer" in report.read_text() and (report.parent / SITE / "index.html").is_file()
    except OSError:
        return False


def _evaluated(run_dir: Path) -> bool:
    """Whether ``cianet evaluate`` has scored the run (its intervals and the viewer's grids are there)."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(metrics.get("ci")) and (run_dir / "predictions.npz").exists()


SITE = "site"


def link_site(report: Path, index: Path) -> None:
    """Add the viewer's page to ``report`` (a "## Viewer" section with a relative link), once."""
    text = report.read_text()
    if "## Viewer" in text:
        return
    rel = index.relative_to(report.parent).as_posix()
    atomic_write_text(
        report,
        text.rstrip("\n") + "\n\n## Viewer\n\n"
        f"Both runs' test images, side by side, with their predicted regions, heatmaps and the ground "
        f"truth: [{rel}]({rel}) (open it in a browser; `cianet view runs/cianet runs/baseline` "
        "rebuilds it).\n",
    )
