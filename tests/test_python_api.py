"""The Python API in a notebook: predict a file, a list or a folder; heatmaps in the image frame; a DataFrame;
the overlay as the result's own picture; one warning when a phantom-trained model reads another kind of image."""

from __future__ import annotations

import io
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def setup(tmp_path_factory, chest_models) -> dict:
    from cianet.config import load_config, save_config
    from cianet.inference.bundle import bundle_from_run
    from cianet.inference.predictor import Predictor
    from cianet.run.bundle_file import save_bundle
    from cianet.run.checkpoints import load_checkpoint, save_checkpoint

    tmp = tmp_path_factory.mktemp("api")
    shared, _ = chest_models.run("shift")  # CIA-Net aligned with a known shift
    # A copy of the run moved to a copy of its data root marked as a `cianet synth` folder (a phantom set): the
    # bundle's model card reads the data root of the checkpoint's config.
    root = Path(shutil.copytree(load_config(shared / "config.yaml").data.data_root, tmp / "data"))
    run = Path(shutil.copytree(shared, tmp / shared.name))
    ckpt = load_checkpoint(run)
    ckpt["config"]["data"]["data_root"] = str(root)
    save_checkpoint(ckpt, run / "checkpoint.pt")
    save_config(load_config(run / "config.yaml", [f"data.data_root={root}"]), run / "config.yaml")
    (root / "synth_meta.json").write_text(json.dumps({"args": {"seed": 0}, "summary": {"images": 10}}))
    path = save_bundle(bundle_from_run(run, n_negatives=20, progress=False, thresholds=0.0), tmp / "m.cianet")
    return {"pred": Predictor.from_bundle(path), "images": root / "images", "path": path}


@pytest.mark.slow  # builds a bundle (~5 s, shared)
def test_predict_takes_a_file_a_list_or_points_to_predict_folder(setup):
    from cianet.errors import UsageError

    pred, folder = setup["pred"], setup["images"]
    files = sorted(folder.glob("*.png"))
    one = pred.predict(str(files[0]))
    several = pred.predict([str(f) for f in files[:3]])
    assert isinstance(several, list) and len(several) == 3
    assert several[0].probabilities == pytest.approx(one.probabilities, abs=1e-6)
    with pytest.raises(UsageError, match="predict_folder"):
        pred.predict(str(folder))
    every = pred.predict_folder(folder)
    assert [r.source for r in every] == [str(f) for f in files]
    assert every[1].probabilities == pytest.approx(several[1].probabilities, abs=1e-6)


@pytest.mark.slow  # builds a bundle (~5 s, shared)
def test_heatmaps_in_the_image_frame_and_a_dataframe(setup, tmp_path):
    from cianet.inference.result_files import frame_size, read_heatmaps, write_heatmaps

    pred = setup["pred"]
    res = pred.predict(str(sorted(setup["images"].glob("*.png"))[1]))
    k = pred.box_labels.index("Nodule")
    heat = res.heatmap("Nodule")
    w, h = frame_size(res.image_size)
    assert heat.shape == (h, w) and res.image_size == (80, 96)  # the file's aspect, not the square grid
    write_heatmaps(tmp_path / "h.npz", res, pred.box_labels)  # what cianet predict writes for the same result
    assert heat == pytest.approx(read_heatmaps(tmp_path / "h.npz")["heatmaps"][k], abs=1e-3)
    assert res.heatmap() == pytest.approx(np.max([res.heatmap(lab) for lab in pred.box_labels], axis=0))
    assert np.array_equal(res.heatmap("Nodule", frame="grid"), res.heatmaps[k])
    df = res.to_dataframe()
    assert list(df["class"]) == list(res.probabilities)
    assert df.set_index("class")["probability"].to_dict() == pytest.approx(res.probabilities)
    assert df["boxes"].sum() == len(res.boxes) and df["box_class"].sum() == len(pred.box_labels)


@pytest.mark.slow  # builds a bundle (~5 s, shared)
def test_a_result_shows_itself_as_its_overlay(setup):
    from cianet.inference.overlay import overlay_layout

    pred = setup["pred"]
    big = np.rint(np.random.default_rng(0).random((1200, 1000)) * 255).astype(np.uint8)
    res = pred.predict(big)
    assert res.image.dtype == np.uint8 and max(res.image.shape) == 512  # a preview, not the full image
    png = res._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(png)) as im:
        assert im.size == overlay_layout((427, 512), len(pred.box_labels)).size
    assert res.overlay_image().size == im.size


@pytest.mark.slow  # builds a bundle (~5 s, shared)
def test_one_domain_warning_per_predictor(setup):
    from cianet.inference.notebook import DomainWarning
    from cianet.inference.predictor import Predictor

    pred = Predictor.from_bundle(setup["path"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pred.predict(str(sorted(setup["images"].glob("*.png"))[0]))  # a phantom image: in domain
        assert not [w for w in caught if issubclass(w.category, DomainWarning)]
        r = pred.predict(np.zeros((64, 64), np.uint8))  # in memory: not known to be a phantom
        pred.predict(np.zeros((64, 64), np.uint8))
    found = [w for w in caught if issubclass(w.category, DomainWarning)]
    assert len(found) == 1 and "phantom" in str(found[0].message)
    assert r.domain["in_domain"] is False
