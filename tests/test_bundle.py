"""Model bundles: building from a run, the negative bank, safe loading and refusal of foreign metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import GRID, SIZE, synthetic_chest


@pytest.fixture(scope="module")
def run_dir(chest_models) -> tuple[Path, dict]:
    return chest_models.run("plain")


@pytest.fixture(scope="module")
def small_bundle(run_dir) -> dict:
    from cianet.inference.bundle import bundle_from_run

    return bundle_from_run(run_dir[0], n_negatives=2, progress=False)


# -------------------------------------------------------------------------------------------------- tests
@pytest.mark.slow
def test_bank_holds_training_negatives_with_their_maps(run_dir, chest_models):
    from cianet.inference.bundle import bundle_from_run
    from cianet.models.backbones import gray_to_input
    from cianet.negatives import hash_codes
    from cianet.run.bundle_file import load_bundle
    from cianet.run.checkpoints import load_checkpoint, model_from_checkpoint

    run, images = run_dir
    b = bundle_from_run(run, n_negatives=100, progress=False)
    path = chest_models.bundle("plain")  # the file save_bundle wrote of the same call on the same run
    # The file keeps codes and maps only: no training image names, and the same numbers.
    saved = load_bundle(path)
    assert saved["negatives"]["names"] == [f"negative-{i:05d}" for i in range(len(b["negatives"]["names"]))]
    for key in ("codes", "maps"):
        assert torch.equal(saved["negatives"][key], b["negatives"][key])
    blob = path.read_bytes()
    assert not any(name.encode() in blob for name in images)
    names = b["negatives"]["names"]
    split = json.loads((run / "split.json").read_text())
    no_finding = {n for i, n in enumerate(sorted(images)) if i % 2 == 0}
    assert set(names) == no_finding - set(split["test"])  # every non-test No Finding image, no test image
    assert b["negatives"]["maps"].shape == (len(names), GRID, GRID)
    model, _ = model_from_checkpoint(load_checkpoint(run))
    model.eval()
    for k, name in enumerate(names):  # reference: resize the file image, one image at a time
        from cianet.data.io import resize_gray

        small = np.rint(resize_gray(images[name], SIZE) * 255) / 255
        x = torch.from_numpy(small.astype(np.float32))[None, None]
        with torch.no_grad():
            ref = model.attention_map(gray_to_input(x))[0]
        torch.testing.assert_close(b["negatives"]["maps"][k], ref, atol=1e-5, rtol=0)
        np.testing.assert_allclose(
            b["negatives"]["codes"][k].numpy(), hash_codes((small * 255).round().astype(np.uint8)[None])[0], atol=1e-6
        )
    assert b["thresholds"] == [0.5] * 14
    assert b["alignment"] is None and b["kind"] == "cianet" and b["input_size"] == SIZE


def test_bank_size_cap_prefers_training_images(run_dir, small_bundle):
    from cianet.inference.bundle import bundle_from_run

    run, _ = run_dir
    split = json.loads((run / "split.json").read_text())
    assert set(small_bundle["negatives"]["names"]) <= set(split["train"]) and "images" not in small_bundle["negatives"]
    b = bundle_from_run(run, n_negatives=2, progress=False, include_images=True)
    assert len(b["negatives"]["names"]) == 2
    assert set(b["negatives"]["names"]) <= set(split["train"])
    assert b["negatives"]["images"].shape == (2, SIZE, SIZE) and b["negatives"]["images"].dtype == torch.uint8


@pytest.mark.slow
@pytest.mark.parametrize("shift", [None, 0.25])
def test_bank_gives_the_logits_of_recomputing_the_negative(chest_models, shift):
    """Stored M- == M- recomputed from the hash-chosen negative image (aligned when the run aligns)."""
    from cianet.data.io import resize_gray
    from cianet.inference.bundle import bundle_from_run
    from cianet.inference.predictor import Predictor
    from cianet.models.backbones import gray_to_input
    from cianet.negatives import hash_codes

    run, images = chest_models.run("plain" if shift is None else "shift")  # "shift" aligns with tx = 0.25
    b = bundle_from_run(run, n_negatives=100, progress=False)
    assert b["negatives"]["aligned_codes"] == (shift is not None)
    query = [synthetic_chest(np.random.default_rng(s), lesion=True) for s in (11, 12, 13)]
    names = [f"q{i}.png" for i in range(3)]
    bank = Predictor(b, mode="bank").predict_arrays(query, names)
    # Recompute from the negative *image files* of the data root (nothing stored in the bundle).
    rec_pred = Predictor(b, mode="recompute", negative_images=lambda n: images[n])
    rec = rec_pred.predict_arrays(query, names)
    for r1, r2, q in zip(bank, rec, query):
        assert r1.negative == r2.negative
        # the bank's M- came from the network as trained, recompute's from the folded one (cianet.models.folding):
        # float32 rounding apart (logits ~5: 1e-4 is ~20 ulp)
        np.testing.assert_allclose(r1.logits, r2.logits, atol=1e-4, rtol=0)
        np.testing.assert_allclose(r1.heatmaps, r2.heatmaps, atol=1e-5, rtol=0)
        # The negative is the bank's nearest hash code (naive python loop over the bank); with alignment (and the
        # recipe's negatives.aligned_codes) the codes are of the aligned 8-bit images, as the run paired them.
        hashed = (np.rint(resize_gray(q, SIZE) * 255)).astype(np.uint8)
        if shift is not None:
            with torch.no_grad():
                hashed = rec_pred.align_net(torch.from_numpy(hashed / 255.0).float()[None, None])["aligned"][0].numpy()
        code = hash_codes(hashed)[0].astype(np.float64)
        sims = [float(np.dot(code, c)) for c in b["negatives"]["codes"].double().numpy()]
        assert r1.negative == b["negatives"]["names"][int(np.argmax(sims))]
    # And the recompute path itself equals a direct call of the network with the negative image.
    q_s = torch.from_numpy(resize_gray(query[0], SIZE).copy())[None, None]
    n_s = torch.from_numpy(np.rint(resize_gray(images[bank[0].negative], SIZE) * 255) / 255).float()[None, None]
    if rec_pred.align_net is not None:
        q_s, n_s = rec_pred.align_net(q_s)["aligned"], rec_pred.align_net(n_s)["aligned"]
    with torch.no_grad():
        direct = rec_pred.model(gray_to_input(q_s), neg=gray_to_input(n_s), upsample=False)["logits"][0]
    np.testing.assert_allclose(bank[0].logits, direct.numpy(), atol=1e-4, rtol=0)  # stored vs folded M-: rounding


def _tampered(bundle: dict, key: str, value) -> dict:
    out = dict(bundle)
    if value is KeyError:
        del out[key]
    else:
        out[key] = value
    return out


@pytest.mark.parametrize(
    "change, message",
    [
        (("format_version", 99), "newer"),
        (("labels", ["Cardiomegaly", "Atelectasis"] + ["x"] * 12), "label names differ"),
        (("kind", "resnet"), "unknown model kind"),
        (("kind", "baseline"), "does not match"),
        (("negatives", KeyError), "missing negatives"),
        (("format", "something-else"), "not a cianet model bundle"),
    ],
)
def test_bundle_refuses_tampered_metadata(small_bundle, tmp_path, change, message):
    from cianet.run.bundle_file import load_bundle

    path = tmp_path / "bad.cianet"
    torch.save(_tampered(small_bundle, *change), path)
    with pytest.raises(ValueError, match=message) as err:
        load_bundle(path)
    assert str(path) in str(err.value)


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_bundle_never_unpickles_objects(tmp_path):
    from cianet.run.bundle_file import load_bundle

    path = tmp_path / "evil.cianet"
    torch.save({"format": "cianet-model-bundle", "payload": _Evil()}, path)
    with pytest.raises(ValueError, match="not a readable cianet model bundle") as err:
        load_bundle(path)
    assert str(path) in str(err.value)
    (tmp_path / "trunc.cianet").write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match="trunc.cianet"):
        load_bundle(tmp_path / "trunc.cianet")


def test_bundle_cli_writes_atomically_and_reports(run_dir, tmp_path, capsys):
    from cianet.cli import main
    from cianet.run.bundle_file import load_bundle

    run, _ = run_dir
    out = tmp_path / "cli.cianet"
    assert (
        main(
            ["bundle", "--run", str(run), "--out", str(out), "--negatives", "3", "--threshold", "0.3", "--no-progress"]
        )
        == 0
    )
    assert "3 negatives" in capsys.readouterr().out
    b = load_bundle(out)
    assert b["thresholds"] == [0.3] * 14 and len(b["negatives"]["names"]) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["cli.cianet"]  # no temporary file left behind
    assert main(["bundle", "--run", str(tmp_path / "nope"), "--out", str(out)]) == 2
