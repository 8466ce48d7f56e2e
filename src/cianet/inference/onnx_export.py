"""Export a bundle's network to ONNX: (aligned gray image, negative attention map M-) -> grid logits.

The exported graph (:class:`ExportedNetwork`) takes

    image   (B, 1, S, S) float32 gray in [0, 1], already aligned when the bundle aligns
    m_neg   (B, h, w)    float32 the negative's attention map from the bundle's bank (CIA-Net only)

and returns

    logits       (B, C, h, w)  native-grid logits (image probability: 1 - prod(1 - sigmoid))
    test_logits  (B, C, U, U)  test-grid logits (F_bar upsampled to test_upsample; == logits without it)
    delta        (B, h, w)     normalized contrast attention dM (CIA-Net only)

The batch axis is dynamic. The ImageNet normalization is inside the graph. Choosing the negative (hash codes)
and the alignment stay outside: ``<out>.negatives.npz`` holds the bank (names, codes (N, 256), maps
(N, h, w)), and with an alignment network ``<out stem>.align.onnx`` maps image (B, 1, S, S) to params (B, 5)
and the aligned image. Labels, thresholds and sizes are in the ONNX metadata (``metadata_props``).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cianet.errors import ExportError, UsageError
from cianet.inference.predictor import Predictor
from cianet.models.backbones import gray_to_input
from cianet.run.bundle_file import load_bundle
from cianet.utils.atomic import atomic_path, atomic_write_bytes

DEFAULT_OPSET = 18


class ExportedNetwork(nn.Module):
    """The bundle's CIA-Net (or baseline) with gray input and the negative given as its map ``M-``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.is_cianet = hasattr(model, "attention_map")

    def forward(self, image: Tensor, m_neg: Tensor | None = None) -> tuple[Tensor, ...]:
        pos = gray_to_input(image)  # (B, 3, S, S)
        if self.is_cianet:
            out = self.model(pos, m_neg=m_neg, upsample=False, return_feats=True)
        else:
            out = self.model(pos, upsample=False, return_feats=True)
        logits = out["logits"]  # (B, C, h, w)
        test_logits = self.model.test_grid_logits(out["f_bar"]) if self.model.test_upsample else logits
        return (logits, test_logits, out["delta"]) if self.is_cianet else (logits, test_logits)


class ExportedAlignment(nn.Module):
    """The alignment network as a graph: image (B, 1, S, S) -> (params (B, 5), aligned (B, 1, S, S))."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        out = self.net(image)
        return out["params"], out["aligned"]


def _export(
    module: nn.Module,
    args: tuple[Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    opset: int,
    dynamic_batch: bool,
) -> str:
    """torch.onnx.export with the dynamo exporter, falling back to the TorchScript one; returns which worked."""
    errors = []
    for dynamo in (True, False):
        kw: dict[str, Any]
        if dynamic_batch and dynamo:
            batch = torch.export.Dim("batch", min=1, max=4096)
            kw = {"dynamic_shapes": {n: {0: batch} for n in input_names}}
        elif dynamic_batch:
            kw = {"dynamic_axes": {n: {0: "batch"} for n in input_names + output_names}}
        else:
            kw = {}
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module,
                    args,
                    str(path),
                    input_names=input_names,
                    output_names=output_names,
                    opset_version=opset,
                    dynamo=dynamo,
                    external_data=False,
                    **kw,
                )
            return "dynamo" if dynamo else "torchscript"
        except Exception as exc:  # try the other exporter; report both if neither works
            errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {type(exc).__name__}: {str(exc)[:300]}")
    raise ExportError("ONNX export failed with both exporters: " + "; ".join(errors))


_SOURCE_PATH = re.compile(r"(?:[A-Za-z]:)?[\\/][^\s\"']*\.py\b")


def strip_source_paths(proto) -> int:
    """Remove what the exporters record about the exporting machine (stack traces and doc strings naming
    installed source files) from every node of an ONNX model; returns how many entries went. A shared model
    carries no local paths."""
    removed = 0

    def nodes(graph):
        for node in graph.node:
            yield node
            for attr in node.attribute:
                if attr.g is not None and len(attr.g.node):
                    yield from nodes(attr.g)
                for g in attr.graphs:
                    yield from nodes(g)

    all_nodes = list(nodes(proto.graph)) + [n for f in proto.functions for n in f.node]
    for holder in all_nodes + [proto.graph, *proto.functions]:
        if holder.doc_string and _SOURCE_PATH.search(holder.doc_string):
            holder.doc_string = ""
            removed += 1
    for holder in all_nodes + list(proto.functions) + [proto]:
        keep = [(e.key, e.value) for e in holder.metadata_props if not _SOURCE_PATH.search(e.value)]
        if len(keep) != len(holder.metadata_props):
            removed += len(holder.metadata_props) - len(keep)
            del holder.metadata_props[:]
            for key, value in keep:
                entry = holder.metadata_props.add()
                entry.key, entry.value = key, value
    return removed


def _save_with_metadata(src: Path, dst: Path, metadata: dict[str, str]) -> None:
    """Copy the ONNX model at ``src`` to ``dst`` atomically, adding ``metadata_props``."""
    # lazy: onnx is an optional dependency (pip install cianet[onnx])
    import onnx

    proto = onnx.load(str(src))
    strip_source_paths(proto)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    atomic_write_bytes(dst, proto.SerializeToString())


def export_onnx(
    bundle: dict[str, Any] | str | Path,
    out: str | Path,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    alignment: bool = True,
) -> dict[str, Any]:
    """Export a bundle to ``out`` (+ ``.negatives.npz`` and ``.align.onnx`` siblings where they apply).

    Returns ``{"model": path, "negatives": path | None, "alignment": path | None, "exporter": str}``.
    """
    if opset < 17:
        raise UsageError(f"opset must be >= 17, got {opset}")
    name = str(bundle) if not isinstance(bundle, dict) else "<bundle>"
    if not isinstance(bundle, dict):
        bundle = load_bundle(bundle)
    pred = Predictor(bundle, device="cpu", name=name)
    out = Path(out)
    s, g = pred.input_size, pred.grid_side
    net = ExportedNetwork(pred.model).eval()
    image = torch.rand(2, 1, s, s)
    args: tuple[Tensor, ...] = (image, torch.randn(2, g, g)) if net.is_cianet else (image,)
    inputs = ["image", "m_neg"] if net.is_cianet else ["image"]
    outputs = ["logits", "test_logits", "delta"] if net.is_cianet else ["logits", "test_logits"]
    meta = {
        "cianet_version": str(bundle["cianet_version"]),
        "kind": bundle["kind"],
        "labels": json.dumps(bundle["labels"]),
        "box_labels": json.dumps(bundle["box_labels"]),
        "input_size": str(s),
        "grid_size": str(g),
        "test_upsample": str(pred.model.test_upsample or g),
        "thresholds": json.dumps(bundle["thresholds"]),
        "aligned_input": str(pred.align_net is not None).lower(),
        "inputs": "image (B,1,S,S) gray [0,1]" + (", m_neg (B,h,w)" if net.is_cianet else ""),
    }
    result: dict[str, Any] = {"model": out, "negatives": None, "alignment": None}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".onnx-export-") as tmp:
        raw = Path(tmp) / "model.onnx"
        with torch.no_grad():
            result["exporter"] = _export(net, args, raw, inputs, outputs, opset, dynamic_batch)
        _save_with_metadata(raw, out, meta)
        if alignment and pred.align_net is not None:
            raw_a = Path(tmp) / "align.onnx"
            with torch.no_grad():
                _export(
                    ExportedAlignment(pred.align_net).eval(),
                    (image,),
                    raw_a,
                    ["image"],
                    ["params", "aligned"],
                    opset,
                    dynamic_batch,
                )
            result["alignment"] = out.with_name(out.stem + ".align.onnx")
            _save_with_metadata(raw_a, result["alignment"], {"kind": "alignment", "input_size": str(s)})
    if net.is_cianet:
        bank = bundle["negatives"]
        result["negatives"] = out.with_name(out.stem + ".negatives.npz")
        with atomic_path(result["negatives"]) as tmp_npz, open(tmp_npz, "wb") as fh:
            np.savez(
                fh,
                names=np.array(bank["names"], dtype=str),
                codes=bank["codes"].float().numpy(),
                maps=bank["maps"].float().numpy(),
                strategy=np.array(bank["strategy"]),
            )
    return result
