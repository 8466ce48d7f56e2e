"""Negative pairing of a run (paper 4.3.2): which No Finding image is contrasted with each image.

- ``sim``: nearest perceptual-hash code by cosine similarity (never the image itself, by default never the same
  patient). Pairs are computed once per run; training saves them as ``pairs.json`` in the run folder
  (:func:`save_pairs`) and every later reader (a resumed run, ``cianet evaluate``) reuses that file. A file
  made with another negative pool is an error, never silently replaced.
- ``random``: a random negative per image, re-drawn every epoch, seeded by (seed, epoch) so a resumed run sees
  the same pairs as an uninterrupted one.
- ``canonical``: the canonical chest for every image.
The pool is the No Finding images that are not test images of the run. Nothing here writes a file except
:func:`save_pairs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from cianet.config import Config
from cianet.errors import InputError, MissingPathError, UsageError

Pairing = dict[str, "str | None"]
PAIRS_FILE = "pairs.json"


def negative_pool(index, exclude: set[str], available: set[str] | None = None) -> list[str]:
    """Names of No Finding images usable as negatives: never in ``exclude`` (the test images), and readable
    (a file was found, or ``available``, the cache's names, has it)."""
    available = available or set()
    return [
        r.name
        for r in index.records
        if r.no_finding and r.name not in exclude and (r.path is not None or r.name in available)
    ]


def hash_codes_for(names: list[str], source, progress: bool = False) -> np.ndarray:
    """Perceptual-hash codes (N, 256) of the named images, read at the run's size from ``source``."""
    from cianet.negatives import hash_codes
    from cianet.utils.progress import progress_bar

    codes = []
    batch: list[np.ndarray] = []
    for name in progress_bar(names, desc="hash codes", disable=not progress):
        batch.append(source.load_uint8(name))
        if len(batch) == 512:
            codes.append(hash_codes(np.stack(batch)))
            batch = []
    if batch:
        codes.append(hash_codes(np.stack(batch)))
    return np.concatenate(codes) if codes else np.zeros((0, 256), np.float32)


def _pool_index(cfg: Config, pool: list[str], patients: dict[str, str], source, with_codes: bool):
    """HashIndex of the negative pool: from cfg.negatives.hash_index when given (restricted to the pool),
    else computed from the run's images. ``random`` needs no codes (zeros stand in)."""
    from cianet.negatives import HashIndex

    if not with_codes:
        return HashIndex(np.zeros((len(pool), 1), np.float32), list(pool), [patients[n] for n in pool])
    if cfg.negatives.hash_index:
        if not Path(cfg.negatives.hash_index).is_file():
            raise MissingPathError(f"hash index {cfg.negatives.hash_index} (--hash-index / negatives.hash_index) "
                                   "does not exist; build it with `cianet hash`, or leave it out to hash the "
                                   "run's images")
        full = HashIndex.load(cfg.negatives.hash_index)
        keep = set(pool)
        rows = [i for i, n in enumerate(full.names) if n in keep]
        if rows:
            return HashIndex(full.codes[rows], [full.names[i] for i in rows], [full.patients[i] for i in rows])
    return HashIndex(hash_codes_for(pool, source, cfg.run.progress), list(pool), [patients[n] for n in pool])


@dataclass
class RunPairing:
    """The negatives of a run: ``train(epoch)`` and ``test(epoch)`` map image name -> negative name (None: the
    canonical chest, or no negative at all for the baseline); ``canonical`` is the canonical chest image
    when the strategy uses it. ``sampler`` holds "sim" pairs that are not yet in the run's ``pairs.json``."""

    train: Callable[[int], Pairing | None]
    test: Callable[[int], Pairing | None]
    canonical: np.ndarray | None = None
    sampler: object | None = None  # cianet.negatives.NegativeSampler with pairs to save


def pair_negatives(cfg: Config, data, source) -> RunPairing:
    """The pairing of a run (see the module docstring). Reads ``pairs.json`` from ``cfg.run.out`` when present;
    never writes."""
    from cianet.data.canonical import load_canonical

    strategy = cfg.negatives.strategy
    if strategy not in ("sim", "random", "canonical"):
        raise UsageError(f"negatives.strategy must be sim, random or canonical, got {strategy!r}")
    if cfg.model.kind == "baseline":  # the baseline never looks at a negative
        return RunPairing(lambda epoch: None, lambda epoch: None)
    if strategy == "canonical":
        if not cfg.align.canonical:
            raise UsageError("negatives.strategy=canonical needs align.canonical (a canonical chest PNG from "
                             "`cianet canonical`)")
        canonical = load_canonical(cfg.align.canonical, cfg.data.image_size)
        return RunPairing(lambda e: dict.fromkeys(data.train), lambda e: dict.fromkeys(data.test + data.auc_extra),
                          canonical)
    index = data.index
    patients = {r.name: r.patient_id for r in index.records}
    available: set[str] = set()
    if cfg.data.cache:
        from cianet.data.cache import ImageCache

        available = set(ImageCache.open(cfg.data.cache).names)
    held_out = set(data.test) | set(data.auc_extra)
    pool = negative_pool(index, exclude=held_out, available=available)
    if not pool:
        raise InputError("no No Finding image is available as a negative (CIA-Net needs negatives)")
    from cianet.negatives import NegativeSampler

    sampler = NegativeSampler(strategy, _pool_index(cfg, pool, patients, source, strategy == "sim"),
                              seed=cfg.run.seed, exclude_same_patient=cfg.negatives.exclude_same_patient)
    if strategy == "random":  # redrawn every epoch, keyed by (seed, epoch, name): resumable
        def pair_random(names: list[str], offset: int) -> Callable[[int], Pairing]:
            pats = [patients[n] for n in names]
            return lambda e: dict(zip(names, sampler.pair(names, patients=pats, epoch=offset + e)))

        return RunPairing(pair_random(list(data.train), 0), pair_random(list(data.test) + list(data.auc_extra), 10_000))
    # sim: fixed pairs, computed once; a pairs file made with another pool raises here
    names = list(dict.fromkeys(list(data.train) + list(data.test) + list(data.auc_extra)))
    pairs_file = Path(cfg.run.out) / PAIRS_FILE
    to_save = None
    if pairs_file.exists():
        sampler.load_pairs(pairs_file)
    try:
        found = sampler.pair(names)  # ValueError: some image of this run is not in the file yet
    except ValueError:
        codes = hash_codes_for(names, source, cfg.run.progress)
        sampler.pair_all(names, codes, [patients[n] for n in names], progress=cfg.run.progress)
        found = sampler.pair(names)
        to_save = sampler
    pairs = dict(zip(names, found))
    return RunPairing(lambda e: pairs, lambda e: pairs, None, to_save)


def save_pairs(pairing: RunPairing, run_dir: str | Path) -> Path | None:
    """Write the "sim" pairs computed by :func:`pair_negatives` into ``run_dir/pairs.json`` (atomically);
    None when there is nothing new to write."""
    if pairing.sampler is None:
        return None
    path = Path(run_dir) / PAIRS_FILE
    pairing.sampler.save_pairs(path)
    return path


def hash_data_root(data_root: str | Path, out: str | Path, cache: str | Path | None = None, size: int = 16,
                   entry_csv: str | None = None, workers: int = 4, center: bool = False,
                   progress: bool | None = None) -> dict:
    """``cianet hash``: the perceptual-hash index of a data root's No Finding images, saved to ``out``.

    Images come from the image cache when it holds them, else from their files. Images with neither are left
    out (the pool is simply smaller), as are unreadable ones; both are counted in the returned summary
    ``{"index", "patients", "absent", "failed"}``.
    """
    from cianet.data.cache import read_image
    from cianet.data.nih import NIHIndex
    from cianet.negatives import build_hash_index

    if size < 1:
        raise UsageError(f"--size must be positive, got {size}")
    if workers < 1:
        raise UsageError(f"--workers must be positive, got {workers}")
    index = NIHIndex.from_root(data_root, entry_csv=entry_csv)
    records = [r for r in index.records if r.no_finding]
    if not records:
        raise InputError(f"{data_root}: no No Finding image in {index.entry_csv or 'the entry CSV'}")
    opened = None
    if cache:
        from cianet.data.cache import ImageCache

        opened = ImageCache.open(cache)
    paths = {r.name: r.path for r in records}
    usable = [r for r in records if (opened is not None and r.name in opened) or r.path is not None]
    if not usable:
        where = f"in {cache} or " if opened is not None else ""
        raise MissingPathError(f"{data_root}: none of the {len(records)} No Finding images found {where}below it")
    failed: list[str] = []
    hash_index = build_hash_index(
        [r.name for r in usable], [r.patient_id for r in usable],
        lambda name: read_image(name, paths[name], opened)[0],
        size=size, center=center, workers=workers, progress=progress,
        on_error=lambda name, exc: failed.append(f"{name}: {exc}"),
    )
    if len(hash_index) == 0:
        raise InputError(f"{data_root}: no No Finding image could be read (first error: {failed[0]})")
    hash_index.meta.update({"source": "cache" if opened is not None else "files",
                            "cache_size": opened.size if opened is not None else None})
    hash_index.save(out)
    return {"index": hash_index, "patients": len(set(hash_index.patients)), "absent": len(records) - len(usable),
            "failed": failed}
