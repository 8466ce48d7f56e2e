"""The 14 findings of the synthetic phantom (see :mod:`cianet.phantom.generator`).

A :class:`Finding` is a label plus its geometry in the patient frame. :func:`finding_effect` evaluates it at
patient-frame points and returns what it does to the density image: an additive density, a factor on the vessel
markings, and its *footprint* (the pixels it changes). The footprint is exact (shapes have compact support), so
the box of a lesion is the bounding box of its footprint in the written image.

Box classes (``BOX_LABELS``) are local lesions; the other six are image-level patterns.
Cardiomegaly and Emphysema (and the volume loss of Fibrosis) change the anatomy itself
(:func:`apply_anatomy_findings`) when the anatomy is drawn; on a real background they are drawn as overlays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from cianet.labels import BOX_LABELS, LABELS
from cianet.phantom.anatomy import HEART_EDGE, Anatomy, heart_sdf, lung_sdf, ramp

Array = np.ndarray

#: Footprint threshold: density changes below this are zeroed, so a footprint is where a finding is visible.
FOOTPRINT_EPS = 2e-3


@dataclass(frozen=True)
class Finding:
    """One finding: a label from LABELS and its patient-frame parameters."""

    label: str
    params: dict = field(default_factory=dict)

    @property
    def has_box(self) -> bool:
        return self.label in BOX_LABELS


@dataclass
class FindingContext:
    """Where and on what a finding is drawn.

    X, Y: patient-frame coordinates of the written pixels, (S, S) float32. pix: written pixel size (2 / S).
    lungs: soft lung mask (S, S) of the anatomy (drawn or template). background: for a real background image,
    its density (S, S) and a heavily smoothed copy (S, S) (used to erase lung markings); None otherwise.
    """

    X: Array
    Y: Array
    anat: Anatomy
    pix: float
    lungs: Array
    background: tuple[Array, Array] | None = None


@dataclass
class Effect:
    """add: density to add (S, S) or None; markings_scale: factor on the markings (S, S) or None;
    footprint: bool (S, S), the pixels the finding changes."""

    add: Array | None
    markings_scale: Array | None
    footprint: Array


# ------------------------------------------------------------------------------------------------ helpers


def smooth_noise(X: Array, Y: Array, seed: int, scale: float, n: int = 10, where: Array | None = None) -> Array:
    """A smooth random field (about N(0, 1)) of correlation length ~``scale``: a sum of random plane waves.

    Analytic in (X, Y), so it is the same texture however the frame is deformed. With a bool ``where`` mask
    it is only evaluated there (0 elsewhere), which is much cheaper for small lesions.
    """
    rng = np.random.default_rng(seed)
    if where is not None:
        idx = np.flatnonzero(where.ravel())
        xs, ys = X.ravel()[idx], Y.ravel()[idx]
    else:
        xs, ys = X, Y
    acc = np.zeros_like(xs)
    for _ in range(n):
        ang = rng.uniform(0, np.pi)
        freq = rng.uniform(0.5, 1.5) * np.pi / scale
        ph = rng.uniform(0, 2 * np.pi)
        acc += np.cos(xs * (freq * np.cos(ang)) + ys * (freq * np.sin(ang)) + ph)
    acc *= np.sqrt(2.0 / n)
    if where is None:
        return acc.astype(X.dtype)
    out = np.zeros(X.size, dtype=X.dtype)
    out[idx] = acc
    return out.reshape(X.shape)


def _rot(X: Array, Y: Array, cx: float, cy: float, ang: float) -> tuple[Array, Array]:
    """Coordinates relative to (cx, cy), rotated by -ang (the shape's own axes)."""
    dx, dy = X - cx, Y - cy
    c, s = np.cos(ang), np.sin(ang)
    return c * dx + s * dy, -s * dx + c * dy


def _bronchograms(X: Array, Y: Array, anat: Anatomy, side: int, seed: int) -> Array:
    """Air bronchograms: thin dark branching lines radiating from the hilum, in [0, 1]."""
    hx, hy = anat.hilum(side)
    dx, dy = X - hx, Y - hy
    phi = np.arctan2(dy, dx * side)
    r = np.hypot(dx, dy)
    ph = (seed % 997) * 0.37
    lines = (0.5 + 0.5 * np.cos(15.0 * phi + 2.0 * np.sin(5 * r + ph) + ph)) ** 24
    return lines * np.clip((r - 0.08) / 0.1, 0.0, 1.0)


def _finish(add: Array, markings_scale: Array | None = None) -> Effect:
    foot = np.abs(add) > FOOTPRINT_EPS
    if markings_scale is not None:
        foot |= markings_scale < 1.0 - 1e-3
        markings_scale = np.where(foot, markings_scale, 1.0).astype(np.float32)
    add = np.where(foot, add, 0.0).astype(np.float32)
    return Effect(add=add, markings_scale=markings_scale, footprint=foot)


# ------------------------------------------------------------------------------------------- box classes


def _nodule(p: dict, c: FindingContext) -> Effect:
    rho = np.hypot(c.X - p["cx"], c.Y - p["cy"]) / p["r"]
    # Projected thickness of a sphere, with a slightly blurred rim.
    prof = np.sqrt(np.clip(1.0 - rho * rho, 0.0, 1.0)) ** 0.8
    return _finish(p["amp"] * prof)


def _mass(p: dict, c: FindingContext) -> Effect:
    dx, dy = c.X - p["cx"], c.Y - p["cy"]
    th = np.arctan2(dy, dx)
    k = p["lobes"]
    radius = p["r"] * (1.0 + p["lob"] * np.sin(k * th + p["ph"]) + 0.5 * p["lob"] * np.sin((k + 2) * th + 2 * p["ph"]))
    rho = np.hypot(dx, dy) / radius
    prof = np.clip(1.0 - rho * rho, 0.0, 1.0) ** 0.35
    tex = 0.9 + 0.1 * smooth_noise(c.X, c.Y, int(p["seed"]), 0.06, where=prof > 0)
    return _finish(p["amp"] * prof * tex)


def _effusion(p: dict, c: FindingContext) -> Effect:
    side = int(p["side"])
    cx, _ = c.anat.lung_centre(side)
    a = c.anat.lung_half_width(side)
    lat = np.clip(side * (c.X - cx) / a + 0.3, 0.0, 1.3)
    meniscus = p["level"] - p["rise"] * lat * lat  # fluid climbs the lateral chest wall
    depth = c.Y - meniscus
    inside = ramp(lung_sdf(c.X, c.Y, c.anat, side, dome=False), 2.5 * c.pix)
    # Hazy upper margin, denser towards the base.
    prof = np.clip(depth / 0.05, 0.0, 1.0) ** 0.8 * (0.75 + 0.25 * np.clip(depth / 0.2, 0.0, 1.0))
    return _finish(p["amp"] * prof * inside)


def _pneumothorax(p: dict, c: FindingContext) -> Effect:
    side = int(p["side"])
    anat = c.anat
    cx, cy = anat.lung_centre(side)
    a = anat.lung_half_width(side)
    f = lung_sdf(c.X, c.Y, anat, side)
    apex = cy - anat.lung_b
    bottom = apex + p["extent"] * 2 * anat.lung_b
    # The air rim is widest at the apex and tapers to nothing at `bottom`.
    d = p["depth"] * np.sqrt(np.clip((bottom - c.Y) / (bottom - apex), 0.0, 1.0))
    lateral = ramp(-(side * (c.X - cx) / a + 0.55), 0.3)
    rim = ramp(f, 2.0 * c.pix) * ramp(-(f + d), 1.5 * c.pix) * lateral
    line = ramp(np.abs(f + d) - 0.45 * c.pix, 1.2 * c.pix) * (d > 1.5 * c.pix) * ramp(f, 2.0 * c.pix) * lateral
    add = -p["lucency"] * rim + p["line"] * line
    if c.background is not None:  # flatten the real lung texture inside the rim
        dens, smooth = c.background
        add = add + rim * (smooth - dens)
    return _finish(add, markings_scale=1.0 - rim)


def _cardiomegaly(p: dict, c: FindingContext) -> Effect:
    f = heart_sdf(c.X, c.Y, c.anat, scale=p["scale"])
    heart = ramp(f, HEART_EDGE * c.pix)
    if c.background is None:
        # Drawn into the anatomy (apply_anatomy_findings); the footprint is the enlarged silhouette.
        return Effect(add=None, markings_scale=None, footprint=heart > 0)
    return _finish(p["amp"] * heart * (0.8 + 0.2 * np.clip(-f / 0.1, 0.0, 1.0)))


def _atelectasis(p: dict, c: FindingContext) -> Effect:
    side = int(p["side"])
    inside = ramp(lung_sdf(c.X, c.Y, c.anat, side), 2.0 * c.pix)
    if p["kind"] == 0:  # plate-like band
        u, v = _rot(c.X, c.Y, p["cx"], p["cy"], p["ang"])
        du = np.maximum(np.abs(u) - p["length"] / 2, 0.0)
        f = np.hypot(du, v) - p["thick"] / 2
        dens = ramp(f, 1.5 * c.pix)
    else:  # wedge (collapsed segment), apex towards the hilum, concave borders
        u, v = _rot(c.X, c.Y, p["cx"], p["cy"], p["ang"])
        r = np.hypot(u, v)
        ang = np.abs(np.arctan2(v, u))
        half = p["half"] * (0.55 + 0.45 * np.clip(r / p["length"], 0.0, 1.0) ** 2)
        f = np.maximum((ang - half) * np.maximum(r, 1e-3), np.maximum(r - p["length"], -u))
        dens = ramp(f, 1.5 * c.pix)
    return _finish(p["amp"] * dens * inside)


def _infiltration(p: dict, c: FindingContext) -> Effect:
    side = int(p["side"])
    inside = ramp(lung_sdf(c.X, c.Y, c.anat, side), 3.0 * c.pix)
    dens = np.zeros_like(c.X)
    for bx, by, br in p["blobs"]:
        q = np.clip(1.0 - ((c.X - bx) ** 2 + (c.Y - by) ** 2) / (br * br), 0.0, 1.0)
        dens = np.maximum(dens, q * np.sqrt(q))
    # Ill-defined, patchy: a cloudy texture modulates the density.
    mottle = np.clip(0.6 + 0.4 * smooth_noise(c.X, c.Y, int(p["seed"]), 0.05, where=dens > 0), 0.2, 1.0)
    return _finish(p["amp"] * dens * mottle * inside)


def _pneumonia(p: dict, c: FindingContext) -> Effect:
    side = int(p["side"])
    inside = ramp(lung_sdf(c.X, c.Y, c.anat, side), 2.5 * c.pix)
    u, v = _rot(c.X, c.Y, p["cx"], p["cy"], 0.0)
    rho2 = (u / p["rx"]) ** 2 + (v / p["ry"]) ** 2
    # The fissure gives a sharp straight border on one side (upper lobe: below it; lower lobe: above it).
    fiss = (c.Y - (p["fy"] + p["fslope"] * (c.X - p["cx"]))) * p["fsign"]
    dens = np.clip(1.0 - rho2, 0.0, 1.0) ** 0.5 * ramp(fiss, 1.5 * c.pix)
    mottle = np.clip(0.8 + 0.2 * smooth_noise(c.X, c.Y, int(p["seed"]), 0.07, where=dens > 0), 0.4, 1.0)
    bronch = _bronchograms(c.X, c.Y, c.anat, side, int(p["seed"]))
    return _finish(p["amp"] * dens * mottle * (1.0 - 0.35 * bronch) * inside)


# --------------------------------------------------------------------------------------- image-level ones


def _consolidation(p: dict, c: FindingContext) -> Effect:
    side = int(p["side"])
    # Basal airspace opacity that effaces the diaphragm (the lung without its dome cut).
    inside = ramp(lung_sdf(c.X, c.Y, c.anat, side, dome=False), 3.0 * c.pix)
    rho2 = ((c.X - p["cx"]) / p["rx"]) ** 2 + ((c.Y - p["cy"]) / p["ry"]) ** 2
    dens = np.clip(1.2 * (1.0 - rho2), 0.0, 1.0) ** 0.7
    bronch = _bronchograms(c.X, c.Y, c.anat, side, int(p["seed"]))
    return _finish(p["amp"] * dens * (1.0 - 0.5 * bronch) * inside)


def _edema(p: dict, c: FindingContext) -> Effect:
    add = np.zeros_like(c.X)
    for side in (-1, 1):
        hx, hy = c.anat.hilum(side)
        # Bat-wing perihilar haze.
        haze = np.exp(-((c.X - hx) ** 2) / (2 * 0.2**2) - ((c.Y - hy) ** 2) / (2 * 0.26**2))
        # Kerley B lines: short horizontal lines at the lateral bases.
        f = lung_sdf(c.X, c.Y, c.anat, side)
        _, cy = c.anat.lung_centre(side)
        lines = ramp(np.abs(((c.Y - p["kph"]) / 0.032) % 1.0 - 0.5) - 0.1, 0.1)
        rim = ramp(-(f + 0.06), 0.02) * ramp(f, 0.02)  # within ~0.06 of the pleura
        kerley = lines * rim * np.clip((c.Y - cy - 0.1) / 0.1, 0.0, 1.0)
        add = add + p["amp"] * haze + 0.25 * kerley
    return _finish(add * c.lungs)


def _emphysema(p: dict, c: FindingContext) -> Effect:
    if c.background is None:  # drawn into the anatomy (hyperlucent, hyperinflated lungs, flat domes)
        return Effect(add=None, markings_scale=None, footprint=np.zeros(c.X.shape, bool))
    return _finish(-p["lucency"] * c.lungs)


def _fibrosis(p: dict, c: FindingContext) -> Effect:
    warp = 0.015 * smooth_noise(c.X, c.Y, int(p["seed"]), 0.15, where=c.lungs > 0)
    ang = p["ang"]
    s1 = np.sin(2 * np.pi / 0.045 * (c.X * np.cos(ang) + c.Y * np.sin(ang) + warp))
    s2 = np.sin(2 * np.pi / 0.05 * (-c.X * np.sin(ang) + c.Y * np.cos(ang) - warp))
    net = np.maximum(np.clip(1.0 - np.abs(s1) / 0.3, 0.0, 1.0), np.clip(1.0 - np.abs(s2) / 0.3, 0.0, 1.0))
    _, cy = c.anat.lung_centre(-1)
    zone = np.clip((c.Y - cy + 0.15) / 0.4, 0.0, 1.0)  # lower zones predominate
    return _finish(p["amp"] * net * zone * c.lungs)


def _pleural_thickening(p: dict, c: FindingContext) -> Effect:
    add = np.zeros_like(c.X)
    for side in p["sides"]:
        f = lung_sdf(c.X, c.Y, c.anat, side)
        cx, cy = c.anat.lung_centre(side)
        a = c.anat.lung_half_width(side)
        band = ramp(f, 1.5 * c.pix) * ramp(-f - p["thick"], 1.5 * c.pix)
        if p["zone"] == 0:  # apical cap
            where = np.clip((cy - c.anat.lung_b + 0.3 - c.Y) / 0.1, 0.0, 1.0)
        else:  # lateral chest wall
            where = np.clip((side * (c.X - cx) / a - 0.3) / 0.2, 0.0, 1.0) * np.clip((c.Y - cy + 0.3) / 0.1, 0.0, 1.0)
        add = add + p["amp"] * band * where
    return _finish(add)


def _hernia(p: dict, c: FindingContext) -> Effect:
    rho = np.hypot(c.X - p["cx"], c.Y - p["cy"]) / p["r"]
    sac = ramp(rho - 1.0, 0.08)
    fluid = ramp(p["level"] - c.Y, 1.5 * c.pix)  # air-fluid level
    wall = ramp(np.abs(rho - 1.0) - 0.04, 0.05)
    add = sac * (0.25 * fluid - 0.45 * (1.0 - fluid)) + 0.2 * wall
    return _finish(add)


_EFFECTS: dict[str, Callable[[dict, FindingContext], Effect]] = {
    "Atelectasis": _atelectasis,
    "Cardiomegaly": _cardiomegaly,
    "Effusion": _effusion,
    "Infiltration": _infiltration,
    "Mass": _mass,
    "Nodule": _nodule,
    "Pneumonia": _pneumonia,
    "Pneumothorax": _pneumothorax,
    "Consolidation": _consolidation,
    "Edema": _edema,
    "Emphysema": _emphysema,
    "Fibrosis": _fibrosis,
    "Pleural_Thickening": _pleural_thickening,
    "Hernia": _hernia,
}


def finding_effect(finding: Finding, ctx: FindingContext) -> Effect:
    """Evaluate one finding on the context's grid."""
    return _EFFECTS[finding.label](finding.params, ctx)


def apply_anatomy_findings(anat: Anatomy, findings: tuple[Finding, ...] | list[Finding], drawn: bool = True) -> Anatomy:
    """The anatomy as changed by the findings that alter it (only where the anatomy is drawn, ``drawn=True``)."""
    if not drawn:
        return anat
    for f in findings:
        if f.label == "Cardiomegaly":
            anat = dataclasses.replace(anat, heart_scale=f.params["scale"])
        elif f.label == "Emphysema":
            anat = dataclasses.replace(
                anat,
                lung_air=anat.lung_air * f.params["air"],
                markings_amp=anat.markings_amp * 0.45,
                dome_y_r=anat.dome_y_r + f.params["flatten"],
                dome_y_l=anat.dome_y_l + f.params["flatten"],
                dome_h=anat.dome_h * 0.4,
                lung_b=anat.lung_b + 0.5 * f.params["flatten"],
            )
        elif f.label == "Fibrosis":
            anat = dataclasses.replace(
                anat, lung_b=anat.lung_b * 0.96, dome_y_r=anat.dome_y_r - 0.03, dome_y_l=anat.dome_y_l - 0.03
            )
    return anat


# ------------------------------------------------------------------------------------------------ sampling


def sample_lung_point(
    anat: Anatomy,
    rng: np.random.Generator,
    margin: float,
    side: int | None = None,
    y_range: tuple[float, float] = (-1.0, 1.0),
    visible: Callable[[float, float], bool] | None = None,
    tries: int = 200,
) -> tuple[int, float, float]:
    """A random point at least ``margin`` inside a lung field (side drawn at random when None).

    ``visible(x, y)`` may reject points that the deformation pushes out of the written image.
    """
    best = None
    for _ in range(tries):
        s = int(side if side is not None else rng.choice((-1, 1)))
        cx, cy = anat.lung_centre(s)
        a = anat.lung_half_width(s)
        x = rng.uniform(cx - a, cx + a)
        y = rng.uniform(max(cy - anat.lung_b, y_range[0]), min(cy + anat.lung_b, y_range[1]))
        px, py = np.array(x), np.array(y)
        # Inside the lung and clear of the heart (a lesion hidden by the heart would be unfair).
        f = max(float(lung_sdf(px, py, anat, s)), -float(heart_sdf(px, py, anat)))
        if f < -margin:
            if best is None:
                best = (s, x, y)
            if visible is None or visible(x, y):
                return s, x, y
    if best is None:  # margin too large for this lung: use its centre
        s = int(side if side is not None else 1)
        cx, cy = anat.lung_centre(s)
        best = (s, cx, cy)
    return best


#: The test of :func:`sample_lung_point` that rejects points pushed out of the written image (None: none).
Visible = Callable[[float, float], bool] | None
#: A finding's sampler: (anatomy, generator, the finding's own noise seed, a side drawn at random, visible) ->
#: the finding's parameters.
Sampler = Callable[[Anatomy, np.random.Generator, int, int, Visible], dict]


def _sample_nodule(anat: Anatomy, rng: np.random.Generator, seed: int, side: int, visible: Visible) -> dict:
    u = rng.uniform
    r = u(0.035, 0.055)
    s, x, y = sample_lung_point(anat, rng, r + 0.02, visible=visible)
    return dict(cx=x, cy=y, r=r, amp=u(0.5, 0.75))


def _sample_mass(anat: Anatomy, rng: np.random.Generator, seed: int, side: int, visible: Visible) -> dict:
    u = rng.uniform
    r = u(0.08, 0.13)
    s, x, y = sample_lung_point(anat, rng, 0.8 * r, visible=visible)
    return dict(
        cx=x,
        cy=y,
        r=r,
        amp=u(0.5, 0.75),
        lobes=int(rng.integers(3, 6)),
        lob=u(0.05, 0.13),
        ph=u(0, 2 * np.pi),
        seed=seed,
    )


def _sample_effusion(anat: Anatomy, rng: np.random.Generator, seed: int, side: int, visible: Visible) -> dict:
    u = rng.uniform
    top = anat.dome_top(side)
    return dict(side=side, level=top - u(0.1, 0.3), rise=u(0.06, 0.14), amp=u(0.7, 1.0))


def _sample_pneumothorax(anat: Anatomy, rng: np.random.Generator, seed: int, side: int, visible: Visible) -> dict:
    u = rng.uniform
    return dict(side=side, depth=u(0.07, 0.14), extent=u(0.45, 0.8), lucency=u(0.15, 0.25), line=u(0.3, 0.45))


def _sample_cardiomegaly(anat: Anatomy, rng: np.random.Generator, seed: int, side: int, visible: Visible) -> dict:
    return dict(scale=rng.uniform(1.25, 1.45), amp=rng.uniform(0.35, 0.5))


def _sample_atelectasis(anat: Anatomy, rng: np.random.Generator, seed: int, side: int, visible: Visible) -> dict:
    u = rng.uniform
    kind = int(rng.integers(0, 2))
    _, cy = anat.lung_centre(side)
    if kind == 0:
        s, x, y = sample_lung_point(anat, rng, 0.06, side=side, y_range=(cy - 0.1, cy + 0.45), visible=visible)
        return dict(
            side=s,
            kind=0,
            cx=x,
            cy=y,
            length=u(0.15, 0.3),
            thick=u(0.025, 0.045),
            ang=u(-0.35, 0.35),
            amp=u(0.45, 0.65),
        )
    hx, hy = anat.hilum(side)
    # Wedge from the hilum towards the lower lateral lung.
    ang = np.arctan2(u(0.15, 0.45), side * u(0.5, 1.0))
    return dict(
        side=side,
        kind=1,
        cx=hx,
        cy=hy,
        ang=float(ang),
        length=u(0.28, 0.42),
        half=u(0.22, 0.38),
        amp=u(0.4, 0.6),
    )


def _sample_infiltration(anat: Anatomy, rng: np.random.Generator, seed: int, side: int, visible: Visible) -> dict:
    u = rng.uniform
    s, x, y = sample_lung_point(anat, rng, 0.1, visible=visible)
    n = int(rng.integers(3, 7))
    blobs = tuple((x + u(-0.09, 0.09), y + u(-0.11, 0.11), u(0.05, 0.09)) for _ in range(n))
    return dict(side=s, blobs=blobs, amp=u(0.4, 0.6), seed=seed)


def _sample_pneumonia(anat: Anatomy, rng: np.random.Generator, seed: int, side: int, visible: Visible) -> dict:
    u = rng.uniform
    cx, cy = anat.lung_centre(side)
    upper = bool(rng.random() < 0.5)
    fy = cy + u(-0.05, 0.1)  # horizontal / oblique fissure level
    py = fy - u(0.12, 0.2) if upper else fy + u(0.12, 0.22)
    px = cx + side * u(-0.05, 0.1)
    return dict(
        side=side,
        cx=px,
        cy=py,
        rx=u(0.17, 0.24),
        ry=u(0.15, 0.22),
        fy=fy,
        fslope=side * u(0.0, 0.35),
        fsign=1.0 if upper else -1.0,
        amp=u(0.45, 0.65),
        seed=seed,
    )


def _sample_consolidation(anat: Anatomy, rng: np.random.Generator, seed: int, side: int, visible: Visible) -> dict:
    u = rng.uniform
    cx, _ = anat.lung_centre(side)
    return dict(
        side=side,
        cx=cx + side * u(-0.05, 0.1),
        cy=anat.dome_top(side) - u(0.0, 0.1),
        rx=u(0.18, 0.26),
        ry=u(0.14, 0.2),
        amp=u(0.6, 0.85),
        seed=seed,
    )


def _sample_edema(anat: Anatomy, rng: np.random.Generator, seed: int, side: int, visible: Visible) -> dict:
    return dict(amp=rng.uniform(0.25, 0.4), kph=rng.uniform(0.0, 0.03))


def _sample_emphysema(anat: Anatomy, rng: np.random.Generator, seed: int, side: int, visible: Visible) -> dict:
    u = rng.uniform
    return dict(air=u(1.08, 1.15), flatten=u(0.05, 0.1), lucency=u(0.12, 0.2))


def _sample_fibrosis(anat: Anatomy, rng: np.random.Generator, seed: int, side: int, visible: Visible) -> dict:
    return dict(amp=rng.uniform(0.18, 0.28), ang=rng.uniform(0, np.pi), seed=seed)


def _sample_pleural_thickening(anat: Anatomy, rng: np.random.Generator, seed: int, side: int, visible: Visible) -> dict:
    u = rng.uniform
    sides = (-1, 1) if rng.random() < 0.4 else (side,)
    return dict(sides=sides, zone=int(rng.integers(0, 2)), thick=u(0.02, 0.035), amp=u(0.45, 0.65))


def _sample_hernia(anat: Anatomy, rng: np.random.Generator, seed: int, side: int, visible: Visible) -> dict:
    u = rng.uniform
    r = u(0.07, 0.1)
    cy = anat.heart_base_y - r - u(0.0, 0.04)
    return dict(cx=anat.heart_cx + anat.shift_x + u(-0.08, 0.0), cy=cy, r=r, level=cy + u(-0.3, 0.3) * r)


_SAMPLERS: dict[str, Sampler] = {
    "Nodule": _sample_nodule,
    "Mass": _sample_mass,
    "Effusion": _sample_effusion,
    "Pneumothorax": _sample_pneumothorax,
    "Cardiomegaly": _sample_cardiomegaly,
    "Atelectasis": _sample_atelectasis,
    "Infiltration": _sample_infiltration,
    "Pneumonia": _sample_pneumonia,
    "Consolidation": _sample_consolidation,
    "Edema": _sample_edema,
    "Emphysema": _sample_emphysema,
    "Fibrosis": _sample_fibrosis,
    "Pleural_Thickening": _sample_pleural_thickening,
    "Hernia": _sample_hernia,
}


def sample_finding(
    label: str,
    anat: Anatomy,
    rng: np.random.Generator,
    visible: Callable[[float, float], bool] | None = None,
) -> Finding:
    """Draw the geometry of one finding for an anatomy (already changed by the anatomy-level findings)."""
    # drawn for every label, before its own draws: each finding consumes the generator in the same order
    seed = int(rng.integers(0, 2**31 - 1))
    side = int(rng.choice((-1, 1)))
    sampler = _SAMPLERS.get(label)
    if sampler is None:
        raise ValueError(f"unknown finding label {label!r}; expected one of {', '.join(LABELS)}")
    return Finding(label, sampler(anat, rng, seed, side, visible))


def sample_findings(
    labels: tuple[str, ...] | list[str],
    anat: Anatomy,
    rng: np.random.Generator,
    visible: Callable[[float, float], bool] | None = None,
) -> tuple[tuple[Finding, ...], Anatomy]:
    """Findings for an image's labels, and the anatomy they produce.

    Anatomy-level findings are drawn first, so that local lesions are placed in the changed lungs.
    """
    order = sorted(labels, key=lambda lab: (lab not in ("Cardiomegaly", "Emphysema", "Fibrosis"), LABELS.index(lab)))
    out: list[Finding] = []
    for lab in order:
        drawn_anat = apply_anatomy_findings(anat, out, drawn=True)
        out.append(sample_finding(lab, drawn_anat, rng, visible=visible))
    out.sort(key=lambda f: LABELS.index(f.label))
    return tuple(out), apply_anatomy_findings(anat, out, drawn=True)
