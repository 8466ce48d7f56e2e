"""The NIH ChestX-ray14 label set, in the order every array in cianet uses."""

from __future__ import annotations

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
