"""The run folders of ``cianet train`` and ``cianet train-align``: claimed before anything is written.

A run folder is claimed like every other output folder (:func:`cianet.utils.output_folders.claim_output`): a new or
empty folder gets a marker naming the command, a folder of the same command is continued (``--resume``), and
anything else is refused with a message naming what is there, so training never writes over a user's own
``config.yaml`` or ``metrics.json``, nor into the run folder of the other command.

Run folders written before markers existed are adopted when every entry is one that cianet writes into such
a folder (training, ``evaluate``, ``view``, the atomic writes' temp files, the lock) *and* the folder holds
the command's own evidence (a checkpoint or the run's ``split.json``). The names are spelled out here, not
imported, so that this stays a list a user can read; ``tests/test_safety.py`` checks it against the modules
that write them.
"""

from __future__ import annotations

import os
from pathlib import Path

from cianet.utils.output_folders import claim_output

#: entries a markerless folder of either command may hold: its config and log, cianet's temp files
#: (``.NAME.PID.RANDOM.tmp``) and a lock (or the brief rename of a stale one)
_COMMON = ("config.yaml", "log.jsonl", ".*.tmp", ".cianet.lock", ".cianet.lock.stale.*")

#: what ``train`` writes (checkpoint, config, split, negative pairs, log, TensorBoard scalars, metrics with
#: per-image predictions), what ``evaluate --run`` adds (metrics again, plots) and ``view RUN`` (its site)
TRAIN_ENTRIES = frozenset(
    {
        *_COMMON,
        "checkpoint.pt",
        "split.json",
        "pairs.json",
        "negatives.csv",
        "negatives.json",
        "tb",
        "metrics.json",
        "metrics.md",
        "predictions.npz",
        "roc.png",
        "pr.png",
        "localization.png",
        "loss.png",
        "site",
    }
)
#: a markerless folder is an old ``train`` run only when it holds one of these (written by nothing else)
TRAIN_EVIDENCE = frozenset({"checkpoint.pt", "split.json"})

#: what ``train-align`` writes
ALIGN_ENTRIES = frozenset({*_COMMON, "align.pt"})
ALIGN_EVIDENCE = frozenset({"align.pt"})


def claim_run_folder(out: str | os.PathLike, command: str) -> Path:
    """Claim ``out`` for ``command`` (``"train"`` or ``"train-align"``); InputError when it is not its folder."""
    entries, evidence = {"train": (TRAIN_ENTRIES, TRAIN_EVIDENCE), "train-align": (ALIGN_ENTRIES, ALIGN_EVIDENCE)}[
        command
    ]
    return claim_output(out, command, adopt=sorted(entries), adopt_if=evidence)
