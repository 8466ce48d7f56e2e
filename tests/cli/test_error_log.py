"""An internal error (a bug) leaves its traceback in a log file the one-line message names (issue 23 item 4)."""

from __future__ import annotations

import re
from pathlib import Path

from cianet.cli import main


def test_internal_error_writes_its_traceback_to_a_log(monkeypatch, capsys, tmp_path):
    import cianet.training.loop as loop

    def broken_fit(cfg, resume=False):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(loop, "fit", broken_fit)
    monkeypatch.setenv("CIANET_LOG_DIR", str(tmp_path / "logs"))
    argv = ["train", "--config", "tiny", "--data-root", str(tmp_path), "--out", str(tmp_path / "r")]
    assert main(argv) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "internal error" in err and "--debug" in err
    named = Path(re.search(r"the traceback is in (\S+?);", err).group(1))
    logs = list((tmp_path / "logs").iterdir())
    assert logs == [named]
    text = named.read_text()
    assert "Traceback" in text and "broken_fit" in text and "TypeError: unsupported operand" in text
    assert "command: cianet train --config tiny" in text
    assert not (tmp_path / "r").exists() or not any(p.name.endswith(".log") for p in (tmp_path / "r").iterdir())


def test_an_unwritable_log_folder_still_gives_the_one_line_report(monkeypatch, capsys, tmp_path):
    import cianet.training.loop as loop

    monkeypatch.setattr(loop, "fit", lambda cfg, resume=False: 1 / 0)
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("CIANET_LOG_DIR", str(blocker / "logs"))  # a folder inside a file: cannot be made
    assert main(["train", "--config", "tiny", "--data-root", str(tmp_path), "--out", str(tmp_path / "r")]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ZeroDivisionError" in err and "traceback is in" not in err


def test_input_errors_write_no_log(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("CIANET_LOG_DIR", str(tmp_path / "logs"))
    assert (
        main(["train", "--config", "tiny", "--data-root", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()
