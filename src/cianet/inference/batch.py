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

import csv
import hashlib
import io
import math
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import cianet
from cianet.data.io import XrayReadError, is_dicom, load_xray
from cianet.errors import InputError, MissingPathError, UsageError
from cianet.inference.domain import domain_warning
from cianet.inference.files import IMAGE_SUFFIXES  # noqa: E402 - the one list (cianet.inference.files)
from cianet.inference.overlay import write_overlay
from cianet.inference.predictor import Predictor, dicom_metadata
from cianet.inference.result_files import coco_outputs, write_heatmaps
from cianet.utils.atomic import atomic_write_json, atomic_write_text
from cianet.utils.prefetch import Behind
from cianet.utils.prefetch import prefetch as ahead
from cianet.utils.progress import progress_bar
from cianet.utils.timing import stage

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
    keep = "-_+ " + ("." if not folder else "")
    out = "".join(c if c.isalnum() or c in keep else "_" for c in name)  # surrogates (not UTF-8) are not alnum
    out = out.lstrip(". ").rstrip(". ") or "_"
    if out.lower() in RESERVED_STEMS:
        out += "_"
    if len(out.encode("utf-8")) > MAX_STEM_BYTES:
        raw = name.encode("utf-8", "surrogateescape")
        cut = out.encode("utf-8")[: MAX_STEM_BYTES - 9].decode("utf-8", "ignore")  # whole characters only
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
        image, prior = (str(path.parent / c.strip()) if not Path(c.strip()).is_absolute() else c.strip() for c in row)
        if image in out:
            raise InputError(f"--priors {path} line {line}: {row[0]} has a prior already")
        if not Path(prior).is_file():
            raise MissingPathError(f"--priors {path} line {line}: prior study {prior} does not exist")
        out[image] = prior
    return out


def check_priors(priors: dict[str, str] | None, inputs: list[tuple[Path, str]]) -> dict[Path, str]:
    """``{resolved input path: prior}``: every image named must be an input, every prior an existing file and
    never the image itself (UsageError / MissingPathError naming them), before anything is predicted."""
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
    if threshold is not None and not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise UsageError(f"--threshold must be a probability in [0, 1], got {threshold}")


@dataclass(frozen=True)
class PredictSettings:
    """What :func:`predict_files` computes and writes (its keyword arguments, see there), travelling together
    to its stages."""

    batch_size: int = 8
    device: str = "cpu"
    overlay: bool = True
    heatmaps: bool = True
    include_dicom_metadata: bool = False
    connectivity: int = 8
    mode: str = "bank"
    progress: bool | None = None
    precision: str = "auto"
    prefetch: int | None = None
    write_behind: bool = True
    threshold: float | None = None
    writers: int | None = None

    def lookahead(self) -> int:
        """The prefetch depth (default: one batch), after checking it and the batch size (UsageError)."""
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {self.batch_size}")
        depth = self.batch_size if self.prefetch is None else int(self.prefetch)
        if depth < 0:
            raise UsageError(f"--prefetch must be >= 0, got {self.prefetch}")
        return depth

    def writer_threads(self) -> int:
        """Threads that write one batch's files (default :func:`default_writers`), after checking the setting."""
        if self.writers is None:
            return default_writers(self.batch_size)
        if self.writers < 1:
            raise UsageError(f"--writers must be >= 1, got {self.writers}")
        return int(self.writers)


def default_writers(batch_size: int, cores: int | None = None) -> int:
    """Half the cores (``os.cpu_count()``), at most one per image of a batch, at least one. Drawing and
    compressing the overlay and heatmaps of an image takes about 0.25 s at 1024 px; on a GPU the networks take
    0.005 s, so one writer thread held prediction to 1/50 of the networks' rate (docs/performance.md, "GPU").
    On a 2-core CPU this is one thread, as before: the networks there need the cores and hide the writing."""
    cores = (os.cpu_count() or 1) if cores is None else cores
    return max(1, min(batch_size, cores // 2))


#: one decoded input on its way to the networks: (file, output stem, image as decoded, image resized)
_Item = tuple[Path, str, Any, Any]


def predict_files(
    paths: list[str],
    model: str | Path,
    out: str | Path,
    *,
    batch_size: int = 8,
    device: str = "cpu",
    overlay: bool = True,
    heatmaps: bool = True,
    include_dicom_metadata: bool = False,
    connectivity: int = 8,
    mode: str = "bank",
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    precision: str = "auto",
    prefetch: int | None = None,
    timer: Any = None,
    record: Callable[[list[str]], None] | None = None,
    write_behind: bool = True,
    priors: dict[str, str] | None = None,
    threshold: float | None = None,
    writers: int | None = None,
) -> BatchSummary:
    """Predict every image file under ``paths`` with the bundle ``model`` and write the outputs into ``out``.

    ``log`` receives one line per skipped input (default: stderr). ``precision``: fp32, bf16 or auto (see
    :class:`~cianet.inference.predictor.Predictor`; what was computed is recorded in every JSON output).
    ``prefetch``: images decoded and resized ahead, in a background thread, while the networks run (default
    ``batch_size``: the next batch; 0: decode in turn, as a plain loop). Outputs come in input order whatever
    the depth, and at most ``batch_size + prefetch + 1`` decoded images are held at once. ``write_behind``: a
    batch's files are written in a background thread while the next batch is computed (one batch at a time, in
    order; False: in turn); ``writers`` threads write the files of a batch's images side by side (default
    :func:`default_writers`), the tables' rows still in input order. ``timer``: a
    :class:`cianet.utils.timing.StageTimer` charged with decode, resize, alignment, pairing, networks, boxes
    and writing (the bench's breakdown). ``record``: called with the names of the files (in ``out``) each
    batch and the final tables are about to be written, before they are (the folder's manifest, kept so that a
    process killed with SIGKILL leaves a list of everything it wrote:
    :func:`cianet.utils.output_folders.journal_outputs`).
    ``priors``: image path -> its prior study's path (``--prior``, ``--priors CSV``: :func:`read_prior_table`),
    contrasted with the image instead of the bank's negative; an image without one uses the bank, and every
    record says which (``negative``, ``negative_source``). An unreadable prior makes its image an error row.
    """
    settings = PredictSettings(
        batch_size=batch_size,
        device=device,
        overlay=overlay,
        heatmaps=heatmaps,
        include_dicom_metadata=include_dicom_metadata,
        connectivity=connectivity,
        mode=mode,
        progress=progress,
        precision=precision,
        prefetch=prefetch,
        write_behind=write_behind,
        threshold=threshold,
        writers=writers,
    )
    depth = settings.lookahead()
    settings.writer_threads()  # checked before any file is read
    inputs, errors = collect_inputs(paths, skip=Path(out).resolve())
    if not inputs and not errors:
        raise InputError(f"no image files found under {', '.join(paths)}")
    prior_of = check_priors(priors, inputs)
    check_threshold(threshold)
    pred = _load_predictor(model, settings, timer, with_priors=bool(prior_of))
    outputs = _BatchOutputs(Path(out), pred, settings, log or _to_stderr, timer, record)
    try:
        outputs.skip_missing(errors)
        _predict_batches(pred, inputs, _PriorLoader(pred, prior_of, timer), outputs, settings, depth)
    finally:
        outputs.close()
    return outputs.finish(Path(model).name)


def _to_stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def _load_predictor(model: str | Path, settings: PredictSettings, timer: Any, with_priors: bool):
    """The bundle's Predictor, with ``--threshold`` applied; a model that takes no negative refuses priors."""
    pred = Predictor.from_bundle(
        model,
        device=settings.device,
        mode=settings.mode,
        batch_size=settings.batch_size,
        connectivity=settings.connectivity,
        precision=settings.precision,
        timer=timer,
    )
    if settings.threshold is not None:  # --threshold: one image probability for every class, instead of the bundle's
        pred.thresholds = {lab: float(settings.threshold) for lab in pred.labels}
    if with_priors and pred.kind != "cianet":
        raise UsageError(f"--prior/--priors: {model} is a {pred.kind} model, which takes no negative")
    return pred


class _PriorLoader:
    """Decodes an input and its prior study ahead, in the prefetch thread; the batch takes the prior back by stem."""

    def __init__(self, pred, prior_of: dict[Path, str], timer: Any) -> None:
        self.pred, self.prior_of, self.timer = pred, prior_of, timer
        self.loaded: dict[str, Any] = {}  # stem -> prepared prior

    def __call__(self, item: tuple[Path, str]) -> tuple[Any, Any]:
        with stage(self.timer, "decode"):
            img = load_xray(item[0])
            prior = self.prior_of.get(item[0].resolve())
            if prior is not None:
                self.loaded[item[1]] = self.pred.prepare_prior(prior, image=display_name(item[0]))
        return img, self.pred.prepare(img)

    def pop(self, stem: str) -> Any:
        return self.loaded.pop(stem, None)


def _predict_batches(
    pred,
    inputs: list[tuple[Path, str]],
    loader: _PriorLoader,
    outputs: _BatchOutputs,
    settings: PredictSettings,
    depth: int,
) -> None:
    """Decode ahead, predict ``batch_size`` images at a time and hand each batch's results to the writer."""
    batch: list[_Item] = []
    loaded = progress_bar(
        ahead(inputs, loader, depth),
        desc="predict",
        total=len(inputs),
        disable=None if settings.progress is None else not settings.progress,
    )
    # Only the writer touches the outputs' rows from here on (an error row goes through it too), so the tables
    # keep the input order.
    with Behind(1 if settings.write_behind else 0) as writer:
        for (f, stem), images, exc in loaded:
            if exc is not None:
                if not isinstance(exc, (XrayReadError, OSError, InputError)):  # InputError: its prior
                    raise exc
                writer.submit(outputs.rows.append, outputs.unreadable(f, stem, exc))
                continue
            batch.append((f, stem, *images))
            if len(batch) == settings.batch_size:
                _flush(pred, batch, loader, outputs, writer)
                batch = []
        if batch:
            _flush(pred, batch, loader, outputs, writer)


def _flush(pred, batch: list[_Item], loader: _PriorLoader, outputs: _BatchOutputs, writer) -> None:
    """Run the networks on one batch, journal its files and queue their writing."""
    results = pred.predict_arrays(
        [img for _, _, img, _ in batch],
        [display_name(f) for f, _, _, _ in batch],
        resized=np.stack([r for _, _, _, r in batch]),
        priors=[loader.pop(stem) for _, stem, _, _ in batch],
    )
    outputs.journal([stem for _, stem, _, _ in batch])  # here, before the writer thread may write any of them
    writer.submit(outputs.write, batch, results)


class _BatchOutputs:
    """The output folder of one :func:`predict_files`: per-image files, and the rows of its tables and summary."""

    def __init__(
        self,
        out: Path,
        pred,
        settings: PredictSettings,
        say: Callable[[str], None],
        timer: Any,
        record: Callable[[list[str]], None] | None,
    ) -> None:
        self.out, self.pred, self.settings, self.say, self.timer, self.record = out, pred, settings, say, timer, record
        out.mkdir(parents=True, exist_ok=True)
        self.root = out.resolve()
        self.rows: list[dict[str, Any]] = []
        self.box_rows: list[dict[str, Any]] = []
        self.coco_records: list[dict[str, Any]] = []
        self.domain_counts = {"all": 0, "out": 0}  # inputs seen, and those out of the model's training domain
        self.stamp = {"model": pred.model_info, "cianet_version": cianet.__version__, "precision": pred.precision}
        self.model_id = f"{pred.model_info['id']}@{pred.model_info['version']}"
        self.write_overlay = write_overlay if settings.overlay else None
        n = settings.writer_threads()
        self._files_pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="cianet-files") if n > 1 else None

    def close(self) -> None:
        """Stop the file writers' threads (after the batches in flight)."""
        if self._files_pool is not None:
            self._files_pool.shutdown(wait=True)

    def skip_missing(self, errors: list[tuple[str, str]]) -> None:
        for path, err in errors:
            self.say(f"cianet predict: skipped {shown(path)}: {err}")
        self.rows.extend({"file": display_name(p), "status": "error", "error": e} for p, e in errors)

    def unreadable(self, f: Path, stem: str, exc: BaseException) -> dict[str, Any]:
        """Says why ``f`` is skipped; its error row."""
        msg = one_line(exc)
        self.say(f"cianet predict: skipped {msg if str(f) in msg else f'{shown(f)}: {msg}'}")
        return {"file": display_name(f), "status": "error", "error": msg, "output": stem}

    def journal(self, stems: list[str]) -> None:
        if self.record is not None:
            suffixes = (
                [".json"]
                + [".heatmaps.npz"] * bool(self.settings.heatmaps)
                + [".overlay.png"] * bool(self.write_overlay)
            )
            self.record([f"{stem}{suffix}" for stem in stems for suffix in suffixes])

    def target(self, stem: str, suffix: str) -> Path:
        """``out/STEM SUFFIX``, checked to lie inside ``out`` (a link planted in ``out`` could lead elsewhere)."""
        path = self.out / f"{stem}{suffix}"
        if not path.parent.resolve().is_relative_to(self.root):
            raise OSError(f"{path} would lie outside --out {self.out} (through a link); not written")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write(self, batch: list[_Item], results: list) -> None:
        """Each image's files (several at a time with writer threads), then its rows, in input order."""
        with stage(self.timer, "writing"):
            if self._files_pool is None:
                written = [self.write_files(item, res) for item, res in zip(batch, results)]
            else:
                written = list(self._files_pool.map(self.write_files, batch, results))
            for item, res, record in zip(batch, results, written):
                self.domain_counts["all"] += 1
                self.domain_counts["out"] += (res.domain or {}).get("in_domain") is False
                if isinstance(record, OSError):  # one file that cannot be written never ends the run
                    self.say(f"cianet predict: skipped {shown(item[0])}: {one_line(record)}")
                    self.rows.append(
                        {"file": display_name(item[0]), "status": "error", "error": one_line(record), "output": item[1]}
                    )
                else:
                    self.add_rows(item, res, record)

    def write_files(self, item: _Item, res) -> dict[str, Any] | OSError:
        """Write one image's files; its JSON record, or the OSError that stopped them (returned, so that the
        rows stay in order). Touches nothing shared: writer threads run it side by side."""
        f, stem, img, _ = item
        pred = self.pred
        try:
            if self.settings.include_dicom_metadata:
                res.metadata["dicom"] = dicom_metadata(f)
            record = res.to_dict()
            if self.settings.heatmaps:
                write_heatmaps(self.target(stem, ".heatmaps.npz"), res, pred.box_labels)
                record["heatmaps"] = Path(f"{stem}.heatmaps.npz").name
            if self.write_overlay is not None:
                self.write_overlay(self.target(stem, ".overlay.png"), img, res, pred.box_labels, pred.thresholds)
                record["overlay"] = Path(f"{stem}.overlay.png").name
            atomic_write_json(self.target(stem, ".json"), {**record, **self.stamp})
        except OSError as exc:
            return exc
        return record

    def add_rows(self, item: _Item, res, record: dict[str, Any]) -> None:
        """The rows of one written image in the tables."""
        f, stem = item[0], item[1]
        name = display_name(f)
        self.coco_records.append(
            {"file_name": name, "width": res.image_size[0], "height": res.image_size[1], "boxes": record["boxes"]}
        )
        self.rows.append(
            {
                "file": name,
                "status": "ok",
                "error": "",
                "model": self.model_id,
                "negative": res.negative or "",
                "negative_source": res.negative_source or "",
                "n_boxes": len(res.boxes),
                "output": stem,
                **{k: f"{v:.6f}" for k, v in res.probabilities.items()},
            }
        )
        self.box_rows.extend(
            {
                "file": name,
                "model": self.model_id,
                "label": b.label,
                "x": f"{b.x:.2f}",
                "y": f"{b.y:.2f}",
                "w": f"{b.w:.2f}",
                "h": f"{b.h:.2f}",
                "score": f"{b.score:.4f}",
            }
            for b in res.boxes
        )

    def finish(self, bundle_name: str) -> BatchSummary:
        """The run's warning, tables and summary, once every batch is written."""
        if self.domain_counts["out"]:  # one line per run, however many inputs
            self.say(
                "cianet predict: warning: "
                + domain_warning(self.pred.training_data, self.domain_counts["out"], self.domain_counts["all"])
            )
        if self.record is not None:
            self.record(["predictions.csv", "boxes.csv", "coco.json", "coco_results.json", "summary.json"])
        self.write_tables()
        pred, rows = self.pred, self.rows
        n_ok = sum(r["status"] == "ok" for r in rows)
        failed = [{"file": r["file"], "error": r["error"]} for r in rows if r["status"] == "error"]
        atomic_write_json(
            self.out / "summary.json",
            {
                **self.stamp,
                "bundle": bundle_name,
                "kind": pred.kind,
                "mode": pred.mode,
                "connectivity": pred.connectivity,
                "thresholds": pred.thresholds,
                "images": len(rows),
                "predicted": n_ok,
                "boxes": len(self.box_rows),
                "errors": failed,
                "training_data": pred.training_data,
                "out_of_domain": self.domain_counts["out"],
            },
        )
        return BatchSummary(self.out, len(rows), n_ok, len(self.box_rows), failed)

    def write_tables(self) -> None:
        """predictions.csv, boxes.csv, coco.json and coco_results.json."""
        pred = self.pred
        fields = ["file", "status", "error", "model", "negative", "negative_source", "n_boxes", *pred.labels, "output"]
        atomic_write_text(self.out / "predictions.csv", _csv_text(fields, self.rows))
        atomic_write_text(
            self.out / "boxes.csv", _csv_text(["file", "model", "label", "x", "y", "w", "h", "score"], self.box_rows)
        )
        dataset, results = coco_outputs(
            self.coco_records,
            pred.labels,
            {"description": "cianet predictions", "model": pred.model_info, "cianet_version": cianet.__version__},
        )
        atomic_write_json(self.out / "coco.json", dataset)
        atomic_write_json(self.out / "coco_results.json", results)


def _csv_text(fields: list[str], rows: list[dict[str, Any]]) -> str:
    """``rows`` as CSV text, missing cells empty, every cell safe for a spreadsheet (:func:`csv_cell`)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, restval="")
    w.writeheader()
    w.writerows({k: csv_cell(v) for k, v in r.items()} for r in rows)
    return buf.getvalue()
