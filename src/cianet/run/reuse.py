"""May an experiment reuse a run folder it finds? Only when the run was trained with the config the experiment
would train now.

An experiment (``cianet experiment``) finds earlier runs by folder name. A folder trained with other settings
(another ``--set``, another data root, another recipe) would otherwise be compared as if it were the row it
stands for, so :func:`check_reusable` refuses it and names every key that differs. Keys that do not change what
a run computes (where it writes, progress bars, threads, TensorBoard, loader workers) are not compared, nor the
class lists that training itself fills in (``data.labels``, ``data.box_labels``) when the planned config leaves
them to the data set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cianet.config import Config, config_from_dict, resolve_paths
from cianet.errors import InputError, UsageError

#: keys that never change a run's results (plumbing)
IGNORED_KEYS = frozenset({"run.out", "run.progress", "run.threads", "run.tensorboard", "run.device", "data.workers"})
#: keys that training resolves from the data set when the planned config leaves them unset (None / "auto")
RESOLVED_KEYS = frozenset({"data.labels", "data.box_labels", "data.dataset"})


def _flat(cfg: Config) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, values in cfg.to_dict().items() for key, value in values.items()}


def config_differences(saved: Config, planned: Config) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, planned value)`` for every result-relevant key on which two configs differ; input
    paths compared as absolute paths (a run saves them so)."""
    have, want = _flat(resolve_paths(saved)), _flat(resolve_paths(planned))
    diffs = []
    for key in want:
        if key in IGNORED_KEYS:
            continue
        if key in RESOLVED_KEYS and want[key] in (None, "auto"):
            continue
        if have.get(key) != want[key]:
            diffs.append((key, have.get(key), want[key]))
    return diffs


def check_reusable(run_dir: str | Path, planned: Config, what: str = "this experiment") -> bool:
    """True when ``run_dir`` holds a run (``config.yaml``) trained with ``planned``'s settings (it may then be
    resumed or reused); False when there is no run yet. A run trained otherwise raises a UsageError that
    names the keys and both values."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return False
    try:
        saved = config_from_dict(yaml.safe_load(path.read_text()) or {}, source=str(path))
    except (ValueError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: not a readable run config ({exc}); move the folder away to retrain it") from None
    diffs = config_differences(saved, planned)
    if not diffs:
        return True
    shown = "; ".join(f"{k}: run {a!r}, {what} {b!r}" for k, a, b in diffs[:6])
    more = f" (and {len(diffs) - 6} more)" if len(diffs) > 6 else ""
    raise UsageError(
        f"{run_dir}: this run was trained with other settings than {what} would use ({shown}{more}); "
        "give another --out, or move the run away to retrain it"
    )
