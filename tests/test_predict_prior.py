"""Prediction against the patient's prior study: ``Predictor.predict(image, prior=...)``, ``cianet predict
--prior FILE`` and ``--priors CSV``; the bank stays the fallback and every record names the negative it used."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import synthetic_chest


@pytest.fixture(scope="module")
def bundles(chest_models) -> dict[str, Path]:
    """CIA-Net with an alignment (a known shift), CIA-Net without, and the baseline."""
    return {key: chest_models.bundle(key) for key in ("shift", "plain", "base")}


@pytest.fixture(scope="module")
def films(tmp_path_factory) -> dict[str, Path]:
    """An image with a lesion and two finding-free films (its prior and another), as PNG files."""
    folder = tmp_path_factory.mktemp("films")
    out = {}
    for name, seed, lesion in (("now", 11, True), ("prior", 12, False), ("other", 13, False)):
        u8 = np.rint(synthetic_chest(np.random.default_rng(seed), lesion=lesion) * 255).astype(np.uint8)
        Image.fromarray(u8).save(folder / f"{name}.png")
        out[name] = folder / f"{name}.png"
    return out


@pytest.mark.slow
@pytest.mark.parametrize("key", ["shift", "plain"])
def test_a_prior_is_contrasted_as_a_bank_of_that_one_film_would_be(bundles, films, key):
    """Reference: a bundle whose bank holds only the prior (built by the bundle's own code) predicts the image
    exactly as the prior given at predict time does."""
    from cianet.data.io import load_xray, resize_gray, to_uint8
    from cianet.inference.bundle import negative_bank
    from cianet.inference.predictor import Predictor
    from cianet.run.bundle_file import load_bundle

    pred = Predictor.from_bundle(bundles[key])
    got = pred.predict(films["now"], prior=films["prior"])
    assert (got.negative, got.negative_source) == (str(films["prior"]), "prior")
    assert got.to_dict()["negative"] == str(films["prior"]) and got.to_dict()["negative_source"] == "prior"

    prior_u8 = to_uint8(resize_gray(load_xray(films["prior"]), pred.input_size))
    bundle = load_bundle(bundles[key])
    bundle["negatives"] = negative_bank(pred.model, prior_u8[None], ["the-prior"], pred.align_net)
    ref = Predictor(bundle).predict(films["now"])
    assert ref.negative == "the-prior"
    np.testing.assert_allclose(got.logits, ref.logits, atol=1e-4)
    np.testing.assert_allclose(got.attention, ref.attention, atol=1e-4)

    fallback = pred.predict(films["now"])  # no prior: the bank, as before
    assert fallback.negative in pred.bank_names and fallback.negative_source == "bank"
    assert not np.allclose(fallback.logits, got.logits, atol=1e-4)  # the prior changed the contrast
    other = pred.predict(films["now"], prior=films["other"])
    assert other.negative == str(films["other"]) and not np.allclose(other.logits, got.logits, atol=1e-4)
    # in memory too, and in a batch where one image has a prior and one has none
    arr = np.asarray(Image.open(films["prior"]))
    mem = pred.predict(films["now"], prior=arr)
    assert mem.negative == "prior-array-0" and np.allclose(mem.logits, got.logits, atol=1e-5)
    both = pred.predict_batch([films["now"], films["now"]], priors=[films["prior"], None])
    assert [r.negative_source for r in both] == ["prior", "bank"]
    np.testing.assert_allclose(both[0].logits, got.logits, atol=1e-4)  # batched: float32 rounding
    np.testing.assert_allclose(both[1].logits, fallback.logits, atol=1e-4)


@pytest.mark.slow
def test_recompute_mode_uses_the_prior_too(bundles, films):
    from cianet.inference.predictor import Predictor

    bank = Predictor.from_bundle(bundles["shift"]).predict(films["now"], prior=films["prior"])
    again = Predictor.from_bundle(
        bundles["shift"], mode="recompute", negative_images=lambda name: np.zeros((8, 8), np.float32)
    )
    res = again.predict(films["now"], prior=films["prior"])
    assert res.negative_source == "prior"
    np.testing.assert_allclose(res.logits, bank.logits, atol=1e-4)


def test_prior_errors_name_the_file(bundles, films, tmp_path):
    from cianet.errors import InputError, MissingPathError, UsageError
    from cianet.inference.predictor import Predictor

    pred = Predictor.from_bundle(bundles["plain"])
    with pytest.raises(MissingPathError, match="prior study of .*now.png .*nope.png does not exist"):
        pred.predict(films["now"], prior=tmp_path / "nope.png")
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    with pytest.raises(InputError, match="broken.png cannot be read"):
        pred.predict(films["now"], prior=broken)
    with pytest.raises(UsageError, match="is the image itself"):
        pred.predict(films["now"], prior=films["now"])
    with pytest.raises(UsageError, match="baseline model takes no negative"):
        Predictor.from_bundle(bundles["base"]).predict(films["now"], prior=films["prior"])


@pytest.mark.slow
def test_predict_cli_prior_and_priors_table(bundles, films, tmp_path, capsys):
    from cianet.cli import main

    out = tmp_path / "one"
    argv = [
        "predict",
        str(films["now"]),
        "--prior",
        str(films["prior"]),
        "--model",
        str(bundles["shift"]),
        "--out",
        str(out),
        "--no-progress",
        "--no-overlay",
        "--no-heatmaps",
        "--json",
    ]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["negatives"] == [
        {"file": str(films["now"]), "negative": str(films["prior"]), "negative_source": "prior"}
    ]
    record = json.loads((out / "now.json").read_text())
    assert (record["negative"], record["negative_source"]) == (str(films["prior"]), "prior")

    # errors, each one line naming the file, exit 2, nothing predicted
    for prior, message in (
        (tmp_path / "missing.png", "missing.png does not exist"),
        (films["now"], "is the image itself"),
    ):
        bad = [*argv[:3], str(prior), *argv[4:6], "--out", str(tmp_path / "bad"), *argv[8:]]
        assert main(bad) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad" / "predictions.csv").exists()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG garbage")
    assert main([*argv[:3], str(broken), *argv[4:6], "--out", str(tmp_path / "bad2"), *argv[8:]]) == 2
    assert "broken.png cannot be read" in capsys.readouterr().err
    base = [*argv[:5], str(bundles["base"]), "--out", str(tmp_path / "base"), *argv[8:]]
    assert main(base) == 2 and "takes no negative" in capsys.readouterr().err

    # a folder with a table: two images with their priors (relative paths), one without (the bank)
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ("a", "b", "c"):
        (folder / f"{name}.png").write_bytes(films["now"].read_bytes())
    (folder / "old.png").write_bytes(films["prior"].read_bytes())
    table = tmp_path / "priors.csv"
    table.write_text("image,prior\nfolder/a.png,folder/old.png\nfolder/b.png," + str(films["other"]) + "\n")
    out = tmp_path / "many"
    assert (
        main(
            [
                "predict",
                str(folder / "a.png"),
                str(folder / "b.png"),
                str(folder / "c.png"),
                "--priors",
                str(table),
                "--model",
                str(bundles["plain"]),
                "--out",
                str(out),
                "--no-progress",
                "--no-overlay",
                "--no-heatmaps",
            ]
        )
        == 0
    )
    rows = {Path(r["file"]).name: r for r in csv.DictReader(open(out / "predictions.csv"))}
    assert rows["a.png"]["negative"] == str(tmp_path / "folder" / "old.png")
    assert rows["b.png"]["negative"] == str(films["other"])
    assert [rows[n]["negative_source"] for n in ("a.png", "b.png", "c.png")] == ["prior", "prior", "bank"]
    assert rows["c.png"]["negative"] and rows["c.png"]["negative"] != rows["a.png"]["negative"]
    capsys.readouterr()
    table.write_text("image,prior\nfolder/a.png,folder/gone.png\n")
    assert (
        main(
            [
                "predict",
                str(folder),
                "--priors",
                str(table),
                "--model",
                str(bundles["plain"]),
                "--out",
                str(tmp_path / "gone"),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "priors.csv line 2: prior study" in capsys.readouterr().err
    table.write_text("file,before\nfolder/a.png,folder/old.png\n")
    assert (
        main(
            [
                "predict",
                str(folder),
                "--priors",
                str(table),
                "--model",
                str(bundles["plain"]),
                "--out",
                str(tmp_path / "head"),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "the first line must be the header image,prior" in capsys.readouterr().err
