"""A pre-resized image cache: every image decoded and resized once, then read back as a memory map.

Layout of a cache folder::

    images.npy     (N, S, S) uint8, row i = names[i]; read with np.load(mmap_mode="r")
    index.json     names, source paths, original (W, H) per row, size S, failed files with reasons
    plan.json      while building: the image list and size being built (removed when done)
    progress.npz   while building: per-row state, original sizes and failure reasons (removed when done)

Building works through the rows in chunks; after each chunk the memory map is flushed and
``progress.npz`` is replaced atomically, so an interrupted build (Ctrl-C, killed job) resumes where
it stopped and never recomputes a committed row. ``index.json`` is written atomically and last: a cache
is valid only when it exists and agrees with ``images.npy``, so a half-built cache can never be opened.

A file that cannot be read does not stop the build: its row stays zero and the file is listed with the
reason under ``failed`` (and is not ``in`` the opened cache).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cianet.config import MAX_IMAGE_SIZE
from cianet.data.io import DEFAULT_MAX_PIXELS, XrayReadError, load_xray, resize_gray, to_uint8
from cianet.data.layouts import open_index
from cianet.data.tables import scan_images
from cianet.errors import InputError, MissingPathError, UsageError
from cianet.negatives import HASH_SIZE
from cianet.utils.atomic import atomic_path, atomic_write_json
from cianet.utils.output_folders import LOCK, output_lock
from cianet.utils.progress import progress_enabled

FORMAT_VERSION = 1
IMAGES_FILE = "images.npy"
INDEX_FILE = "index.json"
PLAN_FILE = "plan.json"
PROGRESS_FILE = "progress.npz"

# Row states in progress.npz.
_PENDING, _DONE, _FAILED = 0, 1, 2

#: (row, path, size, max_pixels) -> (row, image (S, S) uint8 | None, (W, H) | None, failure reason | None)
_Task = tuple[int, str, int, float]
_Result = tuple[int, "np.ndarray | None", "tuple[int, int] | None", "str | None"]


# --------------------------------------------------------------------------------------------------
# Reading a built cache
# --------------------------------------------------------------------------------------------------
class ImageCache:
    """A built cache folder, opened read-only.

    Cheap to pickle (e.g. into DataLoader workers): the memory map is not pickled but reopened lazily
    in each process on first access.

    Attributes:
        cache_dir: the folder.
        size: side S of the cached images.
        names: names of the readable (cached) images, in row order.
        all_names: every row's name, failed ones included (row i of images.npy is ``all_names[i]``).
        original_sizes: name -> (W, H) of the source file, for the cached images.
        failed: name -> reason, for files that could not be read (their rows are zero).
        paths: name -> source path string as given at build time.
    """

    def __init__(self, cache_dir: str | os.PathLike, index: dict[str, Any]) -> None:
        self.cache_dir = Path(cache_dir)
        self.size: int = int(index["size"])
        self.all_names: list[str] = list(index["names"])
        self.failed: dict[str, str] = dict(index.get("failed", {}))
        sizes = index["original_sizes"]
        self.original_sizes: dict[str, tuple[int, int]] = {
            n: (int(s[0]), int(s[1])) for n, s in zip(self.all_names, sizes) if s is not None
        }
        self.paths: dict[str, str] = dict(zip(self.all_names, index.get("paths", [])))
        self._rows: dict[str, int] = {n: i for i, n in enumerate(self.all_names) if n not in self.failed}
        self.names: list[str] = [n for n in self.all_names if n in self._rows]
        self._array: np.ndarray | None = None

    @classmethod
    def open(cls, cache_dir: str | os.PathLike) -> ImageCache:
        """Open a built cache; raises FileNotFoundError/ValueError naming the folder when it is not valid."""
        cache_dir = Path(cache_dir)
        index = _read_index(cache_dir)
        if "names_sha256" in index and index["names_sha256"] != names_checksum(index.get("names", [])):
            # rows are matched to names by position only: an edited list would mislabel every image after it
            raise InputError(
                f"{cache_dir / INDEX_FILE}: its image names were changed after the cache was built "
                "(checksum mismatch); rebuild the cache with `cianet prepare --rebuild`"
            )
        cache = cls(cache_dir, index)
        arr = cache.array  # checks images.npy against the index
        expected = (len(cache.all_names), cache.size, cache.size)
        if arr.shape != expected or arr.dtype != np.uint8:
            raise InputError(
                f"{cache_dir / IMAGES_FILE}: array {arr.dtype} {arr.shape} does not match {INDEX_FILE} "
                f"(uint8 {expected}); rebuild the cache with `cianet prepare`"
            )
        return cache

    @property
    def array(self) -> np.ndarray:
        """The whole (N, S, S) uint8 memory map (row order = ``all_names``), opened on first use."""
        if self._array is None:
            path = self.cache_dir / IMAGES_FILE
            if not path.is_file():
                raise MissingPathError(f"{path}: image array missing; rebuild the cache with `cianet prepare`")
            try:
                self._array = np.load(path, mmap_mode="r")
            except (ValueError, OSError) as exc:
                raise InputError(f"{path}: unreadable image array ({exc})") from exc
        return self._array

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_array"] = None  # reopened lazily in the receiving process
        return state

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self._rows

    def row(self, name: str) -> int:
        """Row of ``name`` in :attr:`array`; KeyError (with the failure reason if it failed) otherwise."""
        try:
            return self._rows[name]
        except KeyError:
            if name in self.failed:
                raise KeyError(f"{name}: not cached, its file could not be read: {self.failed[name]}") from None
            raise KeyError(f"{name}: not in the image cache {self.cache_dir}") from None

    def get(self, name: str) -> np.ndarray:
        """The cached image of ``name``: a writable uint8 copy (S, S)."""
        return np.array(self.array[self.row(name)])

    def get_float(self, name: str) -> np.ndarray:
        """The cached image as float32 (S, S) in [0, 1] (uint8 / 255)."""
        return self.get(name).astype(np.float32) / 255.0

    def __repr__(self) -> str:
        return f"ImageCache({str(self.cache_dir)!r}, size={self.size}, images={len(self)}, failed={len(self.failed)})"


def names_checksum(names: Sequence[str]) -> str:
    """SHA-256 of the row order of a cache (``index.json`` keeps it to detect edited names)."""
    return hashlib.sha256("\n".join(map(str, names)).encode("utf-8")).hexdigest()


def _read_index(cache_dir: Path) -> dict[str, Any]:
    path = cache_dir / INDEX_FILE
    if not path.is_file():
        hint = (
            " (a build was interrupted: rerun `cianet prepare` to finish it)"
            if (cache_dir / PLAN_FILE).exists()
            else ""
        )
        raise MissingPathError(f"{cache_dir}: not a built image cache, {INDEX_FILE} missing{hint}")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable cache index ({exc})") from exc
    missing = [k for k in ("size", "names", "original_sizes") if k not in index]
    if missing or not isinstance(index.get("names"), list):
        raise InputError(f"{path}: not a cianet cache index (missing {', '.join(missing) or 'names list'})")
    if index.get("format", FORMAT_VERSION) != FORMAT_VERSION:
        raise InputError(f"{path}: cache format {index.get('format')} not supported (expected {FORMAT_VERSION})")
    if len(index["original_sizes"]) != len(index["names"]):
        raise InputError(f"{path}: {len(index['names'])} names but {len(index['original_sizes'])} original sizes")
    return index


# --------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------
def cache_image(
    path: str | os.PathLike, size: int, max_pixels: float = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, tuple[int, int]]:
    """What one cache row holds: ``to_uint8(resize_gray(load_xray(path), size))`` (S, S) and the (W, H) read."""
    img = load_xray(path, max_pixels=max_pixels)  # (H, W) float32
    h, w = img.shape
    return to_uint8(resize_gray(img, size)), (w, h)


def _work(task: _Task) -> _Result:
    """Process one row; never raises for a bad file (the reason is returned instead)."""
    row, path, size, max_pixels = task
    try:
        img, wh = cache_image(path, size, max_pixels)
    except XrayReadError as exc:
        return row, None, None, str(exc)
    except Exception as exc:  # noqa: BLE001 - one odd file must not end a many-hour build
        return row, None, None, f"{path}: unexpected {type(exc).__name__}: {exc}"
    return row, img, wh, None


def _ignore_sigint() -> None:
    # Ctrl-C goes to the whole process group; the parent handles it and shuts the pool down cleanly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Progress:
    """Per-row build state kept in progress.npz (state, original W/H, failure reasons)."""

    def __init__(self, n: int) -> None:
        self.state = np.zeros(n, dtype=np.int8)  # _PENDING/_DONE/_FAILED
        self.sizes = np.full((n, 2), -1, dtype=np.int64)  # (W, H); -1 where unknown
        self.reasons: dict[int, str] = {}

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                # The reasons travel as a JSON string (a plain unicode array: no pickle needed to load).
                np.savez(
                    fh,
                    state=self.state,
                    sizes=self.sizes,
                    reasons=np.array(json.dumps({str(k): v for k, v in self.reasons.items()})),
                )

    @classmethod
    def load(cls, path: Path, n: int) -> _Progress | None:
        """The saved state, or None when absent, unreadable or for another row count."""
        try:
            with np.load(path, allow_pickle=False) as z:
                state, sizes, reasons = z["state"], z["sizes"], json.loads(str(z["reasons"]))
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            return None
        if state.shape != (n,) or sizes.shape != (n, 2):
            return None
        p = cls(n)
        p.state[:] = state
        p.sizes[:] = sizes
        p.reasons = {int(k): str(v) for k, v in reasons.items()}
        return p


def _plan_matches(cache_dir: Path, names: list[str], size: int) -> bool:
    try:
        plan = json.loads((cache_dir / PLAN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return plan.get("format") == FORMAT_VERSION and plan.get("size") == size and plan.get("names") == names


def _index_matches(cache_dir: Path, names: list[str], size: int) -> bool:
    try:
        cache = ImageCache.open(cache_dir)
    except (OSError, ValueError):
        return False
    return cache.size == size and cache.all_names == names


def _open_rows(cache_dir: Path, n: int, size: int) -> np.ndarray | None:
    """images.npy opened read-write if it has the expected shape, else None."""
    try:
        arr = np.load(cache_dir / IMAGES_FILE, mmap_mode="r+")
    except (OSError, ValueError):
        return None
    if arr.shape != (n, size, size) or arr.dtype != np.uint8:
        return None
    return arr


def _cache_description(cache_dir: Path) -> str | None:
    """'a cianet cache of N images at SxS' (complete or unfinished) when the folder holds one, else None."""
    for fname, state in ((INDEX_FILE, "cache"), (PLAN_FILE, "unfinished cache build")):
        try:
            data = json.loads((cache_dir / fname).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("format"), int) and isinstance(data.get("names"), list):
            return f"a cianet {state} of {len(data['names'])} images at {data.get('size')}x{data.get('size')}"
    return None


def _check_replaceable(cache_dir: Path, names: list[str], size: int, rebuild: bool) -> None:
    """Refuse to build over anything but an empty folder, a cache build of this very list, or (with
    ``rebuild``) another cianet cache: a cache never deletes files it did not write."""
    own = {IMAGES_FILE, INDEX_FILE, PLAN_FILE, PROGRESS_FILE, LOCK}
    entries = [p.name for p in cache_dir.iterdir() if p.name != LOCK]
    if not entries:
        return
    foreign = [
        e
        for e in entries
        if e not in own
        and not (
            e.startswith(".")
            and e.endswith(".tmp")
            and e[1:].split(".", 1)[0] in {"images", "index", "plan", "progress"}
        )
    ]
    what = _cache_description(cache_dir)
    if foreign or what is None:
        shown = ", ".join(sorted(foreign or entries)[:3]) + (" ..." if len(foreign or entries) > 3 else "")
        raise InputError(
            f"{cache_dir}: not a cianet cache (it holds {shown}); choose a new or empty --cache "
            "folder (prepare never deletes files it did not write)"
        )
    if _plan_matches(cache_dir, names, size):
        return  # our own unfinished build of this list whose files are damaged: start it again
    if not rebuild:
        raise InputError(
            f"{cache_dir}: holds {what}, not the {len(names)} images at {size}x{size} asked for; "
            "pass --rebuild to replace it, or choose another --cache folder"
        )


def _start_fresh(cache_dir: Path, names: list[str], paths: list[str], size: int) -> tuple[np.ndarray, _Progress]:
    # Invalidate first, so that no old index/progress can ever be paired with the new array; the plan comes
    # before the array so that a build killed at any point leaves a folder recognised as a cianet cache.
    for fname in (INDEX_FILE, PROGRESS_FILE):
        (cache_dir / fname).unlink(missing_ok=True)
    atomic_write_json(
        cache_dir / PLAN_FILE, {"format": FORMAT_VERSION, "size": size, "names": names, "paths": paths}, indent=None
    )
    n = len(names)
    with atomic_path(cache_dir / IMAGES_FILE, clean_stale=True) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size))  # sparse zeros
        del arr
    progress = _Progress(n)
    progress.save(cache_dir / PROGRESS_FILE)
    rows = _open_rows(cache_dir, n, size)
    assert rows is not None
    return rows, progress


def _results(tasks: list[_Task], workers: int) -> Iterator[_Result]:
    """Results of ``tasks`` in order, computed in this process (workers <= 1) or a process pool."""
    if workers <= 1:
        for task in tasks:
            yield _work(task)
        return
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers, initializer=_ignore_sigint)
    try:
        # Small batches: IPC per image is tiny next to decoding, and an interrupt waits for few in-flight images.
        yield from pool.map(_work, tasks, chunksize=max(1, min(4, len(tasks) // (8 * workers))))
    finally:
        # On an interrupt: drop queued work, wait only for the few images being decoded right now.
        pool.shutdown(wait=True, cancel_futures=True)


def build_cache(
    names_and_paths: Sequence[tuple[str, str | os.PathLike]],
    size: int,
    cache_dir: str | os.PathLike,
    workers: int | None = None,
    progress: bool = True,
    chunk_size: int = 512,
    max_pixels: float = DEFAULT_MAX_PIXELS,
    on_chunk: Callable[[list[int]], None] | None = None,
    log: Callable[[str], None] | None = None,
    rebuild: bool = False,
) -> ImageCache:
    """Decode, resize (antialiased) and store every image once; resumes an interrupted build.

    Args:
        names_and_paths: ``(name, path)`` per image; row i of the cache is the i-th pair. Names must be unique.
        size: side S of the cached images (S x S uint8).
        cache_dir: output folder (created). A complete cache for the same names and size is reused as is;
            an unfinished build for the same names and size is resumed; another cianet cache is replaced only
            with ``rebuild``; a folder holding anything else is refused (InputError).
        workers: processes decoding in parallel (default ``os.cpu_count()``; <= 1 decodes in this process).
        progress: show a tqdm bar (only when stderr is a terminal).
        chunk_size: rows between commits (memory-map flush + atomic progress write).
        max_pixels: per-image decompression-bomb limit passed to :func:`cianet.data.io.load_xray`.
        on_chunk: called with the rows of each committed chunk (tests use it to simulate an interrupt).
        log: receives one-line status messages (resuming, rebuilding); silent by default.
        rebuild: start from scratch even if a complete or partial cache for the same list is there
            (the cache is keyed by names and size only, so use this when the image files changed).

    Returns:
        The opened :class:`ImageCache`. Unreadable files are listed in ``.failed``.
    """
    say = log or (lambda _msg: None)
    size = int(size)
    if size <= 0:
        raise InputError(f"cache image size must be positive, got {size}")
    if chunk_size <= 0:
        raise InputError(f"chunk_size must be positive, got {chunk_size}")
    names = [str(n) for n, _ in names_and_paths]
    paths = [os.fspath(p) for _, p in names_and_paths]
    if not names:
        raise InputError("no images to cache (empty image list)")
    if len(set(names)) != len(names):
        seen: set[str] = set()
        dups = sorted({n for n in names if n in seen or seen.add(n)})  # type: ignore[func-returns-value]
        raise InputError(
            f"image names must be unique; duplicated: {', '.join(dups[:5])}{', ...' if len(dups) > 5 else ''}"
        )
    cache_dir = Path(cache_dir)
    if cache_dir.exists() and not cache_dir.is_dir():
        raise MissingPathError(f"{cache_dir}: cache location exists and is not a folder")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with output_lock(cache_dir, "cianet prepare"):  # two builds into one folder would corrupt each other
        return _build_locked(
            names, paths, size, cache_dir, workers, progress, chunk_size, max_pixels, on_chunk, say, rebuild
        )


def _build_locked(
    names: list[str],
    paths: list[str],
    size: int,
    cache_dir: Path,
    workers: int | None,
    progress: bool,
    chunk_size: int,
    max_pixels: float,
    on_chunk: Callable[[list[int]], None] | None,
    say: Callable[[str], None],
    rebuild: bool,
) -> ImageCache:
    n = len(names)

    if not rebuild and _index_matches(cache_dir, names, size):
        say(f"{cache_dir}: cache already complete ({n} images at {size}x{size})")
        return ImageCache.open(cache_dir)

    rows, state = _resume_or_start(cache_dir, names, paths, size, rebuild, say)
    pending = np.flatnonzero(state.state == _PENDING).tolist()
    tasks: list[_Task] = [(r, paths[r], size, float(max_pixels)) for r in pending]
    n_workers = (os.cpu_count() or 1) if workers is None else int(workers)
    n_workers = max(1, min(n_workers, len(tasks)))
    _decode_into(cache_dir, rows, state, tasks, n_workers, size, progress, chunk_size, on_chunk)
    del rows  # close the writable map before publishing
    _publish(cache_dir, names, paths, size, state)
    return ImageCache.open(cache_dir)


def _resume_or_start(
    cache_dir: Path, names: list[str], paths: list[str], size: int, rebuild: bool, say: Callable[[str], None]
) -> tuple[np.ndarray, _Progress]:
    """The rows and build state of an interrupted build of this very list, else of a fresh one (after checking
    that what the folder holds may be replaced)."""
    n = len(names)
    rows = state = None
    if not rebuild and _plan_matches(cache_dir, names, size):
        rows = _open_rows(cache_dir, n, size)
        state = _Progress.load(cache_dir / PROGRESS_FILE, n)
    if rows is None or state is None:
        _check_replaceable(cache_dir, names, size, rebuild)
        if (cache_dir / INDEX_FILE).exists() or (cache_dir / PLAN_FILE).exists():
            say(
                f"{cache_dir}: replacing the cache there (--rebuild)"
                if rebuild
                else f"{cache_dir}: resuming an interrupted build from the start"
            )
        return _start_fresh(cache_dir, names, paths, size)
    say(f"{cache_dir}: resuming, {int((state.state != _PENDING).sum())} of {n} images already done")
    # Paths may have moved since the interrupted run; the plan keeps the newest ones.
    atomic_write_json(
        cache_dir / PLAN_FILE, {"format": FORMAT_VERSION, "size": size, "names": names, "paths": paths}, indent=None
    )
    return rows, state


def _decode_into(
    cache_dir: Path,
    rows: np.ndarray,
    state: _Progress,
    tasks: list[_Task],
    n_workers: int,
    size: int,
    progress: bool,
    chunk_size: int,
    on_chunk: Callable[[list[int]], None] | None,
) -> None:
    """Decode ``tasks`` into ``rows``, committing every ``chunk_size`` rows (and whatever is done when
    interrupted)."""
    n = len(state.state)

    def commit() -> None:
        rows.flush()  # pixels reach the file before the progress file claims them
        state.save(cache_dir / PROGRESS_FILE)

    bar = tqdm(
        total=n,
        initial=n - len(tasks),
        unit="img",
        desc=f"caching {size}x{size}",
        disable=not (progress and progress_enabled()),
        dynamic_ncols=True,
    )  # terminal or CIANET_PROGRESS
    chunk: list[int] = []
    results = _results(tasks, n_workers)
    try:
        for row, img, wh, reason in results:
            if img is None:
                state.state[row] = _FAILED
                state.reasons[row] = reason or "unknown error"
            else:
                rows[row] = img
                state.sizes[row] = wh
                state.state[row] = _DONE
            chunk.append(row)
            bar.update(1)
            if len(chunk) >= chunk_size:
                commit()
                done, chunk = chunk, []
                if on_chunk is not None:
                    on_chunk(done)
        if chunk:
            commit()
            if on_chunk is not None:
                on_chunk(chunk)
    except BaseException:
        commit()  # keep every finished row of the partial chunk too
        raise
    finally:
        results.close()  # stops the process pool now, not at garbage collection
        bar.close()


def _publish(cache_dir: Path, names: list[str], paths: list[str], size: int, state: _Progress) -> None:
    """Write index.json, which makes the cache valid, and remove the build's own files."""
    failed = {names[r]: state.reasons.get(r, "unknown error") for r in np.flatnonzero(state.state == _FAILED)}
    index = {
        "format": FORMAT_VERSION,
        "size": size,
        "count": len(names),
        "dtype": "uint8",
        "images": IMAGES_FILE,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "names": names,
        "names_sha256": names_checksum(names),
        "paths": paths,
        "original_sizes": [None if s != _DONE else [int(w), int(h)] for s, (w, h) in zip(state.state, state.sizes)],
        "failed": failed,
    }
    atomic_write_json(cache_dir / INDEX_FILE, index, indent=None)  # last: this makes the cache valid
    for fname in (PROGRESS_FILE, PLAN_FILE):
        (cache_dir / fname).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------
# Verifying
# --------------------------------------------------------------------------------------------------
def verify_cache(
    cache_dir: str | os.PathLike,
    sample: int = 32,
    tolerance: int = 1,
    seed: int = 0,
    max_pixels: float = DEFAULT_MAX_PIXELS,
    progress: bool = True,
) -> dict[str, Any]:
    """Check a cache folder: index present and consistent, every row written, a sample re-decoded.

    Args:
        sample: how many cached images to decode again from their source files and compare
            (``-1``: all of them; ``0``: none).
        tolerance: largest accepted absolute difference in uint8 levels.

    Returns:
        ``{"ok", "problems", "warnings", "count", "size", "failed", "checked", "max_abs_diff"}``; ``ok`` is
        False when ``problems`` is not empty. Source files that no longer exist give warnings, not problems.
    """
    cache_dir = Path(cache_dir)
    report: dict[str, Any] = {
        "ok": False,
        "problems": [],
        "warnings": [],
        "count": 0,
        "size": None,
        "failed": 0,
        "checked": 0,
        "max_abs_diff": None,
    }
    problems: list[str] = report["problems"]
    try:
        cache = ImageCache.open(cache_dir)
    except (OSError, ValueError) as exc:
        problems.append(str(exc))
        return report
    names = cache.all_names
    report.update(count=len(names), size=cache.size, failed=len(cache.failed))
    _check_index(cache, cache_dir, report)
    blank = _blank_rows(cache)
    if blank:
        problems.append(
            f"{len(blank)} rows never written (all zero): {', '.join(blank[:5])}{', ...' if len(blank) > 5 else ''}"
        )

    # Decode a sample again and compare.
    candidates = cache.names
    if sample < 0 or sample >= len(candidates):
        chosen = list(candidates)
    else:
        rng = np.random.default_rng(seed)
        chosen = [candidates[i] for i in sorted(rng.choice(len(candidates), size=sample, replace=False))]
    worst = _redecode(cache, chosen, tolerance, max_pixels, progress, report)
    report["max_abs_diff"] = worst if report["checked"] else None
    report["ok"] = not problems
    return report


def _check_index(cache: ImageCache, cache_dir: Path, report: dict[str, Any]) -> None:
    """The index's own consistency (problems) and leftover build files (warnings), into ``report``."""
    problems: list[str] = report["problems"]
    names = cache.all_names
    if len(set(names)) != len(names):
        problems.append(f"{cache_dir / INDEX_FILE}: {len(names) - len(set(names))} duplicate names")
    stray = sorted(set(cache.failed) - set(names))
    if stray:
        problems.append(f"{cache_dir / INDEX_FILE}: failed files not among the names: {', '.join(stray[:5])}")
    no_size = [n for n in cache.names if n not in cache.original_sizes]
    if no_size:
        problems.append(f"{cache_dir / INDEX_FILE}: no original size for {len(no_size)} cached images")
    for fname in (PLAN_FILE, PROGRESS_FILE):
        if (cache_dir / fname).exists():
            report["warnings"].append(f"{cache_dir / fname}: leftover build file (a later build was interrupted?)")


def _blank_rows(cache: ImageCache) -> list[str]:
    """Readable images whose row is all zero: an X-ray is never all black, an unwritten row is."""
    names = cache.all_names
    arr = cache.array
    blank: list[str] = []
    step = max(1, (64 << 20) // max(1, cache.size * cache.size))  # ~64 MB of rows at a time
    for start in range(0, len(names), step):
        block = np.asarray(arr[start : start + step]).reshape(-1, cache.size * cache.size)
        for i in np.flatnonzero(~block.any(axis=1)):
            name = names[start + int(i)]
            if name not in cache.failed:
                blank.append(name)
    return blank


def _redecode(
    cache: ImageCache, chosen: list[str], tolerance: int, max_pixels: float, progress: bool, report: dict[str, Any]
) -> int:
    """Decode ``chosen`` again from their source files and compare with the cache (problems, warnings and the
    ``checked`` count into ``report``); the largest difference in uint8 levels."""
    problems: list[str] = report["problems"]
    worst = 0
    for name in tqdm(chosen, desc="verifying", unit="img", disable=not (progress and progress_enabled())):
        src = cache.paths.get(name)
        if not src or not Path(src).is_file():
            report["warnings"].append(f"{name}: source file {src} not found, not re-decoded")
            continue
        try:
            fresh, wh = cache_image(src, cache.size, max_pixels)
        except XrayReadError as exc:
            problems.append(f"{name}: cached but its source no longer reads: {exc}")
            continue
        report["checked"] += 1
        diff = int(np.abs(fresh.astype(np.int16) - cache.get(name).astype(np.int16)).max())
        worst = max(worst, diff)
        if diff > tolerance:
            problems.append(
                f"{name} (row {cache.row(name)}): differs from a fresh decode of {src} by up to {diff} levels"
            )
        if tuple(wh) != cache.original_sizes.get(name):
            problems.append(f"{name}: original size {cache.original_sizes.get(name)} in the index, file is {wh}")
    return worst


def iter_failed_lines(failed: dict[str, str], limit: int = 5) -> Iterable[str]:
    """Up to ``limit`` "name: reason" lines for a warning, plus a count of the rest."""
    items = list(failed.items())
    for name, reason in items[:limit]:
        yield f"  {name}: {reason}"
    if len(items) > limit:
        yield f"  ... and {len(items) - limit} more (see 'failed' in {INDEX_FILE})"


def read_image(
    name: str, path: str | os.PathLike | None, cache: ImageCache | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """``(image float32 [0, 1], original (W, H))`` of one data-set image: the cache's row when ``cache`` holds
    ``name`` (at the cache's size), else the decoded file ``path`` (at its own size).

    The one "cache, else file" read of the package; XrayReadError names the image when neither has it.
    """
    if cache is not None and name in cache:
        w, h = cache.original_sizes[name]
        return cache.get_float(name), (int(w), int(h))
    if path is None:
        where = " nor in the image cache" if cache is not None else ""
        raise XrayReadError(f"image {name} was not found under the data root{where}")
    img = load_xray(path)
    return img, (img.shape[1], img.shape[0])


def images_of_root(
    data_root: str | os.PathLike,
    entry_csv: str | None = None,
    all_files: bool = False,
    log: Callable[[str], None] | None = None,
    dataset: str = "auto",
) -> list[tuple[str, Path]]:
    """``(name, path)`` of the images to cache under a data root: those of its entry CSV found on disk, or
    with ``all_files`` every PNG/JPEG/DICOM file below it (no CSV read)."""
    say = log or (lambda msg: None)
    root = Path(data_root)
    if all_files:
        if not root.is_dir():
            raise MissingPathError(f"data root {root} is not a folder")
        files, dups = scan_images(root)
        if not files:
            raise MissingPathError(f"{root}: no .png/.jpg/.jpeg/.dcm files below it")
        if dups:
            say(f"note: {dups} files share a name with another one under {root}; the first was kept")
        return sorted(files.items())
    index = open_index(root, dataset, entry_csv=entry_csv, images_required=True)  # `dataset`: its layout
    missing = [r.name for r in index.records if r.path is None]
    if missing:
        listed = index.entry_csv.name if index.entry_csv else "the index"
        say(
            f"note: {len(missing):,} of {len(index):,} images listed in {listed} have no file under {root}; "
            f"caching the {len(index) - len(missing):,} present"
        )
    return [(r.name, r.path) for r in index.records if r.path is not None]


def prepare_cache(
    data_root: str | os.PathLike,
    size: int,
    cache_dir: str | os.PathLike,
    *,
    entry_csv: str | None = None,
    all_files: bool = False,
    workers: int | None = None,
    chunk_size: int = 512,
    max_pixels: float = DEFAULT_MAX_PIXELS,
    rebuild: bool = False,
    verify: bool = False,
    verify_sample: int = 32,
    log: Callable[[str], None] | None = None,
    dataset: str = "auto",
    progress: bool = True,
) -> tuple[ImageCache, dict | None]:
    """``cianet prepare``: build (or resume) the cache of a data root, then verify it when asked.

    Returns the cache and the :func:`verify_cache` report (None without ``verify``).
    """

    if not HASH_SIZE <= size <= MAX_IMAGE_SIZE:  # the perceptual hash's side is the smallest anything reads
        raise UsageError(
            f"--image-size {size}: must be at least {HASH_SIZE} (the perceptual hash's side; a run needs a multiple "
            f"of 32) and at most {MAX_IMAGE_SIZE}"
        )
    if workers is not None and workers < 0:
        raise UsageError(f"--workers must be >= 0, got {workers}")
    pairs = images_of_root(data_root, entry_csv=entry_csv, all_files=all_files, log=log, dataset=dataset)
    cache = build_cache(
        pairs,
        size,
        cache_dir,
        workers=workers,
        chunk_size=chunk_size,
        max_pixels=max_pixels,
        rebuild=rebuild,
        log=log,
        progress=progress,
    )
    report = (
        verify_cache(cache.cache_dir, sample=verify_sample, max_pixels=max_pixels, progress=progress)
        if verify
        else None
    )
    return cache, report
