"""Shared fixtures. Tests that use ../shared skip cleanly when it is absent."""

from __future__ import annotations

import gc
import os
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# One intra-op thread for the whole session (and the processes tests start): on a shared 2-core machine
# OpenMP's spinning threads make two threads up to 20x slower than one, which decides whether
# `pytest -m "not slow"` takes 45 s or 4 minutes. CIANET_TEST_THREADS overrides it.
TEST_THREADS = os.environ.get("CIANET_TEST_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", TEST_THREADS)
# Internal errors the tests provoke leave their traceback logs here, not in the user's ~/.cache (cianet.cli).
os.environ.setdefault("CIANET_LOG_DIR", str(Path(tempfile.gettempdir()) / "cianet-test-error-logs"))


def pytest_configure(config) -> None:
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return  # pytest-xdist's controller runs no test: importing torch there delays the workers' start by ~3 s
    import torch

    torch.set_num_threads(int(TEST_THREADS))


def pytest_collection_finish(session) -> None:
    # Everything alive now (torch, the test modules, their items) lives as long as the process: frozen, the
    # cyclic garbage collector stops re-walking it. Rarer collections then skip most re-walks of what the
    # tests keep (the real metadata tables, session fixtures). Measured on 2 cores: the collector took 8-11 s
    # of CPU over the whole suite's two workers before, about 4 s after; wall time 3-6 s less.
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config) -> None:
    # The interpreter's last collections at exit walk every object left (about a second once torch is
    # imported); the process ends anyway, and xdist's controller waits for each worker to end.
    gc.freeze()


# The files that take longest (6-25 s each on a 2-core CPU, measured), longest first. pytest-xdist's loadfile
# hands out whole files in collection order (pyproject: --no-loadscope-reorder); collected first, they run while
# the short files fill the other worker's gaps, instead of one worker running a long file alone at the end.
LONG_FILES = (
    "test_safety.py",
    "test_onnx.py",
    "test_evidence.py",
    "test_demo.py",
    "test_gpu_bench.py",
    "test_bench.py",
    "test_view.py",
    "test_pairing_record.py",
    "test_backbones.py",
    "test_datasets.py",
    "test_safety_paths.py",
    "test_dataset_layouts.py",
    "test_engine.py",
)


#: session fixtures that build networks and runs (seconds per test process): a test that uses one is slow
BUILDS_MODELS = ("chest_models", "trained_run")


@pytest.hookimpl(tryfirst=True)  # before `-m "not slow"` deselects
def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if any(name in item.fixturenames for name in BUILDS_MODELS):
            item.add_marker(pytest.mark.slow)
    first = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: first.get(item.path.name, len(LONG_FILES)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def tiny_nih(tmp_path_factory):
    """``tiny_nih(n_patients)``: the root of helpers.write_tiny_nih's data set of that size, written once per
    test session. Read-only: a test that writes into a data root copies it first."""
    from helpers import write_tiny_nih

    made: dict[int, tuple[Path, dict]] = {}

    def root(n_patients: int = 24) -> Path:
        if n_patients not in made:
            path = write_tiny_nih(tmp_path_factory.mktemp(f"tiny_nih_{n_patients}"), n_patients)
            made[n_patients] = path, _tree_state(path)
        return made[n_patients][0]

    yield root
    for path, state in made.values():  # shared by many tests: none may have written into it
        assert _tree_state(path) == state, f"a test wrote into the shared data root {path}"


def _tree_state(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def tiny_root(request, tiny_nih) -> Path:
    """The tiny NIH-layout set (read-only), 24 patients unless the module sets TINY_PATIENTS (fewer where a
    test trains several times on it, more where a validation split needs them)."""
    return tiny_nih(getattr(request.module, "TINY_PATIENTS", 24))


@pytest.fixture(scope="session")
def trained_run(tiny_nih, tmp_path_factory) -> Path:
    """A run of the tiny recipe (helpers.tiny_config, 2 epochs) trained on the 24-patient tiny set, once per
    session. Read-only: a test that evaluates or otherwise writes into it works on a copy
    (``shutil.copytree(trained_run, tmp_path / "run")``)."""
    from cianet.training.loop import fit
    from helpers import tiny_config

    run = fit(tiny_config(tmp_path_factory.mktemp("trained_run"), tiny_nih(24)))
    state = _tree_state(run)
    yield run
    assert _tree_state(run) == state, f"a test wrote into the shared trained run {run}"


#: the runs of the chest_models fixture: key -> helpers.make_run's (kind, shift)
CHEST_MODELS = {"plain": ("cianet", None), "shift": ("cianet", 0.25), "base": ("baseline", None)}


class ChestModels:
    """helpers.make_run's runs over the 10-image chest set and their bundle files (a bank of up to 100
    negatives), each made on first use: ``run(key)`` -> (run dir, name -> image), ``bundle(key)`` -> file."""

    def __init__(self, root: Path) -> None:
        self.root = root  # every run, data root, alignment and bundle lies under it
        self._runs: dict[str, tuple[Path, dict]] = {}
        self._bundles: dict[str, Path] = {}
        self.states: dict[Path, dict | tuple] = {}  # folder or file -> its state right after it was made

    def run(self, key: str) -> tuple[Path, dict]:
        from helpers import make_run

        if key not in self._runs:
            kind, shift = CHEST_MODELS[key]
            self._runs[key] = make_run(self.root / key, kind=kind, shift=shift)
            self.states[self.root / key] = _tree_state(self.root / key)
        return self._runs[key]

    def bundle(self, key: str) -> Path:
        from cianet.inference.bundle import bundle_from_run
        from cianet.run.bundle_file import save_bundle

        if key not in self._bundles:
            built = bundle_from_run(self.run(key)[0], n_negatives=100, progress=False)
            self._bundles[key] = save_bundle(built, self.root / f"{key}.cianet")
            self.states[self._bundles[key]] = _file_state(self._bundles[key])
        return self._bundles[key]


@pytest.fixture(scope="session")
def chest_models(tmp_path_factory):
    """The untrained chest runs and bundles of :class:`ChestModels` ("plain" CIA-Net, "shift" CIA-Net aligned
    with a known shift tx = 0.25, "base" the baseline), each built once per test process: most bundle and
    prediction tests only read them. Read-only: a test that writes into a run works on a copy."""
    models = ChestModels(tmp_path_factory.mktemp("chest_models"))
    yield models
    for path, state in models.states.items():  # shared by many tests: none may have written into them
        now = _tree_state(path) if path.is_dir() else _file_state(path)
        assert now == state, f"a test wrote into the shared chest model {path}"


def _file_state(path: Path) -> tuple[int, int]:
    return path.stat().st_size, path.stat().st_mtime_ns


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
