"""Errors: one CianetError hierarchy, one line on stderr with a documented exit code, and no silent fallback
when a path the user gave does not exist."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cianet.cli import main
from cianet.errors import CianetError, InputError, MissingPathError, NonFiniteLossError, UsageError
from helpers import make_run, one_line, tiny_config


def test_specific_errors_keep_their_builtin_bases():
    from cianet.data.io import XrayReadError

    assert issubclass(XrayReadError, CianetError) and issubclass(XrayReadError, ValueError)
    assert issubclass(NonFiniteLossError, CianetError) and issubclass(NonFiniteLossError, RuntimeError)
    assert issubclass(MissingPathError, FileNotFoundError) and issubclass(UsageError, ValueError)


def test_non_finite_loss_in_train_is_one_line(monkeypatch, capsys, tmp_path):
    import cianet.training.loop as loop

    def nan_fit(cfg, resume=False):
        raise NonFiniteLossError("non-finite loss nan at epoch 1, step 3: lower optim.lr")

    monkeypatch.setattr(loop, "fit", nan_fit)
    assert main(["train", "--config", "tiny", "--data-root", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    one_line(capsys.readouterr().err, "cianet train: error:", "non-finite loss")


def test_unexpected_exception_is_a_short_bug_report_and_debug_shows_the_traceback(monkeypatch, capsys, tmp_path):
    import cianet.training.loop as loop

    def broken_fit(cfg, resume=False):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(loop, "fit", broken_fit)
    argv = ["train", "--config", "tiny", "--data-root", str(tmp_path), "--out", str(tmp_path / "r")]
    assert main(argv) == 3
    one_line(capsys.readouterr().err, "internal error", "bug", "TypeError: unsupported operand", "--debug")
    assert main(["--debug", *argv]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "broken_fit" in err


def test_a_mistyped_splits_file_is_an_error_not_a_new_split(tiny_root, tmp_path, capsys):
    argv = [
        "train",
        "--config",
        "tiny",
        "--data-root",
        str(tiny_root),
        "--image-size",
        "64",
        "--no-progress",
        "--splits",
        str(tmp_path / "splitz.json"),
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(argv) == 2
    one_line(capsys.readouterr().err, "splitz.json", "does not exist")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_mistyped_hash_index_is_an_error_not_a_recomputation(tiny_root, tmp_path):
    from cianet.run.loaders import make_loaders
    from cianet.run.protocol import build_run_data

    cfg = tiny_config(tmp_path / "run", tiny_root, negatives__hash_index=str(tmp_path / "hash.npzz"))
    with pytest.raises(MissingPathError, match="hash.npzz"):
        make_loaders(cfg, build_run_data(cfg))


def test_an_unopenable_image_cache_is_an_error(tiny_root, tmp_path):
    from cianet.run.pairing import pair_negatives
    from cianet.run.protocol import build_run_data

    cfg = tiny_config(tmp_path / "run", tiny_root, data__cache=str(tmp_path / "no-cache"))
    with pytest.raises(FileNotFoundError, match="no-cache"):
        pair_negatives(cfg, build_run_data(cfg), source=None)


def test_a_foreign_pairs_file_is_an_error_and_left_alone(tiny_root, tmp_path):
    from cianet.run.loaders import make_loaders
    from cianet.run.protocol import build_run_data

    run = tmp_path / "run"
    run.mkdir()
    (run / "pairs.json").write_text(json.dumps({"format": "something else"}))
    cfg = tiny_config(run, tiny_root)
    with pytest.raises(ValueError, match="pairs"):
        make_loaders(cfg, build_run_data(cfg))
    assert json.loads((run / "pairs.json").read_text()) == {"format": "something else"}


def test_building_loaders_writes_nothing(tiny_root, tmp_path):
    """The loaders of a run (as evaluation builds them) read the run folder and never write into it."""
    from cianet.run.loaders import make_loaders
    from cianet.run.pairing import PAIRS_FILE, pair_negatives, save_pairs
    from cianet.run.protocol import build_run_data

    run = tmp_path / "run"
    run.mkdir()
    cfg = tiny_config(run, tiny_root)
    data = build_run_data(cfg)
    _, _, test_ds, _ = make_loaders(cfg, data)
    assert list(run.iterdir()) == []
    pairing = pair_negatives(cfg, data, test_ds.source)
    assert save_pairs(pairing, run) == run / PAIRS_FILE  # what training does, on rank 0 only
    again = pair_negatives(cfg, data, test_ds.source)
    assert again.sampler is None  # read back from pairs.json: nothing new to save
    assert again.test(0) == pairing.test(0)


@pytest.mark.slow
def test_bundle_refuses_a_missing_cache_folder(tmp_path, capsys):
    run, _ = make_run(tmp_path)
    assert (
        main(
            [
                "bundle",
                "--run",
                str(run),
                "--out",
                str(tmp_path / "m.cianet"),
                "--cache",
                str(tmp_path / "cache-typo"),
                "--no-progress",
            ]
        )
        == 2
    )
    one_line(capsys.readouterr().err, "cache-typo", "does not exist")


def test_usage_errors_exit_2_with_one_line(capsys, tmp_path):
    assert main(["prepare", "--cache", str(tmp_path / "c")]) == 2
    one_line(capsys.readouterr().err, "--data-root is required")
    assert issubclass(InputError, CianetError)


@pytest.mark.slow
def test_predict_with_only_unreadable_inputs_exits_1(tmp_path, capsys):
    from cianet.inference.bundle import bundle_from_run
    from cianet.run.bundle_file import save_bundle

    run, _ = make_run(tmp_path, kind="baseline")
    model = save_bundle(bundle_from_run(run, progress=False), tmp_path / "m.cianet")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    assert (
        main(
            [
                "predict",
                str(tmp_path / "bad.png"),
                "--model",
                str(model),
                "--out",
                str(tmp_path / "out"),
                "--no-progress",
            ]
        )
        == 1
    )
    assert "predicted 0 of 1 images" in capsys.readouterr().out


def test_model_has_a_public_test_grid_method():
    import torch

    from cianet.models.cianet import build_model

    model = build_model("baseline", backbone="resnet18", test_upsample=8, head_channels=8).eval()
    f_bar = torch.randn(1, 512, 2, 2)
    assert model.test_grid_logits(f_bar).shape == (1, 14, 8, 8)
    model.test_upsample = None
    np.testing.assert_allclose(model.test_grid_logits(f_bar).detach().numpy(), model.head(f_bar).detach().numpy())
