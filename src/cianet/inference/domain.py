"""Where a model's training data came from, and whether an input image is of the same kind.

A bundle's model card records its training data (``training_data``: ``kind``, ``name``, ``images``,
``labels``). ``kind`` is read from the data root the run trained on:

- ``phantom``: a ``cianet synth`` folder (it holds ``synth_meta.json``) drawn without real backgrounds;
- ``semi-synthetic``: a ``cianet synth --backgrounds`` folder (phantom findings on real X-rays);
- ``real``: any other data root; ``unknown`` when the data root no longer exists (or an older bundle).

A model trained on a phantom knows nothing of real X-rays, so its predictions on them mean nothing. The rule
for "is this input a phantom image" is provenance, not appearance: an input counts as a phantom (or
semi-synthetic) image only when it is a file inside a ``cianet synth`` folder (``synth_meta.json`` in its folder
or the folder above, as ``images/NAME.png`` and ``twins/NAME.png``) of the matching kind and its size is that
folder's image size. Everything else (a real X-ray, a phantom PNG copied elsewhere, an in-memory array) is out
of domain for a synthetic-trained model. The rule is deliberately conservative: a false warning costs a line,
a missing one lets a phantom model read real X-rays without a word. Models trained on real data are not checked
(``in_domain`` is None).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cianet.data.layouts import detect_dataset

#: the file every ``cianet synth`` folder holds (cianet.phantom.generator.generate_dataset)
SYNTH_META = "synth_meta.json"
#: the kinds of training data, from least to most like the clinic
KINDS = ("phantom", "semi-synthetic", "real", "unknown")
SYNTHETIC = ("phantom", "semi-synthetic")


def synth_meta(folder: Path) -> dict[str, Any] | None:
    """The ``synth_meta.json`` of a ``cianet synth`` folder, None when ``folder`` is not one."""
    try:
        meta = json.loads((folder / SYNTH_META).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def meta_kind(meta: Mapping[str, Any]) -> str:
    """``phantom`` or ``semi-synthetic`` (drawn on real backgrounds) for a synth_meta.json."""
    backgrounds = (meta.get("args") or {}).get("backgrounds") or (meta.get("summary") or {}).get("backgrounds")
    return "semi-synthetic" if backgrounds else "phantom"


def data_root_kind(data_root: str | Path | None) -> tuple[str, dict[str, Any] | None]:
    """``(kind, synth_meta or None)`` of a training data root (see the module docstring)."""
    if not data_root or not Path(data_root).is_dir():
        return "unknown", None
    meta = synth_meta(Path(data_root))
    if meta is None:
        return "real", None
    return meta_kind(meta), meta


def training_provenance(data_root: str | Path | None, dataset: str, labels: list[str], images: int) -> dict[str, Any]:
    """The provenance keys of a model card's ``training_data``: kind, name, images, labels, and dataset (the
    layout, "auto" resolved from the data root's files where it still exists)."""
    kind, meta = data_root_kind(data_root)
    if dataset in ("", "auto", None) and kind != "unknown":
        try:
            dataset = detect_dataset(data_root)
        except (ValueError, OSError):
            dataset = "auto"
    if meta is not None:
        args = meta.get("args") or {}
        name = (
            f"cianet synth {kind} (seed {args.get('seed', '?')}, {args.get('size', '?')} px, "
            f"{(meta.get('summary') or {}).get('images', '?')} images)"
        )
    else:
        name = f"{dataset} ({Path(data_root).name})" if data_root else str(dataset)
    return {"kind": kind, "name": name, "images": int(images), "labels": list(labels), "dataset": str(dataset)}


def input_kind(path: str | Path | None, image_size: tuple[int, int] | None = None) -> str:
    """``phantom`` / ``semi-synthetic`` for an image file inside a ``cianet synth`` folder of that image size,
    ``other`` for any other file, ``unknown`` for in-memory input (``path`` None)."""
    if path is None:
        return "unknown"
    p = Path(path)
    for folder in (p.parent, p.parent.parent):
        meta = synth_meta(folder)
        if meta is None:
            continue
        size = (meta.get("args") or {}).get("size")
        if image_size is not None and size is not None and tuple(image_size) != (int(size), int(size)):
            return "other"
        return meta_kind(meta)
    return "other"


def input_domain(
    training: Mapping[str, Any] | None, path: str | Path | None, image_size: tuple[int, int] | None = None
) -> dict[str, Any]:
    """The ``domain`` field of a prediction: ``{"training_data", "input", "in_domain"}``.

    ``in_domain`` is False when a phantom- or semi-synthetic-trained model sees an input that is not a
    ``cianet synth`` image of its kind, True when it is, None when the model was trained on real (or unknown) data.
    """
    kind = str((training or {}).get("kind") or "unknown")
    if kind not in SYNTHETIC:
        return {"training_data": kind, "input": "not checked", "in_domain": None}
    seen = input_kind(path, image_size)
    return {"training_data": kind, "input": seen, "in_domain": seen == kind}


def domain_warning(training: Mapping[str, Any] | None, out_of_domain: int, total: int) -> str:
    """The one warning line for ``out_of_domain`` of ``total`` inputs a synthetic-trained model should not read."""
    kind = str((training or {}).get("kind") or "unknown")
    name = (training or {}).get("name") or kind
    return (
        f"this model was trained on a {kind} data set only ({name}); {out_of_domain} of {total} "
        "inputs are not images of that kind (not written by `cianet synth`): its predictions on them mean "
        "nothing. cianet ships no weights for real X-rays; train on real data for that."
    )
