"""The fault corpus, part 2 (issue 24): predict's output paths, single-file outputs, view/evaluate folders, odd
file names, `--overwrite` and crafted bundles. Each case asserts the exact outcome: exit status, the one-line
message, every file outside the output byte-identical."""

from __future__ import annotations

import csv
import json
import os
import struct
import sys
from pathlib import Path

import pytest

from cianet.cli import main
from helpers import make_run, one_line


def snapshot(folder: Path, skip: Path | None = None) -> dict[str, bytes]:
    """Every file under ``folder`` (except under ``skip``), by relative path, with its bytes."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not (skip is not None and p.resolve().is_relative_to(skip.resolve())):
            out[str(p.relative_to(folder))] = p.read_bytes()
    return out


@pytest.fixture(scope="module")
def model_and_images(tmp_path_factory):
    from cianet.inference.bundle import bundle_from_run
    from cianet.run.bundle_file import save_bundle

    tmp = tmp_path_factory.mktemp("paths")
    run, images = make_run(tmp, kind="baseline")
    model = save_bundle(bundle_from_run(run, progress=False), tmp / "m.cianet")
    pngs = [(tmp / "data" / "images" / name).read_bytes() for name in sorted(images)[:3]]
    return model, pngs


def table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------ predict's output paths
@pytest.mark.slow
def test_predict_dotdot_never_writes_outside_out(model_and_images, tmp_path, monkeypatch, capsys):
    model, pngs = model_and_images
    cases, other = tmp_path / "cases", tmp_path / "other"
    (cases / "tools").mkdir(parents=True)
    other.mkdir()
    (cases / "case1.json").write_text('{"mine": 1}')
    (cases / "case1.png").write_bytes(pngs[0])
    (cases / "tools" / "t.png").write_bytes(pngs[1])
    (other / "case1.png").write_bytes(pngs[2])
    before = snapshot(tmp_path)
    monkeypatch.chdir(cases / "tools")
    assert main(["predict", "..", "../../other", "--model", str(model), "--out", "../preds", "--no-progress"]) == 0
    capsys.readouterr()
    preds = cases / "preds"
    assert snapshot(tmp_path, skip=preds) == before  # nothing outside --out changed or appeared
    rows = table(preds / "predictions.csv")
    assert sorted(Path(r["file"]).name for r in rows) == ["case1.png", "case1.png", "t.png"]
    assert all(r["status"] == "ok" for r in rows)
    outputs = [r["output"] for r in rows]
    assert len(set(outputs)) == 3 and all((preds / f"{o}.json").is_file() for o in outputs)
    assert all(not o.startswith(".") and ".." not in o.split("/") for o in outputs)
    # a rerun with --overwrite predicts the same three inputs, not its own overlays
    assert (
        main(
            ["predict", "..", "../../other", "--model", str(model), "--out", "../preds", "--no-progress", "--overwrite"]
        )
        == 0
    )
    assert len(table(preds / "predictions.csv")) == 3
    assert snapshot(tmp_path, skip=preds) == before


def test_input_names_never_collide_with_the_runs_files_or_each_other(model_and_images, tmp_path, capsys):
    model, pngs = model_and_images
    src = tmp_path / "in"
    src.mkdir()
    names = [
        "summary.png",
        "coco.png",
        "coco_results.png",
        "Predictions.png",
        "dup.jpg",
        "dup.png",
        "dup_1.png",
        "site.png",
    ]
    for name in names:
        (src / name).write_bytes(pngs[0])
    (src / "sub").mkdir()
    (src / "sub" / "dup.png").write_bytes(pngs[1])
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                str(src),
                str(src / ".." / "in" / "dup.png"),
                "--model",
                str(model),
                "--out",
                str(out),
                "--no-progress",
                "--no-overlay",
            ]
        )
        == 0
    )
    capsys.readouterr()
    rows = table(out / "predictions.csv")
    assert len(rows) == len(names) + 2 and all(r["status"] == "ok" for r in rows)
    outputs = [r["output"] for r in rows]
    assert len({o.lower() for o in outputs}) == len(outputs)
    for r in rows:  # every input's record is its own
        assert json.loads((out / f"{r['output']}.json").read_text())["source"] == r["file"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == len(rows) and len(json.loads((out / "coco.json").read_text())["images"]) == len(rows)
    assert isinstance(json.loads((out / "coco_results.json").read_text()), list)


@pytest.mark.slow
def test_a_dot_cianet_output_png_input_never_replaces_the_marker(model_and_images, tmp_path, capsys):
    model, pngs = model_and_images
    odd = tmp_path / ".cianet-output.png"
    odd.write_bytes(pngs[0])
    out = tmp_path / "out"
    assert main(["predict", str(odd), "--model", str(model), "--out", str(out), "--no-progress"]) == 0
    marker = json.loads((out / ".cianet-output.json").read_text())
    assert marker["kind"] == "predict" and "summary.json" in marker["files"]
    assert [r["output"] for r in table(out / "predictions.csv")] == ["cianet-output"]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file systems refuse names that are not UTF-8")
def test_odd_file_names_are_written_under_safe_stems_and_never_abort(model_and_images, tmp_path, capsys):
    model, pngs = model_and_images
    src = tmp_path / "odd"
    src.mkdir()
    raw = [
        b"new\nline.png",
        b"latin\xe9\xff.png",
        ("x" * 216).encode() + b".png",
        ("\u00e9" * 100).encode() + b".png",
        b"ok.png",
    ]
    for name in raw:
        with open(os.path.join(os.fsencode(src), name), "wb") as fh:
            fh.write(pngs[0])
    out = tmp_path / "out"
    assert main(["predict", str(src), "--model", str(model), "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    rows = table(out / "predictions.csv")
    assert len(rows) == 5 and all(r["status"] == "ok" for r in rows), rows
    for r in rows:
        stem = r["output"]
        assert len(stem.encode()) <= 96 and stem.replace("_", "").replace("-", "").replace(".", "").isalnum()
        assert stem.isprintable() and "\udcff" not in stem
        assert (out / f"{stem}.overlay.png").is_file() and (out / f"{stem}.heatmaps.npz").is_file()
    # the original names are recorded (bytes that are not UTF-8 as \xNN)
    files = {Path(r["file"]).name for r in rows}
    assert {"new\nline.png", "latin\\xe9\\xff.png", "x" * 216 + ".png", "\u00e9" * 100 + ".png", "ok.png"} == files
    sources = {json.loads((out / f"{r['output']}.json").read_text())["source"] for r in rows}
    assert {Path(s).name for s in sources} == files


def test_csv_cells_never_start_a_formula(model_and_images, tmp_path, capsys):
    from cianet.inference.batch import csv_cell

    model, pngs = model_and_images
    src = tmp_path / "in"
    src.mkdir()
    (src / "=HYPERLINK(1).png").write_bytes(pngs[0])
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                str(src / "=HYPERLINK(1).png"),
                "--model",
                str(model),
                "--out",
                str(out),
                "--no-progress",
                "--no-overlay",
            ]
        )
        == 0
    )
    # the file column holds the full path: check a bare name through the writer's rule too
    for cell in ("=1+1", "+cmd", "-x", "@SUM(A1)", "\tx"):
        assert csv_cell(cell) == "'" + cell
    assert csv_cell("-0.25") == "-0.25" and csv_cell("a=b") == "a=b"
    with open(out / "predictions.csv", newline="") as fh:
        assert all(not cell.startswith(("=", "+", "@")) for row in csv.reader(fh) for cell in row)


# ------------------------------------------------------------------------------ --overwrite
def test_overwrite_removes_exactly_the_journaled_files(tmp_path):
    from cianet.utils.output_folders import claim_output, journal_outputs, owned_output, read_marker

    out = claim_output(tmp_path / "p", "predict")
    (out / "sub").mkdir()
    journal_outputs(out, ["sub/a.json", ".", "..", "../victim.txt", "sub", str(tmp_path / "abs.txt")])
    (out / "sub" / "a.json").write_text("{}")
    (out / "sub" / "mine.txt").write_text("user file inside an output sub-folder")
    (tmp_path / "victim.txt").write_text("outside")
    (tmp_path / "abs.txt").write_text("outside")
    with owned_output(out, "predict", overwrite=True):
        (out / "notes.txt").write_text("written by the user while the run went on")
    assert (out / "sub" / "mine.txt").is_file() and (out / "notes.txt").is_file()
    assert not (out / "sub" / "a.json").exists()
    assert (tmp_path / "victim.txt").is_file() and (tmp_path / "abs.txt").is_file() and out.is_dir()
    assert read_marker(out)["files"] == []  # notes.txt is not claimed: a later --overwrite keeps it
    with owned_output(out, "predict", overwrite=True):
        pass
    assert (out / "notes.txt").is_file()


# ------------------------------------------------------------------------------ single-file outputs
def _tiny_nih(tmp_path: Path) -> Path:
    from helpers import write_tiny_nih

    return write_tiny_nih(tmp_path / "nih", n_patients=6)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["splits", "hash", "canonical"])
def test_single_file_outputs_never_replace_a_users_file(command, tmp_path, capsys):
    root = _tiny_nih(tmp_path)
    mine = tmp_path / {"splits": "mine.json", "hash": "mine.npz", "canonical": "mine.png"}[command]
    mine.write_text("precious")
    sibling = tmp_path / "mine_mean.png"
    extra = {
        "splits": ["--n-folds", "2"],
        "hash": ["--no-progress"],
        "canonical": ["--n", "3", "--image-size", "64", "--no-progress"],
    }[command]
    args = [command, "--data-root", str(root), "--out", str(mine), *extra]
    assert main(args) == 2
    one_line(capsys.readouterr().err, str(mine), "--overwrite")
    assert mine.read_text() == "precious" and not sibling.exists()
    others = snapshot(tmp_path, skip=None)
    assert main([*args, "--overwrite"]) == 0
    capsys.readouterr()
    assert mine.read_bytes() != b"precious"
    changed = {k for k, v in snapshot(tmp_path).items() if others.get(k) != v}
    allowed = {mine.name} | ({"mine_mean.png", "mine.json"} if command == "canonical" else set())
    assert changed <= allowed and mine.name in changed


@pytest.mark.slow
def test_bundle_out_never_replaces_a_users_file(model_and_images, tmp_path, capsys):
    run, _ = make_run(tmp_path, kind="baseline")
    mine = tmp_path / "mine.cianet"
    mine.write_text("precious")
    args = ["bundle", "--run", str(run), "--out", str(mine), "--no-progress"]
    assert main(args) == 2
    one_line(capsys.readouterr().err, str(mine), "--overwrite")
    assert mine.read_text() == "precious"
    assert main([*args, "--overwrite"]) == 0
    capsys.readouterr()
    from cianet.run.bundle_file import load_bundle

    load_bundle(mine)
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------ crafted bundles
def _rewrite_header(src: Path, dst: Path, edit) -> Path:
    """A copy of the bundle ``src`` whose cianet header went through ``edit(header) -> header``."""
    data = src.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    raw = json.loads(data[8 : 8 + n])
    header = json.loads(raw["__metadata__"]["cianet"])
    raw["__metadata__"]["cianet"] = json.dumps(edit(header))
    head = json.dumps(raw).encode()
    head += b" " * (-len(head) % 8)
    dst.write_bytes(struct.pack("<Q", len(head)) + head + data[8 + n :])
    return dst


def _set(header: dict, dotted: str, value) -> dict:
    part = header
    *path, last = dotted.split(".")
    for key in path:
        part = part.setdefault(key, {})
    part[last] = value
    return header


@pytest.mark.parametrize(
    "edit,words",
    [
        (lambda h: _set(h, "config.model.test_upsample", 10**6), ["model.test_upsample", "1000000"]),
        (lambda h: _set(h, "config.model.output_stride", 0), ["model.output_stride"]),
        (lambda h: _set(h, "config.data.image_size", 10**6), ["data.image_size"]),
        (lambda h: _set(h, "negatives.count", 10**9), ["negatives"]),
        (lambda h: _set(h, "config", [1, 2]), ["config"]),
        (lambda h: _set(h, "thresholds", "high"), ["thresholds"]),
        (lambda h: _set(h, "labels", {"a": 1}), ["labels"]),
        (lambda h: [h], ["header"]),
    ],
)
def test_crafted_bundle_headers_are_refused_by_info_and_predict(edit, words, model_and_images, tmp_path, capsys):
    import time

    model, pngs = model_and_images
    bad = _rewrite_header(model, tmp_path / "bad.cianet", edit)
    img = tmp_path / "x.png"
    img.write_bytes(pngs[0])
    t0 = time.perf_counter()
    assert main(["bundle", "info", str(bad)]) == 2
    one_line(capsys.readouterr().err, "bad.cianet", *words)
    assert main(["predict", str(img), "--model", str(bad), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    one_line(capsys.readouterr().err, "bad.cianet", *words)
    assert time.perf_counter() - t0 < 5.0  # refused before anything is allocated (the target: well under 1 s)


def test_damaged_tensor_data_is_caught_by_the_checksum(model_and_images, tmp_path, capsys):
    model, _ = model_and_images
    data = bytearray(model.read_bytes())
    flipped = tmp_path / "flip.cianet"
    data[-100] ^= 0x10
    flipped.write_bytes(bytes(data))
    assert main(["bundle", "info", str(flipped)]) == 2
    one_line(capsys.readouterr().err, "flip.cianet", "SHA-256")
    half = tmp_path / "half.cianet"
    half.write_bytes(model.read_bytes()[: len(data) // 2])
    assert main(["bundle", "info", str(half)]) == 2
    one_line(capsys.readouterr().err, "half.cianet")
    future = _rewrite_header(model, tmp_path / "future.cianet", lambda h: h)
    # the same length (one space less), so the header's declared size still holds whatever its padding
    raw = future.read_bytes().replace(b'"format_version": "2"', b'"format_version":"99"')
    future.write_bytes(raw)
    assert main(["bundle", "info", str(future)]) == 2
    one_line(capsys.readouterr().err, "future.cianet", "99")
    assert main(["bundle", "info", str(model)]) == 0
    assert "SHA-256" in capsys.readouterr().out
    # a file damaged in place after it was checked is checked again (the checksum is remembered per file state)
    same = tmp_path / "same.cianet"
    same.write_bytes(model.read_bytes())
    assert main(["bundle", "info", str(same)]) == 0
    with open(same, "r+b") as fh:
        fh.seek(-100, os.SEEK_END)
        fh.write(bytes([data[-100]]))  # the flipped byte
    assert main(["bundle", "info", str(same)]) == 2
    one_line(capsys.readouterr().err, "same.cianet", "SHA-256")


def test_bundle_info_strips_control_characters(model_and_images, tmp_path, capsys):
    model, _ = model_and_images
    odd = _rewrite_header(
        model, tmp_path / "ansi.cianet", lambda h: _set(h, "card.name", "evil\x1b[2J\x1b]0;title\x07name\rX")
    )
    assert main(["bundle", "info", str(odd)]) == 0
    text = capsys.readouterr().out
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text and "evil" in text


# ------------------------------------------------------------------------------ view and evaluate
@pytest.fixture
def predicted(model_and_images, tmp_path, capsys):
    model, pngs = model_and_images
    (tmp_path / "a.png").write_bytes(pngs[0])
    out = tmp_path / "pred"
    assert (
        main(
            [
                "predict",
                str(tmp_path / "a.png"),
                "--model",
                str(model),
                "--out",
                str(out),
                "--no-progress",
                "--no-overlay",
            ]
        )
        == 0
    )
    capsys.readouterr()
    return out


@pytest.mark.slow
def test_view_never_replaces_a_users_index_html_and_claims_its_page(predicted, tmp_path, capsys):
    mine = tmp_path / "report"
    mine.mkdir()
    (mine / "index.html").write_text("<p>my report</p>")
    assert main(["view", str(predicted), "--out", str(mine), "--no-progress"]) == 2
    one_line(capsys.readouterr().err, "index.html", "--overwrite")
    assert (mine / "index.html").read_text() == "<p>my report</p>" and not (mine / "img").exists()
    assert main(["view", str(predicted), "--out", str(mine), "--no-progress", "--overwrite"]) == 0
    assert 'id="cianet-data"' in (mine / "index.html").read_text()
    assert main(["view", str(predicted), "--out", str(mine), "--no-progress"]) == 0  # its own page: replaced
    # the default page lies in the predict folder: written under its lock, listed in its manifest
    assert main(["view", str(predicted), "--no-progress"]) == 0
    capsys.readouterr()
    files = json.loads((predicted / ".cianet-output.json").read_text())["files"]
    assert "site/index.html" in files and not (predicted / ".cianet.lock").exists()
    from cianet.utils.output_folders import output_lock

    with output_lock(predicted, "another writer"):
        assert main(["view", str(predicted), "--no-progress"]) == 2
    one_line(capsys.readouterr().err, "another cianet process")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_view_of_a_read_only_folder_writes_nothing(predicted, capsys):
    os.chmod(predicted, 0o555)
    try:
        before = snapshot(predicted)
        assert main(["view", str(predicted), "--no-progress"]) == 2
        one_line(capsys.readouterr().err, str(predicted))
        assert snapshot(predicted) == before and not (predicted / "site").exists()
    finally:
        os.chmod(predicted, 0o755)


def test_view_escapes_every_value_of_a_crafted_metrics_file(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    evil = "<script>alert(1)</script>"
    (run / "metrics.json").write_text(
        json.dumps(
            {
                "n_images": evil,
                "n_boxes": evil,
                "auc": {evil: 0.5},
                "localization": {"0.5": {evil: 0.5}},
                "ci": {"n_boot": evil, "auc": {"value": 0.5, "low": 0.4, "high": 0.6}},
            }
        )
    )
    assert main(["view", str(run), "--out", str(tmp_path / "site"), "--no-progress"]) == 0
    capsys.readouterr()
    page = (tmp_path / "site" / "index.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


@pytest.mark.slow
def test_evaluate_takes_the_run_lock_and_out_never_takes_a_users_folder(tmp_path, capsys):
    from cianet.utils.output_folders import output_lock

    run, _ = make_run(tmp_path)
    with output_lock(run, "another writer"):
        assert main(["evaluate", "--run", str(run), "--no-progress", "--bootstrap", "0"]) == 2
    one_line(capsys.readouterr().err, str(run), "another cianet process")
    assert not (run / "metrics.json").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "metrics.json").write_text("my own metrics")
    (mine / "notes.md").write_text("mine")
    assert (
        main(
            ["evaluate", "--run", str(run), "--data-root", str(tmp_path / "data"), "--out", str(mine), "--no-progress"]
        )
        == 2
    )
    one_line(capsys.readouterr().err, str(mine), "not empty")
    assert (mine / "metrics.json").read_text() == "my own metrics"


# ------------------------------------------------------------------------------ messages and interrupts
@pytest.mark.parametrize(
    "command,advice,never",
    [
        ("predict", "predict does not resume: rerun with --overwrite", "rerun the same command to resume"),
        ("prepare", "rerun the same command to resume", "--overwrite"),
        ("train", "add --resume", "rerun the same command to resume"),
        ("view", "finished files are kept)", "resume"),
    ],
)
def test_resume_advice_only_where_a_resume_works(command, advice, never, monkeypatch, capsys):
    import sys as system

    from cianet.cli import build_parser

    def interrupted(args):
        raise KeyboardInterrupt

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    func = sub.choices[command].get_default("func")
    monkeypatch.setattr(system.modules[func.__module__], func.__name__, interrupted)
    argv = {
        "predict": ["predict", "x", "--model", "m", "--out", "o"],
        "prepare": ["prepare", "--data-root", "d", "--cache", "c"],
        "train": ["train", "--config", "tiny"],
        "view": ["view", "d"],
    }[command]
    assert main(argv) == 130
    line = one_line(capsys.readouterr().err, f"cianet {command}: interrupted", advice)
    assert never not in line


def test_warnings_are_one_line_each_and_once(monkeypatch, capsys):
    import warnings

    import cianet.commands.index as index_command

    def noisy(args):
        for _ in range(3):
            warnings.warn_explicit(
                "Invalid value for VR UI:\n'1.2.x'",
                UserWarning,
                "/opt/env/lib/python3.11/site-packages/pydicom/valuerep.py",
                440,
            )
            warnings.warn_explicit("AUC undefined for Mass", RuntimeWarning, "/src/cianet/metrics.py", 10)
        return 0

    monkeypatch.setattr(index_command, "cmd_index", noisy)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["index", "--data-root", "d"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [
        "cianet index: warning: Invalid value for VR UI:; '1.2.x' (pydicom UserWarning)",
        "cianet index: warning: AUC undefined for Mass",
    ]


def test_sigterm_unwinds_like_ctrl_c_and_a_killed_writers_temp_goes_with_the_next_write(model_and_images, tmp_path):
    import signal
    import subprocess

    from cianet.cli import _terminate_as_interrupt
    from cianet.run.bundle_file import load_bundle, save_bundle
    from cianet.utils.atomic import atomic_path

    target = tmp_path / "big.bin"
    with pytest.raises(KeyboardInterrupt):
        with _terminate_as_interrupt(), atomic_path(target) as tmp:
            tmp.write_bytes(b"x" * 1000)
            os.kill(os.getpid(), signal.SIGTERM)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temp
    model, _ = model_and_images
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "m.cianet"
    (tmp_path / f".m.cianet.{dead.pid}.abc123.tmp").write_bytes(b"half a bundle")  # left by a SIGKILL
    save_bundle(load_bundle(model), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.cianet"]


def test_a_refused_predict_claims_no_folder(model_and_images, tmp_path, capsys):
    model, pngs = model_and_images
    (tmp_path / "a.png").write_bytes(pngs[0])
    for extra in (["--batch-size", "0"], ["--prefetch", "-1"], ["--writers", "0"]):
        assert (
            main(["predict", str(tmp_path / "a.png"), "--model", str(model), "--out", str(tmp_path / "o"), *extra]) == 2
        )
        one_line(capsys.readouterr().err, extra[0])
    assert (
        main(["predict", str(tmp_path / "a.png"), "--model", str(tmp_path / "no.cianet"), "--out", str(tmp_path / "o")])
        == 2
    )
    one_line(capsys.readouterr().err, "no.cianet")
    assert not (tmp_path / "o").exists()


def test_a_folder_named_like_a_recipe_never_shadows_it(tmp_path, monkeypatch):
    from cianet.config import load_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    cfg = load_config("tiny")  # the shipped recipe, not "config file tiny does not exist"
    assert cfg.data.image_size == 128 and cfg.model.backbone == "resnet18"
