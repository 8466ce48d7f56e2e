"""Negative pairing of a run (paper 4.3.2): which negative image is contrasted with each image, and why.

The strategies are declared once, in :data:`cianet.config.NEGATIVE_STRATEGIES` (docs/method.md, "Negative
sampling"). No strategy reads a label, a box or a twin of the image it pairs, except the oracle, whose twin is
the point of an upper bound:

- ``sim``: nearest perceptual-hash code by cosine similarity (never the image itself, by default never the same
  patient). Pairs are computed once per run; training saves them as ``pairs.json`` in the run folder
  (:func:`save_pairs`) and every later reader (a resumed run, ``cianet evaluate``) reuses that file. A file
  made with another negative pool is an error, never silently replaced.
- ``random``: a random negative per image, re-drawn every epoch, seeded by (seed, epoch) so a resumed run sees
  the same pairs as an uninterrupted one.
- ``canonical``: the canonical chest for every image.
- ``prior`` / ``prior_any``: the same patient's most recent earlier No Finding study (``prior_any``: the nearest
  at any other follow-up) by :func:`cianet.data.priors.prior_studies`, which reads the patient id, the
  follow-up numbers and the labels of the *other* studies, never those of the image it pairs. Images without
  one (or whose training image's prior is held out, or whose prior's file is missing) are paired by
  ``negatives.prior_fallback`` (sim, random or canonical), and the record says why.
- ``oracle`` (phantom only, an UPPER BOUND, never evidence): every image, No Finding included, is paired with
  its own finding-free twin written by ``cianet synth --twins`` (a re-render of the same patient under an
  independent acquisition), read as ``"twin:NAME"``. No image is ever its own negative.

The pool of ``sim`` and ``random`` is the No Finding images that the run does not hold out (test, AUC extras,
validation); held-out images are paired like test images. With ``negatives.aligned_codes`` and an alignment
network (``align.checkpoint``) the "sim" codes of the pool and of the queries are computed on the *aligned*
images (the run's network, at the run's image size); a ``--hash-index`` file and ``pairs.json`` record which
codes they hold, and codes of another kind are an error, never recomputed or mixed (:func:`code_kind`).

Every run records its pairing in ``negatives.csv`` (image, split, negative, strategy, reason; one row per image
trained on or scored) and the counts in ``negatives.json`` (:func:`write_pairing_record`: training writes them,
``cianet evaluate`` rewrites them from the pairing it scored with). Nothing here writes a file except
:func:`save_pairs`, :func:`write_pairing_record` and :func:`hash_data_root`.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cianet.config import CANONICAL, NEGATIVE_STRATEGIES, RANDOM, SIM, Config
from cianet.data.cache import ImageCache, read_image
from cianet.data.canonical import load_canonical
from cianet.data.layouts import open_index
from cianet.data.priors import prior_studies
from cianet.errors import InputError, MissingPathError, UsageError
from cianet.negatives import HashIndex, NegativeSampler, build_hash_index, hash_codes
from cianet.phantom import TWINS_DIR
from cianet.run.checkpoints import load_alignment
from cianet.run.datasets import ImageSource
from cianet.run.device import resolve_device
from cianet.utils.atomic import atomic_write_json, atomic_write_text
from cianet.utils.progress import progress_bar

Pairing = dict[str, "str | None"]
PAIRS_FILE = "pairs.json"
#: the run's pairing, one row per image it trained on or scored, and its counts (:func:`write_pairing_record`)
NEGATIVES_CSV = "negatives.csv"
NEGATIVES_JSON = "negatives.json"
NEGATIVES_COLUMNS = ("image", "split", "negative", "strategy", "reason")
#: prefix of an oracle negative's name: "twin:NAME" is read from DATA_ROOT/twins/NAME (see ``image_source``)
TWIN_PREFIX = "twin:"


def twin_paths(data_root: str | Path) -> dict[str, Path]:
    """``{"twin:NAME": path}`` of the phantom's finding-free twins (``cianet synth --twins``)."""
    twin_dir = Path(data_root) / TWINS_DIR
    if not twin_dir.is_dir():
        raise MissingPathError(
            f"{twin_dir} does not exist: negatives.strategy=oracle needs the phantom's twins (`cianet synth --twins`)"
        )
    return {TWIN_PREFIX + p.name: p for p in twin_dir.iterdir() if p.is_file()}


def oracle_pairs(data_root: str | Path, data) -> Pairing:
    """The UPPER BOUND: each image of the run, No Finding included, -> its own twin ``"twin:NAME"`` (a
    finding-free re-render of the same patient). Reads no label; a missing twin is an InputError naming it."""
    twins = twin_paths(data_root)
    pairs: Pairing = {}
    for name in dict.fromkeys(list(data.train) + data.held_out):
        if TWIN_PREFIX + name not in twins:
            raise InputError(
                f"{Path(data_root) / TWINS_DIR / name}: the twin of {name} is missing "
                "(negatives.strategy=oracle pairs every image with its twin; regenerate the phantom "
                "with `cianet synth --twins`)"
            )
        pairs[name] = TWIN_PREFIX + name
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


def hash_codes_for(
    names: list[str], source, progress: bool = False, align_net=None, center: bool = False
) -> np.ndarray:
    """Perceptual-hash codes (N, 256) of the named images, read at the run's size from ``source`` (8-bit, as
    training reads them); with ``align_net``, of the images it aligns (:func:`aligned_images`)."""
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
    device = next(align_net.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(images_u8)).to(device=device, dtype=torch.float32)[:, None] / 255.0
    with torch.no_grad():
        return align_net(x)["aligned"][:, 0].float().cpu().numpy()


def alignment_fingerprint(align_net) -> str:
    """Short content hash of an alignment network's weights: names the warp that aligned codes were made with."""
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
    return (
        f"codes of images aligned at {kind.get('image_size')} px by the alignment network with weights "
        f"{kind.get('alignment')}"
    )


def run_code_aligner(cfg: Config, align_net=None):
    """The alignment network the run's "sim" codes go through (``align_net`` or loaded from
    ``cfg.align.checkpoint``), or None when the run hashes unaligned images."""
    if not (cfg.negatives.aligned_codes and cfg.align.checkpoint):
        return None
    if align_net is not None:
        return align_net
    return load_alignment(cfg.align.checkpoint, resolve_device(cfg.run.device)).net


def check_index_codes(path, meta: dict, want: dict, align_checkpoint: str | None = None) -> None:
    """InputError naming the index file when its codes (``meta``) are not of the kind the run needs."""
    have = {"aligned": bool(meta.get("aligned", False))}
    if have["aligned"]:
        have.update(alignment=meta.get("alignment"), image_size=meta.get("image_size"))
    if have == want:
        return
    if want["aligned"]:
        fix = (
            f"build one with `cianet hash --align {align_checkpoint} --image-size {want['image_size']} ...`, "
            "leave --hash-index out to hash the run's images, or set negatives.aligned_codes=false"
        )
    elif align_checkpoint:
        fix = (
            "build one without --align, leave --hash-index out, or set negatives.aligned_codes=true with the "
            "alignment it was built with"
        )
    else:
        fix = "the run does not align (no align.checkpoint): build one without --align, or leave --hash-index out"
    raise InputError(
        f"hash index {path} (--hash-index) holds {describe_codes(have)}, but the run pairs with "
        f"{describe_codes(want)}: {fix}"
    )


def _pool_index(cfg: Config, pool: list[str], patients: dict[str, str], source, with_codes: bool, align_net=None):
    """HashIndex of the negative pool: from cfg.negatives.hash_index when given (restricted to the pool; its
    codes must be of the run's kind, :func:`check_index_codes`), else computed from the run's images (aligned by
    ``align_net`` when given). ``random`` needs no codes (zeros stand in)."""
    if not with_codes:
        return HashIndex(np.zeros((len(pool), 1), np.float32), list(pool), [patients[n] for n in pool])
    if cfg.negatives.hash_index:
        if not Path(cfg.negatives.hash_index).is_file():
            raise MissingPathError(
                f"hash index {cfg.negatives.hash_index} (--hash-index / negatives.hash_index) "
                "does not exist; build it with `cianet hash`, or leave it out to hash the "
                "run's images"
            )
        full = HashIndex.load(cfg.negatives.hash_index)
        check_index_codes(
            cfg.negatives.hash_index, full.meta, code_kind(align_net, cfg.data.image_size), cfg.align.checkpoint
        )
        unknown = [n for n in full.names if n not in patients]
        if unknown:
            raise InputError(
                f"hash index {cfg.negatives.hash_index}: {len(unknown)} of its images are not in the "
                f"data set (first: {unknown[0]}); build it for this data set with `cianet hash`"
            )
        keep = set(pool)
        rows = [i for i, n in enumerate(full.names) if n in keep]
        if not rows:
            raise InputError(
                f"hash index {cfg.negatives.hash_index} holds none of the run's {len(pool)} negative "
                "candidates; build it for this data set with `cianet hash`"
            )
        return HashIndex(
            full.codes[rows], [full.names[i] for i in rows], [full.patients[i] for i in rows], dict(full.meta)
        )
    return HashIndex(hash_codes_for(pool, source, cfg.run.progress, align_net), list(pool), [patients[n] for n in pool])


#: explain(image, negative, held_out) -> (the strategy that chose the negative, the reason)
Explain = Callable[[str, "str | None", bool], "tuple[str, str]"]


@dataclass
class RunPairing:
    """The negatives of a run: ``train(epoch)`` and ``test(epoch)`` map image name -> negative name (None: the
    canonical chest, or no negative at all for the baseline); ``canonical`` is the canonical chest image
    when the strategy uses it. ``sampler`` holds "sim" pairs that are not yet in the run's ``pairs.json``.
    ``strategy`` is the run's (None: the baseline); ``explain`` says, per image, which strategy chose its
    negative and why (the rows of ``negatives.csv``)."""

    train: Callable[[int], Pairing | None]
    test: Callable[[int], Pairing | None]
    canonical: np.ndarray | None = None
    sampler: object | None = None  # cianet.negatives.NegativeSampler with pairs to save
    strategy: str | None = None
    explain: Explain | None = None
    fallback: str | None = None  # prior, prior_any: negatives.prior_fallback


def _fixed(pairs: Pairing) -> Callable[[int], Pairing]:
    return lambda epoch: pairs


def pair_negatives(cfg: Config, data, source, align_net=None) -> RunPairing:
    """The pairing of a run (see the module docstring). Reads ``pairs.json`` from ``cfg.run.out`` when present;
    never writes. ``align_net``: the run's alignment network, when the caller has it loaded (else "sim" with
    aligned codes loads it from ``cfg.align.checkpoint``). Held-out images are paired by ``test(epoch)``."""
    strategy = cfg.negatives.strategy
    if strategy not in NEGATIVE_STRATEGIES:
        raise UsageError(f"negatives.strategy must be one of {', '.join(NEGATIVE_STRATEGIES)}, got {strategy!r}")
    if cfg.model.kind == "baseline":  # the baseline never looks at a negative
        return RunPairing(
            lambda epoch: None,
            lambda epoch: None,
            explain=lambda name, neg, held: ("none", "the baseline takes no negative"),
        )
    spec = NEGATIVE_STRATEGIES[strategy]
    if spec.upper_bound:
        pairs = oracle_pairs(cfg.data.data_root, data)
        why = "upper bound: the image's own finding-free twin (the same patient, re-rendered)"
        return RunPairing(
            _fixed({n: pairs[n] for n in data.train}),
            _fixed({n: pairs[n] for n in data.held_out}),
            strategy=strategy,
            explain=lambda name, neg, held: (strategy, why),
        )
    if spec.prior:
        return _prior_pairing(cfg, data, source, align_net)
    return _base_pairing(cfg, strategy, data, list(data.train), data.held_out, source, align_net)


def _available(cfg: Config) -> set[str]:
    """Names the run's image cache holds (an image is readable from its file or from the cache)."""
    if not cfg.data.cache:
        return set()
    return set(ImageCache.open(cfg.data.cache).names)


def _canonical_pairing(cfg: Config, train: list[str], held_out: list[str]) -> RunPairing:
    """Every image of ``train`` and ``held_out`` paired with the canonical chest (``align.canonical``)."""
    if not cfg.align.canonical:
        key = "negatives.strategy" if cfg.negatives.strategy == CANONICAL else "negatives.prior_fallback"
        raise UsageError(f"{key}=canonical needs align.canonical (a canonical chest PNG from `cianet canonical`)")
    canonical = load_canonical(cfg.align.canonical, cfg.data.image_size)
    why = "the canonical chest, the same for every image"
    return RunPairing(
        lambda e: dict.fromkeys(train),
        lambda e: dict.fromkeys(held_out),
        canonical,
        strategy=CANONICAL,
        explain=lambda name, neg, held: (CANONICAL, why),
    )


def _base_pairing(
    cfg: Config, strategy: str, data, train: list[str], held_out: list[str], source, align_net=None
) -> RunPairing:
    """A pool or canonical strategy (``cianet.config.BASE_STRATEGIES``) over the images ``train`` (paired by
    ``train(epoch)``) and ``held_out`` (paired by ``test(epoch)``); the pool never holds a held-out image of the
    run, whichever images are paired here."""
    if strategy == CANONICAL:
        return _canonical_pairing(cfg, train, held_out)
    index = data.index
    patients = {r.name: r.patient_id for r in index.records}
    pool = negative_pool(index, exclude=set(data.held_out), available=_available(cfg))
    if not pool:
        raise InputError("no No Finding image is available as a negative (CIA-Net needs negatives)")
    aligner = run_code_aligner(cfg, align_net) if strategy == SIM else None
    kind = code_kind(aligner, cfg.data.image_size)
    sampler = NegativeSampler(
        strategy,
        _pool_index(cfg, pool, patients, source, strategy == SIM, aligner),
        seed=cfg.run.seed,
        exclude_same_patient=cfg.negatives.exclude_same_patient,
        codes_kind=kind if strategy == SIM else None,
    )
    blank = "no candidate left once the image and its patient are excluded: a blank negative"
    if strategy == RANDOM:  # redrawn every epoch, keyed by (seed, epoch, name): resumable

        def pair_random(names: list[str], offset: int) -> Callable[[int], Pairing]:
            pats = [patients[n] for n in names]
            return lambda e: dict(zip(names, sampler.pair(names, patients=pats, epoch=offset + e)))

        def why_random(name: str, neg: str | None, held: bool) -> tuple[str, str]:
            if neg is None:
                return strategy, blank
            return strategy, (
                "random draw, fixed for scoring" if held else "random draw, redrawn every epoch (epoch 0 shown)"
            )

        return RunPairing(
            pair_random(list(train), 0), pair_random(list(held_out), 10_000), strategy=strategy, explain=why_random
        )
    # sim: fixed pairs, computed once; a pairs file made with another pool or other codes raises here
    names = list(dict.fromkeys(list(train) + list(held_out)))
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
    where = "aligned images" if kind["aligned"] else "images"

    def why_sim(name: str, neg: str | None, held: bool) -> tuple[str, str]:
        if neg is None:
            return strategy, blank
        cosine = sampler.similarity(name)
        return strategy, (
            f"nearest code of {where} (cosine {cosine:.3f})" if cosine is not None else f"nearest code of {where}"
        )

    return RunPairing(
        _fixed({n: pairs[n] for n in train}),
        _fixed({n: pairs[n] for n in held_out}),
        None,
        to_save,
        strategy=strategy,
        explain=why_sim,
    )


def prior_pairs(cfg: Config, data) -> tuple[Pairing, dict[str, str]]:
    """``prior`` / ``prior_any``: ``(pairs, reasons)``: image -> the same patient's No Finding study
    (:func:`cianet.data.priors.prior_studies`) and, for every image, why it has one or not ("prior: follow-up
    2", "fallback: no earlier No Finding study", ...). A training image whose prior is held out, and an image
    whose prior's file is neither under the data root nor in the cache, fall back too."""
    strategy = cfg.negatives.strategy
    any_time = NEGATIVE_STRATEGIES[strategy].prior == "any"
    records = {r.name: r for r in data.index.records}
    found = prior_studies(list(data.index.records), allow_later=any_time)
    held = set(data.held_out)
    available = _available(cfg)
    which = "No Finding study at another follow-up" if any_time else "earlier No Finding study"
    pairs: Pairing = {}
    reasons: dict[str, str] = {}
    for name, is_held in [(n, False) for n in data.train] + [(n, True) for n in data.held_out]:
        prior = found.get(name)
        rec = records[name]
        if prior is None or prior == name:
            reasons[name] = "fallback: no follow-up number" if rec.follow_up is None else f"fallback: no {which}"
        elif not is_held and prior in held:
            reasons[name] = f"fallback: its {which} {prior} is held out (test/validation)"
        elif records[prior].path is None and prior not in available:
            reasons[name] = f"fallback: the file of its {which} {prior} is missing"
        else:
            pairs[name] = prior
            later = any_time and int(records[prior].follow_up) > int(rec.follow_up)
            reasons[name] = f"prior: follow-up {records[prior].follow_up}" + (" (later)" if later else "")
    return pairs, reasons


def _prior_pairing(cfg: Config, data, source, align_net=None) -> RunPairing:
    """``prior`` / ``prior_any`` (:func:`prior_pairs`), the rest by ``negatives.prior_fallback``."""
    strategy, fallback = cfg.negatives.strategy, cfg.negatives.prior_fallback
    pairs, reasons = prior_pairs(cfg, data)
    rest_train = [n for n in data.train if n not in pairs]
    rest_held = [n for n in data.held_out if n not in pairs]
    base = _base_pairing(cfg, fallback, data, rest_train, rest_held, source, align_net)
    train_prior = {n: pairs[n] for n in data.train if n in pairs}
    held_prior = {n: pairs[n] for n in data.held_out if n in pairs}

    def merged(own: Pairing, rest: Callable[[int], Pairing | None]) -> Callable[[int], Pairing]:
        return lambda e: {**own, **(rest(e) or {})}

    def explain(name: str, neg: str | None, held: bool) -> tuple[str, str]:
        if name in pairs:
            return strategy, reasons[name]
        used, why = base.explain(name, neg, held)
        return used, f"{reasons[name]}; {why}"

    return RunPairing(
        merged(train_prior, base.train),
        merged(held_prior, base.test),
        base.canonical,
        base.sampler,
        strategy=strategy,
        explain=explain,
        fallback=fallback,
    )


def save_pairs(pairing: RunPairing, run_dir: str | Path) -> Path | None:
    """Write the "sim" pairs computed by :func:`pair_negatives` into ``run_dir/pairs.json`` (atomically);
    None when there is nothing new to write."""
    if pairing.sampler is None:
        return None
    path = Path(run_dir) / PAIRS_FILE
    pairing.sampler.save_pairs(path)
    return path


def negative_label(neg: str | None, pairing: RunPairing) -> str:
    """What ``negatives.csv`` names a negative: an image file name, ``twins/NAME`` (the oracle's twin file
    under the data root), ``canonical`` (the canonical chest), or ``none`` (the baseline; a blank negative)."""
    if neg is None:
        return CANONICAL if pairing.canonical is not None else "none"
    if neg.startswith(TWIN_PREFIX):
        return f"{TWINS_DIR}/{neg[len(TWIN_PREFIX) :]}"
    return neg


def pairing_rows(pairing: RunPairing, data) -> list[dict[str, str]]:
    """The rows of ``negatives.csv``: one per image the run trains on (epoch 0's negative) or scores
    (validation, test and AUC-extra images, as scoring pairs them), in that order."""
    train, held = pairing.train(0) or {}, pairing.test(0) or {}
    explain = pairing.explain or (lambda name, neg, is_held: (pairing.strategy or "none", ""))
    rows = []
    splits = (
        ("train", list(data.train)),
        ("val", list(data.val)),
        ("test", list(dict.fromkeys(list(data.test) + list(data.auc_extra)))),
    )
    for split, names in splits:
        pairs = train if split == "train" else held
        for name in names:
            neg = pairs.get(name)
            used, reason = explain(name, neg, split != "train")
            rows.append(
                {
                    "image": name,
                    "split": split,
                    "negative": negative_label(neg, pairing),
                    "strategy": used,
                    "reason": reason,
                }
            )
    return rows


def pairing_counts(pairing: RunPairing, rows: list[dict[str, str]]) -> dict:
    """``negatives.json``: the strategy, its fallback, and how many images each way paired (``prior`` /
    ``fallback`` for prior runs, else the strategy's name), in all and per split."""

    def key(row: dict[str, str]) -> str:
        if pairing.fallback is not None:
            return pairing.strategy if row["strategy"] == pairing.strategy else "fallback"
        return "blank" if row["negative"] == "none" and pairing.strategy else row["strategy"]

    counts: dict[str, int] = {}
    by_split: dict[str, dict[str, int]] = {}
    for row in rows:
        k = key(row)
        counts[k] = counts.get(k, 0) + 1
        split = by_split.setdefault(row["split"], {})
        split[k] = split.get(k, 0) + 1
    return {
        "strategy": pairing.strategy or "none",
        "fallback": pairing.fallback,
        "upper_bound": bool(pairing.strategy and NEGATIVE_STRATEGIES[pairing.strategy].upper_bound),
        "images": len(rows),
        "counts": counts,
        "by_split": by_split,
    }


def write_pairing_record(pairing: RunPairing, data, run_dir: str | Path) -> dict:
    """Write ``run_dir/negatives.csv`` (:func:`pairing_rows`) and ``negatives.json`` (:func:`pairing_counts`),
    each atomically; returns the counts."""
    rows = pairing_rows(pairing, data)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(NEGATIVES_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    counts = pairing_counts(pairing, rows)
    atomic_write_text(Path(run_dir) / NEGATIVES_CSV, buf.getvalue())
    atomic_write_json(Path(run_dir) / NEGATIVES_JSON, counts)
    return counts


def counts_line(counts: dict) -> str:
    """One line for the console: ``negatives (prior, fallback sim): prior 812, fallback 88``."""
    head = counts["strategy"] + (f", fallback {counts['fallback']}" if counts.get("fallback") else "")
    body = ", ".join(f"{k} {v}" for k, v in counts["counts"].items())
    return f"negatives ({head}{', UPPER BOUND' if counts.get('upper_bound') else ''}): {body}"


def hash_data_root(
    data_root: str | Path,
    out: str | Path,
    cache: str | Path | None = None,
    size: int = 16,
    entry_csv: str | None = None,
    workers: int = 4,
    center: bool = False,
    progress: bool | None = None,
    align: str | Path | None = None,
    image_size: int | None = None,
    device: str = "cpu",
    dataset: str = "auto",
) -> dict:
    """``cianet hash``: the perceptual-hash index of a data root's No Finding images, saved to ``out``.

    Images come from the image cache when it holds them, else from their files. Images with neither are left
    out (the pool is simply smaller), as are unreadable ones; both are counted in the returned summary
    ``{"index", "patients", "absent", "failed"}``.

    With ``align`` (an ``align.pt``), the codes are of the images that alignment network aligns, read as a run
    reads them at ``image_size`` (the run's ``data.image_size``; default: the cache's size), so that a run with
    ``negatives.aligned_codes`` and that alignment can use the index. The index's ``meta`` records the kind
    (:func:`code_kind`).
    """
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
        opened = ImageCache.open(cache)
    paths = {r.name: r.path for r in records}
    usable = [r for r in records if (opened is not None and r.name in opened) or r.path is not None]
    if not usable:
        where = f"in {cache} or " if opened is not None else ""
        raise MissingPathError(f"{data_root}: none of the {len(records)} No Finding images found {where}below it")
    failed: list[str] = []
    if align is not None:
        hash_index = _aligned_hash_index(
            usable, paths, cache, opened, align, image_size, size, center, device, progress, failed
        )
    else:
        hash_index = build_hash_index(
            [r.name for r in usable],
            [r.patient_id for r in usable],
            lambda name: read_image(name, paths[name], opened)[0],
            size=size,
            center=center,
            workers=workers,
            progress=progress,
            on_error=lambda name, exc: failed.append(f"{name}: {exc}"),
        )
        hash_index.meta.update(code_kind())
    if len(hash_index) == 0:
        raise InputError(f"{data_root}: no No Finding image could be read (first error: {failed[0]})")
    hash_index.meta.update(
        {
            "source": "cache" if opened is not None else "files",
            "cache_size": opened.size if opened is not None else None,
        }
    )
    hash_index.save(out)
    return {
        "index": hash_index,
        "patients": len(set(hash_index.patients)),
        "absent": len(records) - len(usable),
        "failed": failed,
    }


def _aligned_hash_index(records, paths, cache, opened, align, image_size, size, center, device, progress, failed):
    """The HashIndex of ``records`` hashed on their aligned images (see :func:`hash_data_root`)."""
    if image_size is None:
        if opened is None:
            raise UsageError("--align needs --image-size (the run's data.image_size) or --cache")
        image_size = opened.size
    if image_size < 32 or image_size % 32:
        raise UsageError(f"--image-size must be a positive multiple of 32, got {image_size}")
    if opened is not None and opened.size != image_size:
        raise UsageError(
            f"image cache {cache} holds {opened.size}px images but --image-size is {image_size}: "
            "give the cache of the run's size, or no --cache"
        )
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
