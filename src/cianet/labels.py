"""The NIH ChestX-ray14 label set, in the order every array in cianet uses."""

from __future__ import annotations

from cianet.errors import InputError

#: The 14 finding labels; column k of every (N, 14) array is LABELS[k].
LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)

#: The 8 classes that have boxes in BBox_List_2017.csv: the first 8 of LABELS.
BOX_LABELS: tuple[str, ...] = LABELS[:8]

NUM_CLASSES = len(LABELS)
NUM_BOX_CLASSES = len(BOX_LABELS)

#: Image-level label of the negatives.
NO_FINDING = "No Finding"

#: BBox_List_2017.csv spells one class differently from Data_Entry_2017.csv.
BBOX_LABEL_ALIASES: dict[str, str] = {"Infiltrate": "Infiltration"}

LABEL_TO_INDEX: dict[str, int] = {name: i for i, name in enumerate(LABELS)}


def canonical_label(name: str) -> str:
    """Map a label as spelled in any NIH file to its name in LABELS (raises KeyError if unknown)."""
    name = name.strip()
    name = BBOX_LABEL_ALIASES.get(name, name)
    if name not in LABEL_TO_INDEX:
        raise KeyError(f"unknown ChestX-ray14 label {name!r}")
    return name


class LabelSet:
    """The classes of one data set, in the column order of every array of a model trained on it.

    The box classes come first (``names[:n_box]``), so that a model's first ``n_box`` output channels are
    the ones localization is measured on, as with NIH's 8 of 14. ``no_finding`` is how the data set spells
    the label of its negatives (informational; records say whether they are negatives).
    """

    __slots__ = ("dataset", "names", "n_box", "no_finding", "_index")

    def __init__(self, dataset: str, names: tuple[str, ...] | list[str], n_box: int, no_finding: str = NO_FINDING):
        names = tuple(str(n) for n in names)
        if not names:
            raise InputError(f"data set {dataset!r}: no classes")
        if len(set(names)) != len(names):
            raise InputError(f"data set {dataset!r}: a class is listed twice in {list(names)}")
        if not 0 <= n_box <= len(names):
            raise InputError(f"data set {dataset!r}: {n_box} box classes of {len(names)}")
        self.dataset, self.names, self.n_box, self.no_finding = dataset, names, int(n_box), no_finding
        self._index = {n: i for i, n in enumerate(names)}

    @property
    def box_names(self) -> tuple[str, ...]:
        return self.names[: self.n_box]

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelSet) and (self.names, self.n_box) == (other.names, other.n_box)

    def __hash__(self) -> int:
        return hash((self.names, self.n_box))

    def __repr__(self) -> str:
        return f"LabelSet({self.dataset!r}, {len(self.names)} classes, {self.n_box} with boxes)"

    def index(self, name: str) -> int:
        """Column of ``name`` (KeyError naming the data set when it is not one of its classes)."""
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"{name!r} is not a class of data set {self.dataset!r}") from None

    def sort(self, names) -> tuple[str, ...]:
        """``names`` (a subset of the classes) in column order."""
        return tuple(sorted(set(names), key=self.index))


#: ChestX-ray14: 14 classes, the first 8 with boxes. Its name spells cianet.config.NIH, not imported: `import
#: cianet` loads this module and stays free of the config (yaml).
NIH_LABEL_SET = LabelSet("nih", LABELS, NUM_BOX_CLASSES)


def label_set_from(labels, box_labels, dataset: str = "") -> LabelSet:
    """The LabelSet recorded as two name lists (a config's ``data.labels`` / ``data.box_labels``, a checkpoint's
    or a bundle's ``labels`` / ``box_labels``); None for ``labels`` is ChestX-ray14 (files made before data
    sets other than NIH existed). ValueError when the box classes are not the leading classes."""
    if labels is None:
        return NIH_LABEL_SET
    labels = [str(n) for n in labels]
    box = [str(n) for n in (box_labels or [])]
    if labels[: len(box)] != box:
        raise InputError(f"box classes {box} must be the first classes of {labels}")
    if dataset == "" and (tuple(labels), len(box)) == (LABELS, NUM_BOX_CLASSES):
        dataset = NIH_LABEL_SET.dataset
    return LabelSet(dataset or "custom", labels, len(box))
