"""The evidence experiment's plumbing: run reuse only under the same config, the seed family, the rows' configs,
the estimate, and the table's sentences (the end-to-end run on a small phantom is marked slow)."""

from __future__ import annotations

import json

import pytest

from cianet.config import apply_overrides, load_config, save_config
from cianet.errors import UsageError
from cianet.experiments import evidence as ev
from cianet.run.reuse import check_reusable, config_differences
from helpers import narrow


def test_config_differences_ignore_plumbing_and_resolved_labels(tmp_path):
    a, b = load_config("tiny"), load_config("tiny")
    b.run.out, b.run.progress, b.run.threads, b.data.workers = "elsewhere", False, 1, 3
    a.data.labels = ["Atelectasis"]  # filled in by training when the planned config leaves it to the data set
    assert config_differences(a, b) == []
    b.optim.lr = 0.5
    b.negatives.strategy = "random"
    keys = [k for k, _, _ in config_differences(a, b)]
    assert keys == ["negatives.strategy", "optim.lr"]


def test_check_reusable_refuses_a_run_trained_otherwise(tmp_path):
    run = tmp_path / "run"
    planned = load_config("tiny")
    assert check_reusable(run, planned) is False  # nothing there yet
    run.mkdir()
    save_config(planned, run / "config.yaml")
    assert check_reusable(run, planned) is True
    other = load_config("tiny")
    other.optim.epochs = 3
    with pytest.raises(UsageError, match=rf"optim\.epochs: run {planned.optim.epochs}, this experiment 3"):
        check_reusable(run, other)


def test_experiment_refuses_to_compare_with_a_base_trained_otherwise(tmp_path):
    from cianet.experiments.tables import run_experiment

    cfg = load_config("tiny")
    cfg.data.data_root = str(tmp_path / "data")
    out = tmp_path / "t1"
    base_dir = out / "base" / "fold0"
    base_dir.mkdir(parents=True)
    trained = load_config("tiny")
    trained.data.data_root = cfg.data.data_root
    trained.optim.lr = 0.1  # a Base trained by another experiment with --set optim.lr=0.1
    trained.model.kind = "baseline"
    trained.protocol.unannotated_ratio = 0.5
    save_config(trained, base_dir / "config.yaml")
    (base_dir / "metrics.json").write_text("{}")
    with pytest.raises(UsageError, match=r"optim\.lr: run 0\.1"):
        run_experiment("table1", cfg, out, folds=[0])


def test_evidence_seeds_exclude_the_tuning_family():
    assert not set(ev.EVIDENCE_SEEDS) & set(ev.TUNING_SEEDS) and len(ev.EVIDENCE_SEEDS) >= 5
    with pytest.raises(UsageError, match="seeds 0-9"):
        ev.check_settings(ev.EvidenceSettings(seeds=(3, 11)))
    with pytest.raises(UsageError, match="unknown evidence row"):
        ev.check_settings(ev.EvidenceSettings(rows=("Base", "CIA-Net magic")))


def test_estimate_scales_with_rows_seeds_images_and_machine():
    full = ev.EvidenceSettings()
    t = ev.estimate_seconds(full)
    ref = ev.REFERENCE_SECONDS
    n_cia = sum(r.settings["model"]["kind"] == "cianet" for r in ev.ROWS)
    per_seed = ref["data"] + ref["align"] + ref["baseline"] + n_cia * ref["cianet"]
    assert t == pytest.approx(per_seed * len(full.seeds))
    assert ev.estimate_seconds(full, ev.REFERENCE_MATMUL_GFLOPS / 2) == pytest.approx(2 * t)
    one = ev.EvidenceSettings(seeds=(10,), rows=("Base",), n_images=2 * ev.PHANTOM["n_images"])
    assert ev.estimate_seconds(one) == pytest.approx(2 * ref["data"] + ref["align"] + 2 * ref["baseline"])
    # a resumed experiment counts what is left: seed 10's data and Base done, seed 11 untouched
    two = ev.EvidenceSettings(seeds=(10, 11), rows=("Base", "CIA-Net sim"))
    left = ev.estimate_seconds(two, finished=frozenset({(10, "data"), (10, "Base")}))
    assert left == pytest.approx(ref["cianet"] + ref["data"] + ref["align"] + ref["baseline"] + ref["cianet"])


def recipe(cfg):
    return cfg.model.width, cfg.align.width, cfg.optim.warmup, cfg.optim.lr_schedule


def test_row_configs_differ_only_in_what_they_compare(tmp_path):
    s = ev.EvidenceSettings()
    base = ev.base_config(None, True, s)
    # the registered recipe (the standard ResNet-18 and alignment regressor, no warm-up, 6 epochs of the step
    # schedule), whatever the tiny recipe became
    tiny = load_config("tiny")
    registered = (64, 64, 0.0, "step")
    assert all(a != b for a, b in zip(recipe(tiny)[:3], registered))
    assert recipe(apply_overrides(load_config("tiny"), ["optim.lr_schedule=cosine"]))[3] != registered[3]
    assert recipe(base) == registered and (base.optim.epochs, base.optim.lr_step) == (6, 4)
    files = {
        "data": tmp_path / "d",
        "cache": tmp_path / "c",
        "canonical": tmp_path / "can.png",
        "align": tmp_path / "a" / "align.pt",
        "hash_aligned": tmp_path / "ha.npz",
        "hash_plain": tmp_path / "hp.npz",
    }
    cfgs = {r.name: ev.row_config(base, r, tmp_path / ev.run_slug(r.name), 11, files) for r in ev.ROWS}
    sim, sim_plain = cfgs["CIA-Net sim"], cfgs["CIA-Net sim (no align)"]
    assert sim.align.checkpoint == str(files["align"]) and sim_plain.align.checkpoint is None
    assert sim.negatives.hash_index == str(files["hash_aligned"])
    assert sim_plain.negatives.hash_index == str(files["hash_plain"])  # unaligned codes for the unaligned row
    assert cfgs["Base"].align.checkpoint == str(files["align"]) and cfgs["Base"].model.kind == "baseline"
    assert cfgs["CIA-Net oracle (upper bound)"].negatives.strategy == "oracle"
    for _name, cfg in cfgs.items():
        assert cfg.run.seed == 11 and cfg.protocol.fold == 0 and cfg.protocol.val_share == 0.1
        assert (cfg.optim.epochs, cfg.optim.lr_step) == (s.epochs, s.lr_step)
        assert cfg.data.data_root == str(files["data"])
    # only the compared factor differs between sim and its unaligned twin row
    keys = {k for k, _, _ in config_differences(sim, sim_plain)}
    assert keys == {"align.checkpoint", "negatives.hash_index"}
    assert {k for k, _, _ in config_differences(cfgs["CIA-Net sim"], cfgs["CIA-Net random"])} == {
        "negatives.strategy",
        "negatives.hash_index",
    }


def _diff(d, lo, hi):
    return {"a": 0.5, "b": 0.5 - d, "diff": d, "low": lo, "high": hi, "n_boot": 100, "confidence": 0.95}


@pytest.mark.slow
def test_markdown_states_each_interval(tmp_path):
    rows = [r for r in ev.ROWS if r.name in ("Base", "CIA-Net sim")]
    summary = {
        "seeds": 2,
        "auc": 0.8,
        "localization": {"0.1": 0.7, "0.3": 0.5, "0.5": 0.4, "0.7": 0.2},
        "pointing_game": 0.6,
    }
    result = {
        "seeds": [10, 11],
        "data": "phantom",
        "n_images": 800,
        "rows": {"Base": summary, "CIA-Net sim": {**summary, "attention": {"hit_rate": 0.7}}},
        "comparisons": {
            "CIA-Net sim - Base": {
                "0.5": _diff(0.1, 0.02, 0.2),
                "auc": _diff(-0.05, -0.09, -0.01),
                "pointing": _diff(0.01, -0.05, 0.07),
            }
        },
        "untrained_attention": {"hit_rate": 0.1, "mass_in_boxes": 0.1, "area_share": 0.1},
    }
    md = ev.evidence_markdown(result, rows, None)
    assert "Seeds 10, 11" in md and "upper bound" in md
    line = next(x for x in md.splitlines() if x.startswith("- "))
    assert "CIA-Net sim beats Base on localization at T(IoU) 0.5" in line
    assert "CIA-Net sim loses to Base on mean AUC" in line
    assert "No significant difference between CIA-Net sim and Base on the pointing game" in line
    assert "| +0.100 [+0.020, +0.200] |" in md
    path = ev.plot_evidence(result["comparisons"], tmp_path / "e.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_masked_residual_matches_a_pixel_loop():
    import numpy as np

    from cianet.evaluation.negative_match import masked_residual

    rng = np.random.default_rng(0)
    a, b = rng.random((12, 10)), rng.random((12, 10))
    boxes = np.array([[1.2, 2.0, 3.5, 4.0], [6.0, 7.4, 10.0, 2.0]])  # the second runs past the image's edge
    total, n = 0.0, 0
    for i in range(12):
        for j in range(10):
            cx, cy = j + 0.5, i + 0.5
            if any(x <= cx < x + w and y <= cy < y + h for x, y, w, h in boxes):
                continue
            total, n = total + abs(a[i, j] - b[i, j]), n + 1
    assert masked_residual(a, b, boxes) == pytest.approx(total / n, abs=1e-12)
    assert masked_residual(a, a, np.zeros((0, 4))) == 0.0
    assert masked_residual(a, b, np.array([[0, 0, 10, 12]])) is None  # nothing left outside the box


@pytest.mark.slow
def test_evidence_end_to_end_on_a_small_phantom_resumes_and_refuses_other_settings(tmp_path, monkeypatch):
    import functools

    # the time estimate's matmul rate from a 256 x 256 product, not the reference 2048 (a second per call)
    monkeypatch.setattr(ev, "_machine_gflops", functools.partial(ev._machine_gflops, n=256))
    cfg = load_config("tiny")
    cfg.data.image_size, cfg.optim.batch_size, cfg.run.progress = 32, 16, False
    cfg.model.head_channels, cfg.model.test_upsample = 16, 16  # a small head: the pipeline, not the method
    cfg.model.output_stride, cfg.align.input_size = 8, 32  # a 4 x 4 grid, the regressor at the images' size
    narrow(cfg)  # the networks are most of this test's cost
    rows = ("Base", "CIA-Net sim", "CIA-Net oracle (upper bound)")
    s = ev.EvidenceSettings(
        seeds=(10,),
        n_images=100,
        rows=rows,
        epochs=1,
        lr_step=1,
        align_epochs=1,
        align_images=16,
        canonical_n=20,
        extra={"workers": 1},  # rendering 100 small images in-process beats starting a process pool
    )
    out = tmp_path / "ev"
    said: list[str] = []
    md = ev.run_evidence(cfg, out, s, log=said.append)
    assert "estimated" in said[0]
    result = json.loads((out / "evidence.json").read_text())
    assert set(result["rows"]) == set(rows) and result["seeds"] == [10]
    for name in rows:
        saved = json.loads((out / result["runs"][name][0] / "metrics.json").read_text())
        assert result["rows"][name]["auc"] == pytest.approx(saved["auc"]["Mean"])
    assert "CIA-Net sim - Base" in result["comparisons"]
    assert result["rows"]["CIA-Net sim"]["match"]["no_finding"] is not None
    assert "CIA-Net oracle (upper bound) - Base" in md.read_text()
    # the pool study reuses the seed's phantom, alignment, Base and CIA-Net sim, and grows only the pool
    from cianet.experiments.pool_study import run_pool_study

    mtimes = {p: p.stat().st_mtime for p in out.rglob("checkpoint.pt")}
    pool_md = run_pool_study(cfg, out, seed=10, extras=(0, 20), settings=s, log=said.append)
    assert {p: p.stat().st_mtime for p in mtimes} == mtimes  # nothing trained again
    pools = json.loads((out / "pool.json").read_text())["pools"]
    assert pools["20"]["pool_size"] == pools["0"]["pool_size"] + 20
    assert pools["0"]["match"]["no_finding"]["n"] == pools["20"]["match"]["no_finding"]["n"] > 0
    assert "| 20 |" in pool_md.read_text()
    # other settings into the same folder: refused, naming the key
    cfg.optim.lr = 0.5
    with pytest.raises(UsageError, match=r"optim\.lr"):
        ev.run_evidence(cfg, out, s, log=said.append)


@pytest.mark.slow
def test_real_data_leaves_the_upper_bound_out_and_refuses_it_when_asked(tmp_path, monkeypatch):
    cfg = load_config("tiny")
    cfg.data.data_root = str(tmp_path / "nih")
    asked = ev.EvidenceSettings(seeds=(10,), rows=("Base", "CIA-Net oracle (upper bound)"))
    with pytest.raises(UsageError, match="twins"):
        ev.run_evidence(cfg, tmp_path / "ev", asked, log=lambda m: None)
    trained = []
    monkeypatch.setattr("cianet.training.loop.fit", lambda c, resume=False: trained.append(c.run.out))
    monkeypatch.setattr(ev, "write_evidence", lambda out, rows, dirs, s, phantom: (out, [r.name for r in rows]))
    _, rows = ev.run_evidence(cfg, tmp_path / "ev2", ev.EvidenceSettings(seeds=(10,)), log=lambda m: None)
    assert rows == [r.name for r in ev.ROWS if not r.upper_bound]
    assert len(trained) == len(ev.ROWS) - 1 and not any("oracle" in d for d in trained)
