"""The package's layers, checked from its source (stdlib ast, nothing imported).

Every import counts: module level, inside functions, and under
``if TYPE_CHECKING:``. Two rules:

- no cycle between modules (a package's ``__init__`` is a module too);
- a module imports only its own package or a package of a lower rank
  (``RANKS``): imports flow one way, down the layers the README's layout
  section names. Siblings of one rank (``session``, ``store``, ``catalog``) do
  not import each other.

Each checker is also run on a small planted package, so a checker that cannot
see a cycle or an upward import fails here rather than passing on anything.
"""

from __future__ import annotations

import ast
import pathlib
from collections import defaultdict

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAX_LINES = 500

# Rank of each unit (a top-level module or a sub-package). Lower ranks never
# import higher ones. Keep in step with the README's "Layout" section.
RANKS: dict[str, int] = {
    "ursa_daemon.errors": 0,
    "ursa_daemon.log": 1,
    "ursa_daemon.config": 2,
    "ursa_daemon.session": 3,
    "ursa_daemon.store": 3,
    "ursa_daemon.catalog": 3,
    "ursa_daemon.transfer": 4,
    "ursa_daemon.daemon": 5,
    "ursa_daemon.api": 6,
    "ursa_daemon.cli": 7,
    "ursa_daemon.__main__": 8,
    "ursa_daemon": 8,  # the package's own __init__: lazy re-exports of the public surface
    "ursa": 9,  # the seeds' API, over everything in ursa_daemon but the CLI
}


def modules(root: pathlib.Path, packages: tuple[str, ...]) -> dict[str, pathlib.Path]:
    """Dotted module name -> source file, for every .py under ``packages``."""
    found: dict[str, pathlib.Path] = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _targets(name: str, is_pkg: bool, node: ast.Import | ast.ImportFrom, known: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = name.split(".")
        if not is_pkg:
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    out = []
    for alias in node.names:
        candidate = f"{prefix}.{alias.name}"
        out.append(candidate if candidate in known else prefix)
    return out


def import_graph(mods: dict[str, pathlib.Path]) -> dict[str, set[str]]:
    """Module -> the package modules it imports (anywhere in its source)."""
    known = set(mods)
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _targets(name, path.name == "__init__.py", node, known):
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    nodes = sorted(set(graph) | {t for ts in graph.values() for t in ts})
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def unit(name: str, ranks: dict[str, int]) -> str:
    """The ranked unit a module belongs to: its longest ranked prefix."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in ranks:
            return candidate
    raise KeyError(f"{name}: no rank; add its package to RANKS (and to the README's layout)")


def layer_violations(graph: dict[str, set[str]], ranks: dict[str, int]) -> list[str]:
    bad = []
    for src, targets in sorted(graph.items()):
        src_unit = unit(src, ranks)
        for dst in sorted(targets):
            dst_unit = unit(dst, ranks)
            if dst_unit != src_unit and ranks[dst_unit] >= ranks[src_unit]:
                ranked = f"{src_unit} rank {ranks[src_unit]} -> {dst_unit} rank {ranks[dst_unit]}"
                bad.append(f"{src} imports {dst} ({ranked})")
    return bad


# --- the package ------------------------------------------------------------

MODS = modules(ROOT, ("ursa_daemon", "ursa"))
GRAPH = import_graph(MODS)


def test_graph_sees_the_package() -> None:
    # The walk found the layers and their edges (an empty graph would pass every rule).
    assert len(MODS) > 50
    assert "ursa_daemon.catalog.rows" in MODS
    assert any(t.startswith("ursa_daemon.catalog") for t in GRAPH["ursa_daemon.transfer.register"])


def test_every_module_has_a_layer() -> None:
    # A new top-level module must be ranked, not fall into the package __init__'s rank.
    unranked = [m for m in MODS if m != "ursa_daemon" and unit(m, RANKS) == "ursa_daemon"]
    assert unranked == []


def test_no_import_cycle() -> None:
    assert cycles(GRAPH) == []


def test_imports_flow_down_the_layers() -> None:
    assert layer_violations(GRAPH, RANKS) == []


def test_nothing_below_the_api_imports_it() -> None:
    below = [m for m in MODS if RANKS[unit(m, RANKS)] < RANKS["ursa_daemon.api"]]
    assert below
    assert [m for m in below if "ursa_daemon.api" in GRAPH.get(m, ())] == []


@pytest.mark.parametrize(
    ("owner", "clients"),
    [("ursa_daemon.store", ("obstore", "botocore", "boto3")), ("ursa_daemon.catalog", ("lancedb", "lance"))],
)
def test_one_package_owns_each_client_library(owner: str, clients: tuple[str, ...]) -> None:
    offenders = []
    for name, path in MODS.items():
        if unit(name, RANKS) == owner:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            offenders += [f"{name}: {n}" for n in names if n.split(".")[0] in clients]
    assert offenders == []


def test_no_module_over_500_lines() -> None:
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in MODS.items()}
    long = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert long == {}


# --- the checkers find what they look for -----------------------------------


def _plant(tmp_path: pathlib.Path, files: dict[str, str]) -> dict[str, set[str]]:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_graph(modules(tmp_path, ("pkg",)))


def test_checker_finds_a_cycle_through_a_type_only_import(tmp_path: pathlib.Path) -> None:
    graph = _plant(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/low/__init__.py": "",
            "pkg/low/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.high import b\n",
            "pkg/high.py": "def f():\n    from .low import a\n",
        },
    )
    assert cycles(graph) == [["pkg.high", "pkg.low.a"]]
    ranks = {"pkg": 9, "pkg.low": 0, "pkg.high": 1}
    assert layer_violations(graph, ranks) == ["pkg.low.a imports pkg.high (pkg.low rank 0 -> pkg.high rank 1)"]


def test_checker_resolves_relative_and_package_imports(tmp_path: pathlib.Path) -> None:
    graph = _plant(
        tmp_path,
        {
            "pkg/__init__.py": "from .mid import thing\n",
            "pkg/mid/__init__.py": "from . import leaf\nfrom ..top import x\n",
            "pkg/mid/leaf.py": "import pkg.mid\n",
            "pkg/top.py": "",
        },
    )
    assert graph["pkg"] == {"pkg.mid"}
    assert graph["pkg.mid"] == {"pkg.mid.leaf", "pkg.top"}
    assert cycles(graph) == [["pkg.mid", "pkg.mid.leaf"]]
    ranks = {"pkg": 9, "pkg.mid": 1, "pkg.top": 1}
    # same rank, different unit: siblings do not import each other
    assert layer_violations(graph, ranks) == ["pkg.mid imports pkg.top (pkg.mid rank 1 -> pkg.top rank 1)"]


@pytest.mark.parametrize("name", ["ursa_daemon.nowhere", "elsewhere.mod"])
def test_an_unranked_module_is_named(name: str) -> None:
    with pytest.raises(KeyError, match="no rank"):
        unit(name, {"ursa_daemon.errors": 0})
