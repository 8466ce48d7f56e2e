"""The bundle file on disk (format 2): one safetensors file whose JSON header describes the whole model.

A safetensors file is an 8-byte little-endian header length ``N``, ``N`` bytes of JSON, then the raw tensor
bytes; any language reads the header with a JSON parser, no torch and no pickle involved. The header's
``__metadata__`` (string values only) holds:

    format          "cianet-model-bundle"
    format_version  "2"
    cianet          a JSON document: every non-tensor field of the bundle (kind, config, labels, box_labels,
                    input_size, normalization, thresholds, card, source, cianet_version, alignment's
                    net_kwargs, the bank's strategy / count / aligned flags)
    tensor_sha256   the SHA-256 of the tensor data (every byte after the header), checked whenever the
                    tensors are read (:func:`verify_data`). Bundles written before it existed have none and
                    load unchecked; ``cianet bundle info`` says so.

Everything in the header is checked before anything is allocated (:func:`check_header`): its types, every
config value against the bounds of :mod:`cianet.config` (upper ones too: a crafted ``test_upsample`` of 10^6
would ask for terabytes), the bank's count against its tensors, and every tensor's offsets against the file's
size (a truncated file is refused by name).

and the tensors are named ``model.<state dict key>``, ``alignment.<key>``, ``canonical``,
``negatives.codes`` (N, 256), ``negatives.maps`` (N, h, w) and optionally ``negatives.images`` (N, S, S) uint8.

What a bundle never carries (it is meant to be shared): absolute paths (the config keeps the last component
of every path), training image names or patient ids (the bank keeps codes and maps only; its entries are
read back as ``negative-00000``, ...). Format 1 (a ``torch.save`` dict) still loads
(:func:`cianet.run.bundle_file.load_bundle`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from cianet.config import CANONICAL, CANONICAL_CHEST, INPUT_PATH_KEYS, Config, check_value
from cianet.errors import InputError
from cianet.utils.atomic import strict_json
from cianet.utils.file_memo import parsed_once

FORMAT_VERSION = 2
#: config keys that hold a file or folder path: only their last component is kept in a bundle
PATH_CONFIG_KEYS = (*INPUT_PATH_KEYS, "run.out")
MAX_HEADER = 100 << 20  # a header larger than this is not one of ours (a corrupt length)
CHECKSUM_KEY = "tensor_sha256"
#: bytes per element of the safetensors dtypes a bundle may hold
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts like a safetensors file (a plausible header length followed by ``{``)."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < MAX_HEADER


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The bundle's description without torch: ``{"format", "format_version", "bundle": header dict,
    "tensors": {name: {"dtype", "shape"}}, "checksum": the stored SHA-256 or None}``, checked
    (:func:`check_header`); InputError naming the file when it is not a readable format-2 bundle."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            if n >= MAX_HEADER or 8 + n > size:
                raise ValueError("implausible header length (a cut or damaged file)")
            raw = json.loads(fh.read(n))
        if not isinstance(raw, dict):
            raise ValueError("the safetensors header is not an object")
        meta = raw.get("__metadata__") or {}
        if not isinstance(meta, dict) or meta.get("format") != "cianet-model-bundle":
            raise ValueError("no cianet metadata")
        header = json.loads(meta["cianet"])
        version = int(meta.get("format_version", 0))
    except (OSError, ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable cianet model bundle ({exc})") from None
    if version > FORMAT_VERSION:
        raise InputError(
            f"{path}: bundle format {version} is newer than this cianet understands ({FORMAT_VERSION}); upgrade cianet"
        )
    tensors = check_tensors({k: v for k, v in raw.items() if k != "__metadata__"}, size - 8 - n, path)
    check_header(header, tensors, path)
    checksum = meta.get(CHECKSUM_KEY)
    return {
        "format": meta["format"],
        "format_version": version,
        "bundle": header,
        "tensors": {k: {"dtype": v["dtype"], "shape": v["shape"]} for k, v in tensors.items()},
        "checksum": checksum if isinstance(checksum, str) else None,
        "data_start": 8 + n,
    }


def check_tensors(table: dict[str, Any], data_size: int, path: Path) -> dict[str, Any]:
    """The safetensors tensor table, checked: known dtypes, sizes that match the shapes, offsets inside the
    data, and data that ends where the last tensor does (a cut file is caught here, before reading it)."""
    end = 0
    for name, entry in table.items():
        try:
            dtype, shape, (start, stop) = entry["dtype"], entry["shape"], entry["data_offsets"]
            ok = (
                dtype in DTYPE_SIZES
                and isinstance(shape, list)
                and all(isinstance(d, int) and d >= 0 for d in shape)
                and isinstance(start, int)
                and isinstance(stop, int)
                and 0 <= start <= stop <= data_size
            )
            count = 1
            for d in shape:
                count *= d
            ok = ok and stop - start == count * DTYPE_SIZES[dtype]
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise InputError(
                f"{path}: tensor {name!r} is described wrongly in the bundle header (dtype, shape or "
                "offsets); the file is damaged"
            )
        end = max(end, stop)
    if end != data_size:
        raise InputError(
            f"{path}: the tensor data holds {data_size} bytes, the header describes {end}; the file is cut or damaged"
        )
    return table


def check_header(header: Any, tensors: dict[str, Any], path: Path) -> None:
    """The cianet header's types and values, checked before anything is built from them: InputError naming the
    file and the field. Config values go through :func:`cianet.config.check_value` (with its upper bounds)."""

    def fail(what: str) -> None:
        raise InputError(f"{path}: bundle header {what}; the file is damaged or was not written by cianet")

    if not isinstance(header, dict):
        fail(f"is a {type(header).__name__}, not an object")
    types = {
        "kind": str,
        "config": dict,
        "labels": list,
        "box_labels": list,
        "input_size": int,
        "thresholds": list,
        "negatives": dict,
        "card": dict,
        "source": dict,
        "normalization": dict,
    }
    for key, tp in types.items():
        if key in header and (not isinstance(header[key], tp) or isinstance(header[key], bool)):
            fail(
                f"field {key!r} must be {'an object' if tp is dict else 'a ' + tp.__name__}, got "
                f"{type(header[key]).__name__}"
            )
    for key in ("labels", "box_labels"):
        if not all(isinstance(v, str) for v in header.get(key, [])):
            fail(f"field {key!r} must be a list of names")
    if not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in header.get("thresholds", [])):
        fail("field 'thresholds' must be a list of numbers")
    if header.get("alignment") is not None and not (
        isinstance(header["alignment"], dict) and isinstance(header["alignment"].get("net_kwargs"), dict)
    ):
        fail("field 'alignment' must be null or an object with net_kwargs")
    check_config(header.get("config") or {}, path)
    size = header.get("input_size")
    if size is not None and not 32 <= size <= 4096:
        fail(f"input_size {size} is outside 32 to 4096")
    bank = header.get("negatives") or {}
    count = bank.get("count", 0)
    rows = (tensors.get("negatives.codes") or {}).get("shape", [0])[:1] or [0]
    if not isinstance(count, int) or isinstance(count, bool) or count < 0 or count != rows[0]:
        fail(f"negatives count {count!r} does not match the bank's {rows[0]} stored rows")


def check_config(config: Any, path: str | os.PathLike) -> None:
    """Every value of a bundle's config against :func:`cianet.config.check_value` (types, choices, bounds with
    upper ones); keys this cianet does not know are skipped (nothing reads them). InputError naming the file."""
    if not isinstance(config, dict):
        raise InputError(f"{path}: bundle config must be an object, got {type(config).__name__}")
    defaults = Config()
    for section, values in config.items():
        if not hasattr(defaults, section) or values is None:
            continue  # a section a later cianet dropped
        if not isinstance(values, dict):
            raise InputError(f"{path}: bundle config section {section!r} must be an object")
        known = {f.name for f in dataclasses.fields(getattr(defaults, section))}
        for key, value in values.items():
            if key in known:
                try:
                    check_value(section, key, value)
                except ValueError as exc:
                    raise InputError(f"{path}: bundle config: {exc}") from None


def verify_data(path: str | os.PathLike, desc: dict[str, Any]) -> bool:
    """Check the tensor data against the SHA-256 stored at bundle time; InputError naming the file when they
    differ. False for a bundle written before checksums (nothing to check), True when checked."""
    if desc.get("checksum") is None:
        return False
    # remembered while the file is unchanged: a process that loads one bundle again (a notebook, the bench)
    # hashes its megabytes once
    if parsed_once(Path(path), _tensor_data_sha256) != desc["checksum"]:
        raise InputError(
            f"{path}: the tensor data does not match the SHA-256 stored in the bundle (the file was "
            "damaged or edited after `cianet bundle` wrote it); rebuild or copy it again"
        )
    return True


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a whole bundle file (the model's identity in prediction records), remembered while the
    file is unchanged."""
    return parsed_once(Path(path), _whole_file_sha256)


def _whole_file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return _sha256_of_rest(fh)


def _tensor_data_sha256(path: Path) -> str:
    """SHA-256 of every byte after the safetensors header (an 8-byte length, then the header)."""
    with open(path, "rb") as fh:
        fh.seek(8 + struct.unpack("<Q", fh.read(8))[0])
        return _sha256_of_rest(fh)


def _sha256_of_rest(fh) -> str:
    """Hex SHA-256 of a binary file's bytes from its current position to the end, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    for block in iter(lambda: fh.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def scrub_text(text: str) -> str:
    """``text`` with every absolute path (``/a/b/c``, ``C:\\a\\b``) cut to its last component."""
    return re.sub(r"(?<!\S)(?:[A-Za-z]:)?(?:[\\/][^\s\\/]+)+[\\/]?", lambda m: Path(m.group().rstrip("/\\")).name, text)


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
    return [CANONICAL] if strategy == CANONICAL and n == 1 else [f"negative-{i:05d}" for i in range(n)]


def encode(bundle: dict[str, Any]) -> bytes:
    """A validated bundle dict -> the bytes of its format-2 file."""
    from safetensors.torch import save  # lazy: reading a header (`cianet bundle info`) stays free of torch

    def flat(prefix: str, state: dict) -> dict:
        return {f"{prefix}.{k}": v.detach().cpu().contiguous().clone() for k, v in state.items()}

    tensors = flat("model", bundle["model"])
    align = bundle["alignment"]
    if align is not None:
        tensors.update(flat("alignment", align["model"]))
    if bundle[CANONICAL_CHEST] is not None:
        tensors[CANONICAL_CHEST] = bundle[CANONICAL_CHEST].detach().cpu().float().contiguous().clone()
    bank = bundle["negatives"]
    for key in ("codes", "maps", "images"):
        if key in bank:
            tensors[f"negatives.{key}"] = bank[key].detach().cpu().contiguous().clone()
    header = {
        k: v
        for k, v in bundle.items()
        if k not in ("model", "alignment", CANONICAL_CHEST, "negatives", "format", "format_version")
    }
    header["config"] = scrub_config(bundle["config"])
    header["alignment"] = None if align is None else {"net_kwargs": dict(align["net_kwargs"])}
    header[CANONICAL_CHEST] = bundle[CANONICAL_CHEST] is not None
    header["negatives"] = {
        "count": len(bank["names"]),
        "strategy": bank["strategy"],
        "aligned_codes": bool(bank.get("aligned_codes", False)),
        "aligned_maps": bool(bank.get("aligned_maps", False)),
        "images": "images" in bank,
    }
    meta = {
        "format": "cianet-model-bundle",
        "format_version": str(FORMAT_VERSION),
        "cianet": json.dumps(strict_json(header), allow_nan=False),
    }
    first = save(tensors, metadata=meta)
    # The data section's layout does not depend on the metadata: hash it, then write the file with the hash.
    data = _data_section(first)
    meta[CHECKSUM_KEY] = hashlib.sha256(data).hexdigest()
    out = save(tensors, metadata=meta)
    # compared as arrays: slices of the bytes would be copies compared in Python (about 0.2 s for 60 MB)
    assert np.array_equal(_data_section(out), data), "safetensors laid out the tensor data differently"
    return out


def _data_section(raw: bytes) -> np.ndarray:
    """The tensor data of a safetensors file's bytes (after the 8-byte header length and the header), as a
    uint8 view: no copy."""
    return np.frombuffer(raw, np.uint8, offset=8 + struct.unpack("<Q", raw[:8])[0])


def decode(path: str | os.PathLike) -> dict[str, Any]:
    """A format-2 bundle file -> the bundle dict (see :mod:`cianet.run.bundle_file`); InputError naming the file."""
    path = Path(path)
    desc = read_header(path)
    verify_data(path, desc)
    header = desc["bundle"]
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # truncated or corrupt tensor data
        raise InputError(f"{path}: not a readable cianet model bundle ({type(exc).__name__}: {exc})") from None

    def group(prefix: str) -> dict:
        return {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}

    bank_info = header.get("negatives") or {}
    bank = {
        "names": anonymous_names(int(bank_info.get("count", 0)), bank_info.get("strategy", "none")),
        "strategy": bank_info.get("strategy", "none"),
        "aligned_codes": bool(bank_info.get("aligned_codes")),
        "aligned_maps": bool(bank_info.get("aligned_maps")),
        **group("negatives"),
    }
    if "codes" not in bank or "maps" not in bank:
        raise InputError(f"{path}: bundle negative bank is missing codes or maps")
    align = header.get("alignment")
    out = {
        **header,
        "format": "cianet-model-bundle",
        "format_version": desc["format_version"],
        "model": group("model"),
        CANONICAL_CHEST: tensors.get(CANONICAL_CHEST),
        "negatives": bank,
        "alignment": None if align is None else {"model": group("alignment"), "net_kwargs": align["net_kwargs"]},
    }
    return out
