"""`cianet demo --fast` end to end: every stage runs, the report holds both models' tables and figures."""

from __future__ import annotations

import json
import math
import re

import pytest

from helpers import narrow

pytestmark = pytest.mark.slow

# The fewest phantom images whose 5-fold protocol has annotated patients in every fold and priors to pair with:
# the stages' own cost is then mostly fixed (figures, evaluation), not per image.
N_IMAGES = "60"
# The alignment network and canonical chest from fewer images than --fast's 120 and 60, and the images at 64 px
# instead of 128 (a quarter of the training and scoring convolutions; the alignment regressor's input is 64 px
# either way): the report only needs every stage's output to exist. The epochs stay --fast's.
SMALLER = {"align_images": 16, "canonical_n": 20, "size": 64}
# Both models validate after every epoch (as the default demo does; --fast does not): the report's learning
# curves and plateau verdicts.
VALIDATE = {"val_share": 0.1}


def test_fast_demo_writes_a_complete_report(tmp_path, capsys, monkeypatch):
    import functools

    import numpy as np

    from cianet.cli import main
    from cianet.experiments import demo
    from cianet.run.scoring import read_predictions

    # both runs through the CLI (`cianet demo` looks run_demo up when it runs), with the same smaller settings
    monkeypatch.setattr(demo, "run_demo", functools.partial(demo.run_demo, settings={**SMALLER, **VALIDATE}))
    demo_config = demo.demo_config  # its trunks narrowed (helpers.narrow)
    monkeypatch.setattr(demo, "demo_config", lambda *args, **kwargs: narrow(demo_config(*args, **kwargs)))
    out = tmp_path / "demo"
    # stderr is not a terminal here (captured, as when redirected to a file): no progress bar, without --no-progress
    assert main(["demo", "--fast", "--out", str(out), "--n-images", N_IMAGES]) == 0
    report = (out / "report.md").read_text()
    captured = capsys.readouterr()
    assert "report:" in captured.out
    assert not re.search(r"\d+%\||it/s|img/s|s/it", captured.err), captured.err[-2000:]
    for heading in ("## Verdict", "## Localization accuracy", "## Classification AUC", "| 0.5 | Base |", "CIA-Net"):
        assert heading in report
    verdict = next(line for line in report.splitlines() if "localization accuracy at T(IoU) = 0.5" in line)
    assert sum(w in verdict for w in ("CIA-Net beats Base", "CIA-Net loses to Base", "No significant difference")) == 1
    assert "95% CI [" in verdict and "| loc. acc. T(IoU)=0.5 |" in report
    assert "8 x 8 grid (8 px cells)" in report and "largest cell of |M+ - M-|" in report  # the grid and the mechanism
    assert "## Alignment" in report and "of the warp removed" in report  # the alignment residual
    assert "## Calibration-free localization" in report and "| pointing game |" in report
    # both models validate after every epoch on held-out training patients; the report judges their plateau
    convergence = report.split("## Convergence", 1)[1].split("\n## ", 1)[0]
    assert "- Base: " in convergence and "- CIA-Net: " in convergence, convergence
    for kind in ("baseline", "cianet"):
        split = json.loads((out / "runs" / kind / "split.json").read_text())
        assert split["val"] and not set(split["val"]) & (set(split["train"]) | set(split["test"]))
        logged = [json.loads(x) for x in (out / "runs" / kind / "log.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in logged if r["event"] == "epoch" and "val_auc_mean" in r] == [0]
    assert json.loads((out / "alignment.json").read_text())["warp"]["baseline_px"] > 0
    # CIA-Net contrasts with the patient's earlier normal study where there is one (issue 20), and says how often
    pairing = json.loads((out / "runs" / "cianet" / "negatives.json").read_text())
    assert pairing["strategy"] == "prior" and pairing["counts"].get("prior", 0) > 0, pairing
    line = next(x for x in report.splitlines() if x.startswith("CIA-Net's negatives (prior, fallback sim)"))
    assert f"prior {pairing['counts']['prior']}" in line
    for fig in ("canonical.png", "alignment.png", "attention.png", "boxes.png"):
        assert (out / "figures" / fig).stat().st_size > 1000, fig
    for kind in ("baseline", "cianet"):
        m = json.loads((out / "runs" / kind / "metrics.json").read_text())
        assert set(m["localization"]) == {"0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7"}
        accs = [v for row in m["localization"].values() for v in row.values() if v is not None]
        assert all(0.0 <= v <= 1.0 for v in accs)
        assert m["n_boxes"] > 0
        assert m["auc"]["Mean"] is None or 0.0 <= m["auc"]["Mean"] <= 1.0
        pred = read_predictions(out / "runs" / kind, need=("evidence", "pointing"))
        for k in range(pred["evidence"].shape[1]):  # the AUC's ranks: the evidence breaks every saturated tie
            ev, sc = pred["evidence"][:, k], pred["scores"][:, k]
            assert len(np.unique(ev[sc == 1.0])) == int(np.sum(sc == 1.0))
            # what ties is a model output constant over images (1 epoch can leave a class's head dead)
            assert len(np.unique(ev)) >= len(np.unique(sc))
        assert m["pointing_game"]["Mean"] is not None and 0.0 <= m["pointing_game"]["Mean"] <= 1.0
    # both runs evaluated as `cianet evaluate` does, and their page linked from the report
    for kind in ("baseline", "cianet"):
        m = json.loads((out / "runs" / kind / "metrics.json").read_text())
        assert m["ci"]["auc"] and (out / "runs" / kind / "roc.png").is_file()
    page = (out / "site" / "index.html").read_text()
    assert "[site/index.html](site/index.html)" in (out / "report.md").read_text()
    assert "Runs compared" in page and '"grid": {"side"' in page
    timings = json.loads((out / "timings.json").read_text())
    assert math.isfinite(timings["total"])
    # a second run resumes: every stage is skipped, the finished report and page stand (not redrawn); --json says
    # what the demo produced
    drawn = {
        p: p.stat().st_mtime_ns for p in [out / "report.md", *(out / "figures").iterdir(), *(out / "site").rglob("*")]
    }
    capsys.readouterr()
    assert main(["demo", "--fast", "--out", str(out), "--no-progress", "--n-images", N_IMAGES, "--json"]) == 0
    again = json.loads((out / "timings.json").read_text())
    assert again["train cianet"] < timings["train cianet"]
    assert {p: p.stat().st_mtime_ns for p in drawn} == drawn
    captured = capsys.readouterr()
    assert "[demo] report: already done, skipped" in captured.err
    res = json.loads(captured.out)  # one strict object: the NaN AUCs of absent classes are null
    assert res["report"] == str(out / "report.md") and res["timings"] == again
    for kind in ("baseline", "cianet"):
        saved = json.loads((out / "runs" / kind / "metrics.json").read_text())
        assert res["runs"][kind]["run"] == str(out / "runs" / kind)
        assert (
            res["runs"][kind]["n_boxes"] == saved["n_boxes"]
            and res["runs"][kind]["auc"]["Mean"] == saved["auc"]["Mean"]
        )
