"""Batch prediction (``cianet predict``): image files and folders -> per-image JSON and overlays, CSVs, summary.

Outputs in the output folder: ``<stem>.json``, ``<stem>.heatmaps.npz`` (heatmaps and attention in the image
file's frame) and ``<stem>.overlay.png`` per image, ``predictions.csv`` (one row per input, ``status`` ok or
error), ``boxes.csv`` (one row per box), ``coco.json`` and ``coco_results.json`` (COCO-style detections, see
:mod:`cianet.inference.outputs`) and ``summary.json``. Every JSON record names the model (bundle id, version,
file hash) and the cianet version. An unreadable file is reported and skipped; the run goes on.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom"}


def collect_inputs(paths: list[str], skip: Path | None = None) -> tuple[list[tuple[Path, str]], list[tuple[str, str]]]:
    """Files to predict as ``(path, output stem)`` and ``(path, error)`` for arguments that do not exist.

    A file argument is always taken (whatever its name); folders are searched recursively for
    .png/.jpg/.jpeg/.dcm/.dicom files and for extension-less DICOM files. Output stems keep the path
    below the folder, so equal file names in different sub-folders do not collide. Files below ``skip``
    (the output folder, whose overlay PNGs are no input) are left out.
    """
    from cianet.data.io import is_dicom

    found: list[tuple[Path, str]] = []
    missing: list[tuple[str, str]] = []
    for arg in paths:
        p = Path(arg)
        if p.is_file():
            found.append((p, p.stem))
        elif p.is_dir():
            for f in sorted(p.rglob("*")):
                if not f.is_file() or any(part.startswith(".") for part in f.relative_to(p).parts):
                    continue
                if skip is not None and f.resolve().is_relative_to(skip):
                    continue
                suffix = f.suffix.lower()
                if suffix in IMAGE_SUFFIXES or (suffix == "" and safe_is_dicom(f, is_dicom)):
                    rel = f.relative_to(p).with_suffix("")
                    found.append((f, str(Path(p.name) / rel) if len(paths) > 1 else str(rel)))
        else:
            missing.append((arg, "no such file or folder"))
    stems: dict[str, int] = {}
    unique = []
    for f, stem in found:  # the same stem twice (a.png and a.dcm): number the later ones
        n = stems.get(stem, 0)
        stems[stem] = n + 1
        unique.append((f, stem if n == 0 else f"{stem}_{n}"))
    return unique, missing


def safe_is_dicom(path: Path, is_dicom) -> bool:
    try:
        return is_dicom(path)
    except ValueError:
        return False


@dataclass
class BatchSummary:
    """What :func:`predict_files` did: inputs seen, images predicted, boxes written, per-file errors."""

    out: Path
    images: int
    predicted: int
    boxes: int
    errors: list[dict[str, str]]


def predict_files(paths: list[str], model: str | Path, out: str | Path, *, batch_size: int = 8,
                  device: str = "cpu", overlay: bool = True, heatmaps: bool = True,
                  include_dicom_metadata: bool = False,
                  connectivity: int = 8, mode: str = "bank", progress: bool | None = None,
                  log: Callable[[str], None] | None = None, precision: str = "auto", prefetch: int | None = None,
                  timer: Any = None, record: Callable[[list[str]], None] | None = None,
                  write_behind: bool = True) -> BatchSummary:
    """Predict every image file under ``paths`` with the bundle ``model`` and write the outputs into ``out``.

    ``log`` receives one line per skipped input (default: stderr). ``precision``: fp32, bf16 or auto (see
    :class:`~cianet.inference.predictor.Predictor`; what was computed is recorded in every JSON output).
    ``prefetch``: images decoded and resized ahead, in a background thread, while the networks run (default
    ``batch_size``: the next batch; 0: decode in turn, as a plain loop). Outputs come in input order whatever
    the depth, and at most ``batch_size + prefetch + 1`` decoded images are held at once. ``write_behind``: a
    batch's files are written in a background thread while the next batch is computed (one batch at a time, in
    order; False: in turn). ``timer``: a
    :class:`cianet.utils.timing.StageTimer` charged with decode, resize, alignment, pairing, networks, boxes
    and writing (the bench's breakdown). ``record``: called with the names of the files (in ``out``) each
    batch and the final tables are about to be written, before they are (the folder's manifest, kept so that a
    process killed with SIGKILL leaves a list of everything it wrote: :func:`cianet.utils.outputs.journal_outputs`).
    """
    import csv
    import io

    import numpy as np

    import cianet
    from cianet.data.io import XrayReadError, load_xray
    from cianet.errors import InputError, UsageError
    from cianet.inference.outputs import coco_outputs, write_heatmaps
    from cianet.inference.predictor import Predictor, dicom_metadata
    from cianet.utils.atomic import atomic_write_json, atomic_write_text
    from cianet.utils.prefetch import Behind, prefetch as ahead
    from cianet.utils.progress import progress_bar
    from cianet.utils.timing import stage

    say = log or (lambda msg: print(msg, file=sys.stderr))
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    depth = batch_size if prefetch is None else int(prefetch)
    if depth < 0:
        raise UsageError(f"--prefetch must be >= 0, got {prefetch}")
    inputs, errors = collect_inputs(paths, skip=Path(out).resolve())
    if not inputs and not errors:
        raise InputError(f"no image files found under {', '.join(paths)}")
    pred = Predictor.from_bundle(model, device=device, mode=mode, batch_size=batch_size, connectivity=connectivity,
                                 precision=precision, timer=timer)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for path, err in errors:
        say(f"cianet predict: skipped {path}: {err}")
    rows: list[dict[str, Any]] = [{"file": p, "status": "error", "error": e} for p, e in errors]
    box_rows: list[dict[str, Any]] = []
    coco_records: list[dict[str, Any]] = []
    stamp = {"model": pred.model_info, "cianet_version": cianet.__version__, "precision": pred.precision}
    model_id = f"{pred.model_info['id']}@{pred.model_info['version']}"
    if overlay:
        from cianet.inference.overlay import write_overlay
    else:
        write_overlay = None

    def flush(batch: list[tuple[Path, str, Any, Any]]) -> None:
        results = pred.predict_arrays([img for _, _, img, _ in batch], [str(f) for f, _, _, _ in batch],
                                      resized=np.stack([r for _, _, _, r in batch]))
        if record is not None:  # journaled here, before the writer thread may write any of them
            suffixes = [".json"] + [".heatmaps.npz"] * bool(heatmaps) + [".overlay.png"] * bool(write_overlay)
            record([f"{stem}{suffix}" for _, stem, _, _ in batch for suffix in suffixes])
        writer.submit(write, batch, results)

    def write(batch: list[tuple[Path, str, Any, Any]], results: list) -> None:
        with stage(timer, "writing"):
            for (f, stem, img, _), res in zip(batch, results):
                if include_dicom_metadata:
                    res.metadata["dicom"] = dicom_metadata(f)
                record = res.to_dict()
                if heatmaps:
                    write_heatmaps(out / f"{stem}.heatmaps.npz", res, pred.box_labels)
                    record["heatmaps"] = Path(f"{stem}.heatmaps.npz").name
                if write_overlay is not None:
                    write_overlay(out / f"{stem}.overlay.png", img, res, pred.box_labels, pred.thresholds)
                    record["overlay"] = Path(f"{stem}.overlay.png").name
                atomic_write_json(out / f"{stem}.json", {**record, **stamp})
                coco_records.append({"file_name": str(f), "width": res.image_size[0], "height": res.image_size[1],
                                     "boxes": record["boxes"]})
                rows.append({"file": str(f), "status": "ok", "error": "", "model": model_id,
                             "negative": res.negative or "", "n_boxes": len(res.boxes),
                             **{k: f"{v:.6f}" for k, v in res.probabilities.items()}})
                box_rows.extend({"file": str(f), "model": model_id, "label": b.label, "x": f"{b.x:.2f}",
                                 "y": f"{b.y:.2f}", "w": f"{b.w:.2f}", "h": f"{b.h:.2f}", "score": f"{b.score:.4f}"}
                                for b in res.boxes)

    def load(item: tuple[Path, str]) -> tuple[Any, Any]:  # runs ahead, in the prefetch thread
        with stage(timer, "decode"):
            img = load_xray(item[0])
        return img, pred.prepare(img)

    batch: list[tuple[Path, str, Any, Any]] = []
    loaded = progress_bar(ahead(inputs, load, depth), desc="predict", total=len(inputs),
                          disable=None if progress is None else not progress)
    # Only the writer touches rows, box_rows and coco_records from here on (an error row goes through it
    # too), so the tables keep the input order.
    with Behind(1 if write_behind else 0) as writer:
        for (f, stem), images, exc in loaded:
            if exc is not None:
                if not isinstance(exc, (XrayReadError, OSError)):
                    raise exc
                msg = str(exc)
                say(f"cianet predict: skipped {msg if str(f) in msg else f'{f}: {msg}'}")
                writer.submit(rows.append, {"file": str(f), "status": "error", "error": msg})
                continue
            batch.append((f, stem, *images))
            if len(batch) == batch_size:
                flush(batch)
                batch = []
        if batch:
            flush(batch)

    if record is not None:
        record(["predictions.csv", "boxes.csv", "coco.json", "coco_results.json", "summary.json"])
    fields = ["file", "status", "error", "model", "negative", "n_boxes", *pred.labels]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, restval="")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "predictions.csv", buf.getvalue())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["file", "model", "label", "x", "y", "w", "h", "score"])
    w.writeheader()
    w.writerows(box_rows)
    atomic_write_text(out / "boxes.csv", buf.getvalue())
    n_ok = sum(r["status"] == "ok" for r in rows)
    failed = [{"file": r["file"], "error": r["error"]} for r in rows if r["status"] == "error"]
    dataset, results = coco_outputs(coco_records, pred.labels, {
        "description": "cianet predictions", "model": pred.model_info, "cianet_version": cianet.__version__})
    atomic_write_json(out / "coco.json", dataset)
    atomic_write_json(out / "coco_results.json", results)
    atomic_write_json(out / "summary.json", {
        **stamp, "bundle": Path(model).name, "kind": pred.kind, "mode": pred.mode, "connectivity": pred.connectivity,
        "thresholds": pred.thresholds, "images": len(rows), "predicted": n_ok, "boxes": len(box_rows),
        "errors": failed,
    })
    return BatchSummary(out, len(rows), n_ok, len(box_rows), failed)
