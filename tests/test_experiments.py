"""`cianet experiment`: variants as the paper's tables, a reduced table1 end to end, resume, aggregation."""

from __future__ import annotations

import json
import math

import pytest

from cianet.evaluation.comparisons import aggregate_folds
from cianet.experiments.tables import experiment_variants, run_experiment
from helpers import tiny_config, write_tiny_nih


def test_variants_follow_the_papers_tables():
    t1 = experiment_variants("table1")
    assert [v.name for v in t1] == ["Base", "CIA-Net"]
    assert all(
        v.settings["protocol"]["annotated_ratio"] == 0.8 and v.settings["protocol"]["unannotated_ratio"] == 0.5
        for v in t1
    )
    t2 = experiment_variants("table2")
    assert all(v.settings["protocol"]["unannotated_only"] and not v.folds for v in t2)
    t3 = experiment_variants("table3")
    assert sorted({v.settings["protocol"]["annotated_ratio"] for v in t3}) == [0.0, 0.4, 0.8]
    assert {v.settings["negatives"]["strategy"] for v in experiment_variants("table5")} == {
        "sim",
        "random",
        "canonical",
    }
    assert all(v.settings["protocol"]["kind"] == "classification" for v in experiment_variants("table4"))
    with pytest.raises(ValueError, match="--align"):
        experiment_variants("table6")
    assert all("align" not in v.settings for v in t1 + t2 + t3)  # --align applies to every row alike
    t6 = experiment_variants("table6", "align.pt")
    assert [v.settings["align"]["checkpoint"] for v in t6] == [None, "align.pt", None, "align.pt"]


def test_aggregate_is_mean_and_population_std_ignoring_missing():
    folds = [
        {"localization": {"0.5": {"Mass": 0.2, "Mean": 0.4}}, "auc": {"Mass": 0.6, "Mean": None}},
        {"localization": {"0.5": {"Mass": 0.6, "Mean": None}}, "auc": {"Mass": 0.8, "Mean": 0.7}},
    ]
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


def _fake_run(run_dir, ious, classes, scores, labels):
    import numpy as np

    run_dir.mkdir(parents=True)
    np.savez(
        run_dir / "predictions.npz",
        ious=np.asarray(ious, float),
        box_classes=np.asarray(classes),
        scores=np.asarray(scores, float),
        labels=np.asarray(labels, float),
        box_images=np.zeros(len(ious)),
        evidence=-np.log1p(-np.asarray(scores, float)),
        pointing=(np.asarray(ious, float) > 0.4) * 1.0,
    )


def test_comparisons_pool_folds_per_seed_and_pair_by_seed(tmp_path):
    import numpy as np

    from cianet.evaluation.comparisons import compare_runs, comparison_markdown
    from cianet.experiments.tables import experiment_comparisons
    from cianet.metrics import bootstrap_auc_difference, bootstrap_localization_difference

    rng = np.random.default_rng(0)
    dirs = {"A": [], "B": []}
    want = {"A": [], "B": [], "cls": [], "sa": [], "sb": [], "lab": []}
    for seed in range(2):
        for m in ("A", "B"):
            dirs[m].append([])
        pooled = {k: [] for k in want}
        for fold in range(2):
            n = 12
            cls = rng.integers(0, 8, n)
            ia, ib = rng.random(n), rng.random(n) * 0.5
            lab = (rng.random((10, 14)) < 0.4).astype(float)
            sa, sb = rng.random((10, 14)), rng.random((10, 14))
            _fake_run(tmp_path / "A" / f"s{seed}f{fold}", ia, cls, sa, lab)
            _fake_run(tmp_path / "B" / f"s{seed}f{fold}", ib, cls, sb, lab)
            dirs["A"][-1].append(tmp_path / "A" / f"s{seed}f{fold}")
            dirs["B"][-1].append(tmp_path / "B" / f"s{seed}f{fold}")
            for k, v in (("A", ia), ("B", ib), ("cls", cls), ("sa", sa), ("sb", sb), ("lab", lab)):
                pooled[k].append(v)
        for k in want:
            want[k].append(np.concatenate(pooled[k]))
    comp = compare_runs(dirs["A"], dirs["B"], thresholds=(0.3, 0.5), n_boot=300)
    ref = bootstrap_localization_difference(want["A"], want["B"], want["cls"], threshold=0.5, n_boot=300)
    assert comp["0.5"] == ref and comp["0.5"]["n_seeds"] == 2 and comp["0.5"]["n_boxes"] == 48
    assert comp["auc"] == bootstrap_auc_difference(want["sa"], want["sb"], want["lab"], n_boot=300)
    md = comparison_markdown({"A - B": comp})
    assert "| loc. acc. T(IoU)=0.3 |" in md and "95% CI" in md and "| mean AUC (by evidence) |" in md
    assert ("A beats B on mean localization accuracy at T(IoU) = 0.5" in md) == (ref["low"] > 0)
    assert ("CIA-Net+Oracle", "Base") in experiment_comparisons("oracle")


def test_rows_tested_on_different_boxes_cannot_be_paired(tmp_path):
    from cianet.errors import InputError
    from cianet.evaluation.comparisons import compare_runs

    _fake_run(tmp_path / "a", [0.5, 0.6], [0, 1], [[0.1] * 14], [[1.0] * 14])
    _fake_run(tmp_path / "b", [0.5, 0.6], [0, 2], [[0.1] * 14], [[1.0] * 14])
    with pytest.raises(InputError, match="different boxes"):
        compare_runs([[tmp_path / "a"]], [[tmp_path / "b"]])
    with pytest.raises(InputError, match="predictions.npz is missing"):
        compare_runs([[tmp_path / "nope"]], [[tmp_path / "b"]])


def test_oracle_experiment_and_seed_flags():
    from cianet.cli import main
    from cianet.experiments.tables import experiment_comparisons

    oracle = experiment_variants("oracle")
    assert [v.name for v in oracle] == ["Base", "CIA-Net+Oracle"]
    assert oracle[1].settings["negatives"]["strategy"] == "oracle"
    assert oracle[0].settings == experiment_variants("table1")[0].settings  # table1's Base runs serve both
    assert main(["experiment", "oracle", "--seeds", "0,x", "--data-root", "nope"]) == 2
    unboxed = experiment_variants("oracle-table2")
    assert [v.name for v in unboxed] == ["Base", "CIA-Net+Oracle"] and not any(v.folds for v in unboxed)
    assert unboxed[1].settings["negatives"]["strategy"] == "oracle"
    assert unboxed[0].settings == experiment_variants("table2")[0].settings  # table2's Base runs serve both
    assert unboxed[1].settings["protocol"] == unboxed[0].settings["protocol"]
    assert experiment_comparisons("oracle-table2") == [("CIA-Net+Oracle", "Base")]
