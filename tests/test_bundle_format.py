"""The bundle on disk: safetensors with a JSON header readable without torch, a model card, nothing private
(no local paths, no training image names), and format-1 bundles that still load."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import synthetic_chest

pytestmark = pytest.mark.slow  # every test reads the module's bundle, built from a run (seconds)


@pytest.fixture(scope="module")
def built(tmp_path_factory, chest_models) -> dict:
    from cianet.inference.bundle import bundle_from_run
    from cianet.run.bundle_file import save_bundle

    tmp = tmp_path_factory.mktemp("bfmt")
    shared, images = chest_models.run("shift")  # CIA-Net aligned with a known shift
    run = Path(shutil.copytree(shared, tmp / shared.name))  # a copy, to be given metrics; its data stays shared
    (run / "metrics.json").write_text(
        json.dumps(
            {
                "auc": {"Mass": 0.7, "Mean": 0.625},
                "n_images": 2,
                "n_boxes": 1,
                "localization": {"0.5": {"Mass": 1.0, "Mean": 0.5}},
            }
        )
    )
    bundle = bundle_from_run(run, n_negatives=100, progress=False, card_name="chest-demo", card_version="3")
    path = save_bundle(bundle, tmp / "m.cianet")
    # the copied config still names the shared data root and alignment: neither folder may show in the file
    return {"tmp": tmp, "run": run, "images": images, "bundle": bundle, "path": path, "shared": chest_models.root}


def plain_header(path: Path) -> dict:
    """The documented layout, parsed with struct and json only."""
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + n])


def test_header_is_plain_json_with_the_card_and_no_private_data(built):
    raw = plain_header(built["path"])
    meta = raw["__metadata__"]
    assert meta["format"] == "cianet-model-bundle" and meta["format_version"] == "2"
    header = json.loads(meta["cianet"])
    card = header["card"]
    assert card["name"] == "chest-demo" and card["version"] == "3" and card["clinical_use"] is False
    assert "not for clinical use" in card["notice"]
    split = json.loads((built["run"] / "split.json").read_text())
    assert card["training_data"]["train_images"] == len(split["train"])
    assert card["training_data"]["test_images"] == len(split["test"])
    assert card["metrics"]["auc_mean"] == 0.625 and card["metrics"]["localization_mean"] == {"0.5": 0.5}
    assert card["thresholds"] == dict(zip(header["labels"], header["thresholds"]))
    # tensors are described in the header too: the model's weights and the bank (codes and maps only)
    assert (
        raw["negatives.maps"]["shape"][0] == header["negatives"]["count"] == len(built["bundle"]["negatives"]["names"])
    )
    assert "negatives.images" not in raw and any(k.startswith("alignment.") for k in raw)
    # Nothing private anywhere in the file: no local absolute path, no training image name nor its stem (NIH
    # names carry the patient id); one scan for all of them, where `in` rescans the file's megabytes per text.
    private = [str(built["tmp"]), str(built["shared"])]
    private += [text for name in built["images"] for text in (name, Path(name).stem)]
    found = re.search(b"|".join(re.escape(text.encode()) for text in private), built["path"].read_bytes())
    assert found is None, found
    assert not re.search(r'"/[^"]*/', json.dumps(header))  # nor any absolute path in the header's values
    assert header["config"]["data"]["data_root"] == "data" and header["config"]["run"]["out"] == built["run"].name
    assert header["config"]["align"]["checkpoint"] == "align.pt"


def test_header_reader_needs_no_torch(built):
    code = (
        "import sys; from cianet.run.bundle_format import read_header; "
        f"h = read_header({str(built['path'])!r}); "
        "assert 'torch' not in sys.modules, 'torch imported'; print(h['bundle']['card']['name'])"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "chest-demo"


def test_saved_bundle_predicts_as_the_in_memory_one(built):
    from cianet.inference.predictor import Predictor
    from cianet.run.bundle_file import load_bundle

    loaded = load_bundle(built["path"])
    for k, v in built["bundle"]["model"].items():
        assert torch.equal(loaded["model"][k], v), k
    img = synthetic_chest(np.random.default_rng(5), lesion=True)
    a = Predictor(built["bundle"], precision="fp32").predict(img)
    b = Predictor.from_bundle(built["path"], precision="fp32").predict(img)
    assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)
    np.testing.assert_allclose(a.heatmaps, b.heatmaps, atol=1e-6)
    assert b.negative.startswith("negative-")


def test_format_1_bundles_still_load_and_info_says_so(built, tmp_path, capsys):
    from cianet.cli import main
    from cianet.inference.predictor import Predictor
    from cianet.run.bundle_file import load_bundle

    old = dict(built["bundle"], format_version=1)
    old.pop("card")
    torch.save(old, tmp_path / "old.cianet")
    b = load_bundle(tmp_path / "old.cianet")
    assert b["negatives"]["names"] == built["bundle"]["negatives"]["names"]
    img = synthetic_chest(np.random.default_rng(6))
    p_old = Predictor.from_bundle(tmp_path / "old.cianet", precision="fp32").predict(img).probabilities
    p_new = Predictor.from_bundle(built["path"], precision="fp32").predict(img).probabilities
    assert p_old == pytest.approx(p_new, abs=1e-6)
    assert main(["bundle", "info", str(tmp_path / "old.cianet")]) == 0
    out = capsys.readouterr().out
    assert "format-1 bundle" in out and "rebuild it" in out
    assert main(["bundle", "info", str(built["path"])]) == 0
    out = capsys.readouterr().out
    assert out.startswith("chest-demo (version 3)") and "not for clinical use" in out and "mean AUC 0.625" in out
    assert main(["bundle", "info", str(built["path"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["card"]["name"] == "chest-demo"


def test_damaged_bundles_are_refused_by_name(built, tmp_path, capsys):
    from cianet.cli import main
    from cianet.run.bundle_file import load_bundle

    cut = tmp_path / "cut.cianet"
    cut.write_bytes(built["path"].read_bytes()[:-1000])
    with pytest.raises(ValueError, match="cut.cianet"):
        load_bundle(cut)
    head = tmp_path / "head.cianet"
    head.write_bytes(built["path"].read_bytes()[:200])
    with pytest.raises(ValueError, match="head.cianet"):
        load_bundle(head)
    assert main(["bundle", "info", str(tmp_path / "absent.cianet")]) == 2
    assert main(["bundle", "info"]) == 2 and "needs the bundle FILE" in capsys.readouterr().err
