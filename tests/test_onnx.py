"""ONNX export: onnxruntime gives PyTorch's logits (max abs difference < 1e-4), dynamic batch, metadata."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cianet.cli import main
from cianet.inference.bundle import bundle_from_run
from cianet.run.bundle_file import save_bundle
from helpers import GRID, SIZE, U, in_fork, make_run, synthetic_chest

pytestmark = pytest.mark.slow  # exports three graphs (seconds each)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A CIA-Net bundle with an alignment (shift 0.1) and a baseline bundle, both exported; returns the
    CIA-Net's (bundle, model path, printed JSON) and the baseline's (model path, printed JSON)."""
    # here, not at the module's top: importing onnx at collection costs every test worker about a second
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    tmp = tmp_path_factory.mktemp("onnx")
    run, _ = make_run(tmp, shift=0.1)
    bundle = save_bundle(bundle_from_run(run, n_negatives=100, progress=False), tmp / "m.cianet")
    run, _ = make_run(tmp / "base", kind="baseline")
    baseline = save_bundle(bundle_from_run(run, progress=False), tmp / "b.cianet")
    (rc, printed), (rc_base, printed_base) = _export_onnx([(bundle, tmp / "m.onnx"), (baseline, tmp / "b.onnx")])
    assert rc == rc_base == 0
    return bundle, tmp / "m.onnx", printed, tmp / "b.onnx", printed_base


def _export_onnx(jobs: list[tuple[Path, Path]]) -> list[tuple[int, str]]:
    """``cianet export-onnx --model BUNDLE --out OUT --json``'s exit code and stdout for each job, run in one
    forked child (the exporter's imports and set-up are paid once): the exporter leaves autograd's threads
    started in its process, after which torch refuses to train in a child forked from it (the kill tests of
    test_safety.py, if they run later in this test process)."""

    def export() -> list[tuple[int, str]]:
        done = []
        for bundle, out in jobs:
            with contextlib.redirect_stdout(io.StringIO()) as printed:
                rc = main(["export-onnx", "--model", str(bundle), "--out", str(out), "--json"])
            done.append((rc, printed.getvalue()))
        return done

    return in_fork(export)


def test_export_onnx_prints_one_json_object(exported, capsys):
    """--json: one strict JSON object naming what was written (the CLI's other --json tests: tests/cli)."""
    from cli.test_json import one_object

    bundle, path, printed, base_path, base_printed = exported
    print(printed, end="")
    s = one_object(capsys)
    assert s["model"] == str(path) and s["negatives"] == str(path.with_name("m.negatives.npz"))
    assert s["alignment"] == str(path.with_name("m.align.onnx"))
    assert s["exporter"] in ("dynamo", "torchscript") and s["opset"] == 18 and s["dynamic_batch"] is True
    # a run without a bank or an alignment network (the baseline here) says so with nulls
    print(base_printed, end="")
    s = one_object(capsys)
    assert s["model"] == str(base_path) and Path(s["model"]).stat().st_size > 1000
    assert s["negatives"] is None and s["alignment"] is None
    assert s["exporter"] in ("dynamo", "torchscript") and s["opset"] == 18 and s["dynamic_batch"] is True


def test_onnx_matches_pytorch(exported):
    import onnxruntime as ort

    from cianet.inference.predictor import Predictor
    from cianet.models.backbones import gray_to_input

    bundle, path = exported[:2]
    pred = Predictor.from_bundle(bundle)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image", "m_neg"]
    g = GRID
    rng = np.random.default_rng(0)
    phantom = np.stack([synthetic_chest(rng, SIZE, SIZE, lesion=True) for _ in range(3)])[:, None]
    cases = [
        (rng.random((1, 1, SIZE, SIZE), np.float32), rng.standard_normal((1, g, g)).astype(np.float32)),
        (
            phantom.astype(np.float32),
            pred.bank_maps[:3].numpy() if len(pred.bank_names) >= 3 else pred.bank_maps[[0, 0, 0]].numpy(),
        ),
    ]
    for image, m_neg in cases:  # batch 1 and batch 3 through the same (dynamic-batch) graph
        logits, test_logits, delta = sess.run(None, {"image": image, "m_neg": m_neg})
        with torch.no_grad():
            ref = pred.model(
                gray_to_input(torch.from_numpy(image)), m_neg=torch.from_numpy(m_neg), upsample=False, return_feats=True
            )
            ref_test = pred.model._head(ref["f_bar"], True)
        assert logits.shape == (len(image), 14, g, g) and test_logits.shape == (len(image), 14, U, U)
        assert np.abs(logits - ref["logits"].numpy()).max() < 1e-4
        assert np.abs(test_logits - ref_test.numpy()).max() < 1e-4
        assert np.abs(delta - ref["delta"].numpy()).max() < 1e-4


def test_onnx_sidecars_and_metadata(exported):
    import onnx
    import onnxruntime as ort

    from cianet.labels import LABELS
    from cianet.run.bundle_file import load_bundle

    bundle, path = exported[:2]
    raw = path.read_bytes()  # no install or source paths of the exporting machine (issue 11)
    for local in (Path(torch.__file__).parent.parent, Path(__file__).parent.parent):
        assert str(local).encode() not in raw, local
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["labels"]) == list(LABELS) and meta["input_size"] == str(SIZE)
    assert meta["aligned_input"] == "true"
    b = load_bundle(bundle)
    with np.load(path.with_name("m.negatives.npz"), allow_pickle=False) as bank:
        np.testing.assert_array_equal(bank["maps"], b["negatives"]["maps"].numpy())
        assert bank["names"].tolist() == b["negatives"]["names"]
    # The alignment graph reproduces the known shift and the warp.
    sess = ort.InferenceSession(str(path.with_name("m.align.onnx")), providers=["CPUExecutionProvider"])
    img = synthetic_chest(np.random.default_rng(1), SIZE, SIZE)[None, None]
    params, aligned = sess.run(None, {"image": img})
    np.testing.assert_allclose(params[0], [0.1, 0.0, 1.0, 1.0, 0.0], atol=1e-5)
    from cianet.models.alignment import warp

    ref = warp(torch.from_numpy(img), torch.tensor([[0.1, 0.0, 1.0, 1.0, 0.0]])).numpy()
    assert np.abs(aligned - ref).max() < 1e-4
