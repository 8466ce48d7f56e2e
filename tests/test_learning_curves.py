"""Learning curves from a run's log.jsonl and the plateau verdict (cianet.evaluation.learning_curves)."""

from __future__ import annotations

import json
import math

import pytest

from cianet.evaluation.learning_curves import (
    PLATEAU_GAIN,
    figure_learning_curves,
    plateau_gain,
    plateau_sentence,
    read_curve,
)


def _log(path, records, tail: str = "") -> None:
    path.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in records) + tail
    (path / "log.jsonl").write_text(text)


def _epoch(e: int, auc: float | None, loc: float | None = 0.2, loss: float = 1.0) -> dict:
    rec = {"event": "epoch", "epoch": e, "train_loss": loss}
    if auc is not None:
        rec.update({"val_auc_mean": auc, "val_loc_mean_0.5": loc})
    return rec


def test_read_curve_keeps_validated_epochs_the_last_record_of_a_resumed_epoch_and_skips_a_cut_line(tmp_path):
    records = [
        {"event": "step", "epoch": 0, "step": 0, "loss": 3.0},
        _epoch(0, 0.6, loc=None),
        _epoch(1, 0.65),
        _epoch(1, 0.7, loc=0.3, loss=0.5),  # epoch 2 again after a resume: this one counts
        _epoch(2, None),  # not validated
        {"event": "final", "test_auc_mean": 0.9},
    ]
    _log(tmp_path / "run", records, tail='{"event": "epo')  # a line cut by a kill
    c = read_curve(tmp_path / "run")
    assert c.epochs == (1, 2) and c.auc == (0.6, 0.7) and c.loss == (1.0, 0.5)
    assert math.isnan(c.loc[0]) and c.loc[1] == 0.3


def test_read_curve_is_none_without_validation_or_log(tmp_path):
    _log(tmp_path / "a", [_epoch(0, None), _epoch(1, None)])
    assert read_curve(tmp_path / "a") is None and read_curve(tmp_path / "missing") is None


@pytest.mark.parametrize(
    ("values", "gain"),
    [
        ((0.5, 0.6, 0.7, 0.8), 0.1),  # last quarter = 1 epoch: 0.8 - max(0.5, 0.6, 0.7)
        ((0.5, 0.7, 0.71, 0.69, 0.7, 0.705, 0.71, 0.712), 0.002),  # 2 epochs: max(0.705, 0.712) - 0.71
        ((0.8, 0.7), -0.1),
        ((0.6, float("nan"), 0.7), 0.1),  # NaN epochs are skipped
        ((0.6,), None),
    ],
)
def test_plateau_gain(values, gain):
    got = plateau_gain(values)
    assert got == pytest.approx(gain) if gain is not None else got is None


def test_plateau_sentence_says_which_side_of_the_threshold(tmp_path):
    _log(tmp_path / "flat", [_epoch(e, a) for e, a in enumerate((0.5, 0.8, 0.8, 0.8 + PLATEAU_GAIN / 2))])
    _log(tmp_path / "rising", [_epoch(e, a) for e, a in enumerate((0.5, 0.6, 0.7, 0.8))])
    assert "on its plateau" in plateau_sentence("Base", read_curve(tmp_path / "flat"))
    rising = plateau_sentence("CIA-Net", read_curve(tmp_path / "rising"))
    assert rising.startswith("CIA-Net: still learning") and "+0.100" in rising
    assert "no validation" in plateau_sentence("Base", None)
    _log(tmp_path / "dead", [_epoch(e, a) for e, a in enumerate((0.5, 0.51, 0.49, 0.5))])
    assert "did not learn" in plateau_sentence("CIA-Net", read_curve(tmp_path / "dead"))


@pytest.mark.slow  # draws a figure (matplotlib: about a second)
def test_figure_is_a_png_and_none_without_curves(tmp_path):
    _log(tmp_path / "r", [_epoch(e, a) for e, a in enumerate((0.5, 0.6))])
    path = figure_learning_curves({"Base": read_curve(tmp_path / "r"), "CIA-Net": None}, tmp_path / "lc.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert figure_learning_curves({"Base": None}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_report_section_only_when_a_run_validated(tmp_path):
    from cianet.evaluation.report import learning_curves_section

    assert learning_curves_section({"Base": None, "CIA-Net": None}) == []
    _log(tmp_path / "r", [_epoch(e, a) for e, a in enumerate((0.5, 0.6))])
    lines = learning_curves_section({"Base": read_curve(tmp_path / "r"), "CIA-Net": None})
    assert lines[0] == "## Convergence" and any(x.startswith("- CIA-Net: no validation") for x in lines)


def test_demo_refuses_unknown_settings_before_writing(tmp_path):
    from cianet.errors import UsageError
    from cianet.experiments.demo import run_demo

    with pytest.raises(UsageError, match="unknown demo setting.*val_shares"):
        run_demo(tmp_path / "d", fast=True, settings={"val_shares": 0.1})
    assert not (tmp_path / "d").exists()
