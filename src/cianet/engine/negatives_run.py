"""Negative pairing for a run (paper 4.3.2): which No Finding image is contrasted with each image.

- ``sim``: nearest perceptual-hash code by cosine similarity (never the image itself, by default never the same
  patient). Pairs are computed once per run and cached in ``pairs.json`` in the run folder.
- ``random``: a random negative per image, re-drawn every epoch, seeded by (seed, epoch) so a resumed run sees
  the same pairs as an uninterrupted one.
- ``canonical``: the canonical chest for every image.
The pool is the No Finding images that are not test images of the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from cianet.config import Config

Pairing = dict[str, "str | None"]


def _load_canonical(cfg: Config, size: int) -> np.ndarray:
    from cianet.data.io import load_xray, resize_gray

    if not cfg.align.canonical:
        raise ValueError("negatives.strategy=canonical needs align.canonical (a canonical chest PNG from `cianet canonical`)")
    return resize_gray(load_xray(cfg.align.canonical), size)


def _pool_index(cfg: Config, pool: list[str], patients: dict[str, str], source, with_codes: bool):
    """HashIndex of the negative pool: from cfg.negatives.hash_index when given (restricted to the pool),
    else computed from the run's images. ``random`` needs no codes (zeros stand in)."""
    from cianet.engine.pipeline import hash_codes_for
    from cianet.negatives import HashIndex

    if not with_codes:
        return HashIndex(np.zeros((len(pool), 1), np.float32), list(pool), [patients[n] for n in pool])
    if cfg.negatives.hash_index and Path(cfg.negatives.hash_index).exists():
        full = HashIndex.load(cfg.negatives.hash_index)
        keep = set(pool)
        rows = [i for i, n in enumerate(full.names) if n in keep]
        if rows:
            return HashIndex(full.codes[rows], [full.names[i] for i in rows], [full.patients[i] for i in rows])
    return HashIndex(hash_codes_for(pool, source, cfg.run.progress), list(pool), [patients[n] for n in pool])


def pairing_for_run(cfg: Config, data, source) -> tuple[Callable[[int], Pairing], Callable[[int], Pairing], np.ndarray | None]:
    """(train pairing by epoch, test pairing by epoch, canonical image or None)."""
    strategy = cfg.negatives.strategy
    if strategy not in ("sim", "random", "canonical"):
        raise ValueError(f"negatives.strategy must be sim, random or canonical, got {strategy!r}")
    if cfg.model.kind == "baseline":  # the baseline never looks at a negative
        return (lambda epoch: None), (lambda epoch: None), None
    canonical = _load_canonical(cfg, cfg.data.image_size) if strategy == "canonical" else None
    if strategy == "canonical":
        return (lambda e: dict.fromkeys(data.train)), (lambda e: dict.fromkeys(data.test + data.auc_extra)), canonical
    index = data.index
    patients = {r.name: r.patient_id for r in index.records}
    available = set()
    if cfg.data.cache:
        try:
            from cianet.data.cache import ImageCache

            available = set(ImageCache.open(cfg.data.cache).names)
        except (FileNotFoundError, ValueError):
            available = set()
    from cianet.engine.pipeline import negative_pool

    held_out = set(data.test) | set(data.auc_extra)
    pool = negative_pool(index, exclude=held_out, available=available)
    if not pool:
        raise ValueError("no No Finding image is available as a negative (CIA-Net needs negatives)")
    from cianet.negatives import NegativeSampler

    sampler = NegativeSampler(strategy, _pool_index(cfg, pool, patients, source, strategy == "sim"),
                              seed=cfg.run.seed, exclude_same_patient=cfg.negatives.exclude_same_patient)
    if strategy == "random":  # redrawn every epoch, keyed by (seed, epoch, name): resumable
        def pair_random(names: list[str], offset: int) -> Callable[[int], Pairing]:
            pats = [patients[n] for n in names]
            return lambda e: dict(zip(names, sampler.pair(names, patients=pats, epoch=offset + e)))

        return pair_random(list(data.train), 0), pair_random(list(data.test) + list(data.auc_extra), 10_000), None
    # sim: fixed pairs, computed once and cached in the run folder (refused if made with another pool)
    names = list(dict.fromkeys(list(data.train) + list(data.test) + list(data.auc_extra)))
    cache_file = Path(cfg.run.out) / "pairs.json"
    found: list | None = None
    if cache_file.exists():
        try:
            sampler.load_pairs(cache_file)
            found = sampler.pair(names)  # ValueError when some image of this run is not in the file
        except (ValueError, KeyError):
            found = None
    if found is None:
        from cianet.engine.pipeline import hash_codes_for

        codes = hash_codes_for(names, source, cfg.run.progress)
        sampler.pair_all(names, codes, [patients[n] for n in names], progress=cfg.run.progress)
        sampler.save_pairs(cache_file)
        found = sampler.pair(names)
    pairs = dict(zip(names, found))
    return (lambda e: pairs), (lambda e: pairs), None
