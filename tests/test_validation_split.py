"""Honest model selection: a declared validation set, patient-disjoint, stable under resume; validation
metrics come from validation images and the test images are scored once, at the end."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import tiny_config, tiny_model

#: the tiny set of this module (conftest's tiny_root): 40 patients, enough for a validation split with boxes
TINY_PATIENTS = 40


def _patients(index, names):
    return {index[n].patient_id for n in names}


def test_localization_val_is_patient_disjoint_and_keeps_boxes(tiny_root):
    from cianet.data.nih import NIHIndex
    from cianet.data.splits import localization_folds, localization_protocol

    index = NIHIndex.from_root(tiny_root)
    folds = localization_folds(index, seed=0, k=5)
    kw = dict(fold=1, annotated_ratio=0.8, unannotated_ratio=1.0, seed=0)
    plain = localization_protocol(index, folds, **kw)
    proto = localization_protocol(index, folds, val_share=0.25, **kw)
    again = localization_protocol(index, folds, val_share=0.25, **kw)
    assert plain.val == [] and localization_protocol(index, folds, val_share=0.0, **kw).train == plain.train
    assert proto.val and proto.val == again.val and proto.train == again.train  # a function of the arguments
    tr, va, te = (_patients(index, x) for x in (proto.train, proto.val, proto.test))
    assert not tr & va and not va & te and not tr & te
    # the validation set is carved out of the training set of the same protocol, whole patients
    assert set(proto.val) | set(proto.train) == set(plain.train)
    assert all(n not in set(proto.val) for n in proto.train_annotated)
    boxed_val = [n for n in proto.val if index[n].boxes]
    assert boxed_val and set(boxed_val) <= set(plain.train_annotated)  # val localization can be measured
    share = len(proto.val) / len(plain.train)
    assert 0.1 < share < 0.45
    assert "validation images" in proto.description


def test_run_data_records_val_and_keeps_auc_extra_apart(tiny_root, tmp_path):
    from cianet.errors import InputError
    from cianet.run.protocol import build_run_data, check_same_split, read_split_file, write_split_file

    cfg = tiny_config(tmp_path / "run", tiny_root, protocol__val_share=0.25, protocol__unannotated_ratio=0.5)
    data = build_run_data(cfg)
    index = data.index
    assert data.val and not set(data.val) & set(data.train)
    assert not _patients(index, data.val) & _patients(index, data.auc_extra)
    assert not _patients(index, data.val) & _patients(index, data.test)
    assert not set(data.val) & data.box_names
    assert data.held_out == list(dict.fromkeys(data.test + data.auc_extra + data.val))
    (tmp_path / "run").mkdir()
    write_split_file(tmp_path / "run", data)
    assert read_split_file(tmp_path / "run")["val"] == data.val
    check_same_split(tmp_path / "run", build_run_data(cfg))  # rebuilt: the same lists
    other = build_run_data(
        tiny_config(tmp_path / "run", tiny_root, protocol__val_share=0.4, protocol__unannotated_ratio=0.5)
    )
    with pytest.raises(InputError, match="split.json.*val"):
        check_same_split(tmp_path / "run", other)


def test_tiny_recipe_has_no_validation_and_paper_recipe_has_one():
    from cianet.config import load_config

    assert load_config("tiny").protocol.val_share == 0.0 and load_config("tiny").run.eval_every == 0
    paper = load_config("paper")
    assert paper.protocol.val_share == 0.1 and paper.run.eval_every > 0


@pytest.mark.slow
def test_val_loader_scores_the_val_images_only(tiny_root, tmp_path):
    """The names the evaluation saw are the validation images, in the classification and localization protocols."""
    from cianet.run.loaders import make_loaders, make_val_loader
    from cianet.run.pairing import pair_negatives
    from cianet.run.protocol import build_run_data
    from cianet.run.scoring import evaluate

    # only the names scored are checked: 32 px suffice, and one network serves both protocols
    model = tiny_model(tiny_config(tmp_path / "run", tiny_root, data__image_size=32))
    for over in ({"protocol__val_share": 0.25}, {"protocol__kind": "classification"}):
        cfg = tiny_config(tmp_path / "run", tiny_root, data__image_size=32, **over)
        data = build_run_data(cfg)
        _, _, test_ds, test_loader = make_loaders(cfg, data)
        pairing = pair_negatives(cfg, data, test_ds.source)
        assert all(n in pairing.test(0) for n in data.val)  # val images are paired like test images
        _, val_loader = make_val_loader(cfg, data, pairing)
        with pytest.warns(UserWarning):  # tiny sets miss classes: NaN AUC / accuracy, with warnings
            seen = evaluate(model, val_loader, torch.device("cpu"), progress=False)["names"]
            tested = evaluate(model, test_loader, torch.device("cpu"), progress=False)["names"]
        assert seen == list(data.val) and len(seen) > 0
        assert not set(seen) & set(tested)
    cfg = tiny_config(tmp_path / "run0", tiny_root)
    assert make_val_loader(cfg, build_run_data(cfg), None) == (None, None)  # val_share 0: nothing to validate


@pytest.mark.slow
def test_training_logs_val_metrics_on_val_images_and_resumes_on_the_same_split(tiny_root, tmp_path, monkeypatch):
    from cianet.data.nih import NIHIndex
    from cianet.training import loop as tr

    def cfg():
        return tiny_config(  # 32 px: half the cost of 64, and the same images and boxes to validate on
            tmp_path / "run",
            tiny_root,
            protocol__val_share=0.25,
            run__eval_every=1,
            protocol__unannotated_ratio=0.5,
            data__image_size=32,
        )

    real_epoch = tr.train_one_epoch
    calls = {"n": 0}

    def dying_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(tr, "train_one_epoch", dying_epoch)
    with pytest.raises(KeyboardInterrupt):
        tr.fit(cfg())
    first = json.loads((tmp_path / "run" / "split.json").read_text())
    monkeypatch.setattr(tr, "train_one_epoch", real_epoch)
    out = tr.fit(cfg(), resume=True)
    split = json.loads((out / "split.json").read_text())
    assert split == first and split["val"]
    index_boxes = {r.name: len(r.boxes) for r in NIHIndex.from_root(tiny_root).records}
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1]
    for r in epochs:
        assert r["val_images"] == len(split["val"])
        assert r["val_boxes"] == sum(index_boxes[n] for n in split["val"]) > 0
        assert "val_auc_mean" in r and "val_loc_mean_0.5" in r
    final = [r for r in records if r["event"] == "final"]
    assert len(final) == 1 and not any(k.startswith("val_") for k in final[0])
    assert final[0]["test_images"] == len(split["test"]) + len(split["auc_extra"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == final[0]["test_images"]
