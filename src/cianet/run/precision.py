"""Arithmetic precision of a run or a prediction: float32, or bfloat16 / float16 autocast.

A setting (``run.precision``, ``--precision``) is one of:

- ``"fp32"``: float32 everywhere;
- ``"bf16"``: bfloat16 autocast (convolutions and matrix products in bfloat16, the rest float32);
- ``"auto"``: bfloat16 on a CPU that computes it natively (AVX512-BF16 or AMX-BF16, checked at run time),
  float32 on other CPUs; float16 autocast on CUDA (the paper recipe's AMP);
- ``None`` (training's default): float32 on CPU, ``optim.amp``'s float16 on CUDA (the behaviour before the
  setting existed; bfloat16 training is not the default until its effect on results is measured, see
  docs/performance.md).

:func:`resolve_precision` turns a setting into what is actually computed (``"fp32"``, ``"bf16"`` or
``"fp16"``): that name is what outputs and metrics record.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import lru_cache

import torch

from cianet.errors import UsageError

PRECISIONS = ("fp32", "bf16", "auto")
#: /proc/cpuinfo flags of CPUs that compute bfloat16 natively (AVX512-BF16: Cooper Lake, Sapphire Rapids,
#: Zen 4; AMX-BF16: Sapphire Rapids and later). Without them torch emulates bfloat16, slower than float32.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: The setting that computes each precision where that precision runs (``resolve_precision``): float16 has no
#: setting of its own, it is what ``"auto"`` computes on CUDA.
SETTING_OF = {"fp32": "fp32", "bf16": "bf16", "fp16": "auto"}


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags: /proc/cpuinfo's ``flags`` line on Linux; elsewhere the bfloat16 flags that
    torch's own CPU checks report (empty when torch cannot tell)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    found = set()
    for flag, probe in (("avx512_bf16", "_is_avx512_bf16_supported"), ("amx_bf16", "_is_amx_tile_supported")):
        check = getattr(torch.cpu, probe, None)
        try:
            if check is not None and check():
                found.add(flag)
        except RuntimeError:  # pragma: no cover - a torch build without the probe's backend
            pass
    return frozenset(found)


def cpu_bf16_native(flags: frozenset[str] | set[str] | None = None) -> bool:
    """True when the CPU (``flags``, default :func:`cpu_flags`) computes bfloat16 natively and torch's oneDNN
    backend, which runs bfloat16 convolutions, is available."""
    flags = cpu_flags() if flags is None else flags
    return bool(torch.backends.mkldnn.is_available()) and any(f in flags for f in NATIVE_BF16_FLAGS)


def check_setting(setting: str | None, what: str = "--precision") -> None:
    if setting is not None and setting not in PRECISIONS:
        raise UsageError(f"{what} must be one of {', '.join(PRECISIONS)}, got {setting!r}")


def resolve_precision(
    setting: str | None, device: torch.device | str, cuda_amp: bool = True, what: str = "--precision"
) -> str:
    """What a setting computes on ``device``: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (see the module docstring).

    ``cuda_amp``: whether float16 autocast is wanted on CUDA where the setting leaves it open (``"auto"``,
    ``None``); training passes ``optim.amp``. An explicit ``"bf16"`` on a device that cannot run it at all
    is a UsageError naming ``what``, never a silent change.
    """
    check_setting(setting, what)
    dev = torch.device(device)
    if setting == "fp32":
        return "fp32"
    if dev.type == "cuda":
        if setting == "bf16":
            if not torch.cuda.is_bf16_supported():
                raise UsageError(f"{what} bf16: this CUDA device has no bfloat16 support (use fp32 or auto)")
            return "bf16"
        return "fp16" if cuda_amp else "fp32"
    if dev.type != "cpu":
        if setting == "bf16":
            raise UsageError(f"{what} bf16 is supported on cpu and cuda devices, not {dev.type}")
        return "fp32"
    if setting == "bf16":
        return "bf16"  # asked for explicitly: honoured even where torch emulates it (slow, but what was asked)
    if setting == "auto":
        return "bf16" if cpu_bf16_native() else "fp32"
    return "fp32"  # None on CPU: float32, as training always ran


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str) -> Iterator[None]:
    """Autocast to ``precision`` (a :func:`resolve_precision` result) on ``device``; nothing for ``"fp32"``."""
    dtype = DTYPES.get(precision)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=torch.device(device).type, dtype=dtype):
        yield
