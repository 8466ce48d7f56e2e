"""Negative pairing for a run (paper 4.3.2): which No Finding image is contrasted with each image.

- ``sim``: nearest perceptual-hash code by cosine similarity (never the image itself, by default never the same
  patient). Pairs are computed once per run and cached in ``pairs.json`` in the run folder.
- ``random``: a random negative per image, re-drawn every epoch, seeded by (seed, epoch) so a resumed run sees
  the same pairs as an uninterrupted one.
- ``canonical``: the canonical chest for every image.
The pool is the No Finding images that are not test images of the run.
"""

from __future__ import annotations

import hashlib
import json
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


def _random_pairs(names: list[str], pool: list[str], patients: dict[str, str], seed: int, epoch: int,
                  exclude_same_patient: bool) -> Pairing:
    rng = np.random.default_rng([seed, epoch, 7])
    picks = rng.integers(0, len(pool), size=len(names))
    out: Pairing = {}
    for name, k in zip(names, picks):
        for step in range(len(pool)):  # walk on until the pick is allowed
            cand = pool[(int(k) + step) % len(pool)]
            if cand != name and not (exclude_same_patient and patients.get(cand) == patients.get(name)):
                out[name] = cand
                break
        else:
            out[name] = None
    return out


def _sim_pairs(cfg: Config, names: list[str], pool: list[str], patients: dict[str, str], source) -> Pairing:
    from cianet.engine.pipeline import hash_codes_for
    from cianet.negatives import HashIndex

    progress = cfg.run.progress
    if cfg.negatives.hash_index and Path(cfg.negatives.hash_index).exists():
        full = HashIndex.load(cfg.negatives.hash_index)
        keep = set(pool)
        rows = [i for i, n in enumerate(full.names) if n in keep]
        index = HashIndex(full.codes[rows], [full.names[i] for i in rows], [full.patients[i] for i in rows])
    else:
        index = HashIndex(hash_codes_for(pool, source, progress), list(pool), [patients[n] for n in pool])
    codes = hash_codes_for(names, source, progress)
    excl_pat = [patients[n] for n in names] if cfg.negatives.exclude_same_patient else None
    idx = index.query(codes, exclude_names=list(names), exclude_patients=excl_pat)
    return {n: (index.names[int(i)] if int(i) >= 0 else None) for n, i in zip(names, idx)}


def pairing_for_run(cfg: Config, data, source) -> tuple[Callable[[int], Pairing], Callable[[int], Pairing], np.ndarray | None]:
    """(train pairing by epoch, test pairing by epoch, canonical image or None)."""
    strategy = cfg.negatives.strategy
    if strategy not in ("sim", "random", "canonical"):
        raise ValueError(f"negatives.strategy must be sim, random or canonical, got {strategy!r}")
    if cfg.model.kind == "baseline":  # the baseline never looks at a negative
        return (lambda epoch: None), (lambda epoch: None), None
    canonical = _load_canonical(cfg, cfg.data.image_size) if strategy == "canonical" else None
    if strategy == "canonical":
        return (lambda e: dict.fromkeys(data.train)), (lambda e: dict.fromkeys(data.test)), canonical
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

    pool = negative_pool(index, exclude=set(data.test), available=available)
    if not pool:
        raise ValueError("no No Finding image is available as a negative (CIA-Net needs negatives)")
    if strategy == "random":
        seed = cfg.run.seed
        excl = cfg.negatives.exclude_same_patient
        return (lambda e: _random_pairs(data.train, pool, patients, seed, e, excl),
                lambda e: _random_pairs(data.test, pool, patients, seed, 10_000 + e, excl), None)
    # sim: fixed pairs, cached per run
    cache_file = Path(cfg.run.out) / "pairs.json"
    key = hashlib.sha1(json.dumps([sorted(data.train), sorted(data.test), pool[:50], len(pool),
                                   cfg.negatives.exclude_same_patient, cfg.data.image_size]).encode()).hexdigest()
    pairs = None
    if cache_file.exists():
        try:
            saved = json.loads(cache_file.read_text())
            pairs = saved["pairs"] if saved.get("key") == key else None
        except (ValueError, KeyError):
            pairs = None
    if pairs is None:
        names = list(dict.fromkeys(list(data.train) + list(data.test)))
        pairs = _sim_pairs(cfg, names, pool, patients, source)
        from cianet.utils.atomic import atomic_write_json

        atomic_write_json(cache_file, {"key": key, "strategy": "sim", "pairs": pairs}, indent=None)
    return (lambda e: pairs), (lambda e: pairs), None
