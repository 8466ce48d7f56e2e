"""ResNet backbones (:mod:`cianet.models.resnet`, torchvision-compatible) and the input convention shared by every
network.

Networks take ``(B, 3, S, S)`` tensors: the grayscale X-ray in ``[0, 1]`` replicated to three channels and
normalized with the ImageNet statistics (:func:`gray_to_input`); ``S`` is a multiple of 32 so that C4 and C5
are exactly ``S/16`` and ``S/32``.

Initial weights of a backbone (:func:`pretrained_weights`, config ``model.pretrained`` / ``align.pretrained``,
flag ``--pretrained``): ``"imagenet"`` is torchvision's ImageNet weights, read from the torch hub cache
(``torch.hub.get_dir()/checkpoints``) or downloaded through torchvision's weights API when absent (with a
time limit); when neither works it is an error that says how to proceed, never a silent random init.
``"none"`` is random initialization; any other value is a state-dict file of the torchvision backbone.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import OrderedDict
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from cianet.errors import InputError, MissingPathError
from cianet.models.resnet import STANDARD_WIDTH, resnet

log = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: name -> (C3, C4, C5 channels)
RESNET_CHANNELS: dict[str, tuple[int, int, int]] = {
    "resnet18": (128, 256, 512),
    "resnet34": (128, 256, 512),
    "resnet50": (512, 1024, 2048),
    "resnet101": (512, 1024, 2048),
}
#: stage name -> (last torchvision layer, stride without dilation)
STAGES: dict[str, tuple[str, int]] = {"c3": ("layer2", 8), "c4": ("layer3", 16), "c5": ("layer4", 32)}

#: seconds a download of ImageNet weights may stall before it is given up (an offline machine fails fast)
DOWNLOAD_TIMEOUT_S = 60


def gray_to_input(x: Tensor) -> Tensor:
    """Grayscale ``[0, 1]`` images to network input.

    Args:
        x: ``(B, 1, H, W)`` float tensor in ``[0, 1]``.

    Returns:
        ``(B, 3, H, W)``: the channel replicated three times and normalized with the ImageNet mean/std.
    """
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"gray_to_input expects a (B, 1, H, W) tensor, got shape {tuple(x.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x.expand(-1, 3, -1, -1) - mean) / std


def check_input(x: Tensor, channels: int = 3, name: str = "input") -> None:
    """Raise ``ValueError`` naming the shape unless ``x`` is ``(B, channels, H, W)`` with H, W multiples of 32."""
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"{name} must be a (B, {channels}, H, W) tensor, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % 32 or w % 32 or h == 0 or w == 0:
        raise ValueError(f"{name} spatial size must be a positive multiple of 32, got shape {tuple(x.shape)}")


def _weights_enum(name: str) -> Any:
    """torchvision's weights enum for ``name`` (e.g. ``ResNet50_Weights``)."""
    # imported here: torchvision's import costs seconds (cianet.models.resnet says why) and only ImageNet
    # weights need it
    import torchvision.models as tvm

    enums = {
        "resnet18": tvm.ResNet18_Weights,
        "resnet34": tvm.ResNet34_Weights,
        "resnet50": tvm.ResNet50_Weights,
        "resnet101": tvm.ResNet101_Weights,
        "vgg16": tvm.VGG16_Weights,
    }
    if name not in enums:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(enums)}")
    return enums[name]


def cached_weights_path(weights: Any) -> Path:
    """Where torch hub caches the checkpoint of a torchvision weights entry."""
    filename = os.path.basename(weights.url)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def pretrained_spec(value: Any) -> str:
    """``"imagenet"``, ``"none"`` or a file path from a ``pretrained`` setting (true/false: imagenet/none)."""
    if value is None or value is False:
        return "none"
    if value is True:
        return "imagenet"
    text = str(value).strip()
    return text.lower() if text.lower() in ("imagenet", "none") else text


def pretrained_weights(name: str, spec: Any) -> dict[str, Tensor] | None:
    """The initial state dict of torchvision model ``name`` for ``spec`` (see :func:`pretrained_spec`); None
    for random initialization. Errors (cianet.errors: MissingPathError, InputError) say how to proceed."""
    spec = pretrained_spec(spec)
    if spec == "none":
        return None
    if spec == "imagenet":
        return imagenet_weights(name)
    return state_dict_file(name, Path(spec))


def imagenet_weights(name: str) -> dict[str, Tensor]:
    """ImageNet state dict of ``name``: the classic ``IMAGENET1K_V1`` entry (the paper's ResNet-50), or any other
    ImageNet entry of the enum, from the torch hub cache; else downloaded through torchvision's weights API."""
    enum = _weights_enum(name)
    entries = [enum.IMAGENET1K_V1] + [w for w in enum if w is not enum.IMAGENET1K_V1]
    for weights in entries:
        path = cached_weights_path(weights)
        if path.is_file():
            try:
                return weights.get_state_dict(progress=False, check_hash=False)
            except Exception as exc:  # a torn or foreign file in the cache
                raise InputError(
                    f"cached ImageNet weights {path} for {name} are unreadable ({type(exc).__name__}: "
                    f"{exc}); delete the file to download it again"
                ) from None
    path = cached_weights_path(entries[0])
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # never hang on a network that does not answer
    try:
        log.info("downloading ImageNet weights for %s to %s", name, path)
        return entries[0].get_state_dict(progress=False)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MissingPathError(
            f"ImageNet weights for {name} are not in the torch hub cache ({path}) and could not be downloaded "
            f"({reason}): copy {entries[0].url} to that path (TORCH_HOME moves it to $TORCH_HOME/hub/checkpoints), "
            "or pass --pretrained PATH (a state-dict file) or --pretrained none (random init)"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def state_dict_file(name: str, path: Path) -> dict[str, Tensor]:
    """A torchvision ``name`` state dict read from ``path`` (``torch.save``: loaded with ``weights_only=True``;
    ``.safetensors``); the classifier (``fc.*``) may be missing, every other tensor must fit."""
    if not path.is_file():
        raise MissingPathError(f"--pretrained {path}: no such file (expected imagenet, none or a state-dict file)")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"--pretrained {path}: not a readable state-dict file ({type(exc).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise InputError(f"--pretrained {path}: expected a dict of tensors (a torchvision {name} state dict)")
    net = resnet(name)
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        first = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc)[:200])
        raise InputError(f"--pretrained {path}: the tensors do not fit a {name} ({first})") from None
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        bad = (missing or unexpected)[0]
        raise InputError(
            f"--pretrained {path}: not a {name} state dict ({len(missing)} tensors missing, "
            f"{len(unexpected)} unexpected, e.g. {bad})"
        )
    return net.state_dict()


#: the in-place fills of weight initialization, and torch.nn.init's functions (each dispatches itself, so a
#: mode sees the function, not the fill inside it): nothing to fill on a meta tensor
_INIT_FILLS = frozenset(
    {Tensor.normal_, Tensor.uniform_, Tensor.zero_, Tensor.fill_, Tensor.fill_diagonal_, Tensor.random_}
    | {getattr(nn.init, name) for name in dir(nn.init) if name.endswith("_") and not name.startswith("_")}
)


class _NoFillOnMeta(TorchFunctionMode):
    """Skips the initializers' in-place fills of meta tensors (they hold no values); any other call runs as is.

    A meta ``normal_`` still runs torch's Python reference code to work out its result (about 10 ms a call,
    and the first one imports ``torch._dynamo``: seconds): most of the cost of building a meta network, the
    network that saved weights are then assigned to (cianet.run.networks.with_weights)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _INIT_FILLS:
            filled = args[0] if args else kwargs.get("tensor")  # torch.nn.init passes it by keyword
            if isinstance(filled, Tensor) and filled.is_meta:
                return filled
        return func(*args, **kwargs)


def no_fill_on_meta() -> AbstractContextManager:
    """:class:`_NoFillOnMeta` while modules are built on the meta device, else nothing (a real build draws its
    random weights exactly as before)."""
    return _NoFillOnMeta() if torch.get_default_device().type == "meta" else nullcontext()


def trunk_channels(name: str, upto: str, width: int = STANDARD_WIDTH) -> int:
    """Channels of stage ``upto`` (c3 | c4 | c5) of backbone ``name`` whose stem has ``width`` channels."""
    return RESNET_CHANNELS[name][list(STAGES).index(upto)] * width // STANDARD_WIDTH


def check_width(width: int, pretrained: Any, key: str = "model.width") -> None:
    """Initial weights (ImageNet's or a torchvision file) exist only for the standard width: anything else must
    start from random weights. Raises InputError saying so (naming the config ``key`` that set the width)."""
    if width != STANDARD_WIDTH and pretrained_spec(pretrained) != "none":
        raise InputError(
            f"{key} {width} needs pretrained none: initial weights ({pretrained_spec(pretrained)}) exist "
            f"only for the standard width {STANDARD_WIDTH}"
        )


def trunk_weights(
    name: str, spec: Any, width: int = STANDARD_WIDTH, key: str = "model.width"
) -> dict[str, Tensor] | None:
    """:func:`pretrained_weights` of a trunk of ``width`` (:func:`check_width` first: a narrow trunk takes none,
    and is refused before any download)."""
    check_width(width, spec, key)
    return pretrained_weights(name, spec)


def resnet_trunk(
    name: str = "resnet50",
    pretrained: bool | str = False,
    upto: str = "c5",
    state_dict: dict[str, Tensor] | None = None,
    output_stride: int = 32,
    width: int = STANDARD_WIDTH,
) -> tuple[nn.Sequential, int]:
    """A torchvision ResNet cut after stage 4 (``upto="c4"``, stride 16) or stage 5 (``"c5"``, stride 32).

    Args:
        name: ``resnet18 | resnet34 | resnet50 | resnet101``.
        pretrained: initial weights, "imagenet" | "none" | a state-dict file (true/false: imagenet/none; see
            :func:`pretrained_weights`); ignored when ``state_dict`` is given.
        upto: ``"c4"`` or ``"c5"``.
        state_dict: torchvision ResNet state dict to load (lets a caller read the checkpoint once for
            several trunks).
        width: channels of the stem (64: the standard network; see :func:`cianet.models.resnet.resnet`); only
            64 takes initial weights.

    Returns:
        ``(trunk, channels)``; ``trunk`` maps ``(B, 3, S, S)`` to ``(B, channels, S/16|S/32, S/16|S/32)``.
        Its children keep torchvision's names (``conv1, bn1, relu, maxpool, layer1..layer4``).
    """
    if name not in RESNET_CHANNELS:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(RESNET_CHANNELS)}")
    if upto not in STAGES:
        raise ValueError(f"upto must be one of {sorted(STAGES)}, got {upto!r}")
    if state_dict is None:
        state_dict = trunk_weights(name, pretrained, width)
    elif width != STANDARD_WIDTH:
        raise InputError(f"initial weights fit only the standard width {STANDARD_WIDTH}, not width {width}")
    with no_fill_on_meta():
        net = resnet(name, width=width)
    if state_dict is not None:
        net.load_state_dict(state_dict)
    layers = ["layer1", "layer2", "layer3", "layer4"]
    names = ["conv1", "bn1", "relu", "maxpool", *layers[: layers.index(STAGES[upto][0]) + 1]]
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    # Stages whose stride becomes dilation: 16 -> layer4, 8 -> layer3 and layer4 (DeepLab's rule).
    dilation = 1
    for stage, stage_stride in (("layer3", 16), ("layer4", 32)):
        if stage_stride > output_stride:
            dilation = dilate_stage(getattr(net, stage), dilation)
    trunk = nn.Sequential(OrderedDict((n, getattr(net, n)) for n in names))
    return trunk, trunk_channels(name, upto, width)


def stage_stride(upto: str, output_stride: int = 32) -> int:
    """Stride of stage ``upto`` of a trunk built with ``output_stride``."""
    return min(STAGES[upto][1], output_stride)


def dilate_stage(stage: nn.Sequential, previous: int) -> int:
    """Turn a ResNet stage's stride 2 into dilation, in place; returns the stage's new dilation.

    As torchvision's ``replace_stride_with_dilation`` (which BasicBlock, hence ResNet-18/34, refuses): the
    first block keeps the previous dilation and loses its stride, the following blocks' 3x3 convolutions get
    twice the previous dilation. Weights are unchanged, so ImageNet initialization still applies.
    """
    new = previous * 2
    for b, block in enumerate(stage):
        for conv in (m for m in block.modules() if isinstance(m, nn.Conv2d)):
            if conv.stride != (1, 1):
                conv.stride = (1, 1)
            if conv.kernel_size == (3, 3):
                d = previous if b == 0 else new
                conv.dilation, conv.padding = (d, d), (d, d)
    return new
