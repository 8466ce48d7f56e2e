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

import html
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cianet.errors import InputError, UsageError

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
        raise InputError(f"{folder}: the run has not been evaluated: run `cianet evaluate --run {folder}` first")
    raise InputError(f"{folder}: neither a `cianet predict` output folder (summary.json, predictions.csv) nor an "
                     "evaluated run (metrics.json)")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from exc


def load_truth(data_root: str | None, run_config: Path | None = None):
    """The image index (labels, boxes) of ``data_root`` or of a run's config; None when neither is readable."""
    from cianet.config import load_config
    from cianet.run.protocol import load_index

    cfg = load_config(run_config) if run_config is not None and run_config.is_file() else load_config("paper")
    if data_root:
        cfg.data.data_root = data_root
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
    from PIL import Image

    h, w = image.shape
    f = min(1.0, DISPLAY_MAX / max(h, w))
    u8 = np.clip(np.rint(np.asarray(image, np.float32) * 255), 0, 255).astype(np.uint8)
    if f < 1.0:
        u8 = np.asarray(Image.fromarray(u8).resize((max(1, round(w * f)), max(1, round(h * f))),
                                                   Image.Resampling.BOX))
    return u8


def rgba_layer(values: np.ndarray, cmap: str, vmax: float = 1.0, alpha: float = 0.6) -> np.ndarray:
    """A float map -> RGBA uint8 through a matplotlib colormap; cells below HEAT_FLOOR * vmax transparent."""
    from matplotlib import colormaps

    v = np.clip(np.nan_to_num(np.asarray(values, np.float32)) / max(vmax, 1e-12), 0.0, 1.0)
    rgba = colormaps[cmap](v)
    rgba[..., 3] = np.where(v < HEAT_FLOOR, 0.0, alpha)
    return np.rint(rgba * 255).astype(np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def jpeg_bytes(gray: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, format="JPEG", quality=88)
    return buf.getvalue()


class ImageWriter:
    """Writes the page's image files into ``SITE/img`` and returns their paths relative to the page."""

    def __init__(self, site: Path) -> None:
        self.site, self.n = site, 0
        (site / "img").mkdir(parents=True, exist_ok=True)

    def write(self, name: str, data: bytes) -> str:
        from cianet.utils.atomic import atomic_write_bytes

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
    return {"labels": list(rec.labels),
            "boxes": [{"label": b.label, "x": b.x, "y": b.y, "w": b.w, "h": b.h} for b in rec.boxes]}


def predicted_entry(rec: dict[str, Any], k: int, writer: ImageWriter, index, notes: list[str]) -> dict[str, Any]:
    """A gallery entry of one predict record: base image, heatmap and attention layers, boxes, truth."""
    from cianet.data.io import XrayReadError, load_xray

    folder: Path = rec["_folder"]
    w, h = (int(v) for v in rec["image_size"])
    entry: dict[str, Any] = {
        "id": k, "name": Path(rec["source"]).name, "stem": rec["_stem"], "width": w, "height": h,
        "probabilities": rec["probabilities"], "boxes": rec.get("boxes", []), "negative": rec.get("negative"),
        "image": None, "heat": {}, "attention": None, "truth": truth_of(index, rec["source"]),
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
            from cianet.inference.outputs import read_heatmaps

            z = read_heatmaps(heat_path)
            for lab, hm in zip(z["labels"].tolist(), z["heatmaps"]):
                if float(hm.max()) >= HEAT_FLOOR:
                    entry["heat"][lab] = writer.write(f"{k}.heat.{len(entry['heat'])}.png", png_bytes(rgba_layer(hm, "jet")))
            if len(z["heatmaps"]):
                entry["heat"]["*"] = writer.write(f"{k}.heat.max.png",
                                                  png_bytes(rgba_layer(z["heatmaps"].max(axis=0), "jet")))
            if "attention" in z:
                att = z["attention"]
                entry["attention"] = writer.write(f"{k}.att.png",
                                                  png_bytes(rgba_layer(att, "inferno", vmax=float(att.max()) or 1.0)))
    return entry


def run_label_set(run_dir: Path) -> tuple[list[str], list[str]]:
    """The classes a run was trained and scored on (its config's label set; ChestX-ray14 by default)."""
    from cianet.config import load_config
    from cianet.labels import label_set_from

    cfg = load_config(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else None
    classes = label_set_from(cfg.data.labels if cfg else None, cfg.data.box_labels if cfg else None)
    return list(classes.names), list(classes.box_names)


def run_entries(run_dir: Path, labels: Sequence[str], box_labels: Sequence[str], writer: ImageWriter, index,
                max_images: int, notes: list[str], first_id: int) -> list[dict[str, Any]]:
    """Gallery entries of an evaluated run's test images: scores, true labels, true boxes with their IoU.

    Images with boxes come first, then the rest by their highest score; at most ``max_images``.
    """
    from cianet.data.io import XrayReadError, load_xray
    from cianet.run.scoring import read_predictions

    try:
        pred = read_predictions(run_dir)
    except InputError as exc:
        notes.append(str(exc))
        return []
    if "names" not in pred:
        notes.append(f"{run_dir}: predictions.npz has no image names (evaluated by an older cianet); evaluate it "
                     "again for a gallery")
        return []
    if index is None:
        notes.append(f"{run_dir}: the run's data root is not readable (pass --data-root); no test-image gallery")
        return []
    names = [str(n) for n in pred["names"]]
    ious: dict[str, list[float]] = {}
    for n, v in zip(pred.get("box_names", []), pred["ious"]):
        ious.setdefault(str(n), []).append(float(v))
    order = sorted(range(len(names)), key=lambda i: (names[i] not in ious, -float(pred["scores"][i].max())))
    out, unreadable = [], 0
    for i in order[:max_images]:
        name = names[i]
        truth = truth_of(index, name)
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
        if truth is not None:  # the IoU of each true box of a box class, in evaluation order
            box_ious = iter(ious.get(name, []))
            for b in truth["boxes"]:
                if b["label"] in box_labels:
                    b["iou"] = next(box_ious, None)
        out.append({
            "id": k, "name": name, "stem": name, "width": int(image.shape[1]), "height": int(image.shape[0]),
            "probabilities": {lab: float(s) for lab, s in zip(labels, pred["scores"][i])}, "boxes": [],
            "scores_only": True, "negative": None, "heat": {}, "attention": None, "truth": truth,
            "image": writer.write(f"{k}.jpg", jpeg_bytes(display_image(image))),
        })
    if unreadable:
        notes.append(f"{run_dir}: {unreadable} test images are not in the data root's index or have no file there")
    if len(order) > max_images:
        notes.append(f"{run_dir}: showing {max_images} of {len(order)} test images (--max-images)")
    return out


# ------------------------------------------------------------------------------------------ tables
def fmt(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else f"{float(v):.{digits}f}"


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def run_section(run_dir: Path, writer: ImageWriter) -> tuple[str, int, int]:
    """HTML of an evaluated run's tables and plots; ``(html, tables, plots)``."""
    from cianet.evaluation.plots import PLOT_FILES, loss_figure

    m = read_json(run_dir / "metrics.json")
    parts = [f'<section class="run"><h2>Run {html.escape(run_dir.name)}</h2>',
             f"<p>{m.get('n_images', '?')} test images, {m.get('n_boxes', '?')} boxes.</p>"]
    tables = plots = 0
    loc = m.get("localization") or {}
    if loc:
        ts = sorted(loc, key=float)
        classes = list(loc[ts[0]])
        parts += ["<h3>Localization accuracy</h3>",
                  html_table(["T(IoU)", *classes], [[t, *(fmt(loc[t].get(c)) for c in classes)] for t in ts],
                             "metrics loc")]
        tables += 1
    auc = m.get("auc") or {}
    if auc:
        parts += ["<h3>AUC</h3>", html_table(list(auc), [[fmt(v) for v in auc.values()]], "metrics auc")]
        tables += 1
    ci = m.get("ci") or {}
    if ci:
        rows = []
        if ci.get("auc"):
            rows.append(["mean AUC", fmt(ci["auc"].get("value")), fmt(ci["auc"].get("low")), fmt(ci["auc"].get("high"))])
        for t, r in (ci.get("localization") or {}).items():
            rows.append([f"localization, T(IoU) = {t}", fmt(r.get("value")), fmt(r.get("low")), fmt(r.get("high"))])
        conf = round(100 * float(ci.get("confidence", 0.95)))
        parts += [f"<h3>Bootstrap {conf}% intervals ({ci.get('n_boot', '?')} resamples)</h3>",
                  html_table(["metric", "value", "low", "high"], rows, "metrics ci")]
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
        parts.append('<div class="plots">' + "".join(
            f'<figure><img class="plot" data-kind="{k}" src="{html.escape(src)}" alt="{k}"><figcaption>{k}</figcaption>'
            "</figure>" for k, src in figures) + "</div>")
        plots = len(figures)
    parts.append("</section>")
    return "".join(parts), tables, plots


# ------------------------------------------------------------------------------------------ the page
def build_site(sources: Sequence[str | Path], out: str | Path | None = None, data_root: str | None = None,
               max_images: int = 1000, progress: bool | None = None) -> SiteSummary:
    """Write ``out/index.html`` (default ``<first source>/site``) for predict folders and evaluated runs."""
    from cianet.labels import LABELS
    from cianet.utils.atomic import atomic_write_text
    from cianet.utils.progress import progress_bar

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
            raise UsageError(f"--out {site} already holds an img/ folder that `cianet view` did not write; choose "
                             "a new or empty folder")
        shutil.rmtree(site / "img")
    writer = ImageWriter(site)
    notes: list[str] = []
    entries: list[dict[str, Any]] = []
    sections: list[str] = []
    tables = plots = 0
    models: list[dict[str, Any]] = []
    for folder, kind in zip(folders, kinds):
        if kind == "run":
            html_part, t, p = run_section(folder, writer)
            sections.append(html_part)
            tables, plots = tables + t, plots + p
            index = load_truth(data_root, folder / "config.yaml")
            run_labels, run_box = run_label_set(folder)
            entries += run_entries(folder, run_labels, run_box, writer, index, max_images - len(entries), notes,
                                   len(entries))
        else:
            summary = read_json(folder / "summary.json")
            if isinstance(summary.get("model"), dict):
                models.append(summary["model"])
            run_cfg = next((f / "config.yaml" for f, k in zip(folders, kinds) if k == "run"), None)
            index = load_truth(data_root, run_cfg) if (data_root or run_cfg) else None
            recs = prediction_items(folder)
            if len(recs) > max_images - len(entries):
                notes.append(f"{folder}: showing the first {max_images - len(entries)} of {len(recs)} images "
                             "(--max-images)")
                recs = recs[: max(0, max_images - len(entries))]
            for rec in progress_bar(recs, desc="view", disable=None if progress is None else not progress):
                entries.append(predicted_entry(rec, len(entries), writer, index, notes))
    labels = list(dict.fromkeys(lab for it in entries for lab in it["probabilities"])) or list(LABELS)
    data = {"labels": labels, "items": entries, "models": models,
            "notes": notes}
    title = "cianet results: " + ", ".join(f.name for f in folders)
    atomic_write_text(site / "index.html", render_page(title, data, "".join(sections)))
    return SiteSummary(site / "index.html", len(entries), tables, plots, notes)


def is_our_site(site: Path) -> bool:
    """Whether ``site`` holds a page written by :func:`build_site` (its index.html carries our data block)."""
    try:
        return 'id="cianet-data"' in (site / "index.html").read_text(errors="replace")
    except OSError:
        return False


def render_page(title: str, data: dict[str, Any], sections: str) -> str:
    """The page: the sections' HTML, the data as a JSON block, our own style and script."""
    from cianet.utils.atomic import strict_json

    import re

    # "<" escaped: no "</script>" or "<!--" inside the data can end or confuse the script element
    blob = json.dumps(strict_json(data), allow_nan=False).replace("<", "\\u003c")
    parts = {"TITLE": html.escape(title), "SECTIONS": sections, "DATA": blob, "STYLE": STYLE, "SCRIPT": SCRIPT}
    # one pass, so that a file name holding "%STYLE%" is not expanded inside the data
    return re.sub(r"%(TITLE|SECTIONS|DATA|STYLE|SCRIPT)%", lambda m: parts[m.group(1)], PAGE)


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%TITLE%</title>
<style>%STYLE%</style></head>
<body>
<header><h1>%TITLE%</h1>
<p class="warn">Research use only; not for clinical use.</p>
<div id="models"></div></header>
%SECTIONS%
<section id="gallery-section"><h2>Images</h2>
<form id="controls" onsubmit="return false">
<label>class <select id="class"><option value="*">any class (highest probability)</option></select></label>
<label>probability &ge; <input id="min" type="range" min="0" max="1" step="0.05" value="0">
<output id="min-out">0.00</output></label>
<label>sort <select id="sort"><option value="desc">probability, high first</option>
<option value="asc">probability, low first</option><option value="name">name</option></select></label>
<label>truth <select id="truth"><option value="all">all images</option>
<option value="positive">truly has the class</option><option value="negative">truly without the class</option>
</select></label>
<span class="layers">show
<label><input type="checkbox" id="layer-boxes" checked> boxes</label>
<label><input type="checkbox" id="layer-heat" checked> heatmap</label>
<label><input type="checkbox" id="layer-attention"> attention</label>
<label><input type="checkbox" id="layer-truth" checked> ground truth</label></span>
</form>
<p id="count"></p>
<div id="gallery"></div>
<ul id="notes"></ul>
</section>
<script type="application/json" id="cianet-data">%DATA%</script>
<script>%SCRIPT%</script>
</body></html>
"""

STYLE = """
body{font-family:system-ui,sans-serif;margin:0 1.5em 2em;color:#222;background:#fafafa}
h1{font-size:1.4em}h2{font-size:1.2em;border-bottom:1px solid #ccc}h3{font-size:1em}
.warn{color:#a40;font-weight:600}
table.metrics{border-collapse:collapse;font-size:.85em;margin-bottom:1em}
table.metrics td,table.metrics th{border:1px solid #ccc;padding:2px 6px;text-align:right}
.plots{display:flex;flex-wrap:wrap;gap:1em}.plots figure{margin:0;flex:0 1 560px}
.plots img{width:100%;background:#fff}
#controls{display:flex;flex-wrap:wrap;gap:1em;align-items:center;position:sticky;top:0;background:#fafafa;
padding:.5em 0;z-index:5}
#gallery{display:flex;flex-wrap:wrap;gap:1em}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5em;width:min(100%,440px)}
.card h4{margin:.2em 0 .4em;font-size:.9em;word-break:break-all}
.panels{display:flex;gap:.5em}
.panel{flex:1;min-width:0}.panel .cap{font-size:.75em;color:#555;text-align:center}
.stack{position:relative;background:#000;line-height:0}
.stack img,.stack svg{width:100%;height:auto;display:block}
.stack .layer,.stack svg{position:absolute;left:0;top:0;width:100%;height:100%}
.stack img.layer{image-rendering:pixelated}
.hide-boxes .pred-box,.hide-heat .heat,.hide-attention .attention,.hide-truth .truth{display:none}
.probs{font-size:.75em;margin-top:.3em;display:grid;grid-template-columns:9em 1fr 3.2em;gap:1px 4px}
.bar{background:#eee;height:.8em;align-self:center}.bar span{display:block;height:100%;background:#4a7}
.probs .true{font-weight:700}.probs .true::after{content:" \\2713"}
#notes{font-size:.8em;color:#666}
"""

SCRIPT = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("cianet-data").textContent);
  var COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
                "#469990", "#9a6324", "#800000", "#808000", "#000075", "#a9a9a9"];
  var $ = function (id) { return document.getElementById(id); };
  var sel = $("class");
  data.labels.forEach(function (lab) {
    var o = document.createElement("option"); o.value = lab; o.textContent = lab; sel.appendChild(o);
  });
  function colorOf(label) { return COLORS[Math.max(0, data.labels.indexOf(label)) % COLORS.length]; }
  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function svgEl(tag, attrs) {
    var e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    return e;
  }
  function prob(item, lab) {  // a class the item's model does not have counts as 0
    var v = item.probabilities[lab]; return (v === undefined || v === null) ? 0 : v;
  }
  function score(item, cls) {
    if (cls !== "*") { return prob(item, cls); }
    return Math.max.apply(null, [0].concat(Object.keys(item.probabilities).map(function (l) { return prob(item, l); })));
  }
  function boxesSvg(item, boxes, kind) {
    var svg = svgEl("svg", {viewBox: "0 0 " + item.width + " " + item.height, preserveAspectRatio: "none",
                            "class": kind === "pred" ? "pred-box" : "truth"});
    var sw = Math.max(item.width, item.height) / 150;
    boxes.forEach(function (b) {
      var r = svgEl("rect", {x: b.x, y: b.y, width: b.w, height: b.h, fill: "none", stroke: colorOf(b.label),
                             "stroke-width": sw, "class": "box " + kind, "data-label": b.label});
      if (kind === "truth") { r.setAttribute("stroke-dasharray", (3 * sw) + " " + (2 * sw)); }
      var t = svgEl("title", {}); t.textContent = b.label + (kind === "pred" ? " score " + b.score.toFixed(2) :
        (b.iou === undefined || b.iou === null ? "" : " IoU " + b.iou.toFixed(2)));
      r.appendChild(t); svg.appendChild(r);
      var tx = svgEl("text", {x: b.x + sw, y: Math.max(b.y - sw, 4 * sw), fill: colorOf(b.label),
                              "font-size": 5 * sw});
      tx.textContent = b.label + (kind === "pred" ? " " + b.score.toFixed(2) :
        (b.iou === undefined || b.iou === null ? "" : " IoU " + b.iou.toFixed(2)));
      svg.appendChild(tx);
    });
    return svg;
  }
  function panel(item, caption, layers) {
    var p = el("div", {"class": "panel"}), s = el("div", {"class": "stack"});
    var base = item.image || item.overlay;
    if (base) { s.appendChild(el("img", {src: base, alt: item.name, "class": "base"})); }
    else { s.appendChild(el("div", {"class": "missing"}, "image not found")); }
    layers.forEach(function (l) { s.appendChild(l); });
    p.appendChild(s); p.appendChild(el("div", {"class": "cap"}, caption));
    return p;
  }
  function card(item, cls) {
    var c = el("div", {"class": "card", "data-name": item.name, "data-score": score(item, cls).toFixed(4)});
    c.appendChild(el("h4", {}, item.name));
    var panels = el("div", {"class": "panels"}), layers = [];
    var heat = item.heat[cls] || (cls === "*" ? item.heat["*"] : null);
    if (heat) { layers.push(el("img", {src: heat, "class": "layer heat", alt: "heatmap"})); }
    if (item.attention) { layers.push(el("img", {src: item.attention, "class": "layer attention", alt: "attention"})); }
    var shown = item.boxes.filter(function (b) { return cls === "*" || b.label === cls; });
    layers.push(boxesSvg(item, shown, "pred"));
    var caption = item.scores_only ? "scores only (boxes: cianet predict)" :
      "prediction (" + shown.length + " box" + (shown.length === 1 ? "" : "es") + ")";
    panels.appendChild(panel(item, caption, layers));
    if (item.truth) {
      var tb = item.truth.boxes.filter(function (b) { return cls === "*" || b.label === cls; });
      var tp = panel(item, "ground truth: " + (item.truth.labels.join(", ") || "No Finding"),
                     [boxesSvg(item, tb, "truth")]);
      tp.classList.add("truth"); panels.appendChild(tp);
    }
    c.appendChild(panels);
    var probs = el("div", {"class": "probs"});
    var labs = Object.keys(item.probabilities).sort(function (a, b) { return prob(item, b) - prob(item, a); });
    if (cls !== "*" && cls in item.probabilities) { labs = [cls].concat(labs.filter(function (l) { return l !== cls; })); }
    labs.slice(0, 5).forEach(function (lab) {
      var isTrue = item.truth && item.truth.labels.indexOf(lab) >= 0;
      probs.appendChild(el("span", {"class": isTrue ? "true" : ""}, lab));
      var bar = el("div", {"class": "bar"}), fill = el("span", {});
      fill.style.width = (100 * prob(item, lab)).toFixed(1) + "%"; bar.appendChild(fill);
      probs.appendChild(bar); probs.appendChild(el("span", {}, prob(item, lab).toFixed(3)));
    });
    c.appendChild(probs);
    return c;
  }
  function state() {
    return {cls: sel.value, min: parseFloat($("min").value), sort: $("sort").value, truth: $("truth").value};
  }
  function writeHash() {
    var s = state(), hide = ["boxes", "heat", "attention", "truth"].filter(function (l) {
      return !$("layer-" + l).checked; });
    var h = "class=" + encodeURIComponent(s.cls) + "&min=" + s.min + "&sort=" + s.sort + "&truth=" + s.truth +
            "&hide=" + hide.join(",");
    if (window.history && window.history.replaceState) { window.history.replaceState(null, "", "#" + h); }
  }
  function readHash() {
    var h = {};
    window.location.hash.replace(/^#/, "").split("&").forEach(function (kv) {
      var i = kv.indexOf("="); if (i > 0) { h[kv.slice(0, i)] = decodeURIComponent(kv.slice(i + 1)); }
    });
    if (h["class"] && (h["class"] === "*" || data.labels.indexOf(h["class"]) >= 0)) { sel.value = h["class"]; }
    if (h.min !== undefined && !isNaN(parseFloat(h.min))) { $("min").value = h.min; }
    if (h.sort) { $("sort").value = h.sort; }
    if (h.truth) { $("truth").value = h.truth; }
    if (h.hide !== undefined) {
      var hide = h.hide.split(",");
      ["boxes", "heat", "attention", "truth"].forEach(function (l) { $("layer-" + l).checked = hide.indexOf(l) < 0; });
    }
  }
  function applyLayers() {
    ["boxes", "heat", "attention", "truth"].forEach(function (l) {
      document.body.classList.toggle("hide-" + l, !$("layer-" + l).checked);
    });
  }
  function render() {
    var s = state(), g = $("gallery");
    $("min-out").textContent = s.min.toFixed(2);
    var items = data.items.filter(function (it) {
      if (score(it, s.cls) < s.min) { return false; }
      if (s.truth !== "all") {
        if (!it.truth) { return false; }
        var has = s.cls === "*" ? it.truth.labels.length > 0 : it.truth.labels.indexOf(s.cls) >= 0;
        if ((s.truth === "positive") !== has) { return false; }
      }
      return true;
    });
    items.sort(function (a, b) {
      if (s.sort === "name") { return a.name < b.name ? -1 : (a.name > b.name ? 1 : 0); }
      var d = score(a, s.cls) - score(b, s.cls);
      return s.sort === "asc" ? d : -d;
    });
    while (g.firstChild) { g.removeChild(g.firstChild); }
    items.forEach(function (it) { g.appendChild(card(it, s.cls)); });
    $("count").textContent = items.length + " of " + data.items.length + " images";
    applyLayers(); writeHash();
  }
  var models = $("models");
  data.models.forEach(function (m) {
    models.appendChild(el("p", {"class": "model"}, "model " + m.id + " " + m.version + " (" + m.kind + ")" +
      (m.sha256 ? ", sha256 " + m.sha256.slice(0, 12) : "")));
  });
  data.notes.forEach(function (n) { $("notes").appendChild(el("li", {}, n)); });
  readHash();
  ["class", "min", "sort", "truth", "layer-boxes", "layer-heat", "layer-attention", "layer-truth"].forEach(
    function (id) { $(id).addEventListener("input", render); $(id).addEventListener("change", render); });
  render();
  document.body.setAttribute("data-ready", "1");
})();
"""
