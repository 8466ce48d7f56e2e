"""Inference-only rewrites of a trained network that keep its function: BatchNorm folded into convolutions.

In eval mode a BatchNorm layer is a fixed per-channel affine map ``y = a * x + b``; after a convolution it
folds into that convolution's weights (scaled by ``a`` per output channel) and bias (``b``, plus ``a`` times
the old bias). The folded network computes the same function up to float rounding, with one pass over each
activation fewer per folded layer: on a 2-core CPU, where those passes are memory-bound, prediction gets
faster (docs/performance.md). It also means that under bfloat16 autocast the normalization happens inside
the convolution's float32 accumulator instead of after the output has been rounded to bfloat16.

Only for inference: a folded network has no BatchNorm to train, so :func:`fold_batchnorm` refuses a module in
training mode.
"""

from __future__ import annotations

import torch
from torch import nn

#: attribute pairs (convolution, its BatchNorm) in torchvision's ResNet blocks and cianet's GridHead
_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"), ("conv", "bn"))


@torch.no_grad()
def fold_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Make ``conv`` compute ``bn(conv(x))`` (``bn`` with its running statistics), in place; returns ``conv``.

    The per-channel scale and shift are computed in float64 and the weights scaled once in their own dtype
    (one rounding); the new tensors keep the weight's memory format. ``conv`` gains a bias if it had none.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    if conv.out_channels != bn.num_features:
        raise ValueError(
            f"cannot fold BatchNorm of {bn.num_features} channels into a convolution with {conv.out_channels} outputs"
        )
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)  # (O,)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    w = conv.weight
    conv.weight = nn.Parameter(w * scale.to(w.dtype).view(-1, 1, 1, 1), requires_grad=False)
    conv.bias = nn.Parameter((beta + (bias - mean) * scale).to(w.dtype), requires_grad=False)
    return conv


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every BatchNorm that directly follows a convolution into it, in place; returns how many were folded.

    Recognized: a ``Conv2d`` followed by a ``BatchNorm2d`` among an ``nn.Sequential``'s children (a ResNet's stem,
    a downsample branch) and the attribute pairs ``conv1/bn1``, ``conv2/bn2``, ``conv3/bn3`` (torchvision's
    ResNet blocks) and ``conv/bn`` (:class:`cianet.models.cianet.GridHead`) where the block applies the
    BatchNorm right after the convolution. Each folded BatchNorm becomes ``nn.Identity``. BatchNorms elsewhere
    are left as they are.

    Raises:
        ValueError: ``module`` is in training mode (its BatchNorms still normalize with batch statistics).
    """
    if module.training:
        raise ValueError(
            "fold_batchnorm needs a module in eval mode (call .eval() first): folding freezes "
            "BatchNorm's running statistics into the weights"
        )
    n = 0
    for parent in list(module.modules()):
        if isinstance(parent, nn.Sequential):
            names = list(parent._modules)
            for a, b in zip(names, names[1:]):
                conv, bn = parent._modules[a], parent._modules[b]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    fold_into_conv(conv, bn)
                    parent._modules[b] = nn.Identity()
                    n += 1
        for a, b in _PAIRS:
            conv, bn = parent._modules.get(a), parent._modules.get(b)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                fold_into_conv(conv, bn)
                setattr(parent, b, nn.Identity())
                n += 1
    return n


def for_inference(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """``model`` in eval mode with its BatchNorms folded (:func:`fold_batchnorm`) and, with ``channels_last``,
    its weights in the channels-last memory format (oneDNN's native layout on CPU: no reorder around each
    convolution); in place, returned for chaining. Gradients are switched off for its parameters.

    The layout comes first, so that folding writes its scaled weights straight in it: one transient copy of
    a convolution's weight at a time, never of the whole network."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    fold_batchnorm(model)
    return model
