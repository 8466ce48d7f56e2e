"""Batch prediction (``cianet predict``): image files and folders -> per-image JSON and overlays, CSVs, summary.

Outputs in the output folder: ``<stem>.json``, ``<stem>.heatmaps.npz`` (heatmaps and attention in the image
file's frame) and ``<stem>.overlay.png`` per image, ``predictions.csv`` (one row per input, ``status`` ok or
error), ``boxes.csv`` (one row per box), ``coco.json`` and ``coco_results.json`` (COCO-style detections, see
:mod:`cianet.inference.result_files`) and ``summary.json``. Every JSON record names the model (bundle id, version,
file hash) and the cianet version. An unreadable file is reported and skipped; the run goes on.

``<stem>`` is the input's path below the folder given (below that folder's own name when several paths are
given) made safe (:func:`unique_stems`): never ``..``, never a name the run writes itself, unique per input,
at most 96 bytes a component; ``predictions.csv`` names it in its ``output`` column beside the original
``file``. Every output path is checked to lie inside the output folder.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cianet.inference.files import IMAGE_SUFFIXES  # noqa: E402 - the one list (cianet.inference.files)


#: stems an input never gets: the run's own tables (any suffix, any case) and `cianet view`'s default folder
RESERVED_STEMS = ("predictions", "boxes", "coco", "coco_results", "summary", "site")
#: the longest output stem component, in bytes (its files' temp names must stay under the 255-byte limit)
MAX_STEM_BYTES = 96


def collect_inputs(paths: list[str], skip: Path | None = None) -> tuple[list[tuple[Path, str]], list[tuple[str, str]]]:
    """Files to predict as ``(path, output stem)`` and ``(path, error)`` for arguments that do not exist.

    A file argument is always taken (whatever its name); folders are searched recursively for
    .png/.jpg/.jpeg/.dcm/.dicom files and for extension-less DICOM files. Output stems keep the path
    below the folder (below the folder's own name when several arguments are given), so equal file names in
    different sub-folders do not collide; every stem is made safe (:func:`unique_stems`). Files below ``skip``
    (the output folder, whose overlay PNGs are no input) are left out.
    """
    from cianet.data.io import is_dicom

    found: list[tuple[Path, tuple[str, ...]]] = []
    missing: list[tuple[str, str]] = []
    for arg in paths:
        p = Path(arg)
        # the argument's own name, resolved: `..` or `.` name no folder of their own
        top = (p.resolve().name or "root",) if len(paths) > 1 else ()
        if p.is_file():
            found.append((p, (p.stem or p.name,)))
        elif p.is_dir():
            for f in sorted(p.rglob("*")):
                if not f.is_file() or any(part.startswith(".") for part in f.relative_to(p).parts):
                    continue
                if skip is not None and f.resolve().is_relative_to(skip):
                    continue
                suffix = f.suffix.lower()
                if suffix in IMAGE_SUFFIXES or (suffix == "" and safe_is_dicom(f, is_dicom)):
                    rel = f.relative_to(p)
                    found.append((f, (*top, *rel.parent.parts, rel.stem or rel.name)))
        else:
            missing.append((arg, "no such file or folder"))
    return list(zip([f for f, _ in found], unique_stems([parts for _, parts in found]))), missing


def safe_component(name: str, folder: bool) -> str:
    """One component of an output stem: letters, digits, spaces and ``-_+`` kept (``.`` too in a file's stem;
    no leading or trailing dot or space), anything else (a newline, bytes that are not UTF-8, ``/``) replaced by
    ``_``; a reserved name gets a trailing ``_``; one longer than ``MAX_STEM_BYTES`` is cut and suffixed with a
    hash of the whole name."""
    import hashlib

    keep = "-_+ " + ("." if not folder else "")
    out = "".join(c if c.isalnum() or c in keep else "_" for c in name)  # surrogates (not UTF-8) are not alnum
    out = out.lstrip(". ").rstrip(". ") or "_"
    if out.lower() in RESERVED_STEMS:
        out += "_"
    if len(out.encode("utf-8")) > MAX_STEM_BYTES:
        raw = name.encode("utf-8", "surrogateescape")
        cut = out.encode("utf-8")[:MAX_STEM_BYTES - 9].decode("utf-8", "ignore")  # whole characters only
        out = cut + "-" + hashlib.sha256(raw).hexdigest()[:8]
    return out


def unique_stems(parts: list[tuple[str, ...]]) -> list[str]:
    """Safe output stems, one per input, in order: no two equal (ignoring case, for case-insensitive file
    systems), none a reserved name, none leaving the output folder. Folder components hold no ``.``, so no
    folder a stem creates can take the name of a file (every output file name has a suffix)."""
    taken: set[str] = set()
    out = []
    for comps in parts:
        stem = "/".join([*(safe_component(c, True) for c in comps[:-1]), safe_component(comps[-1], False)])
        candidate, n = stem, 0
        while candidate.lower() in taken:  # dup.png, dup.jpg, dup_1.png: dup, dup_1, dup_1_1
            n += 1
            candidate = f"{stem}_{n}"
        taken.add(candidate.lower())
        out.append(candidate)
    return out


def display_name(path: str | Path) -> str:
    """A path as text that every writer can encode: bytes that are not UTF-8 become ``\\xNN``."""
    import os

    return os.fsencode(path).decode("utf-8", "backslashreplace")


def shown(path: str | Path) -> str:
    """A path for a one-line message: :func:`display_name` with newlines and other control characters escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in display_name(path))


def csv_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet never runs as a formula: text starting with ``= + - @`` (or a tab or carriage
    return) gets a leading ``'``; numbers are kept."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        try:
            float(value)
            return value  # "-0.5" is a number, not a formula
        except ValueError:
            return "'" + value
    return value


def one_line(exc: BaseException) -> str:
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


def read_prior_table(path: str | Path) -> dict[str, str]:
    """``cianet predict --priors CSV``: a CSV with columns ``image,prior`` (a header row, one row per image)
    -> ``{image: prior}``; relative paths are taken from the CSV's folder. Errors name the file and the line."""
    import csv

    from cianet.errors import InputError, MissingPathError

    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"--priors {path} does not exist")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            table = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"--priors {path}: not a readable CSV ({exc})") from None
    if not table or [c.strip().lower() for c in table[0]] != ["image", "prior"]:
        raise InputError(f"--priors {path}: the first line must be the header image,prior")
    out: dict[str, str] = {}
    for line, row in enumerate(table[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise InputError(f"--priors {path} line {line}: expected two columns image,prior, got {row}")
        image, prior = (str(path.parent / c.strip()) if not Path(c.strip()).is_absolute() else c.strip()
                        for c in row)
        if image in out:
            raise InputError(f"--priors {path} line {line}: {row[0]} has a prior already")
        if not Path(prior).is_file():
            raise MissingPathError(f"--priors {path} line {line}: prior study {prior} does not exist")
        out[image] = prior
    return out


def check_priors(priors: dict[str, str] | None, inputs: list[tuple[Path, str]]) -> dict[Path, str]:
    """``{resolved input path: prior}``: every image named must be an input, every prior an existing file and
    never the image itself (UsageError / MissingPathError naming them), before anything is predicted."""
    from cianet.errors import MissingPathError, UsageError

    if not priors:
        return {}
    by_path = {f.resolve(): f for f, _ in inputs}
    out: dict[Path, str] = {}
    for image, prior in priors.items():
        key = Path(image).resolve()
        if key not in by_path:
            raise UsageError(f"prior table: {image} is not among the images to predict")
        if not Path(prior).is_file():
            raise MissingPathError(f"prior study {prior} of {image} does not exist")
        if Path(prior).resolve() == key:
            raise UsageError(f"prior study of {image} is the image itself: an image is never its own negative")
        out[key] = prior
    return out


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


def check_threshold(threshold: float | None) -> None:
    """``--threshold``: an image probability in [0, 1] (None: the bundle's per-class thresholds)."""
    import math

    from cianet.errors import UsageError

    if threshold is not None and not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise UsageError(f"--threshold must be a probability in [0, 1], got {threshold}")


def predict_files(paths: list[str], model: str | Path, out: str | Path, *, batch_size: int = 8,
                  device: str = "cpu", overlay: bool = True, heatmaps: bool = True,
                  include_dicom_metadata: bool = False,
                  connectivity: int = 8, mode: str = "bank", progress: bool | None = None,
                  log: Callable[[str], None] | None = None, precision: str = "auto", prefetch: int | None = None,
                  timer: Any = None, record: Callable[[list[str]], None] | None = None,
                  write_behind: bool = True, priors: dict[str, str] | None = None,
                  threshold: float | None = None) -> BatchSummary:
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
    process killed with SIGKILL leaves a list of everything it wrote: :func:`cianet.utils.output_folders.journal_outputs`).
    ``priors``: image path -> its prior study's path (``--prior``, ``--priors CSV``: :func:`read_prior_table`),
    contrasted with the image instead of the bank's negative; an image without one uses the bank, and every
    record says which (``negative``, ``negative_source``). An unreadable prior makes its image an error row.
    """
    import csv
    import io

    import numpy as np

    import cianet
    from cianet.data.io import XrayReadError, load_xray
    from cianet.errors import InputError, UsageError
    from cianet.inference.result_files import coco_outputs, write_heatmaps
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
    prior_of = check_priors(priors, inputs)
    check_threshold(threshold)
    pred = Predictor.from_bundle(model, device=device, mode=mode, batch_size=batch_size, connectivity=connectivity,
                                 precision=precision, timer=timer)
    if threshold is not None:  # --threshold: one image probability for every class, instead of the bundle's
        pred.thresholds = {lab: float(threshold) for lab in pred.labels}
    if prior_of and pred.kind != "cianet":
        raise UsageError(f"--prior/--priors: {model} is a {pred.kind} model, which takes no negative")
    loaded_priors: dict[str, Any] = {}  # stem -> prepared prior, filled ahead in the prefetch thread
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    root = out.resolve()
    for path, err in errors:
        say(f"cianet predict: skipped {shown(path)}: {err}")
    rows: list[dict[str, Any]] = [{"file": display_name(p), "status": "error", "error": e} for p, e in errors]
    box_rows: list[dict[str, Any]] = []
    coco_records: list[dict[str, Any]] = []
    domain_counts = {"all": 0, "out": 0}  # inputs seen, and those out of the model's training domain
    stamp = {"model": pred.model_info, "cianet_version": cianet.__version__, "precision": pred.precision}
    model_id = f"{pred.model_info['id']}@{pred.model_info['version']}"
    if overlay:
        from cianet.inference.overlay import write_overlay
    else:
        write_overlay = None

    def flush(batch: list[tuple[Path, str, Any, Any]]) -> None:
        results = pred.predict_arrays([img for _, _, img, _ in batch], [display_name(f) for f, _, _, _ in batch],
                                      resized=np.stack([r for _, _, _, r in batch]),
                                      priors=[loaded_priors.pop(stem, None) for _, stem, _, _ in batch])
        if record is not None:  # journaled here, before the writer thread may write any of them
            suffixes = [".json"] + [".heatmaps.npz"] * bool(heatmaps) + [".overlay.png"] * bool(write_overlay)
            record([f"{stem}{suffix}" for _, stem, _, _ in batch for suffix in suffixes])
        writer.submit(write, batch, results)

    def target(stem: str, suffix: str) -> Path:
        """``out/STEM SUFFIX``, checked to lie inside ``out`` (a link planted in ``out`` could lead elsewhere)."""
        path = out / f"{stem}{suffix}"
        if not path.parent.resolve().is_relative_to(root):
            raise OSError(f"{path} would lie outside --out {out} (through a link); not written")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write(batch: list[tuple[Path, str, Any, Any]], results: list) -> None:
        with stage(timer, "writing"):
            for item, res in zip(batch, results):
                try:
                    write_one(item, res)
                except OSError as exc:  # one file that cannot be written never ends the run
                    say(f"cianet predict: skipped {shown(item[0])}: {one_line(exc)}")
                    rows.append({"file": display_name(item[0]), "status": "error", "error": one_line(exc),
                                 "output": item[1]})

    def write_one(item: tuple[Path, str, Any, Any], res) -> None:
            f, stem, img, _ = item
            name = display_name(f)
            if include_dicom_metadata:
                res.metadata["dicom"] = dicom_metadata(f)
            record = res.to_dict()
            domain_counts["all"] += 1
            domain_counts["out"] += (res.domain or {}).get("in_domain") is False
            if heatmaps:
                write_heatmaps(target(stem, ".heatmaps.npz"), res, pred.box_labels)
                record["heatmaps"] = Path(f"{stem}.heatmaps.npz").name
            if write_overlay is not None:
                write_overlay(target(stem, ".overlay.png"), img, res, pred.box_labels, pred.thresholds)
                record["overlay"] = Path(f"{stem}.overlay.png").name
            atomic_write_json(target(stem, ".json"), {**record, **stamp})
            coco_records.append({"file_name": name, "width": res.image_size[0], "height": res.image_size[1],
                                 "boxes": record["boxes"]})
            rows.append({"file": name, "status": "ok", "error": "", "model": model_id,
                         "negative": res.negative or "", "negative_source": res.negative_source or "",
                         "n_boxes": len(res.boxes), "output": stem,
                         **{k: f"{v:.6f}" for k, v in res.probabilities.items()}})
            box_rows.extend({"file": name, "model": model_id, "label": b.label, "x": f"{b.x:.2f}",
                             "y": f"{b.y:.2f}", "w": f"{b.w:.2f}", "h": f"{b.h:.2f}", "score": f"{b.score:.4f}"}
                            for b in res.boxes)

    def load(item: tuple[Path, str]) -> tuple[Any, Any]:  # runs ahead, in the prefetch thread
        with stage(timer, "decode"):
            img = load_xray(item[0])
            prior = prior_of.get(item[0].resolve())
            if prior is not None:
                loaded_priors[item[1]] = pred.prepare_prior(prior, image=display_name(item[0]))
        return img, pred.prepare(img)

    batch: list[tuple[Path, str, Any, Any]] = []
    loaded = progress_bar(ahead(inputs, load, depth), desc="predict", total=len(inputs),
                          disable=None if progress is None else not progress)
    # Only the writer touches rows, box_rows and coco_records from here on (an error row goes through it
    # too), so the tables keep the input order.
    with Behind(1 if write_behind else 0) as writer:
        for (f, stem), images, exc in loaded:
            if exc is not None:
                if not isinstance(exc, (XrayReadError, OSError, InputError)):  # InputError: its prior
                    raise exc
                msg = one_line(exc)
                say(f"cianet predict: skipped {msg if str(f) in msg else f'{shown(f)}: {msg}'}")
                writer.submit(rows.append, {"file": display_name(f), "status": "error", "error": msg, "output": stem})
                continue
            batch.append((f, stem, *images))
            if len(batch) == batch_size:
                flush(batch)
                batch = []
        if batch:
            flush(batch)

    if domain_counts["out"]:  # one line per run, however many inputs
        from cianet.inference.domain import domain_warning

        say("cianet predict: warning: " + domain_warning(pred.training_data, domain_counts["out"], domain_counts["all"]))
    if record is not None:
        record(["predictions.csv", "boxes.csv", "coco.json", "coco_results.json", "summary.json"])
    fields = ["file", "status", "error", "model", "negative", "negative_source", "n_boxes", *pred.labels, "output"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, restval="")
    w.writeheader()
    w.writerows({k: csv_cell(v) for k, v in r.items()} for r in rows)
    atomic_write_text(out / "predictions.csv", buf.getvalue())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["file", "model", "label", "x", "y", "w", "h", "score"])
    w.writeheader()
    w.writerows({k: csv_cell(v) for k, v in r.items()} for r in box_rows)
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
        "errors": failed, "training_data": pred.training_data, "out_of_domain": domain_counts["out"],
    })
    return BatchSummary(out, len(rows), n_ok, len(box_rows), failed)
