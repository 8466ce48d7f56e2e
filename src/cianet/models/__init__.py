"""Networks: ResNet backbones, CIA-Net and the Li et al. baseline, the alignment module.

The canonical chest is image statistics, not a network: it lives in :mod:`cianet.data.canonical`.
"""

from cianet.models.alignment import (
    IDENTITY_PARAMS,
    AlignmentNet,
    StructureLoss,
    boxes_to_aligned,
    boxes_to_original,
    mask_to_original,
    params_to_matrix,
    warp,
)
from cianet.models.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    gray_to_input,
    pretrained_weights,
    resnet_trunk,
)
from cianet.models.cianet import Baseline, CIANet, build_model, normalize_delta

__all__ = [
    "IDENTITY_PARAMS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AlignmentNet",
    "Baseline",
    "CIANet",
    "StructureLoss",
    "boxes_to_aligned",
    "boxes_to_original",
    "build_model",
    "gray_to_input",
    "pretrained_weights",
    "mask_to_original",
    "normalize_delta",
    "params_to_matrix",
    "resnet_trunk",
    "warp",
]
