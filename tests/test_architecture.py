"""The package's layers and their one direction of imports, read from the source (every import statement,
including those inside functions): no cycle, no upward or sideways import, no reaching into a private name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cianet"

#: Layers from the bottom; a module may import its own layer package and the layers below it, nothing else.
LAYERS = {
    "core": 0,  # cianet.{errors,config,labels,losses,metrics,negatives}, cianet.{data,models,utils,configs},
    #             cianet.phantom (imports cianet.data, never the reverse: test_data_never_imports_the_phantom)
    "run": 1,
    "training": 2,
    "inference": 2,
    "evaluation": 3,  # measures runs; never trains (test_evaluation_never_trains)
    "bench": 3,  # measures training and inference
    "experiments": 4,  # train, then measure: the paper's tables, the evidence, the demo
    "commands": 5,
    "cli": 6,
}
#: Layers allowed to import a sideways or higher layer package, with the reason.
ALLOWED = {("bench", "training"), ("bench", "inference")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str | None:
    """The layer of a cianet module; None for the package root (version and the lazy Predictor)."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    top = parts[1]
    if top in ("cli", "__main__"):
        return "cli"
    return top if top in LAYERS else "core"


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path, name: str, known: set[str]) -> list[tuple[str, list[str], int]]:
    """(imported cianet module, names taken from it, line) for every import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "cianet"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this module's package
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "cianet":
                continue
            names = [a.name for a in node.names]
            # "from cianet.x import y" imports the module cianet.x.y when y is a module
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
            out += [(s, [], node.lineno) for s in subs]
            rest = [n for n in names if f"{target}.{n}" not in known]
            if rest or not subs:
                out.append((target, rest, node.lineno))
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, list[tuple[str, list[str], int]]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(path, name, known) for name, path in mods.items()}


@pytest.mark.slow
def test_every_module_has_a_layer(graph):
    for name in graph:
        assert name == "cianet" or layer_of(name) in LAYERS, name


def test_imports_go_one_way(graph):
    bad = []
    for src, edges in graph.items():
        a = layer_of(src)
        for target, _, line in edges:
            b = layer_of(target)
            if a is None or b is None or a == b or (a, b) in ALLOWED:
                continue
            if b == "commands" or LAYERS[b] >= LAYERS[a]:
                bad.append(f"{src}:{line} ({a}) imports {target} ({b})")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_module_imports_commands_but_the_cli(graph):
    bad = [
        f"{src}:{line}"
        for src, edges in graph.items()
        for target, _, line in edges
        if target.startswith("cianet.commands") and not src.startswith("cianet.commands") and layer_of(src) != "cli"
    ]
    assert not bad


def test_inference_never_imports_training_or_evaluation(graph):
    bad = [
        f"{src}:{line} -> {target}"
        for src, edges in graph.items()
        if src.startswith("cianet.inference")
        for target, _, line in edges
        if target.startswith(("cianet.training", "cianet.evaluation"))
    ]
    assert not bad


def test_evaluation_never_trains(graph):
    """Evaluation measures runs and never trains: what trains, then measures, is cianet.experiments."""
    bad = [
        f"{src}:{line} -> {target}"
        for src, edges in graph.items()
        if src.startswith("cianet.evaluation")
        for target, _, line in edges
        if target.startswith(("cianet.training", "cianet.experiments"))
    ]
    assert not bad


def test_data_never_imports_the_phantom(graph):
    """The phantom writes data sets and re-reads them with cianet.data; the readers know nothing of it."""
    bad = [
        f"{src}:{line} -> {target}"
        for src, edges in graph.items()
        if src.startswith("cianet.data")
        for target, _, line in edges
        if target.startswith("cianet.phantom")
    ]
    assert not bad


def test_no_import_cycle(graph):
    edges = {src: {t for t, _, _ in e if t in graph and t != src and t != "cianet"} for src, e in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_imports_another_modules_private_name(graph):
    bad = [
        f"{src}:{line} takes {n} from {target}"
        for src, edges in graph.items()
        for target, names, line in edges
        for n in names
        if n.startswith("_") and not n.startswith("__") and target != src
    ]
    assert not bad


def test_the_walker_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from cianet.training.loop import fit\n    import cianet.run.device\n")
    found = {t for t, _, _ in imports_of(f, "cianet.inference.m", {"cianet.training.loop", "cianet.run.device"})}
    assert found == {"cianet.training.loop", "cianet.run.device"}
