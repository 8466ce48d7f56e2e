"""From a Config to the image lists of one run (:class:`RunData`), and the run's ``split.json``.

Choices the paper leaves open (see docs/method.md, "Training protocol"):
- The negative pool is every No Finding image that is not held out (test, AUC extras, validation), so a test
  or validation image is never anybody's negative and their negatives come from the training pool. With
  exclude_same_patient the pair never shares a patient.
- Localization protocols test localization on fold k's annotated images; AUC is measured on those plus the
  unannotated images that training left out whose patients have no training image (``auc_extra``), so the
  AUC has negatives too. With 100% unannotated training images that set is empty.
- Validation images (``val``) are never trained on and, like test images, never a negative of the pool.
  The classification protocol uses its split's val list; localization protocols hold out
  ``protocol.val_share`` of the training images by whole patients (``cianet.data.splits.validation_patients``),
  patient-disjoint from train and test, their annotated images keeping their boxes so that validation
  measures localization too. The AUC extras never share a patient with the validation set.
- Pool-only images (``ImageIndex.pool_only``, ``cianet synth --extra-negatives``) are in no list: splits and
  protocols are made from the index without them (so the lists of the other images are those of the data set
  without them); they stay in ``RunData.index``, hence in the negative pool and the hash index.
- ``max_images`` caps the training list (annotated training images are kept first), the test list and the
  validation list, for reduced runs; the caps are deterministic in the seed.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from cianet.config import Config
from cianet.data import splits as sp
from cianet.data.layouts import open_index
from cianet.errors import InputError, MissingPathError, UsageError
from cianet.labels import NIH_LABEL_SET, LabelSet, label_set_from
from cianet.utils.atomic import atomic_write_json

SPLIT_FILE = "split.json"


@dataclass
class RunData:
    index: object  # cianet.data.index.ImageIndex
    train: list[str]
    test: list[str]
    box_names: set[str]  # training images whose boxes supervise (eq. 6 lambda)
    val: list[str] = field(default_factory=list)
    #: image-level test images added for AUC only (localization protocols: unannotated images of patients
    #: not in training); localization is measured on ``test`` alone
    auc_extra: list[str] = field(default_factory=list)
    description: str = ""
    excluded: dict = field(default_factory=dict)

    @property
    def labels(self) -> dict[str, tuple[str, ...]]:
        return {r.name: r.labels for r in self.index.records}

    @property
    def label_set(self) -> LabelSet:
        return self.index.label_set

    @property
    def boxes(self) -> dict[str, list]:
        return {r.name: r.boxes for r in self.index.records if r.boxes}

    @property
    def held_out(self) -> list[str]:
        """Every image scored but never trained on (test, AUC extras, validation), in that order, once each."""
        return list(dict.fromkeys(list(self.test) + list(self.auc_extra) + list(self.val)))


def load_index(cfg: Config):
    """The index of ``cfg.data`` (data root, layout, metadata tables, reader-box merge)."""
    d = cfg.data
    if not d.data_root:
        raise UsageError("no data root: pass --data-root (or set data.data_root in the config)")
    try:
        return open_index(
            d.data_root,
            d.dataset,
            entry_csv=d.entry_csv,
            bbox_csv=d.bbox_csv,
            box_merge=d.box_merge,
            merge_iou=d.merge_iou,
            label_map=d.label_map,
        )
    except FileNotFoundError as exc:
        raise MissingPathError(str(exc)) from None
    except ValueError as exc:
        raise InputError(str(exc)) from None


def adopt_labels(cfg: Config, index) -> LabelSet:
    """The run's classes: those of ``index``'s data set, recorded in ``cfg.data.labels`` / ``box_labels`` (left
    null for ChestX-ray14, as configs always had). A config that names other classes (a run resumed or
    evaluated on another data set) is an InputError naming both."""
    have = label_set_from(cfg.data.labels, cfg.data.box_labels)
    if cfg.data.labels is None and index.label_set == NIH_LABEL_SET:
        return NIH_LABEL_SET
    if cfg.data.labels is not None and have != index.label_set:
        raise InputError(
            f"the run's classes ({len(have)}: {', '.join(have.names[:4])}...) differ from those of "
            f"the data root {index.root} ({index.dataset}, {len(index.label_set)}: "
            f"{', '.join(index.label_set.names[:4])}...); to score a run on another data set's "
            "matching classes: `cianet evaluate --run RUN --data-root ROOT --out DIR [--label-map nih]`"
        )
    if cfg.data.labels is None:
        cfg.data.labels, cfg.data.box_labels = list(index.label_set.names), list(index.label_set.box_names)
    return index.label_set


def load_or_make_splits(cfg: Config, index) -> dict:
    """The splits file the user named (which must exist), else the splits made from the run's seed."""
    if cfg.protocol.splits:
        if not Path(cfg.protocol.splits).is_file():
            raise MissingPathError(
                f"splits file {cfg.protocol.splits} (--splits / protocol.splits) does not exist; "
                "write one with `cianet splits`, or leave it out to make the splits from --seed"
            )
        return sp.read_splits(cfg.protocol.splits)
    return sp.make_splits(index, seed=cfg.run.seed, official=cfg.protocol.official)


def _cap(names: list[str], n: int | None, seed: int, keep_first: set[str] | None = None) -> list[str]:
    if n is None or len(names) <= n:
        return names
    keep_first = keep_first or set()
    first = [x for x in names if x in keep_first]
    rest = [x for x in names if x not in keep_first]
    rng = random.Random(seed)
    rng.shuffle(first)
    rng.shuffle(rest)
    chosen = set((first + rest)[:n])
    return [x for x in names if x in chosen]  # keep the original order


def build_run_data(cfg: Config, index=None) -> RunData:
    """The protocol of cfg.protocol on the data set of cfg.data."""
    full = index if index is not None else load_index(cfg)
    adopt_labels(cfg, full)
    pool_only = getattr(full, "pool_only", frozenset())
    index = full.without_pool_only() if pool_only else full
    splits = load_or_make_splits(cfg, index)
    p = cfg.protocol
    if p.kind == "classification":
        cls = splits["classification"]
        annotated = {r.name for r in index.records if r.boxes}
        train, val, test = list(cls["train"]), list(cls["val"]), list(cls["test"])
        data = RunData(index, train, test, set(train) & annotated, val=val, description="classification 70/10/20")
    elif p.kind == "localization":
        proto = sp.localization_protocol(
            index,
            splits["localization_folds"],
            fold=p.fold,
            annotated_ratio=p.annotated_ratio,
            unannotated_ratio=p.unannotated_ratio,
            seed=cfg.run.seed,
            allow_patient_overlap=p.allow_patient_overlap,
            unannotated_only=p.unannotated_only,
            val_share=p.val_share,
        )
        data = RunData(
            index,
            list(proto.train),
            list(proto.test),
            set(proto.train_annotated),
            val=list(proto.val),
            description=proto.description,
            excluded=proto.excluded,
        )
        kept_out = {index[n].patient_id for n in data.train} | {index[n].patient_id for n in data.val}
        taken = set(data.train) | set(data.test)
        data.auc_extra = [
            r.name for r in index.records if not r.boxes and r.name not in taken and r.patient_id not in kept_out
        ]
    else:
        raise UsageError(f"protocol.kind must be 'localization' or 'classification', got {p.kind!r}")
    data.index = full  # the pool-only images remain negatives
    if pool_only:  # a splits file made on the whole index may still name them
        for key in ("train", "val", "test", "auc_extra"):
            setattr(data, key, [n for n in getattr(data, key) if n not in pool_only])
        data.box_names -= pool_only
    n = cfg.data.max_images
    if n is not None:
        data.train = _cap(data.train, n, cfg.run.seed, keep_first=data.box_names)
        data.box_names &= set(data.train)
        data.test = _cap(data.test, max(1, n // 4), cfg.run.seed + 1)
        data.val = _cap(data.val, max(1, n // 8), cfg.run.seed + 2)
        data.auc_extra = _cap(data.auc_extra, max(1, n // 4), cfg.run.seed + 3)
    if not data.train:
        raise InputError(f"the protocol ({data.description}) leaves no training image")
    return data


def write_split_file(run_dir: str | Path, data: RunData) -> Path:
    """``split.json`` of a run: the image lists it trained and tested on (read back by :func:`read_split_file`)."""
    path = Path(run_dir) / SPLIT_FILE
    atomic_write_json(path, split_record(data))
    return path


def split_record(data: RunData) -> dict:
    """What ``split.json`` holds for ``data``: description, train, val, test, auc_extra, box_supervised, excluded."""
    return {
        "description": data.description,
        "train": data.train,
        "val": data.val,
        "test": data.test,
        "auc_extra": data.auc_extra,
        "box_supervised": sorted(data.box_names),
        "excluded": data.excluded,
    }


def check_same_split(run_dir: str | Path, data: RunData) -> None:
    """A resumed run must train, validate and test on the lists it started with: InputError naming
    ``split.json`` when the image lists rebuilt now differ from the recorded ones (e.g. the data root changed).
    Lists a run folder of an older cianet did not record are not compared."""
    path = Path(run_dir) / SPLIT_FILE
    if not path.is_file():
        return
    saved, now = read_split_file(run_dir), split_record(data)
    differ = [
        key
        for key in ("train", "val", "test", "auc_extra", "box_supervised")
        if key in saved and list(saved[key]) != list(now[key])
    ]
    if differ:
        raise InputError(
            f"{path}: the run was started on other image lists ({', '.join(differ)} differ from "
            "what the data root and config give now); resume it on the data it started with, or "
            "start a new run with another --out"
        )


def read_split_file(run_dir: str | Path) -> dict:
    """The ``split.json`` of a finished run."""
    path = Path(run_dir) / SPLIT_FILE
    if not path.is_file():
        raise MissingPathError(f"{path} does not exist: is {run_dir} a finished `cianet train` run?")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
