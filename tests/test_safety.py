"""The fault corpus (issue 11): what a careless or hostile user can do to cianet, generated here, with the
exact outcome asserted: exit status, the one-line message, nothing of the user's lost, nothing left behind.

Data loss first (demo --fresh, prepare, synth --overwrite, two predicts into one folder, killed checkpoint
writes, concurrent writers), then config values and flags, then strict JSON. The SIGKILL-and-resume cases
are at the end and marked slow.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tqdm import tqdm

from cianet.cli import main
from cianet.errors import EXIT_SOME_FAILED, InputError, UsageError
from helpers import NARROW, one_line

#: the tiny set of this module (conftest's tiny_root): 12 patients, as the kill-and-resume runs train on it
TINY_PATIENTS = 12


# ------------------------------------------------------------------------------------------- data loss
def test_demo_never_empties_a_folder_it_did_not_make(tmp_path, capsys, monkeypatch):
    mine = tmp_path / "work"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    assert main(["demo", "--fast", "--fresh", "--out", str(mine), "--no-progress"]) == 2
    one_line(capsys.readouterr().err, str(mine), "thesis.tex", "new or empty folder")
    assert (mine / "thesis.tex").read_text() == "years of work" and len(list(mine.iterdir())) == 1
    # --out . : the working folder is refused just the same
    monkeypatch.chdir(mine)
    assert main(["demo", "--fast", "--out", ".", "--no-progress"]) == 2
    assert (mine / "thesis.tex").exists() and len(list(mine.iterdir())) == 1
    capsys.readouterr()
    # a file as --out, and a negative phantom size: one line each, nothing written
    assert main(["demo", "--out", str(mine / "thesis.tex")]) == 2
    one_line(capsys.readouterr().err, "not a folder")
    assert main(["demo", "--n-images", "-3", "--out", str(tmp_path / "new")]) == 2
    one_line(capsys.readouterr().err, "--n-images", "-3")
    assert not (tmp_path / "new").exists()


def test_demo_fresh_deletes_only_the_demos_own_outputs(tmp_path, capsys):
    from cianet.utils.output_folders import claim_output

    out = claim_output(tmp_path / "demo", "demo")
    (out / "runs" / "cianet").mkdir(parents=True)
    (out / "runs" / "cianet" / "checkpoint.pt").write_bytes(b"old")
    (out / "report.md").write_text("old report")
    (out / "my-notes.txt").write_text("keep me")  # added by the user later
    # --seed -1 stops the demo at its first stage, right after --fresh has cleared the old outputs
    assert main(["demo", "--fast", "--fresh", "--seed", "-1", "--out", str(out), "--no-progress"]) == 2
    assert "seed" in capsys.readouterr().err
    assert (out / "my-notes.txt").read_text() == "keep me"
    assert not (out / "runs").exists() and not (out / "report.md").exists()
    assert not (out / ".cianet.lock").exists()  # released on the error


def test_prepare_refuses_a_folder_that_is_not_its_cache(tiny_root, tmp_path, capsys):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "index.json").write_text('{"my": "own index"}')
    np.save(target / "images.npy", np.arange(10))
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    for extra in ([], ["--rebuild"]):  # --rebuild replaces a cianet cache, never someone else's files
        assert (
            main(
                [
                    "prepare",
                    "--data-root",
                    str(tiny_root),
                    "--size",
                    "32",
                    "--cache",
                    str(target),
                    "--workers",
                    "1",
                    *extra,
                ]
            )
            == 2
        )
        one_line(capsys.readouterr().err, "not a cianet cache", "index.json")
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before


def test_prepare_keeps_another_cache_unless_rebuild(tiny_root, tmp_path, capsys):
    cache = tmp_path / "cache"
    args = ["prepare", "--data-root", str(tiny_root), "--cache", str(cache), "--workers", "1"]
    assert main([*args, "--size", "32"]) == 0
    before = (cache / "images.npy").read_bytes()
    capsys.readouterr()
    assert main([*args, "--size", "64"]) == 2
    one_line(capsys.readouterr().err, "at 32x32", "--rebuild")
    assert (cache / "images.npy").read_bytes() == before
    assert main([*args, "--size", "64", "--rebuild"]) == 0
    assert np.load(cache / "images.npy").shape[1:] == (64, 64)


def test_synth_overwrite_deletes_only_what_synth_wrote(tmp_path, capsys):
    out = tmp_path / "ds"
    base = ["synth", str(out), "--size", "32", "--workers", "1", "--seed", "1"]
    assert main([*base, "--n-images", "6"]) == 0
    real = out / "images" / "00000032_037.png"  # a real image the user put there, NIH-named
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(real)
    real_bytes = real.read_bytes()
    capsys.readouterr()
    assert main([*base, "--n-images", "3", "--overwrite"]) == 0
    assert real.read_bytes() == real_bytes
    written = sorted(p.name for p in (out / "images").iterdir())
    assert len(written) == 4 and "00000032_037.png" in written  # the three planned images and the user's one

    # A real data set (no synth_truth.csv) is never overwritten, --overwrite or not.
    nih = tmp_path / "nih"
    (nih / "images").mkdir(parents=True)
    (nih / "Data_Entry_2017.csv").write_text("Image Index,Finding Labels\n")
    assert main(["synth", str(nih), "--n-images", "3", "--size", "32", "--workers", "1", "--overwrite"]) == 2
    one_line(capsys.readouterr().err, "Data_Entry_2017.csv", "not written by cianet synth")
    assert (nih / "Data_Entry_2017.csv").read_text() == "Image Index,Finding Labels\n"


def test_synth_refuses_an_absurd_size_with_one_line(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "x"), "--size", "999999", "--n-images", "2"]) == 2
    one_line(capsys.readouterr().err, "size", "999999")


@pytest.fixture(scope="module")
def bundle_and_images(chest_models, tmp_path_factory):
    """conftest's baseline bundle (read-only) and a folder of three of its data set's images."""
    run, images = chest_models.run("base")
    src = tmp_path_factory.mktemp("predict_safety") / "in"
    src.mkdir()
    for name in sorted(images)[:3]:
        (src / name).write_bytes((run.parent / "data" / "images" / name).read_bytes())
    return chest_models.bundle("base"), src


@pytest.mark.slow
def test_two_predicts_into_one_folder_never_mix(bundle_and_images, tmp_path, capsys):
    model, src = bundle_and_images
    out = tmp_path / "out"
    files = sorted(src.iterdir())
    base = ["--model", str(model), "--out", str(out), "--no-progress", "--no-overlay"]
    assert main(["predict", str(files[0]), str(files[1]), *base]) == 0
    first = (out / "predictions.csv").read_text()
    (out / "reading-notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["predict", str(files[2]), *base]) == 2
    one_line(capsys.readouterr().err, "earlier cianet predict", "--overwrite")
    assert (out / "predictions.csv").read_text() == first  # untouched
    assert main(["predict", str(files[2]), *base, "--overwrite"]) == 0
    rows = (out / "predictions.csv").read_text().splitlines()
    assert len(rows) == 2 and files[2].name in rows[1]
    assert not (out / f"{files[0].stem}.json").exists()  # the first run's outputs went with it ...
    assert (out / "reading-notes.txt").read_text() == "mine"  # ... and nothing else
    assert not (out / ".cianet.lock").exists()


@pytest.mark.slow
def test_a_folder_put_where_predict_writes_an_image_file_fails_that_image_only(bundle_and_images, tmp_path, capsys):
    """A user's folder at the path of one image's output (the old file replaced by it, then --overwrite): that
    image is an error row naming the path, the others are written (exit 1 with --strict, as for an unreadable
    image); the folder and its contents stay."""
    model, src = bundle_and_images
    out = tmp_path / "out"
    files = sorted(src.iterdir())
    base = ["--model", str(model), "--out", str(out), "--no-progress", "--no-heatmaps", "--batch-size", "3"]
    assert main(["predict", str(src), *base]) == 0
    blocked = out / f"{files[1].stem}.overlay.png"
    blocked.unlink()
    blocked.mkdir()
    (blocked / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["predict", str(src), *base, "--overwrite", "--strict"]) == EXIT_SOME_FAILED
    one_line(capsys.readouterr().err, f"skipped {files[1]}", str(blocked), "is a folder")
    assert (blocked / "notes.txt").read_text() == "mine"
    rows = {r["file"]: r for r in csv.DictReader((out / "predictions.csv").open())}
    assert [rows[str(f)]["status"] for f in files] == ["ok", "error", "ok"]
    assert "is a folder" in rows[str(files[1])]["error"]
    assert all((out / f"{f.stem}.overlay.png").is_file() for f in (files[0], files[2]))
    assert not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_predict_out_is_a_file_and_strict(bundle_and_images, tmp_path, capsys):
    model, src = bundle_and_images
    afile = tmp_path / "results.csv"
    afile.write_text("precious")
    assert main(["predict", str(src), "--model", str(model), "--out", str(afile), "--no-progress"]) == 2
    one_line(capsys.readouterr().err, "not a folder")
    assert afile.read_text() == "precious"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    good = sorted(src.iterdir())[0]
    args = [str(good), str(bad), "--model", str(model), "--no-progress", "--no-overlay"]
    assert main(["predict", *args, "--out", str(tmp_path / "o1")]) == 0  # some predicted: ok without --strict
    assert main(["predict", *args, "--out", str(tmp_path / "o2"), "--strict"]) == 1


def _dead_pid() -> int:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid  # a pid that no longer runs


def test_a_journal_lists_what_a_killed_writer_wrote_and_overwrite_removes_exactly_that(tmp_path):
    from cianet.utils.output_folders import claim_output, journal_outputs, owned_output, read_marker

    out = claim_output(tmp_path / "p", "predict")
    journal_outputs(out, ["a.json", "a.heatmaps.npz"])  # recorded before they are written
    (out / "a.json").write_text("{}")
    (out / "a.heatmaps.npz").write_bytes(b"npz")
    journal_outputs(out, ["b.json", "b.heatmaps.npz"])
    (out / f".b.json.{_dead_pid()}.x1y2.tmp").write_text("half")  # b.json's write was killed (SIGKILL) ...
    with open(out / ".cianet-output.journal", "ab") as fh:
        fh.write(b'\n["c.js')  # ... and a line torn by a crash is skipped, without spoiling the next one
    journal_outputs(out, ["d.json"])
    (out / "notes.txt").write_text("mine")
    (out / ".notes.txt.1.x1y2.tmp").write_text("not listed")  # a temp of a name it did not write: kept
    assert read_marker(out)["files"] == ["a.heatmaps.npz", "a.json", "b.heatmaps.npz", "b.json", "d.json"]
    with pytest.raises(InputError, match="earlier cianet predict"):
        with owned_output(out, "predict"):
            pass
    with owned_output(out, "predict", overwrite=True):
        journal_outputs(out, ["e.json"])  # a writer records a file before writing it ...
        (out / "e.json").write_text("{}")
        (out / "late-notes.txt").write_text("mine")  # ... and what it does not record is never claimed
    assert sorted(p.name for p in out.iterdir()) == [
        ".cianet-output.json",
        ".notes.txt.1.x1y2.tmp",
        "e.json",
        "late-notes.txt",
        "notes.txt",
    ]
    assert read_marker(out)["files"] == ["e.json"]


# ------------------------------------------------------------------------------------------ run folders
def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_train_never_writes_into_a_folder_it_did_not_make(tiny_root, tmp_path, capsys):
    from cianet.config import load_config, save_config

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my: notes\n")
    (mine / "metrics.json").write_text('{"auc": 0.99}')
    only_config = tmp_path / "only-config"  # a user's own cianet config beside where the run should go
    only_config.mkdir()
    save_config(load_config("tiny"), only_config / "config.yaml")
    for out, holds in ((mine, "config.yaml, metrics.json"), (only_config, "config.yaml")):
        before = _listing(out)
        for command in ("train", "train-align"):
            argv = [command, "--config", "tiny", "--data-root", str(tiny_root), "--out", str(out), "--no-progress"]
            assert main(argv) == 2
            one_line(capsys.readouterr().err, f"{out}: not empty and not written by cianet {command}", holds)
            assert _listing(out) == before  # untouched: no marker, no lock, nothing replaced


def test_a_run_folder_of_the_other_kind_is_refused(tiny_root, tmp_path, capsys):
    from cianet.run.run_folder import claim_run_folder

    old_align = tmp_path / "old-align"  # train-align's folder from before markers
    old_align.mkdir()
    for name in ("align.pt", "config.yaml", "log.jsonl"):
        (old_align / name).write_text(name)
    align = claim_run_folder(tmp_path / "align", "train-align")
    (align / "align.pt").write_text("weights")
    run = claim_run_folder(tmp_path / "run", "train")
    (run / "checkpoint.pt").write_text("weights")
    cases = [
        ("train", old_align, "not empty and not written by cianet train (it holds align.pt"),
        ("train", align, "holds the output of cianet train-align, not of cianet train"),
        ("train-align", run, "holds the output of cianet train, not of cianet train-align"),
    ]
    for command, out, message in cases:
        before = _listing(out)
        argv = [command, "--config", "tiny", "--data-root", str(tiny_root), "--out", str(out), "--no-progress"]
        assert main(argv) == 2
        one_line(capsys.readouterr().err, str(out), message)
        assert _listing(out) == before


def test_a_run_folder_from_before_markers_is_adopted_only_when_it_is_one(tmp_path):
    from cianet.evaluation.plots import PLOT_FILES
    from cianet.run.checkpoints import ALIGN_CHECKPOINT, CHECKPOINT
    from cianet.run.pairing import NEGATIVES_CSV, NEGATIVES_JSON, PAIRS_FILE
    from cianet.run.protocol import SPLIT_FILE
    from cianet.run.run_folder import ALIGN_ENTRIES, TRAIN_ENTRIES, claim_run_folder
    from cianet.run.scoring import PREDICTIONS
    from cianet.utils.output_folders import read_marker

    # the names this module spells out are those the writers use
    assert {
        CHECKPOINT,
        SPLIT_FILE,
        PAIRS_FILE,
        NEGATIVES_CSV,
        NEGATIVES_JSON,
        PREDICTIONS,
        *PLOT_FILES.values(),
    } <= TRAIN_ENTRIES
    assert ALIGN_CHECKPOINT in ALIGN_ENTRIES

    def old_folder(name: str, entries: list[str]) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        for entry in entries:
            if entry in ("tb", "site"):
                (folder / entry).mkdir()
                (folder / entry / "inside").write_text("x")
            else:
                (folder / entry).write_text(entry)
        return folder

    run = old_folder(
        "run",
        [
            "checkpoint.pt",
            "config.yaml",
            "split.json",
            "pairs.json",
            "log.jsonl",
            "tb",
            "site",
            "metrics.json",
            "metrics.md",
            "predictions.npz",
            "roc.png",
            "pr.png",
            "localization.png",
            "loss.png",
            f".checkpoint.pt.{_dead_pid()}.ab12.tmp",
            ".cianet.lock",
        ],
    )
    killed_early = old_folder("killed-early", ["config.yaml", "split.json"])  # before the first checkpoint
    align = old_folder("align", ["align.pt", "config.yaml", "log.jsonl", ".cianet.lock"])
    for folder, command in ((run, "train"), (killed_early, "train"), (align, "train-align")):
        before = _listing(folder)
        claim_run_folder(folder, command)
        assert read_marker(folder)["kind"] == command
        assert {k: v for k, v in _listing(folder).items() if k != ".cianet-output.json"} == before
    not_a_run = [
        ("notes", ["checkpoint.pt", "config.yaml", "notes.txt"], "train"),  # one entry a run never writes
        ("no-evidence", ["config.yaml", "metrics.json", "log.jsonl"], "train"),  # nothing only a run writes
        ("no-align", ["config.yaml", "log.jsonl"], "train-align"),
    ]
    for name, entries, command in not_a_run:
        folder = old_folder(name, entries)
        with pytest.raises(InputError, match=f"not empty and not written by cianet {command}"):
            claim_run_folder(folder, command)
        assert read_marker(folder) is None


def test_a_killed_checkpoint_write_leaves_nothing_behind(tmp_path):
    import torch

    from cianet.run.checkpoints import save_checkpoint

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    left = tmp_path / f".checkpoint.pt.{dead.pid}.k3j2.tmp"
    left.write_bytes(b"\0" * 100_000)
    legacy = tmp_path / ".checkpoint.pt.x8q1zz.tmp"  # an older cianet's name, without a pid, an hour old
    legacy.write_bytes(b"\0" * 1000)
    os.utime(legacy, (time.time() - 3600,) * 2)
    live = tmp_path / f".checkpoint.pt.{os.getpid()}.abcd.tmp"  # a writer that still runs: kept
    live.write_bytes(b"1")
    save_checkpoint({"model": {"w": torch.zeros(2)}}, tmp_path / "checkpoint.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["checkpoint.pt", live.name])


# ------------------------------------------------------------------------------------------- bad data
def _nih_with_boxes(root: Path, boxes: list[str]) -> Path:
    from helpers import TinyImage, write_nih

    px = np.full((40, 50), 100, np.uint8)
    write_nih(
        root, [TinyImage("00000001_000.png", px, "Nodule", 1), TinyImage("00000002_000.png", px, "No Finding", 2)]
    )
    with open(root / "BBox_List_2017.csv", "a") as fh:
        fh.write("".join(line + "\n" for line in boxes))
    return root


@pytest.mark.parametrize(
    "box,problem",
    [
        ("00000001_000.png,Nodule,60,10,5,5", "lies outside the 50x40 image"),
        ("00000001_000.png,Nodule,10,10,99999,99999", "lies outside the 50x40 image"),  # larger than the image
        ("00000001_000.png,Nodule,45,35,20,20", "lies outside the 50x40 image"),  # a sixteenth of it on the image
        ("00000001_000.png,Mass,10,10,5,5", "names a finding the image does not have (Nodule)"),
        ("00000002_000.png,Nodule,10,10,5,5", "names a finding the image does not have (No Finding)"),
    ],
)
def test_index_strict_checks_boxes_against_image_and_label(box, problem, tmp_path, capsys):
    root = _nih_with_boxes(tmp_path / "d", ["00000001_000.png,Nodule,10,10,5,5", box])
    assert main(["index", "--data-root", str(root), "--strict"]) == 2
    one_line(capsys.readouterr().err, "1 bad boxes", problem)
    assert main(["index", "--data-root", str(root)]) == 0  # without --strict the index opens as before


def test_duplicate_box_rows_are_dropped_with_one_warning(tmp_path, capsys):
    from cianet.data.nih import NIHIndex

    row = "00000001_000.png,Nodule,10,10,5,5"
    root = _nih_with_boxes(tmp_path / "d", [row, row, "00000001_000.png,Nodule,20,10,5,5", row])
    capsys.readouterr()
    index = NIHIndex.from_root(root)
    assert len(index["00000001_000.png"].boxes) == 2
    one_line(capsys.readouterr().err, "2 duplicate box rows dropped", "BBox_List_2017.csv")


def test_boxes_of_unknown_images_are_warned_about(tmp_path, capsys):
    root = _nih_with_boxes(tmp_path / "d", ["00000009_000.png,Nodule,10,10,5,5"])
    assert main(["index", "--data-root", str(root)]) == 0
    assert "1 boxes name images absent from Data_Entry_2017.csv and are ignored" in capsys.readouterr().err
    assert main(["index", "--data-root", str(root), "--strict"]) == 2


def test_suspicious_images_are_read_with_a_warning_naming_them(tmp_path):
    from cianet.data.io import XrayWarning, load_xray

    twelve = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)  # 12-bit data in a 16-bit PNG
    Image.fromarray(twelve).save(tmp_path / "twelve.png")
    with pytest.warns(XrayWarning, match="twelve.png: a 16-bit PNG whose values use at most 12 bits \\(max 4095\\)"):
        assert load_xray(tmp_path / "twelve.png").max() == pytest.approx(4095 / 65535)
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tmp_path / "dot.png")
    with pytest.warns(XrayWarning, match="dot.png: a tiny 1x1 image"):
        load_xray(tmp_path / "dot.png")
    Image.fromarray(np.zeros((5, 5000), np.uint8)).save(tmp_path / "strip.png")
    with pytest.warns(XrayWarning, match="strip.png: a tiny 5000x5 image"):
        load_xray(tmp_path / "strip.png")
    Image.fromarray(np.zeros((40, 400), np.uint8)).save(tmp_path / "wide.png")
    with pytest.warns(XrayWarning, match="wide.png: an extreme 400x40 shape"):
        load_xray(tmp_path / "wide.png")
    full = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # uses all 16 bits: no warning
    Image.fromarray(full).save(tmp_path / "full.png")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", XrayWarning)
        load_xray(tmp_path / "full.png")


# ------------------------------------------------------------------------------------ corrupt artefacts
@pytest.mark.slow
def test_corrupt_bundles_are_refused_by_name(bundle_and_images, tmp_path, capsys):
    import torch

    from cianet.run.bundle_file import load_bundle, save_bundle, validate_bundle

    model, src = bundle_and_images
    good = load_bundle(model)
    nan_thr = {**good, "thresholds": [float("nan")] + list(good["thresholds"][1:])}
    with pytest.raises(InputError, match="thresholds must be numbers in \\[0, 1\\]"):
        validate_bundle(nan_thr, "x.cianet")
    key = next(k for k, t in good["model"].items() if t.is_floating_point())
    nan_w = {**good, "model": {**good["model"], key: torch.full_like(good["model"][key], float("nan"))}}
    path = save_bundle(nan_w, tmp_path / "nan.cianet")
    assert main(["predict", str(src), "--model", str(path), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    one_line(capsys.readouterr().err, "non-finite", key)
    shaped = {**good, "model": {**good["model"], key: torch.zeros(3, 1)}}
    path = save_bundle(shaped, tmp_path / "shape.cianet")
    assert main(["predict", str(src), "--model", str(path), "--out", str(tmp_path / "o2"), "--no-progress"]) == 2
    one_line(capsys.readouterr().err, "shape.cianet", "do not fit the network")


def test_a_cache_whose_names_were_swapped_is_refused(tiny_root, tmp_path):
    from cianet.data.cache import ImageCache

    cache = tmp_path / "cache"
    assert (
        main(["prepare", "--data-root", str(tiny_root), "--size", "32", "--cache", str(cache), "--workers", "1"]) == 0
    )
    index = json.loads((cache / "index.json").read_text())
    index["names"][0], index["names"][1] = index["names"][1], index["names"][0]  # rows now carry the wrong labels
    (cache / "index.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match="image names were changed after the cache was built"):
        ImageCache.open(cache)


def test_a_hash_index_with_nan_codes_is_refused(tmp_path):
    from cianet.negatives import HashIndex

    codes = np.random.default_rng(0).random((3, 8), dtype=np.float32)
    codes[1, 2] = np.nan
    good = HashIndex(np.nan_to_num(codes), ["a.png", "b.png", "c.png"], ["1", "2", "3"])
    good.save(tmp_path / "h.npz")
    with np.load(tmp_path / "h.npz") as z:
        fields = {k: z[k] for k in z.files}
    np.savez(tmp_path / "h.npz", **{**fields, "codes": codes})  # edited: a NaN in b.png's code
    with pytest.raises(ValueError, match="h.npz: hash index has non-finite codes for 1 images \\(first: b.png\\)"):
        HashIndex.load(tmp_path / "h.npz")


def test_a_hash_index_naming_images_outside_the_data_set_is_refused(tiny_root, tmp_path):
    from cianet.negatives import HashIndex
    from cianet.run.loaders import image_source
    from cianet.run.pairing import pair_negatives
    from cianet.run.protocol import build_run_data
    from helpers import tiny_config

    cfg = tiny_config(
        tmp_path / "run", tiny_root, negatives__hash_index=str(tmp_path / "h.npz"), negatives__aligned_codes=False
    )
    data = build_run_data(cfg)
    negatives = [r.name for r in data.index.records if not r.labels]
    codes = np.random.default_rng(0).random((len(negatives) + 1, 16)).astype(np.float32)
    HashIndex(codes, [*negatives, "99999999_000.png"], ["1"] * (len(negatives) + 1)).save(tmp_path / "h.npz")
    with pytest.raises(InputError, match="1 of its images are not in the data set \\(first: 99999999_000.png\\)"):
        pair_negatives(cfg, data, image_source(cfg, data.index))


def test_an_edited_pairs_file_pairing_a_positive_is_refused(tiny_root, tmp_path):
    from cianet.run.loaders import image_source
    from cianet.run.pairing import pair_negatives, save_pairs
    from cianet.run.protocol import build_run_data
    from helpers import tiny_config

    cfg = tiny_config(tmp_path / "run", tiny_root)
    data = build_run_data(cfg)
    save_pairs(pair_negatives(cfg, data, image_source(cfg, data.index)), tmp_path / "run")
    pairs_file = tmp_path / "run" / "pairs.json"
    obj = json.loads(pairs_file.read_text())
    positive = next(r.name for r in data.index.records if r.labels)
    victim = next(iter(obj["pairs"]))
    obj["pairs"][victim] = positive
    pairs_file.write_text(json.dumps(obj))
    with pytest.raises(InputError, match=f"pairs {victim} with '{positive}', which is not a No Finding image"):
        pair_negatives(cfg, data, image_source(cfg, data.index))


# ------------------------------------------------------------------------------------------------ locks
_HOLDER = """
import sys, time
from cianet.utils.output_folders import output_lock
with output_lock(sys.argv[1], "test holder"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(tiny_root, tmp_path, capsys):
    cache = tmp_path / "cache"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(cache)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        args = ["prepare", "--data-root", str(tiny_root), "--size", "32", "--cache", str(cache), "--workers", "1"]
        assert main(args) == 2
        one_line(capsys.readouterr().err, "another cianet process", f"pid {holder.pid}")
        assert not (cache / "images.npy").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (cache / ".cianet.lock").exists()  # SIGKILL left it ...
    assert main(args) == 0  # ... and the next writer sees it is stale
    assert not (cache / ".cianet.lock").exists()


def test_lock_in_process_and_unreadable_lock(tmp_path):
    from cianet.utils.output_folders import output_lock

    with output_lock(tmp_path, "first"):
        with pytest.raises(InputError, match=f"pid {os.getpid()}"):
            with output_lock(tmp_path, "second"):
                pass
    assert not (tmp_path / ".cianet.lock").exists()
    (tmp_path / ".cianet.lock").write_text("")  # a writer killed between creating and filling it
    with pytest.raises(InputError, match="starting"):
        with output_lock(tmp_path):
            pass
    os.utime(tmp_path / ".cianet.lock", (time.time() - 60,) * 2)  # ... long ago: stale
    with output_lock(tmp_path):
        pass


# --------------------------------------------------------------------------------- config and flags
BAD_SETTINGS = [
    ("optim.lr=abc", "optim.lr must be a number", "'abc'"),
    ("optim.lr=inf", "optim.lr must be a number", "'inf'"),
    ("optim.lr=.inf", "finite", "inf"),
    ("optim.lr=-0.1", "optim.lr must be > 0", "-0.1"),
    ("optim.epochs=2.5", "optim.epochs must be an integer", "2.5"),
    ("optim.epochs=0", "optim.epochs must be >= 1", "0"),
    ("run.seed=abc", "run.seed must be an integer", "'abc'"),
    ("run.seed=[1, 2]", "run.seed must be an integer", "[1, 2]"),
    ("model.backbone=resnet999", "model.backbone must be one of resnet18", "resnet999"),
    ("model.output_stride=12", "model.output_stride must be one of 8, 16, 32", "12"),
    ("data.image_size=100", "multiple of 32", "100"),
    ("protocol.fold=7", "protocol.fold must be 0 to 4", "7"),
    ("protocol.annotated_ratio=1.5", "in [0, 1]", "1.5"),
    ("negatives.strategy=best", "negatives.strategy must be one of", "best"),
    ("optim.nesterov=maybe", "true or false", "maybe"),
    ("align.warp_scale=[1.2, 0.8]", "align.warp_scale must be two numbers", "[1.2, 0.8]"),
    ("run.device=tpu", "run.device must be", "tpu"),
    ("optim.lr", "must look like section.key=value", "optim.lr"),
    ("optim.lr=[", "not valid YAML", "optim.lr=["),
    ("optim.nope=1", "unknown key optim.nope", "optim.nope"),
]


@pytest.mark.slow
@pytest.mark.parametrize("setting,message,value", BAD_SETTINGS)
def test_a_bad_setting_is_one_line_naming_key_value_and_what_is_allowed(setting, message, value, tmp_path, capsys):
    argv = ["train", "--config", "tiny", "--data-root", str(tmp_path), "--out", str(tmp_path / "r"), "--set", setting]
    assert main(argv) == 2
    one_line(capsys.readouterr().err, message, value)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "flag,value,message",
    [
        ("--epochs", "-1", "optim.epochs must be >= 1"),
        ("--lr", "nan", "finite"),
        ("--device", "tpu", "run.device"),
        ("--batch-size", "0", "optim.batch_size must be >= 1"),
        ("--backbone", "vgg", "model.backbone"),
        ("--splits", "/nope/splits.json", "does not exist"),
        ("--hash-index", "/nope/hash.npz", "does not exist"),
        ("--align", "/nope/align.pt", "does not exist"),
    ],
)
def test_bad_flags_are_refused_before_anything_runs(flag, value, message, tmp_path, capsys):
    argv = ["train", "--config", "tiny", "--data-root", str(tmp_path), "--out", str(tmp_path / "r"), flag, value]
    assert main(argv) == 2
    one_line(capsys.readouterr().err, f"{flag}", value, message)
    assert not (tmp_path / "r").exists()


def test_a_config_file_with_a_bad_value_names_the_file(tmp_path):
    from cianet.config import load_config

    path = tmp_path / "mine.yaml"
    path.write_text("optim:\n  lr: fast\n")
    with pytest.raises(UsageError, match="mine.yaml: optim.lr must be a number, got 'fast'"):
        load_config(path)


def test_shipped_recipes_and_checked_values():
    from cianet.config import check_value, load_config, shipped_configs

    for name in shipped_configs():
        load_config(name)  # every shipped recipe passes its own checks
    assert check_value("optim", "lr", 1) == 1.0 and isinstance(check_value("optim", "lr", 1), float)
    assert check_value("data", "max_images", None) is None
    with pytest.raises(ValueError, match="optim.epochs must be an integer, got True"):
        check_value("optim", "epochs", True)  # a YAML true is no epoch count


def test_resume_with_a_flag_that_would_be_ignored_is_refused(tmp_path, capsys):
    from cianet.config import load_config, save_config

    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config("tiny")
    cfg.optim.epochs, cfg.data.data_root = 1, str(tmp_path)
    save_config(cfg, run / "config.yaml")
    base = ["train", "--config", "tiny", "--data-root", str(tmp_path), "--out", str(run), "--resume"]
    assert main([*base, "--epochs", "2"]) == 2
    one_line(capsys.readouterr().err, "--epochs 2", "optim.epochs = 1", "another --out")
    assert main([*base, "--model", "baseline"]) == 2
    one_line(capsys.readouterr().err, "--model baseline", "'cianet'")
    assert main([*base, "--set", "optim.lr=0.5"]) == 2
    one_line(capsys.readouterr().err, "--set optim.lr=0.5")


def test_splits_ratios_must_sum_to_one(tiny_root, tmp_path, capsys):
    rc = main(
        ["splits", "--data-root", str(tiny_root), "--out", str(tmp_path / "s.json"), "--ratios", "0.5", "0.6", "0.2"]
    )
    assert rc == 2
    one_line(capsys.readouterr().err, "--ratios", "1.3")
    assert not (tmp_path / "s.json").exists()


def test_an_unknown_device_is_a_usage_error():
    from cianet.run.device import resolve_device

    with pytest.raises(UsageError, match="unknown device 'tpu'"):
        resolve_device("tpu")


# ----------------------------------------------------------------------------------------- tracebacks
def test_a_symlink_loop_under_the_data_root_is_skipped(tmp_path, capsys):
    root = _nih_with_boxes(tmp_path / "d", [])
    (root / "images" / "loop").symlink_to("loop")  # points at itself: ELOOP
    (root / "images" / "sub").mkdir()
    (root / "images" / "sub" / "up").symlink_to("..", target_is_directory=True)  # a folder cycle
    assert main(["index", "--data-root", str(root), "--strict"]) == 0
    assert (
        main(["prepare", "--data-root", str(root), "--size", "32", "--cache", str(tmp_path / "c"), "--workers", "1"])
        == 0
    )


def test_a_folder_where_a_file_is_written_is_one_line(tiny_root, tmp_path, capsys):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "keep.txt").write_text("x")
    assert main(["splits", "--data-root", str(tiny_root), "--out", str(folder)]) == 2
    one_line(capsys.readouterr().err, str(folder), "is a folder")
    assert [p.name for p in folder.iterdir()] == ["keep.txt"] and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow  # evaluates a run
def test_evaluate_accepts_the_checkpoint_file_of_a_run(chest_models, tiny_root, tmp_path, capsys, monkeypatch):
    # the plots are another test's (test_evaluate_plots): drawing them here would be most of this one's time
    monkeypatch.setattr("cianet.evaluation.evaluate.write_evaluation_plots", lambda *args: {})
    run = shutil.copytree(chest_models.run("base")[0], tmp_path / "run")  # evaluate writes into it: a copy
    assert (
        main(
            [
                "evaluate",
                "--run",
                str(run / "checkpoint.pt"),
                "--data-root",
                str(tiny_root),
                "--no-progress",
                "--bootstrap",
                "0",
            ]
        )
        == 0
    )
    assert (run / "metrics.json").is_file() and "AUC" in capsys.readouterr().out


def test_a_run_saves_absolute_input_paths(tmp_path, monkeypatch):
    from cianet.config import load_config, resolve_paths

    monkeypatch.chdir(tmp_path)
    cfg = load_config("tiny")
    cfg.data.data_root, cfg.protocol.splits, cfg.align.checkpoint = "data", "s.json", None
    abs_cfg = resolve_paths(cfg)
    assert abs_cfg.data.data_root == str(tmp_path / "data") and abs_cfg.protocol.splits == str(tmp_path / "s.json")
    assert cfg.data.data_root == "data"  # a copy: the caller's config is left as it was


# --------------------------------------------------------------------------------------------- JSON
def test_json_outputs_are_strict(tmp_path):
    from cianet.utils.atomic import atomic_write_json

    atomic_write_json(
        tmp_path / "t.json",
        {"auc": float("nan"), "rows": [1.0, float("inf"), {"x": -float("inf")}], "arr": np.array([0.5, np.nan])},
    )

    def refuse(token):
        raise AssertionError(f"bare {token} in JSON")

    data = json.loads((tmp_path / "t.json").read_text(), parse_constant=refuse)
    assert data == {"auc": None, "rows": [1.0, None, {"x": None}], "arr": [0.5, None]}


# ----------------------------------------------------------------------------------- SIGKILL + resume
class _ForkedCianet:
    """``cianet ARGS`` in a child forked from this process, with as much of subprocess.Popen as the kill tests
    use. The child starts with torch and cianet imported, where a fresh ``python -m cianet`` spends seconds
    importing them (a kill timed from its start landed in those imports), and a SIGKILL at its kill point stops
    it mid-run just the same. ``dies_at``: the arguments of :func:`_die_on_call`, a kill point inside the work
    that no polling can miss. torch refuses to train in a child forked after its process started autograd's
    device threads (the dynamo ONNX exporter does: tests/test_onnx.py exports in a forked child of its own)."""

    def __init__(self, *args: str, dies_at: tuple | None = None) -> None:
        _import_what_training_imports_lazily()
        self._child = multiprocessing.get_context("fork").Process(target=_exit_with_main, args=(list(args), dies_at))
        self._child.start()
        self.pid = self._child.pid

    @property
    def returncode(self) -> int | None:
        return self._child.exitcode

    def poll(self) -> int | None:
        return self._child.exitcode

    def wait(self) -> int:
        self._child.join()
        return self._child.exitcode

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill(self) -> None:
        self._child.kill()


def _import_what_training_imports_lazily() -> None:
    """Import in this process what a training child would import on its own: torch's first optimizer imports
    torch._dynamo, about 2 s of CPU in each child that this process (which trains too) pays once."""
    import torch  # lazy: only the kill tests fork trainers

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


def _exit_with_main(argv: list[str], dies_at: tuple | None) -> None:
    # tqdm's class-wide lock is a multiprocessing semaphore shared with the parent: a child SIGKILLed while
    # holding it would leave the parent waiting on it for ever (seen under pytest-xdist). The child takes a lock
    # of its own.
    tqdm.set_lock(threading.RLock())
    if dies_at is not None:
        _die_on_call(*dies_at)
    sys.exit(main(argv))  # the status the console script would exit with


def _die_on_call(owner: object, name: str, n: int, when=lambda *args: True) -> None:
    """Replace ``owner.name`` (in a forked child only) by itself, except that the n-th call for which
    ``when(*args)`` holds SIGKILLs the process on entry."""
    real, calls = getattr(owner, name), iter(range(1, n + 1))

    def dying(*args, **kwargs):
        if when(*args) and next(calls, None) == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    setattr(owner, name, dying)


def _at_save(path: Path, n: int) -> tuple:
    """``dies_at`` for the n-th atomic write of ``path``: killed as its finished temp file is about to be renamed
    onto it."""
    return (os, "replace", n, lambda src, dst: Path(dst) == path)


def _kill_when(proc: subprocess.Popen | _ForkedCianet, ready, timeout: float = 120.0) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()``; False when it ended first."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            return False
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("the process neither finished nor reached the kill point")


def _train_args(tiny_root: Path) -> list[str]:
    """``cianet train`` of the tiny recipe at 32 px (the smallest size; half the cost of 64 px) for two epochs: the
    runs the train kill tests interrupt. Table 1's protocol (80% annotated + 50% unannotated), so that the CIA-Net
    run of :func:`table1_reference` is the uninterrupted train too."""
    return ["train", *_tiny_flags(tiny_root), "--set", "protocol.unannotated_ratio=0.5"]


def _experiment_args(tiny_root: Path) -> list[str]:
    return ["experiment", "table1", *_tiny_flags(tiny_root), "--folds", "0"]


def _tiny_flags(tiny_root: Path) -> list[str]:
    return [
        "--config",
        "tiny",
        *NARROW,
        "--data-root",
        str(tiny_root),
        "--image-size",
        "32",
        "--no-progress",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--set",
        "model.test_upsample=16",
        "--set",
        "model.head_channels=16",
        "--set",
        "run.threads=1",
        "--set",
        "data.workers=0",
    ]


@pytest.fixture(scope="module")
def table1_reference(tiny_root, tmp_path_factory) -> Path:
    """What an uninterrupted ``cianet experiment table1`` writes, for the experiment kill test; its CIA-Net run
    (``cia_net/fold0``) is also what an uninterrupted ``cianet train`` of :func:`_train_args` writes, for the train
    kill test: the same recipe, protocol, fold and seed, trained once for both."""
    ref = tmp_path_factory.mktemp("table1_reference") / "ref"
    assert main([*_experiment_args(tiny_root), "--out", str(ref)]) == 0
    return ref


@pytest.mark.slow
def test_train_killed_mid_run_resumes_to_the_same_metrics_and_a_second_train_is_refused(
    tiny_root, table1_reference, tmp_path, capsys
):
    """One killed train for three properties (each kill is a train of its own): a second writer into its folder is
    refused, an old (markerless) killed run is adopted, and the resumed run equals the uninterrupted one."""
    import torch

    from cianet.run.run_folder import claim_run_folder

    common = _train_args(tiny_root)
    ref, run = table1_reference / "cia_net" / "fold0", tmp_path / "run"
    # killed once the second (last) epoch has trained, as its checkpoint is about to replace the first's: a kill
    # point inside the work, so the resume below always has an epoch to redo (a kill timed by polling could land
    # after the run had finished, and the test would pass without testing a resume)
    proc = _ForkedCianet(*common, "--out", str(run), dies_at=_at_save(run / "checkpoint.pt", 2))
    _wait_for_the_lock(run, proc)
    assert main([*common, "--out", str(run)]) == 2  # two writers into one run folder: the second is refused
    one_line(capsys.readouterr().err, f"{run}: another cianet process", f"pid {proc.pid}", "cianet train")
    assert proc.wait() == -signal.SIGKILL
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 0  # the first epoch's, undisturbed
    assert not (run / "metrics.json").exists() and (run / ".cianet.lock").exists()
    # An older cianet wrote no marker: its killed run is adopted and resumes.
    (run / ".cianet-output.json").unlink()
    assert main([*common, "--out", str(run), "--resume"]) == 0  # only the killed run needs a process of its own
    assert json.loads((run / ".cianet-output.json").read_text())["kind"] == "train"
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (ref, run))
    assert a["auc"] == b["auc"] and a["localization"] == b["localization"]
    _same_weights(ref / "checkpoint.pt", run / "checkpoint.pt")  # at 32 px the metrics alone tell little apart
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp") or p.name == ".cianet.lock"]
    # Everything train, evaluate and view write into a run folder is recognised as an old run's.
    assert main(["evaluate", "--run", str(run), "--bootstrap", "0", "--no-progress"]) == 0
    assert main(["view", str(run), "--no-progress"]) == 0
    (run / ".cianet-output.json").unlink()
    claim_run_folder(run, "train")


def _wait_for_the_lock(run: Path, proc: _ForkedCianet) -> None:
    """Until ``proc`` holds the lock of its run folder ``run``."""

    def holder() -> int | None:
        try:
            return json.loads((run / ".cianet.lock").read_text())["pid"]
        except (OSError, ValueError, KeyError):
            return None

    t0 = time.time()
    while holder() != proc.pid:
        assert proc.poll() is None and time.time() - t0 < 120, "the first train never took the lock"
        time.sleep(0.02)


def _same_weights(a: Path, b: Path) -> None:
    import torch

    x, y = (torch.load(p, weights_only=True, map_location="cpu")["model"] for p in (a, b))
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _prepare_args(tiny_root: Path) -> list[str]:
    return ["prepare", "--data-root", str(tiny_root), "--size", "64", "--workers", "1", "--chunk-size", "2"]


@pytest.fixture(scope="module")
def prepared_reference(tiny_root, tmp_path_factory) -> Path:
    """The cache an uninterrupted ``cianet prepare`` builds, shared by the kill points."""
    ref = tmp_path_factory.mktemp("prepare_ref") / "ref"
    assert main([*_prepare_args(tiny_root), "--cache", str(ref)]) == 0
    return ref


@pytest.mark.slow
# Killed as it starts decoding image 1 (the plan and the image file made, nothing committed) and image 6 (two
# chunks of two committed, the fifth row decoded into the image file but not yet claimed by the progress file).
@pytest.mark.parametrize("kill_at_image", [1, 6])
def test_prepare_killed_at_random_points_resumes_to_the_same_cache(
    tiny_root, prepared_reference, tmp_path, kill_at_image
):
    from cianet.data import cache as cache_module

    args, ref, cache = _prepare_args(tiny_root), prepared_reference, tmp_path / "cache"
    proc = _ForkedCianet(*args, "--cache", str(cache), dies_at=(cache_module, "cache_image", kill_at_image))
    assert proc.wait() == -signal.SIGKILL
    assert (cache / ".cianet.lock").exists() and not (cache / "index.json").exists()  # killed mid-build
    assert main([*args, "--cache", str(cache)]) == 0
    assert (cache / "images.npy").read_bytes() == (ref / "images.npy").read_bytes()
    a, b = (json.loads((d / "index.json").read_text()) for d in (ref, cache))
    assert {k: v for k, v in a.items() if k not in ("created", "paths")} == {
        k: v for k, v in b.items() if k not in ("created", "paths")
    }
    assert sorted(p.name for p in cache.iterdir()) == ["images.npy", "index.json"]


@pytest.mark.slow
def test_train_align_killed_mid_run_resumes_to_the_same_weights(tiny_root, tmp_path):
    import torch

    from cianet.data.canonical import make_canonical

    canonical = tmp_path / "canonical.png"
    make_canonical(tiny_root, canonical, n=20, size=64, crop=(6, 4, 58, 50), progress=False)
    common = [
        "train-align",
        "--config",
        "tiny",
        *NARROW,
        "--data-root",
        str(tiny_root),
        "--image-size",
        "64",
        "--no-progress",
        "--canonical",
        str(canonical),
        "--set",
        "align.input_size=32",
        "--set",
        "align.epochs=2",
        "--set",
        "align.batch_size=8",
        "--set",
        "align.max_images=8",  # one batch an epoch: the kill and the resume fall between epochs
        "--set",
        "align.feature_net=resnet18",
        "--set",
        "run.threads=1",
        "--set",
        "data.workers=0",
    ]
    ref, run = tmp_path / "ref", tmp_path / "run"
    # killed as the second epoch's weights are about to replace the first's (a kill point no polling can miss)
    proc = _ForkedCianet(*common, "--out", str(run), dies_at=_at_save(run / "align.pt", 2))
    assert main([*common, "--out", str(ref)]) == 0  # the uninterrupted run, meanwhile
    assert proc.wait() == -signal.SIGKILL
    assert torch.load(run / "align.pt", weights_only=True)["epoch"] == 0
    assert main([*common, "--out", str(run), "--resume"]) == 0
    a, b = (torch.load(d / "align.pt", weights_only=True) for d in (ref, run))
    assert a["epoch"] == b["epoch"] == 1
    _same_weights(ref / "align.pt", run / "align.pt")
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp") or p.name == ".cianet.lock"]


@pytest.mark.slow
def test_bundle_killed_at_random_points_leaves_no_half_file(chest_models, tmp_path):
    from cianet.run.bundle_file import load_bundle

    # the uninterrupted bundle: conftest's, of the same run with the same bank size and seed (read-only)
    run, ref, out = chest_models.run("plain")[0], chest_models.bundle("plain"), tmp_path / "out.cianet"
    args = ["bundle", "--run", str(run), "--bank-size", "100", "--no-progress"]
    # killed in the middle of the atomic write: the whole bundle in its temp file, not yet renamed onto --out
    proc = _ForkedCianet(*args, "--out", str(out), dies_at=_at_save(out, 1))
    assert proc.wait() == -signal.SIGKILL
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert main([*args, "--out", str(out), "--overwrite"]) == 0  # also removes a SIGKILLed write's temp
    a, b = load_bundle(ref), load_bundle(out)
    assert a["model"].keys() == b["model"].keys()
    assert all(bool((a["model"][k] == b["model"][k]).all()) for k in a["model"])
    assert a["negatives"]["names"] == b["negatives"]["names"]
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_experiment_killed_mid_way_resumes_to_the_same_table(tiny_root, table1_reference, tmp_path):
    common = _experiment_args(tiny_root)
    ref, out = table1_reference, tmp_path / "out"
    proc = _ForkedCianet(*common, "--out", str(out))
    # killed while the second variant (CIA-Net) trains, after its first epoch's checkpoint
    assert _kill_when(
        proc,
        lambda: (
            any(out.glob("*/fold0/checkpoint.pt"))
            and len(list(out.glob("*/fold0"))) >= 2
            and any((d / "checkpoint.pt").exists() and not (d / "metrics.json").exists() for d in out.glob("*/fold0"))
        ),
        timeout=300,
    )
    assert main([*common, "--out", str(out)]) == 0  # resumes
    a, b = (json.loads((d / "table1.json").read_text()) for d in (ref, out))
    assert a["results"] == b["results"] and a["comparisons"] == b["comparisons"]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp") or p.name == ".cianet.lock"]


@pytest.mark.slow
def test_a_killed_predict_is_removed_exactly_by_overwrite(bundle_and_images, tmp_path):
    model, src = bundle_and_images
    files = sorted(src.iterdir())
    many = tmp_path / "many"
    many.mkdir()
    for i in range(60):
        (many / f"s{i:02d}.png").write_bytes(files[i % len(files)].read_bytes())
    out = tmp_path / "out"
    base = ["--model", str(model), "--out", str(out), "--no-progress", "--batch-size", "1", "--prefetch", "0"]
    proc = _ForkedCianet("predict", str(many), *base)
    assert _kill_when(proc, lambda: len(list(out.glob("s*.json"))) >= 3)  # SIGKILL: no manifest written at the end
    assert not (out / "summary.json").exists()
    (out / "reading-notes.txt").write_text("mine")
    assert main(["predict", str(files[0]), *base, "--overwrite"]) == 0
    stem = files[0].stem
    second = sorted(
        [
            f"{stem}.json",
            f"{stem}.heatmaps.npz",
            f"{stem}.overlay.png",
            "predictions.csv",
            "boxes.csv",
            "coco.json",
            "coco_results.json",
            "summary.json",
        ]
    )
    assert sorted(p.name for p in out.iterdir()) == sorted([*second, "reading-notes.txt", ".cianet-output.json"])
    assert json.loads((out / ".cianet-output.json").read_text())["files"] == second
