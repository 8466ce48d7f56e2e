"""A tiny NIH-layout data set written by the tests (no phantom needed): flat chests, bright square lesions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_tiny_nih(root: Path, n_patients: int = 24, size: int = 64, seed: int = 0) -> Path:
    """Two images per patient; about half No Finding; Nodule/Mass as bright squares, every other one boxed."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    entries = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
               "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"]
    boxes = ["Image Index,Finding Label,Bbox [x,y,w,h],,,"]
    yy, xx = np.mgrid[0:size, 0:size]
    base = 0.3 + 0.2 * np.exp(-(((xx - size / 2) / (size / 3)) ** 2))
    k = 0
    for p in range(1, n_patients + 1):
        for f in range(2):
            name = f"{p:08d}_{f:03d}.png"
            img = base + rng.normal(0, 0.02, (size, size))
            label = "No Finding"
            if rng.random() < 0.5:
                label = "Nodule" if rng.random() < 0.5 else "Mass"
                side = size // 8 if label == "Nodule" else size // 4
                x, y = rng.integers(4, size - side - 4, size=2)
                img[y : y + side, x : x + side] += 0.4
                if k % 2 == 0:
                    boxes.append(f"{name},{label},{x},{y},{side},{side}")
                k += 1
            Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8), mode="L").save(root / "images" / name)
            entries.append(f"{name},{label},{f},{p},40,M,PA,{size},{size},0.1,0.1")
    (root / "Data_Entry_2017.csv").write_text("\n".join(entries) + "\n")
    (root / "BBox_List_2017.csv").write_text("\n".join(boxes) + "\n")
    return root
