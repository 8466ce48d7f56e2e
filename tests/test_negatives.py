"""cianet.negatives: perceptual hash, nearest-code queries against a brute-force loop, sampler strategies."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cianet.negatives import (
    HashIndex,
    NegativeSampler,
    area_resize,
    build_hash_index,
    hash_codes,
    query_naive,
)


def brute_nearest(index_codes, names, patients, q, skip_name=None, skip_patient=None):
    """Pure-Python cosine loop (float64, norms computed by hand), first maximum wins."""
    best, best_sim = -1, -np.inf
    qn = sum(v * v for v in q) ** 0.5
    for j, code in enumerate(index_codes):
        if names[j] == skip_name or (skip_patient is not None and patients[j] == skip_patient):
            continue
        cn = sum(v * v for v in code) ** 0.5
        sim = sum(a * b for a, b in zip(code, q)) / (cn * qn)
        if sim > best_sim:
            best, best_sim = j, sim
    return best, best_sim


def random_index(rng, m=300, d=256, n_patients=60):
    codes = rng.random((m, d)) ** 3  # non-negative like images, with spread
    names = [f"neg_{i:04d}.png" for i in range(m)]
    patients = [f"{int(p):08d}" for p in rng.integers(0, n_patients, m)]
    return HashIndex(codes, names, patients)


# ---------------------------------------------------------------------------------------------- codes
def test_hash_is_block_mean_for_divisible_size():
    rng = np.random.default_rng(0)
    img = rng.random((64, 48)).astype(np.float32)
    code = hash_codes(img[None])[0]
    blocks = np.zeros((16, 16))
    for i in range(16):
        for j in range(16):
            blocks[i, j] = img[4 * i : 4 * i + 4, 3 * j : 3 * j + 3].astype(np.float64).mean()
    expected = blocks.flatten() / np.linalg.norm(blocks)
    np.testing.assert_allclose(code, expected, rtol=1e-5)
    assert code.dtype == np.float32 and np.linalg.norm(code) == pytest.approx(1.0, rel=1e-6)


def test_area_resize_non_divisible_is_exact_area_average():
    rng = np.random.default_rng(1)
    img = rng.random((5, 7))
    out = area_resize(img, 3)
    # Reference: upsample by 3 (each pixel -> 3x3 identical sub-pixels; 15 x 21 divisible by 3), block mean.
    up = np.kron(img, np.ones((3, 3)))
    ref = up.reshape(3, 5, 3, 7).mean(axis=(1, 3))
    np.testing.assert_allclose(out, ref, rtol=1e-6)


def test_hash_uint8_centered_and_constant():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (2, 32, 32), dtype=np.uint8)
    np.testing.assert_allclose(hash_codes(img), hash_codes(img.astype(np.float32) / 255), rtol=1e-6)
    c = hash_codes(img, center=True)
    assert np.abs(c.sum(axis=1)).max() < 1e-5  # centered: zero mean
    flat = hash_codes(np.full((1, 32, 32), 0.3), center=True)
    assert not flat.any()  # constant image: zero code, no NaN


# ---------------------------------------------------------------------------------------------- queries
def test_query_matches_brute_force_loop_with_exclusions():
    rng = np.random.default_rng(3)
    index = random_index(rng, m=120)
    queries = rng.random((40, 256)) ** 3
    # Half the queries are index members (must never get themselves), with their patients.
    q_names = [index.names[i] if k % 2 == 0 else f"pos_{k}.png" for k, i in enumerate(rng.integers(0, 120, 40))]
    q_pats = [index.patients[index.index_of(n)] if n.startswith("neg") else f"{k:08d}" for k, n in enumerate(q_names)]
    for k, n in enumerate(q_names):
        if n.startswith("neg"):
            queries[k] = index.codes[index.index_of(n)] + rng.normal(0, 1e-3, 256)  # self would be nearest
    for excl_pat in (None, q_pats):
        got = index.query(queries, exclude_names=q_names, exclude_patients=excl_pat, chunk=7)
        naive = query_naive(index, queries, exclude_names=q_names, exclude_patients=excl_pat)
        for k in range(40):
            ref, ref_sim = brute_nearest(
                index.codes.astype(float).tolist(),
                index.names,
                index.patients,
                queries[k].tolist(),
                q_names[k],
                excl_pat[k] if excl_pat else None,
            )
            assert got[k] == ref and naive[k] == ref
            assert index.names[got[k]] != q_names[k]
            if excl_pat is not None:
                assert index.patients[got[k]] != q_pats[k]


def test_query_k_neighbours_sorted_and_all_excluded():
    rng = np.random.default_rng(4)
    index = random_index(rng, m=50)
    q = rng.random((5, 256))
    top = index.query(q, k=4)
    assert top.shape == (5, 4)
    sims = (index.codes @ (q / np.linalg.norm(q, axis=1, keepdims=True)).T).T
    for k in range(5):
        order = np.argsort(-sims[k], kind="stable")[:4]
        np.testing.assert_array_equal(top[k], order)
    # A one-patient index with the query's patient excluded leaves nothing: -1.
    solo = HashIndex(rng.random((3, 256)), ["a", "b", "c"], ["p", "p", "p"])
    assert solo.query(rng.random((2, 256)), exclude_patients=["p", "q"]).tolist()[0] == -1
    assert solo.query(rng.random((2, 256)), exclude_patients=["p", "q"]).tolist()[1] >= 0


def test_query_shape_errors():
    index = random_index(np.random.default_rng(5), m=10)
    with pytest.raises(ValueError, match=r"\(Q, 256\)"):
        index.query(np.zeros((3, 255)))
    with pytest.raises(ValueError, match="exclude_names"):
        index.query(np.zeros((3, 256)), exclude_names=["a"])


# ---------------------------------------------------------------------------------------------- persistence
def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(6)
    index = random_index(rng, m=30)
    index.meta = {"size": 16, "center": False}
    path = tmp_path / "sub" / "hash.npz"
    index.save(path)
    back = HashIndex.load(path)
    np.testing.assert_array_equal(back.codes, index.codes)
    assert back.names == index.names and back.patients == index.patients and back.meta == index.meta
    assert back.fingerprint() == index.fingerprint()
    assert not list(path.parent.glob(".*tmp"))  # no temp file left behind


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        HashIndex.load(tmp_path / "nope.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip file")
    with pytest.raises(ValueError, match="junk.npz: not a hash index"):
        HashIndex.load(junk)
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.zeros(3))
    with pytest.raises(ValueError, match="other.npz: not a cianet hash index"):
        HashIndex.load(other)
    bad = tmp_path / "bad.npz"
    np.savez(
        bad, format=np.array("cianet-hash-index-v1"), codes=np.zeros(5), names=np.array(["a"]), patients=np.array(["p"])
    )
    with pytest.raises(ValueError, match="bad.npz: hash index codes have wrong shape"):
        HashIndex.load(bad)
    mism = tmp_path / "mism.npz"
    np.savez(
        mism,
        format=np.array("cianet-hash-index-v1"),
        codes=np.zeros((2, 4)),
        names=np.array(["a"]),
        patients=np.array(["p", "q"]),
    )
    with pytest.raises(ValueError, match="mism.npz: hash index has 2 codes"):
        HashIndex.load(mism)


def test_build_hash_index_reports_unreadable(tmp_path):
    rng = np.random.default_rng(7)
    images = {f"n{i}": rng.random((32, 32)).astype(np.float32) for i in range(6)}

    def load(name):
        if name == "n3":
            raise ValueError("n3.png: truncated")
        return images[name]

    errors = []
    index = build_hash_index(
        list(images),
        [f"p{i}" for i in range(6)],
        load,
        workers=2,
        progress=False,
        on_error=lambda n, e: errors.append(n),
    )
    assert errors == ["n3"] and index.names == ["n0", "n1", "n2", "n4", "n5"]
    np.testing.assert_allclose(index.codes[3], hash_codes(images["n4"][None])[0], rtol=1e-6)
    with pytest.raises(ValueError, match="truncated"):
        build_hash_index(list(images), list(images), load, progress=False)


# ---------------------------------------------------------------------------------------------- sampler
def test_sampler_sim_random_canonical(tmp_path):
    rng = np.random.default_rng(8)
    index = random_index(rng, m=80, n_patients=10)
    names = [index.names[0], "pos_a.png", "pos_b.png"]
    patients = [index.patients[0], index.patients[5], "99999999"]
    codes = np.stack([index.codes[0], rng.random(256), rng.random(256)])

    sim = NegativeSampler("sim", index, exclude_same_patient=True)
    got = sim.pair(names, codes, patients)
    for k, neg in enumerate(got):
        ref, _ = brute_nearest(
            index.codes.astype(float).tolist(), index.names, index.patients, codes[k].tolist(), names[k], patients[k]
        )
        assert neg == index.names[ref] and neg != names[k]
        assert index.patients[index.index_of(neg)] != patients[k]
    # Cached: later calls need no codes; save / load round trip into a fresh sampler.
    assert sim.pair(names) == got
    sim.save_pairs(tmp_path / "pairs.json")
    fresh = NegativeSampler("sim", index)
    assert fresh.load_pairs(tmp_path / "pairs.json") == 3
    assert fresh.pair(names) == got
    with pytest.raises(ValueError, match="needs hash codes"):
        fresh.pair(["unseen.png"])
    other = NegativeSampler("sim", random_index(np.random.default_rng(9), m=80))
    with pytest.raises(ValueError, match="different hash index"):
        other.load_pairs(tmp_path / "pairs.json")
    (tmp_path / "x.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="not a cianet negative pairs file"):
        fresh.load_pairs(tmp_path / "x.json")

    rnd = NegativeSampler("random", index, seed=3)
    many = [f"img_{i}.png" for i in range(200)] + [index.names[1]]
    pats = [index.patients[i % 80] for i in range(200)] + [index.patients[1]]
    e0 = rnd.pair(many, patients=pats, epoch=0)
    assert e0 == NegativeSampler("random", index, seed=3).pair(many, patients=pats, epoch=0)  # deterministic
    assert e0[::-1] == rnd.pair(many[::-1], patients=pats[::-1], epoch=0)  # order-independent (resumable)
    assert e0 != rnd.pair(many, patients=pats, epoch=1)  # fresh draw per epoch
    assert e0 != NegativeSampler("random", index, seed=4).pair(many, patients=pats, epoch=0)
    for name, pat, neg in zip(many, pats, e0):
        assert neg != name and index.patients[index.index_of(neg)] != pat
    assert len(set(e0)) > 40  # spread over the pool

    assert NegativeSampler("canonical").pair(names) == [None, None, None]
    with pytest.raises(ValueError, match="strategy"):
        NegativeSampler("nearest", index)
    with pytest.raises(ValueError, match="needs a hash index"):
        NegativeSampler("sim")


def test_pair_all_equals_pair():
    rng = np.random.default_rng(10)
    index = random_index(rng, m=60)
    names = [f"q{i}" for i in range(25)]
    codes = rng.random((25, 256))
    pats = [f"x{i}" for i in range(25)]
    a = NegativeSampler("sim", index).pair_all(names, codes, pats, chunk=4, progress=False)
    b = NegativeSampler("sim", index).pair(names, codes, pats)
    assert [a[n] for n in names] == b


def test_hash_command_end_to_end(tmp_path):
    """`cianet hash` on a tiny NIH-layout folder (skips while the data modules are absent)."""
    pytest.importorskip("cianet.data.nih")
    pytest.importorskip("cianet.data.io")
    from cianet.cli import main
    from helpers import TinyImage, write_nih

    rng = np.random.default_rng(11)
    root = tmp_path / "nih"
    imgs = {f"{i + 1:08d}_000.png": (rng.random((64, 64)) * 255).astype(np.uint8) for i in range(6)}
    write_nih(
        root,
        [TinyImage(name, arr, "No Finding" if i < 4 else "Mass", i + 1) for i, (name, arr) in enumerate(imgs.items())],
    )
    out = tmp_path / "hash.npz"
    assert main(["hash", "--data-root", str(root), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    index = HashIndex.load(out)
    assert sorted(index.names) == sorted(list(imgs)[:4])
    name = index.names[0]
    np.testing.assert_allclose(index.codes[0], hash_codes(imgs[name][None])[0], atol=2e-3)
    assert index.patients[0] == name[:8]
    assert main(["hash", "--data-root", str(tmp_path / "missing"), "--out", str(out)]) == 2

    # From an image cache (32 x 32 uint8 rows): codes of the cached images, one of them only on disk.
    cache_mod = pytest.importorskip("cianet.data.cache")
    cached = list(imgs)[:3]
    cache = cache_mod.build_cache(
        [(n, root / "images" / n) for n in cached], 32, tmp_path / "cache", workers=1, progress=False
    )
    out2 = tmp_path / "hash_cache.npz"
    assert (
        main(
            ["hash", "--data-root", str(root), "--out", str(out2), "--cache", str(tmp_path / "cache"), "--no-progress"]
        )
        == 0
    )
    index2 = HashIndex.load(out2)
    assert sorted(index2.names) == sorted(list(imgs)[:4])
    for n in cached:
        np.testing.assert_allclose(index2.codes[index2.index_of(n)], hash_codes(cache.get(n)[None])[0], rtol=1e-6)
