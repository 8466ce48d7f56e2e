"""Decoding ahead of the networks: input order kept, memory bounded, bad files skipped by name as without it."""

from __future__ import annotations

import csv
import json
import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import synthetic_chest


def test_prefetch_keeps_order_and_hands_over_errors():
    from cianet.utils.prefetch import prefetch

    rng = random.Random(0)
    delays = {i: rng.random() * 0.01 for i in range(30)}

    def work(i: int) -> int:
        time.sleep(delays[i])  # later items often finish first
        if i % 7 == 3:
            raise OSError(f"item {i} is broken")
        return i * i

    for depth, workers in ((0, 1), (1, 1), (4, 3), (50, 4)):
        got = list(prefetch(range(30), work, depth, workers))
        assert [item for item, _, _ in got] == list(range(30))
        for item, value, exc in got:
            if item % 7 == 3:
                assert value is None and isinstance(exc, OSError) and f"item {item}" in str(exc)
            else:
                assert exc is None and value == item * item


def test_prefetch_holds_at_most_depth_items_ahead():
    from cianet.utils.prefetch import prefetch

    lock = threading.Lock()
    started, consumed, ahead = [0], [0], []

    def work(i: int) -> int:
        with lock:
            started[0] += 1
            ahead.append(started[0] - consumed[0])
        return i

    for _ in prefetch(range(40), work, depth=3, workers=2):
        time.sleep(0.002)  # a slow consumer: the producer would run away if it were not bounded
        with lock:
            consumed[0] += 1
    assert max(ahead) <= 3 + 1  # the item being handed over and at most `depth` behind it


def test_behind_runs_jobs_in_order_with_a_bounded_backlog_and_raises_their_errors():
    import threading

    from cianet.utils.prefetch import Behind

    done, gate, main = [], threading.Event(), threading.get_ident()
    threads = set()

    def job(i: int) -> None:
        threads.add(threading.get_ident())
        if i == 0:
            gate.wait(5)  # the first job blocks: the next submit must wait for it (depth 1)
        done.append(i)

    with Behind(1) as w:
        w.submit(job, 0)
        assert done == []  # handed over, not run inline
        threading.Timer(0.2, gate.set).start()
        w.submit(job, 1)  # returns only once job 0 finished
        assert done == [0]
    assert done == [0, 1] and main not in threads  # close() waited for job 1; all ran in the writer thread

    inline = []
    with Behind(0) as w:
        w.submit(inline.append, 1)
        assert inline == [1]  # depth 0: in turn

    def fail() -> None:
        raise OSError("disk full")

    w = Behind(1)
    w.submit(fail)
    with pytest.raises(OSError, match="disk full"):  # raised in the caller, at the next submit or at close
        w.submit(done.append, 2)
        w.close()
    with pytest.raises(ValueError):
        Behind(-1)


def test_prefetch_rejects_bad_arguments():
    from cianet.utils.prefetch import prefetch

    with pytest.raises(ValueError):
        list(prefetch([1], lambda x: x, depth=-1))


@pytest.fixture(scope="module")
def bundle(chest_models) -> Path:
    return chest_models.bundle("plain")


@pytest.mark.slow
def test_predict_files_with_prefetch_matches_the_plain_loop(bundle, tmp_path):
    from cianet.inference.batch import predict_files
    from cianet.utils.timing import StageTimer

    src = tmp_path / "in"
    src.mkdir()
    for i in range(7):
        img = np.rint(synthetic_chest(np.random.default_rng(i), lesion=i % 2 == 1) * 255).astype(np.uint8)
        Image.fromarray(img).save(src / f"img{i}.png")
    (src / "img3.png").write_bytes(b"")  # unreadable files among the good ones
    (src / "img5.png").write_text("not an image\n")
    outputs = {}
    for depth in (0, 5):  # decoding in turn and writing in turn; decoding ahead and writing behind
        logged: list[str] = []
        timer = StageTimer()
        summary = predict_files(
            [str(src)],
            bundle,
            tmp_path / f"out{depth}",
            batch_size=2,
            precision="fp32",
            overlay=False,
            heatmaps=False,
            progress=False,
            prefetch=depth,
            timer=timer,
            log=logged.append,
            write_behind=depth > 0,
        )
        assert summary.predicted == 5 and sorted(Path(e["file"]).name for e in summary.errors) == [
            "img3.png",
            "img5.png",
        ]
        assert [line.split()[3].rstrip(":") for line in logged] == [str(src / "img3.png"), str(src / "img5.png")]
        rows = list(csv.DictReader(open(tmp_path / f"out{depth}" / "predictions.csv")))
        ok = [Path(r["file"]).name for r in rows if r["status"] == "ok"]
        assert ok == ["img0.png", "img1.png", "img2.png", "img4.png", "img6.png"]  # input order
        outputs[depth] = rows
        # every stage of the breakdown was timed: 7 decodes (2 of them failing), 5 resizes, 3 batches
        assert set(timer.seconds) == {"decode", "resize", "pairing", "networks", "boxes", "writing"}
        assert timer.calls["decode"] == 7 and timer.calls["resize"] == 5 and timer.calls["networks"] == 3
    assert outputs[0] == outputs[5]  # the same rows in the same order (error rows too), probabilities included
    assert [r["status"] for r in outputs[5]] == ["ok", "ok", "error", "ok", "ok", "error", "ok"]  # as handled
    for i in (0, 6):
        a, b = (json.loads((tmp_path / f"out{d}" / f"img{i}.json").read_text())["probabilities"] for d in (0, 5))
        assert a == b


def test_default_writer_threads_are_half_the_cores_at_most_a_batch():
    from cianet.inference.batch import default_writers

    assert [default_writers(8, cores) for cores in (1, 2, 3, 16, 64)] == [1, 1, 1, 8, 8]
    assert default_writers(6, 16) == 6 and default_writers(1, 16) == 1


@pytest.mark.slow
def test_writer_threads_write_the_same_files_and_rows_in_input_order(bundle, tmp_path, monkeypatch):
    import cianet.inference.batch as batch
    from cianet.errors import UsageError
    from cianet.inference.batch import predict_files

    def failing_overlay(path, *args):  # one image's overlay cannot be written: an error row, the run goes on
        if path.name == "img2.overlay.png":
            raise OSError(28, "No space left on device", str(path))
        return write_overlay(path, *args)

    write_overlay = batch.write_overlay
    monkeypatch.setattr(batch, "write_overlay", failing_overlay)

    src = tmp_path / "in"
    src.mkdir()
    for i in range(7):
        img = np.rint(synthetic_chest(np.random.default_rng(i), lesion=i % 2 == 0) * 255).astype(np.uint8)
        Image.fromarray(img).save(src / f"img{i}.png")
    logs = {}
    for writers in (1, 3):
        out = tmp_path / f"out{writers}"
        logs[writers] = []
        summary = predict_files(
            [str(src)], bundle, out, batch_size=4, precision="fp32", progress=False, log=logs[writers].append,
            writers=writers,
        )  # fmt: skip
        assert summary.predicted == 6 and [Path(e["file"]).name for e in summary.errors] == ["img2.png"]
    assert len(logs[1]) == 1 and logs[1] == [line.replace("out3", "out1") for line in logs[3]]
    names = sorted(p.name for p in (tmp_path / "out1").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "out3").iterdir()) and "img6.overlay.png" in names
    for name in names:
        a, b = tmp_path / "out1" / name, tmp_path / "out3" / name
        if a.is_file():  # every file byte for byte (the error's path aside): per-image outputs, tables in order
            assert a.read_bytes() == b.read_bytes().replace(b"out3", b"out1"), name
    rows = list(csv.DictReader(open(tmp_path / "out3" / "predictions.csv")))
    assert [(Path(r["file"]).name, r["status"]) for r in rows] == [
        (f"img{i}.png", "error" if i == 2 else "ok") for i in range(7)
    ]
    with pytest.raises(UsageError, match="--writers must be >= 1"):
        predict_files([str(src)], bundle, tmp_path / "bad", writers=0)
    assert not (tmp_path / "bad").exists()
