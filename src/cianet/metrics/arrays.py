"""Array inputs of the metrics: numpy arrays or torch tensors, read the same way."""

from __future__ import annotations

from typing import Any

import numpy as np


def to_numpy(a: Any) -> np.ndarray:
    """numpy view of a numpy array or a (possibly GPU / grad-requiring) torch tensor."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)
