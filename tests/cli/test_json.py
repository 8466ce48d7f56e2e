"""``--json`` on every command that prints a result: stdout is exactly one strict JSON object (no NaN) that says
what the command produced; progress and messages go to stderr."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cianet.cli import main
from helpers import NARROW

TINY_PATIENTS = 12  # tiny_root: 24 images (the counts below), enough for every command here, trainings included

#: the commands that print a result; each one takes --json (checked against the parser below)
RESULT_COMMANDS = (
    "synth",
    "index",
    "splits",
    "prepare",
    "canonical",
    "hash",
    "train-align",
    "align-eval",
    "train",
    "evaluate",
    "experiment",
    "demo",
    "bundle",
    "predict",
    "view",
    "export-onnx",
    "bench",
)


def one_object(capsys) -> dict:
    """The captured stdout as one JSON object on one line; strict (a bare NaN or Infinity fails the test)."""
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, f"stdout is not one line of JSON:\n{out}"

    def bare(token):
        pytest.fail(f"non-strict JSON token {token} in {lines[0][:200]}")

    obj = json.loads(lines[0], parse_constant=bare)
    assert isinstance(obj, dict)
    return obj


def test_every_command_that_prints_a_result_takes_json():
    import argparse
    import importlib

    from cianet.cli import COMMAND_MODULES

    sub = argparse.ArgumentParser().add_subparsers()
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    assert set(sub.choices) == set(RESULT_COMMANDS), "a command was added: does it print a result? add --json"
    for name, parser in sub.choices.items():
        assert "--json" in parser.format_help(), name


def test_print_json_is_strict_and_on_the_saved_stdout(capsys):
    """NaN and infinities become null, paths become strings; with --json the work's own stdout goes to stderr."""
    from types import SimpleNamespace

    from cianet.cli import result_stdout
    from cianet.commands.common import print_json

    args = SimpleNamespace(json=True)
    with result_stdout(args):
        print("chatter of a library")  # would corrupt the JSON on stdout
        print_json(args, {"auc": float("nan"), "n": [1.0, float("inf")], "path": Path("a") / "b"})
    cap = capsys.readouterr()
    assert "chatter of a library" in cap.err and "chatter" not in cap.out
    assert json.loads(cap.out) == {"auc": None, "n": [1.0, None], "path": str(Path("a") / "b")}
    args = SimpleNamespace(json=False)
    with result_stdout(args):
        print("a table")
    assert capsys.readouterr().out == "a table\n"  # without --json nothing moves


@pytest.mark.slow
def test_data_commands_print_one_json_object(tiny_root, tmp_path, capsys):
    # synth: the phantom's summary
    assert (
        main(
            [
                "synth",
                str(tmp_path / "ph"),
                "--n-images",
                "24",
                "--image-size",
                "64",
                "--workers",
                "1",
                "--no-progress",
                "--json",
            ]
        )
        == 0
    )
    s = one_object(capsys)
    assert s["images"] == 24 and s["size"] == 64 and s["out_dir"] == str(tmp_path / "ph")
    assert 0 < s["no_finding"] < 24 and (tmp_path / "ph" / "Data_Entry_2017.csv").is_file()
    assert (
        main(
            [
                "synth",
                str(tmp_path / "ph_csv"),
                "--layout",
                "csv",
                "--n-images",
                "24",
                "--image-size",
                "64",
                "--workers",
                "1",
                "--no-progress",
                "--json",
            ]
        )
        == 0
    )
    s = one_object(capsys)  # the folder written, not the temporary NIH-layout one it was converted from
    assert s["out_dir"] == str(tmp_path / "ph_csv") and s["layout"]["name"] == "csv"

    # splits: the file written and its counts
    assert (
        main(["splits", "--data-root", str(tiny_root), "--out", str(tmp_path / "s.json"), "--n-folds", "3", "--json"])
        == 0
    )
    s = one_object(capsys)
    written = json.loads((tmp_path / "s.json").read_text())
    assert s["out"] == str(tmp_path / "s.json") and s["seed"] == 0 and s["images"] == 24
    assert s["counts"] == written["counts"] and len(s["counts"]["localization_folds"]) == 3

    # prepare: the cache (folder, size, counts), then --verify alone: its report
    cache = tmp_path / "cache"
    assert (
        main(
            [
                "prepare",
                "--data-root",
                str(tiny_root),
                "--image-size",
                "32",
                "--cache",
                str(cache),
                "--workers",
                "1",
                "--no-progress",
                "--json",
            ]
        )
        == 0
    )
    s = one_object(capsys)
    assert (s["cache"], s["size"], s["images"], s["failed"], s["verify"]) == (str(cache), 32, 24, 0, None)
    assert main(["prepare", "--cache", str(cache), "--verify", "--json"]) == 0
    s = one_object(capsys)
    assert s["cache"] == str(cache) and s["verify"]["ok"] is True and s["verify"]["count"] == 24

    # canonical: the three files, the images averaged and the crop
    out = tmp_path / "canonical.png"
    assert (
        main(
            [
                "canonical",
                "--data-root",
                str(tiny_root),
                "--n",
                "8",
                "--image-size",
                "64",
                "--out",
                str(out),
                "--crop",
                "6,4,58,50",
                "--no-progress",
                "--json",
            ]
        )
        == 0
    )
    s = one_object(capsys)
    assert s["canonical"] == str(out) and Path(s["mean"]).is_file() and Path(s["json"]).is_file()
    assert (s["size"], s["n_used"], s["crop"], s["crop_source"]) == (64, 8, [6, 4, 58, 50], "user")

    # hash: the index and its counts
    assert (
        main(
            [
                "hash",
                "--data-root",
                str(tiny_root),
                "--out",
                str(tmp_path / "h.npz"),
                "--hash-size",
                "8",
                "--cache",
                str(cache),
                "--no-progress",
                "--json",
            ]
        )
        == 0
    )
    s = one_object(capsys)
    n_no_finding = sum(",No Finding," in line for line in (tiny_root / "Data_Entry_2017.csv").read_text().splitlines())
    assert (s["images"], s["hash_size"], s["aligned"], s["absent"], s["failed"]) == (n_no_finding, 8, False, 0, 0)
    assert s["out"] == str(tmp_path / "h.npz") and 0 < s["patients"] <= s["images"]


@pytest.mark.slow
def test_training_commands_print_one_json_object(tiny_root, tmp_path, capsys):
    """train-align, train and experiment at 64 px for one epoch (seconds each on one core)."""
    small = [
        "--config",
        "tiny",
        *NARROW,
        "--data-root",
        str(tiny_root),
        "--image-size",
        "64",
        "--workers",
        "0",
        "--no-progress",
        "--json",
        "--set",
        "run.threads=1",
    ]
    net = [
        "--set",
        "model.test_upsample=16",
        "--set",
        "model.head_channels=16",
        "--batch-size",
        "4",
        "--epochs",
        "1",
        "--set",
        "protocol.unannotated_ratio=0.5",
    ]
    assert (
        main(
            [
                "canonical",
                "--data-root",
                str(tiny_root),
                "--n",
                "20",
                "--image-size",
                "64",
                "--crop",
                "6,4,58,50",
                "--out",
                str(tmp_path / "c.png"),
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "train-align",
                *small,
                "--canonical",
                str(tmp_path / "c.png"),
                "--out",
                str(tmp_path / "align"),
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--set",
                "align.input_size=32",
                "--set",
                "align.max_images=16",
            ]
        )
        == 0
    )
    s = one_object(capsys)
    assert s["checkpoint"] == str(tmp_path / "align" / "align.pt") and Path(s["checkpoint"]).is_file()
    assert s["epochs"] == 1 and s["last_epoch"]["epoch"] == 0 and math.isfinite(s["last_epoch"]["loss"])

    assert main(["train", *small, *net, "--out", str(tmp_path / "run")]) == 0
    s = one_object(capsys)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert s["run"] == str(tmp_path / "run") and Path(s["checkpoint"]).is_file()
    assert s["metrics_file"] == str(tmp_path / "run" / "metrics.json") and s["n_images"] == saved["n_images"] > 0
    assert set(s["localization"]) == {f"{t / 10:g}" for t in range(1, 8)} and "Mean" in s["auc"]

    assert main(["experiment", "table1", *small, *net, "--folds", "0", "--out", str(tmp_path / "t1")]) == 0
    s = one_object(capsys)
    assert s["table_md"] == str(tmp_path / "t1" / "table1.md") and Path(s["table_md"]).is_file()
    assert s["experiment"] == "table1" and s["folds"] == [0] and set(s["results"]) == {"Base", "CIA-Net"}
    assert "CIA-Net - Base" in s["comparisons"]


# export-onnx --json: in tests/test_onnx.py, beside the exports it reuses (a process's first ONNX export pays
# seconds of exporter warm-up, so the exports share one test file, hence one test process)
