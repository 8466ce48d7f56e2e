"""`cianet experiment`: variants as the paper's tables, a reduced table1 end to end, resume, aggregation."""

from __future__ import annotations

import json
import math

import pytest

from cianet.evaluation.experiments import aggregate_folds, experiment_variants, run_experiment
from helpers import tiny_config, write_tiny_nih


def test_variants_follow_the_papers_tables():
    t1 = experiment_variants("table1")
    assert [v.name for v in t1] == ["Base", "CIA-Net"]
    assert all(v.settings["protocol"]["annotated_ratio"] == 0.8 and v.settings["protocol"]["unannotated_ratio"] == 0.5
               for v in t1)
    t2 = experiment_variants("table2")
    assert all(v.settings["protocol"]["unannotated_only"] and not v.folds for v in t2)
    t3 = experiment_variants("table3")
    assert sorted({v.settings["protocol"]["annotated_ratio"] for v in t3}) == [0.0, 0.4, 0.8]
    assert {v.settings["negatives"]["strategy"] for v in experiment_variants("table5")} == {"sim", "random", "canonical"}
    assert all(v.settings["protocol"]["kind"] == "classification" for v in experiment_variants("table4"))
    with pytest.raises(ValueError, match="--align"):
        experiment_variants("table6")
    assert all("align" not in v.settings for v in t1 + t2 + t3)  # --align applies to every row alike
    t6 = experiment_variants("table6", "align.pt")
    assert [v.settings["align"]["checkpoint"] for v in t6] == [None, "align.pt", None, "align.pt"]


def test_aggregate_is_mean_and_population_std_ignoring_missing():
    folds = [{"localization": {"0.5": {"Mass": 0.2, "Mean": 0.4}}, "auc": {"Mass": 0.6, "Mean": None}},
             {"localization": {"0.5": {"Mass": 0.6, "Mean": None}}, "auc": {"Mass": 0.8, "Mean": 0.7}}]
    agg = aggregate_folds(folds)
    assert agg["localization"]["0.5"]["Mass"] == pytest.approx(0.4)
    assert agg["localization_std"]["0.5"]["Mass"] == pytest.approx(0.2)
    assert agg["localization"]["0.5"]["Mean"] == pytest.approx(0.4) and agg["localization_std"]["0.5"]["Mean"] == 0
    assert agg["auc"]["Mass"] == pytest.approx(0.7) and agg["auc"]["Mean"] == pytest.approx(0.7)


@pytest.mark.slow
def test_reduced_table1_runs_resumes_and_writes_tables(tmp_path, monkeypatch):
    root = write_tiny_nih(tmp_path / "nih")
    cfg = tiny_config(tmp_path / "unused", root, optim__epochs=1)
    out = tmp_path / "table1"
    md = run_experiment("table1", cfg, out, folds=[0])
    text = md.read_text()
    assert "| 0.5 |" in text and "Base" in text and "CIA-Net" in text
    data = json.loads((out / "table1.json").read_text())
    assert set(data["results"]) == {"Base", "CIA-Net"}
    for name, res in data["results"].items():
        assert res["folds"] == 1
        assert set(res["localization"]) == {f"{t / 10:g}" for t in range(1, 8)}
        run = out / ("base" if name == "Base" else "cia_net") / "fold0"
        saved = json.loads((run / "metrics.json").read_text())
        mean = saved["localization"]["0.5"]["Mean"]
        got = res["localization"]["0.5"]["Mean"]
        assert (mean is None and (got is None or math.isnan(got))) or got == pytest.approx(mean)
    # finished runs are not trained again
    import cianet.training.loop as tr

    monkeypatch.setattr(tr, "fit", lambda *a, **k: pytest.fail("a finished run was trained again"))
    assert run_experiment("table1", cfg, out, folds=[0]).read_text() == text
