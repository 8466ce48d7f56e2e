"""The paper's evaluation metrics (section 4.1, following Li et al., CVPR 2018), one module per concern:

- :mod:`cianet.metrics.scores`: image scores from cell logits (eq. 5's ``1 - prod_j (1 - p_j)``, its tie-free
  MIL evidence) and the one way an image probability is displayed;
- :mod:`cianet.metrics.boxes`: localization of the 8 box classes (exact IoUs, accuracy at T(IoU)), the
  calibration-free measures (pointing game, threshold chosen on validation) and the attention metric;
- :mod:`cianet.metrics.auc`: per-class ROC AUC, ROC curves, the Mann-Whitney AUC under bootstrap weights;
- :mod:`cianet.metrics.curves`: one class's ROC and precision-recall points and the area under a curve;
- :mod:`cianet.metrics.bootstrap`: paired bootstrap intervals of CIA-Net minus Base (over boxes or images, and
  over seeds), one-model intervals, and the verdict sentences that follow from an interval;
- :mod:`cianet.metrics.tables`: mean and std over folds or seeds, the paper's markdown tables;
- :mod:`cianet.metrics.arrays`: numpy arrays and torch tensors read the same way.

The public names are re-exported here: ``from cianet.metrics import verdict`` is the way to import them.
"""

from __future__ import annotations

from cianet.metrics.auc import auc_per_class, roc_curves
from cianet.metrics.bootstrap import (
    auc_ci,
    bootstrap_auc_difference,
    bootstrap_class_mean_difference,
    bootstrap_localization_difference,
    class_mean_ci,
    localization_ci,
    verdict,
)
from cianet.metrics.boxes import (
    DEFAULT_THRESHOLDS,
    PROB_THRESHOLD_GRID,
    accuracy_from_ious,
    attention_in_boxes,
    box_ious,
    choose_prob_threshold,
    class_mean_accuracy,
    localization_accuracy,
    mask_iou,
    pointing_hit,
    region_box_iou,
)
from cianet.metrics.curves import curve_area, precision_recall_points, roc_auc, roc_points
from cianet.metrics.scores import format_probability, image_evidence_from_logits, image_scores_from_logits
from cianet.metrics.tables import format_auc_table, format_localization_table, mean_std_results

__all__ = [
    "DEFAULT_THRESHOLDS",
    "image_scores_from_logits",
    "image_evidence_from_logits",
    "format_probability",
    "region_box_iou",
    "box_ious",
    "mask_iou",
    "accuracy_from_ious",
    "localization_accuracy",
    "auc_per_class",
    "roc_curves",
    "roc_points",
    "roc_auc",
    "curve_area",
    "precision_recall_points",
    "mean_std_results",
    "format_localization_table",
    "format_auc_table",
    "bootstrap_localization_difference",
    "bootstrap_auc_difference",
    "localization_ci",
    "auc_ci",
    "verdict",
    "attention_in_boxes",
    "PROB_THRESHOLD_GRID",
    "pointing_hit",
    "class_mean_accuracy",
    "choose_prob_threshold",
    "bootstrap_class_mean_difference",
    "class_mean_ci",
]
