"""cianet.data.cache and `cianet prepare`: content, resume after an interrupt, failures, verify, pickling."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cianet.data.cache as cache_mod
from cianet.cli import main as cli_main
from cianet.data.cache import ImageCache, build_cache, verify_cache
from cianet.data.io import load_xray, resize_gray
from cianet.errors import InputError

SIZE = 32
N_GOOD = 40


@pytest.fixture()
def image_set(tmp_path: Path) -> list[tuple[str, Path]]:
    """40 smooth random PNGs of 64-128 px (some non-square, some 16-bit) plus one unreadable file."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    pairs = []
    for i in range(N_GOOD):
        h, w = (int(v) for v in rng.integers(64, 129, size=2))
        base = rng.random((h // 8 + 2, w // 8 + 2))
        img = np.asarray(Image.fromarray(base.astype(np.float32)).resize((w, h), Image.Resampling.BICUBIC))
        img = np.clip(img + rng.normal(0, 0.05, size=(h, w)), 0, 1)
        name = f"{i:08d}_000.png"
        if i % 5 == 0:
            Image.fromarray((img * 65535).astype(np.uint16)).save(folder / name)
        else:
            Image.fromarray((img * 255).astype(np.uint8)).save(folder / name)
        pairs.append((name, folder / name))
    bad = folder / "99999999_000.png"
    bad.write_text("not a PNG")
    pairs.insert(7, (bad.name, bad))  # in the middle, not at the end
    return pairs


def reference_row(path: Path) -> np.ndarray:
    """Slow reference: float64 resize result of load_xray, rounded by hand."""
    ref = resize_gray(load_xray(path), SIZE).astype(np.float64)
    return np.array([[int(np.floor(min(max(v, 0.0), 1.0) * 255.0 + 0.5)) for v in row] for row in ref])


def test_cache_content_matches_fresh_decode(image_set, tmp_path):
    cache = build_cache(image_set, SIZE, tmp_path / "c", workers=1, progress=False, chunk_size=8)
    assert isinstance(cache, ImageCache) and cache.size == SIZE
    assert len(cache) == N_GOOD and cache.names == [n for n, _ in image_set if not n.startswith("9999")]
    for name, path in image_set:
        if name.startswith("9999"):
            continue
        row = cache.get(name)
        assert row.dtype == np.uint8 and row.shape == (SIZE, SIZE)
        assert np.abs(row.astype(int) - reference_row(path)).max() <= 1
        with Image.open(path) as im:
            assert cache.original_sizes[name] == im.size
        np.testing.assert_allclose(cache.get_float(name), row / 255.0, atol=1e-7)
    # The array on disk is a plain .npy, memory-mapped.
    arr = np.load(tmp_path / "c" / "images.npy", mmap_mode="r")
    assert isinstance(arr, np.memmap) and arr.shape == (N_GOOD + 1, SIZE, SIZE)


def test_unreadable_file_is_listed_not_dropped(image_set, tmp_path):
    cache = build_cache(image_set, SIZE, tmp_path / "c", workers=1, progress=False)
    bad = "99999999_000.png"
    assert bad not in cache and bad in cache.all_names
    assert "not an image" in cache.failed[bad] and bad in cache.failed[bad]
    with pytest.raises(KeyError, match="could not be read"):
        cache.get(bad)
    index = json.loads((tmp_path / "c" / "index.json").read_text())
    assert list(index["failed"]) == [bad]
    assert index["original_sizes"][index["names"].index(bad)] is None


def test_parallel_build_equals_serial(image_set, tmp_path):
    serial = build_cache(image_set, SIZE, tmp_path / "s", workers=1, progress=False)
    parallel = build_cache(image_set, SIZE, tmp_path / "p", workers=2, progress=False, chunk_size=16)
    np.testing.assert_array_equal(np.asarray(serial.array), np.asarray(parallel.array))
    assert parallel.failed == serial.failed and parallel.original_sizes == serial.original_sizes


class _Stop(KeyboardInterrupt):
    pass


def test_resume_after_interrupt_recomputes_nothing(image_set, tmp_path, monkeypatch):
    reference = build_cache(image_set, SIZE, tmp_path / "ref", workers=1, progress=False)
    out = tmp_path / "c"
    committed: list[list[int]] = []

    def stop_after_first_chunk(rows: list[int]) -> None:
        committed.append(rows)
        raise _Stop()

    with pytest.raises(KeyboardInterrupt):
        build_cache(image_set, SIZE, out, workers=1, progress=False, chunk_size=8, on_chunk=stop_after_first_chunk)
    assert committed == [list(range(8))]
    # Interrupted: no index, so the folder is not a valid cache.
    assert not (out / "index.json").exists()
    with pytest.raises(FileNotFoundError, match="index.json missing.*interrupted"):
        ImageCache.open(out)
    assert not verify_cache(out)["ok"]

    # Second interrupt in the middle of a chunk (during the 5th decode): the 4 finished rows are kept too.
    calls: list[str] = []
    interrupt_at = [5]  # the call that raises; set to 0 (never) afterwards
    real_load = cache_mod.load_xray

    def counting_load(path, *args, **kwargs):
        calls.append(Path(path).name)
        if len(calls) == interrupt_at[0]:
            raise KeyboardInterrupt
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(cache_mod, "load_xray", counting_load)
    with pytest.raises(KeyboardInterrupt):
        build_cache(image_set, SIZE, out, workers=1, progress=False, chunk_size=8)
    first_eight = {n for n, _ in image_set[:8]}
    assert not first_eight & set(calls)  # committed rows were not decoded again
    assert not (out / "index.json").exists()

    calls.clear()
    interrupt_at[0] = 0
    cache = build_cache(image_set, SIZE, out, workers=1, progress=False, chunk_size=8)
    names = [n for n, _ in image_set]
    assert calls == names[12:]  # rows 0-7 (first run) and 8-11 (second run) kept
    np.testing.assert_array_equal(np.asarray(cache.array), np.asarray(reference.array))
    assert cache.failed == reference.failed and cache.original_sizes == reference.original_sizes
    assert not (out / "progress.npz").exists() and not (out / "plan.json").exists()

    # A complete cache for the same list and size is reused without decoding anything.
    calls.clear()
    build_cache(image_set, SIZE, out, workers=1, progress=False)
    assert calls == []
    again = build_cache(image_set, SIZE, out, workers=1, progress=False, rebuild=True)
    assert calls == names  # rebuild=True decodes everything again
    np.testing.assert_array_equal(np.asarray(again.array), np.asarray(reference.array))


def test_changed_size_rebuilds(image_set, tmp_path):
    out = tmp_path / "c"
    build_cache(image_set[:10], SIZE, out, workers=1, progress=False)
    before = (out / "images.npy").read_bytes()
    # Another size (or image list) is refused without rebuild=True (--rebuild), and the cache is kept as it was.
    with pytest.raises(InputError, match=f"holds a cianet cache of 10 images at {SIZE}x{SIZE}.*--rebuild"):
        build_cache(image_set[:10], 16, out, workers=1, progress=False)
    with pytest.raises(InputError, match="--rebuild"):
        build_cache(image_set[:9], SIZE, out, workers=1, progress=False)
    assert (out / "images.npy").read_bytes() == before and (out / "index.json").exists()
    cache = build_cache(image_set[:10], 16, out, workers=1, progress=False, rebuild=True)
    assert cache.size == 16 and cache.array.shape == (10, 16, 16)
    name, path = image_set[0]
    ref = resize_gray(load_xray(path), 16)
    assert np.abs(cache.get(name).astype(int) - np.rint(ref * 255)).max() <= 1


def test_duplicate_names_rejected(image_set, tmp_path):
    with pytest.raises(ValueError, match="unique.*00000000_000.png"):
        build_cache(image_set[:3] + image_set[:1], SIZE, tmp_path / "c", workers=1, progress=False)


def test_pickle_is_small_and_reopens(image_set, tmp_path):
    cache = build_cache(image_set, SIZE, tmp_path / "c", workers=1, progress=False)
    name = cache.names[3]
    expected = cache.get(name)  # opens the memory map in this process
    blob = pickle.dumps(cache)
    assert len(blob) < 20_000  # names and sizes only, not the (41, 32, 32) pixels
    clone = pickle.loads(blob)
    assert clone._array is None
    np.testing.assert_array_equal(clone.get(name), expected)
    assert name in clone and clone.failed == cache.failed


def test_verify_detects_corruption_and_missing_index(image_set, tmp_path):
    out = tmp_path / "c"
    cache = build_cache(image_set, SIZE, out, workers=1, progress=False)
    good = verify_cache(out, sample=-1, progress=False)
    assert good["ok"] and good["problems"] == [] and good["checked"] == N_GOOD and good["max_abs_diff"] <= 1

    victim, blank = cache.names[5], cache.names[11]
    arr = np.load(out / "images.npy", mmap_mode="r+")
    arr[cache.row(victim)] = 255 - arr[cache.row(victim)]
    arr[cache.row(blank)] = 0
    arr.flush()
    del arr
    bad = verify_cache(out, sample=-1, progress=False)
    assert not bad["ok"]
    text = "\n".join(bad["problems"])
    assert f"{victim} (row {cache.row(victim)}): differs" in text
    assert "never written" in text and blank in text

    (out / "index.json").unlink()
    gone = verify_cache(out, progress=False)
    assert not gone["ok"] and "index.json missing" in gone["problems"][0]


def test_verify_detects_shape_mismatch_and_duplicates(image_set, tmp_path):
    out = tmp_path / "c"
    build_cache(image_set[:6], SIZE, out, workers=1, progress=False)
    index = json.loads((out / "index.json").read_text())
    index["names"][1] = index["names"][0]
    (out / "index.json").write_text(json.dumps(index))
    rep = verify_cache(out, sample=0, progress=False)  # the names' checksum no longer matches
    assert not rep["ok"] and "names were changed" in rep["problems"][0]
    del index["names_sha256"]  # as an index written before the checksum existed
    (out / "index.json").write_text(json.dumps(index))
    rep = verify_cache(out, sample=0, progress=False)
    assert not rep["ok"] and any("duplicate" in p for p in rep["problems"])
    np.save(out / "images.npy", np.zeros((5, SIZE, SIZE), np.uint8))
    rep = verify_cache(out, sample=0, progress=False)
    assert not rep["ok"] and "does not match index.json" in rep["problems"][0]


def _write_entry_csv(root: Path, names: list[str]) -> None:
    lines = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position"]
    lines += [f"{n},No Finding,0,{int(n[:8])},50,M,PA" for n in names]
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")


def test_cli_prepare_and_verify(image_set, tmp_path, capsys):
    root = tmp_path  # images/ is below it
    names = [n for n, _ in image_set] + ["12345678_000.png"]  # one listed image has no file
    _write_entry_csv(root, names)
    out = tmp_path / "cache"
    rc = cli_main(
        [
            "prepare",
            "--data-root",
            str(root),
            "--size",
            str(SIZE),
            "--cache",
            str(out),
            "--workers",
            "1",
            "--verify",
            "--verify-sample",
            "5",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0
    assert "1 unreadable files" in captured.err and "99999999_000.png" in captured.err
    assert "1 of 42 images" in captured.err  # the missing one is reported, not cached
    assert "verify OK" in captured.out
    cache = ImageCache.open(out)
    assert len(cache) == N_GOOD and "12345678_000.png" not in cache.all_names

    # Verify only (no data root) fails after a row is damaged.
    arr = np.load(out / "images.npy", mmap_mode="r+")
    arr[cache.row(cache.names[0])] ^= 0xFF
    arr.flush()
    del arr
    rc = cli_main(["prepare", "--cache", str(out), "--verify", "--verify-sample", "-1"])
    captured = capsys.readouterr()
    assert rc == 1 and "problem:" in captured.err and cache.names[0] in captured.err

    assert cli_main(["prepare", "--cache", str(tmp_path / "nothing"), "--data-root", str(root)]) == 2
    assert "--size is required" in capsys.readouterr().err


def test_cli_all_files_mode(image_set, tmp_path, capsys):
    out = tmp_path / "cache"
    rc = cli_main(
        [
            "prepare",
            "--data-root",
            str(tmp_path / "images"),
            "--all-files",
            "--size",
            "16",
            "--cache",
            str(out),
            "--workers",
            "1",
        ]
    )
    assert rc == 0
    cache = ImageCache.open(out)
    assert sorted(cache.all_names) == sorted(n for n, _ in image_set) and len(cache.failed) == 1
