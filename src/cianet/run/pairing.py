"""Negative pairing of a run (paper 4.3.2): which No Finding image is contrasted with each image.

- ``sim``: nearest perceptual-hash code by cosine similarity (never the image itself, by default never the same
  patient). Pairs are computed once per run; training saves them as ``pairs.json`` in the run folder
  (:func:`save_pairs`) and every later reader (a resumed run, ``cianet evaluate``) reuses that file. A file
  made with another negative pool is an error, never silently replaced.
- ``random``: a random negative per image, re-drawn every epoch, seeded by (seed, epoch) so a resumed run sees
  the same pairs as an uninterrupted one.
- ``canonical``: the canonical chest for every image.
- ``oracle`` (phantom only): every image's finding-free twin written by ``cianet synth --twins`` (same anatomy,
  deformation and noise), a No Finding image being its own twin: the best contrast the attention can get, to
  check the mechanism apart from the pairing.
The pool is the No Finding images that the run does not hold out (test, AUC extras, validation); held-out
images are paired like test images. With ``negatives.aligned_codes`` and an alignment network (``align.checkpoint``)
the "sim" codes of the pool and of the queries are computed on the *aligned* images (the run's network, at the
run's image size); a ``--hash-index`` file and ``pairs.json`` record which codes they hold, and codes of another
kind are an error, never recomputed or mixed (:func:`code_kind`). Nothing here writes a file except
:func:`save_pairs` and :func:`hash_data_root`.
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
STRATEGIES = ("sim", "random", "canonical", "oracle")
#: prefix of an oracle negative's name: "twin:NAME" is read from DATA_ROOT/twins/NAME (see ``image_source``)
TWIN_PREFIX = "twin:"


def twin_paths(data_root: str | Path) -> dict[str, Path]:
    """``{"twin:NAME": path}`` of the phantom's finding-free twins (``cianet synth --twins``)."""
    from cianet.data.synth import TWINS_DIR

    twin_dir = Path(data_root) / TWINS_DIR
    if not twin_dir.is_dir():
        raise MissingPathError(f"{twin_dir} does not exist: negatives.strategy=oracle needs the phantom's twins "
                               "(`cianet synth --twins`)")
    return {TWIN_PREFIX + p.name: p for p in twin_dir.iterdir() if p.is_file()}


def oracle_pairs(data_root: str | Path, data) -> Pairing:
    """Each image of the run -> its twin ``"twin:NAME"``; a No Finding image -> itself (it is its own twin)."""
    twins = twin_paths(data_root)
    labels = data.labels
    pairs: Pairing = {}
    for name in dict.fromkeys(list(data.train) + data.held_out):
        if TWIN_PREFIX + name in twins:
            pairs[name] = TWIN_PREFIX + name
        elif labels.get(name):
            from cianet.data.synth import TWINS_DIR

            raise InputError(f"{Path(data_root) / TWINS_DIR / name}: the twin of positive image {name} is missing")
        else:
            pairs[name] = name
    return pairs


def negative_pool(index, exclude: set[str], available: set[str] | None = None) -> list[str]:
    """Names of No Finding images usable as negatives: never in ``exclude`` (the held-out images), and readable
    (a file was found, or ``available``, the cache's names, has it)."""
    available = available or set()
    return [
        r.name
        for r in index.records
        if r.no_finding and r.name not in exclude and (r.path is not None or r.name in available)
    ]


def hash_codes_for(names: list[str], source, progress: bool = False, align_net=None,
                   center: bool = False) -> np.ndarray:
    """Perceptual-hash codes (N, 256) of the named images, read at the run's size from ``source`` (8-bit, as
    training reads them); with ``align_net``, of the images it aligns (:func:`aligned_images`)."""
    from cianet.negatives import hash_codes
    from cianet.utils.progress import progress_bar

    chunk = 512 if align_net is None else 64
    codes = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        images = np.stack(batch) if align_net is None else aligned_images(align_net, np.stack(batch))
        codes.append(hash_codes(images, center=center))
        batch.clear()

    for name in progress_bar(names, desc="hash codes", disable=not progress):
        batch.append(source.load_uint8(name))
        if len(batch) == chunk:
            flush()
    if batch:
        flush()
    return np.concatenate(codes) if codes else np.zeros((0, 256), np.float32)


def aligned_images(align_net, images_u8: np.ndarray) -> np.ndarray:
    """``(N, S, S)`` uint8 images -> ``(N, S, S)`` float32 as the alignment network warps them in training
    (input ``u8 / 255``, as the run's data set gives it; output at the same size S)."""
    import torch

    device = next(align_net.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(images_u8)).to(device=device, dtype=torch.float32)[:, None] / 255.0
    with torch.no_grad():
        return align_net(x)["aligned"][:, 0].float().cpu().numpy()


def alignment_fingerprint(align_net) -> str:
    """Short content hash of an alignment network's weights: names the warp that aligned codes were made with."""
    import hashlib

    h = hashlib.sha1()
    for key, value in sorted(align_net.state_dict().items()):
        h.update(key.encode())
        h.update(np.ascontiguousarray(value.detach().cpu().numpy()).tobytes())
    return h.hexdigest()[:16]


def code_kind(align_net=None, image_size: int | None = None) -> dict:
    """What hash codes were computed on, as recorded in a hash index's ``meta`` and in ``pairs.json``:
    ``{"aligned": False}``, or ``{"aligned": True, "alignment": fingerprint, "image_size": S}``."""
    if align_net is None:
        return {"aligned": False}
    return {"aligned": True, "alignment": alignment_fingerprint(align_net), "image_size": int(image_size)}


def describe_codes(kind: dict) -> str:
    if not kind.get("aligned"):
        return "codes of unaligned images"
    return (f"codes of images aligned at {kind.get('image_size')} px by the alignment network with weights "
            f"{kind.get('alignment')}")


def run_code_aligner(cfg: Config, align_net=None):
    """The alignment network the run's "sim" codes go through (``align_net`` or loaded from
    ``cfg.align.checkpoint``), or None when the run hashes unaligned images."""
    if not (cfg.negatives.aligned_codes and cfg.align.checkpoint):
        return None
    if align_net is not None:
        return align_net
    from cianet.run.checkpoints import load_alignment
    from cianet.run.device import resolve_device

    return load_alignment(cfg.align.checkpoint, resolve_device(cfg.run.device)).net


def check_index_codes(path, meta: dict, want: dict, align_checkpoint: str | None = None) -> None:
    """InputError naming the index file when its codes (``meta``) are not of the kind the run needs."""
    have = {"aligned": bool(meta.get("aligned", False))}
    if have["aligned"]:
        have.update(alignment=meta.get("alignment"), image_size=meta.get("image_size"))
    if have == want:
        return
    if want["aligned"]:
        fix = (f"build one with `cianet hash --align {align_checkpoint} --image-size {want['image_size']} ...`, "
               "leave --hash-index out to hash the run's images, or set negatives.aligned_codes=false")
    elif align_checkpoint:
        fix = ("build one without --align, leave --hash-index out, or set negatives.aligned_codes=true with the "
               "alignment it was built with")
    else:
        fix = "the run does not align (no align.checkpoint): build one without --align, or leave --hash-index out"
    raise InputError(f"hash index {path} (--hash-index) holds {describe_codes(have)}, but the run pairs with "
                     f"{describe_codes(want)}: {fix}")


def _pool_index(cfg: Config, pool: list[str], patients: dict[str, str], source, with_codes: bool,
                align_net=None):
    """HashIndex of the negative pool: from cfg.negatives.hash_index when given (restricted to the pool; its
    codes must be of the run's kind, :func:`check_index_codes`), else computed from the run's images (aligned by
    ``align_net`` when given). ``random`` needs no codes (zeros stand in)."""
    from cianet.negatives import HashIndex

    if not with_codes:
        return HashIndex(np.zeros((len(pool), 1), np.float32), list(pool), [patients[n] for n in pool])
    if cfg.negatives.hash_index:
        if not Path(cfg.negatives.hash_index).is_file():
            raise MissingPathError(f"hash index {cfg.negatives.hash_index} (--hash-index / negatives.hash_index) "
                                   "does not exist; build it with `cianet hash`, or leave it out to hash the "
                                   "run's images")
        full = HashIndex.load(cfg.negatives.hash_index)
        check_index_codes(cfg.negatives.hash_index, full.meta, code_kind(align_net, cfg.data.image_size),
                          cfg.align.checkpoint)
        unknown = [n for n in full.names if n not in patients]
        if unknown:
            raise InputError(f"hash index {cfg.negatives.hash_index}: {len(unknown)} of its images are not in the "
                             f"data set (first: {unknown[0]}); build it for this data set with `cianet hash`")
        keep = set(pool)
        rows = [i for i, n in enumerate(full.names) if n in keep]
        if not rows:
            raise InputError(f"hash index {cfg.negatives.hash_index} holds none of the run's {len(pool)} negative "
                             "candidates; build it for this data set with `cianet hash`")
        return HashIndex(full.codes[rows], [full.names[i] for i in rows], [full.patients[i] for i in rows],
                         dict(full.meta))
    return HashIndex(hash_codes_for(pool, source, cfg.run.progress, align_net), list(pool),
                     [patients[n] for n in pool])


@dataclass
class RunPairing:
    """The negatives of a run: ``train(epoch)`` and ``test(epoch)`` map image name -> negative name (None: the
    canonical chest, or no negative at all for the baseline); ``canonical`` is the canonical chest image
    when the strategy uses it. ``sampler`` holds "sim" pairs that are not yet in the run's ``pairs.json``."""

    train: Callable[[int], Pairing | None]
    test: Callable[[int], Pairing | None]
    canonical: np.ndarray | None = None
    sampler: object | None = None  # cianet.negatives.NegativeSampler with pairs to save


def pair_negatives(cfg: Config, data, source, align_net=None) -> RunPairing:
    """The pairing of a run (see the module docstring). Reads ``pairs.json`` from ``cfg.run.out`` when present;
    never writes. ``align_net``: the run's alignment network, when the caller has it loaded (else "sim" with
    aligned codes loads it from ``cfg.align.checkpoint``). Held-out images are paired by ``test(epoch)``."""
    from cianet.data.canonical import load_canonical

    strategy = cfg.negatives.strategy
    if strategy not in STRATEGIES:
        raise UsageError(f"negatives.strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if cfg.model.kind == "baseline":  # the baseline never looks at a negative
        return RunPairing(lambda epoch: None, lambda epoch: None)
    if strategy == "oracle":
        pairs = oracle_pairs(cfg.data.data_root, data)
        return RunPairing(lambda e: pairs, lambda e: pairs)
    if strategy == "canonical":
        if not cfg.align.canonical:
            raise UsageError("negatives.strategy=canonical needs align.canonical (a canonical chest PNG from "
                             "`cianet canonical`)")
        canonical = load_canonical(cfg.align.canonical, cfg.data.image_size)
        return RunPairing(lambda e: dict.fromkeys(data.train), lambda e: dict.fromkeys(data.held_out), canonical)
    index = data.index
    patients = {r.name: r.patient_id for r in index.records}
    available: set[str] = set()
    if cfg.data.cache:
        from cianet.data.cache import ImageCache

        available = set(ImageCache.open(cfg.data.cache).names)
    pool = negative_pool(index, exclude=set(data.held_out), available=available)
    if not pool:
        raise InputError("no No Finding image is available as a negative (CIA-Net needs negatives)")
    from cianet.negatives import NegativeSampler

    aligner = run_code_aligner(cfg, align_net) if strategy == "sim" else None
    kind = code_kind(aligner, cfg.data.image_size)
    sampler = NegativeSampler(strategy, _pool_index(cfg, pool, patients, source, strategy == "sim", aligner),
                              seed=cfg.run.seed, exclude_same_patient=cfg.negatives.exclude_same_patient,
                              codes_kind=kind if strategy == "sim" else None)
    if strategy == "random":  # redrawn every epoch, keyed by (seed, epoch, name): resumable
        def pair_random(names: list[str], offset: int) -> Callable[[int], Pairing]:
            pats = [patients[n] for n in names]
            return lambda e: dict(zip(names, sampler.pair(names, patients=pats, epoch=offset + e)))

        return RunPairing(pair_random(list(data.train), 0), pair_random(data.held_out, 10_000))
    # sim: fixed pairs, computed once; a pairs file made with another pool or other codes raises here
    names = list(dict.fromkeys(list(data.train) + data.held_out))
    pairs_file = Path(cfg.run.out) / PAIRS_FILE
    to_save = None
    if pairs_file.exists():
        sampler.load_pairs(pairs_file)  # InputError when made with codes of another kind
    try:
        found = sampler.pair(names)  # ValueError: some image of this run is not in the file yet
    except ValueError:
        center = bool(sampler.hash_index.meta.get("center", False))  # queries hashed as the pool was
        codes = hash_codes_for(names, source, cfg.run.progress, aligner, center=center)
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
                   progress: bool | None = None, align: str | Path | None = None, image_size: int | None = None,
                   device: str = "cpu", dataset: str = "auto") -> dict:
    """``cianet hash``: the perceptual-hash index of a data root's No Finding images, saved to ``out``.

    Images come from the image cache when it holds them, else from their files. Images with neither are left
    out (the pool is simply smaller), as are unreadable ones; both are counted in the returned summary
    ``{"index", "patients", "absent", "failed"}``.

    With ``align`` (an ``align.pt``), the codes are of the images that alignment network aligns, read as a run
    reads them at ``image_size`` (the run's ``data.image_size``; default: the cache's size), so that a run with
    ``negatives.aligned_codes`` and that alignment can use the index. The index's ``meta`` records the kind
    (:func:`code_kind`).
    """
    from cianet.data.cache import read_image
    from cianet.data.layouts import open_index
    from cianet.negatives import build_hash_index

    if size < 1:
        raise UsageError(f"--hash-size must be positive, got {size}")
    if workers < 1:
        raise UsageError(f"--workers must be positive, got {workers}")
    index = open_index(data_root, dataset, entry_csv=entry_csv)  # `dataset`: the layout (auto: detected)
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
    if align is not None:
        hash_index = _aligned_hash_index(usable, paths, cache, opened, align, image_size, size, center, device,
                                         progress, failed)
    else:
        hash_index = build_hash_index(
            [r.name for r in usable], [r.patient_id for r in usable],
            lambda name: read_image(name, paths[name], opened)[0],
            size=size, center=center, workers=workers, progress=progress,
            on_error=lambda name, exc: failed.append(f"{name}: {exc}"),
        )
        hash_index.meta.update(code_kind())
    if len(hash_index) == 0:
        raise InputError(f"{data_root}: no No Finding image could be read (first error: {failed[0]})")
    hash_index.meta.update({"source": "cache" if opened is not None else "files",
                            "cache_size": opened.size if opened is not None else None})
    hash_index.save(out)
    return {"index": hash_index, "patients": len(set(hash_index.patients)), "absent": len(records) - len(usable),
            "failed": failed}


def _aligned_hash_index(records, paths, cache, opened, align, image_size, size, center, device, progress, failed):
    """The HashIndex of ``records`` hashed on their aligned images (see :func:`hash_data_root`)."""
    from cianet.negatives import HashIndex, hash_codes
    from cianet.run.checkpoints import load_alignment
    from cianet.run.datasets import ImageSource
    from cianet.run.device import resolve_device
    from cianet.utils.progress import progress_bar

    if image_size is None:
        if opened is None:
            raise UsageError("--align needs --image-size (the run's data.image_size) or --cache")
        image_size = opened.size
    if image_size < 32 or image_size % 32:
        raise UsageError(f"--image-size must be a positive multiple of 32, got {image_size}")
    if opened is not None and opened.size != image_size:
        raise UsageError(f"image cache {cache} holds {opened.size}px images but --image-size is {image_size}: "
                         "give the cache of the run's size, or no --cache")
    net = load_alignment(align, resolve_device(device)).net
    source = ImageSource(int(image_size), str(cache) if cache else None, paths)  # InputError: cache of another size
    names, patients, codes, batch = [], [], [], []

    def flush() -> None:
        codes.append(hash_codes(aligned_images(net, np.stack(batch)), size=size, center=center))
        batch.clear()

    for r in progress_bar(records, desc="hash (aligned)", disable=None if progress is None else not progress):
        try:
            batch.append(source.load_uint8(r.name))
        except (ValueError, OSError) as exc:
            failed.append(f"{r.name}: {exc}")
            continue
        names.append(r.name)
        patients.append(r.patient_id)
        if len(batch) == 64:
            flush()
    if batch:
        flush()
    stacked = np.concatenate(codes) if codes else np.zeros((0, size * size), np.float32)
    meta = {"size": size, "center": center, **code_kind(net, image_size), "align_checkpoint": Path(align).name}
    return HashIndex(stacked, names, patients, meta)
