"""Prior studies (cianet.data.priors) against a slow obvious reference, edge cases, and the counts on the real
NIH metadata (torchxrayvision's wheel)."""

from __future__ import annotations

import numpy as np
import pytest

from cianet.data.index import Box, ImageRecord
from cianet.data.priors import PRIOR_COUNT_KEYS, prior_counts, prior_studies


def rec(name, patient, follow_up, labels=(), boxed=False):
    boxes = [Box(labels[0] if labels else "Nodule", 1, 1, 2, 2)] if boxed else []
    return ImageRecord(name=name, patient_id=patient, labels=tuple(labels), boxes=boxes, follow_up=follow_up)


def reference_priors(records, allow_later=False):
    """Every pair of records compared in a double loop."""
    out = {}
    for r in records:
        best, best_key = None, None
        for c in records:
            if c is r or c.patient_id != r.patient_id or not c.no_finding:
                continue
            if r.follow_up is None or c.follow_up is None or c.follow_up == r.follow_up:
                continue
            if c.follow_up > r.follow_up and not allow_later:
                continue
            # nearer first, then earlier, then the first in records order (the loop order keeps it)
            key = (abs(c.follow_up - r.follow_up), c.follow_up > r.follow_up)
            if best_key is None or key < best_key:
                best, best_key = c.name, key
        out[r.name] = best
    return out


def reference_counts(records):
    out = {}
    for suffix, later in (("", False), ("_any", True)):
        pri = reference_priors(records, later)
        out["with_prior" + suffix] = sum(pri[r.name] is not None for r in records)
        out["positives_with_prior" + suffix] = sum(pri[r.name] is not None and bool(r.labels) for r in records)
        out["boxed_with_prior" + suffix] = sum(pri[r.name] is not None and bool(r.boxes) for r in records)
    return out


def random_records(seed, n=300):
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        fu = None if rng.random() < 0.05 else int(rng.integers(0, 8))
        labels = () if rng.random() < 0.5 else ("Nodule",)
        recs.append(
            rec(
                f"img{i:04d}.png", f"p{int(rng.integers(0, 40))}", fu, labels, boxed=bool(labels) and rng.random() < 0.3
            )
        )
    return recs


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("allow_later", [False, True])
def test_matches_reference(seed, allow_later):
    recs = random_records(seed)
    got = prior_studies(recs, allow_later=allow_later)
    assert got == reference_priors(recs, allow_later)
    assert any(v is not None for v in got.values()) and any(v is None for v in got.values())


@pytest.mark.parametrize("seed", [0, 3])
def test_counts_match_reference(seed):
    recs = random_records(seed)
    counts = prior_counts(recs)
    assert tuple(counts) == PRIOR_COUNT_KEYS
    assert counts == reference_counts(recs)
    assert counts["with_prior"] <= counts["with_prior_any"]


def test_no_follow_up_number_has_no_prior_and_is_no_prior():
    recs = [rec("a", "p", None, ()), rec("b", "p", 3, ("Mass",)), rec("c", "p", None, ("Mass",))]
    for later in (False, True):
        assert prior_studies(recs, allow_later=later) == {"a": None, "b": None, "c": None}


def test_never_itself_and_no_finding_image_uses_earlier_normal():
    recs = [rec("n0", "p", 0), rec("n1", "p", 1), rec("x", "q", 0)]
    assert prior_studies(recs) == {"n0": None, "n1": "n0", "x": None}
    assert prior_studies(recs, allow_later=True) == {"n0": "n1", "n1": "n0", "x": None}


def test_most_recent_of_several_earlier_normals():
    recs = [
        rec("n1", "p", 1),
        rec("n4", "p", 4),
        rec("f3", "p", 3, ("Mass",)),
        rec("n2", "p", 2),
        rec("f6", "p", 6, ("Mass",)),
        rec("n7", "p", 7),
    ]
    got = prior_studies(recs)
    assert got["f3"] == "n2" and got["f6"] == "n4" and got["n4"] == "n2" and got["n1"] is None
    assert prior_studies(recs, allow_later=True)["f6"] == "n7"  # 7 is nearer than 4


def test_tie_prefers_earlier_and_positive_never_a_candidate():
    recs = [rec("n2", "p", 2), rec("f3", "p", 3, ("Mass",)), rec("f4", "p", 4, ("Nodule",)), rec("n6", "p", 6)]
    later = prior_studies(recs, allow_later=True)
    assert later["f4"] == "n2"  # 2 and 6 are both two away: the earlier wins
    assert later["f3"] == "n2"
    assert prior_studies(recs)["n6"] == "n2"  # f3/f4 have findings: never a prior


def test_only_later_normal():
    recs = [rec("f0", "p", 0, ("Mass",)), rec("n5", "p", 5)]
    assert prior_studies(recs) == {"f0": None, "n5": None}
    assert prior_studies(recs, allow_later=True) == {"f0": "n5", "n5": None}


def test_other_patients_never_used():
    recs = [rec("n0", "p", 0), rec("f1", "q", 1, ("Mass",))]
    assert prior_studies(recs, allow_later=True) == {"n0": None, "f1": None}


def test_counts_by_hand():
    recs = [
        rec("n0", "p", 0),
        rec("f1", "p", 1, ("Mass",), boxed=True),
        rec("n2", "p", 2),
        rec("f0", "q", 0, ("Mass",), boxed=True),
        rec("n1", "q", 1),
    ]
    assert prior_counts(recs) == {
        "with_prior": 2,
        "positives_with_prior": 1,
        "boxed_with_prior": 1,
        "with_prior_any": 4,
        "positives_with_prior_any": 2,
        "boxed_with_prior_any": 2,
    }


# -- `cianet index` reports the counts ------------------------------------------------------------------

REAL_NIH = {
    "with_prior": 71_643,
    "positives_with_prior": 36_189,
    "boxed_with_prior": 647,
    "with_prior_any": 88_242,
    "positives_with_prior_any": 43_229,
    "boxed_with_prior_any": 758,
}


@pytest.mark.slow
def test_real_nih_index_json(nih_metadata_dir, capsys):
    import json

    from cianet.cli import main

    assert main(["index", "--data-root", str(nih_metadata_dir), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert {k: s[k] for k in PRIOR_COUNT_KEYS} == REAL_NIH
    assert "priors_note" not in s


def _txv_file(name):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.origin:
        pytest.skip("torchxrayvision is not installed")
    path = Path(spec.origin).parent / "data" / name
    if not path.is_file():
        pytest.skip(f"torchxrayvision ships no {name}")
    return path


@pytest.mark.parametrize(
    "layout, table", [("rsna", "kaggle_stage_2_train_labels.csv.zip"), ("vindr", "vinbigdata-train.csv.gz")]
)
@pytest.mark.slow
def test_rsna_and_vindr_report_none(tmp_path, layout, table):
    from cianet.data.layouts import open_index

    src = _txv_file(table)
    (tmp_path / src.name).symlink_to(src)
    s = open_index(tmp_path, layout, scan=False).summary()
    assert all(s[k] is None for k in PRIOR_COUNT_KEYS)
    assert layout in s["priors_note"] and "no prior studies" in s["priors_note"]


def _csv_root(root, header, rows):
    root.mkdir()
    (root / "images.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    (root / "boxes.csv").write_text("image,label,x,y,w,h\nb.png,Nodule,1,1,3,3\n")
    return root


def test_csv_layout_with_follow_up(tmp_path, capsys):
    import json

    from cianet.cli import main

    rows = ["a.png,No Finding,p1,0", "b.png,Nodule,p1,1", "c.png,,p1,2", "d.png,Mass,p2,0", "e.png,,p2,", "f.png,,p2,3"]
    root = _csv_root(tmp_path / "csv", "image,labels,patient,follow_up", rows)
    assert main(["index", "--data-root", str(root), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    # earlier: b<-a, c<-a, f<-none (e has no number); any: a<-c, b<-a, c<-a, d<-f
    assert {k: s[k] for k in PRIOR_COUNT_KEYS} == {
        "with_prior": 2,
        "positives_with_prior": 1,
        "boxed_with_prior": 1,
        "with_prior_any": 4,
        "positives_with_prior_any": 2,
        "boxed_with_prior_any": 1,
    }
    assert main(["index", "--data-root", str(root)]) == 0
    assert "prior studies    earlier No Finding study of the same patient: 2 images" in capsys.readouterr().out


def test_csv_layout_without_follow_up_reports_none(tmp_path):
    from cianet.data.layouts import open_index

    root = _csv_root(tmp_path / "csv", "image,labels,patient", ["a.png,,p1", "b.png,Nodule,p1"])
    s = open_index(root).summary()
    assert s["with_prior"] is None and "csv" in s["priors_note"]


@pytest.mark.parametrize(
    "header, rows, match",
    [
        ("image,labels,follow_up", ["a.png,,0"], "'follow_up' column needs a 'patient' column"),
        ("image,labels,patient,follow_up", ["a.png,,p,x"], "line 2: 'follow_up' must be a whole number"),
        ("image,labels,patient,follow_up", ["a.png,,p,-1"], "line 2: 'follow_up' must be >= 0"),
    ],
)
def test_csv_layout_bad_follow_up(tmp_path, capsys, header, rows, match):
    from cianet.cli import main

    root = _csv_root(tmp_path / "csv", header, rows)
    assert main(["index", "--data-root", str(root)]) == 2
    assert match in capsys.readouterr().err
