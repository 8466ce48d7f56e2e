"""Canonical chest: mean image, automatic lung crop, the ``cianet canonical`` command."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from cianet.data.canonical import (
    FALLBACK_CROP,
    crop_and_resize,
    find_lung_crop,
    mean_image,
    otsu_threshold,
    search_lung_box,
)


def _ellipse(shape, cx, cy, rx, ry):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] + 0.5
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0


def _synthetic_mean(s: int = 128) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A dark background, a bright body that leaves the top corners dark, two dark lungs; and the lungs' box."""
    img = np.full((s, s), 0.1)
    img[_ellipse(img.shape, 64, 80, 60, 78)] = 0.75  # body: the air at the top corners stays dark
    left = _ellipse(img.shape, 42, 58, 17, 32)
    right = _ellipse(img.shape, 87, 60, 16, 30)
    img[left | right] = 0.25
    ys, xs = np.nonzero(left | right)
    return img.astype(np.float32), (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_find_lung_crop_bounds_two_dark_ellipses():
    mean, (lx0, ly0, lx1, ly1) = _synthetic_mean()
    x0, y0, x1, y1 = find_lung_crop(mean, margin=0.04)
    m = 0.04 * 128
    # contains both lungs, with at most the margin plus smoothing slack around them
    assert x0 <= lx0 and y0 <= ly0 and x1 >= lx1 and y1 >= ly1
    assert lx0 - x0 <= m + 4 and ly0 - y0 <= m + 4 and x1 - lx1 <= m + 4 and y1 - ly1 <= m + 4
    tight = find_lung_crop(mean, margin=0.0)
    assert tight[2] - tight[0] < x1 - x0


def test_find_lung_crop_falls_back_with_warning(caplog):
    flat = np.full((64, 64), 0.5, np.float32)
    assert search_lung_box(flat) is None
    caplog.set_level(logging.WARNING)
    box = find_lung_crop(flat)
    fx0, fy0, fx1, fy1 = FALLBACK_CROP
    assert box == (round(fx0 * 64), round(fy0 * 64), round(fx1 * 64), round(fy1 * 64))
    assert any("central crop" in r.getMessage() for r in caplog.records)
    one_blob = np.full((64, 64), 0.8, np.float32)
    one_blob[_ellipse((64, 64), 32, 32, 20, 20)] = 0.2  # a single dark region is not two lungs
    assert search_lung_box(one_blob) is None


def test_mean_image_and_otsu():
    rng = np.random.default_rng(0)
    imgs = [rng.random((5, 6)).astype(np.float32) for _ in range(7)]
    np.testing.assert_allclose(mean_image(iter(imgs)), np.mean(np.stack(imgs).astype(np.float64), 0), rtol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        mean_image([np.zeros((4, 4)), np.zeros((4, 5))])
    with pytest.raises(ValueError, match="no images"):
        mean_image([])
    vals = np.concatenate([rng.normal(0.2, 0.03, 500), rng.normal(0.7, 0.03, 500)])
    t = otsu_threshold(vals)
    assert (vals[:500] < t).all() and (vals[500:] >= t).all() and 0.35 < t < 0.55  # mid-gap


def test_crop_and_resize():
    mean = np.zeros((32, 32), np.float32)
    mean[8:24, 4:28] = 1.0
    out = crop_and_resize(mean, (4, 8, 28, 24), 16)
    assert out.shape == (16, 16) and np.allclose(out, 1.0)
    with pytest.raises(ValueError, match="not a non-empty box"):
        crop_and_resize(mean, (10, 8, 5, 24), 16)


@pytest.mark.slow  # end to end through the CLI on full data
def test_canonical_command_on_real_sample(nih_sample_dir, tmp_path):
    from PIL import Image

    from cianet.cli import main

    out = tmp_path / "c" / "canonical.png"
    rc = main(
        [
            "canonical",
            "--data-root",
            str(nih_sample_dir),
            "--entry-csv",
            "Data_Entry_2017_v2020_subset.csv",
            "--n",
            "24",
            "--size",
            "128",
            "--seed",
            "1",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    meta = json.loads((tmp_path / "c" / "canonical.json").read_text())
    canon = np.asarray(Image.open(out))
    mean = np.asarray(Image.open(tmp_path / "c" / "canonical_mean.png"))
    assert canon.shape == (128, 128) and mean.shape == (128, 128)
    assert meta["n_used"] == len(meta["images"]) == 24 and meta["seed"] == 1 and meta["size"] == 128
    assert meta["crop_source"] == "auto"
    x0, y0, x1, y1 = meta["crop"]
    # a chest: the lungs sit around the centre and span a good part of the width
    assert 0.3 * 128 < (x0 + x1) / 2 < 0.7 * 128 and 0.45 * 128 < x1 - x0 < 0.95 * 128
    assert y0 < 0.4 * 128 < 0.6 * 128 < y1
    # the canonical is the crop of the mean: the lung fields (left/right of the middle) are darker than the middle
    mid = canon[32:96, 56:72].mean()
    assert canon[32:96, 16:48].mean() < mid and canon[32:96, 80:112].mean() < mid

    rc = main(
        [
            "canonical",
            "--data-root",
            str(nih_sample_dir),
            "--entry-csv",
            "Data_Entry_2017_v2020_subset.csv",
            "--n",
            "5",
            "--size",
            "64",
            "--out",
            str(out),
            "--crop",
            "8,4,56,50",
            "--overwrite",
        ]
    )
    meta = json.loads((tmp_path / "c" / "canonical.json").read_text())
    assert rc == 0 and meta["crop"] == [8, 4, 56, 50] and meta["crop_source"] == "user"
    assert (
        main(
            [
                "canonical",
                "--data-root",
                str(nih_sample_dir),
                "--entry-csv",
                "Data_Entry_2017_v2020_subset.csv",
                "--size",
                "64",
                "--out",
                str(out),
                "--crop",
                "8,4,80,50",
                "--overwrite",
            ]
        )
        == 2
    )


def test_build_canonical_on_phantom(tmp_path):
    synth = pytest.importorskip("cianet.phantom.generator")
    from cianet.data.canonical import build_canonical
    from cianet.data.nih import NIHIndex

    synth.generate_dataset(tmp_path / "ph", n_images=24, size=128, seed=0, progress=False, workers=1)
    index = NIHIndex.from_root(tmp_path / "ph")
    canon, crop, mean = build_canonical(index, n=8, size=128, seed=0)
    assert canon.shape == mean.shape == (128, 128) and canon.dtype == np.float32
    assert search_lung_box(mean) == crop  # found automatically, not the fallback
    x0, y0, x1, y1 = crop
    assert abs((x0 + x1) / 2 - 64) < 12 and x1 - x0 > 64 and y1 - y0 > 48
    again, crop2, _ = build_canonical(index, n=8, size=128, seed=0)
    assert crop2 == crop and np.array_equal(again, canon)  # seeded
