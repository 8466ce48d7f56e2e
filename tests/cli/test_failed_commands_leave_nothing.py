"""A command that fails on its input leaves no output folder or file behind, so the corrected retry is not
refused as "not empty" or "not ours" (issue 21: "a failed command leaves no folder that blocks its retry")."""

from __future__ import annotations

import pytest

from cianet.cli import main

# (command line with OUT for the output path and MISSING for a path that does not exist, what the error names)
CASES = [
    (["train-align", "--data-root", "MISSING", "--out", "OUT"], "does not exist"),
    (["hash", "--data-root", "MISSING", "--out", "OUT/h.npz"], "not a folder"),
    (["train", "--data-root", "MISSING", "--out", "OUT"], "does not exist"),
    (["evaluate", "--run", "MISSING", "--out", "OUT"], "--data-root"),
    (["bundle", "--run", "MISSING", "--out", "OUT/m.cianet"], "does not exist"),
    (["view", "MISSING", "--out", "OUT"], "no such folder"),
    (["splits", "--data-root", "MISSING", "--out", "OUT/s.json"], "not a folder"),
    (["experiment", "evidence", "--data-root", "MISSING", "--out", "OUT"], "does not exist"),
    (["canonical", "--data-root", "MISSING", "--out", "OUT/c"], ".png"),
]


@pytest.mark.parametrize(
    ("argv", "named"), CASES, ids=[c[0][0] + ("-" + c[0][1] if c[0][0] == "experiment" else "") for c in CASES]
)
def test_a_failed_command_leaves_no_output_behind(argv, named, tmp_path, capsys):
    out, missing = tmp_path / "out", tmp_path / "missing"
    line = [a.replace("OUT", str(out)).replace("MISSING", str(missing)) for a in argv]
    assert main(line) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err, err
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))
