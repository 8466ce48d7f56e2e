"""The two checkpoint files of a run, each with one versioned writer and one reader.

``checkpoint.pt`` (``cianet train``): ``format_version`` (:data:`FORMAT_VERSION`), ``kind``, ``model``
(state dict), ``config`` (``Config.to_dict()``), ``labels``, ``input_size``, ``normalization``, ``epoch``,
and for resuming ``optimizer``, ``scheduler``, ``scaler``.

``align.pt`` (``cianet train-align``): ``kind == "alignment"``, ``format_version``
(:data:`ALIGN_FORMAT_VERSION`), ``model``, ``optimizer``, ``epoch``, ``config``, ``net_kwargs`` (AlignmentNet
constructor arguments; from format 2 on with the bounds ``center``, ``max_shift``, ``max_scale``,
``max_rotation``, so the network reloads exactly; format-1 files load with the old default bounds),
``canonical`` (the (S, S) target it was trained against, S the training image size), ``input_size`` (S),
``loss_scales`` (format 2: the structure loss's term scales, for resuming).

Both are read with ``torch.load(weights_only=True)``, so a checkpoint never unpickles arbitrary objects. Neither
holds a local path: their ``config`` names its files (data root, cache, alignment, hash index) by their last
component only (:func:`cianet.run.bundle_format.scrub_config`, as a bundle does); the readers take the paths from
the run folder's ``config.yaml`` beside the file, which stays on the machine that trained it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cianet.config import CANONICAL_CHEST, INPUT_PATH_KEYS, Config, config_from_dict, load_config
from cianet.errors import InputError, MissingPathError, UsageError
from cianet.labels import LABELS, label_set_from
from cianet.models.backbones import IMAGENET_MEAN, IMAGENET_STD
from cianet.run.bundle_format import scrub_config
from cianet.run.networks import alignment_from_weights, alignment_net_kwargs, network_from_weights
from cianet.utils.atomic import atomic_torch_save
from cianet.utils.file_memo import parsed_once

CHECKPOINT = "checkpoint.pt"
FORMAT_VERSION = 1
ALIGN_CHECKPOINT = "align.pt"
ALIGN_FORMAT_VERSION = 2


def torch_read(path: Path, what: str, hint: str = "") -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; errors name the file and say what it should have been."""
    if not path.is_file():
        raise MissingPathError(f"{what} {path} does not exist{hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or holding arbitrary (unsafe) objects
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise InputError(f"{path}: not a readable {what} ({type(exc).__name__}: {first})") from None


# ------------------------------------------------------------------------------------ model checkpoint
def checkpoint_payload(model: nn.Module, cfg: Config, epoch: int, **extra: Any) -> dict[str, Any]:
    """What every model checkpoint carries: weights, config, label names, input size, normalization."""
    net = model.module if hasattr(model, "module") else model
    classes = label_set_from(cfg.data.labels, cfg.data.box_labels)
    return {
        "format_version": FORMAT_VERSION,
        "kind": cfg.model.kind,
        "model": net.state_dict(),
        "config": scrub_config(cfg.to_dict()),  # no local paths: config.yaml beside it has them
        "labels": list(classes.names),
        "box_labels": list(classes.box_names),
        "input_size": cfg.data.image_size,
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "input": "gray [0,1] x3"},
        "epoch": epoch,
        **extra,
    }


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    atomic_torch_save(payload, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read ``checkpoint.pt`` (or a run folder holding it) and check it against this code."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    ckpt = torch_read(path, "cianet checkpoint")
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise InputError(f"{path}: not a cianet checkpoint (no model weights/config inside)")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise InputError(f"{path}: made by a newer cianet (format {ckpt['format_version']}); upgrade cianet")
    ckpt["config"] = with_local_paths(ckpt["config"], path.parent)
    data = ckpt["config"].get("data", {}) if isinstance(ckpt["config"], dict) else {}
    expected = label_set_from(data.get("labels"), data.get("box_labels"))  # what the network was built for
    if list(ckpt.get("labels", LABELS)) != list(expected.names):
        raise InputError(f"{path}: the checkpoint's label names differ from those of its config")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], device: torch.device | str = "cpu") -> tuple[nn.Module, Config]:
    """(model in eval mode on ``device``, its Config) of a checkpoint read by :func:`load_checkpoint`."""
    return network_from_weights(ckpt["config"], ckpt["model"], device, source="checkpoint")


# -------------------------------------------------------------------------------- alignment checkpoint
def alignment_payload(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    cfg: Config,
    epoch: int,
    canonical: torch.Tensor,
    net_kwargs: dict[str, Any] | None = None,
    loss_scales: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The ``align.pt`` contents; ``net_kwargs``: the arguments ``net`` was built with (default: the
    config's, :func:`cianet.run.networks.alignment_net_kwargs`)."""
    return {
        "kind": "alignment",
        "format_version": ALIGN_FORMAT_VERSION,
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "config": scrub_config(cfg.to_dict()),  # no local paths: config.yaml beside it has them
        "net_kwargs": dict(alignment_net_kwargs(cfg) if net_kwargs is None else net_kwargs),
        CANONICAL_CHEST: canonical.detach().cpu(),
        "input_size": cfg.data.image_size,
        "loss_scales": dict(loss_scales or {}),
    }


def read_alignment_checkpoint(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(file, contents) of ``align.pt`` (or a folder holding it), checked against this code."""
    path = Path(path)
    if path.is_dir():
        path = path / ALIGN_CHECKPOINT
    ckpt = torch_read(path, "alignment checkpoint", " (train one with `cianet train-align`)")
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "alignment" or "net_kwargs" not in ckpt:
        raise InputError(f"{path}: not an alignment checkpoint")
    if ckpt.get("format_version", 0) > ALIGN_FORMAT_VERSION:
        raise InputError(f"{path}: made by a newer cianet (format {ckpt['format_version']}); upgrade cianet")
    if "config" in ckpt:
        ckpt["config"] = with_local_paths(ckpt["config"], path.parent)
    return path, ckpt


def with_local_paths(config: Any, folder: Path) -> Any:
    """A checkpoint's ``config`` dict with the paths :func:`scrub_config` cut to file names restored from the run
    folder's ``config.yaml`` (each value whose scrubbed form is the checkpoint's). Without a ``config.yaml`` (a
    checkpoint copied on its own) the names stay, and a stage that needs one of the files says which is missing."""
    saved = folder / "config.yaml"
    if not isinstance(config, dict) or not saved.is_file():
        return config
    local = load_config(saved).to_dict()
    scrubbed = scrub_config(local)
    out = {section: dict(values) if isinstance(values, dict) else values for section, values in config.items()}
    for section, values in out.items():
        if not isinstance(values, dict):
            continue
        for name, value in values.items():
            cut, full = scrubbed.get(section, {}).get(name), local.get(section, {}).get(name)
            if cut != full and value == cut:
                values[name] = full
    return out


@dataclass
class LoadedAlignment:
    """A trained alignment network (frozen, eval mode) with what its checkpoint records about it."""

    net: nn.Module
    net_kwargs: dict[str, Any]
    canonical: np.ndarray | None  # (S, S) float32 target of its training, when recorded
    epoch: int
    path: Path
    input_size: int | None = None  # the image side it was trained at, when recorded


def load_alignment(path: str | Path, device: torch.device | str = "cpu") -> LoadedAlignment:
    """The alignment network of ``align.pt`` (or its run folder) on ``device``; the one loader of the package.

    A run's stages (training, pairing, evaluation, the bundle, the report) each ask for the same file, and
    reading and building it costs about a second: loads of an unchanged file on one device share one network
    (:func:`cianet.utils.file_memo.parsed_once`), which is why it is frozen and callers only run it. A caller that
    would train it, move it or fold it needs its own (:func:`cianet.run.networks.alignment_from_weights`)."""
    path = Path(path)
    if path.is_dir():
        path = path / ALIGN_CHECKPOINT
    shared = parsed_once(path, _alignment_reader(torch.device(device)))
    canonical = None if shared.canonical is None else shared.canonical.copy()
    return replace(shared, net_kwargs=dict(shared.net_kwargs), canonical=canonical, path=path)


def alignment_trained(path: str | Path, epochs: int) -> bool:
    """Whether ``align.pt`` (or its run folder's) exists and has been trained for ``epochs`` epochs: a resumed
    experiment's alignment stage is then done. Read through :func:`load_alignment`, which the later stages
    share, so an unchanged file is read once."""
    path = Path(path)
    if path.is_dir():
        path = path / ALIGN_CHECKPOINT
    return path.exists() and load_alignment(path).epoch + 1 >= epochs


@functools.cache
def _alignment_reader(device: torch.device) -> Callable[[Path], LoadedAlignment]:
    """One reader per device: parsed_once remembers the last file each reader read."""
    return functools.partial(_read_alignment, device=device)


def _read_alignment(path: Path, device: torch.device) -> LoadedAlignment:
    path, ckpt = read_alignment_checkpoint(path)
    canonical = ckpt.get(CANONICAL_CHEST)
    return LoadedAlignment(
        net=alignment_from_weights(ckpt["net_kwargs"], ckpt["model"], device),
        net_kwargs=dict(ckpt["net_kwargs"]),
        canonical=None if canonical is None else canonical.float().numpy(),
        epoch=int(ckpt.get("epoch", -1)),
        path=path,
        input_size=None if ckpt.get("input_size") is None else int(ckpt["input_size"]),
    )


# ------------------------------------------------------------------------------------------------ resume
def resume_state(
    checkpoint: Path, read: Callable[[Path], dict[str, Any]], cfg: Config, resume: bool, what: str = "a run"
) -> tuple[dict[str, Any] | None, Config]:
    """The state to continue from (None for a new run) and the config to continue with.

    A folder whose ``checkpoint`` exists is refused without ``resume``; with it, the checkpoint is read with
    ``read`` and the run keeps its own recipe, taking only the output folder, device and progress of the new
    invocation (and its thread count).
    """
    if not checkpoint.exists():
        return None, cfg
    if not resume:
        raise UsageError(
            f"{checkpoint.parent} already holds {what}: pass --resume to continue it, or choose another --out"
        )
    state = read(checkpoint)
    saved = config_from_dict(state["config"], source=str(checkpoint))
    saved.run.out, saved.run.device, saved.run.progress = cfg.run.out, cfg.run.device, cfg.run.progress
    saved.run.threads = cfg.run.threads  # RESUME_FREE: how many threads never changes what a run computes
    return state, saved


#: what a resumed run takes from the new command line; everything else comes from the run's own config
RESUME_FREE = frozenset({"run.out", "run.device", "run.progress", "run.threads", "data.workers"})


def check_resume_flags(run_dir: str | Path, cfg: Config, given: dict[str, str]) -> None:
    """Refuse flags that ``--resume`` would silently ignore.

    ``given`` maps the keys the user set (``optim.epochs``) to how (``--epochs 2``); ``cfg`` holds their
    values. A resumed run continues with its own recipe (its ``config.yaml``), so a given value that differs
    from it is a UsageError naming the flag, the run's value and what to do.
    """
    saved_path = Path(run_dir) / "config.yaml"
    if not saved_path.is_file():
        return  # nothing to resume: the trainer says so
    saved = load_config(saved_path)
    for key, label in given.items():
        if key in RESUME_FREE:
            continue
        section, name = key.split(".", 1)
        want, have = getattr(getattr(cfg, section), name), getattr(getattr(saved, section), name)
        if key in INPUT_PATH_KEYS and want is not None and have is not None:
            same = _same_path(want, have, Path(run_dir))
        else:
            same = want == have
        if not same:
            raise UsageError(
                f"{label}: --resume continues {run_dir} with its own recipe ({key} = {have!r}); drop "
                "the flag to resume, or start a new run with another --out"
            )


def _same_path(a: str, b: str, run_dir: Path) -> bool:
    """Whether two spellings name one file (b may be relative to the run folder, as runs save paths)."""
    pa = Path(a).expanduser().resolve()
    return pa == Path(b).expanduser().resolve() or pa == (run_dir / b).resolve()
