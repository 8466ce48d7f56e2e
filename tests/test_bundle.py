"""Model bundles: building from a run, the negative bank, safe loading and refusal of foreign metadata.

The helpers at the top (a tiny NIH-layout data set, a fake training run, alignment with a known shift) are
shared with test_predict.py and test_onnx.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SIZE = 64  # network input
U = 16  # test grid
IMG_W, IMG_H = 80, 96  # the image files are not square and not at the network size


# ------------------------------------------------------------------------------------------------ helpers
def synthetic_chest(rng: np.random.Generator, w: int = IMG_W, h: int = IMG_H, lesion: bool = False) -> np.ndarray:
    """A phantom-like gray chest (H, W) float in [0, 1] spanning the full range: body, two dark lungs, noise."""
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    img = 0.55 + 0.1 * rng.standard_normal() * yy
    for cx in (0.3 + 0.03 * rng.standard_normal(), 0.7 + 0.03 * rng.standard_normal()):
        img -= 0.35 * (((xx - cx) / 0.16) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1)
    if lesion:
        img += 0.3 * (((xx - 0.3) / 0.06) ** 2 + ((yy - 0.45) / 0.06) ** 2 < 1)
    img += 0.03 * rng.standard_normal((h, w))
    img = (img - img.min()) / (img.max() - img.min())
    return img.astype(np.float32)


def tiny_config(out: Path, kind: str = "cianet", data_root: str = "", align: str | None = None):
    from cianet.config import load_config

    cfg = load_config("tiny")
    cfg.data.image_size, cfg.data.data_root = SIZE, data_root
    cfg.model.kind, cfg.model.test_upsample, cfg.model.head_channels = kind, U, 32
    cfg.align.checkpoint = align
    cfg.run.out = str(out)
    return cfg


def tiny_model(cfg, seed: int = 0):
    from cianet.engine.train import build_network

    torch.manual_seed(seed)
    model = build_network(cfg).eval()
    # Random but non-trivial BatchNorm statistics, so eval mode is not the identity.
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return model


def write_data(root: Path, n: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """NIH-layout data root: n images (one per patient), even ones No Finding. Returns name -> image."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
             "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"]
    images = {}
    for i in range(n):
        name = f"{i + 1:08d}_000.png"
        img = synthetic_chest(rng, lesion=i % 2 == 1)
        u8 = np.rint(img * 255).astype(np.uint8)
        Image.fromarray(u8, mode="L").save(root / "images" / name)
        images[name] = u8.astype(np.float32) / 255.0
        lines.append(f"{name},{'No Finding' if i % 2 == 0 else 'Nodule'},0,{i + 1},40,M,PA,{IMG_W},{IMG_H},0.1,0.1")
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    return images


def write_alignment(path: Path, tx: float = 0.0, ty: float = 0.0) -> Path:
    """align.pt of an AlignmentNet that outputs exactly (tx, ty, 1, 1, 0) for any image."""
    from cianet.models.alignment import AlignmentNet

    torch.manual_seed(3)
    net = AlignmentNet(backbone="resnet18", input_size=SIZE)
    with torch.no_grad():  # the last layer is zero: z = bias; t = max_shift * tanh(z)
        net.fc.bias[0] = math.atanh(tx / net.max_shift)
        net.fc.bias[1] = math.atanh(ty / net.max_shift)
    torch.save({"kind": "alignment", "format_version": 1, "model": net.state_dict(), "epoch": 0, "config": {},
                "net_kwargs": {"backbone": "resnet18", "input_size": SIZE},
                "canonical": torch.rand(SIZE, SIZE), "input_size": SIZE}, path)
    return path


def make_run(tmp: Path, kind: str = "cianet", shift: float | None = None, n: int = 10) -> tuple[Path, dict]:
    """A finished-looking training run folder over a tiny data root; returns (run dir, name -> image)."""
    from cianet.config import save_config
    from cianet.engine.train import checkpoint_payload
    from cianet.utils.atomic import atomic_torch_save, atomic_write_json

    root, run = tmp / "data", tmp / f"run-{kind}-{shift}"
    images = write_data(root, n)
    align = str(write_alignment(tmp / "align.pt", tx=shift)) if shift is not None else None
    cfg = tiny_config(run, kind, str(root), align)
    model = tiny_model(cfg)
    run.mkdir(parents=True)
    atomic_torch_save(checkpoint_payload(model, cfg, epoch=3), run / "checkpoint.pt")
    save_config(cfg, run / "config.yaml")
    names = sorted(images)
    # Test images: the last two (one No Finding, one Nodule); the No Finding one must stay out of the bank.
    atomic_write_json(run / "split.json", {"description": "tiny", "train": names[:-2], "test": names[-2:],
                                           "box_supervised": [], "excluded": {}})
    return run, images


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> tuple[Path, dict]:
    return make_run(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def small_bundle(run_dir) -> dict:
    from cianet.engine.bundle import bundle_from_run

    return bundle_from_run(run_dir[0], n_negatives=2, progress=False)


# -------------------------------------------------------------------------------------------------- tests
def test_bank_holds_training_negatives_with_their_maps(run_dir, tmp_path):
    from cianet.engine.bundle import bundle_from_run, load_bundle, save_bundle
    from cianet.engine.train import load_checkpoint, model_from_checkpoint
    from cianet.models.backbones import gray_to_input
    from cianet.negatives import hash_codes

    run, images = run_dir
    path = save_bundle(bundle_from_run(run, n_negatives=100, progress=False), tmp_path / "m.cianet")
    raw = torch.load(path, weights_only=True)  # plain containers only: the safe loader accepts it
    assert raw["format"] == "cianet-model-bundle"
    b = load_bundle(path)
    names = b["negatives"]["names"]
    split = json.loads((run / "split.json").read_text())
    no_finding = {n for i, n in enumerate(sorted(images)) if i % 2 == 0}
    assert set(names) == no_finding - set(split["test"])  # every non-test No Finding image, no test image
    assert b["negatives"]["maps"].shape == (len(names), SIZE // 32, SIZE // 32)
    model, _ = model_from_checkpoint(load_checkpoint(run))
    model.eval()
    for k, name in enumerate(names):  # reference: resize the file image, one image at a time
        from cianet.data.io import resize_gray

        small = np.rint(resize_gray(images[name], SIZE) * 255) / 255
        x = torch.from_numpy(small.astype(np.float32))[None, None]
        with torch.no_grad():
            ref = model.attention_map(gray_to_input(x))[0]
        torch.testing.assert_close(b["negatives"]["maps"][k], ref, atol=1e-5, rtol=0)
        np.testing.assert_allclose(b["negatives"]["codes"][k].numpy(),
                                   hash_codes((small * 255).round().astype(np.uint8)[None])[0], atol=1e-6)
    assert b["thresholds"] == [0.5] * 14
    assert b["alignment"] is None and b["kind"] == "cianet" and b["input_size"] == SIZE


def test_bank_size_cap_prefers_training_images(run_dir, small_bundle):
    from cianet.engine.bundle import bundle_from_run

    run, _ = run_dir
    split = json.loads((run / "split.json").read_text())
    assert set(small_bundle["negatives"]["names"]) <= set(split["train"]) and "images" not in small_bundle["negatives"]
    b = bundle_from_run(run, n_negatives=2, progress=False, include_images=True)
    assert len(b["negatives"]["names"]) == 2
    assert set(b["negatives"]["names"]) <= set(split["train"])
    assert b["negatives"]["images"].shape == (2, SIZE, SIZE) and b["negatives"]["images"].dtype == torch.uint8


@pytest.mark.parametrize("shift", [None, 0.25])
def test_bank_gives_the_logits_of_recomputing_the_negative(tmp_path, shift):
    """Stored M- == M- recomputed from the hash-chosen negative image (aligned when the run aligns)."""
    from cianet.data.io import resize_gray
    from cianet.engine.bundle import bundle_from_run
    from cianet.engine.predict import Predictor
    from cianet.models.backbones import gray_to_input
    from cianet.negatives import hash_codes

    run, images = make_run(tmp_path, shift=shift)
    b = bundle_from_run(run, n_negatives=100, progress=False)
    query = [synthetic_chest(np.random.default_rng(s), lesion=True) for s in (11, 12, 13)]
    names = [f"q{i}.png" for i in range(3)]
    bank = Predictor(b, mode="bank").predict_arrays(query, names)
    # Recompute from the negative *image files* of the data root (nothing stored in the bundle).
    rec_pred = Predictor(b, mode="recompute", negative_images=lambda n: images[n])
    rec = rec_pred.predict_arrays(query, names)
    for r1, r2, q in zip(bank, rec, query):
        assert r1.negative == r2.negative
        np.testing.assert_allclose(r1.logits, r2.logits, atol=1e-5, rtol=0)
        np.testing.assert_allclose(r1.heatmaps, r2.heatmaps, atol=1e-5, rtol=0)
        # The negative is the bank's nearest hash code (naive python loop over the bank).
        code = hash_codes((np.rint(resize_gray(q, SIZE) * 255)).astype(np.uint8)[None])[0].astype(np.float64)
        sims = [float(np.dot(code, c)) for c in b["negatives"]["codes"].double().numpy()]
        assert r1.negative == b["negatives"]["names"][int(np.argmax(sims))]
    # And the recompute path itself equals a direct call of the network with the negative image.
    q_s = torch.from_numpy(resize_gray(query[0], SIZE).copy())[None, None]
    n_s = torch.from_numpy(np.rint(resize_gray(images[bank[0].negative], SIZE) * 255) / 255).float()[None, None]
    if rec_pred.align_net is not None:
        q_s, n_s = rec_pred.align_net(q_s)["aligned"], rec_pred.align_net(n_s)["aligned"]
    with torch.no_grad():
        direct = rec_pred.model(gray_to_input(q_s), neg=gray_to_input(n_s), upsample=False)["logits"][0]
    np.testing.assert_allclose(bank[0].logits, direct.numpy(), atol=1e-5, rtol=0)


def _tampered(bundle: dict, key: str, value) -> dict:
    out = dict(bundle)
    if value is KeyError:
        del out[key]
    else:
        out[key] = value
    return out


@pytest.mark.parametrize("change, message", [
    (("format_version", 99), "newer"),
    (("labels", ["Cardiomegaly", "Atelectasis"] + ["x"] * 12), "label names differ"),
    (("kind", "resnet"), "unknown model kind"),
    (("kind", "baseline"), "does not match"),
    (("negatives", KeyError), "missing negatives"),
    (("format", "something-else"), "not a cianet model bundle"),
])
def test_bundle_refuses_tampered_metadata(small_bundle, tmp_path, change, message):
    from cianet.engine.bundle import load_bundle

    path = tmp_path / "bad.cianet"
    torch.save(_tampered(small_bundle, *change), path)
    with pytest.raises(ValueError, match=message) as err:
        load_bundle(path)
    assert str(path) in str(err.value)


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_bundle_never_unpickles_objects(tmp_path):
    from cianet.engine.bundle import load_bundle

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
    from cianet.engine.bundle import load_bundle

    run, _ = run_dir
    out = tmp_path / "cli.cianet"
    assert main(["bundle", "--run", str(run), "--out", str(out), "--negatives", "3", "--threshold", "0.3",
                 "--no-progress"]) == 0
    assert "3 negatives" in capsys.readouterr().out
    b = load_bundle(out)
    assert b["thresholds"] == [0.3] * 14 and len(b["negatives"]["names"]) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["cli.cianet"]  # no temporary file left behind
    assert main(["bundle", "--run", str(tmp_path / "nope"), "--out", str(out)]) == 2
