"""scripts/gpu-bench.sh: its arguments, the commands it runs, and (slow) a whole run on CPU with --quick."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cianet.cli import main

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu-bench.sh"


def _run(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_bad_arguments_exit_2_with_one_line():
    for args in (["--bogus"], ["--device", "tpu"], ["--device"]):
        r = _run(*args)
        assert r.returncode == 2, args
        assert r.stderr.splitlines()[0].startswith("gpu-bench.sh: ")


def test_cuda_without_a_gpu_is_refused(tmp_path):
    # The script asks torch whether CUDA is there. A stand-in torch first on the path says no and notes that it
    # was asked: importing the real one would cost seconds, and the test no longer depends on this machine's GPU.
    asked = tmp_path / "asked"
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text(
        "from pathlib import Path\n\n\nclass cuda:\n    def is_available():\n"
        f"        Path({str(asked)!r}).touch()\n        return False\n"
    )
    r = _run("--device", "cuda", env={"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 2 and "CUDA is not available" in r.stderr
    assert asked.exists()  # refused on torch's answer, not because the check itself failed


def test_dry_run_lists_valid_bench_commands(capsys):
    r = _run("--device", "cpu", "--quick", "--dry-run", "--out", "somewhere")
    assert r.returncode == 0
    commands = [line[2:].split() for line in r.stderr.splitlines() if line.startswith("+ ")]
    assert len(commands) == 3
    for cmd in commands:
        assert cmd[1] == "bench" and cmd[cmd.index("--device") + 1] == "cpu" and "--quick" in cmd
    outs = [cmd[cmd.index("--out") + 1] for cmd in commands]
    assert outs == ["somewhere/train-b6.json", "somewhere/train-b24.json", "somewhere/predict.json"]
    # every command's arguments are accepted by `cianet bench` (checked without running it: a bad
    # --predict-folder-images value stops it at argument checking, after everything else was parsed)
    for cmd in commands:
        args = cmd[1 : cmd.index("--out")] + ["--predict-folder-images", "0"]
        assert main(args) == 2
        assert "--predict-folder-images must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_cpu_run_writes_every_result(tmp_path, monkeypatch):
    from cianet.bench import speed
    from helpers import predict_workers_in_process

    # The commands the script runs (as its dry run lists them) run in this process: each fresh interpreter would
    # import torch again, three for the commands and three for their predict workers (minutes on 2 loaded cores).
    out = tmp_path / "out"
    dry = _run("--device", "cpu", "--quick", "--dry-run", "--out", str(out))
    commands = [line[2:].split()[1:] for line in dry.stderr.splitlines() if line.startswith("+ ")]
    monkeypatch.setattr(speed, "run_worker", predict_workers_in_process())
    # Only the results' structure is read here: --quick at even smaller sizes (a quarter of the pixels per
    # training step, a phantom just large enough for the bank and the queries, one folder image, no folder
    # run without prefetch: the summary does not print it) still writes every figure the summary prints.
    smaller = dataclasses.replace(
        speed.BenchSettings.quick(), size=32, phantom_images=12, predict_folder_images=1, compare_prefetch=False
    )
    monkeypatch.setattr(speed.BenchSettings, "quick", classmethod(lambda cls: dataclasses.replace(smaller)))
    out.mkdir()
    for cmd in commands:
        assert main(cmd) == 0, cmd
    # Then the script itself runs, from a copy whose `.venv/bin/cianet` only records its arguments: the results
    # are those of the same commands, so the script's own path (its commands, the summary it prints) is all real.
    copy = tmp_path / "repo"
    (copy / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT, copy / "scripts" / SCRIPT.name)
    (copy / ".venv" / "bin").mkdir(parents=True)
    (copy / ".venv" / "bin" / "python").symlink_to(sys.executable)
    stub = copy / ".venv" / "bin" / "cianet"
    stub.write_text('#!/bin/sh\necho "$@" >> "$(dirname "$0")/calls.txt"\n')
    stub.chmod(0o755)
    r = subprocess.run(
        ["bash", str(copy / "scripts" / SCRIPT.name), "--device", "cpu", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert (copy / ".venv" / "bin" / "calls.txt").read_text().splitlines() == [" ".join(c) for c in commands]
    for name in ("train-b6", "train-b24", "predict"):
        result = json.loads((out / f"{name}.json").read_text())
        assert result["settings"]["device"] == "cpu"
    assert json.loads((out / "train-b24.json").read_text())["train"]["batch"] == 24
    assert "of matmul" in r.stdout and "folder of" in r.stdout
