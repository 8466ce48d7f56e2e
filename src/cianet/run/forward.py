"""One batch through a run's networks: alignment, network inputs, native and test-time grid logits.

Training, evaluation and the demo report share these, so that every path sees the same images and grids.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cianet.models.alignment import boxes_to_aligned
from cianet.models.backbones import gray_to_input
from cianet.run.precision import autocast


@torch.no_grad()
def align_batch(align_net: nn.Module | None, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Warp image and negative into the canonical frame; move the boxes along (still (B, K, 5), S frame).

    Adds ``params`` (B, 5), the image's alignment parameters. Without a network this is the identity.
    """
    if align_net is None:
        return batch
    out = dict(batch)
    pos = align_net(batch["image"])
    out["image"], out["params"] = pos["aligned"], pos["params"]
    if "neg" in batch:
        out["neg"] = align_net(batch["neg"])["aligned"]
    boxes = batch["boxes"].clone()
    s = batch["image"].shape[-1]
    for i in range(boxes.shape[0]):
        valid = boxes[i, :, 0] >= 0
        if valid.any():
            moved = boxes_to_aligned(
                boxes[i, valid, 1:].cpu().double().numpy(), pos["params"][i].cpu().double().numpy(), (s, s), (s, s)
            )
            boxes[i, valid, 1:] = torch.as_tensor(np.asarray(moved), dtype=boxes.dtype, device=boxes.device)
    out["boxes"] = boxes
    return out


def network_inputs(batch: dict[str, torch.Tensor], channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    pos, neg = gray_to_input(batch["image"]), gray_to_input(batch["neg"])
    if channels_last:
        pos, neg = pos.contiguous(memory_format=torch.channels_last), neg.contiguous(memory_format=torch.channels_last)
    return pos, neg


@torch.no_grad()
def forward_grids(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    upsample: bool,
    channels_last: bool = False,
    precision: str = "fp32",
) -> dict[str, torch.Tensor]:
    """Native-grid logits (B, C, h, w), test-grid logits (B, C, U, U) (== native without upsampling), maps.

    ``precision``: "fp32", "bf16" or "fp16" (autocast; :func:`cianet.run.precision.resolve_precision`).
    """
    net = model.module if hasattr(model, "module") else model
    pos, neg = network_inputs(batch, channels_last)
    with autocast(precision, pos.device):
        out = net(pos, neg, upsample=False, return_feats=True)
        test_logits = out["logits"]
        if upsample and net.test_upsample:
            test_logits = net.test_grid_logits(out["f_bar"])
    out = {k: v.float() for k, v in out.items() if torch.is_tensor(v)}
    out["test_logits"] = test_logits.float()
    return out
