"""The alignment module (paper section 3.1): a ResNet-18 that regresses an affine warp toward the canonical
chest, the warp itself, box/mask transfer between the original and the aligned frame, and the structure loss.

Convention (docs/architecture.md): parameters ``(tx, ty, sx, sy, theta)``, theta in radians,

    A = [[sx cos t, -sy sin t, tx],
         [sx sin t,  sy cos t, ty]]

and the aligned image samples the input at ``A p`` for every normalized output point ``p``
(``affine_grid(A, align_corners=False)`` + bilinear ``grid_sample``). Normalized coordinates: pixel
coordinate ``u in [0, W]`` <-> ``x = 2u/W - 1``; likewise y with H; y points down.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cianet.models.backbones import (
    STANDARD_WIDTH,
    gray_to_input,
    pretrained_spec,
    pretrained_weights,
    resnet_trunk,
    trunk_weights,
)
from cianet.models.resnet import resnet

IDENTITY_PARAMS: tuple[float, float, float, float, float] = (0.0, 0.0, 1.0, 1.0, 0.0)


# ----------------------------------------------------------------------------------------------- warp
def params_to_matrix(params: Tensor) -> Tensor:
    """``(B, 5)`` parameters ``(tx, ty, sx, sy, theta)`` -> ``(B, 2, 3)`` affine matrices of equation 1."""
    if params.ndim != 2 or params.shape[1] != 5:
        raise ValueError(f"params must be (B, 5) (tx, ty, sx, sy, theta), got shape {tuple(params.shape)}")
    tx, ty, sx, sy, th = params.unbind(dim=1)
    c, s = torch.cos(th), torch.sin(th)
    row0 = torch.stack([sx * c, -sy * s, tx], dim=1)
    row1 = torch.stack([sx * s, sy * c, ty], dim=1)
    return torch.stack([row0, row1], dim=1)  # (B, 2, 3)


def warp(images: Tensor, params: Tensor, out_size: Sequence[int] | None = None, padding_mode: str = "zeros") -> Tensor:
    """Warp ``images`` ``(B, C, H, W)`` with ``params`` ``(B|1, 5)`` -> ``(B, C, H', W')``.

    ``out_size = (H', W')`` defaults to ``(H, W)``. Because the grid is in normalized coordinates the
    same parameters warp a low-resolution and a full-resolution copy of an image identically.
    ``padding_mode`` is grid_sample's (``zeros``: black outside the input, the X-ray background;
    ``border``: replicate the edge).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    if params.shape[0] == 1 and b > 1:
        params = params.expand(b, -1)
    if params.shape[0] != b:
        raise ValueError(f"params batch {params.shape[0]} does not match images batch {b}")
    oh, ow = (h, w) if out_size is None else (int(out_size[0]), int(out_size[1]))
    theta = params_to_matrix(params.to(images.dtype))
    grid = F.affine_grid(theta, [b, c, oh, ow], align_corners=False)  # (B, H', W', 2)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


# ------------------------------------------------------------------------------------------- network
def crop_params(crop: Sequence[float], image_size: int | Sequence[int]) -> tuple[float, float, float, float, float]:
    """The alignment parameters that sample exactly the box ``crop = (x0, y0, x1, y1)`` (pixel edges) of an
    image of ``image_size`` (``S`` or ``(W, H)``), stretched over the whole output: ``(tx, ty, sx, sy, 0)``.

    This is the warp from the mean image to the canonical chest (``cianet canonical``): output point
    ``p = -1`` samples the edge ``x0``, ``p = +1`` the edge ``x1``, so ``sx = (x1 - x0) / W`` and
    ``tx = (x0 + x1) / W - 1`` (likewise y with H).
    """
    if len(crop) != 4:
        raise ValueError(f"crop must be (x0, y0, x1, y1), got {tuple(crop)}")
    w, h = (image_size, image_size) if isinstance(image_size, (int, float)) else image_size
    x0, y0, x1, y1 = (float(v) for v in crop)
    if not (x1 > x0 and y1 > y0 and w > 0 and h > 0):
        raise ValueError(f"crop {tuple(crop)} is not a non-empty box in a {w}x{h} image")
    return ((x0 + x1) / w - 1.0, (y0 + y1) / h - 1.0, (x1 - x0) / w, (y1 - y0) / h, 0.0)


def derive_bounds(
    crop: Sequence[float] | None = None,
    center: str = "crop",
    max_shift: float = 0.4,
    max_scale: float = 1.4,
    max_rotation: float = 0.35,
) -> dict[str, Any]:
    """The :class:`AlignmentNet` bound arguments for a canonical chest cropped with ``crop`` (its
    :func:`crop_params`, or None when unknown).

    - ``center="crop"``: the bounds are centred on the crop: ``t in crop_t +- max_shift``,
      ``s in crop_s * [1/max_scale, max_scale]``, ``theta in +-max_rotation``; ``z = 0`` is the crop.
    - ``center="identity"``: centred on the identity, widened so that the crop plus the same margins lies
      inside: ``max_shift + max |crop_t|`` and ``max_scale * max(crop_s, 1/crop_s)``.

    Without a crop both give the identity-centred bounds as given. Returns ``{"center": [5 floats],
    "max_shift", "max_scale", "max_rotation"}``, plain floats (stored in ``align.pt``).
    """
    if center not in ("crop", "identity"):
        raise ValueError(f"center must be 'crop' or 'identity', got {center!r}")
    if max_shift <= 0 or max_scale <= 1.0 or max_rotation <= 0:
        raise ValueError(
            f"bounds need max_shift > 0, max_scale > 1, max_rotation > 0; got {max_shift}, {max_scale}, {max_rotation}"
        )
    ref = list(IDENTITY_PARAMS) if crop is None else [float(v) for v in crop]
    if len(ref) != 5 or ref[2] <= 0 or ref[3] <= 0:
        raise ValueError(f"crop parameters must be (tx, ty, sx, sy, theta) with sx, sy > 0, got {ref}")
    if center == "crop":
        return {
            "center": ref,
            "max_shift": float(max_shift),
            "max_scale": float(max_scale),
            "max_rotation": float(max_rotation),
        }
    zoom = max(ref[2], 1.0 / ref[2], ref[3], 1.0 / ref[3])
    return {
        "center": list(IDENTITY_PARAMS),
        "max_shift": float(max_shift) + max(abs(ref[0]), abs(ref[1])),
        "max_scale": float(max_scale) * zoom,
        "max_rotation": float(max_rotation) + abs(ref[4]),
    }


class AlignmentNet(nn.Module):
    """ResNet-18 regressing 5 bounded affine parameters; exactly ``center`` at initialization.

    Bounds (tanh of the raw outputs ``z``), around ``center = (ctx, cty, csx, csy, ctheta)``:
    ``t = ct + max_shift * tanh(z)``, ``s = cs * exp(log(max_scale) * tanh(z))`` (so ``s in
    [cs/max_scale, cs*max_scale]``, symmetric in log scale), ``theta = ctheta + max_rotation * tanh(z)``.
    The last linear layer is zero-initialized so every ``z`` is 0 and the output is ``center`` before
    training. The default centre is the identity ``(0, 0, 1, 1, 0)`` (checkpoints written before the centre
    existed load with it); :func:`derive_bounds` centres the bounds on the canonical chest's crop.

    Args:
        backbone: ResNet name (the paper: resnet18).
        pretrained: initial weights of the trunk: "imagenet" | "none" | a state-dict file
            (:func:`cianet.models.backbones.pretrained_weights`).
        input_size: side of the downsized copy the parameters are regressed from (None: use the input
            as is); the warp is always applied to the full-resolution input.
        center: the parameters at ``z = 0``.
        width: the trunk's stem channels (64: the standard ResNet; less: narrower, random weights only).
        max_shift, max_scale, max_rotation: the bounds above (normalized units, ratio, radians).
        padding_mode: grid_sample padding of the warp (``zeros`` or ``border``).
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        pretrained: bool | str = False,
        input_size: int | None = 256,
        max_shift: float = 0.4,
        max_scale: float = 1.4,
        max_rotation: float = 0.35,
        padding_mode: str = "zeros",
        center: Sequence[float] = IDENTITY_PARAMS,
        width: int = STANDARD_WIDTH,
    ) -> None:
        super().__init__()
        if input_size is not None and (input_size <= 0 or input_size % 32):
            raise ValueError(f"input_size must be a positive multiple of 32 or None, got {input_size}")
        if max_scale <= 1.0:
            raise ValueError(f"max_scale must be > 1, got {max_scale}")
        if max_shift <= 0 or max_rotation <= 0:
            raise ValueError(f"max_shift and max_rotation must be > 0, got {max_shift}, {max_rotation}")
        center = tuple(float(v) for v in center)
        if len(center) != 5 or center[2] <= 0 or center[3] <= 0:
            raise ValueError(f"center must be (tx, ty, sx, sy, theta) with sx, sy > 0, got {center}")
        self.input_size = input_size
        self.max_shift = float(max_shift)
        self.max_scale = float(max_scale)
        self.log_max_scale = math.log(max_scale)
        self.max_rotation = float(max_rotation)
        self.center = center
        self.padding_mode = padding_mode
        self.width = int(width)
        sd = trunk_weights(backbone, pretrained, self.width, key="align.width")
        self.trunk, channels = resnet_trunk(backbone, upto="c5", state_dict=sd, width=self.width)
        self.fc = nn.Linear(channels, 5)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def bounds(self) -> dict[str, Any]:
        """The bound arguments (``center``, ``max_shift``, ``max_scale``, ``max_rotation``), plain floats."""
        return {
            "center": list(self.center),
            "max_shift": self.max_shift,
            "max_scale": self.max_scale,
            "max_rotation": self.max_rotation,
        }

    def bound(self, z: Tensor) -> Tensor:
        """Raw ``(B, 5)`` outputs -> bounded ``(tx, ty, sx, sy, theta)`` ``(B, 5)``; 0 maps to ``center``."""
        t = torch.tanh(z)
        ctx, cty, csx, csy, cth = self.center
        return torch.stack(
            [
                ctx + self.max_shift * t[:, 0],
                cty + self.max_shift * t[:, 1],
                csx * torch.exp(self.log_max_scale * t[:, 2]),
                csy * torch.exp(self.log_max_scale * t[:, 3]),
                cth + self.max_rotation * t[:, 4],
            ],
            dim=1,
        )

    def bound_position(self, params: Tensor) -> Tensor:
        """Inverse of :meth:`bound` up to the tanh: where ``(B, 5)`` parameters sit between their bounds,
        ``-1`` (lower bound) .. ``0`` (centre) .. ``+1`` (upper bound); log scale for ``sx, sy``."""
        ctx, cty, csx, csy, cth = self.center
        p = params.to(torch.float64)
        return torch.stack(
            [
                (p[:, 0] - ctx) / self.max_shift,
                (p[:, 1] - cty) / self.max_shift,
                torch.log(p[:, 2] / csx) / self.log_max_scale,
                torch.log(p[:, 3] / csy) / self.log_max_scale,
                (p[:, 4] - cth) / self.max_rotation,
            ],
            dim=1,
        )

    def downsize(self, x: Tensor) -> Tensor:
        """The copy of ``x`` ``(B, 1, H, W)`` the parameters are regressed from (antialiased bilinear)."""
        if self.input_size is None or tuple(x.shape[-2:]) == (self.input_size, self.input_size):
            return x
        return F.interpolate(
            x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False, antialias=True
        )

    def predict_params(self, x: Tensor) -> Tensor:
        """``(B, 1, H, W)`` gray ``[0, 1]`` -> ``(B, 5)`` parameters (from the downsized copy)."""
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"AlignmentNet expects (B, 1, H, W) gray images, got shape {tuple(x.shape)}")
        feats = self.trunk(gray_to_input(self.downsize(x)))  # (B, c5, s/32, s/32)
        return self.bound(self.fc(feats.mean(dim=(-2, -1))))

    def forward(self, x: Tensor, out_size: Sequence[int] | None = None) -> dict[str, Tensor]:
        """``x`` ``(B, 1, H, W)`` gray ``[0, 1]`` -> ``params`` ``(B, 5)``, ``aligned`` ``(B, 1, H', W')``.

        ``out_size = (H', W')`` defaults to the input's size.
        """
        params = self.predict_params(x)
        aligned = warp(x, params, out_size=out_size, padding_mode=self.padding_mode)
        return {"params": params, "aligned": aligned}


# ------------------------------------------------------------------------- composition and consistency
def params_to_matrix3(params: Tensor) -> Tensor:
    """``(B, 5)`` parameters -> ``(B, 3, 3)`` homogeneous matrices (last row ``0 0 1``)."""
    m = params_to_matrix(params)
    last = torch.zeros(m.shape[0], 1, 3, dtype=m.dtype, device=m.device)
    last[:, 0, 2] = 1.0
    return torch.cat([m, last], dim=1)


def random_warp_params(
    n: int,
    generator: torch.Generator | None = None,
    max_rotation: float = math.radians(12),
    scale_range: Sequence[float] = (0.85, 1.15),
    max_shift: float = 0.12,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``(n, 5)`` random warps: ``theta`` uniform in ``+-max_rotation`` (radians), ``sx`` and ``sy``
    independently log-uniform in ``scale_range``, ``tx`` and ``ty`` uniform in ``+-max_shift`` (normalized
    units: 0.12 is 6 % of the width). Drawn on the CPU from ``generator``."""
    lo, hi = (float(v) for v in scale_range)
    if not (0 < lo <= hi) or max_shift < 0 or max_rotation < 0:
        raise ValueError(f"bad warp ranges: scale {scale_range}, shift {max_shift}, rotation {max_rotation}")
    u = torch.rand(n, 5, generator=generator, dtype=torch.float64) * 2.0 - 1.0  # uniform in [-1, 1]
    log_mid, log_half = (math.log(hi) + math.log(lo)) / 2, (math.log(hi) - math.log(lo)) / 2
    return torch.stack(
        [
            max_shift * u[:, 0],
            max_shift * u[:, 1],
            torch.exp(log_mid + log_half * u[:, 2]),
            torch.exp(log_mid + log_half * u[:, 3]),
            max_rotation * u[:, 4],
        ],
        dim=1,
    ).to(dtype)


def grid_points(k: int = 8, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """``(k*k, 2)`` normalized ``(x, y)`` centres of a ``k x k`` grid of cells over ``[-1, 1]^2``."""
    c = (torch.arange(k, dtype=dtype, device=device) + 0.5) * (2.0 / k) - 1.0
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


def consistency_loss(params: Tensor, params_warped: Tensor, warps: Tensor, k: int = 8) -> Tensor:
    """Equivariance of the alignment under known warps, in the aligned frame.

    An image ``I`` warped by a known ``W`` (``I'(p) = I(W p)``) is aligned by ``P'`` when ``I'(P' p) =
    I(W P' p)`` equals the aligned ``I``, ``I(P p)``: a consistent network has ``W P' = P``. The loss is
    the mean squared distance, over a ``k x k`` grid of aligned-frame points ``p``, between ``p`` and
    ``P^-1 W P' p`` (normalized units): zero iff ``W P' = P``, and, being measured in the aligned frame, it
    does not favour zooming in (a loss in the image frame would shrink with the scale of ``P``).

    ``params``, ``params_warped``, ``warps``: ``(B, 5)``. Gradients reach both predictions.
    """
    if not (params.shape == params_warped.shape == warps.shape) or params.ndim != 2 or params.shape[1] != 5:
        raise ValueError(
            f"params, params_warped, warps must all be (B, 5), got {tuple(params.shape)}, "
            f"{tuple(params_warped.shape)}, {tuple(warps.shape)}"
        )
    p, pw, w = params_to_matrix3(params), params_to_matrix3(params_warped), params_to_matrix3(warps.to(params.dtype))
    d = torch.linalg.solve(p, w @ pw)  # (B, 3, 3): P^-1 W P'
    pts = grid_points(k, params.dtype, params.device)  # (K, 2)
    q = pts @ d[:, :2, :2].transpose(1, 2) + d[:, None, :2, 2]  # (B, K, 2)
    return (q - pts).pow(2).sum(-1).mean()


# ---------------------------------------------------------------------------- boxes and masks (numpy)
def _params_np(params) -> np.ndarray:
    p = params.detach().cpu().double().numpy() if isinstance(params, Tensor) else np.asarray(params, np.float64)
    p = p.reshape(-1)
    if p.shape != (5,):
        raise ValueError(f"params must have 5 values (tx, ty, sx, sy, theta), got shape {p.shape}")
    return p


def _matrix_np(params) -> tuple[np.ndarray, np.ndarray]:
    """``(M (2, 2), t (2,))`` float64 with ``q = M p + t`` mapping aligned -> original normalized coords."""
    tx, ty, sx, sy, th = _params_np(params)
    c, s = math.cos(th), math.sin(th)
    return np.array([[sx * c, -sy * s], [sx * s, sy * c]]), np.array([tx, ty])


def _boxes_np(boxes) -> tuple[np.ndarray, bool]:
    is_torch = isinstance(boxes, Tensor)
    b = boxes.detach().cpu().double().numpy() if is_torch else np.asarray(boxes, np.float64)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4) (x, y, w, h), got shape {b.shape}")
    return b, is_torch


def _map_boxes(boxes: np.ndarray, src_size, dst_size, fn) -> np.ndarray:
    """Map the 4 corners of every box through ``fn`` (normalized -> normalized) and take their bounds."""
    sw, sh = float(src_size[0]), float(src_size[1])
    dw, dh = float(dst_size[0]), float(dst_size[1])
    x, y, w, h = boxes.T
    cx = np.stack([x, x + w, x, x + w], axis=1)  # (N, 4) corner pixel coordinates
    cy = np.stack([y, y, y + h, y + h], axis=1)
    pts = np.stack([2.0 * cx / sw - 1.0, 2.0 * cy / sh - 1.0], axis=-1)  # (N, 4, 2) normalized
    q = fn(pts)  # (N, 4, 2)
    ux = (q[..., 0] + 1.0) * dw / 2.0
    uy = (q[..., 1] + 1.0) * dh / 2.0
    x0, y0 = ux.min(axis=1), uy.min(axis=1)
    return np.stack([x0, y0, ux.max(axis=1) - x0, uy.max(axis=1) - y0], axis=1)


def _as_output(out: np.ndarray, like, is_torch: bool):
    return torch.as_tensor(out, dtype=like.dtype if like.is_floating_point() else torch.float64) if is_torch else out


def boxes_to_aligned(boxes_xywh, params, src_size: Sequence[float], dst_size: Sequence[float]):
    """Boxes ``(N, 4)`` ``(x, y, w, h)`` in the original image (size ``src_size = (W, H)``) to the aligned
    image (size ``dst_size = (W', H')``) warped with ``params``: the axis-aligned bounding box of the
    four mapped corners (exact for rotation 0). Not clipped to the image. numpy in, numpy out (float64);
    torch in, torch out."""
    b, is_torch = _boxes_np(boxes_xywh)
    m, t = _matrix_np(params)
    m_inv = np.linalg.inv(m)
    out = _map_boxes(b, src_size, dst_size, lambda q: (q - t) @ m_inv.T)  # p = M^-1 (q - t)
    return _as_output(out, boxes_xywh, is_torch)


def boxes_to_original(boxes_xywh, params, aligned_size: Sequence[float], orig_size: Sequence[float]):
    """Boxes ``(N, 4)`` in the aligned frame (size ``aligned_size = (W', H')``) back to the original image
    (``orig_size = (W, H)``): bounding box of the mapped corners ``q = A p``. Not clipped."""
    b, is_torch = _boxes_np(boxes_xywh)
    m, t = _matrix_np(params)
    out = _map_boxes(b, aligned_size, orig_size, lambda p: p @ m.T + t)
    return _as_output(out, boxes_xywh, is_torch)


def _original_frame_cells(
    grid: tuple[int, int], params, orig_size: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every pixel centre of the original ``(H, W)`` frame: the ``(row, col)`` of the aligned-frame cell of a
    ``grid = (h, w)`` grid it falls in, and whether it falls inside the aligned image at all."""
    gh, gw = grid
    W, H = int(orig_size[0]), int(orig_size[1])
    m, t = _matrix_np(params)
    m_inv = np.linalg.inv(m)
    qx = 2.0 * (np.arange(W) + 0.5) / W - 1.0 - t[0]  # pixel centers, normalized, minus the shift: (W,)
    qy = 2.0 * (np.arange(H) + 0.5) / H - 1.0 - t[1]  # (H,)
    # p = m_inv @ q is affine in each axis: outer sums of two 1-D vectors, no (H, W, 2) coordinate array
    px = m_inv[0, 0] * qx[None, :] + m_inv[0, 1] * qy[:, None]  # aligned-frame normalized coordinates (H, W)
    py = m_inv[1, 0] * qx[None, :] + m_inv[1, 1] * qy[:, None]
    col = np.floor((px + 1.0) / 2.0 * gw).astype(np.int64)
    row = np.floor((py + 1.0) / 2.0 * gh).astype(np.int64)
    inside = (col >= 0) & (col < gw) & (row >= 0) & (row < gh)
    return row, col, inside


def mask_to_original(mask, params, orig_size: Sequence[int]):
    """Rasterize a cell mask ``(h, w)`` of the aligned frame into the original image frame ``(H, W)``.

    Every original pixel center ``(j + 0.5, i + 0.5)`` is mapped to the aligned frame with the inverse
    transform and takes the value of the cell it falls in (0/False outside the aligned image), so grid
    cells become rotated, scaled quads. Works for bool and float masks (probability maps); numpy or torch
    in, the same kind and dtype out.
    """
    is_torch = isinstance(mask, Tensor)
    m_arr = mask.detach().cpu().numpy() if is_torch else np.asarray(mask)
    if m_arr.ndim != 2:
        raise ValueError(f"mask must be (h, w), got shape {m_arr.shape}")
    out = masks_to_original(m_arr[None], params, orig_size)[0]
    return torch.from_numpy(out) if is_torch else out


def masks_to_original(masks: np.ndarray, params, orig_size: Sequence[int]) -> np.ndarray:
    """:func:`mask_to_original` of a stack ``(C, h, w)`` of grids of one image -> ``(C, H, W)`` (numpy, same dtype).

    The pixel-to-cell mapping is computed once for the stack (a float64 pass over ``H x W``), then each grid
    is gathered through it: the heatmaps of all classes cost little more than one.
    """
    m_arr = np.asarray(masks)
    if m_arr.ndim != 3:
        raise ValueError(f"masks must be (C, h, w), got shape {m_arr.shape}")
    row, col, inside = _original_frame_cells(m_arr.shape[1:], params, orig_size)
    out = np.zeros((m_arr.shape[0], *row.shape), dtype=m_arr.dtype)
    out[:, inside] = m_arr[:, row[inside], col[inside]]
    return out


# ------------------------------------------------------------------------------------ structure loss
#: VGG-16 (configuration D) up to relu2_2, layer for layer as torchvision's ``vgg16().features[:9]``: conv1_1,
#: relu, conv1_2, relu, max pool, conv2_1, relu, conv2_2, relu. "M" is the pool.
VGG16_RELU2_2 = (64, 64, "M", 128, 128)


def vgg16_relu2_2(state_dict: dict[str, torch.Tensor] | None) -> nn.Sequential:
    """VGG-16's first two blocks, ``(B, 3, H, W) -> (B, 128, H/2, W/2)``. ``state_dict``: a whole VGG-16's
    (torchvision's key names, ``features.N.*``), of which the four convolutions are taken; None: VGG's own
    initialization (Kaiming normal, fan-out, zero biases) from the current random state. Built alone, not cut
    out of a whole VGG-16, whose classifier (124 M of its 138 M parameters) took seconds to initialize."""
    layers: list[nn.Module] = []
    channels = 3
    for v in VGG16_RELU2_2:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = v
    net = nn.Sequential(*layers)
    if state_dict is None:
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        return net
    prefix = "features."
    ours = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    net.load_state_dict({k: v for k, v in ours.items() if int(k.split(".")[0]) < len(net)})
    return net


def _feature_net(name: str, pretrained: bool | str, seed: int) -> nn.Module | None:
    """The frozen feature extractor ``N_feat`` of equation 2 (None for ``"none"``)."""
    if name == "none":
        return None
    if name not in ("vgg16", "resnet18"):
        raise ValueError(f"feature_net must be 'vgg16', 'resnet18' or 'none', got {name!r}")
    # ImageNet features unless the alignment runs without pretrained weights (a trunk's state-dict file does
    # not fit the feature net: it still gets ImageNet's)
    sd = None if pretrained_spec(pretrained) == "none" else pretrained_weights(name, "imagenet")
    # Without ImageNet weights: a fixed random init from `seed` (the global RNG is left untouched).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "vgg16":
            feats = vgg16_relu2_2(sd)  # relu2_2 (Johnson et al.): (B, 128, H/2, W/2)
        else:
            net = resnet("resnet18")
            if sd is not None:
                net.load_state_dict(sd)
            feats = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)  # (B, 64, H/4, W/4)
    for p in feats.parameters():
        p.requires_grad_(False)
    return feats.eval()


class StructureLoss(nn.Module):
    """Structure loss ``L_s = feat_weight * feat_scale * L_feat + pixel_weight * pixel_scale * L_pixel``
    (section 3.1).

    ``L_feat`` compares frozen features ``N(a)``, ``N(t)`` of the aligned image and the target:

    - ``feat_norm="paper"``: equation 2, ``||N(a) - N(t)||_2 / (C H W)`` per image (the paper's non-squared
      norm; ``squared=True`` gives Johnson et al.'s ``||.||_2^2 / (C H W)``), averaged over the batch;
    - ``feat_norm="unit"``: every feature vector (the ``C`` channels at one position) is scaled to unit
      length first, then ``sum_c (n_a - n_t)^2`` is averaged over positions and images (in ``[0, 4]``;
      LPIPS-style). This removes the arbitrary scale of (random or ImageNet) features, so the term measures
      how the local structure differs, whatever the network.

    ``N`` is a frozen VGG-16 up to relu2_2 (or ResNet-18 to layer1), ImageNet weights from the local cache, a
    fixed seeded random init otherwise. ``L_pixel`` is the mean squared pixel difference.

    ``feat_scale`` and ``pixel_scale`` (1 by default) put the terms on comparable scales:
    :meth:`calibrate` sets them to ``1 / term`` measured on one batch (at initialization), so that both terms
    start at 1 and the weights say how much each counts.

    Call with ``aligned`` ``(B, 1, H, W)`` and ``target`` ``(1|B, 1, H, W)``, gray ``[0, 1]``; returns
    ``{"total", "feat", "pixel"}`` scalars (``feat``, ``pixel``: the raw terms).
    """

    def __init__(
        self,
        feat_weight: float = 1.0,
        pixel_weight: float = 1.0,
        feature_net: str = "vgg16",
        squared: bool = False,
        pretrained: bool | str = True,
        seed: int = 0,
        feat_norm: str = "paper",
    ) -> None:
        super().__init__()
        if feat_norm not in ("paper", "unit"):
            raise ValueError(f"feat_norm must be 'paper' or 'unit', got {feat_norm!r}")
        self.feat_weight = float(feat_weight)
        self.pixel_weight = float(pixel_weight)
        self.squared = squared
        self.feat_norm = feat_norm
        self.feat_scale = 1.0
        self.pixel_scale = 1.0
        self.features = _feature_net(feature_net, pretrained, seed)

    def train(self, mode: bool = True) -> StructureLoss:
        super().train(mode)
        if self.features is not None:
            self.features.eval()  # frozen: BatchNorm (resnet18) keeps its statistics
        return self

    def _feat_term(self, aligned: Tensor, target: Tensor) -> Tensor:
        fa = self.features(gray_to_input(aligned))  # (B, C, H', W')
        with torch.no_grad():
            ft = self.features(gray_to_input(target))
        if self.feat_norm == "unit":
            fa = F.normalize(fa, dim=1, eps=1e-6)
            ft = F.normalize(ft, dim=1, eps=1e-6)
            return (fa - ft).pow(2).sum(1).mean()
        diff = (fa - ft).flatten(1)  # (B, CHW)
        chw = diff.shape[1]
        per_image = diff.pow(2).sum(1) if self.squared else torch.linalg.vector_norm(diff, dim=1)
        return (per_image / chw).mean()

    def _check(self, aligned: Tensor, target: Tensor) -> Tensor:
        if aligned.ndim != 4 or aligned.shape[1] != 1:
            raise ValueError(f"aligned must be (B, 1, H, W), got shape {tuple(aligned.shape)}")
        if target.ndim != 4 or target.shape[1:] != aligned.shape[1:] or target.shape[0] not in (1, aligned.shape[0]):
            raise ValueError(f"target shape {tuple(target.shape)} does not match aligned {tuple(aligned.shape)}")
        return target.to(aligned.dtype).expand_as(aligned)

    def forward(self, aligned: Tensor, target: Tensor) -> dict[str, Tensor]:
        target = self._check(aligned, target)
        pixel = F.mse_loss(aligned, target)
        feat = aligned.new_zeros(()) if self.features is None else self._feat_term(aligned, target)
        total = self.feat_weight * self.feat_scale * feat + self.pixel_weight * self.pixel_scale * pixel
        return {"total": total, "feat": feat, "pixel": pixel}

    @torch.no_grad()
    def calibrate(self, aligned: Tensor, target: Tensor) -> dict[str, float]:
        """Set ``feat_scale`` and ``pixel_scale`` to ``1 / term`` on this batch (1 for a term that is 0 or
        absent); returns them."""
        out = self.forward(aligned, target)
        feat, pixel = float(out["feat"]), float(out["pixel"])
        self.feat_scale = 1.0 / feat if self.features is not None and feat > 0 else 1.0
        self.pixel_scale = 1.0 / pixel if pixel > 0 else 1.0
        return {"feat_scale": self.feat_scale, "pixel_scale": self.pixel_scale}
