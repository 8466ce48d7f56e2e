"""Shared fixtures. Tests that use ../shared skip cleanly when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# One intra-op thread for the whole session (and the processes tests start): on a shared 2-core machine
# OpenMP's spinning threads make two threads up to 20x slower than one, which decides whether
# `pytest -m "not slow"` takes 45 s or 4 minutes. CIANET_TEST_THREADS overrides it.
TEST_THREADS = os.environ.get("CIANET_TEST_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", TEST_THREADS)


def pytest_configure(config) -> None:
    import torch

    torch.set_num_threads(int(TEST_THREADS))


def shared_dir() -> Path:
    return Path(os.environ.get("CIANET_SHARED", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def nih_sample_dir() -> Path:
    """The real NIH sample (274 PNGs + metadata subsets); skipped where absent."""
    d = shared_dir() / "data" / "nih-chestxray14"
    if not (d / "images").is_dir():
        pytest.skip(f"real NIH sample not present at {d}")
    return d


@pytest.fixture(scope="session")
def nih_metadata_dir(tmp_path_factory) -> Path:
    """A folder holding the real full NIH CSVs as torchxrayvision's wheel ships them (.csv.gz)."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("torchxrayvision")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("torchxrayvision is not installed (it ships the NIH metadata CSVs)")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    entry = data / "Data_Entry_2017_v2020.csv.gz"
    bbox = data / "BBox_List_2017.csv.gz"
    if not entry.exists() or not bbox.exists():
        pytest.skip(f"torchxrayvision at {data} lacks the NIH CSVs")
    root = tmp_path_factory.mktemp("nih_meta")
    (root / entry.name).symlink_to(entry)
    (root / bbox.name).symlink_to(bbox)
    return root
