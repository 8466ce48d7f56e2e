"""Data of a run: images at the network size with their paired negative, labels and boxes.

An item is a dict of tensors:
  image     (1, S, S) float32 in [0, 1]   the (positive or any) image, resized to S
  neg       (1, S, S) float32 in [0, 1]   its paired negative (the canonical chest for strategy "canonical")
  labels    (C,) float32 0/1              image-level labels in the data set's class order (C = 14 on NIH)
  box_mask  (C,) float32 0/1              1 where this class has boxes *used for supervision* on this image
  boxes     (K, 5) float32                (class_index, x, y, w, h) in the S x S frame; K may be 0
  orig_size (2,) float32                  (W, H) of the image file: boxes in file frame = S-frame / S * size
  index     ()  int64                     position in the dataset's name list
``collate`` pads ``boxes`` to (B, Kmax, 5) with class index -1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cianet.data.cache import ImageCache, read_image
from cianet.data.io import resize_gray, to_uint8
from cianet.errors import InputError
from cianet.labels import NIH_LABEL_SET, LabelSet


class ImageSource:
    """Reads images at size S from the `cianet prepare` cache when it has them, else decodes the file."""

    def __init__(self, size: int, cache_dir: str | None = None, paths: dict[str, Path | None] | None = None):
        self.size = size
        self.cache_dir = cache_dir
        self.paths = paths or {}
        self._cache = None  # opened lazily, once per process (DataLoader workers)
        self._cache_checked = False

    def _get_cache(self):
        if not self._cache_checked:
            self._cache_checked = True
            if self.cache_dir:
                cache = ImageCache.open(self.cache_dir)
                if cache.size != self.size:
                    raise InputError(
                        f"image cache {self.cache_dir} holds {cache.size}px images but the run uses {self.size}px: "
                        f"rebuild it with `cianet prepare --image-size {self.size}` or drop --cache"
                    )
                self._cache = cache
        return self._cache

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"], state["_cache_checked"] = None, False  # memmaps are reopened in each worker
        return state

    def load(self, name: str) -> tuple[np.ndarray, tuple[int, int]]:
        """Return (image (S, S) float32 in [0, 1], original (W, H))."""
        cache = self._get_cache()
        img, size = read_image(name, self.paths.get(name), cache)
        if cache is None or name not in cache:  # a decoded file; cache rows are S x S already
            # Quantized like a cache row, so a run reads the same pixels with or without `cianet prepare`.
            img = to_uint8(resize_gray(img, self.size)).astype(np.float32) / 255.0
        return img, size

    def load_uint8(self, name: str) -> np.ndarray:
        """The image at size S as uint8 ``(S, S)`` (what the cache stores)."""
        return to_uint8(self.load(name)[0])


class PairedXrayDataset(Dataset):
    """Images of a split with their negatives. ``negatives`` maps name -> negative name (None: canonical chest)."""

    def __init__(
        self,
        names: Sequence[str],
        labels: dict[str, Sequence[str]],
        boxes: dict[str, list],
        source: ImageSource,
        box_names: set[str] | None = None,
        negatives: dict[str, str | None] | None = None,
        canonical: np.ndarray | None = None,
        pair_fn: Callable[[int], dict[str, str | None]] | None = None,
        label_set: LabelSet = NIH_LABEL_SET,
    ):
        self.names = list(names)
        self.labels = labels
        self.boxes = boxes  # name -> list of Box (file frame)
        self.source = source
        self.box_names = box_names or set()
        self.negatives = negatives
        self.canonical = canonical
        self.pair_fn = pair_fn  # epoch -> pairing (strategy "random" changes every epoch)
        self.label_set = label_set  # the data set's classes: the columns of labels and box_mask

    def set_epoch(self, epoch: int) -> None:
        if self.pair_fn is not None:
            self.negatives = self.pair_fn(epoch)

    def __len__(self) -> int:
        return len(self.names)

    def label_vector(self, name: str) -> np.ndarray:
        v = np.zeros(len(self.label_set), dtype=np.float32)
        for lab in self.labels.get(name, ()):
            v[self.label_set.index(lab)] = 1.0
        return v

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        name = self.names[i]
        img, (w, h) = self.source.load(name)
        s = self.source.size
        label_vec = self.label_vector(name)
        box_mask = np.zeros(len(self.label_set), dtype=np.float32)
        rows = []
        if name in self.box_names:
            for b in self.boxes.get(name, ()):
                k = self.label_set.index(b.label)
                box_mask[k] = 1.0
                label_vec[k] = 1.0  # a box implies the label, whatever the text mining said
                rows.append((k, b.x * s / w, b.y * s / h, b.w * s / w, b.h * s / h))
        boxes = torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)
        if self.negatives is not None:
            neg_name = self.negatives.get(name)
            if neg_name is None:
                neg = self.canonical if self.canonical is not None else np.zeros((s, s), np.float32)
            else:
                neg, _ = self.source.load(neg_name)
        else:
            neg = np.zeros((s, s), np.float32)
        return {
            "image": torch.tensor(img, dtype=torch.float32)[None],  # a copy: cache rows are read-only memmaps
            "neg": torch.tensor(neg, dtype=torch.float32)[None],
            "labels": torch.from_numpy(label_vec),
            "box_mask": torch.from_numpy(box_mask),
            "boxes": boxes,
            "orig_size": torch.tensor([w, h], dtype=torch.float32),
            "index": torch.tensor(i, dtype=torch.int64),
        }


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    out = {k: torch.stack([it[k] for it in items]) for k in items[0] if k != "boxes"}
    kmax = max(1, max(it["boxes"].shape[0] for it in items))
    boxes = torch.full((len(items), kmax, 5), -1.0)
    for b, it in enumerate(items):
        n = it["boxes"].shape[0]
        if n:
            boxes[b, :n] = it["boxes"]
    out["boxes"] = boxes  # (B, Kmax, 5), class index -1 = padding
    return out
