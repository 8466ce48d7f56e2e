"""Synthetic chest X-ray phantom: an NIH ChestX-ray14-shaped data set with known ground truth.

:func:`generate_dataset` writes, under ``out_dir``::

    images/00000001_000.png ...   8-bit grayscale PNGs, S x S, NIH names (8-digit patient, 3-digit follow-up)
    Data_Entry_2017.csv           NIH v2017 header and layout (trailing empty column included)
    BBox_List_2017.csv            NIH header ("Bbox [x,y,w,h],,,"), boxes of the *annotated* images only,
                                  in the written images' pixel frame; Infiltration is spelled "Infiltrate"
    train_val_list.txt, test_list.txt   patient-disjoint, about 80 / 20
    synth_truth.csv               the ground truth of every image (below)
    synth_meta.json               the generation arguments and a summary
    twins/NAME.png                with ``twins``: every image's finding-free twin (:func:`twin_spec`)
    pool_only.txt                 with ``extra_negatives``: the names of the pool-only No Finding images

Each image is drawn analytically from a per-patient :class:`~cianet.phantom.anatomy.Anatomy` or, with
``backgrounds``, from a real No Finding X-ray of its own (one radiograph, one patient); findings
(:mod:`cianet.phantom.findings`) are defined in the patient frame. A follow-up is a re-acquisition of the
patient: another position, breath and exposure (:func:`~cianet.phantom.anatomy.vary_anatomy`, or
:func:`reacquire_background` for a real radiograph), its own noise and scan deformation.

Deformation convention (the one of docs/architecture.md). A deformed ("bad scan") image is recorded with the
alignment parameters ``(tx, ty, sx, sy, theta)`` that *undo* it. With
``A = [[sx cos t, -sy sin t, tx], [sx sin t, sy cos t, ty]]`` acting on normalized coordinates
(``x = 2u/W - 1``, pixel ``j`` centred at ``u = j + 0.5``, y down), the written image is
``written(q) = undeformed(A^-1 q)``, so ``undeformed(p) = written(A p)``: warping the written image with
``affine_grid(A)`` + ``grid_sample(align_corners=False)`` gives back the undeformed rendering (up to
interpolation, and except where ``A p`` leaves the field of view). Undeformed images record the identity
``(0, 0, 1, 1, 0)``. The written image is drawn directly at the patient-frame points ``A^-1 q``, so it is as
sharp as an undeformed one.

Boxes. A lesion's box is the bounding box of its footprint (the written pixels it changes) in the written
image: ``x, y`` the top-left pixel corner, ``w, h`` in pixels, so it lies in the image and covers the lesion.

``synth_truth.csv`` has one row per box (box classes, all images, ``in_bbox_list`` 1 when the box is in
BBox_List_2017.csv) and one row with empty box fields for an image without boxes. Columns: ``Image Index,
Patient ID, Follow-up #, deformed, strength (none/mild/strong), tx, ty, sx, sy, theta, Finding Labels,
annotated, background, box_label, x, y, w, h, in_bbox_list``.

Determinism: the data set plan (patients, labels, annotated and deformed images) comes from ``seed``; each
image from a generator seeded with ``(seed, image index)`` (its patient's anatomy from ``(seed, patient)``),
so the bytes do not depend on the number of workers. PNGs are written with fixed settings.
"""

from __future__ import annotations

import csv
import functools
import io
import math
import multiprocessing
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from cianet.data.index import Box, ImageRecord
from cianet.data.io import load_xray, resize_gray
from cianet.data.priors import prior_counts, prior_studies
from cianet.errors import InputError, MissingPathError, UsageError
from cianet.labels import BOX_LABELS, LABELS, NO_FINDING
from cianet.phantom.anatomy import (
    Anatomy,
    anatomy_layers,
    inverse_tone,
    lung_sdf,
    ramp,
    sample_anatomy,
    tone,
    vary_anatomy,
)
from cianet.phantom.findings import (
    Finding,
    FindingContext,
    apply_anatomy_findings,
    finding_effect,
    sample_findings,
)
from cianet.utils.atomic import atomic_path, atomic_write_json, atomic_write_text
from cianet.utils.progress import progress_enabled

Array = np.ndarray

IDENTITY: tuple[float, float, float, float, float] = (0.0, 0.0, 1.0, 1.0, 0.0)

#: Ranges of the undo parameters: |tx|, |ty| <= shift; sx, sy in scale; |theta| <= rot_deg.
DEFORMATION_RANGES: dict[str, dict] = {
    "mild": {"shift": 0.05, "scale": (0.93, 1.07), "rot_deg": 5.0},
    "strong": {"shift": 0.15, "scale": (0.8, 1.2), "rot_deg": 15.0},
}

DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
#: BBox_List_2017.csv spells Infiltration this way.
BBOX_SPELLING = {"Infiltration": "Infiltrate"}
TRUTH_COLUMNS = (
    "Image Index",
    "Patient ID",
    "Follow-up #",
    "deformed",
    "strength",
    "tx",
    "ty",
    "sx",
    "sy",
    "theta",
    "Finding Labels",
    "annotated",
    "background",
    "box_label",
    "x",
    "y",
    "w",
    "h",
    "in_bbox_list",
)

#: Relative frequency of each label among the findings of positive images (box classes favoured).
LABEL_WEIGHTS: dict[str, float] = {
    "Atelectasis": 1.0,
    "Cardiomegaly": 0.8,
    "Effusion": 1.0,
    "Infiltration": 1.1,
    "Mass": 0.8,
    "Nodule": 0.9,
    "Pneumonia": 0.6,
    "Pneumothorax": 0.8,
    "Consolidation": 0.45,
    "Edema": 0.35,
    "Emphysema": 0.4,
    "Fibrosis": 0.35,
    "Pleural_Thickening": 0.45,
    "Hernia": 0.15,
}
#: P(1, 2, 3 findings) for a positive image.
N_FINDINGS_P = (0.72, 0.21, 0.07)
#: Field of view of the pretend original radiograph (mm), for OriginalImagePixelSpacing.
FIELD_OF_VIEW_MM = 358.0
#: where ``twins=True`` writes the finding-free twins, under the data set's root
TWINS_DIR = "twins"
#: the names of the pool-only No Finding images (``extra_negatives``), one per line, under the root
POOL_ONLY_FILE = "pool_only.txt"
#: A re-acquisition of the same chest (a twin, a follow-up of a real radiograph): the small pose change added
#: to the scan deformation (|shift|, scale range, |rotation| in degrees), the inspiration (vertical stretch of
#: the chest below the apex) and the exposure factor.
REACQUISITION: dict = {
    "shift": 0.015,
    "scale": (0.985, 1.015),
    "rot_deg": 1.5,
    "inspiration": 0.02,
    "exposure": (0.94, 1.06),
}
#: normalized height of the lung apices, which stay in place when a breath stretches the chest
APEX_Y = -0.75
MAX_SIZE = 4096  # image side; the NIH images are 1024


class SynthBox(NamedTuple):
    """A box in the pixel frame of the written image (``x, y`` top-left corner, pixels)."""

    label: str
    x: float
    y: float
    w: float
    h: float


class Rendering(NamedTuple):
    """undeformed, deformed: float32 (S, S) in [0, 1]; boxes: in the deformed (written) frame; params: the
    5 alignment parameters that undo the deformation."""

    undeformed: Array
    deformed: Array
    boxes: list[SynthBox]
    params: tuple[float, float, float, float, float]


@dataclass
class ImageSpec:
    """Everything that determines one image (the anatomy before the findings change it)."""

    anatomy: Anatomy
    findings: tuple[Finding, ...] = ()
    params: tuple[float, float, float, float, float] = IDENTITY
    noise_seed: int = 0
    background: Array | None = None  # (S, S) float32 in [0, 1], real No Finding X-ray
    strength: str = "none"


# -------------------------------------------------------------------------------------------- geometry


def params_to_matrix_np(params: Sequence[float]) -> Array:
    """(tx, ty, sx, sy, theta) -> the (2, 3) float64 matrix A of docs/architecture.md."""
    tx, ty, sx, sy, t = (float(v) for v in params)
    c, s = math.cos(t), math.sin(t)
    return np.array([[sx * c, -sy * s, tx], [sx * s, sy * c, ty]], dtype=np.float64)


def invert_affine(A: Array) -> Array:
    """Inverse of a (2, 3) affine map."""
    M = np.linalg.inv(A[:, :2])
    return np.concatenate([M, -(M @ A[:, 2:])], axis=1)


def pixel_centres(size: int) -> Array:
    """Normalized coordinates of the pixel centres, (size,) float64 (align_corners=False)."""
    return (np.arange(size, dtype=np.float64) + 0.5) * (2.0 / size) - 1.0


def patient_grid(size: int, params: Sequence[float]) -> tuple[Array, Array]:
    """Patient-frame coordinates (X, Y), each (S, S) float32, of the written pixels: ``A^-1 q``."""
    c = pixel_centres(size)
    qx, qy = np.meshgrid(c, c)
    Ai = invert_affine(params_to_matrix_np(params))
    X = Ai[0, 0] * qx + Ai[0, 1] * qy + Ai[0, 2]
    Y = Ai[1, 0] * qx + Ai[1, 1] * qy + Ai[1, 2]
    return X.astype(np.float32), Y.astype(np.float32)


def bilinear_sample(img: Array, X: Array, Y: Array) -> Array:
    """``grid_sample(img, (X, Y), bilinear, zeros padding, align_corners=False)`` in numpy.

    img: (H, W); X, Y: normalized coordinates of any shape; returns float32 of X's shape.
    """
    H, W = img.shape
    ix = ((X.astype(np.float64) + 1.0) * W - 1.0) / 2.0
    iy = ((Y.astype(np.float64) + 1.0) * H - 1.0) / 2.0
    x0 = np.floor(ix).astype(np.int64)
    y0 = np.floor(iy).astype(np.int64)
    wx = ix - x0
    wy = iy - y0
    out = np.zeros(X.shape, dtype=np.float64)
    for dy, fy in ((0, 1.0 - wy), (1, wy)):
        for dx, fx in ((0, 1.0 - wx), (1, wx)):
            xx, yy = x0 + dx, y0 + dy
            ok = (xx >= 0) & (xx < W) & (yy >= 0) & (yy < H)
            v = img[np.clip(yy, 0, H - 1), np.clip(xx, 0, W - 1)]
            out += np.where(ok, v, 0.0) * fx * fy
    return out.astype(np.float32)


def gaussian_blur(img: Array, sigma: float) -> Array:
    """Separable Gaussian blur (reflect padding), (H, W) float32."""
    if sigma <= 0:
        return img
    r = max(1, int(math.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k = (k / k.sum()).astype(np.float32)
    out = img.astype(np.float32)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode="reflect")
        acc = np.zeros_like(out)
        n = out.shape[axis]
        for i, w in enumerate(k):
            acc += w * (p[i : i + n] if axis == 0 else p[:, i : i + n])
        out = acc
    return out


def mask_to_box(mask: Array) -> tuple[float, float, float, float] | None:
    """Bounding box (x, y, w, h) in pixels of a bool (H, W) mask, None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1 - cols[0]), float(rows[-1] + 1 - rows[0])


def sample_deformation(rng: np.random.Generator, strength: str) -> tuple[float, float, float, float, float]:
    """Undo parameters of a random deformation: ``strength`` in {"none", "mild", "strong"}."""
    if strength == "none":
        return IDENTITY
    if strength not in DEFORMATION_RANGES:
        raise UsageError(f"unknown deformation strength {strength!r}; expected none, mild or strong")
    r = DEFORMATION_RANGES[strength]
    tx, ty = rng.uniform(-r["shift"], r["shift"], size=2)
    sx, sy = rng.uniform(*r["scale"], size=2)
    theta = math.radians(rng.uniform(-r["rot_deg"], r["rot_deg"]))
    return float(tx), float(ty), float(sx), float(sy), float(theta)


# ------------------------------------------------------------------------------------------- rendering


def template_anatomy() -> Anatomy:
    """The average chest used to place findings on real backgrounds."""
    return Anatomy()


def _render_frame(spec: ImageSpec, size: int, params: Sequence[float]) -> tuple[Array, list[Array]]:
    """Noise-free rendering (S, S) float32 in [0, 1] at the written pixels of ``params``, plus the footprint
    (bool (S, S)) of each finding."""
    X, Y = patient_grid(size, params)
    pix = 2.0 / size
    real = spec.background is not None
    anat = apply_anatomy_findings(spec.anatomy, spec.findings, drawn=not real)
    if real:
        dens = inverse_tone(bilinear_sample(spec.background, X, Y), anat.exposure)
        lungs = np.zeros_like(X)
        for side in (-1, 1):
            lungs = lungs + ramp(lung_sdf(X, Y, anat, side), 6.0 * pix)
        ctx = FindingContext(X, Y, anat, pix, lungs, background=(dens, gaussian_blur(dens, 4.0)))
        D = dens.copy()
        markings = None
    else:
        layers = anatomy_layers(X, Y, anat, pix)
        ctx = FindingContext(X, Y, anat, pix, layers.lungs)
        D = layers.base
        markings = layers.markings
    footprints = []
    for f in spec.findings:
        eff = finding_effect(f, ctx)
        if eff.add is not None:
            D = D + eff.add
        if eff.markings_scale is not None and markings is not None:
            markings = markings * eff.markings_scale
        footprints.append(eff.footprint)
    if markings is not None:
        D = D + markings
    return tone(D, anat.exposure).astype(np.float32), footprints


def _add_noise(img: Array, seed: int, real: bool) -> Array:
    """Detector effects in the written frame: film grain then a slight blur."""
    rng = np.random.default_rng(seed)
    grain = rng.uniform(0.004, 0.01) if real else rng.uniform(0.012, 0.028)
    sigma = rng.uniform(0.4, 0.9)
    noisy = img + grain * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(gaussian_blur(noisy, sigma), 0.0, 1.0)


def render_spec(spec: ImageSpec, size: int, noise: bool = True, undeformed: bool = True) -> Rendering:
    """Render an :class:`ImageSpec`: the undeformed image (only when ``undeformed``; else None), the written
    (deformed) image, its boxes and the undo parameters. ``noise=False`` gives the exact analytic rendering."""
    img, feet = _render_frame(spec, size, spec.params)
    boxes = []
    for f, foot in zip(spec.findings, feet):
        if f.has_box:
            b = mask_to_box(foot)
            if b is not None:
                boxes.append(SynthBox(f.label, *b))
    und = None
    if undeformed:
        und = img if tuple(spec.params) == IDENTITY else _render_frame(spec, size, IDENTITY)[0]
    if noise:
        real = spec.background is not None
        img = _add_noise(img, spec.noise_seed, real)
        if und is not None:
            und = _add_noise(und, spec.noise_seed, real)
    return Rendering(und, img, boxes, tuple(float(v) for v in spec.params))


def render_image(
    anatomy: Anatomy,
    findings: Sequence[Finding] = (),
    params: Sequence[float] = IDENTITY,
    size: int = 256,
    noise: bool = True,
    noise_seed: int = 0,
    background: Array | None = None,
) -> Rendering:
    """Render one image with an explicit deformation.

    Returns ``(undeformed, deformed, boxes, params)``: float32 (S, S) images in [0, 1], the boxes of the
    box-class findings in the deformed image's pixel frame, and ``params`` (the undo parameters, see the
    module docstring). ``background``: a real X-ray (S, S) float32 in [0, 1] drawn instead of the anatomy
    (``anatomy`` then only places the findings; use :func:`template_anatomy`).
    """
    spec = ImageSpec(anatomy, tuple(findings), tuple(float(v) for v in params), noise_seed, background)
    return render_spec(spec, size, noise=noise)


def sample_spec(
    rng: np.random.Generator,
    labels: Sequence[str] = (),
    strength: str = "none",
    anatomy: Anatomy | None = None,
    background: Array | None = None,
) -> ImageSpec:
    """A random image: anatomy (drawn when None), deformation of ``strength``, findings for ``labels``."""
    for lab in labels:
        if lab not in LABELS:
            raise UsageError(f"unknown label {lab!r}; expected one of {', '.join(LABELS)}")
    if anatomy is None:
        anatomy = template_anatomy() if background is not None else sample_anatomy(rng)
    params = sample_deformation(rng, strength)
    A = params_to_matrix_np(params)

    def visible(x: float, y: float) -> bool:
        qx, qy = A @ np.array([x, y, 1.0])
        return abs(qx) < 0.85 and abs(qy) < 0.85

    findings, _ = sample_findings(tuple(labels), anatomy, rng, visible=visible)
    return ImageSpec(anatomy, findings, params, int(rng.integers(0, 2**31 - 1)), background, strength)


# ---------------------------------------------------------------------------------------------- planning


@dataclass
class ImagePlan:
    """What the data set plan fixes for one image before it is drawn."""

    index: int
    patient: int
    follow_up: int
    labels: tuple[str, ...]
    annotated: bool
    strength: str
    age: int
    view: str
    female: bool = False
    background: str | None = None  # path of the real background

    @property
    def name(self) -> str:
        return f"{self.patient:08d}_{self.follow_up:03d}.png"


def _exact_choice(rng: np.random.Generator, candidates: Sequence[int], share: float) -> set[int]:
    """round(share * len(candidates)) of the candidates, at random."""
    k = int(round(share * len(candidates)))
    if k <= 0:
        return set()
    return {int(candidates[i]) for i in rng.permutation(len(candidates))[:k]}


def _draw_labels(rng: np.random.Generator, n_images: int, no_finding_share: float) -> list[tuple[str, ...]]:
    """Each image's findings: none for the exact No Finding share, else 1 to 3 labels drawn by weight."""
    positives = _exact_choice(rng, range(n_images), 1.0 - no_finding_share)
    names = list(LABELS)
    w = np.array([LABEL_WEIGHTS[lab] for lab in names])
    labels: list[tuple[str, ...]] = []
    for i in range(n_images):
        if i not in positives:
            labels.append(())
            continue
        k = int(rng.choice(3, p=N_FINDINGS_P)) + 1
        pick = rng.choice(len(names), size=k, replace=False, p=w / w.sum())
        labels.append(tuple(names[j] for j in sorted(pick)))
    return labels


def plan_dataset(
    n_images: int,
    seed: int,
    deform_share: float = 0.5,
    strong_share: float = 0.3,
    annotated_share: float = 0.3,
    no_finding_share: float = 0.5,
    images_per_patient: tuple[int, int] = (1, 4),
    backgrounds: Sequence[str] | None = None,
    prior_share: float | None = None,
) -> list[ImagePlan]:
    """Patients, labels, annotated and deformed images of a data set (exact shares, rounded).

    ``backgrounds``: each patient gets a radiograph of its own (UsageError when there are fewer than
    patients). ``prior_share``: the labels are arranged (:func:`arrange_priors`) so that this share of the
    patients with a finding has a No Finding first study; None keeps them as drawn."""
    rng = np.random.default_rng([seed, 7])
    lo, hi = images_per_patient
    patients: list[int] = []
    pid = 0
    while len(patients) < n_images:
        pid += 1
        patients.extend([pid] * int(rng.integers(lo, hi + 1)))
    patients = patients[:n_images]
    n_patients = patients[-1]
    ages = rng.integers(18, 86, size=n_patients + 1)
    bg_of_patient: dict[int, str] = {}
    if backgrounds:
        check_backgrounds(len(backgrounds), n_patients, images_per_patient)
        order = rng.permutation(len(backgrounds))
        for p in range(1, n_patients + 1):  # one radiograph, one patient: never shared
            bg_of_patient[p] = str(backgrounds[int(order[p - 1])])

    labels = _draw_labels(rng, n_images, no_finding_share)
    if prior_share is not None:  # its own generator: the draws below stay those of the plan without it
        labels = arrange_priors(patients, labels, prior_share, np.random.default_rng([seed, 13]))
    eligible = [i for i in range(n_images) if any(lab in BOX_LABELS for lab in labels[i])]
    annotated = _exact_choice(rng, eligible, annotated_share)
    deformed = sorted(_exact_choice(rng, range(n_images), deform_share))
    strong = _exact_choice(rng, deformed, strong_share)

    # Gender follows the drawn anatomy (breast shadows); on real backgrounds it is a seeded draw.
    female = {
        p: (
            bool(np.random.default_rng([seed, 3, p]).random() < 0.45)
            if backgrounds
            else sample_anatomy(np.random.default_rng([seed, 0, p])).female
        )
        for p in range(1, n_patients + 1)
    }
    plans = []
    follow = 0
    deformed_set = set(deformed)
    for i in range(n_images):
        follow = follow + 1 if i > 0 and patients[i] == patients[i - 1] else 0
        strength = "strong" if i in strong else ("mild" if i in deformed_set else "none")
        plans.append(
            ImagePlan(
                index=i,
                patient=patients[i],
                follow_up=follow,
                labels=labels[i],
                annotated=i in annotated,
                strength=strength,
                age=int(ages[patients[i]]) + follow // 4,
                view="PA" if rng.random() < 0.75 else "AP",
                female=female[patients[i]],
                background=bg_of_patient.get(patients[i]),
            )
        )
    return plans


def check_backgrounds(n_backgrounds: int, n_patients: int, images_per_patient: Sequence[int], extra: int = 0) -> None:
    """UsageError unless there is a radiograph for every patient (and every extra negative's patient)."""

    need = n_patients + int(extra)
    if n_backgrounds < need:
        lo, hi = images_per_patient
        fit = int(n_backgrounds - int(extra)) * (lo + hi) / 2
        raise UsageError(
            f"--backgrounds: {n_backgrounds} radiographs for {n_patients} patients"
            + (f" and {extra} extra negatives" if extra else "")
            + "; each radiograph is one patient (its follow-ups are re-acquisitions of it), never shared: add "
            f"radiographs or lower --n-images (about {max(0, int(fit))} images fit)"
        )


def _patient_groups(patients: Sequence[int]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(patients):
        groups.setdefault(p, []).append(i)
    return groups


def arrange_priors(
    patients: Sequence[int], labels: Sequence[tuple[str, ...]], share: float, rng: np.random.Generator
) -> list[tuple[str, ...]]:
    """Labels re-arranged so that ``round(share * P)`` of the ``P`` patients with a finding have a No Finding
    first study (each of their finding images then has an earlier No Finding study) and the others have no
    No Finding study before their last finding. Images follow the patient's order (its follow-up numbers).

    Moves the fewest labels it can: a patient already arranged keeps its order; one to change moves its first
    No Finding study to the front (a prior) or its findings before its No Finding studies (none). When there
    are not enough patients with both kinds of study, a finding of a patient with several findings and no
    No Finding study is swapped with a spare No Finding study of another patient (who keeps one), so the
    patients with a finding and the per-image label draws stay the same. UsageError when ``share`` cannot be
    reached (single-study patients with a finding never have a prior).
    """

    labels = list(labels)
    groups = _patient_groups(patients)
    finding = [p for p, idx in groups.items() if any(labels[i] for i in idx)]
    target = int(round(float(share) * len(finding)))

    def normals(p: int) -> list[int]:
        return [i for i in groups[p] if not labels[i]]

    mixed = [p for p in finding if normals(p)]
    if target > len(mixed):
        pure = [p for p in finding if not normals(p) and len(groups[p]) >= 2]
        spares = [i for p in mixed for i in normals(p)[1:]]
        need = target - len(mixed)
        if need > min(len(pure), len(spares)):
            most = (len(mixed) + min(len(pure), len(spares))) / max(1, len(finding))
            raise UsageError(
                f"--prior-share {share}: at most {most:.3f} of the {len(finding)} patients with a "
                "finding can have a No Finding first study here (single-study patients cannot); "
                "raise --images-per-patient MIN or --no-finding-share"
            )
        pure = [pure[int(j)] for j in rng.permutation(len(pure))[:need]]
        spares = [spares[int(j)] for j in rng.permutation(len(spares))[:need]]
        for p, j in zip(pure, spares):
            i = groups[p][-1]
            labels[i], labels[j] = labels[j], labels[i]
        mixed = [p for p in finding if normals(p)]
    with_prior = {mixed[int(j)] for j in rng.permutation(len(mixed))[:target]}
    for p in mixed:
        idx = groups[p]
        seq = [labels[i] for i in idx]
        if p in with_prior and seq[0]:
            first = next(k for k, lab in enumerate(seq) if not lab)
            seq = [seq[first]] + seq[:first] + seq[first + 1 :]
        elif p not in with_prior:
            seq = [lab for lab in seq if lab] + [lab for lab in seq if not lab]  # stable: findings first
        for i, lab in zip(idx, seq):
            labels[i] = lab
    return labels


def plan_extra_negatives(
    n_extra: int,
    first_patient: int,
    first_index: int,
    seed: int,
    deform_share: float = 0.5,
    strong_share: float = 0.3,
    backgrounds: Sequence[str] | None = None,
) -> list[ImagePlan]:
    """``n_extra`` No Finding images of new patients (one image each), numbered after the plan's last patient
    and image, from their own generator: the plan's images are the same with or without them.
    ``backgrounds``: the radiographs no plan patient uses (one per extra patient)."""
    rng = np.random.default_rng([seed, 21])
    n = int(n_extra)
    deformed = sorted(_exact_choice(rng, range(n), deform_share))
    strong = _exact_choice(rng, deformed, strong_share)
    deformed_set = set(deformed)
    ages = rng.integers(18, 86, size=max(n, 1))
    order = rng.permutation(len(backgrounds)) if backgrounds else None
    plans = []
    for j in range(n):
        pid = first_patient + j
        female = (
            bool(np.random.default_rng([seed, 3, pid]).random() < 0.45)
            if backgrounds
            else sample_anatomy(np.random.default_rng([seed, 0, pid])).female
        )
        plans.append(
            ImagePlan(
                index=first_index + j,
                patient=pid,
                follow_up=0,
                labels=(),
                annotated=False,
                strength="strong" if j in strong else ("mild" if j in deformed_set else "none"),
                age=int(ages[j]),
                view="PA" if rng.random() < 0.75 else "AP",
                female=female,
                background=str(backgrounds[int(order[j])]) if order is not None else None,
            )
        )
    return plans


def split_patients(plans: Sequence[ImagePlan], seed: int, test_share: float = 0.2) -> tuple[list[str], list[str]]:
    """Patient-disjoint (train_val, test) name lists, test about ``test_share`` of the images, sorted."""
    rng = np.random.default_rng([seed, 11])
    by_patient: dict[int, list[str]] = {}
    for p in plans:
        by_patient.setdefault(p.patient, []).append(p.name)
    pids = sorted(by_patient)
    target = test_share * len(plans)
    test: list[str] = []
    for j in rng.permutation(len(pids)):
        if len(test) >= target:
            break
        test.extend(by_patient[pids[int(j)]])
    test_set = set(test)
    train = sorted(p.name for p in plans if p.name not in test_set)
    return train, sorted(test_set)


# ------------------------------------------------------------------------------------------ backgrounds


def find_backgrounds(folder: str | os.PathLike) -> list[Path]:
    """Real No Finding X-rays in ``folder`` (or ``folder/images``).

    When the folder holds an NIH-style CSV (columns "Image Index" and "Finding Labels"), only its No Finding
    images are used; otherwise every PNG/JPEG/DICOM image.
    """
    root = Path(folder)
    if not root.is_dir():
        raise MissingPathError(f"{root}: backgrounds folder not found")
    img_dir = root / "images" if (root / "images").is_dir() else root
    files = {p.name: p for p in img_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".dcm")}
    wanted: set[str] | None = None
    for csv_path in sorted(root.glob("*.csv")):
        with open(csv_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"Image Index", "Finding Labels"} <= set(reader.fieldnames):
                continue
            wanted = wanted or set()
            for row in reader:
                if (row.get("Finding Labels") or "").strip() == NO_FINDING:
                    wanted.add(row["Image Index"].strip())
    if wanted is not None:
        chosen = sorted(files[n] for n in wanted if n in files)
        if not chosen:
            raise UsageError(f"{root}: the CSV lists no No Finding image that is present in {img_dir}")
        return chosen
    if not files:
        raise UsageError(f"{img_dir}: no PNG/JPEG/DICOM images to use as backgrounds")
    return [files[n] for n in sorted(files)]


@functools.lru_cache(maxsize=64)
def load_background(path: str, size: int) -> Array:
    """A real X-ray as float32 (size, size) in [0, 1] (cached per worker process).

    Raises :class:`cianet.data.io.XrayReadError` (a ValueError naming the file) when it cannot be read.
    """
    return np.clip(resize_gray(load_xray(path), size), 0.0, 1.0)


# ----------------------------------------------------------------------------------------------- writing


def _png_bytes(img: Array) -> bytes:
    """8-bit grayscale PNG with fixed settings (same pixels -> same bytes)."""
    buf = io.BytesIO()
    u8 = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    Image.fromarray(u8, mode="L").save(buf, format="PNG", compress_level=1, optimize=False)
    return buf.getvalue()


def build_spec(plan: ImagePlan, size: int, seed: int) -> ImageSpec:
    """The image of a plan, drawn from generators seeded with (seed, patient) and (seed, image index)."""
    rng = np.random.default_rng([seed, 1, plan.index])
    background = None
    if plan.background is not None:
        base = template_anatomy()
        bg = load_background(plan.background, size)
        # A follow-up is the same radiograph taken again (position, breath, exposure; noise comes later).
        background = reacquire_background(bg, rng) if plan.follow_up else bg
    else:
        base = sample_anatomy(np.random.default_rng([seed, 0, plan.patient]))
        base = vary_anatomy(base, rng) if plan.follow_up else base
    return sample_spec(rng, plan.labels, plan.strength, anatomy=base, background=background)


def reacquire_params(params: Sequence[float], rng: np.random.Generator) -> tuple[float, float, float, float, float]:
    """The undo parameters of the same chest scanned again: ``params`` plus a small pose change
    (:data:`REACQUISITION`)."""
    r = REACQUISITION
    tx, ty, sx, sy, theta = (float(v) for v in params)
    dx, dy = rng.uniform(-r["shift"], r["shift"], size=2)
    kx, ky = rng.uniform(*r["scale"], size=2)
    dt = math.radians(rng.uniform(-r["rot_deg"], r["rot_deg"]))
    return float(tx + dx), float(ty + dy), float(sx * kx), float(sy * ky), float(theta + dt)


def reacquisition_matrix(pose: Sequence[float], inspiration: float) -> Array:
    """(2, 3) map from the new film's normalized points to the old film's: a breath stretches the chest
    vertically about the apices (``1 + inspiration``), then the pose ``(tx, ty, sx, sy, theta)`` moves it."""
    J = np.vstack([params_to_matrix_np(pose), [0.0, 0.0, 1.0]])
    s = 1.0 + float(inspiration)
    breath = np.array([[1.0, 0.0, 0.0], [0.0, s, APEX_Y * (1.0 - s)], [0.0, 0.0, 1.0]])
    return (J @ breath)[:2]


def reacquire_background(bg: Array, rng: np.random.Generator) -> Array:
    """A real radiograph as if taken again: another position (a small shift, scale and rotation), another
    depth of inspiration and another exposure (the film's densities re-toned with a changed exposure).
    (S, S) float32 in [0, 1]; the detector noise is added later, with the image's own draw."""
    r = REACQUISITION
    pose = reacquire_params(IDENTITY, rng)
    inspiration = rng.uniform(-r["inspiration"], r["inspiration"])
    factor = rng.uniform(*r["exposure"])
    M = reacquisition_matrix(pose, inspiration)
    c = pixel_centres(bg.shape[0])
    qx, qy = np.meshgrid(c, c)
    moved = bilinear_sample(bg, M[0, 0] * qx + M[0, 1] * qy + M[0, 2], M[1, 0] * qx + M[1, 1] * qy + M[1, 2])
    k0 = template_anatomy().exposure
    return np.clip(tone(inverse_tone(moved, k0), k0 * factor), 0.0, 1.0).astype(np.float32)


def twin_spec(spec: ImageSpec, plan: ImagePlan, seed: int) -> ImageSpec:
    """The oracle's twin of a planned image: the same patient without any finding, under an independent
    acquisition (its own small pose change on top of the image's deformation, breath and exposure, its own
    noise draw), from a generator seeded with (seed, image index)."""
    rng = np.random.default_rng([seed, 17, plan.index])
    anatomy, background = spec.anatomy, spec.background
    if background is not None:
        background = reacquire_background(background, rng)
    else:
        anatomy = vary_anatomy(anatomy, rng)
    params = reacquire_params(spec.params, rng)
    noise_seed = int(rng.integers(0, 2**31 - 1))
    if noise_seed == spec.noise_seed:  # never the image's own noise
        noise_seed = (noise_seed + 1) % (2**31 - 1)
    return ImageSpec(anatomy, (), params, noise_seed, background, spec.strength)


def _render_task(task: tuple[ImagePlan, int, int, str, str | None]) -> dict:
    """Worker: draw one planned image, write its PNG atomically (and its finding-free twin), return its truth."""
    plan, size, seed, img_dir, twin_dir = task
    spec = build_spec(plan, size, seed)
    r = render_spec(spec, size, noise=True, undeformed=False)
    image_png = _png_bytes(r.deformed)
    with atomic_path(Path(img_dir) / plan.name) as tmp:
        tmp.write_bytes(image_png)
    if twin_dir is not None:
        twin = _png_bytes(render_spec(twin_spec(spec, plan, seed), size, noise=True, undeformed=False).deformed)
        if twin == image_png:  # cannot happen with an independent acquisition; never write one
            raise RuntimeError(f"the twin of {plan.name} is the image itself")
        with atomic_path(Path(twin_dir) / plan.name) as tmp:
            tmp.write_bytes(twin)
    return {"index": plan.index, "boxes": [tuple(b) for b in r.boxes], "params": r.params}


def _fmt(v: float) -> str:
    return repr(float(v))


def _write_csvs(
    out: Path, plans: Sequence[ImagePlan], results: dict[int, dict], size: int, train: list[str], test: list[str]
) -> None:
    spacing = f"{FIELD_OF_VIEW_MM / size:.6g}"
    entry = [DATA_ENTRY_HEADER]
    bbox = [BBOX_HEADER]
    truth = io.StringIO()
    tw = csv.writer(truth, lineterminator="\n")
    tw.writerow(TRUTH_COLUMNS)
    for p in plans:
        res = results[p.index]
        gender = "F" if p.female else "M"
        labels = "|".join(p.labels) if p.labels else NO_FINDING
        entry.append(
            f"{p.name},{labels},{p.follow_up},{p.patient},{p.age},{gender},{p.view},{size},{size},{spacing},{spacing},"
        )
        params = res["params"]
        head = [
            p.name,
            f"{p.patient:08d}",
            p.follow_up,
            int(p.strength != "none"),
            p.strength,
            *(_fmt(v) for v in params),
            labels,
            int(p.annotated),
            Path(p.background).name if p.background else "",
        ]
        if not res["boxes"]:
            tw.writerow(head + ["", "", "", "", "", ""])
        for lab, x, y, w, h in res["boxes"]:
            tw.writerow(head + [lab, _fmt(x), _fmt(y), _fmt(w), _fmt(h), int(p.annotated)])
            if p.annotated:
                bbox.append(f"{p.name},{BBOX_SPELLING.get(lab, lab)},{_fmt(x)},{_fmt(y)},{_fmt(w)},{_fmt(h)}")
    atomic_write_text(out / "Data_Entry_2017.csv", "\n".join(entry) + "\n")
    atomic_write_text(out / "BBox_List_2017.csv", "\n".join(bbox) + "\n")
    atomic_write_text(out / "synth_truth.csv", truth.getvalue())
    atomic_write_text(out / "train_val_list.txt", "".join(n + "\n" for n in train))
    atomic_write_text(out / "test_list.txt", "".join(n + "\n" for n in test))


def _plan_prior_counts(plans: Sequence[ImagePlan]) -> dict:
    """``cianet.data.priors.prior_counts`` of the planned images (boxes: the annotated ones), and the share of
    patients with a finding whose findings have an earlier No Finding study."""
    records = [
        ImageRecord(
            p.name,
            f"{p.patient:08d}",
            p.labels,
            follow_up=p.follow_up,
            boxes=[Box(p.labels[0], 0, 0, 1, 1)] if p.annotated else [],
        )
        for p in plans
    ]
    out: dict = dict(prior_counts(records))
    priors = prior_studies(records)
    finding = {r.patient_id for r in records if r.labels}
    having = {r.patient_id for r in records if r.labels and priors[r.name] is not None}
    out["patients_with_finding"] = len(finding)
    out["patients_with_prior"] = len(having)
    return out


def _check_share(name: str, v: float) -> float:
    v = float(v)
    if not 0.0 <= v <= 1.0:
        raise UsageError(f"{name} must be in [0, 1], got {v}")
    return v


def _previous_synth_names(out: Path, planned: set[str]) -> set[str]:
    """The image names a previous ``synth`` wrote into ``out`` (from its synth_truth.csv).

    Raises InputError when writing the new plan would overwrite a file that no synth wrote: a metadata CSV
    in a folder without synth_truth.csv, or an image (or twin) of the plan that the previous synth did not write.
    """

    truth = out / "synth_truth.csv"
    previous: set[str] = set()
    if truth.is_file():
        with open(truth, newline="", encoding="utf-8") as fh:
            previous = {row.get("Image Index", "") for row in csv.DictReader(fh)}
    else:
        ours = [
            n
            for n in ("Data_Entry_2017.csv", "BBox_List_2017.csv", "train_val_list.txt", "test_list.txt")
            if (out / n).exists()
        ]
        if ours:
            raise InputError(
                f"{out}: holds {', '.join(ours)} not written by cianet synth (no synth_truth.csv); "
                "--overwrite replaces only a previous synth's output: choose another folder"
            )
    for sub in ("images", TWINS_DIR):
        clash = sorted(n for n in planned - previous if (out / sub / n).exists())
        if clash:
            raise InputError(
                f"{out / sub}: {clash[0]}{f' and {len(clash) - 1} more' if len(clash) > 1 else ''} "
                "not written by cianet synth would be overwritten; choose another folder"
            )
    return previous


def _check_arguments(
    out: Path,
    n_images: int,
    size: int,
    seed: int,
    images_per_patient: Sequence[int],
    shares: dict[str, float | None],
    extra_negatives: int,
    overwrite: bool,
) -> tuple[int, int]:
    """UsageError for an argument :func:`generate_dataset` cannot work with, before anything is written;
    returns ``images_per_patient`` as ``(lo, hi)``."""
    if int(n_images) < 1:
        raise UsageError(f"n_images must be >= 1, got {n_images}")
    if not 16 <= int(size) <= MAX_SIZE:  # above MAX_SIZE a phantom needs tens of GB of memory
        raise UsageError(f"size must be between 16 and {MAX_SIZE} pixels, got {size}")
    if int(seed) < 0:
        raise UsageError(f"seed must be >= 0, got {seed}")
    lo, hi = (int(v) for v in images_per_patient)
    if not 1 <= lo <= hi:
        raise UsageError(f"images_per_patient must be (lo, hi) with 1 <= lo <= hi, got {images_per_patient}")
    for name, v in shares.items():
        if name != "prior_share" or v is not None:  # prior_share None keeps the labels as drawn
            _check_share(name, v)
    if int(extra_negatives) < 0:
        raise UsageError(f"extra_negatives must be >= 0, got {extra_negatives}")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"{out}: folder is not empty (pass overwrite=True / --overwrite to write into it)")
    return lo, hi


def _plan_images(
    n_images: int,
    seed: int,
    images_per_patient: tuple[int, int],
    bg_paths: list[str] | None,
    n_extra: int,
    shares: dict[str, float | None],
) -> tuple[list[ImagePlan], list[ImagePlan]]:
    """The data set's plan and its extra negatives' (new patients after the plan's, from their own generator).
    With ``bg_paths`` every patient, extra ones included, takes a radiograph of its own (UsageError when too
    few)."""
    plans = plan_dataset(n_images, seed, images_per_patient=images_per_patient, backgrounds=bg_paths, **shares)
    n_patients = plans[-1].patient
    left = None
    if bg_paths:
        check_backgrounds(len(bg_paths), n_patients, images_per_patient, n_extra)
        used = {p.background for p in plans}
        left = [b for b in bg_paths if b not in used]
    extras = plan_extra_negatives(
        n_extra, n_patients + 1, n_images, seed, shares["deform_share"], shares["strong_share"], left
    )
    return plans, extras


def _prepare_folders(out: Path, names: set[str], overwrite: bool, twins: bool) -> tuple[set[str], Path | None]:
    """Make ``images/`` (and ``twins/``). With ``overwrite``, the images and twins a previous synth wrote that
    the new plan lacks are removed (:func:`_previous_synth_names` refuses to touch anything else). Returns the
    previous synth's image names and the twins folder (None without ``twins``)."""
    img_dir = out / "images"
    previous = _previous_synth_names(out, names) if overwrite else set()
    img_dir.mkdir(parents=True, exist_ok=True)
    for stale in sorted(previous - names):  # only images a previous synth wrote; nothing else is deleted
        (img_dir / stale).unlink(missing_ok=True)
    for stale in sorted(previous if not twins else previous - names):  # no twin of another data set stays
        (out / TWINS_DIR / stale).unlink(missing_ok=True)
    twin_dir = out / TWINS_DIR if twins else None
    if twin_dir is not None:
        twin_dir.mkdir(exist_ok=True)
    return previous, twin_dir


#: pixels to draw (images and twins) up to which :func:`_render_all` stays in this process whatever the
#: workers: about a second of drawing (128 images of 128 px), what starting a spawn pool costs (each worker
#: imports the caller's __main__: seconds where that imports torch). The bytes are the same either way.
IN_PROCESS_PIXELS = 2**21


def _render_all(
    plans: Sequence[ImagePlan],
    size: int,
    seed: int,
    img_dir: Path,
    twin_dir: Path | None,
    workers: int | None,
    progress: bool,
    force_progress: bool,
) -> dict[int, dict]:
    """Draw and write every planned image (:func:`_render_task`) in ``workers`` processes (default: all CPUs;
    one for a small job, see :data:`IN_PROCESS_PIXELS`; the bytes do not depend on it). Returns each image's
    truth by image index."""
    tasks = [(p, size, seed, str(img_dir), str(twin_dir) if twin_dir else None) for p in plans]
    workers = max(1, int(workers if workers is not None else (os.cpu_count() or 1)))
    workers = min(workers, len(tasks))
    if len(tasks) * (2 if twin_dir else 1) * size * size <= IN_PROCESS_PIXELS:
        workers = 1
    results: dict[int, dict] = {}
    bar = tqdm(
        total=len(tasks),
        desc="synth",
        unit="img",  # a terminal or CIANET_PROGRESS, or force_progress
        disable=not progress or not (force_progress or progress_enabled()),
    )
    try:
        if workers == 1:
            for t in tasks:
                r = _render_task(t)
                results[r["index"]] = r
                bar.update(1)
        else:
            # spawn: safe even when the caller has started threads (torch, tqdm); startup is cheap here.
            ctx = multiprocessing.get_context("spawn")
            chunk = max(1, min(32, len(tasks) // (workers * 8)))
            with ctx.Pool(workers) as pool:
                for r in pool.imap_unordered(_render_task, tasks, chunksize=chunk):
                    results[r["index"]] = r
                    bar.update(1)
    finally:
        bar.close()
    return results


def _write_tables(
    out: Path,
    plans: list[ImagePlan],
    extras: list[ImagePlan],
    results: dict[int, dict],
    size: int,
    seed: int,
    previous: set[str],
) -> tuple[list[str], list[str]]:
    """The CSVs and name lists of the NIH layout; returns the official (train_val, test) lists, which hold
    neither extra negative: those are named in :data:`POOL_ONLY_FILE` only."""
    train, test = split_patients(plans, seed)
    _write_csvs(out, plans + extras, results, size, train, test)
    if extras:
        atomic_write_text(out / POOL_ONLY_FILE, "".join(p.name + "\n" for p in extras))
    elif previous:  # a previous synth's list would name images of another plan
        (out / POOL_ONLY_FILE).unlink(missing_ok=True)
    return train, test


def _plan_counts(plans: Sequence[ImagePlan], results: dict[int, dict]) -> dict:
    """The summary's counts of the planned images and their drawn boxes."""
    return {
        "no_finding": sum(not p.labels for p in plans),
        "annotated_images": sum(p.annotated for p in plans),
        "boxes": sum(len(results[p.index]["boxes"]) for p in plans),
        "boxes_in_bbox_list": sum(len(results[p.index]["boxes"]) for p in plans if p.annotated),
        "deformed": sum(p.strength != "none" for p in plans),
        "strong": sum(p.strength == "strong" for p in plans),
    }


def _meta_args(
    n_images: int,
    size: int,
    seed: int,
    shares: dict[str, float | None],
    images_per_patient: tuple[int, int],
    backgrounds: str | os.PathLike | None,
    twins: bool,
    extra_negatives: int,
) -> dict:
    """The arguments of a synth as ``synth_meta.json`` records them (in this key order)."""
    return {
        "n_images": n_images,
        "size": size,
        "seed": seed,
        "deform_share": shares["deform_share"],
        "strong_share": shares["strong_share"],
        "annotated_share": shares["annotated_share"],
        "no_finding_share": shares["no_finding_share"],
        "images_per_patient": list(images_per_patient),
        "backgrounds": str(backgrounds) if backgrounds is not None else None,
        "twins": bool(twins),
        "extra_negatives": extra_negatives,
        "prior_share": shares["prior_share"],
    }


def generate_dataset(
    out_dir: str | os.PathLike,
    n_images: int = 2000,
    size: int = 256,
    seed: int = 0,
    deform_share: float = 0.5,
    strong_share: float = 0.3,
    annotated_share: float = 0.3,
    backgrounds: str | os.PathLike | None = None,
    images_per_patient: tuple[int, int] = (1, 4),
    progress: bool = True,
    workers: int | None = None,
    no_finding_share: float = 0.5,
    overwrite: bool = False,
    force_progress: bool = False,
    twins: bool = False,
    extra_negatives: int = 0,
    prior_share: float | None = None,
) -> dict:
    """Write a synthetic NIH-layout data set (see the module docstring) and return its summary.

    ``deform_share`` of the images are deformed, ``strong_share`` of those strongly; ``annotated_share`` of
    the positive images with box-class findings have their boxes in BBox_List_2017.csv. ``backgrounds``: a
    folder of real No Finding X-rays drawn instead of the anatomy. ``workers``: processes (default: all
    CPUs; the output does not depend on it). ``progress``: a tqdm bar on a terminal (``force_progress``:
    also elsewhere). ``overwrite``: allow a non-empty ``out_dir`` holding
    an earlier synth's output (its images that the new plan lacks are removed; files it did not write are never
    deleted or overwritten: InputError). ``twins``: also write for every image, No Finding included, its
    finding-free twin as ``out_dir/twins/NAME.png`` (:func:`twin_spec`: the same patient under an independent
    acquisition), the oracle negatives of ``negatives.strategy=oracle``. ``extra_negatives``: that many No
    Finding images of new patients, listed in ``pool_only.txt`` (:func:`plan_extra_negatives`; the other images
    do not change). ``prior_share``: :func:`arrange_priors` (None: labels as drawn). With ``backgrounds`` every
    patient, extra ones included, takes a radiograph of its own (UsageError when the folder has too few).
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    # the keywords of plan_dataset, checked in this order
    shares = {
        "deform_share": deform_share,
        "strong_share": strong_share,
        "annotated_share": annotated_share,
        "no_finding_share": no_finding_share,
        "prior_share": prior_share,
    }
    lo, hi = _check_arguments(out, n_images, size, seed, images_per_patient, shares, extra_negatives, overwrite)
    n_images, size, seed, extra_negatives = int(n_images), int(size), int(seed), int(extra_negatives)
    shares["prior_share"] = prior_share = None if prior_share is None else float(prior_share)
    bg_paths = [str(p) for p in find_backgrounds(backgrounds)] if backgrounds is not None else None

    plans, extras = _plan_images(n_images, seed, (lo, hi), bg_paths, extra_negatives, shares)
    previous, twin_dir = _prepare_folders(out, {p.name for p in plans + extras}, overwrite, twins)
    results = _render_all(plans + extras, size, seed, out / "images", twin_dir, workers, progress, force_progress)
    train, test = _write_tables(out, plans, extras, results, size, seed, previous)

    # the counts describe the data set proper; the extras are counted apart
    summary = {
        "out_dir": str(out),
        "images": n_images,
        "patients": plans[-1].patient,
        "size": size,
        "seed": seed,
        **_plan_counts(plans, results),
        "train_val": len(train),
        "test": len(test),
        "backgrounds": len(bg_paths) if bg_paths else 0,
        "twins": n_images + extra_negatives if twins else 0,
        "extra_negatives": extra_negatives,
        "priors": _plan_prior_counts(plans),
        "per_label": {lab: sum(lab in p.labels for p in plans) for lab in LABELS},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    args = _meta_args(n_images, size, seed, shares, (lo, hi), backgrounds, twins, extra_negatives)
    meta = {"args": args, "summary": {k: v for k, v in summary.items() if k not in ("seconds", "out_dir")}}
    atomic_write_json(out / "synth_meta.json", meta)
    return summary
