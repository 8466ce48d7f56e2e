"""Progress bars only on a terminal unless asked for (--progress, CIANET_PROGRESS), counting images."""

from __future__ import annotations

import io
import re
import sys

import pytest

from helpers import tiny_config, write_tiny_nih

BAR = re.compile(r"\d+%\|")  # tqdm's "42%|####" (or "|" after a count without a total)


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_rules(monkeypatch):
    from cianet.utils.progress import forced_progress, progress_enabled

    monkeypatch.delenv("CIANET_PROGRESS", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not progress_enabled(False) and not progress_enabled(None)  # "not objecting" forces nothing
    monkeypatch.setattr(sys, "stderr", Tty())
    assert progress_enabled(False) and progress_enabled(None) and not progress_enabled(True)
    monkeypatch.setenv("CIANET_PROGRESS", "0")
    assert not progress_enabled(False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setenv("CIANET_PROGRESS", "1")
    assert progress_enabled(None) and not progress_enabled(True)
    monkeypatch.delenv("CIANET_PROGRESS")
    with forced_progress(True):
        assert progress_enabled(False) and not progress_enabled(True)
    with forced_progress(False):
        monkeypatch.setattr(sys, "stderr", Tty())
        assert not progress_enabled(None)
    assert progress_enabled(None)  # restored


def test_batch_bar_counts_images(monkeypatch):
    from cianet.utils.progress import batch_progress

    monkeypatch.setenv("CIANET_PROGRESS", "1")
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    batches = [{"image": [0] * 4}, {"image": [0] * 4}, {"image": [0] * 3}]
    seen = list(batch_progress(batches, "t", 11))
    assert seen == batches
    assert "11/11" in err.getvalue() and "img" in err.getvalue()


def test_every_long_command_has_both_flags():
    from cianet.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in (
        "synth",
        "prepare",
        "canonical",
        "hash",
        "train-align",
        "train",
        "evaluate",
        "demo",
        "bundle",
        "predict",
        "view",
    ):
        flags = {s for a in sub.choices[name]._actions for s in a.option_strings}
        assert {"--progress", "--no-progress"} <= flags, name


@pytest.mark.slow  # trains a tiny model for one epoch, twice (~1 s each)
def test_training_off_a_terminal_writes_no_bar_unless_asked(tmp_path, monkeypatch, capsys):
    from cianet.training.loop import fit

    monkeypatch.delenv("CIANET_PROGRESS", raising=False)
    root = write_tiny_nih(tmp_path / "data", n_patients=7)  # the fewest with an annotated image per fold
    cfg = tiny_config(tmp_path / "run", root, optim__epochs=1)
    cfg.run.progress = True  # the library default: a bar where one is welcome, not forced into a log
    fit(cfg)
    assert not BAR.search(capsys.readouterr().err)
    monkeypatch.setenv("CIANET_PROGRESS", "1")
    cfg = tiny_config(tmp_path / "run2", root, optim__epochs=1)
    cfg.run.progress = True
    fit(cfg)
    err = capsys.readouterr().err
    assert BAR.search(err) and "img" in err
