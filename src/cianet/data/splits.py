"""Seeded, patient-aware splits of an NIH index.

* ``classification_split``: patient-disjoint train / val / test (70 / 10 / 20 of images, paper section 4.2),
  or the official lists with the validation set carved patient-disjointly out of train_val_list.txt.
* ``localization_folds``: the annotated images (880 on NIH) in k patient-grouped folds of balanced size
  and roughly balanced box classes.
* ``localization_protocol``: the training / test image lists of the paper's Tables 1-3 for one fold.

Everything is a function of the index and the seed, so a split can be recomputed; ``write_splits`` /
``read_splits`` store it as JSON anyway so that runs share the exact lists.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cianet.config import NIH
from cianet.data.index import ImageIndex as NIHIndex  # any data set's index (the name predates the others)
from cianet.data.layouts import open_index
from cianet.data.nih import TEST_LIST, TRAIN_VAL_LIST
from cianet.errors import InputError, MissingPathError
from cianet.utils.atomic import atomic_write_json

SPLITS_FORMAT_VERSION = 1

# Distinct streams of the seed so that, e.g., the fold assignment does not change with the class split.
_STREAM_CLASSIFICATION = 1
_STREAM_FOLDS = 2
_STREAM_PROTOCOL_FOLDS = 3
_STREAM_UNANNOTATED = 4
_STREAM_VAL = 5


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *stream]))


def _group_by_patient(index: NIHIndex, names: Iterable[str]) -> dict[str, list[str]]:
    """patient id -> names (in the order given); dict order is first appearance."""
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(index[n].patient_id, []).append(n)
    return groups


def _take_patients(groups: dict[str, list[str]], order: Sequence[str], targets: Sequence[float]) -> list[list[str]]:
    """Deal whole patients, in ``order``, into consecutive parts whose image counts reach ``targets``.

    A patient goes to the current part when that brings the part closer to its target than leaving it
    (otherwise the deal moves on to the next part), so each part ends within half a patient's images of
    its target. The last part takes the rest.
    """
    parts: list[list[str]] = [[] for _ in targets]
    k, filled = 0, 0
    for pid in order:
        n = len(groups[pid])
        while k < len(targets) - 1 and abs(filled + n - targets[k]) > abs(filled - targets[k]):
            k, filled = k + 1, 0
        parts[k].extend(groups[pid])
        filled += n
    return parts


def _check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    if len(ratios) != 3 or any(not math.isfinite(r) or r < 0 for r in ratios):
        raise InputError(f"--ratios must be three non-negative numbers (train, val, test), got {tuple(ratios)}")
    total = float(sum(ratios))
    if abs(total - 1.0) > 1e-6:  # never renormalized silently: 0.5 0.6 0.2 is a typo, not a recipe
        raise InputError(f"--ratios must sum to 1, got {' '.join(f'{r:g}' for r in ratios)} (sum {total:g})")
    return tuple(float(r) for r in ratios)  # type: ignore[return-value]


def classification_split(
    index: NIHIndex,
    seed: int = 0,
    ratios: Sequence[float] = (0.7, 0.1, 0.2),
    official: bool = False,
) -> dict[str, list[str]]:
    """Patient-disjoint ``{"train", "val", "test"}`` lists of image names (each sorted).

    Random (default): patients are shuffled with ``seed`` and dealt so the image counts follow ``ratios``.
    Official: test = test_list.txt, and val is carved out of train_val_list.txt by patient with the share
    ``ratios[1] / (ratios[0] + ratios[1])`` (1/8 for 70/10/20). Names in a list but not in the index are
    ignored; images in neither list are left out. Annotated images are not treated specially.
    """
    r_train, r_val, r_test = _check_ratios(ratios)
    rng = _rng(seed, _STREAM_CLASSIFICATION)
    if not official:
        groups = _group_by_patient(index, index.names())
        order = sorted(groups)
        rng.shuffle(order)
        n = len(index)
        train, val, test = _take_patients(groups, order, [r_train * n, r_val * n, r_test * n])
    else:
        if index.official_train_val is None or index.official_test is None:
            raise MissingPathError(
                f"{index.root}: the official split needs {TRAIN_VAL_LIST} and {TEST_LIST} in the data root"
            )
        names = index.names()
        test = [n for n in names if n in index.official_test]
        train_val = [n for n in names if n in index.official_train_val and n not in index.official_test]
        groups = _group_by_patient(index, train_val)
        order = sorted(groups)
        rng.shuffle(order)
        share_val = r_val / (r_train + r_val) if r_train + r_val > 0 else 0.0
        m = len(train_val)
        val, train = _take_patients(groups, order, [share_val * m, (1 - share_val) * m])
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def localization_folds(index: NIHIndex, seed: int = 0, k: int = 5) -> list[list[str]]:
    """The annotated images in ``k`` patient-grouped folds (each sorted), balanced in size and box classes.

    Patients are shuffled with ``seed``, then taken largest group first and each given to the fold where it
    least worsens the balance: the fold's size relative to N/k plus, weighted by half, the fold's count of the
    patient's box classes relative to their per-fold targets.
    """
    if k < 2:
        raise InputError(f"need at least 2 folds, got k={k}")
    annotated = index.annotated_names()
    if len(annotated) < k:
        raise InputError(f"{index.root}: only {len(annotated)} annotated images, cannot make {k} folds")
    groups = _group_by_patient(index, annotated)
    if len(groups) < k:
        raise InputError(f"{index.root}: annotated images come from only {len(groups)} patients, cannot make {k} folds")
    rng = _rng(seed, _STREAM_FOLDS)
    order = sorted(groups)
    rng.shuffle(order)
    order.sort(key=lambda p: -len(groups[p]))  # stable: ties keep the seeded order

    classes = {p: Counter(lab for n in groups[p] for lab in index[n].box_labels) for p in order}
    class_total = Counter()
    for c in classes.values():
        class_total.update(c)
    size_target = len(annotated) / k
    folds: list[list[str]] = [[] for _ in range(k)]
    fold_classes = [Counter() for _ in range(k)]

    def cost(f: int, n: int, cls: Counter) -> float:
        """How much adding a patient's ``n`` images with box classes ``cls`` to fold ``f`` unbalances it."""
        size_term = (len(folds[f]) + n) / size_target
        class_term = sum(c * (fold_classes[f][lab] + c) / (class_total[lab] / k) for lab, c in cls.items())
        return size_term + 0.5 * class_term / max(1, sum(cls.values()))

    for p in order:
        n = len(groups[p])
        cls = classes[p]
        best = min(range(k), key=lambda f: (cost(f, n, cls), len(folds[f]), f))
        folds[best].extend(groups[p])
        fold_classes[best].update(cls)
    return [sorted(f) for f in folds]


@dataclass
class Protocol:
    """Training and test images of one localization experiment (paper Tables 1-3).

    ``train_annotated`` (a subset of ``train``) keep their boxes; the rest of ``train`` is image-level only.
    ``excluded`` records the training candidates dropped because their patient has a test image.
    ``val`` (patient-disjoint from ``train`` and ``test``) holds the training patients set aside for validation
    (``val_share``); its annotated images keep their boxes so that validation can measure localization.
    """

    train: list[str]
    test: list[str]
    train_annotated: list[str]
    excluded: dict
    description: str
    fold: int | None = None
    annotated_ratio: float = 0.0
    unannotated_ratio: float = 0.0
    annotated_folds: list[int] = field(default_factory=list)
    seed: int = 0
    val: list[str] = field(default_factory=list)
    val_share: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _check_folds(index: NIHIndex, folds: Sequence[Sequence[str]]) -> None:
    seen: set[str] = set()
    for i, f in enumerate(folds):
        for n in f:
            if n in seen:
                raise InputError(f"localization folds: image {n!r} is in more than one fold (again in fold {i})")
            if n not in index:
                raise InputError(f"localization folds: image {n!r} (fold {i}) is not in the index of {index.root}")
            seen.add(n)


def _sample_patients(index: NIHIndex, names: list[str], ratio: float, rng: np.random.Generator) -> list[str]:
    """About ``ratio`` of ``names``, taking whole patients in a seeded order."""
    if ratio >= 1.0:
        return list(names)
    if ratio <= 0.0:
        return []
    groups = _group_by_patient(index, names)
    order = sorted(groups)
    rng.shuffle(order)
    (taken, _rest) = _take_patients(groups, order, [ratio * len(names), (1 - ratio) * len(names)])
    return taken


def localization_protocol(
    index: NIHIndex,
    folds: Sequence[Sequence[str]],
    fold: int,
    annotated_ratio: float,
    unannotated_ratio: float,
    seed: int = 0,
    allow_patient_overlap: bool = False,
    unannotated_only: bool = False,
    val_share: float = 0.0,
) -> Protocol:
    """Training / test lists for fold ``fold`` of the localization experiments.

    Test = the annotated images of ``folds[fold]``. Training = ``annotated_ratio`` of all annotated images
    (a whole number of the other folds: 0.8 = the other four of five, 0.4 = two of them chosen with
    ``seed``, 0 = none) plus ``unannotated_ratio`` of all unannotated images (every image not in the folds,
    No Finding included), sampled by patient with ``seed`` (the same sample for every fold).
    ``unannotated_only``: train on unannotated images only and test on all annotated images (Table 2);
    ``fold`` and ``annotated_ratio`` are then ignored (the protocol records annotated_ratio 0).

    Unless ``allow_patient_overlap``, training images of a patient who has a test image are dropped and
    listed in ``excluded`` (the paper is silent; such leakage inflates the scores).

    ``val_share`` holds out that share of the training images, by whole patients, as a validation set
    (:func:`validation_patients`): drawn separately from the box-supervised training images and from the
    others, so both kinds are represented; a patient with a box-supervised image counts as annotated. The
    draw is a function of the arguments (its own stream of ``seed``, per fold), so a rerun or a resumed run
    gets the same set.
    """
    k = len(folds)
    _check_protocol_args(index, folds, annotated_ratio, unannotated_ratio, val_share)
    annotated_all = sorted(n for f in folds for n in f)
    annotated_set = set(annotated_all)
    unannotated_all = [n for n in index.names() if n not in annotated_set]

    if unannotated_only:
        test = annotated_all
        chosen_folds: list[int] = []
        train_ann: list[str] = []
        fold_id: int | None = None
    else:
        chosen_folds = _training_folds(k, fold, annotated_ratio, seed)
        train_ann = sorted(n for f in chosen_folds for n in folds[f])
        test = sorted(folds[fold])
        fold_id = fold
    train_unann = _sample_patients(index, unannotated_all, unannotated_ratio, _rng(seed, _STREAM_UNANNOTATED))
    train_ann, train_unann, excluded = _exclude_test_patients(
        index, test, train_ann, train_unann, allow_patient_overlap
    )

    val = validation_patients(index, train_ann, train_unann, val_share, _rng(seed, _STREAM_VAL, fold_id or 0))
    held = set(val)
    n_val_boxed = sum(1 for n in train_ann if n in held)
    train_ann = [n for n in train_ann if n not in held]
    train_unann = [n for n in train_unann if n not in held]
    protocol = Protocol(
        train=sorted(set(train_ann) | set(train_unann)),
        test=test,
        train_annotated=sorted(train_ann),
        excluded=excluded,
        description="",
        fold=fold_id,
        annotated_ratio=0.0 if unannotated_only else float(annotated_ratio),
        unannotated_ratio=float(unannotated_ratio),
        annotated_folds=chosen_folds,
        seed=int(seed),
        val=sorted(val),
        val_share=float(val_share),
    )
    protocol.description = _describe(protocol, k, unannotated_only, allow_patient_overlap, n_val_boxed)
    return protocol


def _describe(p: Protocol, k: int, unannotated_only: bool, allow_patient_overlap: bool, n_val_boxed: int) -> str:
    """The protocol in one line: what trains, what tests, what was excluded or held out."""
    if unannotated_only:
        head = f"train on {p.unannotated_ratio:.0%} unannotated only; test on all {len(p.test)} annotated images"
    else:
        head = (
            f"fold {p.fold}/{k}: train on {p.annotated_ratio:.0%} annotated (folds {p.annotated_folds or 'none'}) + "
            f"{p.unannotated_ratio:.0%} unannotated; test on fold {p.fold} ({len(p.test)} annotated images)"
        )
    excluded = p.excluded
    n_ex = excluded["n_annotated"] + excluded["n_unannotated"]
    leak = (
        "patient overlap allowed"
        if allow_patient_overlap
        else f"{n_ex} training images of the {excluded['test_patients']} test patients excluded"
    )
    description = f"{head}; {len(p.train)} training images ({len(p.train_annotated)} with boxes); {leak}"
    if p.val:
        description += f"; {len(p.val)} validation images ({n_val_boxed} with boxes) held out of training"
    return description


def _check_protocol_args(
    index: NIHIndex, folds: Sequence[Sequence[str]], annotated_ratio: float, unannotated_ratio: float, val_share: float
) -> None:
    k = len(folds)
    if k < 2:
        raise InputError(f"need at least 2 localization folds, got {k}")
    _check_folds(index, folds)
    if not 0.0 <= unannotated_ratio <= 1.0:
        raise InputError(f"unannotated_ratio must be in [0, 1], got {unannotated_ratio}")
    if not 0.0 <= annotated_ratio <= 1.0:
        raise InputError(f"annotated_ratio must be in [0, 1], got {annotated_ratio}")
    if not 0.0 <= val_share < 1.0:
        raise InputError(f"val_share must be in [0, 1), got {val_share}")


def _training_folds(k: int, fold: int, annotated_ratio: float, seed: int) -> list[int]:
    """The other folds whose annotated images train when testing on ``fold``: ``annotated_ratio * k`` of them,
    drawn with ``seed`` (its own stream per fold)."""
    if not 0 <= fold < k:
        raise InputError(f"fold must be in [0, {k - 1}], got {fold}")
    n_folds = annotated_ratio * k
    if abs(n_folds - round(n_folds)) > 1e-6 or round(n_folds) > k - 1:
        raise InputError(
            f"annotated_ratio {annotated_ratio} must be a multiple of 1/{k} of at most {(k - 1) / k:g} "
            f"(a whole number of the other {k - 1} folds)"
        )
    others = [f for f in range(k) if f != fold]
    pick = _rng(seed, _STREAM_PROTOCOL_FOLDS, fold).choice(len(others), size=round(n_folds), replace=False)
    return sorted(others[i] for i in pick)


def _exclude_test_patients(
    index: NIHIndex, test: list[str], train_ann: list[str], train_unann: list[str], allow_patient_overlap: bool
) -> tuple[list[str], list[str], dict]:
    """The training lists without the test patients' images (unless ``allow_patient_overlap``), and the
    protocol's ``excluded`` record of what was dropped."""
    test_patients = {index[n].patient_id for n in test}
    excluded: dict = {"test_patients": len(test_patients), "annotated": [], "unannotated": []}
    if not allow_patient_overlap:
        excluded["annotated"] = [n for n in train_ann if index[n].patient_id in test_patients]
        excluded["unannotated"] = sorted(n for n in train_unann if index[n].patient_id in test_patients)
        drop = set(excluded["annotated"]) | set(excluded["unannotated"])
        train_ann = [n for n in train_ann if n not in drop]
        train_unann = [n for n in train_unann if n not in drop]
    excluded["n_annotated"] = len(excluded["annotated"])
    excluded["n_unannotated"] = len(excluded["unannotated"])
    return train_ann, train_unann, excluded


def validation_patients(
    index: NIHIndex, annotated: Sequence[str], unannotated: Sequence[str], share: float, rng: np.random.Generator
) -> list[str]:
    """About ``share`` of the training images, whole patients, as a validation set (unsorted).

    Patients with an image in ``annotated`` are drawn among themselves (about ``share`` of the annotated
    images, all of each drawn patient's training images going to validation), then the remaining patients
    (about ``share`` of the other images), so the set has box-annotated images in proportion.
    """
    if share <= 0.0:
        return []
    ann_set = set(annotated)
    names = list(annotated) + [n for n in unannotated if n not in ann_set]
    groups = _group_by_patient(index, names)
    ann_patients = sorted({index[n].patient_id for n in annotated})
    other_patients = sorted(set(groups) - set(ann_patients))
    val: list[str] = []
    for patients in (ann_patients, other_patients):
        if not patients:
            continue
        sub = {p: groups[p] for p in patients}
        order = list(patients)
        rng.shuffle(order)
        total = sum(len(v) for v in sub.values())
        taken, _rest = _take_patients(sub, order, [share * total, (1 - share) * total])
        val.extend(taken)
    return val


def make_splits(
    index: NIHIndex,
    seed: int = 0,
    k: int = 5,
    official: bool = False,
    ratios: Sequence[float] = (0.7, 0.1, 0.2),
) -> dict:
    """The full splits document ``cianet splits`` writes (classification + localization folds + metadata)."""
    cls = classification_split(index, seed=seed, ratios=ratios, official=official)
    folds = localization_folds(index, seed=seed, k=k)
    return {
        "format_version": SPLITS_FORMAT_VERSION,
        "seed": int(seed),
        "official": bool(official),
        "ratios": [float(r) for r in ratios],
        "entry_csv": index.entry_csv.name if index.entry_csv else None,
        "dataset": getattr(index, "dataset", NIH),
        "images": len(index),
        "classification": cls,
        "localization_folds": folds,
        "counts": {
            "classification": {key: len(v) for key, v in cls.items()},
            "localization_folds": [len(f) for f in folds],
            "localization_fold_boxes": [
                {
                    lab: c
                    for lab, c in sorted(
                        Counter(b.label for n in f for b in index[n].boxes).items(),
                        key=lambda kv: index.label_set.index(kv[0]),
                    )
                }
                for f in folds
            ],
        },
    }


def _validate(splits: dict, where: str) -> None:
    if not isinstance(splits, dict):
        raise InputError(f"{where}: splits must be a JSON object")
    for key in ("classification", "localization_folds"):
        if key not in splits:
            raise InputError(f"{where}: missing key {key!r}")
    cls = splits["classification"]
    if not isinstance(cls, dict) or any(not isinstance(cls.get(p), list) for p in ("train", "val", "test")):
        raise InputError(f"{where}: 'classification' must hold lists 'train', 'val' and 'test'")
    folds = splits["localization_folds"]
    if not isinstance(folds, list) or any(not isinstance(f, list) for f in folds):
        raise InputError(f"{where}: 'localization_folds' must be a list of lists of image names")
    for lst in [*(cls[p] for p in ("train", "val", "test")), *folds]:
        if any(not isinstance(n, str) for n in lst):
            raise InputError(f"{where}: split lists must hold image file names (strings)")


def write_splits(path: str | os.PathLike, splits: dict) -> None:
    """Write a splits document as JSON, atomically (must hold 'classification' and 'localization_folds')."""
    _validate(splits, str(path))
    atomic_write_json(path, splits, indent=1)


def read_splits(path: str | os.PathLike) -> dict:
    """Read a splits JSON written by ``write_splits``; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingPathError(f"{path}: splits file not found (make one with `cianet splits`)") from None
    try:
        splits = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    _validate(splits, str(path))
    return splits


def write_root_splits(
    data_root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    seed: int = 0,
    k: int = 5,
    official: bool = False,
    ratios: Sequence[float] = (0.7, 0.1, 0.2),
    only_present: bool = False,
    entry_csv: str | None = None,
    bbox_csv: str | None = None,
    strict: bool = False,
    dataset: str = "auto",
    box_merge: str = "mean",
    merge_iou: float = 0.4,
    label_map: str | None = None,
) -> dict:
    """``cianet splits``: index a data root, make its splits (:func:`make_splits`) and write them to ``out``.

    ``only_present`` splits only the images whose file was found. Pool-only images (``ImageIndex.pool_only``)
    are in no split, as in a run's protocol.
    """

    index = open_index(
        data_root,
        dataset,
        strict=strict,
        entry_csv=entry_csv,
        bbox_csv=bbox_csv,
        box_merge=box_merge,
        merge_iou=merge_iou,
        label_map=label_map,
    ).without_pool_only()
    if only_present:
        present = index.present()
        if not present:
            raise MissingPathError(f"{index.root}: --only-present, but no image file was found below it")
        index = index.restrict(present)
    splits = make_splits(index, seed=seed, k=k, official=official, ratios=ratios)
    write_splits(out, splits)
    return splits
