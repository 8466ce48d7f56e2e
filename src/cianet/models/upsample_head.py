"""The test-time head on an upsampled grid (paper 3.3), computed without forming the upsampled features.

At test time F_bar (B, c5, h, w) is upsampled bilinearly to U x U before the head's 3x3 convolution. Done
directly, that convolution dominates inference (about 155 GMAC per image for ResNet-50 at 512 px, U = 128).
Bilinear upsampling and the convolution's per-tap channel mixing are both linear and act on different axes, so
they commute: mix channels on the native grid, then upsample. The result equals the direct computation up to
float rounding (tested against a float64 reference).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _shifted_bilinear(n: int, out: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(3, out, n)``: the bilinear upsampling matrix ``n -> out`` (align_corners=False), shifted by -1, 0, +1 rows.

    Row ``i`` of slice ``d`` is row ``i + d - 1`` of the upsampling matrix (zero outside), i.e. tap ``d`` of a
    3x3 convolution with zero padding applied to the upsampled signal.
    """
    eye = torch.eye(n, dtype=dtype, device=device)[None, None]  # (1, 1, n, n)
    up = F.interpolate(eye, size=(out, n), mode="bilinear", align_corners=False)[0, 0]  # (out, n)
    taps = torch.zeros(3, out, n, dtype=dtype, device=device)
    taps[0, 1:] = up[:-1]
    taps[1] = up
    taps[2, :-1] = up[1:]
    return taps


def upsampled_conv3x3(f_bar: Tensor, weight: Tensor, size: int) -> Tensor:
    """``conv3x3(upsample(f_bar, size), weight)`` (padding 1, no bias) without forming the upsampled features.

    Bilinear upsampling and the per-tap channel mixing of a convolution are both linear and act on different
    axes, so they commute: each of the 9 taps mixes channels on the native ``h x w`` grid (one 1x1 convolution
    with ``9 * O`` outputs), and the taps' upsampled-and-shifted sums are two small matrix products with the
    shifted upsampling matrices. Exact up to rounding; for a 2048 -> 512 head at 16 -> 128 this is ~60x fewer
    multiply-adds than the direct convolution.

    Args:
        f_bar: ``(B, C, h, w)`` features.
        weight: ``(O, C, 3, 3)`` convolution weight.
        size: output grid side ``U``.

    Returns:
        ``(B, O, U, U)``.
    """
    b, c, h, w = f_bar.shape
    o = weight.shape[0]
    if weight.shape[1:] != (c, 3, 3):
        raise ValueError(f"weight must be (O, {c}, 3, 3), got {tuple(weight.shape)}")
    mix = weight.permute(2, 3, 0, 1).reshape(9 * o, c, 1, 1)  # tap-major: (ky, kx, O)
    z = F.conv2d(f_bar, mix)  # (B, 9 O, h, w)
    # Both contractions as plain matrix products over explicit layouts, channels innermost: the result comes
    # out channels-last, the layout the head's 1x1 convolution runs fastest in (10x NCHW's on CPU, measured).
    z = z.permute(0, 2, 3, 1).reshape(b, h, w, 3, 3, o).permute(0, 1, 3, 4, 2, 5)  # (B, h, ky, kx, w, O)
    z = z.reshape(b * h * 3, 3 * w, o)
    ry = _shifted_bilinear(h, size, z.dtype, f_bar.device)  # (3, U, h)
    rx = _shifted_bilinear(w, size, z.dtype, f_bar.device)  # (3, U, w)
    cols = rx.permute(1, 0, 2).reshape(size, 3 * w)  # (U, (kx, w))
    t = torch.matmul(cols, z)  # columns upsampled, kx summed: (B h ky, U, O)
    rows = ry.permute(1, 2, 0).reshape(size, h * 3)  # (U, (h, ky))
    y = torch.matmul(rows, t.view(b, h * 3, size * o))  # rows upsampled, ky summed: (B, U, U O)
    return y.view(b, size, size, o).permute(0, 3, 1, 2)  # (B, O, U, U), channels-last strides


def upsampled_head(head: nn.Module, f_bar: Tensor, size: int) -> Tensor:
    """``head(interpolate(f_bar, size, bilinear))`` of a ``cianet.models.cianet.GridHead``, computed factorized.

    ``(B, C, h, w)`` -> ``(B, num_classes, U, U)``; equal to the direct computation up to float rounding.
    """
    conv = head.conv
    if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.stride != (1, 1) or conv.dilation != (1, 1):
        raise ValueError("upsampled_head needs the GridHead layout: 3x3 conv, padding 1, stride 1, dilation 1")
    y = upsampled_conv3x3(f_bar, conv.weight, size)
    if conv.bias is not None:  # a BatchNorm folded into the conv (cianet.models.folding): a constant per channel
        y = y.add_(conv.bias.view(1, -1, 1, 1).to(y.dtype))
    return head.cls(head.relu(head.bn(y)))
