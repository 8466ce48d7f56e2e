"""Negative sampling for CIA-Net's contrastive pairs (paper section 4.3.2, Table 5).

Every training / test image is paired with a negative ("No Finding") image. The paper's default ("Sim")
picks the structurally most similar negative with a perceptual hash: all negatives are resized to 16x16 and
flattened; a sample's 16x16 code is matched to the nearest code by cosine similarity. The alternatives of
Table 5 are "Rand" (a random negative) and "Canon" (always the canonical chest).

Codes (:func:`hash_codes`): antialiased area resize to ``size x size`` (exact box-filter averaging, so for an
image whose side is a multiple of ``size`` each code entry is the mean of one block), flatten, optionally
subtract the code's mean (``center=True``; off by default: the paper uses plain flattened images), and
L2-normalize (float32), so a dot product is the cosine similarity. The sampler only sees codes: whether they
are computed on raw or on aligned images is the caller's choice (the engine may hash aligned images).
"""

from __future__ import annotations

import hashlib
import json
import math
import zipfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cianet.config import BASE_STRATEGIES, CANONICAL, RANDOM, SIM
from cianet.errors import InputError, MissingPathError
from cianet.utils.atomic import atomic_path, atomic_write_json
from cianet.utils.progress import chunk_progress, progress_bar

__all__ = [
    "HASH_SIZE",
    "STRATEGIES",
    "area_resize",
    "hash_codes",
    "HashIndex",
    "build_hash_index",
    "query_naive",
    "NegativeSampler",
]

HASH_SIZE = 16
#: the strategies the sampler implements: those that need only the pool or the canonical chest
#: (cianet.config.NEGATIVE_STRATEGIES; prior, prior_any and oracle pair in cianet.run.pairing)
STRATEGIES = BASE_STRATEGIES
_FORMAT = "cianet-hash-index-v1"
_PAIRS_FORMAT = "cianet-negative-pairs-v1"


# ----------------------------------------------------------------------------------------------------------
# Codes
# ----------------------------------------------------------------------------------------------------------


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` matrix averaging input pixels over each output pixel's footprint (box filter).

    Output pixel ``o`` covers input interval ``[o n_in/n_out, (o+1) n_in/n_out)``; input pixel ``i`` gets the
    weight ``overlap / footprint``. Rows sum to 1.
    """
    scale = n_in / n_out
    lo = np.arange(n_out, dtype=np.float64)[:, None] * scale  # (n_out, 1)
    hi = lo + scale
    px = np.arange(n_in, dtype=np.float64)[None, :]  # (1, n_in)
    overlap = np.clip(np.minimum(hi, px + 1) - np.maximum(lo, px), 0.0, None)
    return overlap / scale


def area_resize(images: np.ndarray, size: int) -> np.ndarray:
    """Antialiased area resize of ``(N, H, W)`` (or ``(H, W)``) to ``(N, size, size)`` float32.

    Exact area averaging; when ``H`` and ``W`` are multiples of ``size`` this is the plain block mean.
    """
    arr = np.asarray(images)
    squeeze = arr.ndim == 2
    if squeeze:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError(f"images must be (N, H, W) or (H, W), got shape {np.asarray(images).shape}")
    n, h, w = arr.shape
    x = arr.astype(np.float32)
    if h % size == 0 and w % size == 0:
        out = x.reshape(n, size, h // size, size, w // size).mean(axis=(2, 4), dtype=np.float64)
    else:
        ry = _area_matrix(h, size)  # (size, H)
        rx = _area_matrix(w, size)  # (size, W)
        out = np.einsum("sh,nhw,tw->nst", ry, x.astype(np.float64), rx, optimize=True)
    out = out.astype(np.float32)
    return out[0] if squeeze else out


def hash_codes(images: np.ndarray, size: int = HASH_SIZE, center: bool = False) -> np.ndarray:
    """Perceptual-hash codes of ``(N, H, W)`` images (float in [0, 1] or uint8): ``(N, size*size)`` float32.

    Each image is area-resized to ``size x size``, flattened, optionally mean-centered, and L2-normalized.
    uint8 input is scaled by 1/255 first (irrelevant for cosine, but keeps the intermediate in [0, 1]).
    An all-constant image (all-zero after centering) gets the zero code, whose cosine with anything is 0.
    """
    arr = np.asarray(images)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"images must be (N, H, W), got shape {arr.shape}")
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    codes = area_resize(arr, size).reshape(arr.shape[0], size * size).astype(np.float64)
    if center:
        codes -= codes.mean(axis=1, keepdims=True)
    return _normalize(codes)


def _normalize(codes: np.ndarray) -> np.ndarray:
    codes = np.asarray(codes, dtype=np.float64)
    norms = np.linalg.norm(codes, axis=1, keepdims=True)
    return np.divide(codes, norms, out=np.zeros_like(codes), where=norms > 0).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Index
# ----------------------------------------------------------------------------------------------------------


@dataclass
class HashIndex:
    """Codes of the negative pool with their image names and patient ids.

    Attributes:
        codes: ``(M, D)`` float32, unit norm (normalized on construction).
        names: M image names (unique).
        patients: M patient ids (strings; may be empty strings when unknown).
        meta: free-form settings, e.g. ``{"size": 16, "center": False}``.
    """

    codes: np.ndarray
    names: list[str]
    patients: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        codes = np.asarray(self.codes)
        if codes.ndim != 2:
            raise InputError(f"hash index codes must be (M, D), got shape {codes.shape}")
        self.names = [str(n) for n in self.names]
        self.patients = [str(p) for p in self.patients]
        if len(self.names) != codes.shape[0] or len(self.patients) != codes.shape[0]:
            raise InputError(
                f"hash index has {codes.shape[0]} codes but {len(self.names)} names and {len(self.patients)} patients"
            )
        bad = np.flatnonzero(~np.isfinite(codes).all(axis=1)) if codes.dtype.kind == "f" else []
        if len(bad):  # a NaN code would pair every query with an arbitrary image
            raise InputError(
                f"hash index has non-finite codes for {len(bad)} images (first: "
                f"{self.names[bad[0]]}); rebuild it with `cianet hash`"
            )
        self.codes = _normalize(codes)
        self._name_to_idx = {n: i for i, n in enumerate(self.names)}
        if len(self._name_to_idx) != len(self.names):
            raise InputError("hash index names must be unique")
        self._patient_to_id: dict[str, int] = {}
        self._pid = np.array(
            [self._patient_to_id.setdefault(p, len(self._patient_to_id)) for p in self.patients], dtype=np.int64
        )
        # Patient groups as CSR: members of patient g are _order[_starts[g] : _starts[g] + _counts[g]].
        self._order = np.argsort(self._pid, kind="stable")
        self._counts = np.bincount(self._pid, minlength=len(self._patient_to_id))
        self._starts = np.concatenate([[0], np.cumsum(self._counts)[:-1]]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def dim(self) -> int:
        return int(self.codes.shape[1])

    def index_of(self, name: str) -> int:
        """Row of ``name`` (-1 if absent)."""
        return self._name_to_idx.get(name, -1)

    def fingerprint(self) -> str:
        """Short content hash (codes + names + patients): identifies the index a pairing was made with."""
        h = hashlib.sha1()
        h.update(np.ascontiguousarray(self.codes).tobytes())
        h.update("\n".join(self.names).encode())
        h.update("\n".join(self.patients).encode())
        return h.hexdigest()[:16]

    # -- persistence -------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write an ``.npz`` atomically (codes, names, patients, meta as JSON)."""
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz" to a bare name
                np.savez(
                    fh,
                    format=np.array(_FORMAT),
                    codes=self.codes,
                    names=np.array(self.names, dtype=str),
                    patients=np.array(self.patients, dtype=str),
                    meta=np.array(json.dumps(self.meta)),
                )

    @classmethod
    def load(cls, path: str | Path) -> HashIndex:
        """Read an index written by :meth:`save`; errors name the file and the problem."""
        path = Path(path)
        if not path.is_file():
            raise MissingPathError(f"{path}: hash index not found")
        try:
            data = np.load(path, allow_pickle=False)
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
            raise InputError(f"{path}: not a hash index (cannot read as .npz: {exc})") from None
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise InputError(f"{path}: not a hash index (a plain .npy array, not an .npz archive)")
        with data:
            missing = [k for k in ("format", "codes", "names", "patients") if k not in data.files]
            if missing:
                raise InputError(f"{path}: not a cianet hash index (missing {', '.join(missing)})")
            fmt = str(data["format"])
            if fmt != _FORMAT:
                raise InputError(f"{path}: not a cianet hash index (format {fmt!r}, expected {_FORMAT!r})")
            codes, names, patients = data["codes"], data["names"], data["patients"]
            meta = json.loads(str(data["meta"])) if "meta" in data.files else {}
        if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.floating):
            raise InputError(f"{path}: hash index codes have wrong shape/dtype {codes.shape} {codes.dtype}")
        if names.shape != (codes.shape[0],) or patients.shape != (codes.shape[0],):
            raise InputError(
                f"{path}: hash index has {codes.shape[0]} codes but names {names.shape}, patients {patients.shape}"
            )
        try:
            return cls(codes, names.tolist(), patients.tolist(), meta)
        except ValueError as exc:
            raise InputError(f"{path}: {exc}") from None

    # -- queries -----------------------------------------------------------------------------------------

    def _exclusion_rows(
        self, q: int, exclude_names: Sequence[str | None] | None, exclude_patients: Sequence[str | None] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per query, the index row to exclude by name (-1: none) and the patient group id (-1: none)."""
        self_idx = np.full(q, -1, dtype=np.int64)
        pat_idx = np.full(q, -1, dtype=np.int64)
        if exclude_names is not None:
            if len(exclude_names) != q:
                raise ValueError(f"exclude_names has {len(exclude_names)} entries for {q} queries")
            self_idx[:] = [self._name_to_idx.get(n, -1) if n is not None else -1 for n in exclude_names]
        if exclude_patients is not None:
            if len(exclude_patients) != q:
                raise ValueError(f"exclude_patients has {len(exclude_patients)} entries for {q} queries")
            pat_idx[:] = [self._patient_to_id.get(str(p), -1) if p is not None else -1 for p in exclude_patients]
        return self_idx, pat_idx

    def query(
        self,
        codes: np.ndarray,
        exclude_names: Sequence[str | None] | None = None,
        exclude_patients: Sequence[str | None] | None = None,
        k: int = 1,
        chunk: int = 4096,
        max_chunk_bytes: int = 256 << 20,
    ) -> np.ndarray:
        """Nearest index rows by cosine similarity, vectorized.

        Args:
            codes: ``(Q, D)`` query codes (from :func:`hash_codes`; need not be normalized: the argmax of
                the cosine does not depend on the query's norm).
            exclude_names: per query, an image name whose row may not be returned (the query itself), or None.
            exclude_patients: per query, a patient id whose images may not be returned, or None.
            k: number of neighbours.
            chunk: queries per matrix product, capped so that the ``(chunk, M)`` float32 similarity buffer
                stays within ``max_chunk_bytes`` (one buffer, reused: 1,092 rows for M = 60k at 256 MiB).

        Returns:
            ``(Q,)`` int64 rows for ``k == 1``, else ``(Q, k)`` best first; -1 where fewer candidates remain.
            Ties go to the lowest row.
        """
        q_codes = np.asarray(codes, dtype=np.float32)
        if q_codes.ndim != 2 or q_codes.shape[1] != self.dim:
            raise ValueError(f"query codes must be (Q, {self.dim}), got shape {q_codes.shape}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = q_codes.shape[0]
        m = len(self)
        self_idx, pat_idx = self._exclusion_rows(q, exclude_names, exclude_patients)
        out = np.full((q, k), -1, dtype=np.int64)
        if m == 0:
            return out[:, 0] if k == 1 else out
        codes_t = np.ascontiguousarray(self.codes.T)  # (D, M)
        kk = min(k, m)
        chunk = max(1, min(chunk, max_chunk_bytes // (4 * m), q))
        buf = np.empty((chunk, m), dtype=np.float32)  # reused: no fresh pages (and page faults) per chunk
        for start in range(0, q, chunk):
            stop = min(start + chunk, q)
            sims = np.matmul(q_codes[start:stop], codes_t, out=buf[: stop - start])  # (chunk, M) cosine
            rows = np.arange(stop - start)
            # Self exclusion: one entry per query.
            s_idx = self_idx[start:stop]
            has = s_idx >= 0
            sims[rows[has], s_idx[has]] = -np.inf
            # Same-patient exclusion: gather every member of each query's patient group (CSR expansion).
            p_idx = pat_idx[start:stop]
            has = p_idx >= 0
            if has.any():
                groups = p_idx[has]
                counts = self._counts[groups]
                r = np.repeat(rows[has], counts)
                offs = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
                cols = self._order[np.repeat(self._starts[groups], counts) + offs]
                sims[r, cols] = -np.inf
            if kk == 1:
                best = np.argmax(sims, axis=1)[:, None]
            else:
                part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
                # Sort the k best by (-sim, row) so that ties go to the lowest row.
                vals = np.take_along_axis(sims, part, axis=1)
                order = np.lexsort((part, -vals), axis=1)
                best = np.take_along_axis(part, order, axis=1)
            best_sims = np.take_along_axis(sims, best, axis=1)
            out[start:stop, :kk] = np.where(np.isneginf(best_sims), -1, best)
        return out[:, 0] if k == 1 else out

    def query_names(
        self,
        codes: np.ndarray,
        exclude_names: Sequence[str | None] | None = None,
        exclude_patients: Sequence[str | None] | None = None,
        chunk: int = 4096,
    ) -> list[str | None]:
        """:meth:`query` returning image names (None where every candidate was excluded)."""
        rows = self.query(codes, exclude_names, exclude_patients, k=1, chunk=chunk)
        return [self.names[r] if r >= 0 else None for r in rows]


def query_naive(
    index: HashIndex,
    codes: np.ndarray,
    exclude_names: Sequence[str | None] | None = None,
    exclude_patients: Sequence[str | None] | None = None,
) -> np.ndarray:
    """Reference / benchmark baseline for :meth:`HashIndex.query` (k = 1): one query at a time, in float64,
    exclusions checked per candidate in Python. Same result contract (-1 when nothing is left, ties to the
    lowest row)."""
    q_codes = np.asarray(codes, dtype=np.float64)
    ref = index.codes.astype(np.float64)
    out = np.full(q_codes.shape[0], -1, dtype=np.int64)
    for qi in range(q_codes.shape[0]):
        sims = ref @ q_codes[qi]  # (M,)
        skip_name = exclude_names[qi] if exclude_names is not None else None
        skip_pat = exclude_patients[qi] if exclude_patients is not None else None
        best, best_sim = -1, -math.inf
        for j in range(len(index)):
            if skip_name is not None and index.names[j] == skip_name:
                continue
            if skip_pat is not None and index.patients[j] == str(skip_pat):
                continue
            if sims[j] > best_sim:
                best, best_sim = j, sims[j]
        out[qi] = best
    return out


def build_hash_index(
    names: Sequence[str],
    patients: Sequence[str],
    load: Callable[[str], np.ndarray],
    size: int = HASH_SIZE,
    center: bool = False,
    workers: int = 1,
    progress: bool | None = None,
    on_error: Callable[[str, Exception], None] | None = None,
) -> HashIndex:
    """Hash every image ``load(name) -> (H, W)`` (float [0, 1] or uint8) into a :class:`HashIndex`.

    Args:
        workers: threads calling ``load`` (image decoding releases the GIL for most of its time).
        progress: tqdm bar; None -> shown on a terminal (or when CIANET_PROGRESS=1).
        on_error: called with ``(name, exception)`` for an image that ``load`` could not read; the image is
            left out. Without it the first error propagates.
    """
    if len(names) != len(patients):
        raise ValueError(f"{len(names)} names but {len(patients)} patients")

    def one(name: str) -> tuple[str, np.ndarray | None, Exception | None]:
        try:
            return name, hash_codes(load(name)[None], size=size, center=center)[0], None
        except Exception as exc:  # noqa: BLE001 - reported via on_error or re-raised below
            if on_error is None:
                raise
            return name, None, exc

    kept_codes: list[np.ndarray] = []
    kept_names: list[str] = []
    kept_patients: list[str] = []
    patient_of = dict(zip(names, patients))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results: Iterable = pool.map(one, names) if workers > 1 else map(one, names)
        bar = progress_bar(results, desc="hash", total=len(names), disable=None if progress is None else not progress)
        for name, code, exc in bar:
            if code is None:
                assert on_error is not None and exc is not None
                on_error(name, exc)
                continue
            kept_codes.append(code)
            kept_names.append(name)
            kept_patients.append(patient_of[name])
    codes = np.stack(kept_codes) if kept_codes else np.zeros((0, size * size), dtype=np.float32)
    return HashIndex(codes, kept_names, kept_patients, {"size": size, "center": center})


# ----------------------------------------------------------------------------------------------------------
# Sampler
# ----------------------------------------------------------------------------------------------------------


def _stable_uniform_int(seed: int, epoch: int, name: str, attempt: int, n: int) -> int:
    """A deterministic integer in [0, n) from (seed, epoch, name, attempt): independent of call order,
    process and PYTHONHASHSEED, so random pairing is reproducible and resumable."""
    digest = hashlib.blake2b(f"{seed}\x1f{epoch}\x1f{name}\x1f{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % n


class NegativeSampler:
    """Pairs each sample with a negative image, following one of Table 5's strategies.

    * ``"sim"`` (default, the paper's): nearest code by cosine in ``hash_index`` (needs the samples' codes,
      unless already paired by :meth:`pair_all` / :meth:`load_pairs`); the same every epoch.
    * ``"random"``: a uniformly drawn negative of ``hash_index``, drawn afresh per (seed, epoch, name).
    * ``"canonical"``: always the canonical chest, returned as None.

    In every strategy a sample is never paired with itself, nor (with ``exclude_same_patient``) with an image
    of its own patient (needs ``patients``); when no negative qualifies the result is None (canonical chest).
    """

    def __init__(
        self,
        strategy: str = SIM,
        hash_index: HashIndex | None = None,
        seed: int = 0,
        exclude_same_patient: bool = True,
        codes_kind: dict[str, Any] | None = None,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"negative sampling strategy must be one of {STRATEGIES}, got {strategy!r}")
        if strategy != CANONICAL and hash_index is None:
            raise InputError(f"negative sampling strategy {strategy!r} needs a hash index (the negative pool)")
        if hash_index is not None and len(hash_index) == 0:
            raise InputError("the hash index is empty: no negative images to pair with")
        self.strategy = strategy
        self.hash_index = hash_index
        self.seed = int(seed)
        self.exclude_same_patient = bool(exclude_same_patient)
        #: what the codes were computed on (e.g. ``{"aligned": False}``); saved with the pairs and checked on load
        self.codes_kind = dict(codes_kind) if codes_kind is not None else None
        self._pairs: dict[str, str | None] = {}
        self._cosine: dict[str, float] = {}  # "sim": the cosine of each pair's codes (for the run's record)

    def similarity(self, name: str) -> float | None:
        """The cosine similarity of ``name``'s "sim" pair (None: unpaired, or a file that did not record it)."""
        return self._cosine.get(name)

    def _patients_arg(self, names: Sequence[str], patients: Sequence[str] | None) -> Sequence[str | None] | None:
        if not self.exclude_same_patient or patients is None:
            return None
        if len(patients) != len(names):
            raise ValueError(f"{len(patients)} patients for {len(names)} names")
        return patients

    def pair(
        self,
        names: Sequence[str],
        codes: np.ndarray | None = None,
        patients: Sequence[str] | None = None,
        epoch: int = 0,
    ) -> list[str | None]:
        """Negative image name for each sample (None = the canonical chest).

        Args:
            names: the samples' image names.
            codes: ``(len(names), D)`` their hash codes ("sim" only; rows of already paired names unused).
            patients: their patient ids (for the same-patient exclusion).
            epoch: the epoch ("random" only).
        """
        names = list(names)
        if self.strategy == CANONICAL:
            return [None] * len(names)
        pats = self._patients_arg(names, patients)
        if self.strategy == RANDOM:
            return [self._random_one(n, pats[i] if pats is not None else None, epoch) for i, n in enumerate(names)]
        todo = [i for i, n in enumerate(names) if n not in self._pairs]
        if todo:
            if codes is None:
                raise ValueError(f"'sim' pairing needs hash codes for {len(todo)} unpaired images")
            codes = np.asarray(codes)
            if codes.shape[0] != len(names):
                raise ValueError(f"{codes.shape[0]} codes for {len(names)} names")
            assert self.hash_index is not None
            rows = self.hash_index.query(
                codes[todo],
                exclude_names=[names[i] for i in todo],
                exclude_patients=[pats[i] for i in todo] if pats is not None else None,
            )
            unit = _normalize(codes[todo])
            for i, row, code in zip(todo, rows, unit):
                self._pairs[names[i]] = self.hash_index.names[row] if row >= 0 else None
                if row >= 0:
                    self._cosine[names[i]] = float(np.dot(code.astype(np.float64), self.hash_index.codes[row]))
        return [self._pairs[n] for n in names]

    def _random_one(self, name: str, patient: str | None, epoch: int) -> str | None:
        index = self.hash_index
        assert index is not None
        m = len(index)

        def allowed(j: int) -> bool:
            return index.names[j] != name and (patient is None or index.patients[j] != str(patient))

        for attempt in range(32):  # rejection sampling; almost always the first draw
            j = _stable_uniform_int(self.seed, epoch, name, attempt, m)
            if allowed(j):
                return index.names[j]
        # Nearly everything is excluded: deterministic scan from a seeded start.
        start = _stable_uniform_int(self.seed, epoch, name, 32, m)
        for off in range(m):
            j = (start + off) % m
            if allowed(j):
                return index.names[j]
        return None

    def pair_all(
        self,
        names: Sequence[str],
        codes: np.ndarray | None = None,
        patients: Sequence[str] | None = None,
        epoch: int = 0,
        chunk: int = 16384,
        progress: bool | None = None,
    ) -> dict[str, str | None]:
        """Pair a whole list once (in chunks, with a progress bar) and remember the result; returns the map.

        For "sim" the map is what every later :meth:`pair` call returns; save it with :meth:`save_pairs`.
        """
        names = list(names)
        result: dict[str, str | None] = {}
        for start in chunk_progress(len(names), chunk, "pair", None if progress is None else not progress):
            stop = min(start + chunk, len(names))
            sub_codes = None if codes is None else np.asarray(codes)[start:stop]
            sub_pats = None if patients is None else list(patients)[start:stop]
            got = self.pair(names[start:stop], sub_codes, sub_pats, epoch=epoch)
            result.update(zip(names[start:stop], got))
        return result

    def save_pairs(self, path: str | Path) -> None:
        """Write the remembered "sim" pairs (JSON, atomic) with the index fingerprint and settings."""
        if self.strategy != SIM:
            raise ValueError(f"only 'sim' pairs are cached (strategy is {self.strategy!r})")
        assert self.hash_index is not None
        atomic_write_json(
            path,
            {
                "format": _PAIRS_FORMAT,
                "strategy": self.strategy,
                "index_fingerprint": self.hash_index.fingerprint(),
                "exclude_same_patient": self.exclude_same_patient,
                "codes": self.codes_kind if self.codes_kind is not None else {"aligned": False},
                "pairs": self._pairs,
                "cosine": {n: round(c, 6) for n, c in self._cosine.items()},
            },
        )

    def load_pairs(self, path: str | Path) -> int:
        """Load pairs written by :meth:`save_pairs`; refuses a file made with another index or settings.

        Returns the number of pairs loaded.
        """
        path = Path(path)
        if self.strategy != SIM:
            raise ValueError(f"only 'sim' pairs are cached (strategy is {self.strategy!r})")
        assert self.hash_index is not None
        try:
            obj = json.loads(path.read_text())
        except FileNotFoundError:
            raise MissingPathError(f"{path}: negative pairs file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not a negative pairs file ({exc})") from None
        if not isinstance(obj, dict) or obj.get("format") != _PAIRS_FORMAT or not isinstance(obj.get("pairs"), dict):
            raise InputError(f"{path}: not a cianet negative pairs file")
        made_with = obj.get("codes") or {"aligned": False}  # files of older versions: unaligned codes
        if self.codes_kind is not None and made_with != self.codes_kind:
            raise InputError(
                f"{path}: pairs were made with hash codes {made_with}, but this run's codes are "
                f"{self.codes_kind} (negatives.aligned_codes / align.checkpoint changed?); delete "
                "it to re-pair, or run with the settings it was made with"
            )
        if obj.get("index_fingerprint") != self.hash_index.fingerprint():
            raise InputError(f"{path}: pairs were made with a different hash index; delete it to re-pair")
        if bool(obj.get("exclude_same_patient")) != self.exclude_same_patient:
            raise InputError(f"{path}: pairs were made with exclude_same_patient={obj.get('exclude_same_patient')}")
        pool = set(self.hash_index.names)
        wrong = sorted(n for n, neg in obj["pairs"].items() if neg not in pool)
        if wrong:  # an edited file pairing a positive (or an unknown image) as the "negative"
            raise InputError(
                f"{path}: pairs {wrong[0]} with {obj['pairs'][wrong[0]]!r}, which is not a No Finding "
                f"image of the negative pool ({len(wrong)} such pairs); delete the file to re-pair"
            )
        self._pairs.update(obj["pairs"])
        cosine = obj.get("cosine")  # absent in files of older versions
        if isinstance(cosine, dict):
            self._cosine.update({n: float(c) for n, c in cosine.items() if isinstance(c, (int, float))})
        return len(obj["pairs"])
