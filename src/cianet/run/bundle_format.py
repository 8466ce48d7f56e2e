"""The bundle file on disk (format 2): one safetensors file whose JSON header describes the whole model.

A safetensors file is an 8-byte little-endian header length ``N``, ``N`` bytes of JSON, then the raw tensor
bytes; any language reads the header with a JSON parser, no torch and no pickle involved. The header's
``__metadata__`` (string values only) holds:

    format          "cianet-model-bundle"
    format_version  "2"
    cianet          a JSON document: every non-tensor field of the bundle (kind, config, labels, box_labels,
                    input_size, normalization, thresholds, card, source, cianet_version, alignment's
                    net_kwargs, the bank's strategy / count / aligned flags)

and the tensors are named ``model.<state dict key>``, ``alignment.<key>``, ``canonical``,
``negatives.codes`` (N, 256), ``negatives.maps`` (N, h, w) and optionally ``negatives.images`` (N, S, S) uint8.

What a bundle never carries (it is meant to be shared): absolute paths (the config keeps the last component
of every path), training image names or patient ids (the bank keeps codes and maps only; its entries are
read back as ``negative-00000``, ...). Format 1 (a ``torch.save`` dict) still loads
(:func:`cianet.run.bundle_file.load_bundle`).
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import Any

from cianet.errors import InputError

FORMAT_VERSION = 2
#: config keys that hold a file or folder path: only their last component is kept in a bundle
PATH_CONFIG_KEYS = ("data.data_root", "data.entry_csv", "data.bbox_csv", "data.cache", "protocol.splits",
                    "align.checkpoint", "align.canonical", "negatives.hash_index", "run.out")
MAX_HEADER = 100 << 20  # a header larger than this is not one of ours (a corrupt length)


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts like a safetensors file (a plausible header length followed by ``{``)."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < MAX_HEADER


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The bundle's description without torch: ``{"format", "format_version", "bundle": header dict,
    "tensors": {name: {"dtype", "shape"}}}``; InputError naming the file when it is not a format-2 bundle."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            if n >= MAX_HEADER:
                raise ValueError("implausible header length")
            raw = json.loads(fh.read(n))
        meta = raw.get("__metadata__") or {}
        if meta.get("format") != "cianet-model-bundle":
            raise ValueError("no cianet metadata")
        header = json.loads(meta["cianet"])
    except (ValueError, KeyError, struct.error, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable cianet model bundle ({exc})") from None
    tensors = {k: {"dtype": v["dtype"], "shape": v["shape"]} for k, v in raw.items() if k != "__metadata__"}
    return {"format": meta["format"], "format_version": int(meta.get("format_version", 0)), "bundle": header,
            "tensors": tensors}


def scrub_text(text: str) -> str:
    """``text`` with every absolute path (``/a/b/c``, ``C:\\a\\b``) cut to its last component."""
    return re.sub(r"(?<!\S)(?:[A-Za-z]:)?(?:[\\/][^\s\\/]+)+[\\/]?", lambda m: Path(m.group().rstrip("/\\")).name,
                  text)


def scrub_config(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of a config dict fit to share: path keys keep their last component; any other absolute path too."""
    out = json.loads(json.dumps(config))
    for key in PATH_CONFIG_KEYS:
        section, name = key.split(".")
        value = (out.get(section) or {}).get(name)
        if isinstance(value, str) and value:
            out[section][name] = Path(value.rstrip("/\\")).name
    for part in out.values():
        if isinstance(part, dict):
            for name, value in part.items():
                if isinstance(value, str) and (os.path.isabs(value) or re.match(r"^[A-Za-z]:[\\/]", value)):
                    part[name] = Path(value.rstrip("/\\")).name
    return out


def anonymous_names(n: int, strategy: str) -> list[str]:
    """The bank's entry names as read back: no training file names are stored."""
    return ["canonical"] if strategy == "canonical" and n == 1 else [f"negative-{i:05d}" for i in range(n)]


def encode(bundle: dict[str, Any]) -> bytes:
    """A validated bundle dict -> the bytes of its format-2 file."""
    from safetensors.torch import save

    def flat(prefix: str, state: dict) -> dict:
        return {f"{prefix}.{k}": v.detach().cpu().contiguous().clone() for k, v in state.items()}

    tensors = flat("model", bundle["model"])
    align = bundle["alignment"]
    if align is not None:
        tensors.update(flat("alignment", align["model"]))
    if bundle["canonical"] is not None:
        tensors["canonical"] = bundle["canonical"].detach().cpu().float().contiguous().clone()
    bank = bundle["negatives"]
    for key in ("codes", "maps", "images"):
        if key in bank:
            tensors[f"negatives.{key}"] = bank[key].detach().cpu().contiguous().clone()
    header = {k: v for k, v in bundle.items() if k not in ("model", "alignment", "canonical", "negatives", "format",
                                                           "format_version")}
    header["config"] = scrub_config(bundle["config"])
    header["alignment"] = None if align is None else {"net_kwargs": dict(align["net_kwargs"])}
    header["canonical"] = bundle["canonical"] is not None
    header["negatives"] = {"count": len(bank["names"]), "strategy": bank["strategy"],
                           "aligned_codes": bool(bank.get("aligned_codes", False)),
                           "aligned_maps": bool(bank.get("aligned_maps", False)),
                           "images": "images" in bank}
    from cianet.utils.atomic import strict_json

    meta = {"format": "cianet-model-bundle", "format_version": str(FORMAT_VERSION),
            "cianet": json.dumps(strict_json(header), allow_nan=False)}
    return save(tensors, metadata=meta)


def decode(path: str | os.PathLike) -> dict[str, Any]:
    """A format-2 bundle file -> the bundle dict (see :mod:`cianet.run.bundle_file`); InputError naming the file."""
    from safetensors import safe_open

    path = Path(path)
    desc = read_header(path)
    if desc["format_version"] > FORMAT_VERSION:
        raise InputError(f"{path}: bundle format {desc['format_version']} is newer than this cianet understands "
                         f"({FORMAT_VERSION}); upgrade cianet")
    header = desc["bundle"]
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # truncated or corrupt tensor data
        raise InputError(f"{path}: not a readable cianet model bundle ({type(exc).__name__}: {exc})") from None

    def group(prefix: str) -> dict:
        return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}

    bank_info = header.get("negatives") or {}
    bank = {"names": anonymous_names(int(bank_info.get("count", 0)), bank_info.get("strategy", "none")),
            "strategy": bank_info.get("strategy", "none"), "aligned_codes": bool(bank_info.get("aligned_codes")),
            "aligned_maps": bool(bank_info.get("aligned_maps")), **group("negatives")}
    if "codes" not in bank or "maps" not in bank:
        raise InputError(f"{path}: bundle negative bank is missing codes or maps")
    align = header.get("alignment")
    out = {**header, "format": "cianet-model-bundle", "format_version": desc["format_version"],
           "model": group("model"), "canonical": tensors.get("canonical"), "negatives": bank,
           "alignment": None if align is None else {"model": group("alignment"), "net_kwargs": align["net_kwargs"]}}
    return out
