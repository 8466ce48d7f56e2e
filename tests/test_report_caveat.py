"""The demo report's caution about classes with very few test boxes."""

import numpy as np

from cianet.evaluation.report import few_box_classes
from cianet.labels import LABELS


def _run(tmp_path, box_classes):
    run = tmp_path / "run"
    run.mkdir()
    n = len(box_classes)
    np.savez(
        run / "predictions.npz",
        scores=np.zeros((3, 14), np.float32),
        labels=np.zeros((3, 14), np.float32),
        ious=np.full(n, 0.5),
        box_classes=np.asarray(box_classes, np.int64),
        box_images=np.zeros(n, np.int64),
    )
    return run


def test_lists_exactly_the_classes_under_the_threshold(tmp_path):
    classes = [0] * 5 + [1] * 4 + [4] + [7] * 6
    assert few_box_classes(_run(tmp_path, classes)) == f"{LABELS[1]}: 4, {LABELS[4]}: 1"
    assert few_box_classes(tmp_path / "run", below=2) == f"{LABELS[4]}: 1"
    assert few_box_classes(tmp_path / "run", below=1) == ""
