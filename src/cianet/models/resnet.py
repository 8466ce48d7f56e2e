"""ResNet-18/34/50/101 (He et al. 2016), built here rather than imported from torchvision.

Why: importing ``torchvision.models`` also imports ``torchvision.ops``, which imports ``torch._dynamo``: about
2 s of every process that builds a network on a 2-core CPU (each ``cianet train``, ``predict``, ``bench``, each
torchrun rank), for nothing cianet uses. torchvision is still what ``--pretrained imagenet`` downloads through,
and what the paper recipe's VGG-16 feature net comes from (both import it where they need it).

The networks are interchangeable with torchvision's ``resnet18 .. resnet101(weights=None)``, which the tests
check against torchvision itself:

- the same module tree and parameter names (``conv1, bn1, relu, maxpool, layer1..layer4, avgpool, fc``; blocks
  with ``conv1/bn1 .. conv3/bn3`` and ``downsample``), so torchvision state dicts (ImageNet weights, saved runs
  and bundles) load unchanged;
- the same operations in the same order, so outputs are bit-identical;
- the same random draws: modules are created in torchvision's order (the classifier ``fc`` included, whose
  default init draws from the generator before the He-normal pass), then every convolution is re-drawn
  He-normal (fan-out) in module order, so a seeded build gives torchvision's weights to the bit and a run
  trained before this module existed retrains to the same weights.
"""

from __future__ import annotations

from torch import Tensor, nn

#: name -> (block kind, blocks per stage)
ARCHITECTURES: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
}
#: output channels of a block relative to its width
EXPANSION = {"basic": 1, "bottleneck": 4}
#: channels of the stem and of the first stage's blocks in He et al.'s networks (and ImageNet's weights)
STANDARD_WIDTH = 64


def stage_widths(width: int = STANDARD_WIDTH) -> tuple[int, int, int, int]:
    """Block widths of the four stages of a network whose stem has ``width`` channels (doubling per stage)."""
    return (width, 2 * width, 4 * width, 8 * width)


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and the identity (or a strided 1x1 projection) added before the last ReLU."""

    def __init__(self, c_in: int, width: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        # attribute order = registration order = the order of the He-normal pass (torchvision's)
        self.conv1 = _conv(c_in, width, 3, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv(width, width, 3)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:  # (B, c_in, H, W) -> (B, width, H/stride, W/stride)
        skip = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += skip
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand to ``4 * width``; the identity or a projection added."""

    def __init__(self, c_in: int, width: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = _conv(c_in, width, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv(width, width, 3, stride)  # the stride sits on the 3x3 (ResNet v1.5, torchvision's)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv(width, width * 4, 1)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:  # (B, c_in, H, W) -> (B, 4 * width, H/stride, W/stride)
        skip = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += skip
        return self.relu(out)


BLOCKS: dict[str, type[nn.Module]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """The ImageNet ResNet: 7x7/2 stem and 3x3/2 max-pool, four stages (strides 1, 2, 2, 2), pooled classifier."""

    def __init__(
        self, kind: str, depths: tuple[int, int, int, int], num_classes: int = 1000, width: int = STANDARD_WIDTH
    ) -> None:
        super().__init__()
        block, expansion = BLOCKS[kind], EXPANSION[kind]
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        c_in = width
        for i, (stage_width, depth) in enumerate(zip(stage_widths(width), depths)):
            stage, c_in = _stage(block, expansion, c_in, stage_width, depth, stride=1 if i == 0 else 2)
            self.add_module(f"layer{i + 1}", stage)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:  # (B, 3, S, S) -> (B, num_classes)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def _stage(
    block: type[nn.Module], expansion: int, c_in: int, width: int, depth: int, stride: int
) -> tuple[nn.Sequential, int]:
    """``depth`` blocks, the first strided and projecting when the shape changes; returns (stage, channels out)."""
    c_out = width * expansion
    downsample = None
    if stride != 1 or c_in != c_out:  # created before its block: torchvision's order of random draws
        downsample = nn.Sequential(_conv(c_in, c_out, 1, stride), nn.BatchNorm2d(c_out))
    blocks = [block(c_in, width, stride, downsample)]
    blocks += [block(c_out, width, 1, None) for _ in range(depth - 1)]
    return nn.Sequential(*blocks), c_out


def resnet(name: str, num_classes: int = 1000, width: int = STANDARD_WIDTH) -> ResNet:
    """A randomly initialised ``resnet18 | resnet34 | resnet50 | resnet101``; ``width`` other than 64 scales every
    stage's channels alike (a narrower network of the same depth, e.g. for a 2-core CPU; no ImageNet weights)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown ResNet {name!r}; expected one of {sorted(ARCHITECTURES)}")
    if width < 1:
        raise ValueError(f"a ResNet's width must be >= 1, got {width}")
    kind, depths = ARCHITECTURES[name]
    return ResNet(kind, depths, num_classes, width)
