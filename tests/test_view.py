"""`cianet predict`'s standard outputs (heatmaps in the image frame, COCO files, model stamps) and `cianet view`
(the static page, its data, and the page as a real headless browser runs it)."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import TinyImage, synthetic_chest, write_nih

BOX = (20, 30, 24, 20)  # the true Nodule box of the second image (x, y, w, h)


def strict_load(path: Path):
    """json.loads that refuses NaN/Infinity (as strict parsers do)."""

    def refuse(token):
        raise AssertionError(f"{path}: non-standard JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def predicted(chest_models, tmp_path_factory) -> dict:
    """A bundle (alignment shift tx = 0.25, every class's boxes reported) run over a small NIH-layout folder
    whose index gives the ground truth; returns paths and the in-memory results."""
    from cianet.inference.batch import predict_files
    from cianet.inference.bundle import bundle_from_run
    from cianet.run.bundle_file import save_bundle

    tmp = tmp_path_factory.mktemp("view")
    run, _ = chest_models.run("shift")  # conftest's, read-only: the bundle is made from it, not into it
    imgs = [np.rint(synthetic_chest(np.random.default_rng(s), lesion=s == 2) * 255).astype(np.uint8) for s in (1, 2, 3)]
    bundle = bundle_from_run(run, n_negatives=100, progress=False, thresholds=0.0)
    # An untrained head puts few cells above 0.5: shift each class's bias by minus its median test-grid logit
    # on these images, so that about half the cells (some regions, not the whole image) become boxes.
    from cianet.inference.predictor import Predictor

    logits = Predictor(bundle).forward(np.stack([im[:64, :64] / 255.0 for im in imgs]), ["a", "b", "c"])["test_logits"]
    bundle["model"]["head.cls.bias"] -= logits.transpose(0, 1).reshape(14, -1).median(dim=1).values
    bundle = save_bundle(bundle, tmp / "m.cianet")
    truth = tmp / "truth"
    write_nih(
        truth,
        [
            TinyImage("00000101_000.png", imgs[0], "No Finding", 101),
            TinyImage("00000102_000.png", imgs[1], "Nodule", 102, box=BOX),
            TinyImage("00000103_000.png", imgs[2], "Effusion|Mass", 103),
        ],
    )
    out = tmp / "pred"
    res = predict_files([str(truth / "images")], bundle, out, batch_size=2, progress=False, overlay=False)
    assert res.predicted == 3
    return {"tmp": tmp, "run": run, "bundle": bundle, "truth": truth, "out": out}


@pytest.mark.slow  # builds a bundle and predicts (~12 s, shared)
def test_records_name_the_model_and_are_strict_json(predicted):
    import cianet

    out = predicted["out"]
    sha = hashlib.sha256(predicted["bundle"].read_bytes()).hexdigest()
    for stem in ("00000101_000", "00000102_000", "00000103_000"):
        rec = strict_load(out / f"{stem}.json")
        assert rec["cianet_version"] == cianet.__version__
        assert rec["model"]["sha256"] == sha and rec["model"]["kind"] == "cianet"
        assert rec["model"]["id"] and rec["model"]["version"]
    summary = strict_load(out / "summary.json")
    assert summary["model"]["sha256"] == sha and "/" not in summary["bundle"]
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert {r["model"] for r in rows} == {f"{summary['model']['id']}@{summary['model']['version']}"}


@pytest.mark.slow  # builds a bundle and predicts (~12 s, shared)
def test_coco_files_hold_every_box_with_its_category(predicted):
    from cianet.labels import LABELS

    out = predicted["out"]
    dataset, results = strict_load(out / "coco.json"), strict_load(out / "coco_results.json")
    assert [c["name"] for c in sorted(dataset["categories"], key=lambda c: c["id"])] == list(LABELS)
    assert [c["id"] for c in dataset["categories"]] == list(range(1, 15))
    images = {im["id"]: im for im in dataset["images"]}
    assert sorted(Path(im["file_name"]).name for im in images.values()) == [
        "00000101_000.png",
        "00000102_000.png",
        "00000103_000.png",
    ]
    assert all((im["width"], im["height"]) == (80, 96) for im in images.values())
    boxes = list(csv.DictReader(open(out / "boxes.csv")))
    assert len(boxes) == len(results) == len(dataset["annotations"]) > 0  # thresholds 0: boxes are reported
    got = sorted(
        (
            Path(images[r["image_id"]]["file_name"]).name,
            LABELS[r["category_id"] - 1],
            *np.round(r["bbox"], 1),
            r["score"],
        )
        for r in results
    )
    want = sorted(
        (Path(b["file"]).name, b["label"], *np.round([float(b[k]) for k in "xywh"], 1), float(b["score"]))
        for b in boxes
    )
    assert [g[:-1] for g in got] == [w[:-1] for w in want]
    assert [g[-1] for g in got] == pytest.approx([w[-1] for w in want], abs=1e-4)  # boxes.csv has 4 decimals
    for a, r in zip(dataset["annotations"], results):
        assert a["bbox"] == r["bbox"] and a["area"] == pytest.approx(r["bbox"][2] * r["bbox"][3], abs=0.05)


@pytest.mark.slow  # builds a bundle and predicts (~12 s, shared)
def test_heatmaps_are_in_the_image_frame(predicted):
    """The region p > 0.5 of each class in the saved (image-frame) heatmap has the bounding box of the predicted
    box, which was mapped through the alignment (shift 0.25) independently."""
    from cianet.inference.result_files import read_heatmaps

    out = predicted["out"]
    checked = 0
    for stem in ("00000101_000", "00000102_000", "00000103_000"):
        rec = strict_load(out / f"{stem}.json")
        z = read_heatmaps(out / rec["heatmaps"])
        assert z["heatmaps"].shape[1:] == (96, 80) and tuple(z["image_size"]) == (80, 96)
        assert z["attention"].shape == (96, 80) and float(z["scale"]) == 1.0
        labels = list(z["labels"])
        for lab in {b["label"] for b in rec["boxes"]}:
            mask = z["heatmaps"][labels.index(lab)] > 0.5
            # the map is float16: cells just above 0.5 may round to 0.5; compare with a one-cell tolerance
            ys, xs = np.nonzero(mask)
            mine = [b for b in rec["boxes"] if b["label"] == lab]
            x0 = min(b["x"] for b in mine)
            x1 = max(b["x"] + b["w"] for b in mine)
            y0 = min(b["y"] for b in mine)
            y1 = max(b["y"] + b["h"] for b in mine)
            if len(xs):
                cell = 80 / 16 + 1
                assert abs(xs.min() - x0) <= cell and abs(xs.max() + 1 - x1) <= cell
                assert abs(ys.min() - y0) <= 96 / 16 + 1 and abs(ys.max() + 1 - y1) <= 96 / 16 + 1
                checked += 1
        # the shift moves content right by 0.25 * W / 2 = 10 px: the first 10 columns map outside the grid
        assert not z["heatmaps"][:, :, :9].any()
    assert checked > 0


def page_data(index: Path) -> dict:
    text = index.read_text()
    m = re.search(r'<script type="application/json" id="cianet-data">(.*?)</script>', text, re.S)
    return json.loads(m.group(1).replace("<\\/", "</"))


@pytest.mark.slow  # builds a bundle and predicts (~12 s, shared)
def test_view_writes_a_self_contained_page(predicted, tmp_path):
    from cianet.cli import main

    site = tmp_path / "site"
    assert (
        main(
            ["view", str(predicted["out"]), "--out", str(site), "--data-root", str(predicted["truth"]), "--no-progress"]
        )
        == 0
    )
    text = (site / "index.html").read_text()
    # No network: no external script, style, image or link; everything the page names is beside it.
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', text) and "<link" not in text
    assert "<script src" not in text
    for ref in re.findall(r'"(img/[^"]+)"', text):
        assert (site / ref).is_file(), ref
    # no local absolute path in a page meant to be mailed (the run the bundle was made from lies elsewhere)
    assert str(predicted["tmp"]) not in text and str(predicted["run"].parent) not in text
    data = page_data(site / "index.html")
    items = {it["name"]: it for it in data["items"]}
    assert sorted(items) == ["00000101_000.png", "00000102_000.png", "00000103_000.png"]
    assert items["00000102_000.png"]["truth"] == {
        "labels": ["Nodule"],
        "boxes": [{"label": "Nodule", "x": 20.0, "y": 30.0, "w": 24.0, "h": 20.0}],
    }
    assert items["00000101_000.png"]["truth"]["labels"] == []
    assert sorted(items["00000103_000.png"]["truth"]["labels"]) == ["Effusion", "Mass"]
    for it in items.values():
        rec = json.loads((predicted["out"] / f"{Path(it['name']).stem}.json").read_text())
        assert it["probabilities"] == pytest.approx(rec["probabilities"]) and it["boxes"] == rec["boxes"]
        with Image.open(site / it["image"]) as im:
            assert im.size == (80, 96)
        assert it["attention"] and "*" in it["heat"]
    assert data["models"][0]["sha256"] == hashlib.sha256(predicted["bundle"].read_bytes()).hexdigest()


def test_view_refuses_a_folder_that_is_no_result(tmp_path, capsys):
    from cianet.cli import main

    (tmp_path / "x").mkdir()
    assert main(["view", str(tmp_path / "x")]) == 2
    assert "neither a `cianet predict` output folder" in capsys.readouterr().err
    assert main(["view", str(tmp_path / "absent")]) == 2


def browser() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip(
            "no headless browser: the viewer's browser test needs Debian's chromium "
            "(apt-get install chromium; .ci/run installs it)"
        )
    return exe


def run_browser(exe: str, *args: str) -> str:
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--allow-file-access-from-files",
        "--virtual-time-budget=5000",
        *args,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


@pytest.mark.slow  # a headless browser run
def test_page_in_a_headless_browser(predicted, tmp_path):
    from cianet.evaluation.viewer import build_site

    exe = browser()
    res = build_site([predicted["out"]], tmp_path / "site", data_root=str(predicted["truth"]), progress=False)
    data = page_data(res.index)
    url = res.index.resolve().as_uri()
    # Filter by a class and a probability, low first, heatmaps hidden: the DOM after the script ran, and a
    # screenshot of that page from the same browser run (one start of chromium instead of two).
    probs = {it["name"]: it["probabilities"]["Nodule"] for it in data["items"]}
    cut = sorted(probs.values())[1]  # keeps two of the three images
    shot = tmp_path / "shot.png"
    dom = run_browser(
        exe,
        "--dump-dom",
        f"--screenshot={shot}",
        "--window-size=1000,1200",
        f"{url}#class=Nodule&min={cut!r}&sort=asc&hide=heat,attention",
    )
    assert 'data-ready="1"' in dom
    cards = re.findall(r'<div class="card" data-name="([^"]+)" data-score="([^"]+)"', dom)
    want = sorted((n for n, p in probs.items() if p >= cut), key=lambda n: probs[n])
    assert [n for n, _ in cards] == want
    assert [float(s) for _, s in cards] == sorted(float(s) for _, s in cards)
    assert f"{len(want)} of 3 images" in dom
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert "hide-heat" in body and "hide-attention" in body and "hide-boxes" not in body
    # Ground truth beside the prediction: the true Nodule box drawn dashed in the truth panel.
    if "00000102_000.png" in want:
        assert re.search(
            r'<rect x="20" y="30" width="24" height="20"[^>]*class="box truth" data-label="Nodule" '
            r"stroke-dasharray",
            dom,
        )
    n_pred = sum(1 for it in data["items"] if it["name"] in want for b in it["boxes"] if b["label"] == "Nodule")
    assert dom.count('class="box pred"') == n_pred
    with Image.open(shot) as im:
        arr = np.asarray(im.convert("L"), np.float32)
    assert arr.shape == (1200, 1000) and arr.std() > 10  # a drawn page, not a blank one


def test_page_data_cannot_break_out_of_its_script_element():
    from cianet.evaluation.viewer import render_page

    evil = "</script><script>alert(1)</script><!-- %STYLE% %SCRIPT%.png"
    page = render_page("t", {"labels": ["A"], "items": [{"name": evil}], "models": [], "notes": [evil]}, "")
    assert page.count("<script") == 2 and "alert(1)</script>" not in page  # the data block and our script only
    data = json.loads(re.search(r'id="cianet-data">(.*?)</script>', page, re.S).group(1))
    assert data["items"][0]["name"] == evil and data["notes"] == [evil]


def test_view_never_deletes_an_img_folder_it_did_not_write(tmp_path, capsys):
    from cianet.cli import main
    from cianet.evaluation.viewer import render_page

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(
        json.dumps({"auc": {"Mass": 0.5, "Mean": 0.5}, "n_images": 1, "n_boxes": 0, "localization": {}})
    )
    site = tmp_path / "site"
    (site / "img").mkdir(parents=True)
    (site / "img" / "holiday.jpg").write_bytes(b"mine")
    assert main(["view", str(run), "--out", str(site), "--no-progress"]) == 2
    assert "did not write" in capsys.readouterr().err and (site / "img" / "holiday.jpg").read_bytes() == b"mine"
    (site / "img" / "holiday.jpg").unlink()
    (site / "index.html").write_text(render_page("old", {"labels": [], "items": [], "models": [], "notes": []}, ""))
    (site / "img" / "0.jpg").write_bytes(b"stale")  # a page of ours: its images are replaced
    assert main(["view", str(run), "--out", str(site), "--no-progress"]) == 0
    assert not (site / "img" / "0.jpg").exists() and "Run run" in (site / "index.html").read_text()


def test_grid_affine_maps_cells_as_the_alignment_maps_boxes():
    from cianet.evaluation.viewer import grid_affine
    from cianet.models.alignment import boxes_to_original

    params, side, size = (0.1, -0.2, 1.1, 0.9, 0.3), 16, (80, 96)
    a = grid_affine(params, side, size)
    cells = np.array([[0, 0, 1, 1], [3, 5, 4, 2], [10, 2, 6, 14]], np.float64)  # (col, row, ncols, nrows)
    want = boxes_to_original(cells, params, (side, side), size)  # bounding boxes of the mapped corners
    for (c, r, w, h), (x, y, bw, bh) in zip(cells, want):
        corners = [(c, r), (c + w, r), (c, r + h), (c + w, r + h)]
        xs = [a[0] * u + a[1] * v + a[2] for u, v in corners]
        ys = [a[3] * u + a[4] * v + a[5] for u, v in corners]
        assert (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)) == pytest.approx((x, y, bw, bh), abs=1e-9)


@pytest.fixture(scope="module")
def evaluated_runs(tiny_nih, tmp_path_factory) -> dict:
    """Two evaluated runs (CIA-Net aligned, the baseline) of one test set: the CIA-Net run evaluated again by
    ``cianet evaluate`` (bootstrap intervals; no plots: drawing them is most of the evaluation's time, and an
    evaluated run's plots on its page are test_evaluate_plots' subject), the baseline as training evaluated it
    (metrics.json and predictions.npz with its test grids), which is all a comparison page reads of it."""
    from cianet.evaluation.evaluate import evaluate_run
    from cianet.training.loop import fit
    from helpers import tiny_config, write_alignment

    tmp = tmp_path_factory.mktemp("runs")
    root = tiny_nih(12)  # conftest's (read-only; test_safety's size): its test split holds a boxed Nodule
    align = str(write_alignment(tmp / "align.pt", tx=0.1))  # regions mapped back through a shift
    # 32 px networks (half the cost of the tiny recipe's 64): the page draws the same 16 x 16 test grids
    settings = dict(optim__epochs=1, align__checkpoint=align, data__image_size=32)
    runs = {kind: fit(tiny_config(tmp / kind, root, model__kind=kind, **settings)) for kind in ("cianet", "baseline")}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("cianet.evaluation.evaluate.write_evaluation_plots", lambda *a, **k: {})
        evaluate_run(runs["cianet"], device="cpu", progress=False, n_boot=50)
    return runs


@pytest.mark.slow  # evaluates two tiny runs and opens the page in a headless browser
def test_run_page_draws_predicted_regions_in_a_headless_browser(evaluated_runs, tmp_path):
    """The target: an evaluated run's page shows each test card's predicted regions (cells above the slider's
    threshold, mapped through the alignment), as many as cianet predict's region rule gives from the stored grid."""
    from cianet.evaluation.viewer import build_site
    from cianet.inference.predictor import boxes_from_heatmap
    from cianet.run.scoring import read_predictions

    exe = browser()
    run = evaluated_runs["cianet"]
    pred = read_predictions(run)
    assert pred["grids"].dtype == np.uint8 and pred["grids"].shape[1:] == (8, 16, 16)
    assert np.abs(pred["grid_params"][:, 0] - 0.1).max() < 1e-4  # the alignment's shift, kept per image
    assert sorted(str(n) for n in pred["grid_names"]) == sorted(str(n) for n in pred["names"])
    res = build_site([run], tmp_path / "site", progress=False)
    data = page_data(res.index)
    k = 5  # Nodule
    t = (float(np.median(pred["grids"][:, k])) - 0.5) / 255  # about half the cells or more: regions on the cards
    want = 0
    for it in data["items"]:
        (r,) = it["runs"]
        assert r["run"] == run.name and r["grid"]["classes"][k] == "Nodule"
        g = pred["grids"][[str(n) for n in pred["grid_names"]].index(it["name"])][k] / 255.0
        params = pred["grid_params"][[str(n) for n in pred["grid_names"]].index(it["name"])]
        want += len(boxes_from_heatmap(g, (it["width"], it["height"]), tuple(params), t, 8))
    assert want > 0, np.unique(pred["grids"][:, k])
    dom = run_browser(exe, "--dump-dom", f"{res.index.resolve().as_uri()}#class=Nodule&cell={t!r}")
    assert 'data-ready="1"' in dom
    assert dom.count('class="box region"') == want
    assert dom.count('<canvas class="heat"') == len(data["items"])  # a heatmap on every card
    assert "Trained on real X-rays" in dom or "Trained and tested" in dom or "Run " in dom
    # the ground truth's IoU sits beside the region it refers to: on the same panel
    assert re.search(r'class="box truth" data-label="Nodule"', dom) and "true Nodule IoU" in dom


@pytest.mark.slow  # evaluates two tiny runs (shared fixture)
def test_two_runs_share_one_card_per_image_and_a_comparison_table(evaluated_runs, tmp_path):
    from cianet.evaluation.viewer import build_site

    res = build_site([evaluated_runs["cianet"], evaluated_runs["baseline"]], tmp_path / "site", progress=False)
    data = page_data(res.index)
    names = [it["name"] for it in data["items"]]
    assert len(names) == len(set(names)) > 1  # every test image once
    for it in data["items"]:
        assert [r["run"] for r in it["runs"]] == [evaluated_runs["cianet"].name, evaluated_runs["baseline"].name]
    text = res.index.read_text()
    assert "Runs compared" in text and text.count("<tr>") >= 3
    m = json.loads((evaluated_runs["cianet"] / "metrics.json").read_text())
    lo = m["ci"]["auc"]["low"]
    if lo is not None:
        assert f"[{lo:.3f}," in text


def test_unevaluated_run_offers_the_evaluate_command(tmp_path, capsys):
    from cianet.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"x")
    assert main(["view", str(run)]) == 2
    assert f"cianet evaluate --run {run}" in capsys.readouterr().err
    assert not (run / "site").exists()  # nothing left behind to block the retry
