"""Procedural chest anatomy for the synthetic phantom (see :mod:`cianet.phantom.generator`).

Everything here is an analytic function of *patient-frame* coordinates: arrays ``X, Y`` (any shape, usually
``(S, S)``) in the normalized convention of docs/architecture.md (``x = -1`` is the left image border,
``y = -1`` the top; y points down). The renderer evaluates these functions at the patient-frame positions of
the written pixels, so a deformed image is drawn directly (no resampling blur) and every lesion mask can be
re-evaluated exactly in the deformed frame.

The image is built in a *density* domain ``D >= 0`` (roughly: attenuation along the ray) and mapped to
brightness with ``B = 1 - exp(-k D)`` (:func:`tone`). Lungs subtract density (air), bones, heart and lesions
add it. ``side = -1`` is the patient's right lung, drawn on the image left; ``side = +1`` the patient's left
lung (image right), the side of the heart.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Array = np.ndarray

#: Width, in written pixels, of the cardiac silhouette's soft edge (the heart moves: its border is blurred).
HEART_EDGE = 4.0


@dataclass(frozen=True)
class Anatomy:
    """Shape and exposure parameters of one chest (normalized patient-frame units)."""

    shift_x: float = 0.0  # patient position in the field
    shift_y: float = 0.0
    body_hw: float = 0.95  # thorax half-width
    body_cy: float = 0.15
    body_hh: float = 1.15
    neck_hw: float = 0.17
    lung_cx: float = 0.42  # |x| of the lung centres
    lung_cy: float = -0.14
    lung_a_r: float = 0.33  # half-width, patient's right lung (image left)
    lung_a_l: float = 0.32  # half-width, patient's left lung (image right)
    lung_b: float = 0.62  # half-height of both lungs
    dome_y_r: float = 0.30  # top of the right hemidiaphragm (it sits higher than the left)
    dome_y_l: float = 0.34
    dome_h: float = 0.2  # depth of the costophrenic angles below the dome tops
    heart_cx: float = 0.13
    heart_cy: float = 0.2
    heart_rx: float = 0.33
    heart_ry: float = 0.22
    heart_tilt: float = -0.5  # radians; the apex points down and to the image right
    heart_scale: float = 1.0  # > 1 for cardiomegaly (grows about the middle of the heart's base)
    medi_hw: float = 0.135
    spine_hw: float = 0.06
    rib_y0: float = -0.86
    rib_sp: float = 0.12
    rib_alpha: float = 0.5
    rib_beta: float = 1.0
    rib_w: float = 0.38  # rib thickness as a fraction of the spacing
    clav_y: float = -0.7
    lung_air: float = 1.0  # > 1: hyperlucent lungs (emphysema)
    markings_amp: float = 0.11
    markings_n: float = 26.0
    markings_phase: float = 0.0
    female: bool = False
    exposure: float = 1.07  # k in B = 1 - exp(-k D)
    tissue: float = 1.3  # soft-tissue density of the chest wall

    @property
    def heart_base_y(self) -> float:
        """y of the heart's lower border (it rests on the diaphragm)."""
        return max(self.dome_y_r, self.dome_y_l) + 0.04 + self.shift_y

    def dome_top(self, side: int) -> float:
        return (self.dome_y_r if side < 0 else self.dome_y_l) + self.shift_y

    def lung_centre(self, side: int) -> tuple[float, float]:
        return side * self.lung_cx + self.shift_x, self.lung_cy + self.shift_y

    def lung_half_width(self, side: int) -> float:
        return self.lung_a_r if side < 0 else self.lung_a_l

    def hilum(self, side: int) -> tuple[float, float]:
        return side * 0.17 + self.shift_x, self.lung_cy + 0.08 + self.shift_y


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's anatomy."""
    u = rng.uniform
    dome_r = u(0.24, 0.36)
    return Anatomy(
        shift_x=u(-0.03, 0.03),
        shift_y=u(-0.03, 0.03),
        body_hw=u(0.9, 1.0),
        body_cy=u(0.1, 0.2),
        neck_hw=u(0.14, 0.19),
        lung_cx=u(0.4, 0.45),
        lung_cy=u(-0.18, -0.1),
        lung_a_r=u(0.3, 0.36),
        lung_a_l=u(0.29, 0.35),
        lung_b=u(0.58, 0.66),
        dome_y_r=dome_r,
        dome_y_l=dome_r + u(0.0, 0.07),
        dome_h=u(0.15, 0.24),
        heart_cx=u(0.1, 0.16),
        heart_cy=u(0.17, 0.23),
        heart_rx=u(0.31, 0.36),
        heart_ry=u(0.2, 0.24),
        heart_tilt=u(-0.6, -0.4),
        medi_hw=u(0.12, 0.15),
        spine_hw=u(0.05, 0.065),
        rib_y0=u(-0.9, -0.82),
        rib_sp=u(0.11, 0.13),
        rib_alpha=u(0.4, 0.6),
        rib_beta=u(0.9, 1.1),
        rib_w=u(0.32, 0.42),
        clav_y=u(-0.74, -0.66),
        markings_amp=u(0.09, 0.13),
        markings_n=float(rng.integers(22, 31)),
        markings_phase=u(0.0, 2 * np.pi),
        female=bool(rng.random() < 0.45),
        exposure=u(0.95, 1.2),
        tissue=u(1.2, 1.4),
    )


def vary_anatomy(base: Anatomy, rng: np.random.Generator) -> Anatomy:
    """A follow-up image of the same patient: same anatomy, slightly different position, breath, exposure."""
    u = rng.uniform
    breath = u(-0.025, 0.025)  # depth of inspiration moves both domes together
    return dataclasses.replace(
        base,
        shift_x=base.shift_x + u(-0.012, 0.012),
        shift_y=base.shift_y + u(-0.012, 0.012),
        dome_y_r=base.dome_y_r + breath,
        dome_y_l=base.dome_y_l + breath,
        heart_rx=base.heart_rx * u(0.98, 1.02),
        markings_phase=base.markings_phase + u(-0.05, 0.05),
        exposure=base.exposure * u(0.94, 1.06),
    )


# ---------------------------------------------------------------------------------------------- primitives


def ramp(f: Array, width: float) -> Array:
    """Soft inside-indicator of an implicit shape ``f < 0``: 1 deep inside, 0 for ``f >= width / 2``.

    Compact support (exactly 0 outside), which keeps every lesion's footprint exact.
    """
    t = f * (-1.0 / width)
    t += 0.5
    return np.clip(t, 0.0, 1.0, out=t)


def norm4(u: Array, v: Array) -> Array:
    """The p = 4 superellipse norm (|u|^4 + |v|^4)^(1/4): a rounded square."""
    u2 = u * u
    v2 = v * v
    return np.sqrt(np.sqrt(u2 * u2 + v2 * v2))


def lung_sdf(X: Array, Y: Array, anat: Anatomy, side: int, dome: bool = True) -> Array:
    """Approximate signed distance to one lung field (negative inside).

    Rounded apex, squarer base; with ``dome=True`` the field is cut by the hemidiaphragm, whose parabola is
    highest at the lung's centre and lowest at the costophrenic angles.
    """
    cx, cy = anat.lung_centre(side)
    a, b = anat.lung_half_width(side), anat.lung_b
    u = (X - cx) / a
    v = (Y - cy) / b
    u2 = u * u
    v2 = v * v
    # p = 2 above the centre (rounded apex), p = 4 below (square costophrenic region).
    r = np.sqrt(np.where(v < 0, u2 + v2, np.sqrt(u2 * u2 + v2 * v2)))
    f = (r - 1.0) * min(a, b)
    if dome:
        f = np.maximum(f, Y - anat.dome_top(side) - anat.dome_h * u2)
    return f


def heart_sdf(X: Array, Y: Array, anat: Anatomy, scale: float | None = None) -> Array:
    """Approximate signed distance to the visible cardiac silhouette (cut at its base on the diaphragm)."""
    s = anat.heart_scale if scale is None else scale
    base_y = anat.heart_base_y
    hx = anat.heart_cx + anat.shift_x
    hy = anat.heart_cy + anat.shift_y
    # Enlarge about the middle of the base so the enlarged heart contains the normal one.
    cx = hx
    cy = base_y + s * (hy - base_y)
    c, sn = np.cos(anat.heart_tilt), np.sin(anat.heart_tilt)
    dx, dy = X - cx, Y - cy
    u = (c * dx + sn * dy) / (anat.heart_rx * s)
    v = (-sn * dx + c * dy) / (anat.heart_ry * s)
    f = (np.hypot(u, v) - 1.0) * anat.heart_ry * s
    return np.maximum(f, Y - base_y)


def body_sdf(X: Array, Y: Array, anat: Anatomy) -> Array:
    """Approximate signed distance to the body (thorax + neck)."""
    u = (X - anat.shift_x) / anat.body_hw
    v = (Y - anat.body_cy - anat.shift_y) / anat.body_hh
    thorax = (norm4(u, v) - 1.0) * anat.body_hw
    neck = np.abs(X - anat.shift_x) - anat.neck_hw
    return np.minimum(thorax, neck)


#: Below this density the tone curve's input is floored softly (exponentially), so very dark regions keep
#: their detail and every density change stays visible (the map is strictly monotone).
_SOFT_FLOOR = 0.1


def tone(D: Array, exposure: float) -> Array:
    """Density -> brightness in (0, 1): ``1 - exp(-k D')`` with a soft floor D' > 0 (strictly monotone, so a
    finding's footprint is exactly the pixels it changes)."""
    d0 = _SOFT_FLOOR
    De = np.where(D > d0, D, d0 * np.exp((np.minimum(D, d0) - d0) / d0))
    return -np.expm1(-exposure * De)


def inverse_tone(B: Array, exposure: float) -> Array:
    """Brightness -> density, the inverse of :func:`tone` (brightness clipped to [1e-6, 0.985])."""
    d0 = _SOFT_FLOOR
    De = -np.log1p(-np.clip(B, 1e-6, 0.985)) / exposure
    return np.where(De > d0, De, d0 + d0 * np.log(np.minimum(De, d0) / d0))


# ---------------------------------------------------------------------------------------------- anatomy


@dataclass
class AnatomyLayers:
    """The parts of the density image that findings modify separately."""

    base: Array  # density without the lung markings
    markings: Array  # vessel markings density (already restricted to the lungs)
    lungs: Array  # soft lung-field mask in [0, 1] (both lungs, heart removed)


def _band(d: Array, half: float, soft: float) -> Array:
    """Soft band |d| < half with edges `soft` wide."""
    return ramp(np.abs(d) - half, soft)


def _ribs(X: Array, Y: Array, anat: Anatomy, pix: float) -> Array:
    """Posterior ribs: arcs leaving the spine, rising then falling laterally; spacing grows downwards."""
    xp = np.abs(X - anat.shift_x)
    yc = Y - anat.shift_y + anat.rib_alpha * xp - anat.rib_beta * xp * xp - anat.rib_y0
    grow = 0.035  # spacing of rib k is rib_sp * (1 + 2 * grow * k)
    t = (np.sqrt(np.maximum(1.0 + 4.0 * grow * yc / anat.rib_sp, 0.0)) - 1.0) / (2.0 * grow)
    k = np.floor(t)
    frac = t - k
    local_sp = anat.rib_sp * (1.0 + 2.0 * grow * np.maximum(t, 0.0))
    w = anat.rib_w
    # Signed distance (in normalized units) to the nearer rib edge, positive inside the rib.
    inside = np.where(frac < w, np.minimum(frac, w - frac), -np.minimum(frac - w, 1.0 - frac)) * local_sp
    band = np.clip(0.5 + inside / (1.6 * pix), 0.0, 1.0)
    # Cortical margins are denser than the medulla.
    cortex = 0.75 + 0.25 * np.clip(1.0 - inside / (0.25 * w * local_sp + 1e-6), 0.0, 1.0)
    valid = (k >= 0) & (k < 11) & (yc > -0.02)
    lateral = ramp(xp - anat.body_hw * 0.93, 0.06) * ramp(0.05 - xp, 0.04)
    return np.where(valid, band * cortex, 0.0) * lateral


def _anterior_ribs(X: Array, Y: Array, anat: Anatomy, pix: float) -> Array:
    """Anterior ribs: fainter bands running down from the lateral wall towards the midline."""
    xp = np.abs(X - anat.shift_x)
    t = (Y - anat.shift_y + 0.38 * xp - anat.rib_y0 - 0.15) / (1.15 * anat.rib_sp)
    frac = t % 1.0
    inside = np.minimum(frac, 0.3 - frac) * 1.15 * anat.rib_sp
    band = np.clip(0.5 + inside / (2.0 * pix), 0.0, 1.0) * (frac < 0.3)
    return band * ramp(0.25 - xp, 0.1) * (t > 0) * (t < 6)


def _clavicles(X: Array, Y: Array, anat: Anatomy, pix: float) -> Array:
    xp = np.abs(X - anat.shift_x)
    yc = anat.clav_y + anat.shift_y - 0.18 * xp + 0.45 * (xp - 0.32) ** 2
    band = _band(Y - yc, 0.03, 2.0 * pix)
    extent = ramp(xp - 0.75, 0.05) * ramp(0.07 - xp, 0.03)
    return band * extent


def _spine(X: Array, Y: Array, anat: Anatomy, pix: float) -> Array:
    dx = X - anat.shift_x
    column = ramp(np.abs(dx) - anat.spine_hw, 2.0 * pix)
    # Vertebral bodies separated by darker disc spaces.
    ph = ((Y - anat.shift_y) / 0.095) % 1.0
    disc = np.clip(1.0 - np.minimum(ph, 1.0 - ph) / 0.12, 0.0, 1.0)
    return column * (1.0 - 0.3 * disc)


def _markings(X: Array, Y: Array, anat: Anatomy, side: int) -> Array:
    """Vessel markings: streaks radiating from the hilum, fading towards the periphery (1-D arrays)."""
    hx, hy = anat.hilum(side)
    dx, dy = X - hx, Y - hy
    r = np.sqrt(dx * dx + dy * dy)
    phi = np.arctan2(dy, dx * side)
    wobble = 1.7 * np.sin(6.0 * r + (anat.markings_phase + side))
    s1 = 0.5 + 0.5 * np.cos(anat.markings_n * phi + wobble)
    s2 = 0.5 + 0.5 * np.cos(1.63 * anat.markings_n * phi - 1.3 * wobble + 2.0)
    s1 *= s1  # s^8 and s^16 by squaring (cheaper than pow): thin streaks
    s1 *= s1
    s1 *= s1
    s2 *= s2
    s2 *= s2
    s2 *= s2
    s2 *= s2
    fade = np.exp(-r / 0.4) * np.minimum(r * (1.0 / 0.06), 1.0)
    return (s1 + 0.7 * s2) * fade


def _grid_affine(X: Array, Y: Array) -> tuple[float, ...] | None:
    """``(ox, oy, a, b, c, d)`` with ``(i, j) = [[a, b], [c, d]] @ ((x, y) - (ox, oy))`` when the grid is an affine
    image of the pixel indices (as ``cianet.phantom.generator.patient_grid`` makes it), else None."""
    H, W = X.shape
    if H < 2 or W < 2:
        return None
    ox, oy = float(X[0, 0]), float(Y[0, 0])
    xi, yi = float(X[1, 0]) - ox, float(Y[1, 0]) - oy  # d(x, y)/d(row)
    xj, yj = float(X[0, 1]) - ox, float(Y[0, 1]) - oy  # d(x, y)/d(column)
    det = xi * yj - xj * yi
    if abs(det) < 1e-12:
        return None
    # Reject grids that are not affine (checked at the far corner).
    if (
        abs(ox + (H - 1) * xi + (W - 1) * xj - float(X[-1, -1])) > 1e-3
        or abs(oy + (H - 1) * yi + (W - 1) * yj - float(Y[-1, -1])) > 1e-3
    ):
        return None
    return ox, oy, yj / det, -xj / det, -yi / det, xi / det


def _window(
    shape: tuple[int, int], aff: tuple[float, ...] | None, x0: float, x1: float, y0: float, y1: float
) -> tuple[slice, slice]:
    """Rows and columns of the grid whose patient-frame points can fall in ``[x0, x1] x [y0, y1]``.

    The rectangle's corners map back to pixel indices exactly through the grid's affine map ``aff``
    (:func:`_grid_affine`); without one, the whole grid.
    """
    H, W = shape
    if aff is None:
        return slice(0, H), slice(0, W)
    ox, oy, a, b, c, d = aff
    rows, cols = [], []
    for x, y in ((x0, y0), (x1, y0), (x0, y1), (x1, y1)):
        rows.append(a * (x - ox) + b * (y - oy))
        cols.append(c * (x - ox) + d * (y - oy))
    i0, i1 = math.floor(min(rows)) - 1, math.ceil(max(rows)) + 2
    j0, j1 = math.floor(min(cols)) - 1, math.ceil(max(cols)) + 2
    return slice(max(i0, 0), max(min(i1, H), 0)), slice(max(j0, 0), max(min(j1, W), 0))


#: ``win(x0, x1, y0, y1)``: the rows and columns of the grid that can hold patient-frame points of that rectangle
Window = Callable[[float, float, float, float], tuple[slice, slice]]


def _chest_wall(X: Array, anat: Anatomy, body: Array) -> Array:
    """Soft-tissue density of the body (H, W): the chest wall thins towards the flanks."""
    t = (X - anat.shift_x) * (1.0 / (anat.body_hw * 1.05))
    thick = np.sqrt(np.clip(1.0 - t * t, 0.05, 1.0))
    return anat.tissue * body * (0.55 + 0.45 * thick)


def _solid_centre(X: Array, Y: Array, anat: Anatomy, pix: float, win: Window) -> Array:
    """Heart, mediastinum and aortic knob (H, W) in [0, 1]: the "solid" centre that hides the lungs."""
    sx, sy = anat.shift_x, anat.shift_y
    solid = np.zeros_like(X)
    r = max(anat.heart_rx, anat.heart_ry) * anat.heart_scale * 1.2
    hcx, hcy = anat.heart_cx + sx, anat.heart_base_y
    w = win(hcx - r, hcx + r, hcy - 2 * r, hcy)
    solid[w] = ramp(heart_sdf(X[w], Y[w], anat), HEART_EDGE * pix)
    w = win(sx - anat.medi_hw - 0.05, sx + anat.medi_hw + 0.06, -1.5, anat.heart_base_y + 0.05)
    Xw, Yw = X[w], Y[w]
    medi_hw = anat.medi_hw + 0.035 * np.clip((Yw - sy + 0.3) / 0.6, 0.0, 1.0)
    medi = ramp(np.abs(Xw - sx - 0.01) - medi_hw, 3.0 * pix) * ramp(Yw - anat.heart_base_y, 0.1)
    solid[w] = np.maximum(solid[w], medi)
    w = win(sx + 0.05, sx + 0.19, sy - 0.37, sy - 0.23)
    knob = ramp(np.hypot(X[w] - sx - 0.12, Y[w] - sy + 0.3) - 0.065, 3.0 * pix)
    solid[w] = np.maximum(solid[w], knob)
    return solid


def _lung_fields(X: Array, Y: Array, anat: Anatomy, pix: float, win: Window, solid: Array) -> Array:
    """Soft mask of both lungs (H, W), weighted by their thickness and hidden where the centre is solid."""
    lungs = np.zeros_like(X)
    for side in (-1, 1):
        cx, cy = anat.lung_centre(side)
        a = anat.lung_half_width(side)
        w = win(cx - a, cx + a, cy - anat.lung_b, cy + anat.lung_b)
        f = lung_sdf(X[w], Y[w], anat, side)
        # Lungs are thickest in their middle: darker centrally, lighter near the edges.
        depth = np.clip(f * (-1.0 / 0.12), 0.0, 1.0)
        lungs[w] += ramp(f, 4.0 * pix) * (0.72 + 0.28 * depth)
    lungs *= 1.0 - 0.85 * solid
    return lungs


def _add_trachea(D: Array, X: Array, Y: Array, anat: Anatomy, pix: float, win: Window, body: Array) -> None:
    """The air column of the trachea, down to the carina (in place)."""
    sx, sy = anat.shift_x, anat.shift_y
    w = win(sx - 0.04, sx + 0.04, -1.5, sy - 0.28)
    D[w] -= 0.32 * ramp(np.abs(X[w] - sx) - 0.032, 2.5 * pix) * ramp(Y[w] - sy + 0.32, 0.08) * body[w]


def _add_abdomen(D: Array, X: Array, Y: Array, anat: Anatomy, pix: float, win: Window, body: Array) -> None:
    """Below the diaphragm (in place): a denser abdomen laterally (liver, spleen); the gastric bubble under the
    left dome."""
    for side in (-1, 1):
        cx, _ = anat.lung_centre(side)
        a = anat.lung_half_width(side)
        w = win(cx - 1.4 * a, cx + 1.4 * a, anat.dome_top(side), 1.5)
        u = (X[w] - cx) * (1.0 / a)
        below = ramp(anat.dome_top(side) + anat.dome_h * u * u - Y[w], 3.0 * pix)
        D[w] += 0.18 * below * body[w] * ramp(np.abs(X[w] - cx) - 1.3 * a, 0.2)
    cxl, _ = anat.lung_centre(1)
    by = anat.dome_top(1) + 0.1
    w = win(cxl + 0.03 - 0.11, cxl + 0.03 + 0.11, by - 0.06, by + 0.06)
    D[w] -= 0.45 * ramp(np.hypot((X[w] - cxl - 0.03) / 0.09, (Y[w] - by) / 0.05) - 1.0, 0.3)


def _add_hila(D: Array, X: Array, Y: Array, anat: Anatomy, win: Window) -> None:
    """Hilar vessels (in place): a smooth bump of compact support on each side."""
    for side in (-1, 1):
        hx, hy = anat.hilum(side)
        w = win(hx - 0.12, hx + 0.12, hy - 0.12, hy + 0.12)
        q = np.maximum(1.0 - ((X[w] - hx) ** 2 + (Y[w] - hy) ** 2) * (1.0 / 0.12**2), 0.0)
        D[w] += 0.22 * q * q * q


def _add_bones(D: Array, X: Array, Y: Array, anat: Anatomy, pix: float, win: Window, body: Array, lungs: Array) -> None:
    """Spine, posterior and anterior ribs, clavicles (in place)."""
    sx, sy = anat.shift_x, anat.shift_y
    w = win(sx - anat.spine_hw, sx + anat.spine_hw, -1.5, 1.5)
    D[w] += 0.3 * _spine(X[w], Y[w], anat, pix) * body[w]
    # Bones show mostly against the lungs.
    w = win(sx - anat.body_hw, sx + anat.body_hw, anat.rib_y0 + sy - 0.45, 1.5)
    D[w] += 0.15 * _ribs(X[w], Y[w], anat, pix) * body[w] * (0.3 + 0.7 * lungs[w])
    D[w] += 0.08 * _anterior_ribs(X[w], Y[w], anat, pix) * lungs[w]
    w = win(sx - 0.8, sx + 0.8, anat.clav_y + sy - 0.12, anat.clav_y + sy + 0.12)
    D[w] += 0.4 * _clavicles(X[w], Y[w], anat, pix) * body[w]


def _add_breasts(D: Array, X: Array, Y: Array, anat: Anatomy, win: Window, body: Array) -> None:
    """Breast shadows over the lower lung fields (in place)."""
    for side in (-1, 1):
        cx, _ = anat.lung_centre(side)
        bx, by = cx + side * 0.05, anat.shift_y + 0.42
        w = win(bx - 0.37, bx + 0.37, by - 0.3, by + 0.3)
        breast = np.hypot((X[w] - bx) / 0.32, (Y[w] - by) / 0.26)
        D[w] += 0.16 * ramp(breast - 1.0, 0.25) * body[w]


def _lung_markings(X: Array, Y: Array, anat: Anatomy, lungs: Array) -> Array:
    """Vessel markings density (H, W) float32, only evaluated on lung pixels (the costliest layer)."""
    markings = np.zeros(X.size, dtype=np.float32)
    idx = np.flatnonzero(lungs.ravel() > 0)
    xs, ys = X.ravel()[idx], Y.ravel()[idx]
    vals = _markings(xs, ys, anat, -1) + _markings(xs, ys, anat, 1)
    markings[idx] = anat.markings_amp * vals * lungs.ravel()[idx]
    return markings.reshape(X.shape)


def anatomy_layers(X: Array, Y: Array, anat: Anatomy, pix: float) -> AnatomyLayers:
    """Density layers of the chest at patient-frame points ``X, Y`` ((H, W) float32 grids).

    ``pix`` is the size of a written pixel in normalized units (2 / S): edges are antialiased over ~1-2 px.
    Small structures are only evaluated in the window of the grid that can contain them.
    """
    m = 0.05  # window margin, larger than any soft edge
    aff = _grid_affine(X, Y)

    def win(x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice]:
        return _window(X.shape, aff, x0 - m, x1 + m, y0 - m, y1 + m)

    body = ramp(body_sdf(X, Y, anat), 3.0 * pix)  # (H, W)
    D = _chest_wall(X, anat, body)  # density, (H, W)
    solid = _solid_centre(X, Y, anat, pix, win)
    lungs = _lung_fields(X, Y, anat, pix, win, solid)
    D -= (1.08 * anat.lung_air) * lungs * body
    D += 0.45 * solid
    _add_trachea(D, X, Y, anat, pix, win, body)
    _add_abdomen(D, X, Y, anat, pix, win, body)
    _add_hila(D, X, Y, anat, win)
    _add_bones(D, X, Y, anat, pix, win, body, lungs)
    if anat.female:
        _add_breasts(D, X, Y, anat, win, body)
    markings = _lung_markings(X, Y, anat, lungs)
    return AnatomyLayers(base=D.astype(np.float32), markings=markings, lungs=lungs.astype(np.float32))
