"""`cianet demo --fast` end to end: every stage runs, the report holds both models' tables and figures."""

from __future__ import annotations

import json
import math
import re

import pytest

pytestmark = pytest.mark.slow


def test_fast_demo_writes_a_complete_report(tmp_path, capsys):
    import numpy as np

    from cianet.cli import main
    from cianet.run.scoring import read_predictions

    out = tmp_path / "demo"
    # stderr is not a terminal here (captured, as when redirected to a file): no progress bar, without --no-progress
    assert main(["demo", "--fast", "--out", str(out), "--n-images", "200"]) == 0
    report = (out / "report.md").read_text()
    captured = capsys.readouterr()
    assert "report:" in captured.out
    assert not re.search(r"\d+%\||it/s|img/s|s/it", captured.err), captured.err[-2000:]
    for heading in ("## Verdict", "## Localization accuracy", "## Classification AUC", "| 0.5 | Base |", "CIA-Net"):
        assert heading in report
    verdict = next(line for line in report.splitlines() if "localization accuracy at T(IoU) = 0.5" in line)
    assert sum(w in verdict for w in ("CIA-Net beats Base", "CIA-Net loses to Base", "No significant difference")) == 1
    assert "95% CI [" in verdict and "| loc. acc. T(IoU)=0.5 |" in report
    assert "16 x 16 grid" in report and "largest cell of |M+ - M-|" in report  # the grid and the mechanism
    assert "## Alignment" in report and "of the warp removed" in report  # the alignment residual
    assert "## Calibration-free localization" in report and "| pointing game |" in report
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
    # a second run resumes: every stage is skipped, the report is rewritten; --json says what the demo produced
    capsys.readouterr()
    assert main(["demo", "--fast", "--out", str(out), "--no-progress", "--n-images", "200", "--json"]) == 0
    again = json.loads((out / "timings.json").read_text())
    assert again["train cianet"] < timings["train cianet"]
    res = json.loads(capsys.readouterr().out)  # one strict object: the NaN AUCs of absent classes are null
    assert res["report"] == str(out / "report.md") and res["timings"] == again
    for kind in ("baseline", "cianet"):
        saved = json.loads((out / "runs" / kind / "metrics.json").read_text())
        assert res["runs"][kind]["run"] == str(out / "runs" / kind)
        assert (
            res["runs"][kind]["n_boxes"] == saved["n_boxes"]
            and res["runs"][kind]["auc"]["Mean"] == saved["auc"]["Mean"]
        )
