"""Commands: bundle (a trained run -> one model file), predict (X-rays -> findings), export-onnx."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom"}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bundle", help="pack a trained run into one model file (weights, alignment, negative bank)",
        description=(
            "Write a model bundle: the network and alignment weights, the canonical chest, labels, input size, "
            "normalization, per-class thresholds, the run's config, and a negative bank: N No Finding training "
            "images (never the run's test images) with their hash codes and attention maps M-, so that "
            "prediction needs neither the data set nor a second pass through the attention trunk."
        ),
    )
    p.add_argument("--run", required=True, help="training run folder (checkpoint.pt, config.yaml, split.json)")
    p.add_argument("--out", required=True, help="bundle file to write (e.g. model.cianet)")
    p.add_argument("--negatives", type=int, default=1000, metavar="N",
                   help="negatives in the bank (default 1000, or all if fewer)")
    p.add_argument("--data-root", help="the run's data folder (default: from the run config)")
    p.add_argument("--cache", help="image cache folder (default: from the run config, when it exists)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="image probability from which a class's boxes are reported (default 0.5)")
    p.add_argument("--with-negative-images", action="store_true",
                   help="also store the 8-bit negatives (N x S x S bytes) for Predictor(mode='recompute')")
    p.add_argument("--seed", type=int, default=0, help="seed of the negatives' random choice (default 0)")
    p.add_argument("--device", default="cpu", help="device computing the bank (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_bundle)

    p = subparsers.add_parser(
        "predict", help="predict findings, boxes and heatmaps for X-ray files with a model bundle",
        description=(
            "For every image (PNG/JPEG/DICOM files, folders searched recursively): 14 class probabilities, boxes "
            "of the box classes above their threshold (regions of 8-connected grid cells with p > 0.5, in the "
            "image's pixel frame), a JSON file and an overlay PNG per image, predictions.csv (one row per "
            "image), boxes.csv (one row per box) and summary.json. Unreadable files are reported and skipped. "
            "No DICOM header data is written unless --include-dicom-metadata (a few acquisition tags, never "
            "patient data)."
        ),
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    p.add_argument("--model", required=True, help="model bundle (`cianet bundle`)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default cpu)")
    p.add_argument("--no-overlay", action="store_true", help="do not draw overlay PNGs")
    p.add_argument("--include-dicom-metadata", action="store_true",
                   help="add Modality, ViewPosition, BodyPartExamined, pixel spacing... of DICOM inputs to the JSON")
    p.add_argument("--connectivity", type=int, choices=(4, 8), default=8, help="cell connectivity of a box region")
    p.add_argument("--mode", choices=("bank", "recompute"), default="bank",
                   help="bank: the negative's stored M- (default); recompute: its stored image through the network")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)

    p = subparsers.add_parser(
        "export-onnx", help="export a bundle's network (image + M- -> logits) to ONNX",
        description=(
            "Export (aligned gray image (B,1,S,S), negative map m_neg (B,h,w)) -> (logits, test_logits, delta) "
            "with a dynamic batch axis, plus OUT.negatives.npz (the bank) and OUT.align.onnx (the alignment "
            "network, when the bundle has one)."
        ),
    )
    p.add_argument("--model", required=True, help="model bundle (`cianet bundle`)")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17, default 18)")
    p.add_argument("--static-batch", action="store_true", help="fixed batch size 2 instead of a dynamic axis")
    p.add_argument("--no-alignment", action="store_true", help="do not export the alignment network")
    p.set_defaults(func=cmd_export_onnx)


# ------------------------------------------------------------------------------------------------ bundle
def cmd_bundle(args: argparse.Namespace) -> int:
    from cianet.engine.bundle import bundle_from_run, save_bundle

    if args.negatives < 1:
        raise ValueError(f"--negatives must be >= 1, got {args.negatives}")
    if not 0.0 <= args.threshold <= 1.0:
        raise ValueError(f"--threshold must be in [0, 1], got {args.threshold}")
    bundle = bundle_from_run(args.run, n_negatives=args.negatives, data_root=args.data_root, cache=args.cache,
                             thresholds=args.threshold, include_images=args.with_negative_images, seed=args.seed,
                             device=args.device, progress=not args.no_progress)
    path = save_bundle(bundle, args.out)
    bank = bundle["negatives"]
    size_mb = path.stat().st_size / 1e6
    print(f"wrote {path} ({size_mb:.1f} MB): {bundle['kind']}, {bundle['input_size']} px, "
          f"alignment {'yes' if bundle['alignment'] else 'no'}, {len(bank['names'])} negatives "
          f"({bank['strategy']})")
    return 0


# ----------------------------------------------------------------------------------------------- predict
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
                if suffix in IMAGE_SUFFIXES or (suffix == "" and _safe_is_dicom(f, is_dicom)):
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


def _safe_is_dicom(path: Path, is_dicom) -> bool:
    try:
        return is_dicom(path)
    except ValueError:
        return False


def cmd_predict(args: argparse.Namespace) -> int:
    import csv
    import io

    from cianet.data.io import XrayReadError, load_xray
    from cianet.engine.predict import Predictor, dicom_metadata
    from cianet.utils.atomic import atomic_write_json, atomic_write_text
    from cianet.utils.progress import progress_bar

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    inputs, errors = collect_inputs(args.paths, skip=Path(args.out).resolve())
    if not inputs and not errors:
        raise ValueError(f"no image files found under {', '.join(args.paths)}")
    pred = Predictor.from_bundle(args.model, device=args.device, mode=args.mode, batch_size=args.batch_size,
                                 connectivity=args.connectivity)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path, err in errors:
        print(f"cianet predict: skipped {path}: {err}", file=sys.stderr)
    rows: list[dict] = [{"file": p, "status": "error", "error": e} for p, e in errors]
    box_rows: list[dict] = []
    if args.no_overlay:
        write_overlay = None
    else:
        from cianet.engine.overlay import write_overlay

    def flush(batch: list[tuple[Path, str, object]]) -> None:
        results = pred.predict_arrays([img for _, _, img in batch], [str(f) for f, _, _ in batch])
        for (f, stem, img), res in zip(batch, results):
            if args.include_dicom_metadata:
                res.metadata["dicom"] = dicom_metadata(f)
            atomic_write_json(out / f"{stem}.json", res.to_dict())
            if write_overlay is not None:
                write_overlay(out / f"{stem}.overlay.png", img, res, pred.box_labels, pred.thresholds)
            rows.append({"file": str(f), "status": "ok", "error": "", "negative": res.negative or "",
                         "n_boxes": len(res.boxes), **{k: f"{v:.6f}" for k, v in res.probabilities.items()}})
            box_rows.extend({"file": str(f), "label": b.label, "x": f"{b.x:.2f}", "y": f"{b.y:.2f}",
                             "w": f"{b.w:.2f}", "h": f"{b.h:.2f}", "score": f"{b.score:.4f}"} for b in res.boxes)

    batch: list[tuple[Path, str, object]] = []
    for f, stem in progress_bar(inputs, desc="predict", disable=True if args.no_progress else None):
        try:
            img = load_xray(f)
        except (XrayReadError, OSError) as exc:
            msg = str(exc)
            print(f"cianet predict: skipped {msg if str(f) in msg else f'{f}: {msg}'}", file=sys.stderr)
            rows.append({"file": str(f), "status": "error", "error": msg})
            continue
        batch.append((f, stem, img))
        if len(batch) == args.batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)

    fields = ["file", "status", "error", "negative", "n_boxes", *pred.labels]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, restval="")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "predictions.csv", buf.getvalue())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["file", "label", "x", "y", "w", "h", "score"])
    w.writeheader()
    w.writerows(box_rows)
    atomic_write_text(out / "boxes.csv", buf.getvalue())
    n_ok = sum(r["status"] == "ok" for r in rows)
    failed = [{"file": r["file"], "error": r["error"]} for r in rows if r["status"] == "error"]
    atomic_write_json(out / "summary.json", {
        "model": str(args.model), "kind": pred.kind, "mode": pred.mode, "connectivity": pred.connectivity,
        "thresholds": pred.thresholds, "images": len(rows), "predicted": n_ok, "boxes": len(box_rows),
        "errors": failed,
    })
    print(f"predicted {n_ok} of {len(rows)} images ({len(box_rows)} boxes, {len(failed)} errors) -> {out}")
    return 0 if n_ok else 1


# ------------------------------------------------------------------------------------------- export-onnx
def cmd_export_onnx(args: argparse.Namespace) -> int:
    from cianet.engine.onnx_export import export_onnx

    res = export_onnx(args.model, args.out, opset=args.opset, dynamic_batch=not args.static_batch,
                      alignment=not args.no_alignment)
    extra = [str(p) for p in (res["negatives"], res["alignment"]) if p]
    print(f"wrote {res['model']} ({res['exporter']} exporter)" + (f" and {', '.join(extra)}" if extra else ""))
    return 0
