"""``cianet view``: a self-contained static web page of results, ``SITE/index.html`` plus ``SITE/img/``.

Sources (one or more folders):

- a ``cianet predict`` output folder (``summary.json``, ``<stem>.json``, ``<stem>.heatmaps.npz``): a gallery of
  its images with the predicted boxes, the box classes' heatmaps and the contrast attention as layers;
- an evaluated run (``metrics.json``, ``predictions.npz`` from ``cianet evaluate``): its tables (localization
  accuracy, AUC, bootstrap intervals) and plots, and a gallery of its test images with their scores, true
  labels and true boxes (each with the IoU of the predicted region) when the run's data root is readable.

Ground truth (labels and boxes) comes from the data root of a run or of ``data_root``, matched by file name.
The page has no server, network or third-party code: the data is a JSON block in the page, the script and
style are written here, the images are files beside it, so the folder opens from disk and can be zipped.
Filters and toggles also read the URL fragment (``index.html#class=Nodule&min=0.5&sort=asc&hide=heat``), so a
view can be shared as a link.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import shlex
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cianet.config import load_config
from cianet.data.io import XrayReadError, load_xray
from cianet.errors import InputError, UsageError
from cianet.evaluation.plots import PLOT_FILES, loss_figure
from cianet.inference.domain import data_root_kind
from cianet.inference.overlay import class_colors, colormap_table
from cianet.inference.result_files import read_heatmaps
from cianet.labels import BOX_LABELS, LABELS, label_set_from
from cianet.metrics import format_probability
from cianet.run.protocol import load_index
from cianet.run.scoring import read_predictions
from cianet.utils.atomic import atomic_write_bytes, atomic_write_text, strict_json
from cianet.utils.progress import progress_bar

DISPLAY_MAX = 512  # longest side of the gallery's X-ray images
HEAT_FLOOR = 0.05  # heatmap cells below this probability stay transparent, so the anatomy shows through


@dataclass
class SiteSummary:
    """What :func:`build_site` wrote."""

    index: Path
    images: int
    tables: int
    plots: int
    notes: list[str]


# ------------------------------------------------------------------------------------------ sources
def source_kind(folder: Path) -> str:
    """``"predict"`` (a predict output folder) or ``"run"`` (an evaluated run); InputError otherwise."""
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    if (folder / "summary.json").is_file() and (folder / "predictions.csv").is_file():
        return "predict"
    if (folder / "metrics.json").is_file():
        return "run"
    if (folder / "checkpoint.pt").is_file():
        raise InputError(
            f"{folder}: the run has not been evaluated: run `{evaluate_command(folder)}` first, then "
            f"`cianet view {folder}`"
        )
    raise InputError(
        f"{folder}: neither a `cianet predict` output folder (summary.json, predictions.csv) nor an "
        "evaluated run (metrics.json)"
    )


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from exc


def load_truth(data_root: str | None, run_config: Path | None = None, tables: dict[str, str] | None = None):
    """The image index (labels, boxes) of ``data_root`` or of a run's config; None when neither is readable.

    ``tables``: ``entry_csv``, ``bbox_csv``, ``dataset`` (``cianet view --entry-csv --bbox-csv --dataset``)
    where the data root's own tables are not found or not wanted."""
    cfg = load_config(run_config) if run_config is not None and run_config.is_file() else load_config("paper")
    if data_root:
        cfg.data.data_root = data_root
    for key, value in (tables or {}).items():
        if value:
            setattr(cfg.data, key, value)
    if not cfg.data.data_root or not Path(cfg.data.data_root).is_dir():
        return None
    return load_index(cfg)


def prediction_items(folder: Path) -> list[dict[str, Any]]:
    """The per-image records of a predict output folder (``<stem>.json`` next to each ``.heatmaps.npz`` or listed
    in predictions.csv), in file order."""
    items = []
    for path in sorted(folder.rglob("*.json")):
        if path.parent == folder and path.name in ("summary.json", "coco.json", "coco_results.json"):
            continue
        rec = read_json(path)
        if not isinstance(rec, dict) or "probabilities" not in rec:
            continue
        rec["_stem"] = str(path.relative_to(folder).with_suffix(""))
        rec["_folder"] = folder
        items.append(rec)
    return items


def find_image(source: str, folder: Path) -> Path | None:
    """The image file a prediction came from: its path as recorded, or relative to the output folder's parent."""
    for cand in (Path(source), folder.parent / source, folder / source):
        if cand.is_file():
            return cand
    return None


# ------------------------------------------------------------------------------------------ images
def display_image(image: np.ndarray) -> np.ndarray:
    """Gray ``(H, W)`` [0, 1] -> uint8, longest side at most DISPLAY_MAX (box filter)."""
    h, w = image.shape
    f = min(1.0, DISPLAY_MAX / max(h, w))
    u8 = np.clip(np.rint(np.asarray(image, np.float32) * 255), 0, 255).astype(np.uint8)
    if f < 1.0:
        u8 = np.asarray(Image.fromarray(u8).resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BOX))
    return u8


def rgba_layer(values: np.ndarray, cmap: str, vmax: float = 1.0, alpha: float = 0.6) -> np.ndarray:
    """A float map -> RGBA uint8 through a matplotlib colormap; cells below HEAT_FLOOR * vmax transparent."""
    # lazy: matplotlib is needed for plots only
    from matplotlib import colormaps

    v = np.clip(np.nan_to_num(np.asarray(values, np.float32)) / max(vmax, 1e-12), 0.0, 1.0)
    rgba = colormaps[cmap](v)
    rgba[..., 3] = np.where(v < HEAT_FLOOR, 0.0, alpha)
    return np.rint(rgba * 255).astype(np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def jpeg_bytes(gray: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, format="JPEG", quality=88)
    return buf.getvalue()


class ImageWriter:
    """Writes the page's image files into ``SITE/img`` and returns their paths relative to the page."""

    def __init__(self, site: Path) -> None:
        self.site, self.n = site, 0
        (site / "img").mkdir(parents=True, exist_ok=True)

    def write(self, name: str, data: bytes) -> str:
        atomic_write_bytes(self.site / "img" / name, data)
        self.n += 1
        return f"img/{name}"


# ------------------------------------------------------------------------------------------ gallery
def truth_of(index, name: str) -> dict[str, Any] | None:
    """``{"labels", "boxes"}`` of image ``name`` (its file name) in ``index``; None when unknown."""
    if index is None:
        return None
    key = Path(name).name
    if key not in index:
        return None
    rec = index[key]
    return {
        "labels": list(rec.labels),
        "boxes": [{"label": b.label, "x": b.x, "y": b.y, "w": b.w, "h": b.h} for b in rec.boxes],
    }


def predicted_entry(rec: dict[str, Any], k: int, writer: ImageWriter, index, notes: list[str]) -> dict[str, Any]:
    """A gallery entry of one predict record: base image, heatmap and attention layers, boxes, truth."""
    folder: Path = rec["_folder"]
    w, h = (int(v) for v in rec["image_size"])
    entry: dict[str, Any] = {
        "id": k,
        "name": Path(rec["source"]).name,
        "stem": rec["_stem"],
        "width": w,
        "height": h,
        "probabilities": rec["probabilities"],
        "shown": shown_probabilities(rec["probabilities"]),
        "boxes": rec.get("boxes", []),
        "negative": rec.get("negative"),
        "image": None,
        "heat": {},
        "attention": None,
        "truth": truth_of(index, rec["source"]),
        "domain": rec.get("domain"),
        "model": (rec.get("model") or {}).get("id"),
    }
    src = find_image(rec["source"], folder)
    image = None
    if src is not None:
        try:
            image = load_xray(src)
        except (XrayReadError, OSError) as exc:
            notes.append(f"{src}: unreadable now ({exc})")
    if image is not None:
        entry["image"] = writer.write(f"{k}.jpg", jpeg_bytes(display_image(image)))
    elif rec.get("overlay") and (folder / Path(rec["_stem"]).parent / rec["overlay"]).is_file():
        overlay = folder / Path(rec["_stem"]).parent / rec["overlay"]
        entry["overlay"] = writer.write(f"{k}.overlay.png", overlay.read_bytes())
        notes.append(f"{rec['source']}: image file not found; showing its overlay PNG")
    else:
        notes.append(f"{rec['source']}: image file not found")
    heat_file = rec.get("heatmaps")
    if heat_file:
        heat_path = folder / Path(rec["_stem"]).parent / heat_file
        if heat_path.is_file():
            z = read_heatmaps(heat_path)
            for lab, hm in zip(z["labels"].tolist(), z["heatmaps"]):
                if float(hm.max()) >= HEAT_FLOOR:
                    entry["heat"][lab] = writer.write(
                        f"{k}.heat.{len(entry['heat'])}.png", png_bytes(rgba_layer(hm, "jet"))
                    )
            if len(z["heatmaps"]):
                entry["heat"]["*"] = writer.write(
                    f"{k}.heat.max.png", png_bytes(rgba_layer(z["heatmaps"].max(axis=0), "jet"))
                )
            if "attention" in z:
                att = z["attention"]
                entry["attention"] = writer.write(
                    f"{k}.att.png", png_bytes(rgba_layer(att, "inferno", vmax=float(att.max()) or 1.0))
                )
    return entry


def run_label_set(run_dir: Path) -> tuple[list[str], list[str]]:
    """The classes a run was trained and scored on (its config's label set; ChestX-ray14 by default)."""
    cfg = load_config(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else None
    classes = label_set_from(cfg.data.labels if cfg else None, cfg.data.box_labels if cfg else None)
    return list(classes.names), list(classes.box_names)


def grid_affine(params, side: int, size: tuple[int, int]) -> list[float]:
    """``[a, b, c, d, e, f]``: test-grid cell coordinates ``(col, row)`` of a ``side x side`` grid over the aligned
    network input -> pixels ``(x, y)`` of the image file of ``size = (W, H)``: ``x = a col + b row + c``,
    ``y = d col + e row + f`` (the alignment's affine map, docs/architecture.md "Alignment parameters")."""
    tx, ty, sx, sy, th = (float(v) for v in params)
    m00, m01, m10, m11 = sx * math.cos(th), -sy * math.sin(th), sx * math.sin(th), sy * math.cos(th)
    w, h = float(size[0]), float(size[1])
    return [
        w * m00 / side,
        w * m01 / side,
        w / 2 * (1 + tx - m00 - m01),
        h * m10 / side,
        h * m11 / side,
        h / 2 * (1 + ty - m10 - m11),
    ]


def grid_block(grid: np.ndarray, box_labels: Sequence[str]) -> dict[str, Any]:
    """A run's uint8 test grid ``(C, g, g)`` of one image for the page (base64, class by class, row by row)."""
    g = np.ascontiguousarray(grid, np.uint8)
    return {
        "side": int(g.shape[-1]),
        "classes": list(box_labels)[: g.shape[0]],
        "data": base64.b64encode(g.tobytes()).decode("ascii"),
    }


def shown_probabilities(probs: dict[str, float]) -> dict[str, str]:
    """The text the page shows for each probability (:func:`cianet.metrics.format_probability`: "> 0.9999",
    never a rounded 1.000)."""
    return {lab: format_probability(v) for lab, v in probs.items()}


def run_predictions(
    run_dir: Path, name: str, labels: Sequence[str], box_labels: Sequence[str], notes: list[str]
) -> dict[str, dict[str, Any]]:
    """Image name -> what an evaluated run stored for it (``predictions.npz``): probabilities, the per-box IoUs
    in evaluation order, and, when ``evaluate`` kept it, the low-resolution test grid and its alignment."""
    try:
        pred = read_predictions(run_dir)
    except InputError as exc:
        notes.append(str(exc))
        return {}
    if "names" not in pred:
        notes.append(
            f"{run_dir}: predictions.npz has no image names (evaluated by an older cianet); evaluate it "
            f"again for a gallery: cianet evaluate --run {run_dir}"
        )
        return {}
    if "grids" not in pred:
        notes.append(
            f"{run_dir}: predictions.npz holds no test grids (written by an older cianet), so no predicted "
            f"regions are drawn: evaluate it again with `cianet evaluate --run {run_dir}`"
        )
    ious: dict[str, list[float]] = {}
    for n, v in zip(pred.get("box_names", []), pred["ious"]):
        ious.setdefault(str(n), []).append(float(v))
    grids = {str(n): k for k, n in enumerate(pred.get("grid_names", []))}
    out = {}
    for i, n in enumerate(str(v) for v in pred["names"]):
        k = grids.get(n)
        probs = {lab: float(v) for lab, v in zip(labels, pred["scores"][i])}
        out[n] = {
            "run": name,
            "probabilities": probs,
            "shown": shown_probabilities(probs),
            "box_ious": ious.get(n, []),
            "grid": None if k is None else grid_block(pred["grids"][k], box_labels),
            "params": None if k is None else [float(v) for v in pred["grid_params"][k]],
        }
    return out


def run_gallery(
    runs: Sequence[tuple[dict[str, dict[str, Any]], Sequence[str]]],
    writer: ImageWriter,
    index,
    max_images: int,
    notes: list[str],
    first_id: int,
) -> list[dict[str, Any]]:
    """Gallery entries of evaluated runs' test images, one card per image with every run that scored it side by
    side (``runs``: per run, :func:`run_predictions` and its box classes): the regions each run predicts, its
    heatmap, the true boxes with each run's IoU. Images with boxes come first, then by their highest score."""
    if index is None:
        notes.append("the runs' data root is not readable (pass --data-root): no test-image gallery")
        return []
    names = list(dict.fromkeys(n for preds, _ in runs for n in preds))
    has_box = {n: any(p[n]["box_ious"] for p, _ in runs if n in p) for n in names}
    best = {n: max(max(p[n]["probabilities"].values(), default=0.0) for p, _ in runs if n in p) for n in names}
    order = sorted(names, key=lambda n: (not has_box[n], -best[n]))
    out, unreadable = [], 0
    for name in order[:max_images]:
        rec = index[name] if name in index else None
        if rec is None or rec.path is None:
            unreadable += 1
            continue
        try:
            image = load_xray(rec.path)
        except (XrayReadError, OSError):
            unreadable += 1
            continue
        k = first_id + len(out)
        h, w = image.shape
        truth = truth_of(index, name)
        item_runs = []
        for preds, box_labels in runs:
            if name not in preds:
                continue
            p = preds[name]
            box_ious = iter(p["box_ious"])  # the IoU of each true box of a box class, in evaluation order
            run = {
                "run": p["run"],
                "probabilities": p["probabilities"],
                "shown": p["shown"],
                "grid": p["grid"],
                "ious": [
                    next(box_ious, None) if b["label"] in box_labels else None
                    for b in (truth["boxes"] if truth else [])
                ],
            }
            if p["grid"] is not None:
                run["affine"] = grid_affine(p["params"], p["grid"]["side"], (w, h))
            item_runs.append(run)
        if truth and len(runs) == 1:  # one run: each true box also carries its IoU (as pages always had)
            for b, v in zip(truth["boxes"], item_runs[0]["ious"] if item_runs else []):
                if v is not None:
                    b["iou"] = v
        out.append(
            {
                "id": k,
                "name": name,
                "stem": name,
                "width": int(w),
                "height": int(h),
                "truth": truth,
                "runs": item_runs,
                "probabilities": item_runs[0]["probabilities"],
                "boxes": [],
                "heat": {},
                "attention": None,
                "image": writer.write(f"{k}.jpg", jpeg_bytes(display_image(image))),
            }
        )
    if unreadable:
        notes.append(f"{unreadable} test images are not in the data root's index or have no file there")
    if len(order) > max_images:
        notes.append(f"showing {max_images} of {len(order)} test images (--max-images)")
    return out


def run_entries(
    run_dir: Path,
    labels: Sequence[str],
    box_labels: Sequence[str],
    writer: ImageWriter,
    index,
    max_images: int,
    notes: list[str],
    first_id: int,
) -> list[dict[str, Any]]:
    """Gallery entries of one evaluated run's test images (:func:`run_gallery` of that run alone)."""
    preds = run_predictions(run_dir, run_dir.name, labels, box_labels, notes)
    return run_gallery([(preds, box_labels)], writer, index, max_images, notes, first_id) if preds else []


# ------------------------------------------------------------------------------------------ tables
def fmt(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else f"{float(v):.{digits}f}"


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return (
        f'<div class="scroll"><table class="{html.escape(cls)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def run_section(run_dir: Path, writer: ImageWriter, name: str | None = None) -> tuple[str, int, int]:
    """HTML of an evaluated run's tables and plots; ``(html, tables, plots)``."""
    m = read_json(run_dir / "metrics.json")
    parts = [
        f'<section class="run"><h2>Run {html.escape(name or run_dir.name)}</h2>',
        f"<p>{html.escape(str(m.get('n_images', '?')))} test images, "
        f"{html.escape(str(m.get('n_boxes', '?')))} boxes.{run_provenance(run_dir)}</p>",
    ]
    if not m.get("ci"):  # trained (fit scores its test split) but never through `cianet evaluate`
        parts.append(
            '<p class="note">This run was not evaluated with <code>cianet evaluate</code>: no ROC/PR curves '
            "and no bootstrap intervals. Run <code>"
            f"{html.escape(evaluate_command(run_dir))}</code> and view it again.</p>"
        )
    tables = plots = 0
    loc = m.get("localization") or {}
    if loc:
        ts = sorted(loc, key=float)
        classes = list(loc[ts[0]])
        parts += [
            "<h3>Localization accuracy</h3>",
            html_table(
                ["T(IoU)", *map(str, classes)],
                [[str(t), *(fmt(loc[t].get(c)) for c in classes)] for t in ts],
                "metrics loc",
            ),
        ]
        tables += 1
    auc = m.get("auc") or {}
    if auc:
        parts += ["<h3>AUC</h3>", html_table(list(map(str, auc)), [[fmt(v) for v in auc.values()]], "metrics auc")]
        tables += 1
    ci = m.get("ci") or {}
    if ci:
        rows = []
        if ci.get("auc"):
            rows.append(
                ["mean AUC", fmt(ci["auc"].get("value")), fmt(ci["auc"].get("low")), fmt(ci["auc"].get("high"))]
            )
        for t, r in (ci.get("localization") or {}).items():
            rows.append([f"localization, T(IoU) = {t}", fmt(r.get("value")), fmt(r.get("low")), fmt(r.get("high"))])
        conf = round(100 * float(ci.get("confidence", 0.95)))
        parts += [
            f"<h3>Bootstrap {conf}% intervals ({html.escape(str(ci.get('n_boot', '?')))} resamples)</h3>",
            html_table(["metric", "value", "low", "high"], rows, "metrics ci"),
        ]
        tables += 1
    figures = []
    for kind, file in PLOT_FILES.items():
        if (run_dir / file).is_file():
            figures.append((kind, writer.write(f"plot{writer.n}.{file}", (run_dir / file).read_bytes())))
        elif kind == "loss":
            png = loss_figure(run_dir / "log.jsonl")
            if png is not None:
                figures.append((kind, writer.write(f"plot{writer.n}.{file}", png)))
    if figures:
        parts.append(
            '<div class="plots">'
            + "".join(
                f'<figure><img class="plot" data-kind="{html.escape(k)}" src="{html.escape(src)}" '
                f'alt="{html.escape(k)}"><figcaption>{html.escape(k)}</figcaption></figure>'
                for k, src in figures
            )
            + "</div>"
        )
        plots = len(figures)
    parts.append("</section>")
    return "".join(parts), tables, plots


def evaluate_command(run_dir: Path) -> str:
    """The command that evaluates ``run_dir`` (shell-quoted)."""
    return f"cianet evaluate --run {shlex.quote(str(run_dir))}"


def run_provenance(run_dir: Path) -> str:
    """ " Trained on ...": the kind of data set the run trained on (cianet.inference.domain), "" when unknown."""
    if not (run_dir / "config.yaml").is_file():
        return ""
    try:
        kind, _ = data_root_kind(load_config(run_dir / "config.yaml").data.data_root)
    except (ValueError, OSError):
        return ""
    if kind in ("phantom", "semi-synthetic"):
        return f" Trained and tested on a {kind} data set written by <code>cianet synth</code>, not on real X-rays."
    return "" if kind == "unknown" else " Trained on real X-rays."


# ------------------------------------------------------------------------------------------ the page
def build_site(
    sources: Sequence[str | Path],
    out: str | Path | None = None,
    data_root: str | None = None,
    max_images: int = 1000,
    progress: bool | None = None,
    tables: dict[str, str] | None = None,
) -> SiteSummary:
    """Write ``out/index.html`` (default ``<first source>/site``) for predict folders and evaluated runs.

    ``tables``: the ground truth's ``entry_csv``, ``bbox_csv``, ``dataset`` (:func:`load_truth`). A build that
    fails removes the ``img/`` folder it started, so that nothing is left to block the retry."""
    if not sources:
        raise UsageError("give at least one predict output folder or evaluated run")
    if max_images < 1:
        raise UsageError(f"--max-images must be >= 1, got {max_images}")
    folders = [Path(s) for s in sources]
    kinds = [source_kind(f) for f in folders]
    site = Path(out) if out is not None else folders[0] / "site"
    if site.exists() and not site.is_dir():
        raise UsageError(f"--out {site} exists and is not a folder")
    if (site / "img").exists():  # images of an earlier page would linger under new ids: replace ours only
        if not is_our_site(site):
            raise UsageError(
                f"--out {site} already holds an img/ folder that `cianet view` did not write; choose "
                "a new or empty folder"
            )
        shutil.rmtree(site / "img")
    writer = ImageWriter(site)
    try:
        return _build(folders, kinds, site, writer, data_root, max_images, progress, tables)
    except BaseException:
        shutil.rmtree(site / "img", ignore_errors=True)  # half a gallery would make the retry refuse the folder
        raise


def _build(
    folders: list[Path],
    kinds: list[str],
    site: Path,
    writer: ImageWriter,
    data_root: str | None,
    max_images: int,
    progress: bool | None,
    truth_tables: dict[str, str] | None,
) -> SiteSummary:
    notes: list[str] = []
    entries: list[dict[str, Any]] = []
    sections: list[str] = []
    banners: list[str] = []
    tables = plots = 0
    models: list[dict[str, Any]] = []
    box_classes: list[str] = []
    run_dirs = [f for f, k in zip(folders, kinds) if k == "run"]
    run_names = unique_names(run_dirs)
    if run_dirs:
        runs, index = [], load_truth(data_root, run_dirs[0] / "config.yaml", truth_tables)
        for folder, name in zip(run_dirs, run_names):
            html_part, t, p = run_section(folder, writer, name)
            sections.append(html_part)
            tables, plots = tables + t, plots + p
            run_labels, run_box = run_label_set(folder)
            box_classes += run_box
            runs.append((run_predictions(folder, name, run_labels, run_box, notes), run_box))
        if len(run_dirs) > 1:
            sections.insert(0, comparison_section(run_dirs, run_names))
            tables += 1
        entries += run_gallery([r for r in runs if r[0]], writer, index, max_images, notes, 0)
    for folder, kind in zip(folders, kinds):
        if kind != "predict":
            continue
        summary = read_json(folder / "summary.json")
        if isinstance(summary.get("model"), dict):
            models.append(summary["model"])
        banners += provenance_banners(folder, summary)
        run_cfg = run_dirs[0] / "config.yaml" if run_dirs else None
        index = load_truth(data_root, run_cfg, truth_tables) if (data_root or run_cfg) else None
        recs = prediction_items(folder)
        if len(recs) > max_images - len(entries):
            notes.append(
                f"{folder}: showing the first {max_images - len(entries)} of {len(recs)} images (--max-images)"
            )
            recs = recs[: max(0, max_images - len(entries))]
        for rec in progress_bar(recs, desc="view", disable=None if progress is None else not progress):
            entries.append(predicted_entry(rec, len(entries), writer, index, notes))
    labels = list(dict.fromkeys(lab for it in entries for lab in it["probabilities"])) or list(LABELS)
    data = {
        "labels": labels,
        "items": entries,
        "models": models,
        "notes": notes,
        "banners": banners,
        "colors": page_colors(box_classes),
        "colormaps": page_colormaps(),
        "heat_floor": HEAT_FLOOR,
    }
    title = "cianet results: " + ", ".join(f.name for f in folders)
    atomic_write_text(site / "index.html", render_page(title, data, "".join(sections)))
    return SiteSummary(site / "index.html", len(entries), tables, plots, notes)


def unique_names(run_dirs: Sequence[Path]) -> list[str]:
    """Each run's name on the page: its folder's name, with its parent's where two runs share one."""
    names = [d.name for d in run_dirs]
    return [f"{d.parent.name}/{d.name}" if names.count(d.name) > 1 else d.name for d in run_dirs]


def page_colors(box_classes: Sequence[str]) -> dict[str, str]:
    """Box class -> the colour the overlay PNG gives it (``cianet.inference.overlay.class_colors``), as #rrggbb."""
    classes = list(dict.fromkeys(box_classes)) or list(BOX_LABELS)
    return {lab: hex_color(rgb) for lab, rgb in class_colors(classes).items()}


def hex_color(rgb: Sequence[int]) -> str:
    """An (r, g, b) of 0-255 integers (numpy's included) as CSS's #rrggbb."""
    return "#" + "".join(f"{int(v):02x}" for v in rgb)


def page_colormaps(stops: int = 17) -> dict[str, list[str]]:
    """The heatmap ("jet", as the overlay PNG) and attention ("inferno") colour tables as ``stops`` colours."""

    def hexes(name: str) -> list[str]:
        table = colormap_table(name)
        return [hex_color(table[int(round(i * 255 / (stops - 1)))]) for i in range(stops)]

    return {"heat": hexes("jet"), "attention": hexes("inferno")}


def provenance_banners(folder: Path, summary: dict[str, Any]) -> list[str]:
    """The page's warnings for a predict folder whose model was trained on a phantom (and read other images)."""
    data = summary.get("training_data") or {}
    if data.get("kind") not in ("phantom", "semi-synthetic"):
        return []
    n = summary.get("out_of_domain") or 0
    line = (
        f"{folder.name}: the model was trained on a {data['kind']} data set only ({data.get('name', '?')}); "
        "cianet ships no weights for real X-rays."
    )
    if n:
        line += (
            f" {n} of {summary.get('predicted', '?')} images here were not written by `cianet synth`: its "
            "predictions on them mean nothing."
        )
    return [line]


def comparison_section(run_dirs: Sequence[Path], names: Sequence[str]) -> str:
    """A table of the runs side by side: mean AUC and class-mean localization accuracy, with their bootstrap
    intervals where ``cianet evaluate`` computed them."""
    metrics = [read_json(d / "metrics.json") for d in run_dirs]
    ts = sorted({t for m in metrics for t in (m.get("localization") or {})}, key=float)

    def cell(value: Any, ci: dict[str, Any] | None) -> str:
        if value is None:
            return "n/a"
        if ci and ci.get("low") is not None and ci.get("high") is not None:
            return f"{float(value):.3f} [{float(ci['low']):.3f}, {float(ci['high']):.3f}]"
        return f"{float(value):.3f}"

    rows = []
    for name, m in zip(names, metrics):
        ci = m.get("ci") or {}
        loc = m.get("localization") or {}
        rows.append(
            [
                name,
                str(m.get("n_images", "?")),
                str(m.get("n_boxes", "?")),
                cell((m.get("auc") or {}).get("Mean"), ci.get("auc")),
                *(cell((loc.get(t) or {}).get("Mean"), (ci.get("localization") or {}).get(t)) for t in ts),
            ]
        )
    same = len({(m.get("n_images"), m.get("n_boxes")) for m in metrics}) == 1
    caption = "the same test set" if same else "test sets of different sizes: not directly comparable"
    return (
        '<section class="compare"><h2>Runs compared</h2>'
        f"<p>{len(names)} runs on {html.escape(caption)}; [low, high]: bootstrap interval "
        "(<code>cianet evaluate</code>).</p>"
        + html_table(
            ["run", "test images", "boxes", "mean AUC", *(f"loc. acc. T(IoU)={t}" for t in ts)], rows, "metrics compare"
        )
        + "</section>"
    )


def is_our_site(site: Path) -> bool:
    """Whether ``site`` holds a page written by :func:`build_site` (its index.html carries our data block)."""
    try:
        return 'id="cianet-data"' in (site / "index.html").read_text(errors="replace")
    except OSError:
        return False


def render_page(title: str, data: dict[str, Any], sections: str) -> str:
    """The page: the sections' HTML, the data as a JSON block, our own style and script."""
    # "<" escaped: no "</script>" or "<!--" inside the data can end or confuse the script element
    blob = json.dumps(strict_json(data), allow_nan=False).replace("<", "\\u003c")
    parts = {
        "TITLE": html.escape(title),
        "SECTIONS": sections,
        "DATA": blob,
        "STYLE": asset("style.css"),
        "SCRIPT": asset("viewer.js"),
    }
    # one pass, so that a file name holding "%STYLE%" is not expanded inside the data
    return re.sub(r"%(TITLE|SECTIONS|DATA|STYLE|SCRIPT)%", lambda m: parts[m.group(1)], asset("page.html"))


def asset(name: str) -> str:
    """A file of the page's template, style or script (package data: cianet/evaluation/viewer_assets/)."""
    return files("cianet.evaluation").joinpath("viewer_assets", name).read_text(encoding="utf-8")


def __getattr__(name: str) -> str:  # PAGE, STYLE, SCRIPT: read from the package data when first asked for
    files = {"PAGE": "page.html", "STYLE": "style.css", "SCRIPT": "viewer.js"}
    if name in files:
        return asset(files[name])
    raise AttributeError(name)
