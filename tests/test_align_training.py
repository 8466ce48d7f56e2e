"""Alignment training and measurement end to end: bounds from the canonical crop stored in align.pt (and old
checkpoints without them), every loss term logged, resume, and `cianet align-eval` on a small phantom."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import local_paths, tiny_config, write_alignment

OLD_BOUNDS = {"center": [0.0, 0.0, 1.0, 1.0, 0.0], "max_shift": 0.4, "max_scale": 1.4, "max_rotation": 0.35}


@pytest.fixture(scope="module")
def canonical(tiny_root, tmp_path_factory):
    from cianet.data.canonical import make_canonical

    out = tmp_path_factory.mktemp("canonical") / "canonical.png"
    make_canonical(tiny_root, out, n=20, size=64, crop=(6, 4, 58, 50), progress=False)
    return out


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from cianet.phantom.generator import generate_dataset

    root = tmp_path_factory.mktemp("phantom_align")
    generate_dataset(root, n_images=24, size=64, seed=11, progress=False)
    return root


def _align_config(out, root, canonical, **over):
    settings = {
        "align__canonical": str(canonical),
        "align__input_size": 32,
        "align__epochs": 1,
        "align__batch_size": 8,
        "align__max_images": 8,  # one batch an epoch: the cheapest run with epochs to log, kill and resume
        "align__feature_net": "resnet18",
        **over,
    }
    return tiny_config(out, root, **settings)


def test_read_canonical_crop(canonical, tmp_path):
    from cianet.data.canonical import read_canonical_crop
    from cianet.errors import InputError

    assert read_canonical_crop(canonical) == ((6, 4, 58, 50), 64)
    assert read_canonical_crop(tmp_path / "hand_made.png") is None
    (tmp_path / "bad.json").write_text(json.dumps({"crop": [5, 5, 2, 9], "size": 64}))
    with pytest.raises(InputError, match="bad.json"):
        read_canonical_crop(tmp_path / "bad.png")


def test_net_kwargs_centre_on_the_crop(canonical, tmp_path, capsys):
    from cianet.models.alignment import crop_params
    from cianet.run.networks import alignment_net_kwargs

    cfg = _align_config(tmp_path, "", canonical)
    kw = alignment_net_kwargs(cfg)
    assert kw["center"] == pytest.approx(list(crop_params((6, 4, 58, 50), 64)))
    assert (kw["max_shift"], kw["max_scale"], kw["max_rotation"]) == (0.4, 1.4, 0.35)
    cfg.align.center = "identity"
    kw = alignment_net_kwargs(cfg)
    assert kw["center"] == [0, 0, 1, 1, 0] and kw["max_scale"] == pytest.approx(1.4 * 64 / 46)
    hand = tmp_path / "hand.png"
    hand.write_bytes(canonical.read_bytes())  # no crop record beside it
    cfg.align.canonical, cfg.align.center = str(hand), "crop"
    assert alignment_net_kwargs(cfg)["center"] == [0, 0, 1, 1, 0]
    assert "centred on the identity" in capsys.readouterr().err


@pytest.mark.slow  # builds and saves alignment networks (about 1.5 s)
def test_old_checkpoint_loads_with_old_bounds(tmp_path):
    from cianet.run.checkpoints import load_alignment

    loaded = load_alignment(write_alignment(tmp_path / "old.pt", tx=0.2))
    assert loaded.net.bounds() == OLD_BOUNDS
    with torch.no_grad():
        p = loaded.net.predict_params(torch.rand(2, 1, 64, 64))
    torch.testing.assert_close(p, torch.tensor([[0.2, 0.0, 1.0, 1.0, 0.0]] * 2))


@pytest.mark.slow
def test_train_align_stores_bounds_logs_terms_and_resumes(tiny_root, canonical, tmp_path, monkeypatch):
    from cianet.models.alignment import crop_params
    from cianet.run import checkpoints
    from cianet.run.checkpoints import ALIGN_FORMAT_VERSION, load_alignment, read_alignment_checkpoint
    from cianet.training.alignment import LOGGED_TERMS, train_alignment

    straight = _align_config(tmp_path / "straight", tiny_root, canonical, align__epochs=2)
    train_alignment(straight)
    _, ckpt = read_alignment_checkpoint(tmp_path / "straight")
    assert ckpt["format_version"] == ALIGN_FORMAT_VERSION == 2
    assert ckpt["net_kwargs"]["center"] == pytest.approx(list(crop_params((6, 4, 58, 50), 64)))
    assert ckpt["loss_scales"]["feat_scale"] > 0 and ckpt["loss_scales"]["pixel_scale"] > 0
    assert tuple(ckpt["canonical"].shape) == (64, 64)
    # the file names no local path; its reader takes them from the run's config.yaml
    assert not local_paths(torch.load(tmp_path / "straight" / "align.pt", weights_only=True), tmp_path)
    assert ckpt["config"]["align"]["canonical"] == str(Path(canonical).resolve())
    lines = [json.loads(s) for s in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1]
    for r in lines:
        assert all(math.isfinite(r[k]) for k in LOGGED_TERMS)
        assert r["feat_weighted"] > 0 and r["pixel_weighted"] > 0 and r["consistency_weighted"] > 0
        parts = r["feat_weighted"] + r["pixel_weighted"] + r["consistency_weighted"]
        assert r["loss"] == pytest.approx(parts, rel=1e-4)
    # the balance: both structure terms start near their weight (1) on the first batches
    assert 0.3 < lines[0]["feat_weighted"] < 3 and 0.3 < lines[0]["pixel_weighted"] < 3
    # the checkpoint reloads exactly: the same bounds, the same predictions as the saved state
    loaded = load_alignment(tmp_path / "straight")
    assert loaded.net.bounds() == {k: ckpt["net_kwargs"][k] for k in OLD_BOUNDS}
    x = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        got = loaded.net.predict_params(x)
    # killed after the first epoch's checkpoint, then resumed: the same weights as the uninterrupted run
    real_save = checkpoints.save_checkpoint

    def dying_save(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints, "save_checkpoint", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train_alignment(_align_config(tmp_path / "killed", tiny_root, canonical, align__epochs=2))
    monkeypatch.setattr(checkpoints, "save_checkpoint", real_save)
    train_alignment(_align_config(tmp_path / "killed", tiny_root, canonical, align__epochs=2), resume=True)
    resumed = load_alignment(tmp_path / "killed")
    assert resumed.epoch == 1
    with torch.no_grad():
        torch.testing.assert_close(resumed.net.predict_params(x), got, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_align_eval_command(phantom, tmp_path, capsys):
    from cianet.cli import main

    align = write_alignment(tmp_path / "align.pt", tx=0.1)  # constant output: removes none of any warp
    out = tmp_path / "report.json"
    assert (
        main(
            [
                "align-eval",
                "--align",
                str(align),
                "--data-root",
                str(phantom),
                "--n",
                "10",
                "--seed",
                "2",
                "--size",
                "64",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "0.0% of the warp removed" in text and "predates stored bounds" in text
    rep = json.loads(out.read_text())
    assert rep["n_images"] == 10 and len(rep["names"]) == 10 and rep["bounds_stored"] is False
    assert rep["warp"]["share_removed"] == pytest.approx(0.0, abs=1e-9)
    assert rep["warp"]["baseline_px"] > 0 and rep["bounds"]["share_params"] == 0.0
    t = rep["truth"]
    assert t["all"]["n"] == 10
    assert t["deformed"]["n"] == sum(t[k]["n"] for k in t if k in ("strength_mild", "strength_strong"))
    assert (
        main(
            [
                "align-eval",
                "--align",
                str(align),
                "--data-root",
                str(phantom),
                "--n",
                "10",
                "--seed",
                "2",
                "--size",
                "64",
                "--json",
            ]
        )
        == 0
    )
    again = json.loads(capsys.readouterr().out)
    assert again["warp"] == rep["warp"] and "names" not in again
    assert main(["align-eval", "--align", str(align), "--data-root", str(phantom), "--n", "0"]) == 2
    assert "--n must be positive" in capsys.readouterr().err
    assert np.isfinite(rep["warp"]["residual_px"])
