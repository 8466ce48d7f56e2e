"""Predictor and `cianet predict`: scores, boxes in the original frame, inputs, bad files, DICOM, outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import GRID, IMG_H, IMG_W, U, synthetic_chest


@pytest.fixture(scope="module")
def bundles(chest_models) -> dict[str, Path]:
    """Bundle files: plain CIA-Net, CIA-Net aligned with a known shift tx = 0.25, baseline."""
    return {key: chest_models.bundle(key) for key in ("plain", "shift", "base")}


class FixedHead(torch.nn.Module):
    """Replaces the grid head: on the U x U test grid, class 0 is +10 on ``cells`` and -10 elsewhere; every
    class is -10 on the native grid except class 0 (+10), so class 0's image probability is ~1."""

    def __init__(self, cells: np.ndarray) -> None:
        super().__init__()
        self.cells = torch.from_numpy(cells)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        b, _, h, w = f.shape
        out = torch.full((b, 14, h, w), -10.0)
        out[:, 0] = torch.where(self.cells, 10.0, -10.0) if h == U else 10.0
        return out


def _reference_regions(mask: np.ndarray, connectivity: int) -> list[tuple[int, int, int, int]]:
    """Flood fill in python loops: bounding (row0, col0, row1, col1) (exclusive ends) of each region."""
    seen = np.zeros_like(mask, bool)
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)] + ([(-1, -1), (-1, 1), (1, -1), (1, 1)] if connectivity == 8 else [])
    out = []
    for i in range(mask.shape[0]):
        for j in range(mask.shape[1]):
            if mask[i, j] and not seen[i, j]:
                stack, cells = [(i, j)], []
                seen[i, j] = True
                while stack:
                    a, c = stack.pop()
                    cells.append((a, c))
                    for da, dc in steps:
                        na, nc = a + da, c + dc
                        if 0 <= na < mask.shape[0] and 0 <= nc < mask.shape[1] and mask[na, nc] and not seen[na, nc]:
                            seen[na, nc] = True
                            stack.append((na, nc))
                rows, cols = zip(*cells)
                out.append((min(rows), min(cols), max(rows) + 1, max(cols) + 1))
    return sorted(out)


@pytest.mark.parametrize("connectivity", [4, 8])
def test_boxes_from_heatmap_match_flood_fill(connectivity):
    from cianet.inference.predictor import boxes_from_heatmap

    rng = np.random.default_rng(connectivity)
    for _ in range(5):
        prob = rng.random((U, U)) * (rng.random((U, U)) < 0.3)
        got = boxes_from_heatmap(prob, (IMG_W, IMG_H), connectivity=connectivity)
        fx, fy = IMG_W / U, IMG_H / U
        ref = [
            (c0 * fx, r0 * fy, (c1 - c0) * fx, (r1 - r0) * fy)
            for r0, c0, r1, c1 in _reference_regions(prob > 0.5, connectivity)
        ]
        assert sorted(tuple(round(v, 6) for v in b[:4]) for b in got) == sorted(
            tuple(round(v, 6) for v in r) for r in ref
        )
    # Two diagonal cells: one region with 8-connectivity, two with 4.
    prob = np.zeros((U, U))
    prob[3, 3] = prob[4, 4] = 0.9
    assert len(boxes_from_heatmap(prob, (U, U), connectivity=connectivity)) == (1 if connectivity == 8 else 2)


def test_boxes_with_alignment_match_the_rasterized_region():
    """Shift + scale: the mapped rectangle equals the bounding box of mask_to_original's pixels (1 px)."""
    from cianet.inference.predictor import boxes_from_heatmap
    from cianet.models.alignment import mask_to_original

    prob = np.zeros((U, U))
    prob[5:9, 2:7] = 0.8
    prob[6, 4] = 0.95
    params = (0.1, -0.15, 0.8, 1.1, 0.0)
    ((x, y, w, h, score),) = boxes_from_heatmap(prob, (IMG_W, IMG_H), params)
    region = mask_to_original(prob > 0.5, params, (IMG_W, IMG_H))
    rows, cols = np.nonzero(region)
    assert score == pytest.approx(0.95)
    np.testing.assert_allclose([x, y, x + w, y + h], [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], atol=1.0)


@pytest.mark.slow
def test_known_shift_box_lands_in_the_original_frame(bundles):
    """Alignment tx = 0.25 (the network sees the image shifted left by W/8): a region of test-grid cells
    rows 4..7, cols 2..5 is, in the file frame, x in [W/4, W/2), y in [H/4, H/2)."""
    from cianet.inference.predictor import Predictor

    pred = Predictor.from_bundle(bundles["shift"])
    cells = np.zeros((U, U), bool)
    cells[4:8, 2:6] = True
    pred.model.head = FixedHead(cells)
    res = pred.predict(synthetic_chest(np.random.default_rng(0)))
    assert res.align_params == pytest.approx((0.25, 0.0, 1.0, 1.0, 0.0), abs=1e-6)
    assert res.probabilities["Atelectasis"] > 0.99
    (box,) = res.boxes
    assert box.label == "Atelectasis" and box.score == pytest.approx(1 / (1 + np.exp(-10.0)))
    assert (box.x, box.y, box.w, box.h) == pytest.approx((IMG_W / 4, IMG_H / 4, IMG_W / 4, IMG_H / 4), abs=1e-6)
    pred.thresholds["Atelectasis"] = 1.01  # above its threshold only
    assert pred.predict(synthetic_chest(np.random.default_rng(0))).boxes == []


def test_scores_inputs_and_result(bundles, tmp_path):
    """Image score = 1 - prod(1 - p) over the native grid (float64 loop); path/uint8/float/PIL agree."""
    from cianet.inference.predictor import Predictor

    pred = Predictor.from_bundle(bundles["plain"], batch_size=2)
    img = synthetic_chest(np.random.default_rng(5), lesion=True)
    u8 = np.rint(img * 255).astype(np.uint8)
    Image.fromarray(u8).save(tmp_path / "x.png")
    results = pred.predict_batch([tmp_path / "x.png", u8, u8.astype(np.float32) / 255, Image.fromarray(u8)])
    assert [r.source for r in results] == [str(tmp_path / "x.png"), "array-1", "array-2", "image-3"]
    for r in results[1:]:
        np.testing.assert_allclose(r.logits, results[0].logits, atol=1e-5)
    r = results[0]
    assert r.image_size == (IMG_W, IMG_H) and r.heatmaps.shape == (14, U, U)
    assert r.attention.shape == (GRID, GRID)
    assert r.attention.sum() == pytest.approx(r.attention.size, rel=1e-4)  # dM cells sum to h*w
    for k, (_label, p) in enumerate(r.probabilities.items()):
        prod = 1.0
        for z in r.logits[k].astype(np.float64).ravel():
            prod *= 1.0 - 1.0 / (1.0 + np.exp(-z))
        assert p == pytest.approx(1.0 - prod, rel=1e-4, abs=1e-7)
    json.dumps(r.to_dict(include_arrays=True))  # JSON-ready
    with pytest.raises(ValueError, match="values must be in"):
        pred.predict(img * 3)
    with pytest.raises(ValueError, match="gray"):
        pred.predict(np.zeros((4, 4, 3), np.uint8))


def test_baseline_bundle_has_no_attention(bundles):
    from cianet.inference.predictor import Predictor

    r = Predictor.from_bundle(bundles["base"]).predict(synthetic_chest(np.random.default_rng(1)))
    assert r.attention is None and r.negative is None and len(r.probabilities) == 14


def _write_dicom(path: Path, pixels: np.ndarray) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "PID-98765", "19700101"
    ds.InstitutionName = "Secret Hospital"
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "DX", "PA", "CHEST"
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.astype(np.uint8).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


@pytest.mark.slow  # end to end through the CLI on full data
def test_predict_cli_skips_bad_files_and_reads_dicom(bundles, tmp_path, capsys):
    from cianet.cli import main
    from cianet.inference.predictor import Predictor

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    imgs = [np.rint(synthetic_chest(np.random.default_rng(s)) * 255).astype(np.uint8) for s in (1, 2)]
    Image.fromarray(imgs[0]).save(src / "a.png")
    Image.fromarray(imgs[1]).save(src / "sub" / "b.jpg", quality=95)
    _write_dicom(src / "sub" / "c.dcm", imgs[0])  # the same pixels as a.png, full 0..255 range
    (src / "empty.png").write_bytes(b"")
    (src / "notes.png").write_text("not an image at all\n")
    out = tmp_path / "out"
    rc = main(
        [
            "predict",
            str(src),
            "--model",
            str(bundles["plain"]),
            "--out",
            str(out),
            "--batch-size",
            "2",
            "--no-progress",
            "--no-overlay",
            "--precision",
            "fp32",
        ]
    )  # as Predictor's default, compared below
    assert rc == 0
    err = capsys.readouterr().err
    assert "empty.png" in err and "notes.png" in err
    rows = {Path(r["file"]).name: r for r in csv.DictReader(open(out / "predictions.csv"))}
    assert {k: v["status"] for k, v in rows.items()} == {
        "a.png": "ok",
        "b.jpg": "ok",
        "c.dcm": "ok",
        "empty.png": "error",
        "notes.png": "error",
    }
    assert "empty" in rows["empty.png"]["error"] and rows["a.png"]["error"] == ""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["predicted"] == 3 and sorted(Path(e["file"]).name for e in summary["errors"]) == [
        "empty.png",
        "notes.png",
    ]
    for stem in ("a", "sub/b", "sub/c"):
        assert (out / f"{stem}.json").is_file()
    assert not list(out.rglob("*.png"))
    # The DICOM decodes to the PNG's pixels, so its prediction is the PNG's.
    pa, pc = (json.loads((out / f"{s}.json").read_text())["probabilities"] for s in ("a", "sub/c"))
    assert pa == pytest.approx(pc, abs=1e-6)
    direct = Predictor.from_bundle(bundles["plain"]).predict(src / "a.png").probabilities
    assert pa == pytest.approx(direct, abs=1e-6)
    # No patient data anywhere, and none of the DICOM header unless asked for.
    text = "".join(p.read_text() for p in out.rglob("*") if p.suffix in (".json", ".csv"))
    assert "Doe" not in text and "PID-98765" not in text and "Secret" not in text and "DX" not in text

    out2 = tmp_path / "out2"
    assert (
        main(
            [
                "predict",
                str(src / "sub" / "c.dcm"),
                "--model",
                str(bundles["plain"]),
                "--out",
                str(out2),
                "--include-dicom-metadata",
                "--no-progress",
            ]
        )
        == 0
    )
    res = json.loads((out2 / "c.json").read_text())
    assert res["metadata"]["dicom"]["Modality"] == "DX" and res["metadata"]["dicom"]["ViewPosition"] == "PA"
    text = (out2 / "c.json").read_text()
    assert "Doe" not in text and "PID-98765" not in text and "19700101" not in text
    with Image.open(out2 / "c.overlay.png") as im:  # an overlay per image unless --no-overlay
        assert im.size[0] > 500 and im.mode in ("RGB", "RGBA")


@pytest.mark.slow
def test_a_bank_image_is_never_its_own_negative(chest_models):
    """A bundle's bank is anonymous, so a bank image predicted again is recognized by its hash code: paired with
    itself, |M+ - M-| would be rounding noise blown up to mean 1 by dM's normalization."""
    from cianet.inference.bundle import bundle_from_run
    from cianet.inference.predictor import Predictor

    run, _ = chest_models.run("plain")
    pred = Predictor(bundle_from_run(run, n_negatives=100, include_images=True, progress=False))
    bank = pred.bank_images.numpy()  # (N, S, S) uint8, the images the bank's codes were computed from
    assert len(bank) >= 3
    picks = pred.choose_negatives(bank[:3].astype(np.float32) / 255, ["a.png", "b.png", "c.png"])
    assert all(int(p) != i for i, p in enumerate(picks))
    # a bank image's hash code finds its own row first: the rule, not chance, moved it
    codes = pred._index.codes[:3]
    assert (pred._index.query(codes, k=1) == np.arange(3)).all()
    # an image not in the bank keeps its nearest entry
    other = synthetic_chest(np.random.default_rng(99), lesion=True)
    from cianet.data.io import resize_gray

    q = resize_gray(other, pred.input_size)[None]
    from cianet.data.io import to_uint8
    from cianet.negatives import hash_codes

    assert pred.choose_negatives(q, ["q.png"])[0] == pred._index.query(hash_codes(to_uint8(q)), k=1)[0]


def test_prediction_networks_match_the_unfolded_model(bundles):
    """The Predictor folds BatchNorm into the convolutions and runs channels-last: the same logits, test-grid
    logits and attention as the network exactly as trained (float32, NCHW, BatchNorm applied)."""
    from cianet.inference.predictor import Predictor
    from cianet.models.backbones import gray_to_input
    from cianet.run.bundle_file import load_bundle
    from cianet.run.networks import network_from_weights

    pred = Predictor.from_bundle(bundles["plain"])
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in pred.model.modules())
    b = load_bundle(bundles["plain"])
    model, _ = network_from_weights(b["config"], b["model"], "cpu")
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) > 0
    images = np.stack([pred.prepare(synthetic_chest(np.random.default_rng(s), lesion=True)) for s in range(3)])
    out = pred.forward(images, ["a.png", "b.png", "c.png"])
    with torch.no_grad():
        x = gray_to_input(torch.from_numpy(images)[:, None])
        ref = model(x, m_neg=pred.bank_maps[torch.as_tensor(out["rows"])], upsample=False, return_feats=True)
        ref_test = model.test_grid_logits(ref["f_bar"])
    np.testing.assert_allclose(out["logits"], ref["logits"], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(out["test_logits"], ref_test, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(out["delta"], ref["delta"], atol=1e-4, rtol=1e-4)


def test_heatmap_stack_in_image_frame_matches_one_map_at_a_time():
    """The output writer maps all classes through one pixel-to-cell table and converts to float16 with torch:
    the same arrays as the per-map mapping and numpy's conversion, bit for bit (subnormals included)."""
    from cianet.inference.result_files import float16
    from cianet.models.alignment import mask_to_original, masks_to_original

    rng = np.random.default_rng(0)
    grids = (rng.random((3, 16, 16)) ** 12).astype(np.float32)  # many values below float16's normal range
    params = (0.05, -0.1, 1.1, 0.9, 0.2)
    stack = masks_to_original(grids, params, (40, 30))
    assert stack.shape == (3, 30, 40)
    for k in range(3):
        assert np.array_equal(stack[k], mask_to_original(grids[k], params, (40, 30)))
    assert (stack == 0).any() and (stack > 0).any()  # parts of the frame outside the rotated aligned image
    assert np.array_equal(float16(stack).view(np.uint16), stack.astype(np.float16).view(np.uint16))
    assert (np.abs(float16(stack)) < np.float16(6.1e-5)).sum() > 0  # subnormals were really exercised


def test_networks_built_without_initialization_predict_bit_identically(bundles, monkeypatch):
    """from_bundle builds its networks on the meta device without the initializers' fills
    (cianet.models.backbones.no_fill_on_meta) and assigns the saved tensors: the same predictions, bit for bit,
    as networks randomly initialized first and then loaded; with_precision shares them."""
    from cianet.inference.predictor import Predictor
    from cianet.run import networks

    img = synthetic_chest(np.random.default_rng(7), lesion=True)
    fast = Predictor.from_bundle(bundles["shift"])
    assert fast.with_precision("fp32").model is fast.model

    def initialized_then_loaded(build, state, device="cpu", source=""):
        module = build()
        module.load_state_dict(state)
        return module.to(device).eval()

    monkeypatch.setattr(networks, "with_weights", initialized_then_loaded)
    slow = Predictor.from_bundle(bundles["shift"])
    assert not next(slow.model.parameters()).is_meta
    a, b, c = fast.predict(img), slow.predict(img), fast.with_precision("fp32").predict(img)
    for r in (b, c):
        assert np.array_equal(a.logits, r.logits) and np.array_equal(a.heatmaps, r.heatmaps)
        assert np.array_equal(a.attention, r.attention) and a.align_params == r.align_params
