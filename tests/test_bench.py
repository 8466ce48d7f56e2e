"""`cianet bench`: the structure and internal consistency of one quick run (never its speed)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from cianet.bench import speed
from cianet.bench.speed import (
    TimedLoader,
    peak_rss_mb,
    synthetic_batch,
)
from cianet.cli import main


def test_synthetic_batch_has_boxes_on_every_other_image() -> None:
    from cianet.losses import padded_grid_targets

    batch = synthetic_batch(4, 64, seed=0)
    assert batch["image"].shape == batch["neg"].shape == (4, 1, 64, 64)
    targets = padded_grid_targets(batch["boxes"], (64, 64), (2, 2), 14)  # (4, 14, 2, 2)
    has_cells = targets.flatten(1).sum(1) > 0
    assert has_cells.tolist() == [True, False, True, False]
    assert batch["box_mask"][:, 0].tolist() == [1.0, 0.0, 1.0, 0.0]


class _SlowBatches:
    """Five batches, each taking ``delay`` seconds to produce (what a slow data loader looks like)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def __len__(self) -> int:
        return 5

    def __iter__(self):
        for _ in range(5):
            time.sleep(self.delay)
            yield {"image": torch.zeros(3, 1, 4, 4)}


def test_timed_loader_counts_and_stops() -> None:
    timed = TimedLoader(_SlowBatches(0.02), max_steps=2)
    assert len(timed) == 2
    assert sum(1 for _ in timed) == 2
    assert (timed.batches, timed.images) == (2, 6)
    # The time spent producing batches is counted as waiting, the consumer's own time is not.
    assert timed.first_wait_s >= 0.02 and timed.wait_s >= 0.04
    slow_consumer = TimedLoader(_SlowBatches(0.0), max_steps=2)
    for _ in slow_consumer:
        time.sleep(0.05)
    assert slow_consumer.wait_s < 0.05


def test_peak_rss_is_at_least_current_rss() -> None:
    current = None
    try:
        with open("/proc/self/status") as fh:
            current = next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        pytest.skip("no /proc/self/status")
    assert peak_rss_mb() >= current > 0


@pytest.mark.slow  # counts a ResNet-18 network (about 2 s)
def test_flop_count_matches_a_hand_count() -> None:
    from cianet.bench.predict_profile import count_flops

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, stride=2)  # 16 x 16 -> 8 x 8
    fc = torch.nn.Linear(8 * 8 * 8, 10)
    x = torch.randn(2, 3, 16, 16)

    def forward() -> torch.Tensor:
        return fc(F.relu(conv(x)).flatten(1))

    # 2 FLOPs per multiply-add; bias additions, ReLU and flatten are not counted (as in the bench's fractions)
    conv_macs = 2 * 8 * 8 * 8 * (3 * 3 * 3)  # batch x out channels x out pixels x (in channels x kernel)
    fc_macs = 2 * (8 * 8 * 8) * 10
    assert count_flops(forward) == 2 * (conv_macs + fc_macs)
    # forward and backward of a step: the weights' gradients (and the conv output's, for the linear layer's
    # input) double and triple the products: conv grad-weight, linear grad-weight and grad-input
    assert count_flops(lambda: forward().sum().backward()) == 2 * (conv_macs + fc_macs) + 2 * (conv_macs + 2 * fc_macs)


def test_bench_predict_profile_settings_are_validated(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--quick", "--only", "predict", "--predict-folder-images", "0"]) == 2
    assert "--predict-folder-images must be >= 1" in capsys.readouterr().err


def test_bad_bench_arguments_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--quick", "--only", "matmul,bogus"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert main(["bench", "--quick", "--size", "100"]) == 2
    assert "multiple of 32" in capsys.readouterr().err


def _run_forked(cmd: list[str], capture_output: bool, text: bool, timeout: float) -> subprocess.CompletedProcess:
    """``subprocess.run`` for the bench's worker command line (``python -m cianet.bench.speed ...``), run in a
    fork of this process: the module runs as ``__main__`` with the command's arguments and its stdout and exit
    status come back as a subprocess's do, but torch is not imported again (~5 s of CPU). ``timeout`` is not applied."""
    assert cmd[:3] == [sys.executable, "-m", "cianet.bench.speed"] and capture_output and text, cmd
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # the child never returns into pytest
            code = 1
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
                sys.argv = cmd[2:]
                sys.modules.pop(cmd[2], None)  # run afresh as __main__, as `python -m` does
                try:
                    runpy.run_module(cmd[2], run_name="__main__", alter_sys=True)
                    code = 0
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(
            cmd, os.waitstatus_to_exitcode(status), out.read().decode(), err.read().decode()
        )


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from helpers import predict_workers_in_process

    out = tmp_path_factory.mktemp("bench") / "bench.json"
    # The bank worker runs through the worker protocol as the CLI runs it (its command line, the JSON it prints,
    # the exit status), in a fork of this process; the other two run in this one: every fresh interpreter
    # imports torch again (seconds).
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(speed, "subprocess", SimpleNamespace(run=_run_forked))
        mp.setattr(speed, "run_worker", predict_workers_in_process(keep=("bank",)))
        # The structure is what is checked: --quick at even smaller sizes (a quarter of the pixels per training
        # step, one wait step, 56 phantom images: 48 are still enough for the recipe's 5 folds, 40 are not; one
        # folder image, which also covers a folder with fewer images than a batch) still fills every figure and
        # every stage of every variant.
        smaller = dataclasses.replace(
            speed.BenchSettings.quick(), size=32, data_size=32, wait_steps=1, phantom_images=56
        )
        mp.setattr(speed.BenchSettings, "quick", classmethod(lambda cls: dataclasses.replace(smaller)))
        # One thread: on a shared 2-core machine OpenMP spinning makes 2 threads far slower than 1.
        argv = ["bench", "--quick", "--json", "--threads", "1", "--predict-folder-images", "1", "--out", str(out)]
        assert main(argv) == 0
    return json.loads(out.read_text())


def _finite_positive(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_quick_bench_structure(quick_result: dict) -> None:
    r = quick_result
    assert _finite_positive(r["matmul_gflops"])
    for kind in ("baseline", "cianet"):
        t = r["train"][kind]
        assert _finite_positive(t["images_per_s"]) and _finite_positive(t["flop_fraction"])
    d = r["data"]
    assert _finite_positive(d["cache_images_per_s"]) and _finite_positive(d["png_images_per_s"])
    assert 0 <= d["wait_fraction"] <= 1 and 0 <= d["wait_fraction_png"] <= 1
    p = r["pairing"]
    assert _finite_positive(p["queries_per_s"]) and _finite_positive(p["naive_queries_per_s"])
    q = r["predict"]
    for key in ("bank_images_per_s", "recompute_images_per_s", "bank_peak_rss_mb", "recompute_peak_rss_mb"):
        assert _finite_positive(q[key]), key
    env = r["env"]
    assert env["threads"] == 1 and env["torch"] == torch.__version__ and env["cpu"]
    assert r["settings"]["threads"] == 1 and r["settings"]["backbone"] == "resnet18"


@pytest.mark.slow
def test_quick_bench_is_internally_consistent(quick_result: dict) -> None:
    r = quick_result
    s = r["settings"]
    for kind in ("baseline", "cianet"):
        t = r["train"][kind]
        assert t["kind"] == kind and t["channels_last"] == s["channels_last"]
        assert t["images_per_s"] == pytest.approx(s["batch"] / t["step_s"])
        assert t["achieved_gflops"] == pytest.approx(t["gflops_per_step"] / t["step_s"])
        assert t["flop_fraction"] == pytest.approx(t["achieved_gflops"] / r["matmul_gflops"])
        assert len(t["step_times_s"]) == s["steps"]
        assert t["step_s"] == min(t["step_times_s"])
        assert t["step_s_median"] == pytest.approx(statistics.median(t["step_times_s"]))
    # CIA-Net runs the baseline's trunk plus an attention trunk on positives and negatives: more FLOPs.
    assert r["train"]["cianet"]["gflops_per_step"] > r["train"]["baseline"]["gflops_per_step"]
    d = r["data"]
    assert d["wait_s"] <= d["loop_s"] and d["wait_fraction"] == pytest.approx(d["wait_s"] / d["loop_s"])
    assert d["wait_steps"] == s["wait_steps"] and d["image_size"] == s["data_size"]
    p = r["pairing"]
    assert p["naive_agrees"] is True  # the vectorized query returned the naive loop's rows
    assert p["queries_per_s"] * p["epoch_s"] == pytest.approx(p["queries"])
    q = r["predict"]
    assert q["bank_speedup"] == pytest.approx(q["bank_images_per_s"] / q["recompute_images_per_s"])
    assert set(r["part_seconds"]) >= {"matmul", "train", "data", "pairing", "predict"}


@pytest.mark.slow
def test_quick_bench_predict_profile(quick_result: dict) -> None:
    from cianet.bench.predict_profile import STAGES
    from cianet.run.precision import cpu_bf16_native

    r, q = quick_result, quick_result["predict"]
    assert r["bf16_supported"] is cpu_bf16_native()
    assert _finite_positive(q["gflops_per_image"]) and _finite_positive(q["networks_images_per_s"])
    assert q["achieved_gflops"] == pytest.approx(q["gflops_per_image"] * q["networks_images_per_s"])
    assert q["flop_fraction"] == pytest.approx(q["achieved_gflops"] / r["matmul_gflops"])
    if r["bf16_supported"]:
        assert q["bf16_speedup"] == pytest.approx(q["bf16_networks_images_per_s"] / q["networks_images_per_s"])
    else:
        assert q["bf16_speedup"] is None
    assert q["folder_images"] == r["settings"]["predict_folder_images"]
    for suffix in ("", "_no_overlay", "_no_overlay_no_prefetch"):
        stages = q[f"stages{suffix}"]
        assert list(stages) == list(STAGES)
        # every stage ran (the bench bundle aligns; "writing" is the JSON, heatmaps, overlays)
        assert all(_finite_positive(v) for v in stages.values()), stages
        assert q[f"folder_images_per_s{suffix}"] == pytest.approx(q["folder_images"] / q[f"folder_s{suffix}"])
        assert q[f"folder_vs_networks{suffix}"] == pytest.approx(
            q[f"folder_s{suffix}"] * q["networks_images_per_s"] / q["folder_images"]
        )
    # the overlay figure is part of "writing": without it, writing takes less
    assert q["stages_no_overlay"]["writing"] < q["stages"]["writing"]
    # bfloat16 folders (where native): against the bfloat16 networks
    for suffix in ("_bf16", "_bf16_no_overlay"):
        assert (f"folder_s{suffix}" in q) is bool(r["bf16_supported"])
        if r["bf16_supported"]:
            assert q[f"folder_vs_networks{suffix}"] == pytest.approx(
                q[f"folder_s{suffix}"] * q["bf16_networks_images_per_s"] / q["folder_images"]
            )
    e = r["evaluate"]  # evaluation's networks: the negative image through the attention trunk as well
    assert e["flop_fraction"] == pytest.approx(e["achieved_gflops"] / r["matmul_gflops"])
    assert e["achieved_gflops"] == pytest.approx(e["gflops_per_image"] * e["images_per_s"])
    assert (e["bf16_speedup"] is None) is (not r["bf16_supported"])
