"""CIA-Net (paper section 3.2) and the Li et al. 2018 baseline ("Base").

CIA-Net has two branches on a ``(B, 3, S, S)`` input (``h = w = S/32``):

* the upper branch, a full ResNet to C5: ``F+`` of shape ``(B, c5, h, w)``;
* the contrast induced attention branch, a second ResNet trunk to C4 shared by the positive and the
  negative image, then 2x2 max pooling and a 1x1 convolution to one channel: ``M+``, ``M-`` ``(B, h, w)``.

``dM = |M+ - M-|`` is normalized per image so that its ``h*w`` cells sum to ``h*w`` and weights ``F+``
cell by cell (equation 3); a small head (the "last two convolutions": 3x3 conv + BN + ReLU, 1x1 conv)
gives class-wise grid logits ``(B, C, h, w)``. At test time ``F_bar`` may be upsampled bilinearly
(16x16 -> 128x128 in the paper) before the head.

Both models return logits, never probabilities.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cianet.models.backbones import check_input, resnet_trunk, stage_stride, trunk_weights
from cianet.models.resnet import STANDARD_WIDTH
from cianet.models.upsample_head import upsampled_head


def normalize_delta(m_pos: Tensor, m_neg: Tensor, eps: float = 1e-6) -> Tensor:
    """The normalized contrast attention ``delta = h*w * (|M+ - M-| + eps) / sum(|M+ - M-| + eps)``.

    ``eps`` is added to every cell *before* normalizing, so the cells always sum to exactly ``h*w`` and
    ``delta`` degrades gracefully to all ones (CIA-Net becomes the baseline) when the two maps agree.

    Args:
        m_pos: ``(B, h, w)`` attention map of the positive image.
        m_neg: ``(B, h, w)`` or ``(1, h, w)`` attention map of the negative image.

    Returns:
        ``(B, h, w)``.
    """
    dm = (m_pos - m_neg).abs() + eps  # (B, h, w)
    return dm / dm.mean(dim=(-2, -1), keepdim=True)


class GridHead(nn.Module):
    """The "last two convolutions": 3x3 conv + BN + ReLU, then a 1x1 conv to one logit per class and cell.

    The final bias starts at ``log(p / (1 - p))`` with ``p = prior_prob`` (as the focal-loss prior init):
    with p = 0.5 per cell, the MIL image probability ``1 - prod(1 - p_j)`` over a 16x16 grid would start
    at ~1 for every class and the negative-image term of equation 5 would explode.
    """

    def __init__(
        self, in_channels: int, num_classes: int, mid_channels: int = 512, prior_prob: float | None = 0.01
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, mid_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(mid_channels)
        self.relu = nn.ReLU(inplace=True)
        self.cls = nn.Conv2d(mid_channels, num_classes, 1)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.cls.weight, std=0.01)
        if prior_prob is None:
            nn.init.zeros_(self.cls.bias)
        else:
            if not 0.0 < prior_prob < 1.0:
                raise ValueError(f"prior_prob must be in (0, 1), got {prior_prob}")
            nn.init.constant_(self.cls.bias, math.log(prior_prob / (1.0 - prior_prob)))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, c, h, w)`` features -> ``(B, num_classes, h, w)`` logits."""
        return self.cls(self.relu(self.bn(self.conv(x))))


class _GridModel(nn.Module):
    """Shared parts of CIA-Net and the baseline: the upper trunk, the head and test-time upsampling."""

    def __init__(
        self,
        num_classes: int,
        backbone: str,
        test_upsample: int | None,
        head_channels: int,
        prior_prob: float | None,
        state_dict: dict | None,
        output_stride: int = 32,
        last_stage: str = "c5",
        width: int = STANDARD_WIDTH,
    ) -> None:
        super().__init__()
        if test_upsample is not None and test_upsample <= 0:
            raise ValueError(f"test_upsample must be a positive grid size or None, got {test_upsample}")
        self.num_classes = num_classes
        self.backbone = backbone
        self.test_upsample = test_upsample
        self.output_stride, self.last_stage = output_stride, last_stage
        self.upper, c5 = resnet_trunk(
            backbone, upto=last_stage, state_dict=state_dict, output_stride=output_stride, width=width
        )
        self.head = GridHead(c5, num_classes, head_channels, prior_prob)

    def _should_upsample(self, upsample: bool | None) -> bool:
        if upsample is None:
            return (not self.training) and self.test_upsample is not None
        if upsample and self.test_upsample is None:
            raise ValueError("upsample=True needs the model to be built with test_upsample=<grid size>")
        return bool(upsample)

    #: compute the upsampled test-time head factorized (same result, ~60x fewer multiply-adds at 16 -> 128);
    #: False gives the literal "upsample, then convolve" (kept for checks and benchmarks)
    factorized_test_head: bool = True

    def _head(self, f_bar: Tensor, upsample: bool | None) -> Tensor:
        """``(B, c5, h, w)`` -> logits ``(B, C, h, w)`` or ``(B, C, U, U)`` when upsampling."""
        if self._should_upsample(upsample):
            if self.factorized_test_head and isinstance(self.head, GridHead):  # needs its 3x3 conv layout
                return upsampled_head(self.head, f_bar, self.test_upsample)
            size = (self.test_upsample, self.test_upsample)
            f_bar = F.interpolate(f_bar, size=size, mode="bilinear", align_corners=False)
        return self.head(f_bar)

    def test_grid_logits(self, f_bar: Tensor) -> Tensor:
        """Logits on the test-time grid from ``f_bar`` (``forward(..., return_feats=True)["f_bar"]``).

        ``(B, C, U, U)`` with ``U = test_upsample`` when the model has one, else the native ``(B, C, h, w)``;
        in either training or eval mode, so callers need not reach into the head.
        """
        return self._head(f_bar, self.test_upsample is not None)


class CIANet(_GridModel):
    """Contrast induced attention network.

    Args:
        num_classes: grid logit channels (14 for NIH).
        backbone: ``resnet18 | resnet34 | resnet50 | resnet101`` for both branches.
        pretrained: initial weights of both trunks: "imagenet" | "none" | a state-dict file (true/false:
            imagenet/none; :func:`cianet.models.backbones.pretrained_weights`).
        test_upsample: grid size to upsample ``F_bar`` to before the head in eval mode (paper: 128), or None.
        head_channels: channels of the head's 3x3 conv.
        prior_prob: initial per-cell probability set through the final bias (None: zero bias).
        delta_eps: the ``eps`` of :func:`normalize_delta`.
        width: channels of both trunks' stems (64: the standard ResNet; others scale every stage alike and
            start from random weights).
    """

    def __init__(
        self,
        num_classes: int = 14,
        backbone: str = "resnet50",
        pretrained: bool | str = False,
        test_upsample: int | None = None,
        head_channels: int = 512,
        prior_prob: float | None = 0.01,
        delta_eps: float = 1e-6,
        output_stride: int = 32,
        last_stage: str = "c5",
        width: int = STANDARD_WIDTH,
    ) -> None:
        state_dict = trunk_weights(backbone, pretrained, width)  # read once for both trunks
        super().__init__(
            num_classes,
            backbone,
            test_upsample,
            head_channels,
            prior_prob,
            state_dict,
            output_stride,
            last_stage,
            width,
        )
        self.delta_eps = delta_eps
        # The attention trunk ends one stage before the upper branch (paper: C4 vs C5); max pooling brings
        # its blob onto F+'s grid (paper: 2x2 from stride 16 to 32; nothing to do when both are dilated).
        attn_stage = {"c5": "c4", "c4": "c3"}[last_stage]
        attn_stride, grid_stride = stage_stride(attn_stage, output_stride), stage_stride(last_stage, output_stride)
        self.attn_trunk, c4 = resnet_trunk(
            backbone, upto=attn_stage, state_dict=state_dict, output_stride=output_stride, width=width
        )
        self.attn_pool = nn.MaxPool2d(grid_stride // attn_stride) if grid_stride > attn_stride else nn.Identity()
        # No bias: it would cancel in |M+ - M-| and never receive a gradient.
        self.attn_conv = nn.Conv2d(c4, 1, 1, bias=False)

    def attention_map(self, x: Tensor) -> Tensor:
        """Attention map ``M`` of images ``x`` ``(B, 3, S, S)`` -> ``(B, S/32, S/32)``.

        Maps of fixed negatives can be computed once (in eval mode) and passed to ``forward(m_neg=...)``.
        """
        check_input(x, name="attention_map input")
        # Under bfloat16 autocast this branch computes in bfloat16 too: on a phantom-trained model the maps
        # move by ~1% of |M+ - M-| (docs/performance.md). The contrast is only ill-conditioned for an image
        # paired with itself (|M+ - M-| is then rounding noise in any precision), which pairing never does.
        blob = self.attn_trunk(x)  # (B, c4, S/16, S/16)
        return self.attn_conv(self.attn_pool(blob))[:, 0]  # (B, S/32, S/32)

    def forward(
        self,
        pos: Tensor,
        neg: Tensor | None = None,
        m_neg: Tensor | None = None,
        upsample: bool | None = None,
        return_feats: bool = False,
    ) -> dict[str, Tensor]:
        """Grid logits of ``pos`` given a negative image ``neg`` or its precomputed map ``m_neg``.

        Args:
            pos: ``(B, 3, S, S)`` positive (query) images.
            neg: ``(B|1, 3, S, S)`` paired negative images (one image is broadcast over the batch).
            m_neg: ``(B|1, S/32, S/32)`` precomputed ``attention_map(neg)``, instead of ``neg``.
            upsample: upsample ``F_bar`` to ``test_upsample`` before the head; None means "iff eval mode
                and ``test_upsample`` is set".
            return_feats: also return ``feats`` (``F+``) and ``f_bar``, ``(B, c5, h, w)``.

        Returns:
            ``logits`` ``(B, C, h, w)`` (``(B, C, U, U)`` when upsampling), ``m_pos``, ``m_neg`` and
            ``delta`` ``(B, h, w)``.

        When ``neg`` is given it goes through the attention trunk in one batch with ``pos``, so in
        training mode the trunk's BatchNorm statistics are those of the joint positive+negative batch.
        """
        check_input(pos, name="pos")
        if (neg is None) == (m_neg is None):
            raise ValueError("CIANet.forward needs exactly one of neg (images) or m_neg (attention maps)")
        b = pos.shape[0]
        if neg is not None:
            if neg.shape[1:] != pos.shape[1:] or neg.shape[0] not in (1, b):
                raise ValueError(f"neg shape {tuple(neg.shape)} does not match pos shape {tuple(pos.shape)}")
            maps = self.attention_map(torch.cat([pos, neg], dim=0))  # one pass for both: (B + Bn, h, w)
            m_pos, m_neg = maps[:b], maps[b:]
        else:
            m_pos = self.attention_map(pos)
            if m_neg.ndim != 3 or m_neg.shape[1:] != m_pos.shape[1:] or m_neg.shape[0] not in (1, b):
                raise ValueError(
                    f"m_neg shape {tuple(m_neg.shape)} does not match attention maps {tuple(m_pos.shape)} of pos"
                )
        m_neg = m_neg.expand_as(m_pos)
        delta = normalize_delta(m_pos, m_neg, self.delta_eps)  # (B, h, w)
        feats = self.upper(pos)  # (B, c5, h, w)
        f_bar = feats * delta.unsqueeze(1)  # equation 3, broadcast over channels
        out = {"logits": self._head(f_bar, upsample), "m_pos": m_pos, "m_neg": m_neg, "delta": delta}
        if return_feats:
            out["feats"] = feats
            out["f_bar"] = f_bar
        return out


class Baseline(_GridModel):
    """Li et al. 2018 as the paper's "Base": CIA-Net without the attention branch (``F_bar = F+``).

    The constructor takes CIA-Net's arguments (attention-only ones are accepted and ignored) and its
    parameter names match CIA-Net's upper branch and head, so ``cianet.load_state_dict(base.state_dict(),
    strict=False)`` transfers them.
    """

    def __init__(
        self,
        num_classes: int = 14,
        backbone: str = "resnet50",
        pretrained: bool | str = False,
        test_upsample: int | None = None,
        head_channels: int = 512,
        prior_prob: float | None = 0.01,
        delta_eps: float = 1e-6,
        output_stride: int = 32,
        last_stage: str = "c5",
        width: int = STANDARD_WIDTH,
    ) -> None:
        del delta_eps  # attention only
        state_dict = trunk_weights(backbone, pretrained, width)
        super().__init__(
            num_classes,
            backbone,
            test_upsample,
            head_channels,
            prior_prob,
            state_dict,
            output_stride,
            last_stage,
            width,
        )

    def forward(
        self,
        pos: Tensor,
        neg: Tensor | None = None,
        m_neg: Tensor | None = None,
        upsample: bool | None = None,
        return_feats: bool = False,
    ) -> dict[str, Tensor]:
        """``pos`` ``(B, 3, S, S)`` -> ``{"logits": (B, C, h, w)}``; ``neg``/``m_neg`` are ignored."""
        del neg, m_neg  # accepted so the engine calls both models the same way
        check_input(pos, name="pos")
        feats = self.upper(pos)  # (B, c5, h, w)
        out = {"logits": self._head(feats, upsample)}
        if return_feats:
            out["feats"] = feats
            out["f_bar"] = feats
        return out


def grid_side(image_size: int, output_stride: int = 32, last_stage: str = "c5") -> int:
    """Side of the native grid (``F+``, ``M``, logits) of a model built with these settings at ``image_size``."""
    return image_size // stage_stride(last_stage, output_stride)


def build_model(
    kind: str = "cianet",
    num_classes: int = 14,
    backbone: str = "resnet50",
    pretrained: bool | str = False,
    test_upsample: int | None = None,
    channels_last: bool = False,
    **kw,
) -> nn.Module:
    """Build ``"cianet"`` (:class:`CIANet`) or ``"baseline"`` (:class:`Baseline`).

    ``channels_last=True`` converts the parameters to the channels-last memory format (feed it
    ``x.contiguous(memory_format=torch.channels_last)`` for the speed-up on GPUs). Extra keyword
    arguments go to the constructor (``head_channels``, ``prior_prob``, ``delta_eps``).
    """
    kinds = {"cianet": CIANet, "baseline": Baseline, "base": Baseline}
    if kind not in kinds:
        raise ValueError(f"unknown model kind {kind!r}; expected 'cianet' or 'baseline'")
    model = kinds[kind](
        num_classes=num_classes, backbone=backbone, pretrained=pretrained, test_upsample=test_upsample, **kw
    )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
