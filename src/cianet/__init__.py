"""cianet: CIA-Net (Liu et al., ICCV 2019) for chest X-ray diagnosis and localization."""

from __future__ import annotations

from cianet.labels import BOX_LABELS, LABELS

__version__ = "0.1.0"
__all__ = ["LABELS", "BOX_LABELS", "Predictor", "__version__"]


def __getattr__(name: str):
    # Lazy: importing cianet must not import torch.
    if name == "Predictor":
        from cianet.inference.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'cianet' has no attribute {name!r}")
