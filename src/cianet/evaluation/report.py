"""The demo report: Table-1-style comparison, AUCs, and figures (canonical chest, alignment, attention maps,
predicted vs true boxes, ROC curves). Figures are PNGs written with matplotlib's Agg backend."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cianet.config import load_config
from cianet.data.io import load_xray, resize_gray
from cianet.evaluation.alignment import evaluate_alignment
from cianet.evaluation.comparisons import auc_markdown, compare_runs, comparison_markdown, localization_markdown
from cianet.evaluation.evaluate import load_run
from cianet.evaluation.learning_curves import figure_learning_curves, plateau_sentence, read_curve
from cianet.evaluation.plots import PNG_OPTIONS, set_margins
from cianet.labels import BOX_LABELS, LABELS
from cianet.metrics import format_auc_table, roc_curves, verdict
from cianet.models.alignment import warp
from cianet.models.cianet import grid_side
from cianet.run.checkpoints import load_alignment
from cianet.run.datasets import collate
from cianet.run.forward import align_batch, forward_grids
from cianet.run.pairing import NEGATIVES_JSON, counts_line
from cianet.run.scoring import PREDICTIONS, attention_sentence, read_predictions
from cianet.utils.atomic import atomic_write_bytes, atomic_write_text


def _save(fig, path: Path) -> None:
    # The figures are laid out with fixed margins: bbox_inches="tight" would draw each twice to measure it. Their
    # titles are set at y=1.0, where matplotlib puts a title over axes without ticks on top: a title left to
    # matplotlib is placed by measuring every tick of the axes at each draw, a quarter of the report's figure time.
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, pil_kwargs=PNG_OPTIONS)
    atomic_write_bytes(path, buf.getvalue())
    # lazy: matplotlib is needed for plots only
    import matplotlib.pyplot as plt

    plt.close(fig)


def _plt():
    # lazy: matplotlib is needed for plots only
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _image_grid(
    rows: int,
    cols: int,
    side: float,
    gap: float,
    pad: tuple[float, float] = (0.1, 0.1),
    top: float = 0.0,
    title: float = 0.18,
):
    """A figure of ``rows`` x ``cols`` square image axes ``side`` inches wide and ``gap`` apart, with ``title``
    inches above each for its title (0.18: 8 pt); ``pad`` (inches: sides, top and bottom) around them and ``top``
    more above (a suptitle). Square cells hold square images without slack: nothing needs measuring."""
    width = 2 * pad[0] + cols * side + (cols - 1) * gap
    height = 2 * pad[1] + top + rows * (side + title) + (rows - 1) * gap
    fig, axes = _plt().subplots(rows, cols, figsize=(width, height), squeeze=False)
    set_margins(fig, (pad[0], pad[1], pad[0], pad[1] + top + title))
    fig.subplots_adjust(wspace=gap / side, hspace=(gap + title) / side)
    return fig, axes


def mean_over_thresholds(metrics: dict[str, Any]) -> float:
    vals = [row["Mean"] for row in metrics["localization"].values() if row.get("Mean") is not None]
    vals = [v for v in vals if not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def verdict_section(runs: dict[str, Path], metrics: dict[str, dict[str, Any]]) -> list[str]:
    """The comparison CIA-Net minus Base with its 95% bootstrap intervals; every claim follows from them."""
    comp = compare_runs([[runs["cianet"]]], [[runs["baseline"]]])
    lines = [
        f"Over T(IoU) 0.1-0.7 the mean localization accuracy is {mean_over_thresholds(metrics['cianet']):.3f} for "
        f"CIA-Net and {mean_over_thresholds(metrics['baseline']):.3f} for Base. The verdicts below follow from "
        "paired bootstrap intervals over the test boxes (stratified by class) and images; one seed, one fold, "
        "so they say what this run shows, not what every run would.",
        "",
        "- " + verdict(comp["0.5"], what="CIA-Net", other="Base"),
        *(["- " + verdict(comp["pointing"], what="CIA-Net", other="Base")] if "pointing" in comp else []),
        "- " + verdict(comp["auc"], what="CIA-Net", other="Base"),
        "",
        comparison_markdown({"CIA-Net - Base": comp}),
    ]
    few = few_box_classes(runs["cianet"])
    if few:
        lines += [
            "Caution: the class-stratified bootstrap keeps each class's boxes within the class, so a class "
            f"with very few test boxes ({few}) barely varies across replicates and the interval understates "
            'the uncertainty of this one run. docs/method.md ("Evidence") has runs with several seeds and '
            "hundreds of test boxes.",
            "",
        ]
    att = metrics["cianet"].get("attention")
    if att and att.get("n_images"):
        lines += ["### The attention mechanism", "", attention_sentence(att), ""]
    return lines


def calibration_free_section(named: dict[str, dict[str, Any]]) -> list[str]:
    """The pointing game of each model and its localization at the validation-chosen threshold (or why there
    is none), from their metrics.json."""
    nan = lambda row: {c: (float("nan") if v is None else v) for c, v in row.items()}  # noqa: E731
    lines = [
        "The paper's accuracy counts cells with p > 0.5, so it depends on calibration. The pointing game "
        "does not: a box is found when its class's highest test-grid cell (by logit) has its centre in the "
        "box.",
        "",
    ]
    points = {m: nan(r["pointing_game"]) for m, r in named.items() if r.get("pointing_game")}
    if points:
        lines += [format_auc_table(points), ""]
    chosen = {m: r.get("val_threshold") or {} for m, r in named.items()}
    with_t = {m: v for m, v in chosen.items() if v.get("threshold") is not None}
    if with_t:
        lines += [
            "Localization at the probability threshold chosen on the validation boxes ("
            + ", ".join(f"{m}: p > {v['threshold']:g}" for m, v in with_t.items())
            + "):",
            "",
            localization_markdown(
                {m: {"localization": {t: nan(row) for t, row in v["localization"].items()}} for m, v in with_t.items()}
            ),
            "",
        ]
    else:
        reasons = {v.get("reason") for v in chosen.values() if v.get("reason")}
        lines += ["No validation-chosen threshold: " + ("; ".join(sorted(reasons)) or "not recorded") + ".", ""]
    return lines


def few_box_classes(run_dir: Path, below: int = 5) -> str:
    """``"Mass: 1, Nodule: 2"``: the box classes with fewer than ``below`` test boxes in a run's predictions
    (0 boxes excluded: those classes are not in the mean), or ``""``."""
    counts = np.bincount(read_predictions(run_dir)["box_classes"], minlength=len(LABELS))
    return ", ".join(f"{LABELS[k]}: {int(n)}" for k, n in enumerate(counts) if 0 < n < below)


# ------------------------------------------------------------------------------------------- figures
def figure_canonical(canonical: Path, out: Path) -> Path:
    plt = _plt()
    mean_path = canonical.with_name(f"{canonical.stem}_mean.png")
    crop = (
        json.loads(canonical.with_suffix(".json").read_text()).get("crop")
        if canonical.with_suffix(".json").exists()
        else None
    )
    # the 12 pt title of the mean image is wider than the image: room for it at the sides
    fig, (axes,) = _image_grid(1, 2, 2.47, 0.49, pad=(0.4, 0.1), title=0.22)
    if mean_path.exists():
        axes[0].imshow(load_xray(mean_path), cmap="gray", vmin=0, vmax=1)
        if crop:
            x0, y0, x1, y1 = crop
            axes[0].add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="yellow", lw=1.5))
    axes[0].set_title("mean No Finding image + lung crop", y=1.0)
    axes[1].imshow(load_xray(canonical), cmap="gray", vmin=0, vmax=1)
    axes[1].set_title("canonical chest", y=1.0)
    for a in axes:
        a.axis("off")
    path = out / "canonical.png"
    _save(fig, path)
    return path


def figure_alignment(data_root: Path, align_ckpt: Path, size: int, out: Path, n: int = 6) -> Path | None:
    """Deformed phantom images: original, aligned by the network, and undeformed with the true parameters."""
    truth = data_root / "synth_truth.csv"
    if not truth.exists() or not align_ckpt.exists():
        return None
    rows = []
    with open(truth, newline="") as fh:
        for r in csv.DictReader(fh):
            if r.get("deformed") in ("1", "True", "true") and r.get("name", r.get("Image Index")):
                rows.append(r)
    seen, picked = set(), []
    for r in rows:
        name = r.get("name") or r.get("Image Index")
        if name not in seen:
            seen.add(name)
            picked.append(r)
    picked = sorted(picked, key=lambda r: -abs(float(r.get("theta", 0) or 0)))[:n]
    if not picked:
        return None
    net = load_alignment(align_ckpt).net
    fig, axes = _image_grid(3, len(picked), 1.4, 0.28)
    for j, r in enumerate(picked):
        name = r.get("name") or r.get("Image Index")
        img = resize_gray(load_xray(data_root / "images" / name), size)
        x = torch.from_numpy(img)[None, None]
        with torch.no_grad():
            aligned = net(x)["aligned"][0, 0].numpy()
            params = torch.tensor([[float(r[k]) for k in ("tx", "ty", "sx", "sy", "theta")]])
            ideal = warp(x, params)[0, 0].numpy()
        for i, (im, title) in enumerate(((img, "original"), (aligned, "aligned"), (ideal, "true undeform"))):
            axes[i, j].imshow(im, cmap="gray", vmin=0, vmax=1)
            axes[i, j].set_title(title, fontsize=8, y=1.0)
            axes[i, j].axis("off")
    path = out / "alignment.png"
    _save(fig, path)
    return path


def alignment_section(
    data_root: Path, align_ckpt: Path, size: int, out: Path, n: int = 200, seed: int = 1
) -> list[str]:
    """The report's alignment figures (:func:`cianet.evaluation.alignment.evaluate_alignment` on ``n`` demo
    images; the JSON report goes to ``out``), or a line saying why there are none."""
    if not align_ckpt.exists():
        return ["No alignment checkpoint."]
    rep = evaluate_alignment(align_ckpt, data_root, n=n, seed=seed, size=size, out=out)
    w, b = rep["warp"], rep.get("bounds", {})
    lines = [
        f"Measured on {rep['n_images']} of the demo's phantom images (`cianet align-eval --align "
        f"{align_ckpt.parent.name}/{align_ckpt.name} --data-root {data_root.name} --n {n} --seed {seed}`; "
        f"{out.name} holds the full report):",
        "",
        f"- known random warps (rotations up to 12 degrees, scales 0.85-1.15, shifts up to 6% of the width): "
        f"{100 * w['share_removed']:.1f}% of the warp removed (residual {w['residual_px']:.2f} px vs "
        f"{w['baseline_px']:.2f} px for the warp alone, in pixels of the {size} px image);",
    ]
    if b:
        lines.append(f"- predicted parameters within 1% of a bound: {100 * b['share_params']:.1f}%;")
    t = rep.get("truth", {}).get("deformed")
    if t and t.get("n"):
        lines.append(
            f"- the phantom's true deformations (synth_truth.csv, {t['n']} deformed images): "
            f"{100 * t['share_removed']:.1f}% removed (residual {t['residual_px']:.2f} px vs "
            f"{t['baseline_px']:.2f} px); the truth records the scan deformation only, not the phantom's "
            "anatomical variation, which the alignment also normalizes (docs/method.md)."
        )
    return lines


def figure_predictions(runs: dict[str, Path], out: Path, n: int = 4) -> tuple[Path | None, Path | None]:
    """attention.png (CIA-Net: image, negative, |M+ - M-|) and boxes.png (true vs predicted, both models)."""
    loaded = {k: load_run(v, device="cpu") for k, v in runs.items()}
    test_ds = loaded["cianet"].test_ds
    picks = [i for i in range(len(test_ds)) if test_ds.names[i] in test_ds.boxes][:n]
    if not picks:
        return None, None
    plt = _plt()
    preds = {}
    for kind, run in loaded.items():
        ds = run.test_ds
        batch = collate([ds[ds.names.index(test_ds.names[i])] for i in picks])
        batch = align_batch(run.align_net, batch)
        with torch.no_grad():
            preds[kind] = (batch, forward_grids(run.model, batch, upsample=True))
    # lazy: matplotlib is needed for plots only
    from matplotlib.colors import ListedColormap

    blue = ListedColormap(["deepskyblue"])
    cb, co = preds["cianet"]
    fig, axes = _image_grid(len(picks), 3, 1.71, 0.34)
    for r in range(len(picks)):
        axes[r, 0].imshow(cb["image"][r, 0], cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_title(f"{test_ds.names[picks[r]]} (aligned)", fontsize=8, y=1.0)
        axes[r, 1].imshow(cb["neg"][r, 0], cmap="gray", vmin=0, vmax=1)
        axes[r, 1].set_title("paired negative", fontsize=8, y=1.0)
        axes[r, 2].imshow(cb["image"][r, 0], cmap="gray", vmin=0, vmax=1)
        s = cb["image"].shape[-1]
        axes[r, 2].imshow(co["delta"][r].numpy(), cmap="jet", alpha=0.45, extent=(0, s, s, 0))
        axes[r, 2].set_title("attention |M+ - M-|", fontsize=8, y=1.0)
        for a in axes[r]:
            a.axis("off")
    att = out / "attention.png"
    _save(fig, att)

    fig, axes = _image_grid(len(picks), len(preds), 2.03, 0.3, top=0.3)
    for c, (kind, (batch, o)) in enumerate(preds.items()):
        s = batch["image"].shape[-1]
        probs = torch.sigmoid(o["test_logits"][:, : len(BOX_LABELS)]).numpy()
        for r in range(len(picks)):
            ax = axes[r, c]
            ax.imshow(batch["image"][r, 0], cmap="gray", vmin=0, vmax=1)
            boxes = batch["boxes"][r]
            for b in boxes[boxes[:, 0] >= 0]:
                k = int(b[0])
                ax.add_patch(plt.Rectangle((b[1], b[2]), b[3], b[4], fill=False, ec="lime", lw=1.5))
                mask = probs[r, k] > 0.5  # (U, U) cells of the test grid over the S x S image
                if mask.any():
                    ax.imshow(
                        np.ma.masked_where(~mask, mask.astype(float)),
                        cmap=blue,
                        vmin=0,
                        vmax=1,
                        alpha=0.45,
                        extent=(0, s, s, 0),
                        interpolation="nearest",
                    )
                ax.set_title(f"{kind}: {BOX_LABELS[k]}", fontsize=8, y=1.0)
            ax.axis("off")
    fig.suptitle("green: true box; blue: predicted cells (p > 0.5)", fontsize=9)
    bx = out / "boxes.png"
    _save(fig, bx)
    return att, bx


def figure_roc(runs: dict[str, Path], out: Path) -> Path | None:
    plt = _plt()
    fig, axes = plt.subplots(2, 4, figsize=(9.84, 5.25))
    set_margins(fig, (0.42, 0.34, 0.15, 0.29))
    any_curve = False
    for kind, run_dir in runs.items():
        if not (run_dir / PREDICTIONS).exists():
            continue
        z = read_predictions(run_dir)
        n_box = len(BOX_LABELS)
        ranks = z.get("evidence", z["scores"])  # the evidence does not tie where scores saturate at 1.0
        curves = roc_curves(ranks[:, :n_box], z["labels"][:, :n_box], BOX_LABELS)
        for k, name in enumerate(BOX_LABELS):
            if name in curves:
                fpr, tpr = curves[name]
                axes.flat[k].plot(fpr, tpr, label=kind)
                any_curve = True
    for k, name in enumerate(BOX_LABELS):
        ax = axes.flat[k]
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_title(name, fontsize=9, y=1.0)
        ax.legend(fontsize=7, loc="lower right")
    if not any_curve:
        return None
    path = out / "roc.png"
    _save(fig, path)
    return path


def negatives_section(run_dir: Path) -> list[str]:
    """One paragraph: what CIA-Net contrasted its images with (the run's negatives.json counts), or nothing
    for a run that predates the pairing record."""
    try:
        counts = json.loads((run_dir / NEGATIVES_JSON).read_text())
    except (OSError, ValueError):
        return []
    return [f"CIA-Net's {counts_line(counts)} (per image in `runs/cianet/negatives.csv`).", ""]


def learning_curves_section(curves: dict) -> list[str]:
    """Whether each model reached its plateau on the validation images (figure: Learning curves); nothing when
    no run validated."""
    if all(c is None for c in curves.values()):
        return []
    return [
        "## Convergence",
        "",
        "Validation images (a share of the training patients, never trained on) scored after every epoch; the "
        'figure "Learning curves" below draws them.',
        "",
        *[f"- {plateau_sentence(name, curve)}" for name, curve in curves.items()],
        "",
    ]


def _grid_words(run_dir: Path, size: int) -> str:
    """E.g. "a 16 x 16 grid (8 px cells)": the grid the run's configuration gives at ``size`` px."""
    model = load_config(Path(run_dir) / "config.yaml").model
    side = grid_side(size, model.output_stride, model.last_stage)
    return f"a {side} x {side} grid ({size // side} px cells)"


def write_demo_report(
    out: Path, runs: dict[str, Path], canonical: Path, align_ckpt: Path, timings: dict[str, float], settings: dict
) -> Path:
    metrics = {k: json.loads((v / "metrics.json").read_text()) for k, v in runs.items()}
    for m in metrics.values():  # JSON null -> NaN for the tables
        for row in m["localization"].values():
            for c, v in row.items():
                row[c] = float("nan") if v is None else v
        m["auc"] = {c: (float("nan") if v is None else v) for c, v in m["auc"].items()}
    figs = out / "figures"
    figs.mkdir(exist_ok=True)
    images: list[tuple[str, Path | None]] = [("Canonical chest", figure_canonical(canonical, figs))]
    size = settings["size"]
    images.append(
        ("Original vs aligned (deformed phantom images)", figure_alignment(out / "data", align_ckpt, size, figs))
    )
    att, bx = figure_predictions(runs, figs)
    images += [("CIA-Net attention maps", att), ("Predicted vs true boxes", bx), ("ROC curves", figure_roc(runs, figs))]
    named = {"Base": metrics["baseline"], "CIA-Net": metrics["cianet"]}
    curves = {"Base": read_curve(runs["baseline"]), "CIA-Net": read_curve(runs["cianet"])}
    images.append(("Learning curves", figure_learning_curves(curves, figs / "learning_curves.png")))
    lines = [
        "# cianet demo report",
        "",
        f"Synthetic phantom: {settings['n_images']} images at {size} px; tiny recipe (ResNet-18), "
        f"{settings['epochs']} epochs on {_grid_words(runs['cianet'], size)}; both models see aligned images. "
        "Training: 80% annotated + 50% unannotated images (paper Table 1 protocol), patient-disjoint from the "
        "test images. Localization: fold 0 of the "
        f"annotated images ({metrics['cianet'].get('n_boxes')} boxes). AUC: those images plus the held-out "
        f"unannotated images of patients without training images ({metrics['cianet'].get('n_images')} images)."
        + (
            f" Validation: {settings['val_share']:.0%} of the training patients, held out of training and scored "
            "after every epoch (Convergence)."
            if settings.get("val_share")
            else ""
        ),
        "",
        *negatives_section(runs["cianet"]),
        "## Verdict",
        "",
        *verdict_section(runs, metrics),
        "",
        "## Localization accuracy (Table 1 layout)",
        "",
        localization_markdown(named),
        "",
        "## Calibration-free localization",
        "",
        *calibration_free_section(named),
        "## Classification AUC",
        "",
        "Images ranked by their MIL evidence sum_j -log(1 - p_j) (the score 1 - prod_j(1 - p_j) rounds to 1.0 in "
        "float32 for confident images and would tie them).",
        "",
        auc_markdown(named),
        "",
        "## Alignment",
        "",
        *alignment_section(out / "data", align_ckpt, size, out / "alignment.json"),
        "",
        *learning_curves_section(curves),
        "## Figures",
        "",
    ]
    for title, path in images:
        if path is not None:
            lines += [f"### {title}", "", f"![{title}](figures/{path.name})", ""]
    lines += ["## Time per stage (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in timings.items()]
    report = out / "report.md"
    atomic_write_text(report, "\n".join(lines) + "\n")
    return report
