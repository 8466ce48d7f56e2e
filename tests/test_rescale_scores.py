"""loss.mil_rescale reaches every image score: evaluation and predict give the image probabilities the MIL loss
trained, with the rescaling on and off."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import tiny_config, tiny_model, write_tiny_nih


def _trained_probability(logits: torch.Tensor, rescale: bool) -> np.ndarray:
    """The image probability inside eq. 5 as training computes it: for y = 1 the loss is -log P(any)."""
    from cianet.losses import mil_loss

    ones = torch.ones(logits.shape[:2])
    return torch.exp(-mil_loss(logits.double(), ones.double(), reduction="none", rescale=rescale)).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("rescale", [False, True])
def test_evaluation_scores_are_the_trained_probabilities(tmp_path, rescale):
    from cianet.run.forward import forward_grids
    from cianet.run.loaders import make_loaders
    from cianet.run.protocol import build_run_data
    from cianet.run.scoring import evaluate

    root = write_tiny_nih(tmp_path / "data", n_patients=8)
    cfg = tiny_config(tmp_path / "run", root, model__kind="baseline", loss__mil_rescale=rescale)
    model = tiny_model(cfg)
    with torch.no_grad():  # spread the cell logits so that the rescaling changes the scores visibly
        model.head.cls.bias.fill_(-1.0)
    _, _, _, loader = make_loaders(cfg, build_run_data(cfg))
    with pytest.warns(UserWarning):
        got = evaluate(
            model, loader, torch.device("cpu"), progress=False, keep_predictions=True, rescale=cfg.loss.mil_rescale
        )["scores"]
    logits = torch.cat([forward_grids(model, b, upsample=False)["logits"] for b in loader])
    np.testing.assert_allclose(got, _trained_probability(logits, rescale), rtol=1e-5, atol=1e-7)
    assert not np.allclose(_trained_probability(logits, not rescale), got, rtol=1e-3)  # the option matters


@pytest.mark.slow
@pytest.mark.parametrize("rescale", [False, True])
def test_predict_scores_follow_the_bundle_config(tmp_path, rescale):
    from cianet.inference.predictor import Predictor
    from cianet.run.bundle_file import make_bundle

    cfg = tiny_config(tmp_path / "run", "", model__kind="baseline", loss__mil_rescale=rescale)
    model = tiny_model(cfg)
    with torch.no_grad():
        model.head.cls.bias.fill_(-1.0)
    pred = Predictor(make_bundle(model, cfg))
    img = np.random.default_rng(0).random((80, 72)).astype(np.float32)
    res = pred.predict_arrays([img], ["x.png"])[0]
    want = _trained_probability(torch.from_numpy(res.logits)[None], rescale)[0]
    got = np.array([res.probabilities[lab] for lab in pred.labels])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
