"""The model card written into every bundle (``cianet bundle``) and shown by ``cianet bundle info``.

It says what the model is and is not for, what it was trained and tested on (counts and the protocol's
description, never image names or patient ids), how it scored on its own test split when the run was
evaluated, and the thresholds at which it reports boxes.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cianet
from cianet.config import NIH
from cianet.inference.domain import training_provenance
from cianet.run.bundle_format import scrub_text

NOTICE = (
    "Research use only. Not a medical device: not for clinical use, diagnosis or treatment decisions. "
    "Predictions may be wrong and must not replace a radiologist's reading."
)
INTENDED_USE = (
    "Research on the classification and weakly supervised localization of thoracic findings in "
    "frontal (PA/AP) chest X-rays, as in Liu et al., ICCV 2019 (CIA-Net)."
)
LIMITATIONS = (
    "Trained on text-mined image labels (noisy) and a few hand-drawn boxes; boxes are coarse grid "
    "regions; not validated on other hospitals, devices, lateral views or children."
)

SYNTHETIC_LIMITATIONS = (
    "Trained on a {kind} data set written by `cianet synth` only: it has never seen a real chest "
    "X-ray finding, and its outputs on real X-rays mean nothing. A demonstration of the "
    "method, not a model of any disease."
)


def model_card(
    run_dir: str | Path,
    cfg,
    labels: Sequence[str],
    thresholds: Sequence[float],
    *,
    name: str | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    """The card of the bundle of run ``run_dir`` (its split.json and, when evaluated, metrics.json)."""
    run_dir = Path(run_dir)
    split = _read_json(run_dir / "split.json") or {}
    metrics = _read_json(run_dir / "metrics.json")
    kind = cfg.model.kind
    card: dict[str, Any] = {
        "name": name or run_dir.resolve().name,
        "version": version or "1",
        "model": (
            f"CIA-Net (contrast-induced attention, {cfg.model.backbone})"
            if kind == "cianet"
            else f"baseline multiple-instance grid classifier ({cfg.model.backbone})"
        ),
        "notice": NOTICE,
        "clinical_use": False,
        "intended_use": INTENDED_USE,
        "limitations": LIMITATIONS,
        "inputs": f"gray chest X-ray (PNG, JPEG or DICOM), resized to {int(cfg.data.image_size)} px square",
        "outputs": "a probability per class; boxes and heatmaps for the box classes",
        "training_data": {
            "protocol": scrub_text(str(split.get("description", ""))),
            "dataset": str(getattr(cfg.data, "dataset", NIH) or NIH),
            "train_images": len(split.get("train", [])),
            "validation_images": len(split.get("val", []) or []),
            "test_images": len(split.get("test", [])),
            "box_supervised_images": len(split.get("box_supervised", [])),
            # kind (phantom / semi-synthetic / real), name, images, labels: cianet.inference.domain
            **training_provenance(
                cfg.data.data_root,
                str(getattr(cfg.data, "dataset", "") or ""),
                list(labels),
                sum(len(split.get(k) or []) for k in ("train", "val", "test")),
            ),
        },
        "metrics": _metrics_summary(metrics),
        "thresholds": {lab: float(t) for lab, t in zip(labels, thresholds)},
        "created": datetime.date.today().isoformat(),
        "cianet_version": cianet.__version__,
        "citation": "J. Liu, G. Zhao, Y. Fei, M. Zhang, Y. Wang, Y. Yu. Align, Attend and Locate: Chest X-ray "
        "Diagnosis via Contrast Induced Attention Network with Limited Supervision. ICCV 2019.",
    }
    kind = card["training_data"]["kind"]
    if kind in ("phantom", "semi-synthetic"):
        card["limitations"] = SYNTHETIC_LIMITATIONS.format(kind=kind)
    return card


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _metrics_summary(metrics: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Mean AUC and class-mean localization accuracy per T(IoU) of the run's own test split (None: not evaluated)."""
    if not isinstance(metrics, Mapping) or "auc" not in metrics:
        return None
    loc = metrics.get("localization") or {}
    out = {
        "test_images": metrics.get("n_images"),
        "test_boxes": metrics.get("n_boxes"),
        "auc_mean": (metrics.get("auc") or {}).get("Mean"),
        "localization_mean": {t: (v or {}).get("Mean") for t, v in loc.items()},
    }
    if metrics.get("pointing_game"):  # calibration-free localization (cianet.metrics.pointing_hit)
        out["pointing_game_mean"] = metrics["pointing_game"].get("Mean")
    vt = metrics.get("val_threshold") or {}
    if vt.get("threshold") is not None:
        out["val_threshold"] = {
            "threshold": vt["threshold"],
            "localization_mean": {t: (v or {}).get("Mean") for t, v in vt["localization"].items()},
        }
    if metrics.get("ci"):
        out["confidence_intervals"] = metrics["ci"]
    return out


def format_card(header: Mapping[str, Any], tensors: Mapping[str, Any] | None = None) -> str:
    """Human-readable text of a bundle header (``cianet.run.bundle_format.read_header(path)["bundle"]``)."""
    card = header.get("card") or {}
    lines = []
    title = card.get("name") or (header.get("source") or {}).get("run") or "unnamed model"
    lines.append(f"{title} (version {card.get('version', '?')}): {card.get('model', header.get('kind', '?'))}")
    if card.get("notice"):
        lines.append(f"NOTICE: {card['notice']}")
    for key, label in (
        ("intended_use", "intended use"),
        ("limitations", "limitations"),
        ("inputs", "inputs"),
        ("outputs", "outputs"),
    ):
        if card.get(key):
            lines.append(f"{label}: {card[key]}")
    data = card.get("training_data") or {}
    if data.get("kind"):
        lines.append(
            f"training data set: {data['kind']}: {data.get('name', '?')}; {data.get('images', '?')} images in "
            "the run's splits; "
            f"labels {', '.join(data.get('labels') or []) or '?'}"
        )
        if data["kind"] in ("phantom", "semi-synthetic"):
            lines.append(
                f"WARNING: trained on a {data['kind']} data set only: its predictions on real X-rays mean "
                "nothing (cianet ships no weights for real X-rays)"
            )
    if data:
        lines.append(
            f"training data: {data.get('dataset', '?')}, {data.get('protocol') or 'protocol not recorded'}; "
            f"{data.get('train_images', '?')} training, {data.get('validation_images', 0)} validation, "
            f"{data.get('test_images', '?')} test images ({data.get('box_supervised_images', 0)} with boxes "
            "in training)"
        )
    m = card.get("metrics")
    if m:
        loc = m.get("localization_mean") or {}
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(
            f"test metrics ({m.get('test_images', '?')} images, {m.get('test_boxes', '?')} boxes): mean AUC "
            f"{fmt(m.get('auc_mean'))}; localization " + ", ".join(f"T={t}: {fmt(v)}" for t, v in loc.items())
        )
        if "pointing_game_mean" in m:
            lines.append(f"pointing game (calibration-free): {fmt(m['pointing_game_mean'])}")
        vt = m.get("val_threshold")
        if vt:
            lines.append(
                f"localization at p > {vt['threshold']:g} (chosen on the validation split): "
                + ", ".join(f"T={t}: {fmt(v)}" for t, v in vt["localization_mean"].items())
            )
    else:
        lines.append("test metrics: none recorded (the run was not evaluated before bundling)")
    thr = card.get("thresholds") or dict(zip(header.get("labels", []), header.get("thresholds", [])))
    if thr:
        lines.append("box thresholds: " + ", ".join(f"{k} {v:g}" for k, v in thr.items()))
    bank = header.get("negatives") or {}
    lines.append(
        f"input {header.get('input_size', '?')} px; alignment {'yes' if header.get('alignment') else 'no'}; "
        f"negative bank: {bank.get('count', 0)} entries ({bank.get('strategy', 'none')}), codes and maps only"
    )
    lines.append(f"written by cianet {header.get('cianet_version', '?')}; created {card.get('created', '?')}")
    if tensors is not None:
        n = sum(1 for k in tensors if k.startswith("model."))
        lines.append(f"tensors: {len(tensors)} ({n} network weights)")
    if card.get("citation"):
        lines.append(f"cite: {card['citation']}")
    return "\n".join(lines)
