"""Networks: ResNet backbones, CIA-Net and the Li et al. baseline, the alignment module, the canonical chest."""

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
    load_pretrained_or_warn,
    resnet_trunk,
)
from cianet.models.canonical import build_canonical, crop_and_resize, find_lung_crop, mean_image
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
    "build_canonical",
    "build_model",
    "crop_and_resize",
    "find_lung_crop",
    "gray_to_input",
    "load_pretrained_or_warn",
    "mask_to_original",
    "mean_image",
    "normalize_delta",
    "params_to_matrix",
    "resnet_trunk",
    "warp",
]
