"""Provenance: a bundle's model card says what it was trained on; a phantom-trained bundle run on an image that
`cianet synth` did not write warns once per run, marks every record's `domain` and the overlay."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import make_run


def as_phantom(root: Path, backgrounds: str | None = None) -> None:
    """Mark a data root as a `cianet synth` folder (its synth_meta.json; the tiny chests are not square, so
    no size is recorded and only the folder counts)."""
    (root / "synth_meta.json").write_text(
        json.dumps({"args": {"seed": 0, "backgrounds": backgrounds}, "summary": {"images": 10}})
    )


@pytest.fixture(scope="module")
def phantom_bundle(tmp_path_factory) -> dict:
    from cianet.inference.bundle import bundle_from_run
    from cianet.run.bundle_file import save_bundle

    tmp = tmp_path_factory.mktemp("prov")
    run, _ = make_run(tmp, kind="cianet")
    root = tmp / "data"
    as_phantom(root)
    path = save_bundle(bundle_from_run(run, n_negatives=20, progress=False), tmp / "phantom.cianet")
    return {"tmp": tmp, "root": root, "bundle": path}


def test_data_root_kinds(tmp_path):
    from cianet.inference.domain import data_root_kind, input_domain, input_kind

    assert data_root_kind(tmp_path / "absent")[0] == "unknown"
    assert data_root_kind(tmp_path)[0] == "real"
    as_phantom(tmp_path)
    assert data_root_kind(tmp_path)[0] == "phantom"
    semi = tmp_path / "semi"
    semi.mkdir()
    as_phantom(semi, backgrounds="bg")
    assert data_root_kind(semi)[0] == "semi-synthetic"
    (tmp_path / "images").mkdir()
    inside = tmp_path / "images" / "a.png"
    assert input_kind(inside) == "phantom" and input_kind(tmp_path / "elsewhere" / "a.png") == "phantom"
    assert input_kind(tmp_path.parent / "x.png") == "other" and input_kind(None) == "unknown"
    # a phantom-trained model: a semi-synthetic image is out of domain too; a real-trained one is not checked
    assert input_domain({"kind": "phantom"}, semi / "images" / "b.png")["in_domain"] is False
    assert input_domain({"kind": "phantom"}, inside)["in_domain"] is True
    assert input_domain({"kind": "real"}, inside)["in_domain"] is None
    sized = tmp_path / "sized"
    (sized / "images").mkdir(parents=True)
    (sized / "synth_meta.json").write_text(json.dumps({"args": {"size": 256}}))
    assert input_kind(sized / "images" / "c.png", (256, 256)) == "phantom"
    assert input_kind(sized / "images" / "c.png", (1024, 1024)) == "other"  # not what that synth wrote


@pytest.mark.slow  # builds a bundle (~5 s)
def test_card_and_bundle_info_name_the_phantom(phantom_bundle, capsys):
    from cianet.cli import main
    from cianet.labels import LABELS
    from cianet.run.bundle_file import load_bundle

    data = load_bundle(phantom_bundle["bundle"])["card"]["training_data"]
    assert data["kind"] == "phantom" and data["name"].startswith("cianet synth phantom")
    assert data["images"] == 10 and data["labels"] == list(LABELS) and data["dataset"] == "nih"  # "auto" resolved
    assert main(["bundle", "info", str(phantom_bundle["bundle"])]) == 0
    out = capsys.readouterr().out
    assert "training data set: phantom" in out and "ships no weights for real X-rays" in out


def predict(bundle: Path, inputs: list[str], out: Path, capsys) -> tuple[str, dict[str, dict]]:
    from cianet.cli import main

    assert main(["predict", *inputs, "--model", str(bundle), "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    recs = {
        p.stem: json.loads(p.read_text())
        for p in out.glob("*.json")
        if p.name not in ("summary.json", "coco.json", "coco_results.json") and not p.name.startswith(".")
    }
    return err, recs


@pytest.mark.slow  # builds a bundle and predicts (~8 s)
def test_phantom_bundle_on_other_images_warns_once(phantom_bundle, tmp_path, capsys):
    root = phantom_bundle["root"]
    phantoms = sorted((root / "images").glob("*.png"))[:2]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for i, src in enumerate(phantoms):  # the same pixels, no longer inside a synth folder
        shutil.copy(src, foreign / f"copy{i}.png")
    rng = np.random.default_rng(0)  # not phantom-like at all
    Image.fromarray(rng.integers(0, 255, (120, 100), dtype=np.uint8)).save(foreign / "noise.png")
    err, recs = predict(phantom_bundle["bundle"], [str(foreign)], tmp_path / "out", capsys)
    warnings = [line for line in err.splitlines() if "warning: this model was trained on a phantom" in line]
    assert len(warnings) == 1 and "3 of 3 inputs" in warnings[0]
    assert {r["domain"]["in_domain"] for r in recs.values()} == {False}
    assert all(r["domain"]["training_data"] == "phantom" for r in recs.values())
    # the overlay's title line turns into the red banner
    top = np.asarray(Image.open(tmp_path / "out" / "noise.overlay.png").convert("RGB"))[2:20, 2:40]
    assert (np.abs(top.astype(int) - (176, 0, 32)).max(axis=-1) < 10).mean() > 0.5
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["out_of_domain"] == 3 and summary["training_data"]["kind"] == "phantom"
    # the page: a banner, and every card marked
    from cianet.evaluation.viewer import build_site

    page = build_site([tmp_path / "out"], tmp_path / "site", progress=False).index.read_text()
    data = json.loads(page.split('id="cianet-data">', 1)[1].split("</script>", 1)[0])
    assert len(data["banners"]) == 1 and "3 of 3 images" in data["banners"][0]
    assert "trained on a phantom data set only" in data["banners"][0]
    assert {it["domain"]["in_domain"] for it in data["items"]} == {False}

    err, recs = predict(phantom_bundle["bundle"], [str(p) for p in phantoms], tmp_path / "in", capsys)
    assert "warning: this model was trained" not in err
    assert {r["domain"]["in_domain"] for r in recs.values()} == {True}
    top = np.asarray(Image.open(next((tmp_path / "in").glob("*.overlay.png"))).convert("RGB"))[2:20, 2:40]
    assert (np.abs(top.astype(int) - (176, 0, 32)).max(axis=-1) < 10).mean() == 0


@pytest.mark.slow  # builds a bundle and predicts (~8 s)
def test_phantom_bundle_on_a_real_nih_png(phantom_bundle, nih_sample_dir, tmp_path, capsys):
    real = sorted((nih_sample_dir / "images").glob("*.png"))[:1]
    err, recs = predict(phantom_bundle["bundle"], [str(p) for p in real], tmp_path / "out", capsys)
    assert sum("warning: this model was trained on a phantom" in line for line in err.splitlines()) == 1
    (rec,) = recs.values()
    assert rec["domain"] == {"training_data": "phantom", "input": "other", "in_domain": False}
