"""The networks of a run: built from a config for training, or rebuilt from saved weights.

Every "network from saved weights" in the package (a checkpoint for evaluation and bundling, a bundle for
prediction and ONNX export) goes through :func:`network_from_weights` / :func:`alignment_from_weights`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cianet.config import Config, config_from_dict
from cianet.data.canonical import read_canonical_crop
from cianet.errors import InputError
from cianet.labels import label_set_from
from cianet.models.alignment import AlignmentNet, crop_params, derive_bounds
from cianet.models.backbones import no_fill_on_meta, trunk_weights
from cianet.models.cianet import build_model
from cianet.models.resnet import STANDARD_WIDTH


def build_network(cfg: Config) -> nn.Module:
    """CIA-Net or the baseline as ``cfg.model`` says (random or ImageNet-initialized trunks)."""
    m = cfg.model
    n_classes = len(label_set_from(cfg.data.labels, cfg.data.box_labels))  # the data set's classes
    return build_model(
        m.kind,
        num_classes=n_classes,
        backbone=m.backbone,
        pretrained=m.pretrained,
        test_upsample=m.test_upsample,
        head_channels=m.head_channels,
        output_stride=m.output_stride,
        last_stage=m.last_stage,
        width=m.width,
    )


def check_pretrained(spec: Any, backbone: str, width: int = STANDARD_WIDTH, key: str = "model.width") -> None:
    """Fail now, before any data is read, when the initial weights ``spec`` (imagenet | none | PATH) cannot be
    had (cianet.models.backbones.pretrained_weights: the error says how to proceed) or do not fit ``width`` (set
    by the config ``key``)."""
    trunk_weights(backbone, spec, width, key)


def alignment_net_kwargs(cfg: Config) -> dict[str, Any]:
    """The AlignmentNet constructor arguments of a new alignment run (everything but ``pretrained``): the
    backbone, its width, the input size and the bounds (``cianet.models.alignment.derive_bounds``), centred as
    ``align.center`` says on the crop recorded beside ``align.canonical`` (``<stem>.json`` of
    ``cianet canonical``). A checkpoint stores them, so it reloads with exactly these bounds."""
    a = cfg.align
    record = read_canonical_crop(a.canonical) if a.canonical else None
    if record is None and a.canonical and a.center == "crop":
        print(
            f"warning: no crop record ({Path(a.canonical).with_suffix('.json').name}, written by `cianet "
            f"canonical`) beside {a.canonical}; the alignment bounds are centred on the identity",
            file=sys.stderr,
        )
    crop = None if record is None else crop_params(*record)
    bounds = derive_bounds(
        crop, center=a.center, max_shift=a.max_shift, max_scale=a.max_scale, max_rotation=a.max_rotation
    )
    return {"backbone": a.backbone, "input_size": a.input_size, "width": a.width, **bounds}


def build_alignment_net(
    cfg: Config, pretrained: bool | str | None = None, net_kwargs: dict[str, Any] | None = None
) -> nn.Module:
    """A new AlignmentNet for ``cfg`` (``net_kwargs``, e.g. a checkpoint's, instead of the config's)."""
    return AlignmentNet(
        pretrained=cfg.align.pretrained if pretrained is None else pretrained,
        **(alignment_net_kwargs(cfg) if net_kwargs is None else net_kwargs),
    )


def with_weights(
    build: Callable[[], nn.Module],
    state: dict[str, torch.Tensor],
    device: torch.device | str = "cpu",
    source: str = "<weights>",
) -> nn.Module:
    """``build()`` with ``state`` loaded, in eval mode on ``device``.

    The module is built on the meta device (no random initialization, which costs seconds for two ResNet
    trunks) and the saved tensors are assigned; a module holding state outside its state dict falls back
    to a normal build.
    """
    bad = non_finite(state)
    if bad:  # NaN weights would predict NaN for every image, reported as "ok"
        raise InputError(
            f"{source}: non-finite (NaN or infinite) weights in {bad[0]}"
            f"{f' and {len(bad) - 1} more tensors' if len(bad) > 1 else ''}"
        )
    try:
        with torch.device("meta"), no_fill_on_meta():
            module = build()
        module.load_state_dict(state, assign=True)
        if any(t.is_meta for t in list(module.parameters()) + list(module.buffers())):
            module = build()
            module.load_state_dict(state)
    except RuntimeError as exc:  # missing, unexpected or wrongly shaped tensors
        first = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc)[:200])
        raise InputError(f"{source}: the weights do not fit the network its config describes ({first})") from None
    return module.to(device).eval()


def non_finite(state: dict[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point tensors of ``state`` holding a NaN or an infinity, sorted.

    A sum is non-finite whenever one of its terms is, and summing is several times faster than ``isfinite``
    (which writes a mask as large as the weights): the per-element test runs only on the rare state whose
    sums are not all finite (a NaN, an infinity, or finite weights large enough to overflow a sum).
    """
    floats = {k: t for k, t in state.items() if torch.is_tensor(t) and t.is_floating_point()}
    if all(math.isfinite(t.sum(dtype=torch.float32).item()) for t in floats.values()):
        return []
    return sorted(k for k, t in floats.items() if not torch.isfinite(t).all())


def network_from_weights(
    config: dict[str, Any],
    state: dict[str, torch.Tensor],
    device: torch.device | str = "cpu",
    source: str = "<weights>",
) -> tuple[nn.Module, Config]:
    """(model in eval mode on ``device``, its Config) from a saved config dict and state dict."""
    cfg = config_from_dict(config, source=f"{source} config")
    cfg.model.pretrained = "none"  # the weights are the saved ones
    return with_weights(lambda: build_network(cfg), state, device, source), cfg


def alignment_from_weights(
    net_kwargs: dict[str, Any], state: dict[str, torch.Tensor], device: torch.device | str = "cpu"
) -> nn.Module:
    """A frozen AlignmentNet (eval mode, no gradients) from its constructor arguments and state dict."""
    net = with_weights(lambda: AlignmentNet(pretrained=False, **net_kwargs), state, device)
    for p in net.parameters():
        p.requires_grad_(False)
    return net
