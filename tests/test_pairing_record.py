"""Negative strategies (cianet.config.NEGATIVE_STRATEGIES): no pairing reads the label, a box or the twin of the
image it pairs; no image is its own negative; every run records its pairing in negatives.csv / negatives.json;
prior pairs each image with its patient's most recent earlier No Finding study, the rest with the fallback."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from helpers import NARROW, SIZE, tiny_config, write_alignment, write_tiny_nih


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """A small phantom with a twin for every image (patients with follow-ups, about half No Finding)."""
    from cianet.phantom.generator import generate_dataset

    root = tmp_path_factory.mktemp("phantom_pairing") / "data"
    generate_dataset(root, n_images=60, size=SIZE, seed=3, workers=1, progress=False, twins=True, prior_share=0.6)
    return root


@pytest.fixture(scope="module")
def canonical_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("canon") / "canonical.png"
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    Image.fromarray((100 + 80 * np.exp(-((xx - 32) ** 2 + (yy - 32) ** 2) / 400)).astype(np.uint8)).save(path)
    return path


def _config(tmp_path, root, strategy, canonical, **over):
    return tiny_config(
        tmp_path / "run",
        root,
        negatives__strategy=strategy,
        align__canonical=str(canonical),
        protocol__val_share=0.2,
        **over,
    )


def _pairs(cfg, data):
    """(train pairs, held-out pairs, pairing) as a run sees them at epoch 0."""
    from cianet.run.loaders import image_source
    from cianet.run.pairing import pair_negatives

    pairing = pair_negatives(cfg, data, image_source(cfg, data.index))
    return dict(pairing.train(0) or {}), dict(pairing.test(0) or {}), pairing


def _flip(record) -> None:
    """The record's label and boxes changed: a No Finding image gets a boxed finding, a positive loses both."""
    from cianet.data.index import Box

    if record.labels:
        record.labels, record.boxes = (), []
    else:
        record.labels, record.boxes = ("Nodule",), [Box("Nodule", 4.0, 4.0, 10.0, 10.0)]


def _no_twin_reads(monkeypatch):
    import cianet.run.pairing as pairing

    def refuse(*args, **kwargs):
        raise AssertionError("a strategy other than the oracle read the phantom's twins")

    monkeypatch.setattr(pairing, "twin_paths", refuse)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["sim", "random", "canonical", "prior", "prior_any", "oracle"])
def test_no_strategy_reads_the_label_boxes_or_twin_of_the_image_it_pairs(
    strategy, phantom, canonical_png, tmp_path, monkeypatch
):
    from cianet.config import NEGATIVE_STRATEGIES
    from cianet.run.protocol import build_run_data

    assert set(NEGATIVE_STRATEGIES) == {"sim", "random", "canonical", "prior", "prior_any", "oracle"}
    if not NEGATIVE_STRATEGIES[strategy].upper_bound:
        _no_twin_reads(monkeypatch)
    cfg = _config(tmp_path, phantom, strategy, canonical_png)
    data = build_run_data(cfg)
    held = data.held_out
    assert data.val and data.test and any(not data.labels[n] for n in held)  # No Finding images are held out too
    train, test, _ = _pairs(cfg, data)
    assert set(test) == set(held) and set(train) == set(data.train)
    for pairs in (train, test):  # never its own negative
        assert all(neg != name for name, neg in pairs.items())
    if strategy == "oracle":  # every image, No Finding included, with its own twin
        assert all(test[n] == f"twin:{n}" for n in held) and all(train[n] == f"twin:{n}" for n in data.train)

    # each held-out image's own label and boxes changed, one image at a time: its negative stays
    records = {r.name: r for r in data.index.records}
    sample = [n for n in held if not data.labels[n]][:3] + [n for n in held if data.labels[n]][:3]
    for name in sample:
        original = dataclasses.replace(records[name])
        _flip(records[name])
        assert _pairs(cfg, data)[1][name] == test[name], name
        records[name].labels, records[name].boxes = original.labels, original.boxes
    if not NEGATIVE_STRATEGIES[strategy].prior:
        # a pool strategy reads no held-out label at all: every held-out image flipped at once changes nothing
        for name in held:
            _flip(records[name])
        train2, test2, _ = _pairs(cfg, data)
        assert test2 == test and train2 == train


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_negatives_record_of_every_strategy(phantom, canonical_png, tmp_path):
    from cianet.config import NEGATIVE_STRATEGIES
    from cianet.run.pairing import NEGATIVES_COLUMNS, write_pairing_record
    from cianet.run.protocol import build_run_data

    for strategy in NEGATIVE_STRATEGIES:
        cfg = _config(tmp_path / strategy, phantom, strategy, canonical_png)
        data = build_run_data(cfg)
        train, test, pairing = _pairs(cfg, data)
        (tmp_path / strategy).mkdir()
        counts = write_pairing_record(pairing, data, tmp_path / strategy)
        rows = _rows(tmp_path / strategy / "negatives.csv")
        assert tuple(rows[0]) == NEGATIVES_COLUMNS
        splits = {"train": list(data.train), "val": list(data.val), "test": list(data.test) + list(data.auc_extra)}
        assert [(r["image"], r["split"]) for r in rows] == [(n, s) for s, names in splits.items() for n in names]
        assert all(r["negative"] != r["image"] and r["reason"] for r in rows)
        stored = json.loads((tmp_path / strategy / "negatives.json").read_text())
        assert stored == json.loads(json.dumps(counts)) and sum(stored["counts"].values()) == len(rows)
        assert stored["upper_bound"] == (strategy == "oracle")
        by = {r["image"]: r for r in rows}
        if strategy == "canonical":
            assert {r["negative"] for r in rows} == {"canonical"}
        if strategy == "oracle":
            assert all(r["negative"] == f"twins/{r['image']}" and r["reason"].startswith("upper bound") for r in rows)
        if strategy == "random":
            assert all(by[n]["negative"] == train[n] for n in data.train)
            assert {r["reason"] for r in rows if r["split"] == "train"} == {
                "random draw, redrawn every epoch (epoch 0 shown)"
            }
        if strategy == "sim":  # the reason carries the pair's cosine, computed in float64 here
            from cianet.negatives import hash_codes
            from cianet.run.loaders import image_source

            source = image_source(cfg, data.index)
            for name in list(data.test)[:4]:
                a, b = (hash_codes(source.load_uint8(n)[None]).astype(np.float64)[0] for n in (name, test[name]))
                assert by[name]["reason"] == f"nearest code of images (cosine {float(a @ b):.3f})"


def _earlier_normal(records, name):
    """Reference: the same patient's No Finding study with the largest follow-up number below the image's."""
    me = records[name]
    best = None
    for r in records.values():
        if r.patient_id == me.patient_id and r.name != name and not r.labels and r.follow_up < me.follow_up:
            if best is None or r.follow_up > best.follow_up:
                best = r
    return best


def _check_prior_rows(rows, records, pool):
    n_prior = 0
    for r in rows:
        want = _earlier_normal(records, r["image"])
        if want is not None:
            assert (r["negative"], r["strategy"]) == (want.name, "prior"), r
            assert r["reason"] == f"prior: follow-up {want.follow_up}"
            n_prior += 1
        else:
            assert r["strategy"] == "sim" and r["negative"] in pool, r
            assert r["reason"].startswith("fallback: no earlier No Finding study; nearest code")
    return n_prior


def test_prior_pairs_with_the_most_recent_earlier_normal_study(tmp_path):
    from cianet.run.pairing import negative_pool, pairing_rows
    from cianet.run.protocol import build_run_data

    root = write_tiny_nih(tmp_path / "nih", n_patients=30, seed=4)  # follow-ups 0 and 1 of every patient
    cfg = tiny_config(tmp_path / "run", root, negatives__strategy="prior")
    data = build_run_data(cfg)
    train, test, pairing = _pairs(cfg, data)
    records = {r.name: r for r in data.index.records}
    pool = set(negative_pool(data.index, set(data.held_out)))
    rows = pairing_rows(pairing, data)
    n_prior = _check_prior_rows(rows, records, pool)
    assert 0 < n_prior < len(rows)
    for name, neg in {**train, **test}.items():
        assert records[neg].patient_id == records[name].patient_id or _earlier_normal(records, name) is None
    # patient-disjoint splits keep a prior in its patient's split: no training image has a held-out negative
    assert not set(train.values()) & set(data.held_out)


def test_prior_any_prefers_the_nearest_other_follow_up(tmp_path):
    from cianet.run.pairing import prior_pairs
    from cianet.run.protocol import build_run_data

    root = write_tiny_nih(tmp_path / "nih", n_patients=30, seed=4)
    cfg = tiny_config(tmp_path / "run", root, negatives__strategy="prior_any")
    data = build_run_data(cfg)
    pairs, reasons = prior_pairs(cfg, data)
    records = {r.name: r for r in data.index.records}
    for name in list(data.train) + data.held_out:
        me = records[name]
        others = [
            r
            for r in records.values()
            if r.patient_id == me.patient_id and r.name != name and not r.labels and r.follow_up != me.follow_up
        ]
        if not others:
            assert name not in pairs and reasons[name] == "fallback: no No Finding study at another follow-up"
            continue
        best = min(others, key=lambda r: (abs(r.follow_up - me.follow_up), r.follow_up > me.follow_up))
        assert pairs[name] == best.name
        assert reasons[name] == f"prior: follow-up {best.follow_up}" + (
            " (later)" if best.follow_up > me.follow_up else ""
        )


def test_prior_fallback_is_a_validated_choice_and_canonical_needs_a_chest(tmp_path):
    from cianet.cli import main
    from cianet.config import BASE_STRATEGIES, load_config
    from cianet.errors import UsageError
    from cianet.run.protocol import build_run_data

    assert BASE_STRATEGIES == ("sim", "random", "canonical")
    assert load_config("tiny", ["negatives.prior_fallback=random"]).negatives.prior_fallback == "random"
    with pytest.raises(UsageError, match="negatives.prior_fallback must be one of sim, random, canonical"):
        load_config("tiny", ["negatives.prior_fallback=oracle"])
    assert main(["train", "--data-root", str(tmp_path), "--set", "negatives.prior_fallback=prior"]) == 2
    root = write_tiny_nih(tmp_path / "nih", n_patients=12)
    cfg = tiny_config(tmp_path / "run", root, negatives__strategy="prior", negatives__prior_fallback="canonical")
    with pytest.raises(UsageError, match="negatives.prior_fallback=canonical needs align.canonical"):
        _pairs(cfg, build_run_data(cfg))


def test_prior_fallback_random_and_canonical(tmp_path, canonical_png):
    from cianet.run.pairing import pairing_counts, pairing_rows
    from cianet.run.protocol import build_run_data

    root = write_tiny_nih(tmp_path / "nih", n_patients=20, seed=1)
    for fallback in ("random", "canonical"):
        cfg = tiny_config(
            tmp_path / fallback,
            root,
            negatives__strategy="prior",
            negatives__prior_fallback=fallback,
            align__canonical=str(canonical_png),
        )
        data = build_run_data(cfg)
        train, _, pairing = _pairs(cfg, data)
        rows = pairing_rows(pairing, data)
        fell = [r for r in rows if r["strategy"] != "prior"]
        assert fell and all(r["strategy"] == fallback for r in fell)
        if fallback == "canonical":
            assert {r["negative"] for r in fell} == {"canonical"}
        else:
            redrawn = [r for r in fell if r["split"] == "train"]
            assert all(r["reason"].endswith("redrawn every epoch (epoch 0 shown)") for r in redrawn)
            epoch1 = pairing.train(1)
            assert any(epoch1[r["image"]] != train[r["image"]] for r in redrawn)  # the fallback is redrawn
            assert all(epoch1[n] == train[n] for n in train if train[n] and n not in {r["image"] for r in fell})
        counts = pairing_counts(pairing, rows)
        assert counts["counts"] == {"prior": len(rows) - len(fell), "fallback": len(fell)}
        assert counts["fallback"] == fallback


@pytest.mark.slow
def test_prior_with_alignment_pairs_the_same_priors_and_aligns_the_fallback_codes(tmp_path):
    from cianet.run.pairing import prior_pairs, save_pairs
    from cianet.run.protocol import build_run_data

    root = write_tiny_nih(tmp_path / "nih", n_patients=10, seed=2)
    align = write_alignment(tmp_path / "a.pt", tx=0.2, ty=-0.1)
    plain = tiny_config(tmp_path / "plain", root, negatives__strategy="prior")
    aligned = tiny_config(tmp_path / "aligned", root, negatives__strategy="prior", align__checkpoint=str(align))
    data = build_run_data(plain)
    assert prior_pairs(plain, data) == prior_pairs(aligned, build_run_data(aligned))
    _, _, pairing = _pairs(aligned, build_run_data(aligned))
    (tmp_path / "aligned").mkdir()
    saved = json.loads(save_pairs(pairing, tmp_path / "aligned").read_text())
    assert saved["codes"]["aligned"] is True  # the fallback's "sim" hashes aligned images, as a sim run does
    fallback_names = set(saved["pairs"])
    assert fallback_names and not fallback_names & set(prior_pairs(plain, data)[0])


@pytest.mark.slow
def test_runs_record_their_pairing_and_evaluate_keeps_it(phantom, canonical_png, tmp_path, capsys, monkeypatch):
    """negatives.csv of an oracle, a sim and a prior run: no image is its own negative, No Finding test images
    are paired like every other image; `cianet evaluate` rewrites the same file."""
    from cianet.cli import main
    from cianet.run.pairing import negative_pool
    from cianet.run.protocol import load_index

    for strategy in ("sim", "prior", "oracle"):
        out = tmp_path / strategy
        argv = [
            "train",
            "--config",
            "tiny",
            *NARROW,
            "--data-root",
            str(phantom),
            "--out",
            str(out),
            "--negatives",
            strategy,
            "--image-size",
            "32",  # the pairing is under test, not the scores: the cheapest input size
            "--epochs",
            "1",
            "--backbone",
            "resnet18",
            "--pretrained",
            "none",
            "--workers",
            "0",
            "--no-progress",
            "--unannotated-ratio",
            "0.5",
            "--set",
            "model.test_upsample=16",
            "--set",
            "model.head_channels=16",
            "--set",
            "run.tensorboard=false",
            "--set",
            "protocol.val_share=0.2",
        ]
        assert main(argv) == 0
        printed = capsys.readouterr().out
        counts = json.loads((out / "negatives.json").read_text())
        assert f"negatives ({strategy}" in printed and counts["strategy"] == strategy
        rows = _rows(out / "negatives.csv")
        split = json.loads((out / "split.json").read_text())
        index = load_index(tiny_config(out, phantom))
        labels = {r.name: r.labels for r in index.records}
        held = set(split["test"]) | set(split["auc_extra"]) | set(split["val"])
        assert len(rows) == len(split["train"]) + len(held)
        assert {r["image"] for r in rows} == set(split["train"]) | held
        assert all(r["negative"] != r["image"] for r in rows)
        test_rows = [r for r in rows if r["split"] == "test"]
        normal = [r for r in test_rows if not labels[r["image"]]]
        assert normal and len(normal) < len(test_rows)
        if strategy == "oracle":  # No Finding test images get their twin like positives
            assert all(r["negative"] == f"twins/{r['image']}" for r in rows)
        elif strategy == "sim":  # and the pool's nearest code like positives
            pool = set(negative_pool(index, held))
            assert all(r["negative"] in pool and r["reason"].startswith("nearest code") for r in test_rows)
        else:
            records = {r.name: r for r in index.records}
            assert _check_prior_rows(rows, records, set(negative_pool(index, held))) > 0
        before = (out / "negatives.csv").read_bytes()
        (out / "negatives.csv").unlink()
        assert main(["evaluate", "--run", str(out), "--no-progress", "--device", "cpu"]) == 0
        assert (out / "negatives.csv").read_bytes() == before
        # the plots (test_evaluate_plots' subject, the same whatever the pairing) are drawn for the first run only
        monkeypatch.setattr("cianet.evaluation.evaluate.write_evaluation_plots", lambda *a, **k: {})


def test_the_strategies_are_declared_once():
    """Config choices, `cianet train --negatives`, the sampler and docs/method.md read NEGATIVE_STRATEGIES; no
    module spells out a list of strategy names."""
    import argparse
    import re
    from pathlib import Path

    from cianet.commands import train
    from cianet.config import NEGATIVE_STRATEGIES, check_value
    from cianet.negatives import STRATEGIES

    names = list(NEGATIVE_STRATEGIES)
    with pytest.raises(ValueError, match="must be one of " + ", ".join(names) + ", got 'x'"):
        check_value("negatives", "strategy", "x")
    parser = argparse.ArgumentParser()
    train.register(parser.add_subparsers())
    sub = parser._subparsers._group_actions[0].choices["train"]
    flag = next(a for a in sub._actions if "--negatives" in a.option_strings)
    assert list(flag.choices) == names
    assert STRATEGIES == tuple(n for n, s in NEGATIVE_STRATEGIES.items() if s.base)
    text = (Path(__file__).resolve().parents[1] / "docs" / "method.md").read_text()
    for name, spec in NEGATIVE_STRATEGIES.items():
        assert f"| `{name}` | {spec.description} |" in text, name
    alternatives = "|".join(names)
    listed = re.compile(rf'"({alternatives})"\s*,\s*"({alternatives})"')
    src = Path(__file__).resolve().parents[1] / "src" / "cianet"
    offenders = [str(p.relative_to(src)) for p in src.rglob("*.py") if listed.search(p.read_text())]
    assert offenders == []
