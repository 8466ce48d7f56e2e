"""One CLI: a description, examples and every default on each command's --help; one meaning per flag name;
`predict --threshold`; `view --entry-csv`; a failed command leaves nothing that blocks its retry."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import TinyImage, write_nih


def commands() -> dict[str, argparse.ArgumentParser]:
    from cianet.cli import build_parser

    return next(a for a in build_parser()._actions if a.dest == "command").choices


#: what no parser may load: a command's library loads when it runs (cianet.cli), so --help starts in a blink
HEAVY = ("torch", "torchvision", "sklearn", "matplotlib", "scipy")
HELP_IMPORTS = """
import contextlib, io, sys
import cianet.cli
for argv in (["--help"], ["experiment", "--help"], ["index", "--help"]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        cianet.cli.main(argv)
for command in cianet.cli.build_parser()._subparsers._group_actions[0].choices.values():
    command.format_help()
print(" ".join(sorted(m for m in sys.argv[1:] if m in sys.modules)))
"""


def test_help_loads_no_heavy_package():
    """Building the parser and every command's --help, in a fresh process: no torch, torchvision, scikit-learn,
    matplotlib or scipy (cianet.experiments.plans holds what `cianet experiment` shows)."""
    done = subprocess.run(
        [sys.executable, "-c", HELP_IMPORTS, *HEAVY], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.split() == []


def test_every_command_has_a_description_and_examples_that_parse():
    from cianet.commands.examples import EXAMPLES

    cmds = commands()
    assert set(EXAMPLES) == set(cmds)
    for name, parser in cmds.items():
        assert parser.description and len(parser.description) > 60, name
        text = parser.format_help()
        assert "examples:\n  cianet " + name in text, name
        for line in EXAMPLES[name]:
            argv = shlex.split(line.split("#")[0].split("2>")[0])
            assert argv[:2] == ["cianet", name], line
            from cianet.cli import build_parser

            args = build_parser().parse_args(argv[1:])  # exits (SystemExit) on a flag that does not exist
            assert args.command == name


def test_a_command_line_parses_alike_with_its_command_alone(capsys):
    """main builds only the parser of the command a command line names (cianet.cli.command_of): every
    example parses to the same arguments as with the whole parser; a top-level --help still lists them all."""
    from cianet.cli import build_parser, command_of, main
    from cianet.commands.examples import EXAMPLES

    full = build_parser()
    for name, lines in EXAMPLES.items():
        alone = build_parser(name)
        assert list(next(a for a in alone._actions if a.dest == "command").choices) == [name]
        for line in lines:
            argv = shlex.split(line.split("#")[0].split("2>")[0])[1:]
            assert command_of(argv) == command_of(["--debug", *argv]) == name
            assert vars(alone.parse_args(argv)) == vars(full.parse_args(argv)), line
    none = ([], ["--debug"], ["--help", "train"], ["-h", "train"], ["--he", "train"], ["--", "train"], ["--version"])
    for argv in (*none, ["trian"], ["train_align"]):
        assert command_of(argv) is None, argv
    with pytest.raises(SystemExit):
        main(["--help", "train"])
    listed = capsys.readouterr().out
    assert all(name in listed for name in EXAMPLES)


def test_every_default_is_shown():
    for name, parser in commands().items():
        for action in parser._actions:
            if not action.option_strings or action.help in (None, argparse.SUPPRESS):
                continue
            if action.default in (None, False, [], argparse.SUPPRESS):
                continue
            assert "default" in parser._get_formatter()._get_help_string(action), (name, action.option_strings)
    train = commands()["train"].format_help()
    for flag in ("--fold", "--annotated-ratio", "--negatives", "--epochs"):
        block = train.split(f"  {flag} ", 1)[1].split("\n  --", 1)[0]
        assert "default" in block, flag
    assert "train-align:" not in train and "experiment:" not in train  # no other command's defaults


def test_size_means_the_image_size_everywhere(capsys):
    from cianet.cli import main

    for name, parser in commands().items():
        for action in parser._actions:
            if "--size" in action.option_strings:
                if name == "hash":  # refused with the new name, never read as the hash side
                    assert action.help == argparse.SUPPRESS
                else:
                    assert "--image-size" in action.option_strings, name  # an alias of --image-size
    assert main(["hash", "--data-root", "D", "--out", "h.npz", "--size", "16"]) == 2
    assert "--hash-size" in capsys.readouterr().err


def test_predict_threshold_is_checked_before_anything_is_written(tmp_path, capsys):
    from cianet.cli import main

    out = tmp_path / "out"
    assert main(["predict", str(tmp_path), "--model", "m.cianet", "--out", str(out), "--threshold", "1.5"]) == 2
    assert "--threshold" in capsys.readouterr().err and not out.exists()


def fake_predict_folder(folder: Path, image: Path) -> None:
    """The files `cianet view` reads from a predict folder, for one image."""
    from cianet.labels import LABELS

    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"model": {"id": "m", "version": "1", "kind": "cianet"}}))
    (folder / "predictions.csv").write_text("file,status\n")
    (folder / "a.json").write_text(
        json.dumps(
            {"source": str(image), "image_size": [64, 64], "boxes": [], "probabilities": {lab: 0.1 for lab in LABELS}}
        )
    )


def test_view_entry_csv_and_a_retry_after_a_failure(tmp_path, capsys):
    from cianet.cli import main

    root = tmp_path / "data"
    write_nih(root, [TinyImage("00000001_000.png", np.full((64, 64), 90, np.uint8), "Nodule", 1)])
    (root / "Data_Entry_2017.csv").rename(root / "Data_Entry_2017_subset.csv")  # as the NIH sample ships it
    pred = tmp_path / "pred"
    fake_predict_folder(pred, root / "images" / "00000001_000.png")
    assert main(["view", str(pred), "--data-root", str(root), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--entry-csv" in err
    assert not (pred / "site" / "img").exists()  # nothing that would block the retry
    assert (
        main(
            [
                "view",
                str(pred),
                "--data-root",
                str(root),
                "--entry-csv",
                str(root / "Data_Entry_2017_subset.csv"),
                "--no-progress",
            ]
        )
        == 0
    )
    text = (pred / "site" / "index.html").read_text()
    assert '"labels": ["Nodule"]' in text


@pytest.mark.slow
def test_every_list_of_data_sets_reads_the_one_declaration(monkeypatch):
    """`--dataset` (every command), `synth --layout` and the adapters' list are config.DATASETS: a new layout is
    one registration, not ten edits."""
    import ast

    import cianet.config as config
    from cianet.data import layouts
    from cianet.phantom import layouts as phantom_layouts

    assert config.choices("data.dataset") == (config.AUTO_DATASET, *config.DATASETS)
    assert layouts.DATASETS is config.DATASETS and phantom_layouts.LAYOUTS is config.DATASETS
    seen = 0
    for name, parser in commands().items():
        for action in parser._actions:
            if "--dataset" in action.option_strings:
                assert tuple(action.choices) == config.choices("data.dataset"), name
                seen += 1
            if "--layout" in action.option_strings:
                assert tuple(action.choices) == config.DATASETS, name
    assert seen >= 10
    # no module spells the list out again (a tuple literal holding three or more of the names)
    src = Path(config.__file__).parent
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Tuple):
                names = {e.value for e in node.elts if isinstance(e, ast.Constant)}
                assert len(names & set(config.DATASETS)) < 3 or path.name == "config.py", f"{path}: {ast.unparse(node)}"


def test_the_flag_table_names_real_config_keys_and_real_flags():
    """commands.common.FLAG_KEYS / SWITCH_KEYS: one table from flags to config keys; every entry is a field of
    the config and the dest of a flag some command has, so the table cannot name what does not exist."""
    from cianet.commands.common import FLAG_KEYS, SWITCH_KEYS
    from cianet.config import Config

    cfg = Config()
    dests = {a.dest for p in commands().values() for a in p._actions}
    for attr, key in [*FLAG_KEYS.items(), *((a, k) for a, (k, _) in SWITCH_KEYS.items())]:
        section, name = key.split(".")
        assert hasattr(getattr(cfg, section), name), key
        assert attr in dests, attr
