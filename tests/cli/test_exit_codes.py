"""The exit codes README.md documents, one test each, through ``cianet.cli.main`` (the console script exits with
its return value) and once through a real process: 0 success, 1 some inputs failed, 2 usage or input error,
3 internal error (a bug: any exception that is not a CianetError or a file-system OSError), 130 interrupted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cianet.cli import main
from cianet.errors import EXIT_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED
from helpers import make_run, one_line

#: the tiny set of this module (conftest's tiny_root): six patients, twelve images
TINY_PATIENTS = 6


def test_the_codes_are_the_documented_numbers():
    assert (EXIT_OK, EXIT_SOME_FAILED, EXIT_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED) == (0, 1, 2, 3, 130)


def test_0_success(tiny_root, capsys):
    assert main(["index", "--data-root", str(tiny_root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 12


@pytest.mark.slow
def test_1_some_inputs_failed(tmp_path, capsys):
    """A folder with one unreadable file: the readable one is predicted, exit 1 with --strict; without it, 1 when
    no input could be predicted."""
    from cianet.inference.bundle import bundle_from_run
    from cianet.run.bundle_file import save_bundle

    run, images = make_run(tmp_path, kind="baseline", n=4)
    model = save_bundle(bundle_from_run(run, progress=False), tmp_path / "m.cianet")
    folder = tmp_path / "xrays"
    folder.mkdir()
    (folder / "good.png").write_bytes((run.parent / "data" / "images" / sorted(images)[0]).read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a picture")
    argv = ["predict", str(folder), "--model", str(model), "--no-progress", "--no-overlay", "--no-heatmaps", "--json"]
    assert main([*argv, "--out", str(tmp_path / "strict"), "--strict"]) == EXIT_SOME_FAILED
    res = json.loads(capsys.readouterr().out)
    assert (res["images"], res["predicted"], len(res["errors"])) == (2, 1, 1)
    assert "broken.png" in json.dumps(res["errors"])
    (folder / "good.png").unlink()  # (the lenient run with some predicted: test_safety.py)
    assert main([*argv, "--out", str(tmp_path / "none")]) == EXIT_SOME_FAILED
    assert json.loads(capsys.readouterr().out)["predicted"] == 0


def test_2_bad_flag_and_missing_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:  # argparse ends the process itself, with its usage line
        main(["index", "--data-root", str(tmp_path), "--no-such-flag"])
    assert exc.value.code == EXIT_INPUT
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
    assert main([]) == EXIT_INPUT  # no command at all
    assert "usage: cianet" in capsys.readouterr().err
    missing = tmp_path / "no-such-root"
    assert main(["index", "--data-root", str(missing)]) == EXIT_INPUT
    line = one_line(capsys.readouterr().err)
    assert line.startswith("cianet index: error:") and str(missing) in line
    cache = tmp_path / "cache"  # a cache no run could read, refused before anything is decoded or written
    assert main(["prepare", "--data-root", str(tmp_path), "--image-size", "3", "--cache", str(cache)]) == EXIT_INPUT
    line = one_line(capsys.readouterr().err)
    assert "--image-size 3: must be at least 16" in line and not cache.exists()


def test_3_internal_error_is_a_bug_report_and_debug_shows_the_traceback(tiny_root, monkeypatch, capsys):
    import cianet.commands.index as index_command

    def broken(args):
        raise RuntimeError("the summary lost a key")

    monkeypatch.setattr(index_command, "cmd_index", broken)
    argv = ["index", "--data-root", str(tiny_root), "--json"]
    assert main(argv) == EXIT_INTERNAL
    cap = capsys.readouterr()
    line = one_line(cap.err)
    assert "internal error (a bug in cianet" in line and "RuntimeError: the summary lost a key" in line
    assert "rerun with --debug" in line and cap.out == ""
    assert main(["--debug", *argv]) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "Traceback" in err and "in broken" in err and "--debug for the traceback" not in err


@pytest.mark.parametrize(
    "exc,code",
    [
        (ValueError("could not broadcast (3,) into (4,)"), EXIT_INTERNAL),  # a plain ValueError is a bug, not input
        (KeyError("auc"), EXIT_INTERNAL),
        (PermissionError(13, "Permission denied", "/read-only/site"), EXIT_INPUT),  # the file system's: names the file
    ],
)
def test_only_cianet_errors_and_file_system_errors_are_input_errors(exc, code, tiny_root, monkeypatch, capsys):
    import cianet.commands.index as index_command
    from cianet.errors import InputError

    def broken(args):
        raise exc

    monkeypatch.setattr(index_command, "cmd_index", broken)
    assert main(["index", "--data-root", str(tiny_root)]) == code
    line = one_line(capsys.readouterr().err)
    assert ("internal error" in line and "--debug" in line) if code == EXIT_INTERNAL else "/read-only/site" in line
    assert issubclass(InputError, ValueError)  # callers' `except ValueError` still catch the deliberate ones


def test_130_interrupted(tiny_root, monkeypatch, capsys):
    import cianet.commands.index as index_command

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(index_command, "cmd_index", interrupted)
    assert main(["index", "--data-root", str(tiny_root)]) == EXIT_INTERRUPTED
    assert "cianet index: interrupted" in one_line(capsys.readouterr().err)


@pytest.mark.slow  # a Python start-up with cianet's imports: seconds
def test_the_process_exits_with_the_code(tmp_path):
    """The module entry point (as the console script) turns main's return value into the process status."""
    missing = subprocess.run(
        [sys.executable, "-m", "cianet", "index", "--data-root", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == EXIT_INPUT and "cianet index: error:" in missing.stderr


def test_console_entry_exits_with_mains_code_and_skips_the_last_collections(tmp_path, monkeypatch):
    """``cianet`` and ``python -m cianet`` run cianet.cli.console_main: main's code becomes the exit status, and
    the objects left are frozen out of the interpreter's last garbage collections (a second per command)."""
    import gc

    import cianet.cli as cli

    monkeypatch.setattr(sys, "argv", ["cianet", "index", "--data-root", str(tmp_path / "nope")])
    frozen = gc.get_freeze_count()  # conftest freezes what collection made; this test's objects are not yet
    with pytest.raises(SystemExit) as ended:
        cli.console_main()
    assert ended.value.code == EXIT_INPUT and gc.get_freeze_count() > frozen
