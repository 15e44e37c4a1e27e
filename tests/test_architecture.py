"""The layering rules of the README's Architecture section, checked on the source itself.

Every ``import`` of a tunesmith module counts, at module level or inside a function, and so
do the names a package ``__init__`` loads lazily. A module may import only modules of its
own layer or a lower one, the graph has no cycles, and no module is much over 600 lines.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "tunesmith"

# Most specific prefix wins. 0: the ground; 1: data, backbones, training parts, evaluation;
# 2: the estimators (one module per kind); 3: work over any estimator; 4: entry points.
LAYERS: dict[str, int] = {
    "tunesmith.errors": 0,
    "tunesmith._lazy": 0,
    "tunesmith._version": 0,
    "tunesmith.config": 0,
    "tunesmith.progress": 0,
    "tunesmith.runs": 0,
    "tunesmith.data": 1,
    "tunesmith.datasets": 1,
    "tunesmith.model": 1,
    "tunesmith.backbones": 1,
    "tunesmith.adapt": 1,
    "tunesmith.train": 1,
    "tunesmith.evaluate": 1,
    "tunesmith.tabular": 1,
    "tunesmith.recsys": 1,
    "tunesmith.personalize": 1,
    "tunesmith.estimators": 2,
    "tunesmith.tabular.estimator": 2,
    "tunesmith.tabular.folder": 2,
    "tunesmith.recsys.recommender": 2,
    "tunesmith.personalize.personalizer": 2,
    "tunesmith.kinds": 3,
    "tunesmith.export": 3,
    "tunesmith.search": 3,
    "tunesmith.quality": 3,
    "tunesmith.monitor": 3,
    "tunesmith.refit": 3,
    "tunesmith.cli": 4,
    "tunesmith.serve": 4,
    "tunesmith": 4,
}

# A package whose ``__init__`` re-exports the estimator defined in one of its modules sits
# with that estimator; its helper modules keep their own layer.
PACKAGES_WITH_AN_ESTIMATOR = {"tunesmith.tabular": 2}

# Old import paths kept for one release; they re-export from the new place and nothing in the
# package may import them.
DEPRECATED_ALIASES = {"tunesmith.estimator", "tunesmith.vision", "tunesmith.evaluate.cv"}

MAX_LINES = 650  # "no module much over 600 lines"


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _layer(module: str) -> int:
    if module in DEPRECATED_ALIASES:
        return 4
    if module in PACKAGES_WITH_AN_ESTIMATOR:
        return PACKAGES_WITH_AN_ESTIMATOR[module]
    best, layer = -1, 4
    for prefix, value in LAYERS.items():
        if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
            best, layer = len(prefix), value
    return layer


def _imports(module: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("tunesmith."):
            # a module a package __init__ loads lazily, named by its path
            if node.value in MODULES:
                out.add(node.value)
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _cycles() -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in MODULES:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    assert _cycles() == []


def test_layers_import_only_downward() -> None:
    wrong = defaultdict(list)
    for module, targets in GRAPH.items():
        if module in DEPRECATED_ALIASES:
            continue
        for target in targets:
            if target == "tunesmith" and module.startswith("tunesmith."):
                wrong[module].append(target)
            elif _layer(target) > _layer(module):
                wrong[module].append(f"{target} (layer {_layer(target)} > {_layer(module)})")
    assert dict(wrong) == {}


def test_nothing_imports_a_deprecated_alias() -> None:
    users = {m: sorted(t & DEPRECATED_ALIASES) for m, t in GRAPH.items() if t & DEPRECATED_ALIASES}
    users = {m: t for m, t in users.items() if m not in DEPRECATED_ALIASES and m != "tunesmith"}
    assert users == {}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_size(module: str) -> None:
    lines = MODULES[module].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{module} has {lines} lines; split it along a natural seam"
