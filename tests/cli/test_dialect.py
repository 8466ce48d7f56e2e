"""One CLI dialect: the same flag means the same thing in every command (parsing only; no work is done)."""

from __future__ import annotations

import pytest


def parse(argv):
    """``argv`` parsed as ``cianet.cli.main`` parses it: with the parser of the command it names alone."""
    from cianet.cli import build_parser, command_of

    return build_parser(command_of(argv)).parse_args(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["prepare", "--data-root", "D", "--cache", "C"],
        ["canonical", "--data-root", "D", "--out", "c.png"],
        ["synth", "OUT"],
        ["align-eval", "--align", "a.pt", "--data-root", "D"],
        ["bench"],
    ],
)
def test_image_side_is_image_size_everywhere(argv):
    assert parse(argv + ["--image-size", "256"]).size == 256
    assert parse(argv + ["--size", "256"]).size == 256  # the older spelling still works


def test_hash_side_and_batch_size_spellings():
    args = parse(["hash", "--data-root", "D", "--out", "h.npz", "--hash-size", "8", "--image-size", "128"])
    assert (args.size, args.image_size) == (8, 128)  # the hash side is not the image side
    assert parse(["bench", "--batch-size", "4"]).batch == 4 == parse(["bench", "--batch", "4"]).batch


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "x.png", "--model", "m", "--out", "o"],
        ["bundle", "--run", "r", "--out", "o"],
        ["hash", "--data-root", "D", "--out", "h.npz"],
        ["align-eval", "--align", "a.pt", "--data-root", "D"],
        ["evaluate", "--run", "r"],
    ],
)
def test_device_defaults_to_auto(argv):
    assert parse(argv).device == "auto"


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "x.png", "--model", "m", "--out", "o"],
        ["bundle", "--run", "r", "--out", "o"],
        ["view", "d"],
        ["evaluate", "--run", "r"],
        ["index", "--data-root", "D"],
        ["bench"],
        ["bundle", "info", "m"],
    ],
)
def test_commands_that_print_a_result_take_json(argv):
    assert parse(argv + ["--json"]).json is True


def test_train_align_schedule_flags_set_the_alignment_schedule():
    from cianet.commands.common import config_from_args
    from cianet.commands.train_align import set_alignment_schedule
    from cianet.errors import UsageError

    args = parse(["train-align", "--config", "tiny", "--epochs", "3", "--batch-size", "5", "--lr", "0.02"])
    cfg = config_from_args(args)
    set_alignment_schedule(cfg, args)
    assert (cfg.align.epochs, cfg.align.batch_size, cfg.align.lr) == (3, 5, 0.02)
    args = parse(["train-align", "--config", "tiny", "--lr", "0.5"])
    args.lr = -1.0  # a value config_from_args let through for optim.lr would still be refused for align.lr
    with pytest.raises(UsageError, match="--lr -1.0: align.lr must be > 0"):
        set_alignment_schedule(config_from_args(parse(["train-align", "--config", "tiny"])), args)


def test_cianet_progress_is_honoured_by_the_canonical_mean(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    import numpy as np
    from PIL import Image

    from cianet.data.canonical import mean_of_records

    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(tmp_path / "a.png")
    recs = [SimpleNamespace(name="a.png", path=tmp_path / "a.png")]
    for env, shown in (("1", True), ("0", False)):
        monkeypatch.setenv("CIANET_PROGRESS", env)  # stderr is no terminal under pytest
        res = mean_of_records(recs, 8)
        assert res.mean == pytest.approx(np.full((8, 8), 100 / 255), abs=1e-6)
        assert ("canonical: averaging" in capsys.readouterr().err) is shown
    assert "canonical: averaging" not in (mean_of_records(recs, 8, progress=False), capsys.readouterr().err)[1]


@pytest.mark.parametrize(
    "argv",
    [
        ["synth", "OUT"],
        ["prepare", "--data-root", "D", "--cache", "C"],
        ["canonical", "--data-root", "D", "--out", "c.png"],
        ["hash", "--data-root", "D", "--out", "h.npz"],
        ["train-align"],
        ["train"],
        ["evaluate", "--run", "r"],
        ["experiment", "table1"],
        ["demo"],
        ["bundle", "--run", "r", "--out", "o"],
        ["predict", "x.png", "--model", "m", "--out", "o"],
        ["view", "d"],
    ],
)
def test_one_progress_switch_on_every_long_command(argv):
    assert parse(argv + ["--no-progress"]).no_progress is True


def test_counts_and_strategies_have_their_own_flags():
    assert parse(["bundle", "--run", "r", "--out", "o"]).negatives == 1000
    assert parse(["bundle", "--run", "r", "--out", "o", "--bank-size", "7"]).negatives == 7
    assert parse(["bundle", "--run", "r", "--out", "o", "--negatives", "7"]).negatives == 7  # older spelling
    assert parse(["train", "--negatives", "random"]).negatives == "random"
    assert parse(["splits", "--data-root", "D", "--out", "s.json"]).folds == 5
    assert parse(["splits", "--data-root", "D", "--out", "s.json", "--n-folds", "3"]).folds == 3
    assert parse(["experiment", "table1", "--folds", "0,1"]).folds == "0,1"


def test_train_align_backbone_sets_the_alignment_backbone():
    from cianet.commands.common import config_from_args
    from cianet.commands.train_align import set_alignment_schedule
    from cianet.errors import UsageError

    args = parse(["train-align", "--config", "tiny", "--backbone", "resnet34"])
    cfg = config_from_args(args)
    set_alignment_schedule(cfg, args)
    assert cfg.align.backbone == "resnet34"  # the network train-align trains, not the classifier's alone
    args.backbone = "resnet999"
    with pytest.raises(UsageError, match="--backbone resnet999: align.backbone"):
        set_alignment_schedule(cfg, args)
