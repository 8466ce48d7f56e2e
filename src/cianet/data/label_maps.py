"""Declared mappings from a data set's classes to ChestX-ray14's, for cross-data-set evaluation (e.g. a model
trained on NIH tested on VinDr-CXR's matching classes): ``data.label_map: nih`` / ``--label-map nih``.

A mapped index has NIH's 14 classes. A class without an NIH counterpart is dropped (its boxes too); an image
keeps being a negative only if it was one, so an image whose findings are all unmapped is neither positive
nor a negative. NIH classes no source class maps to have no positives: their AUC is undefined (NaN, left out
of the mean) and they have no boxes to localize.

**Choice**: VinDr-CXR's "Nodule/Mass" maps to both NIH "Nodule" and "Mass" (its boxes count in both columns;
the one class cannot be split); "Lung Opacity", "Aortic enlargement", "Calcification", "ILD" and
"Other lesion" have no NIH class. RSNA's "Pneumonia" is NIH's "Pneumonia".

:func:`match_classes` then meets a model's classes with a (mapped) data set's: the model's classes without a
counterpart there are left out of the evaluation altogether (``cianet evaluate --out``), not scored as if the
data set had no positives for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from cianet.config import CSV, LABEL_MAPS, NIH, RSNA, VINDR
from cianet.data.index import ImageIndex, ImageRecord
from cianet.errors import InputError
from cianet.labels import LABELS, NIH_LABEL_SET, LabelSet

VINDR_TO_NIH: dict[str, tuple[str, ...]] = {
    "Atelectasis": ("Atelectasis",),
    "Cardiomegaly": ("Cardiomegaly",),
    "Pleural effusion": ("Effusion",),
    "Infiltration": ("Infiltration",),
    "Nodule/Mass": ("Mass", "Nodule"),
    "Pneumothorax": ("Pneumothorax",),
    "Consolidation": ("Consolidation",),
    "Pulmonary fibrosis": ("Fibrosis",),
    "Pleural thickening": ("Pleural_Thickening",),
}
RSNA_TO_NIH: dict[str, tuple[str, ...]] = {"Pneumonia": ("Pneumonia",)}
CSV_TO_NIH: dict[str, tuple[str, ...]] = {name: (name,) for name in LABELS}  # a CSV data set spelling NIH's names
TO_NIH: dict[str, dict[str, tuple[str, ...]]] = {
    NIH: {n: (n,) for n in LABELS},
    VINDR: VINDR_TO_NIH,
    RSNA: RSNA_TO_NIH,
    CSV: CSV_TO_NIH,
}


def map_index(index: ImageIndex, label_map: str) -> ImageIndex:
    """``index`` with its classes mapped to those of ``label_map`` (only "nih"); records are copies."""
    if label_map not in LABEL_MAPS:
        raise InputError(f"unknown label map {label_map!r}: expected one of {', '.join(LABEL_MAPS)}")
    mapping = TO_NIH[index.dataset]
    records: list[ImageRecord] = []
    for rec in index.records:
        labels = {t for lab in rec.labels for t in mapping.get(lab, ())}
        boxes = [replace(b, label=t) for b in rec.boxes for t in mapping.get(b.label, ())]
        records.append(replace(rec, labels=NIH_LABEL_SET.sort(labels), boxes=boxes, negative=rec.no_finding))
    facts = {
        **index.facts,
        "label_map": label_map,
        "unmapped_classes": [c for c in index.label_set.names if c not in mapping],
        "mapped_classes": list(NIH_LABEL_SET.sort({t for c in index.label_set.names for t in mapping.get(c, ())})),
    }
    return ImageIndex(
        index.root,
        records,
        index.official_train_val,
        index.official_test,
        index.entry_csv,
        index.bbox_csv,
        index.orphan_boxes,
        index.duplicate_files,
        index.files_scanned,
        label_set=NIH_LABEL_SET,
        dataset=index.dataset,
        facts=facts,
    )


def counterparts(index: ImageIndex) -> tuple[str, ...]:
    """The classes of ``index`` that stand for a class its data set annotates: all of them, unless the index
    was mapped (:func:`map_index`); then only the NIH classes some class of the source data set maps to."""
    mapped = index.facts.get("mapped_classes")
    return tuple(index.label_set.names) if mapped is None else tuple(mapped)


@dataclass
class ClassMatch:
    """How a model's classes meet a data set's (cross-data-set evaluation, :func:`match_classes`)."""

    scored: tuple[str, ...]  # the model's classes the data set has a counterpart for (model order)
    left_out: tuple[str, ...]  # the model's classes without one: not scored at all
    #: the data set's classes the model has no output for (their labels dropped; with a label map, the
    #: source classes the map has no target for)
    not_in_model: tuple[str, ...]
    #: boxes not used for localization, by class: of classes the model lacks, or scores but does not localize
    boxes_dropped: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "scored": list(self.scored),
            "left_out": list(self.left_out),
            "not_in_model": list(self.not_in_model),
            "boxes_dropped": dict(self.boxes_dropped),
        }


def match_classes(index: ImageIndex, classes: LabelSet) -> tuple[ImageIndex, ClassMatch]:
    """``index`` re-expressed in a model's classes ``classes`` (label set and box classes), for evaluating
    that model on another data set: a class is matched by name, after :func:`map_index` when the names are
    another data set's (NIH, RSNA and VinDr-CXR indexes unmapped must have every class of the model; a csv
    index's classes are matched by name as they are). Labels and boxes of classes the model lacks are dropped,
    as are boxes of classes the model scores but does not localize; an image stays a negative only if it was
    one. Records are copies.

    ValueError when no class of the model has a counterpart, or an unmapped named data set lacks some.
    """
    have = set(counterparts(index))
    scored = tuple(c for c in classes.names if c in have)
    mapped = bool(index.facts.get("label_map"))
    foreign = [c for c in classes.names if c not in index.label_set]
    if not mapped and index.dataset != CSV and foreign:
        # Names shared by chance (VinDr-CXR and NIH both say "Atelectasis" but not "Effusion") are no mapping:
        # a named data set meets only its own classes by name; a csv data set's classes are the user's names.
        hint = (
            "map the data set's classes with --label-map nih"
            if classes == NIH_LABEL_SET and index.dataset in TO_NIH
            else "cianet declares no map between these classes"
        )
        raise InputError(
            f"{index.root}: the model's classes ({', '.join(foreign[:4])}...) are not those of the "
            f"{index.dataset} data set ({', '.join(index.label_set.names[:4])}...): {hint}"
        )
    if not scored:
        raise InputError(
            f"{index.root}: none of the model's {len(classes)} classes ({', '.join(classes.names[:4])}"
            f"...) has a counterpart in the {index.dataset} data set "
            f"({', '.join(index.label_set.names[:4])}...)"
        )
    keep, localized = set(scored), set(classes.box_names) & set(scored)
    dropped: dict[str, int] = {}
    records: list[ImageRecord] = []
    for rec in index.records:
        for b in rec.boxes:
            if b.label not in localized:
                dropped[b.label] = dropped.get(b.label, 0) + 1
        records.append(
            replace(
                rec,
                labels=classes.sort({lab for lab in rec.labels if lab in keep}),
                boxes=[b for b in rec.boxes if b.label in localized],
                negative=rec.no_finding,
            )
        )
    lacking = list(index.facts.get("unmapped_classes") or [])  # the source's classes the map drops
    lacking += [c for c in index.label_set.names if c not in set(classes.names) and c not in lacking]
    match = ClassMatch(
        scored, tuple(c for c in classes.names if c not in have), tuple(lacking), dict(sorted(dropped.items()))
    )
    out = ImageIndex(
        index.root,
        records,
        index.official_train_val,
        index.official_test,
        index.entry_csv,
        index.bbox_csv,
        index.orphan_boxes,
        index.duplicate_files,
        index.files_scanned,
        label_set=classes,
        dataset=index.dataset,
        facts={**index.facts, "class_match": match.as_dict()},
    )
    return out, match
