"""Splits: patient-disjointness, fold partitions, protocol ratios, determinism, JSON round trip."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cianet.cli import main
from cianet.data.nih import Box, ImageRecord, NIHIndex
from cianet.data.splits import (
    classification_split,
    localization_folds,
    localization_protocol,
    make_splits,
    read_splits,
    write_splits,
)
from cianet.labels import BOX_LABELS, LABELS


def synthetic_index(n_patients: int = 150, seed: int = 0, root: Path = Path("synthetic")) -> NIHIndex:
    """An in-memory index: 1-8 images per patient, ~40% No Finding, ~20% of patients with boxes."""
    rng = np.random.default_rng(seed)
    records = []
    for p in range(n_patients):
        pid = f"{p + 1:08d}"
        boxed_patient = rng.random() < 0.2
        for j in range(int(rng.integers(1, 9))):
            labels: tuple[str, ...] = ()
            if rng.random() > 0.4:
                labels = tuple(sorted(set(rng.choice(LABELS, size=int(rng.integers(1, 3)))), key=LABELS.index))
            boxes = []
            if boxed_patient and rng.random() < 0.6:
                lab = str(rng.choice(BOX_LABELS))
                labels = tuple(sorted(set(labels) | {lab}, key=LABELS.index))
                boxes = [Box(lab, 10.0, 20.0, 30.0, 40.0)]
            records.append(ImageRecord(name=f"{pid}_{j:03d}.png", patient_id=pid, labels=labels, boxes=boxes))
    return NIHIndex(root, records)


def patients_of(index: NIHIndex, names) -> set[str]:
    return {index[n].patient_id for n in names}


@pytest.fixture(scope="module")
def idx() -> NIHIndex:
    return synthetic_index()


@pytest.fixture(scope="module")
def nih_index(nih_metadata_dir) -> NIHIndex:
    return NIHIndex.from_root(nih_metadata_dir, scan=False)


# -- classification -------------------------------------------------------------------------------------


def check_classification(index: NIHIndex, split: dict, tol: float) -> None:
    names = [n for part in ("train", "val", "test") for n in split[part]]
    assert sorted(names) == sorted(index.names())  # a partition
    tr, va, te = (patients_of(index, split[p]) for p in ("train", "val", "test"))
    assert not (tr & va) and not (tr & te) and not (va & te)
    n = len(index)
    for part, target in zip(("train", "val", "test"), (0.7, 0.1, 0.2)):
        assert abs(len(split[part]) / n - target) < tol, (part, len(split[part]) / n)


def test_classification_split_synthetic(idx):
    a = classification_split(idx, seed=3)
    check_classification(idx, a, tol=0.05)
    assert a == classification_split(idx, seed=3)
    assert a["test"] != classification_split(idx, seed=4)["test"]


@pytest.mark.slow
def test_classification_split_real_nih(nih_index):
    split = classification_split(nih_index, seed=0)
    check_classification(nih_index, split, tol=0.005)


def test_classification_official(tmp_path, idx):
    names = idx.names()
    # official lists by patient: the first ~80% of patients train_val, the rest test
    pats = sorted(idx.patients())
    cut = set(pats[: int(0.8 * len(pats))])
    tv = {n for n in names if idx[n].patient_id in cut}
    te = set(names) - tv
    official = NIHIndex(idx.root, idx.records, official_train_val=tv | {"00099999_000.png"}, official_test=te)
    s = classification_split(official, seed=1, official=True)
    assert set(s["test"]) == te
    assert set(s["train"]) | set(s["val"]) == tv  # names absent from the index are ignored
    assert not patients_of(idx, s["train"]) & patients_of(idx, s["val"])
    assert abs(len(s["val"]) / len(tv) - 0.125) < 0.05
    with pytest.raises(FileNotFoundError, match="train_val_list.txt and test_list.txt"):
        classification_split(idx, official=True)


# -- localization folds ---------------------------------------------------------------------------------


def check_folds(index: NIHIndex, folds: list[list[str]], k: int) -> None:
    assert len(folds) == k
    flat = [n for f in folds for n in f]
    assert len(flat) == len(set(flat))  # each annotated image in exactly one fold
    assert set(flat) == set(index.annotated_names())
    fold_pats = [patients_of(index, f) for f in folds]
    for i in range(k):
        for j in range(i + 1, k):
            assert not fold_pats[i] & fold_pats[j]


def test_folds_synthetic(idx):
    folds = localization_folds(idx, seed=0)
    check_folds(idx, folds, 5)
    sizes = [len(f) for f in folds]
    biggest_patient = max(Counter(idx[n].patient_id for n in idx.annotated_names()).values())
    assert max(sizes) - min(sizes) <= biggest_patient
    assert folds == localization_folds(idx, seed=0)
    assert folds != localization_folds(idx, seed=1)
    check_folds(idx, localization_folds(idx, seed=2, k=3), 3)


@pytest.mark.slow  # the real metadata tables (about 1.5 s to read)
def test_folds_real_nih(nih_index):
    folds = localization_folds(nih_index, seed=0)
    check_folds(nih_index, folds, 5)
    assert sum(map(len, folds)) == 880
    assert max(map(len, folds)) - min(map(len, folds)) <= 4
    totals = Counter(b.label for n in nih_index.annotated_names() for b in nih_index[n].boxes)
    for f in folds:
        per = Counter(b.label for n in f for b in nih_index[n].boxes)
        for lab, total in totals.items():
            assert abs(per[lab] - total / 5) <= max(3, 0.15 * total / 5), (lab, per[lab], total)


# -- protocols ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("a_ratio, u_ratio", [(0.8, 1.0), (0.4, 0.5), (0.0, 1.0), (0.0, 0.5), (0.8, 0.5)])
def test_protocol_ratios_and_no_leakage(idx, a_ratio, u_ratio):
    folds = localization_folds(idx, seed=0)
    annotated = set(idx.annotated_names())
    unannotated = [n for n in idx.names() if n not in annotated]
    for k in range(5):
        p = localization_protocol(idx, folds, k, a_ratio, u_ratio, seed=7)
        assert p.test == sorted(folds[k])
        # annotated training images: a whole number of the other folds, never a test patient's
        others = set(range(5)) - {k}
        assert set(p.annotated_folds) <= others and len(p.annotated_folds) == round(a_ratio * 5)
        assert set(p.train_annotated) == {n for f in p.annotated_folds for n in folds[f]}
        assert set(p.train_annotated) <= set(p.train) and set(p.train_annotated) <= annotated
        assert not set(p.train) & set(p.test)
        assert not patients_of(idx, p.train) & patients_of(idx, p.test)
        # excluded images are exactly the sampled unannotated ones of test patients
        train_unann = [n for n in p.train if n not in annotated]
        sampled = train_unann + p.excluded["unannotated"]
        assert all(n not in annotated for n in sampled)
        assert set(p.excluded["unannotated"]) == {n for n in sampled if idx[n].patient_id in patients_of(idx, p.test)}
        assert p.excluded["n_unannotated"] == len(p.excluded["unannotated"])
        assert abs(len(sampled) / len(unannotated) - u_ratio) < 0.03
        if u_ratio == 1.0:
            assert sorted(sampled) == sorted(unannotated)
            assert any(idx[n].no_finding for n in p.train)  # No Finding images are unannotated


def test_protocol_patient_overlap_switch(idx):
    folds = localization_folds(idx, seed=0)
    strict = localization_protocol(idx, folds, 1, 0.8, 1.0)
    naive = localization_protocol(idx, folds, 1, 0.8, 1.0, allow_patient_overlap=True)
    assert strict.excluded["n_unannotated"] > 0
    assert naive.excluded["n_unannotated"] == 0 and naive.excluded["unannotated"] == []
    assert patients_of(idx, naive.train) & patients_of(idx, naive.test)
    assert set(naive.train) - set(strict.train) == set(strict.excluded["unannotated"])
    assert "patient overlap allowed" in naive.description


def test_protocol_unannotated_only(idx):
    folds = localization_folds(idx, seed=0)
    p = localization_protocol(idx, folds, 0, 0.0, 1.0, unannotated_only=True)
    annotated = set(idx.annotated_names())
    assert set(p.test) == annotated and p.train_annotated == []
    assert not set(p.train) & annotated
    assert not patients_of(idx, p.train) & patients_of(idx, p.test)
    # fold and annotated_ratio do not matter in this setting
    q = localization_protocol(idx, folds, 3, 0.8, 1.0, unannotated_only=True)
    assert (q.train, q.test, q.annotated_ratio) == (p.train, p.test, 0.0)


def test_protocol_determinism_and_errors(idx):
    folds = localization_folds(idx, seed=0)
    a = localization_protocol(idx, folds, 2, 0.4, 0.5, seed=5)
    assert a == localization_protocol(idx, folds, 2, 0.4, 0.5, seed=5)
    # the two folds of the 40% setting and the 50% sample both change with the seed
    chosen = {tuple(localization_protocol(idx, folds, 2, 0.4, 0.5, seed=s).annotated_folds) for s in range(8)}
    assert len(chosen) > 1
    assert a.train != localization_protocol(idx, folds, 2, 0.4, 0.5, seed=6).train
    with pytest.raises(ValueError, match="multiple of 1/5"):
        localization_protocol(idx, folds, 2, 0.3, 0.5)
    with pytest.raises(ValueError, match="multiple of 1/5"):
        localization_protocol(idx, folds, 2, 1.0, 0.5)  # the test fold cannot train
    with pytest.raises(ValueError, match="fold must be in"):
        localization_protocol(idx, folds, 5, 0.4, 0.5)
    with pytest.raises(ValueError, match="more than one fold"):
        localization_protocol(idx, [folds[0], folds[0] + folds[1]], 0, 0.0, 0.5)


@pytest.mark.slow
def test_protocol_real_nih_leakage(nih_index):
    folds = localization_folds(nih_index, seed=0)
    p = localization_protocol(nih_index, folds, 0, 0.8, 0.5, seed=0)
    assert len(p.train_annotated) == 880 - len(folds[0])
    assert not patients_of(nih_index, p.train) & patients_of(nih_index, p.test)
    assert p.excluded["n_unannotated"] > 0  # test patients do have follow-up images elsewhere


# -- JSON -----------------------------------------------------------------------------------------------


def test_json_round_trip_and_errors(tmp_path, idx):
    splits = make_splits(idx, seed=11)
    path = tmp_path / "sub" / "splits.json"
    write_splits(path, splits)
    back = read_splits(path)
    assert back == json.loads(json.dumps(splits))
    assert back["classification"] == classification_split(idx, seed=11)
    assert back["localization_folds"] == localization_folds(idx, seed=11)
    assert [p.name for p in path.parent.iterdir()] == ["splits.json"]  # no temp file left behind
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_splits(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"bad\.json: not valid JSON"):
        read_splits(tmp_path / "bad.json")
    (tmp_path / "partial.json").write_text('{"classification": {"train": [], "val": [], "test": []}}')
    with pytest.raises(ValueError, match=r"partial\.json: missing key 'localization_folds'"):
        read_splits(tmp_path / "partial.json")


@pytest.mark.slow  # end to end through the CLI on full data
def test_cli_splits(tmp_path, nih_metadata_dir, capsys):
    out = tmp_path / "splits.json"
    argv = ["splits", "--data-root", str(nih_metadata_dir), "--seed", "3", "--out", str(out)]
    assert main(argv) == 0
    s = read_splits(out)
    assert s["seed"] == 3 and len(s["localization_folds"]) == 5
    assert sum(map(len, s["localization_folds"])) == 880
    assert sum(len(s["classification"][p]) for p in ("train", "val", "test")) == 112_120
    assert "wrote" in capsys.readouterr().out
    assert main(argv[:-1] + [str(tmp_path / "again.json")]) == 0
    assert read_splits(tmp_path / "again.json") == s  # same seed, same file
    assert main(argv + ["--official", "--overwrite"]) == 2
    assert "train_val_list.txt" in capsys.readouterr().err
