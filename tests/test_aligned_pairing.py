"""Pairing on aligned images (negatives.aligned_codes): codes of the warped images, an index and pairs file that
record their kind, and a clear error where the kinds differ."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import SIZE, tiny_config, write_alignment


@pytest.fixture(scope="module")
def aligns(tmp_path_factory):
    d = tmp_path_factory.mktemp("aligns")
    return write_alignment(d / "a.pt", tx=0.2, ty=-0.1), write_alignment(d / "b.pt", tx=-0.15, ty=0.05)


def _reference_warp(img: np.ndarray, params) -> np.ndarray:
    """aligned(p) = img(A p), bilinear, zeros outside, align_corners=False, written out in numpy (every output
    pixel at once: a pixel-by-pixel loop costs seconds for the test's 48 images)."""
    tx, ty, sx, sy, th = (float(v) for v in params)
    a = np.array([[sx * np.cos(th), -sy * np.sin(th), tx], [sx * np.sin(th), sy * np.cos(th), ty]])
    h, w = img.shape
    i, j = np.mgrid[0:h, 0:w]
    x, y = a @ np.stack([(2 * j.ravel() + 1) / w - 1, (2 * i.ravel() + 1) / h - 1, np.ones(h * w)])
    u, v = ((x + 1) * w - 1) / 2, ((y + 1) * h - 1) / 2  # source pixel coordinates (centres at integers)
    c0, r0 = np.floor(u).astype(int), np.floor(v).astype(int)
    fu, fv = u - c0, v - r0

    def pix(r, c):
        inside = (0 <= r) & (r < h) & (0 <= c) & (c < w)
        return np.where(inside, img[np.clip(r, 0, h - 1), np.clip(c, 0, w - 1)], 0.0)

    out = (
        (1 - fu) * (1 - fv) * pix(r0, c0)
        + fu * (1 - fv) * pix(r0, c0 + 1)
        + (1 - fu) * fv * pix(r0 + 1, c0)
        + fu * fv * pix(r0 + 1, c0 + 1)
    )
    return out.reshape(h, w)


def _reference_code(img: np.ndarray) -> np.ndarray:
    """16 x 16 block means of a 64 x 64 image, flattened, unit norm."""
    b = img.shape[0] // 16
    code = np.array([[img[i * b : (i + 1) * b, j * b : (j + 1) * b].mean() for j in range(16)] for i in range(16)])
    code = code.ravel()
    return code / np.linalg.norm(code)


def _run(tmp_path, root, align, **over):
    from cianet.run.loaders import image_source
    from cianet.run.protocol import build_run_data

    cfg = tiny_config(tmp_path / "run", root, align__checkpoint=str(align) if align else None, **over)
    data = build_run_data(cfg)
    return cfg, data, image_source(cfg, data.index)


@pytest.mark.slow
def test_aligned_codes_are_hash_codes_of_the_warped_images(tiny_root, aligns, tmp_path):
    from cianet.run.checkpoints import load_alignment
    from cianet.run.pairing import hash_codes_for, negative_pool, pair_negatives

    cfg, data, source = _run(tmp_path, tiny_root, aligns[0])
    assert cfg.negatives.aligned_codes  # the recipe's default
    net = load_alignment(aligns[0]).net
    names = list(data.train)[:12]
    got = hash_codes_for(names, source, align_net=net)
    ref = {}
    for name in dict.fromkeys(names + list(data.index.names())):
        img = source.load_uint8(name).astype(np.float64) / 255.0
        params = net(torch.from_numpy(img).float()[None, None])["params"][0].double().numpy()
        ref[name] = _reference_code(_reference_warp(img, params))
    np.testing.assert_allclose(got, np.stack([ref[n] for n in names]), atol=2e-5)
    assert not np.allclose(got, hash_codes_for(names, source), atol=1e-3)  # the warp moved the codes

    # the run's "sim" pairs are the nearest aligned codes (not the image itself, not its patient)
    pairs = pair_negatives(cfg, data, source).train(0)
    pool = negative_pool(data.index, exclude=set(data.held_out))
    patient = {r.name: r.patient_id for r in data.index.records}
    for name in data.train:
        allowed = [p for p in pool if p != name and patient[p] != patient[name]]
        best = max(float(ref[name] @ ref[p]) for p in allowed)
        assert pairs[name] in allowed
        assert float(ref[name] @ ref[pairs[name]]) == pytest.approx(best, abs=1e-5)


def test_unaligned_run_and_runs_without_alignment_hash_raw_images(tiny_root, tmp_path):
    from cianet.run.pairing import code_kind, run_code_aligner

    cfg, _, _ = _run(tmp_path, tiny_root, None)
    assert run_code_aligner(cfg) is None and code_kind() == {"aligned": False}


@pytest.mark.slow
def test_hash_index_records_its_kind_and_a_mismatch_is_an_error(tiny_root, aligns, tmp_path):
    from cianet.cli import main
    from cianet.errors import InputError
    from cianet.negatives import HashIndex
    from cianet.run.checkpoints import load_alignment
    from cianet.run.pairing import hash_codes_for, pair_negatives

    raw, aligned_a = tmp_path / "raw.npz", tmp_path / "aligned_a.npz"
    assert main(["hash", "--data-root", str(tiny_root), "--out", str(raw), "--no-progress"]) == 0
    assert (
        main(
            [
                "hash",
                "--data-root",
                str(tiny_root),
                "--out",
                str(aligned_a),
                "--align",
                str(aligns[0]),
                "--image-size",
                str(SIZE),
                "--no-progress",
            ]
        )
        == 0
    )
    assert HashIndex.load(raw).meta["aligned"] is False
    meta = HashIndex.load(aligned_a).meta
    assert meta["aligned"] is True and meta["image_size"] == SIZE

    # matching kinds: the index's codes are exactly those the run would compute
    cfg, data, source = _run(tmp_path, tiny_root, aligns[0], negatives__hash_index=str(aligned_a))
    pairing = pair_negatives(cfg, data, source)
    index = HashIndex.load(aligned_a)
    rows = [index.index_of(n) for n in index.names]
    np.testing.assert_allclose(
        index.codes[rows], hash_codes_for(index.names, source, align_net=load_alignment(aligns[0]).net), atol=1e-6
    )
    assert pairing.train(0)

    cases = [  # (alignment of the run, aligned_codes, index, words of the message)
        (aligns[0], True, raw, ["unaligned images", "cianet hash --align", str(aligns[0])]),
        (aligns[0], False, aligned_a, ["aligned at 64 px", "without --align"]),
        (None, True, aligned_a, ["aligned at 64 px", "codes of unaligned images"]),
        (aligns[1], True, aligned_a, ["with weights", "cianet hash --align", str(aligns[1])]),
    ]
    for k, (align, want_aligned, path, words) in enumerate(cases):
        cfg, data, source = _run(
            tmp_path / f"case{k}",
            tiny_root,
            align,
            negatives__hash_index=str(path),
            negatives__aligned_codes=want_aligned,
        )
        with pytest.raises(InputError) as err:
            pair_negatives(cfg, data, source)
        msg = str(err.value)
        assert msg.startswith(f"hash index {path} (--hash-index)")
        for w in words:
            assert w in msg, (w, msg)


@pytest.mark.slow
def test_pairs_file_made_with_other_codes_is_refused(tiny_root, aligns, tmp_path):
    import json

    from cianet.errors import InputError
    from cianet.run.pairing import PAIRS_FILE, pair_negatives, save_pairs

    run = tmp_path / "run"
    run.mkdir()
    cfg, data, source = _run(tmp_path, tiny_root, aligns[0], negatives__aligned_codes=False)
    save_pairs(pair_negatives(cfg, data, source), run)
    assert json.loads((run / PAIRS_FILE).read_text())["codes"] == {"aligned": False}
    cfg, data, source = _run(tmp_path, tiny_root, aligns[0])  # the same run, now with aligned codes
    with pytest.raises(InputError, match="pairs.json: pairs were made with hash codes .*delete it"):
        pair_negatives(cfg, data, source)
    (run / PAIRS_FILE).unlink()
    pairing = pair_negatives(cfg, data, source)
    save_pairs(pairing, run)
    assert json.loads((run / PAIRS_FILE).read_text())["codes"]["aligned"] is True
    again = pair_negatives(cfg, data, source)
    assert again.sampler is None and again.train(0) == pairing.train(0)  # reused, nothing to save


def test_hash_align_needs_an_image_size_without_cache(tiny_root, aligns, tmp_path, capsys):
    from cianet.cli import main

    assert (
        main(
            [
                "hash",
                "--data-root",
                str(tiny_root),
                "--out",
                str(tmp_path / "x.npz"),
                "--align",
                str(aligns[0]),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "--image-size" in capsys.readouterr().err
