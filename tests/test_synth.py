"""Synthetic phantom: box geometry, deformation parameters, determinism, NIH layout of the written set."""

from __future__ import annotations

import csv
import dataclasses
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cianet.labels import BOX_LABELS, LABELS, NO_FINDING
from cianet.phantom import generator
from cianet.phantom.anatomy import anatomy_layers, sample_anatomy
from cianet.phantom.generator import (
    BBOX_HEADER,
    DATA_ENTRY_HEADER,
    IDENTITY,
    bilinear_sample,
    build_spec,
    find_backgrounds,
    generate_dataset,
    load_background,
    mask_to_box,
    patient_grid,
    plan_dataset,
    render_image,
    render_spec,
    sample_spec,
    template_anatomy,
)

NAME_RE = re.compile(r"^(\d{8})_(\d{3})\.png$")


def torch_warp(img: np.ndarray, params, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Warp with the architecture's convention, written out independently: A from (tx, ty, sx, sy, theta),
    affine_grid + bilinear grid_sample, align_corners=False. Returns (warped, grid (S, S, 2))."""
    tx, ty, sx, sy, t = params
    A = torch.tensor(
        [[[sx * math.cos(t), -sy * math.sin(t), tx], [sx * math.sin(t), sy * math.cos(t), ty]]], dtype=torch.float64
    )
    grid = F.affine_grid(A, (1, 1, size, size), align_corners=False)
    out = F.grid_sample(torch.from_numpy(img).double()[None, None], grid, mode="bilinear", align_corners=False)
    return out[0, 0].numpy(), grid[0].numpy()


def box_edges(b) -> np.ndarray:
    x, y, w, h = b
    return np.array([x, y, x + w, y + h])


def read_truth(root: Path) -> list[dict]:
    with open(root / "synth_truth.csv", newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------------------- rendering


@pytest.mark.slow
@pytest.mark.parametrize("strength", ["none", "strong"])
def test_boxes_lie_in_image_and_cover_exactly_the_drawn_lesion(strength):
    """Render with and without each box-class lesion: the changed pixels lie inside the box and touch it."""
    size = 96
    for label in BOX_LABELS:
        for k in range(3):
            rng = np.random.default_rng([21, k, BOX_LABELS.index(label)])
            spec = sample_spec(rng, [label], strength)
            with_ = render_spec(spec, size, noise=False)
            without = render_spec(dataclasses.replace(spec, findings=()), size, noise=False)
            assert without.boxes == []
            assert [b.label for b in with_.boxes] == [label]
            box = box_edges(with_.boxes[0][1:])
            assert box[0] >= 0 and box[1] >= 0 and box[2] <= size and box[3] <= size
            changed = np.abs(with_.deformed - without.deformed) > 0
            drawn = mask_to_box(changed)
            assert drawn is not None, (label, strength, k)
            drawn = box_edges(drawn)
            # Inside the box ...
            assert drawn[0] >= box[0] and drawn[1] >= box[1] and drawn[2] <= box[2] and drawn[3] <= box[3], (
                label,
                box,
                drawn,
            )
            # ... and touching it on every side (a pixel of slack: the faintest rim may round away).
            assert np.abs(drawn - box).max() <= 1, (label, strength, box, drawn)


def test_box_of_deformed_lesion_follows_the_deformation():
    """The written box lies within the mapped corners of the undeformed box (bounding box of a moved shape)."""
    size = 128
    for k in range(6):
        rng = np.random.default_rng([5, k])
        spec = sample_spec(rng, ["Mass"], "strong")
        r = render_spec(spec, size, noise=False)
        und = render_spec(dataclasses.replace(spec, params=IDENTITY), size, noise=False)
        (_, *b_def), (_, *b_und) = r.boxes[0], und.boxes[0]
        tx, ty, sx, sy, t = r.params
        A = np.array([[sx * math.cos(t), -sy * math.sin(t), tx], [sx * math.sin(t), sy * math.cos(t), ty]])
        x0, y0, x1, y1 = box_edges(b_und) * 2.0 / size - 1.0
        corners = np.array([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]]).T
        # written(A p) = undeformed(p): the patient point p is written at q = A p.
        q = A @ corners
        px = (q + 1.0) * size / 2.0
        lo, hi = np.floor(px.min(axis=1)) - 1, np.ceil(px.max(axis=1)) + 1
        d = box_edges(b_def)
        assert d[0] >= lo[0] and d[1] >= lo[1] and d[2] <= hi[0] and d[3] <= hi[1]
        # and it is not much smaller than the rotated box would allow (the lesion moved, it did not vanish)
        assert b_def[2] * b_def[3] > 0.3 * b_und[2] * b_und[3] / (sx * sy)


def test_recorded_parameters_undo_the_deformation():
    """Warping the noise-free written image with the recorded parameters gives back the undeformed one."""
    size = 128
    for k in range(4):
        rng = np.random.default_rng([8, k])
        spec = sample_spec(rng, ["Nodule", "Effusion"][: 1 + k % 2], "strong" if k % 2 else "mild")
        r = render_spec(spec, size, noise=False)
        assert r.params != IDENTITY
        warped, grid = torch_warp(r.deformed, r.params, size)
        inside = np.abs(grid).max(axis=-1) < 1.0 - 8.0 / size  # away from the field-of-view border
        assert inside.mean() > 0.4
        err = np.abs(warped - r.undeformed)[inside]
        assert err.mean() < 0.01 and np.percentile(err, 99) < 0.06, (err.mean(), np.percentile(err, 99))
        # Control: not warping, or warping the other way, is far worse.
        for wrong in (IDENTITY, tuple(-v if i in (0, 1, 4) else 1.0 / v for i, v in enumerate(r.params))):
            w, _ = torch_warp(r.deformed, wrong, size)
            assert np.abs(w - r.undeformed)[inside].mean() > 4 * err.mean()


def test_render_image_api_identity_and_noise():
    anat = sample_anatomy(np.random.default_rng(3))
    clean = render_image(anat, (), IDENTITY, size=64, noise=False)
    assert clean.deformed.shape == (64, 64) and clean.deformed.dtype == np.float32
    np.testing.assert_array_equal(clean.undeformed, clean.deformed)
    assert 0.0 <= clean.deformed.min() and clean.deformed.max() <= 1.0
    noisy = render_image(anat, (), IDENTITY, size=64, noise=True, noise_seed=1)
    d = noisy.deformed - clean.deformed
    assert 0.002 < np.abs(d).mean() < 0.05  # grain and blur, but the same picture
    assert np.corrcoef(noisy.deformed.ravel(), clean.deformed.ravel())[0, 1] > 0.97


def test_windowed_anatomy_equals_full_evaluation():
    """Small structures are evaluated in windows; on a shuffled (non-affine) grid everything is evaluated."""
    for k in range(3):
        rng = np.random.default_rng([2, k])
        anat = sample_anatomy(rng)
        params = (
            rng.uniform(-0.1, 0.1),
            rng.uniform(-0.1, 0.1),
            rng.uniform(0.85, 1.15),
            rng.uniform(0.85, 1.15),
            rng.uniform(-0.2, 0.2),
        )
        X, Y = patient_grid(72, params)
        fast = anatomy_layers(X, Y, anat, 2 / 72)
        perm = rng.permutation(72)
        slow = anatomy_layers(X[perm], Y[perm], anat, 2 / 72)
        inv = np.argsort(perm)
        for name in ("base", "markings", "lungs"):
            np.testing.assert_allclose(getattr(fast, name), getattr(slow, name)[inv], atol=2e-5, err_msg=name)


def test_bilinear_sample_matches_grid_sample():
    rng = np.random.default_rng(0)
    img = rng.random((20, 24)).astype(np.float32)
    X = rng.uniform(-1.2, 1.2, size=(7, 9)).astype(np.float32)
    Y = rng.uniform(-1.2, 1.2, size=(7, 9)).astype(np.float32)
    grid = torch.from_numpy(np.stack([X, Y], -1)).double()[None]
    ref = F.grid_sample(
        torch.from_numpy(img).double()[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )[0, 0].numpy()
    np.testing.assert_allclose(bilinear_sample(img, X, Y), ref, atol=1e-5)


def test_lesions_change_the_image_visibly():
    """Every finding, image-level ones included, changes a noise-free image clearly (learnable signal)."""
    size = 96
    for label in LABELS:
        rng = np.random.default_rng([4, LABELS.index(label)])
        spec = sample_spec(rng, [label], "none")
        a = render_spec(spec, size, noise=False).deformed
        b = render_spec(dataclasses.replace(spec, findings=()), size, noise=False).deformed
        d = np.abs(a - b)
        assert (d > 0.05).sum() >= 6, (label, (d > 0.05).sum())


# --------------------------------------------------------------------------------------------- data set


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth") / "set"
    summary = generate_dataset(root, n_images=48, size=64, seed=3, workers=1, progress=False)
    return root, summary


def test_written_set_has_the_nih_layout(synth_set, nih_sample_dir):
    root, summary = synth_set
    real_entry = (nih_sample_dir / "Data_Entry_2017_v2020_subset.csv").read_text().splitlines()[0]
    real_bbox = (nih_sample_dir / "BBox_List_2017_subset.csv").read_text().splitlines()[0]
    entry = (root / "Data_Entry_2017.csv").read_text().splitlines()
    bbox = (root / "BBox_List_2017.csv").read_text().splitlines()
    # v2017 = the v2020 header plus the trailing empty column; the bbox header is NIH's, verbatim.
    assert entry[0] == real_entry + "," == DATA_ENTRY_HEADER
    assert bbox[0] == real_bbox == BBOX_HEADER
    rows = list(csv.reader(entry[1:]))
    assert len(rows) == 48 and all(len(r) == 12 and r[11] == "" for r in rows)
    files = sorted(p.name for p in (root / "images").iterdir())
    assert files == sorted(r[0] for r in rows)
    for r in rows:
        m = NAME_RE.match(r[0])
        assert m and int(m.group(1)) == int(r[3]) and int(m.group(2)) == int(r[2])
        labels = r[1].split("|")
        assert labels == [NO_FINDING] or (all(lab in LABELS for lab in labels) and len(labels) <= 3)
        assert r[6] in ("PA", "AP") and r[5] in ("M", "F") and (r[7], r[8]) == ("64", "64")
    with Image.open(root / "images" / files[0]) as im:
        assert im.mode == "L" and im.size == (64, 64)
    brows = list(csv.reader(bbox[1:]))
    assert brows and all(len(r) == 6 for r in brows)
    assert {r[1] for r in brows} <= (set(BOX_LABELS) - {"Infiltration"}) | {"Infiltrate"}
    for r in brows:
        x, y, w, h = map(float, r[2:])
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= 64 and y + h <= 64


def test_shares_patients_and_split(synth_set):
    root, summary = synth_set
    truth = read_truth(root)
    images: dict[str, dict] = {}
    for row in truth:
        images.setdefault(row["Image Index"], row)
    assert len(images) == 48
    no_finding = sum(r["Finding Labels"] == NO_FINDING for r in images.values())
    assert no_finding == 24 == summary["no_finding"]
    deformed = [r for r in images.values() if r["deformed"] == "1"]
    assert len(deformed) == 24
    for r in images.values():
        params = tuple(float(r[k]) for k in ("tx", "ty", "sx", "sy", "theta"))
        assert (params == IDENTITY) == (r["deformed"] == "0")
    eligible = [r for r in images.values() if any(lab in BOX_LABELS for lab in r["Finding Labels"].split("|"))]
    annotated = [r for r in images.values() if r["annotated"] == "1"]
    assert len(annotated) == round(0.3 * len(eligible)) and all(r in eligible for r in annotated)
    # The bbox list holds exactly the boxes of the annotated images.
    listed = [r for r in truth if r["in_bbox_list"] == "1"]
    bbox_rows = list(csv.reader((root / "BBox_List_2017.csv").read_text().splitlines()[1:]))
    assert len(bbox_rows) == len(listed) == summary["boxes_in_bbox_list"]
    assert {r["Image Index"] for r in listed} == {r["Image Index"] for r in annotated}
    unlisted = [r for r in truth if r["in_bbox_list"] == "0" and r["box_label"]]
    assert unlisted  # boxes of images outside the annotated set are in the truth only
    # Every positive box-class image has a box per box label (nothing pushed out of view).
    for name, r in images.items():
        want = sorted(lab for lab in r["Finding Labels"].split("|") if lab in BOX_LABELS)
        got = sorted(t["box_label"] for t in truth if t["Image Index"] == name and t["box_label"])
        assert got == want, name
    # Patients have several images; train/test are patient-disjoint and cover everything.
    per_patient = Counter(NAME_RE.match(n).group(1) for n in images)
    assert max(per_patient.values()) >= 2 and len(images) / len(per_patient) > 1.5
    train = (root / "train_val_list.txt").read_text().split()
    test = (root / "test_list.txt").read_text().split()
    assert sorted(train + test) == sorted(images) and not set(train) & set(test)
    assert not {n[:8] for n in train} & {n[:8] for n in test}
    assert 0.1 <= len(test) / 48 <= 0.35


def test_written_png_and_truth_are_the_planned_rendering(synth_set):
    """Re-render two images from the plan: same pixels as the PNG, same boxes and parameters as the truth."""
    root, _ = synth_set
    plans = plan_dataset(48, 3)
    truth = read_truth(root)
    for p in [p for p in plans if p.strength == "strong"][:1] + [p for p in plans if p.annotated][:1]:
        r = render_spec(build_spec(p, 64, 3), 64, noise=True, undeformed=False)
        png = np.asarray(Image.open(root / "images" / p.name))
        np.testing.assert_array_equal(png, np.round(np.clip(r.deformed, 0, 1) * 255).astype(np.uint8))
        rows = [t for t in truth if t["Image Index"] == p.name]
        assert tuple(float(rows[0][k]) for k in ("tx", "ty", "sx", "sy", "theta")) == r.params
        got = sorted((t["box_label"], *(float(t[k]) for k in "xywh")) for t in rows if t["box_label"])
        assert got == sorted(tuple(b) for b in r.boxes)


@pytest.mark.slow
def test_same_seed_same_bytes_any_worker_count(tmp_path, monkeypatch):
    a = tmp_path / "a"
    b = tmp_path / "b"
    c = tmp_path / "c"
    d = tmp_path / "d"
    kw = dict(twins=True, extra_negatives=2, prior_share=0.5)  # every part of the output, whatever the workers
    generate_dataset(a, n_images=10, size=64, seed=11, workers=1, progress=False, **kw)
    with monkeypatch.context() as m:  # a job this small stays in process: no pool may start
        m.setattr(generator.multiprocessing, "get_context", None)
        generate_dataset(d, n_images=10, size=64, seed=11, workers=2, progress=False, **kw)
    with monkeypatch.context() as m:  # ... unless the threshold says otherwise: two real workers
        m.setattr(generator, "IN_PROCESS_PIXELS", 0)
        generate_dataset(b, n_images=10, size=64, seed=11, workers=2, progress=False, **kw)
    generate_dataset(c, n_images=10, size=64, seed=12, workers=1, progress=False)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(d) for p in d.rglob("*") if p.is_file())
    assert Path("pool_only.txt") in files and sum(f.parts[0] == "twins" for f in files) == 12
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes() == (d / f).read_bytes(), f
    imgs_a = {p.name: p.read_bytes() for p in (a / "images").iterdir()}
    imgs_c = {p.name: p.read_bytes() for p in (c / "images").iterdir()}
    assert all(imgs_a[n] != imgs_c[n] for n in set(imgs_a) & set(imgs_c))


def test_nih_index_reads_the_synthetic_set_like_the_real_one(synth_set):
    nih = pytest.importorskip("cianet.data.nih")
    root, summary = synth_set
    index = nih.NIHIndex.from_root(root, strict=True, images_required=True)
    truth = read_truth(root)
    names = sorted({t["Image Index"] for t in truth})
    assert len(index) == len(names) == 48
    listed = [t for t in truth if t["in_bbox_list"] == "1"]
    assert sum(len(r.boxes) for r in index.records) == len(listed)
    assert len(index.annotated_names()) == summary["annotated_images"]
    assert index.official_test == set((root / "test_list.txt").read_text().split())
    for t in listed:
        rec = index[t["Image Index"]]
        assert any(
            b.label == t["box_label"] and (b.x, b.y, b.w, b.h) == tuple(float(t[k]) for k in "xywh") for b in rec.boxes
        )
    for name in names:
        row = next(t for t in truth if t["Image Index"] == name)
        want = () if row["Finding Labels"] == NO_FINDING else tuple(row["Finding Labels"].split("|"))
        assert index[name].labels == want and index[name].path is not None


# ------------------------------------------------------------------------------------------ backgrounds


def test_backgrounds_from_the_real_sample(nih_sample_dir, tmp_path):
    bgs = find_backgrounds(nih_sample_dir)
    with open(nih_sample_dir / "Data_Entry_2017_v2020_subset.csv", newline="") as fh:
        no_finding = {r["Image Index"] for r in csv.DictReader(fh) if r["Finding Labels"] == NO_FINDING}
    assert {p.name for p in bgs} == no_finding
    # A folder without a CSV: every image in it.
    d = tmp_path / "bg"
    d.mkdir()
    for p in bgs[:2]:
        (d / p.name).write_bytes(p.read_bytes())
    assert [p.name for p in find_backgrounds(d)] == sorted(p.name for p in bgs[:2])
    # The undeformed No Finding rendering is the background itself (tone round trip, no noise).
    bg = load_background(str(bgs[0]), 64)
    clean = render_image(template_anatomy(), (), IDENTITY, size=64, noise=False, background=bg)
    np.testing.assert_allclose(clean.deformed, np.minimum(bg, 0.985), atol=1e-4)
    # A lesion on it gets a box that covers what it changed.
    spec = sample_spec(np.random.default_rng(1), ["Nodule"], "mild", background=bg)
    with_ = render_spec(spec, 64, noise=False)
    without = render_spec(dataclasses.replace(spec, findings=()), 64, noise=False)
    drawn = box_edges(mask_to_box(np.abs(with_.deformed - without.deformed) > 0))
    assert np.abs(drawn - box_edges(with_.boxes[0][1:])).max() <= 1


def test_generate_with_backgrounds_and_cli(nih_sample_dir, tmp_path, capsys):
    from cianet.cli import main

    out = tmp_path / "real"
    rc = main(
        [
            "synth",
            str(out),
            "--n-images",
            "6",
            "--size",
            "64",
            "--seed",
            "2",
            "--workers",
            "1",
            "--backgrounds",
            str(nih_sample_dir),
        ]
    )
    assert rc == 0
    truth = read_truth(out)
    assert all(t["background"] for t in truth)
    assert len(list((out / "images").iterdir())) == 6
    # Writing into a non-empty folder is refused without --overwrite (one-line error, status 2).
    rc = main(["synth", str(out), "--n-images", "6", "--size", "64", "--workers", "1"])
    assert rc == 2 and "not empty" in capsys.readouterr().err
    assert main(["synth", str(out), "--n-images", "4", "--size", "64", "--workers", "1", "--overwrite"]) == 0
    assert len(list((out / "images").iterdir())) == 4  # stale images of the earlier set removed


def test_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="deform_share"):
        generate_dataset(tmp_path / "x", n_images=4, size=64, deform_share=1.5)
    with pytest.raises(ValueError, match="n_images"):
        generate_dataset(tmp_path / "x", n_images=0, size=64)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        generate_dataset(tmp_path / "x", n_images=4, size=64, backgrounds=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown label"):
        sample_spec(np.random.default_rng(0), ["Cardiomegally"])


# ------------------------------------------------------------------ twins, extra negatives, priors, re-acquisition


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


@pytest.fixture(scope="module")
def twin_sets(tmp_path_factory):
    """The same phantom without and with 6 extra negatives (twins written for both)."""
    base = tmp_path_factory.mktemp("twins")
    kw = dict(n_images=36, size=48, seed=5, workers=1, progress=False, twins=True, annotated_share=1.0)
    plain = generate_dataset(base / "plain", **kw)
    extra = generate_dataset(base / "extra", extra_negatives=6, **kw)
    return base / "plain", plain, base / "extra", extra


@pytest.mark.slow
def test_every_image_has_a_finding_free_twin_of_its_own_acquisition(twin_sets):
    from cianet.phantom.generator import TWINS_DIR, twin_spec

    root, summary = twin_sets[2], twin_sets[3]
    names = sorted(p.name for p in (root / "images").iterdir())
    assert sorted(p.name for p in (root / TWINS_DIR).iterdir()) == names and summary["twins"] == 42
    plans = plan_dataset(36, 5)
    assert any(not p.labels for p in plans) and any(p.labels for p in plans)
    for p in plans:
        spec = build_spec(p, 48, 5)
        tspec = twin_spec(spec, p, 5)
        img, twin = _png(root / "images" / p.name), _png(root / TWINS_DIR / p.name)
        assert (img != twin).any(), p.name  # never the image itself, No Finding images included
        assert tspec.findings == () and tspec.noise_seed != spec.noise_seed and tspec.params != spec.params
        clean = render_spec(tspec, 48, noise=True, undeformed=False).deformed
        np.testing.assert_array_equal(twin, np.round(np.clip(clean, 0, 1) * 255).astype(np.int16))
        if spec.findings:  # the image's findings drawn into the twin's acquisition would show: the twin lacks them
            drawn = render_spec(dataclasses.replace(tspec, findings=spec.findings), 48, noise=False).deformed
            bare = render_spec(tspec, 48, noise=False).deformed
            assert np.abs(drawn - bare).max() > 0.01, p.name
        # an independent acquisition: it differs from the image away from any finding, not only in noise
        assert np.abs(img - twin).mean() > 1.0, p.name


def test_twin_is_an_independent_acquisition_of_the_same_patient():
    from cianet.phantom.generator import REACQUISITION, twin_spec

    for p in plan_dataset(40, 2)[:20]:
        spec = build_spec(p, 48, 2)
        t = twin_spec(spec, p, 2)
        a, b = spec.anatomy, t.anatomy
        assert (a.lung_cx, a.heart_cy, a.rib_sp, a.female) == (b.lung_cx, b.heart_cy, b.rib_sp, b.female)
        assert a.shift_x != b.shift_x and a.dome_y_r != b.dome_y_r and a.exposure != b.exposure
        d = np.abs(np.subtract(t.params, spec.params))
        assert 0 < d[0] <= REACQUISITION["shift"] and 0 < d[4] <= math.radians(REACQUISITION["rot_deg"]) + 1e-12
        assert twin_spec(spec, p, 2) == t  # deterministic in the seed


def test_extra_negatives_leave_the_data_set_unchanged(twin_sets):
    from cianet.data.nih import NIHIndex

    plain, ps, extra, es = twin_sets
    listed = (extra / "pool_only.txt").read_text().split()
    assert len(listed) == 6 == es["extra_negatives"] and not (plain / "pool_only.txt").exists()
    for sub in ("images", "twins"):
        a = {p.name: p.read_bytes() for p in (plain / sub).iterdir()}
        b = {p.name: p.read_bytes() for p in (extra / sub).iterdir()}
        assert sorted(set(b) - set(a)) == sorted(listed)
        assert all(a[n] == b[n] for n in a)
    for f in ("Data_Entry_2017.csv", "synth_truth.csv"):
        a, b = (plain / f).read_text().splitlines(), (extra / f).read_text().splitlines()
        assert b[: len(a)] == a and len(b) == len(a) + 6
    for f in ("BBox_List_2017.csv", "train_val_list.txt", "test_list.txt"):
        assert (plain / f).read_bytes() == (extra / f).read_bytes()
    assert {k: v for k, v in ps.items() if k not in ("out_dir", "seconds", "extra_negatives", "twins")} == {
        k: v for k, v in es.items() if k not in ("out_dir", "seconds", "extra_negatives", "twins")
    }
    index = NIHIndex.from_root(extra)
    assert index.pool_only == frozenset(listed) and index.summary()["pool_only"] == 6
    main_patients = {index[n].patient_id for n in index.names() if n not in index.pool_only}
    extra_patients = [index[n].patient_id for n in listed]
    assert all(index[n].no_finding for n in listed) and len(set(extra_patients)) == 6
    assert not set(extra_patients) & main_patients
    assert NIHIndex.from_root(plain).pool_only == frozenset()


def test_protocol_keeps_pool_only_images_out_of_every_split(twin_sets):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from cianet.run.pairing import negative_pool
    from cianet.run.protocol import build_run_data
    from helpers import tiny_config

    plain, _, extra, _ = twin_sets
    pool_only = set((extra / "pool_only.txt").read_text().split())
    for kind in ("localization", "classification"):
        a = build_run_data(tiny_config(plain, plain, protocol__kind=kind, protocol__val_share=0.2))
        b = build_run_data(tiny_config(extra, extra, protocol__kind=kind, protocol__val_share=0.2))
        for key in ("train", "val", "test", "auc_extra"):
            assert getattr(a, key) == getattr(b, key), (kind, key)
            assert not set(getattr(b, key)) & pool_only
        assert a.box_names == b.box_names
        pool = negative_pool(b.index, set(b.held_out))
        assert pool_only <= set(pool) and set(pool) - pool_only == set(negative_pool(a.index, set(a.held_out)))


def test_cianet_splits_ignore_pool_only_images(twin_sets, tmp_path):
    from cianet.data.splits import write_root_splits

    plain, _, extra, _ = twin_sets
    assert write_root_splits(plain, tmp_path / "a.json") == write_root_splits(extra, tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_hash_index_includes_pool_only_images(twin_sets, tmp_path, capsys):
    import json

    from cianet.cli import main

    plain, _, extra, _ = twin_sets
    counts = []
    for root in (plain, extra):
        assert (
            main(
                [
                    "hash",
                    "--data-root",
                    str(root),
                    "--out",
                    str(tmp_path / f"{root.name}.npz"),
                    "--json",
                    "--no-progress",
                    "--workers",
                    "1",
                ]
            )
            == 0
        )
        counts.append(json.loads(capsys.readouterr().out)["images"])
    assert counts[1] == counts[0] + 6


def test_pool_only_file_must_name_no_finding_images_of_the_index(twin_sets, tmp_path):
    import shutil

    from cianet.data.nih import NIHIndex
    from cianet.errors import InputError

    plain = twin_sets[0]
    root = tmp_path / "copy"
    shutil.copytree(plain, root)
    (root / "pool_only.txt").write_text("99999999_000.png\n")
    with pytest.raises(InputError, match="pool_only.txt: 1 names are not images"):
        NIHIndex.from_root(root)
    positive = next(p.name for p in plan_dataset(36, 5) if p.labels)
    (root / "pool_only.txt").write_text(positive + "\n")
    with pytest.raises(InputError, match="not No Finding"):
        NIHIndex.from_root(root)


def test_csv_layout_phantom_keeps_follow_ups_and_priors(tmp_path, capsys):
    import json

    from cianet.cli import main

    for layout in ("nih", "csv"):
        assert (
            main(
                [
                    "synth",
                    str(tmp_path / layout),
                    "--layout",
                    layout,
                    "--n-images",
                    "30",
                    "--size",
                    "32",
                    "--seed",
                    "4",
                    "--workers",
                    "1",
                    "--json",
                ]
            )
            == 0
        )
        capsys.readouterr()
    counts = []
    for layout in ("nih", "csv"):
        assert main(["index", "--data-root", str(tmp_path / layout), "--json"]) == 0
        s = json.loads(capsys.readouterr().out)
        counts.append({k: s[k] for k in ("with_prior", "positives_with_prior", "with_prior_any")})
    assert counts[0] == counts[1] and counts[0]["with_prior"] > 0


def test_extra_negatives_only_in_the_nih_layout(tmp_path, capsys):
    from cianet.cli import main

    rc = main(
        [
            "synth",
            str(tmp_path / "r"),
            "--layout",
            "csv",
            "--n-images",
            "8",
            "--size",
            "32",
            "--workers",
            "1",
            "--extra-negatives",
            "2",
        ]
    )
    assert rc == 2 and "--extra-negatives is only written in the nih layout" in capsys.readouterr().err


# -- backgrounds: one radiograph, one patient


def test_each_background_is_one_patient_in_the_plan():
    bgs = [f"bg{i:03d}.png" for i in range(30)]
    plans = plan_dataset(60, 4, backgrounds=bgs)
    owner: dict[str, set[int]] = {}
    for p in plans:
        owner.setdefault(p.background, set()).add(p.patient)
    assert all(len(pats) == 1 for pats in owner.values())
    assert len(owner) == plans[-1].patient  # every patient has its own


def test_too_few_backgrounds_is_a_usage_error():
    from cianet.errors import UsageError

    with pytest.raises(UsageError, match=r"--backgrounds: 3 radiographs for \d+ patients; each radiograph is one"):
        plan_dataset(40, 0, backgrounds=["a.png", "b.png", "c.png"])


def test_backgrounds_one_patient_each_in_synth_truth(nih_sample_dir, tmp_path, capsys):
    from cianet.cli import main

    out = tmp_path / "semi"
    assert (
        main(
            [
                "synth",
                str(out),
                "--n-images",
                "14",
                "--size",
                "48",
                "--seed",
                "1",
                "--workers",
                "1",
                "--backgrounds",
                str(nih_sample_dir),
                "--extra-negatives",
                "3",
                "--json",
            ]
        )
        == 0
    )
    owner: dict[str, set[str]] = {}
    for t in read_truth(out):
        assert t["background"]
        owner.setdefault(t["background"], set()).add(t["Patient ID"])
    assert all(len(p) == 1 for p in owner.values())
    assert len(owner) == len({t["Patient ID"] for t in read_truth(out)})
    # a folder of two radiographs cannot hold 14 images of distinct patients: one line, status 2
    small = tmp_path / "two"
    small.mkdir()
    for p in find_backgrounds(nih_sample_dir)[:2]:
        (small / p.name).write_bytes(p.read_bytes())
    capsys.readouterr()
    assert (
        main(
            [
                "synth",
                str(tmp_path / "x"),
                "--n-images",
                "14",
                "--size",
                "48",
                "--workers",
                "1",
                "--backgrounds",
                str(small),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "--backgrounds: 2 radiographs for" in err and len(err.strip().splitlines()) == 1


# -- follow-ups as real re-acquisitions


def test_phantom_follow_ups_differ_as_reacquisitions():
    plans = plan_dataset(120, 6)
    pairs = [(a, b) for a, b in zip(plans, plans[1:]) if a.patient == b.patient]
    assert len(pairs) > 20
    params_differ = 0
    for a, b in pairs:
        sa, sb = build_spec(a, 48, 6), build_spec(b, 48, 6)
        x, y = sa.anatomy, sb.anatomy
        assert (x.lung_cx, x.lung_b, x.rib_sp, x.female) == (y.lung_cx, y.lung_b, y.rib_sp, y.female)  # one patient
        assert x.shift_x != y.shift_x and x.shift_y != y.shift_y  # position
        assert x.dome_y_r - y.dome_y_r == pytest.approx(x.dome_y_l - y.dome_y_l) != 0  # inspiration
        assert x.exposure != y.exposure and sa.noise_seed != sb.noise_seed  # exposure, noise
        if a.strength != "none" or b.strength != "none":  # the scan deformation is drawn per image
            assert sa.params != sb.params
            params_differ += 1
    assert params_differ > len(pairs) // 3


def test_semi_synthetic_follow_up_is_the_radiograph_taken_again(nih_sample_dir):
    """reacquire_background against an independent reference: torch affine_grid/grid_sample of the composed map,
    then the exposure re-toned."""
    from cianet.phantom.anatomy import inverse_tone, tone
    from cianet.phantom.generator import APEX_Y, REACQUISITION, reacquire_background

    bg = load_background(str(find_backgrounds(nih_sample_dir)[0]), 64)
    got = reacquire_background(bg, np.random.default_rng(7))
    r, rng = REACQUISITION, np.random.default_rng(7)
    dx, dy = rng.uniform(-r["shift"], r["shift"], size=2)
    kx, ky = rng.uniform(*r["scale"], size=2)
    t = math.radians(rng.uniform(-r["rot_deg"], r["rot_deg"]))
    b = rng.uniform(-r["inspiration"], r["inspiration"])
    f = rng.uniform(*r["exposure"])
    # new point p -> breath (y about the apex) -> pose
    pose = np.array([[kx * math.cos(t), -ky * math.sin(t), dx], [kx * math.sin(t), ky * math.cos(t), dy], [0, 0, 1]])
    breath = np.array([[1, 0, 0], [0, 1 + b, -APEX_Y * b], [0, 0, 1]])
    A = torch.tensor((pose @ breath)[None, :2], dtype=torch.float64)
    grid = F.affine_grid(A, (1, 1, 64, 64), align_corners=False)
    moved = F.grid_sample(torch.from_numpy(bg).double()[None, None], grid, align_corners=False)[0, 0].numpy()
    k0 = template_anatomy().exposure
    want = np.clip(tone(inverse_tone(moved, k0), k0 * f), 0, 1)
    np.testing.assert_allclose(got, want, atol=2e-4)
    assert np.abs(got - bg).mean() > 0.005  # a visible change, not noise

    # in a data set: a patient's follow-ups are such re-acquisitions, each with its own draw
    plans = plan_dataset(12, 3, backgrounds=[str(p) for p in find_backgrounds(nih_sample_dir)])
    follow = [p for p in plans if p.follow_up][:3]
    assert follow
    for p in follow:
        spec = build_spec(p, 64, 3)
        first = load_background(p.background, 64)
        assert spec.background.shape == first.shape and np.abs(spec.background - first).mean() > 0.002


# -- the share of patients with a prior


def _patient_prior_share(plans):
    from cianet.data.index import ImageRecord
    from cianet.data.priors import prior_counts, prior_studies

    recs = [ImageRecord(p.name, str(p.patient), p.labels, follow_up=p.follow_up) for p in plans]
    pri = prior_studies(recs)
    finding = {r.patient_id for r in recs if r.labels}
    having = {r.patient_id for r in recs if r.labels and pri[r.name]}
    return len(finding), len(having), prior_counts(recs)


@pytest.mark.parametrize("share", [0.0, 0.3, 0.75])
def test_prior_share_is_honoured(share):
    drawn = plan_dataset(300, 8)
    plans = plan_dataset(300, 8, prior_share=share)
    n_finding, n_prior, counts = _patient_prior_share(plans)
    assert n_prior == round(share * n_finding)
    # each finding image of a patient with a prior has one; the others have none
    priors = {p.patient for p in plans if p.labels and p.follow_up and not plans[p.index - p.follow_up].labels}
    assert counts["positives_with_prior"] == sum(1 for p in plans if p.labels and p.patient in priors)
    assert (counts["positives_with_prior"] == 0) == (share == 0.0)
    # the same patients, images, label draws and shares as drawn
    assert Counter(p.labels for p in plans) == Counter(p.labels for p in drawn)
    assert [(p.name, p.strength) for p in plans] == [(p.name, p.strength) for p in drawn]
    assert _patient_prior_share(drawn)[0] == n_finding


def test_prior_share_swaps_across_patients_and_refuses_the_unreachable():
    from cianet.errors import UsageError

    drawn = plan_dataset(300, 8, images_per_patient=(2, 4))
    kinds: dict[int, set[bool]] = {}
    for p in drawn:
        kinds.setdefault(p.patient, set()).add(bool(p.labels))
    mixed = sum(k == {True, False} for k in kinds.values())
    n_finding, n_prior, _ = _patient_prior_share(plan_dataset(300, 8, prior_share=0.95, images_per_patient=(2, 4)))
    assert n_prior == round(0.95 * n_finding) > mixed  # beyond what reordering each patient's studies reaches
    with pytest.raises(UsageError, match="--prior-share 1.0: at most 0\\.\\d+ of the"):
        plan_dataset(300, 8, prior_share=1.0)  # single-study patients with a finding never have a prior


def test_prior_share_on_backgrounds_and_through_the_cli(tmp_path, capsys):
    import json

    from cianet.cli import main

    plans = plan_dataset(60, 2, backgrounds=[f"b{i}" for i in range(60)], prior_share=0.6)
    n_finding, n_prior, _ = _patient_prior_share(plans)
    assert n_prior == round(0.6 * n_finding)
    out = tmp_path / "p"
    assert (
        main(
            [
                "synth",
                str(out),
                "--n-images",
                "40",
                "--size",
                "32",
                "--seed",
                "2",
                "--workers",
                "1",
                "--prior-share",
                "0.8",
                "--json",
            ]
        )
        == 0
    )
    s = json.loads(capsys.readouterr().out)["priors"]
    assert s["patients_with_prior"] == round(0.8 * s["patients_with_finding"])
    assert main(["index", "--data-root", str(out), "--json"]) == 0
    idx = json.loads(capsys.readouterr().out)
    assert {k: idx[k] for k in ("with_prior", "positives_with_prior", "boxed_with_prior")} == {
        k: s[k] for k in ("with_prior", "positives_with_prior", "boxed_with_prior")
    }
