"""Prior studies: a patient's own No Finding film as the healthy image an image is compared with.

A radiologist reads a film against the patient's previous one; the closest healthy image of matching
structure is usually that earlier normal study. :func:`prior_studies` finds it from the index alone (patient,
follow-up number, the candidate's label); :func:`prior_counts` says how many images have one.

Only records' ``patient_id``, ``follow_up`` and (of the candidates) ``no_finding`` are read: an image's own
labels never decide its pairing, so pairing by prior reads no label of the image it pairs.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence

from cianet.data.tables import paused_gc

#: The keys of :func:`prior_counts`, in the order reports show them.
PRIOR_COUNT_KEYS = (
    "with_prior",
    "positives_with_prior",
    "boxed_with_prior",
    "with_prior_any",
    "positives_with_prior_any",
    "boxed_with_prior_any",
)


def _normal_studies(records: Iterable) -> dict[str, tuple[list[int], list[str]]]:
    """patient -> (sorted follow-up numbers, names) of that patient's No Finding studies with a follow-up
    number; for equal numbers the first in metadata order comes first (a stable sort)."""
    by_patient: dict[str, list[tuple[int, str]]] = {}
    for r in records:
        if r.follow_up is not None and r.no_finding:
            by_patient.setdefault(r.patient_id, []).append((int(r.follow_up), r.name))
    out = {}
    for pid, studies in by_patient.items():
        studies.sort(key=lambda s: s[0])
        out[pid] = ([s[0] for s in studies], [s[1] for s in studies])
    return out


def _nearest(follow_ups: list[int], names: list[str], fu: int, allow_later: bool) -> str | None:
    """The most recent study strictly before ``fu``; with ``allow_later`` the nearest one at another
    follow-up number, the earlier one on a tie."""
    lo = bisect_left(follow_ups, fu)  # follow_ups[:lo] are earlier
    # the first (records order) of the studies sharing the latest earlier number
    earlier = bisect_left(follow_ups, follow_ups[lo - 1]) if lo > 0 else None
    if not allow_later:
        return None if earlier is None else names[earlier]
    hi = bisect_right(follow_ups, fu)  # follow_ups[hi:] are later
    later = hi if hi < len(follow_ups) else None
    if earlier is None and later is None:
        return None
    if later is None or (earlier is not None and fu - follow_ups[earlier] <= follow_ups[later] - fu):
        return names[earlier]
    return names[later]


def prior_studies(records: Sequence, allow_later: bool = False) -> dict[str, str | None]:
    """image name -> the name of the same patient's No Finding study to use as its negative, or None.

    The most recent study *earlier* by follow-up number; with ``allow_later`` the nearest study at any other
    follow-up number (the earlier one when an earlier and a later one are equally near). Never the image
    itself, never a study at the image's own follow-up number. None when the patient has none, or when the
    image (or the candidate) has no follow-up number to order it by. Several studies at one follow-up number:
    the first in ``records`` order.
    """
    with paused_gc():
        return _prior_studies(records, _normal_studies(records), allow_later)


def _prior_studies(
    records: Sequence, normals: dict[str, tuple[list[int], list[str]]], allow_later: bool
) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for r in records:
        found = None
        if r.follow_up is not None and r.patient_id in normals:
            follow_ups, names = normals[r.patient_id]
            found = _nearest(follow_ups, names, int(r.follow_up), allow_later)
        out[r.name] = found
    return out


def prior_counts(records: Sequence) -> dict[str, int]:
    """How many images have a prior (:func:`prior_studies`), of any label, with a finding, with a box; then
    the same three for a No Finding study at any other follow-up (``*_with_prior_any``)."""
    records = list(records)
    out: dict[str, int] = {}
    with paused_gc():
        normals = _normal_studies(records)  # the same candidates for both rules
        for suffix, allow_later in (("", False), ("_any", True)):
            priors = _prior_studies(records, normals, allow_later)
            having = [r for r in records if priors[r.name] is not None]
            out["with_prior" + suffix] = len(having)
            out["positives_with_prior" + suffix] = sum(not r.no_finding for r in having)
            out["boxed_with_prior" + suffix] = sum(bool(r.boxes) for r in having)
    return {k: out[k] for k in PRIOR_COUNT_KEYS}
