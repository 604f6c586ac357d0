"""The package's layers point down only (docs/architecture.md): no import cycle, and the
forbidden dependencies never hold, directly or through other modules.

Imports are read from the source (every ``import`` and ``from ... import`` statement,
function-level ones included), so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

PKG = Path(__file__).resolve().parents[1] / "fleetsim"


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> nx.DiGraph:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    g = nx.DiGraph()
    g.add_nodes_from(files)
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                # `from fleetsim.x import y` imports the module fleetsim.x.y if it is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
                           for a in node.names]
            for t in targets:
                if t in files and t != mod:
                    g.add_edge(mod, t)
    return g


GRAPH = import_graph()


def reaches(src_prefix: str, dst_prefixes: tuple[str, ...]) -> list[tuple[str, str]]:
    """(source module, forbidden module) pairs where the first reaches the second."""
    bad = []
    for src in GRAPH:
        if not (src == src_prefix or src.startswith(src_prefix + ".")):
            continue
        for dst in nx.descendants(GRAPH, src):
            if any(dst == d or dst.startswith(d + ".") for d in dst_prefixes):
                bad.append((src, dst))
    return bad


def test_the_graph_was_read() -> None:
    # guards the checks below against a reader that finds no edges
    assert GRAPH.number_of_nodes() > 40
    assert GRAPH.has_edge("fleetsim.engine.server", "fleetsim.backends")
    assert GRAPH.has_edge("fleetsim.build", "fleetsim.policies")  # a function-level import


def test_no_import_cycle() -> None:
    cycles = [c for c in nx.strongly_connected_components(GRAPH) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


RUNNER = ("fleetsim.build", "fleetsim.api", "fleetsim.batch", "fleetsim.cli",
          "fleetsim.cli_batch", "fleetsim.cli_traces", "fleetsim.choose")
LOADER = ("fleetsim.scenario",)


@pytest.mark.parametrize("src, forbidden", [
    ("fleetsim.policies", ("fleetsim.engine", *RUNNER, *LOADER)),
    ("fleetsim.dse", ("fleetsim.engine", *RUNNER, *LOADER)),
    ("fleetsim.dse_proxy", ("fleetsim.engine", "fleetsim.policies", *RUNNER, *LOADER)),
    ("fleetsim.server.aggregation", ("fleetsim.engine", *RUNNER, *LOADER)),
    ("fleetsim.server.robust", ("fleetsim.engine", *RUNNER, *LOADER)),
    ("fleetsim.server.privacy", ("fleetsim.engine", *RUNNER, *LOADER)),
    ("fleetsim.pipeline", ("fleetsim.engine", *RUNNER, *LOADER)),
    ("fleetsim.transforms", ("fleetsim.server", "fleetsim.engine", *RUNNER, *LOADER)),
    ("fleetsim.attacks", ("fleetsim.server", "fleetsim.engine", *RUNNER, *LOADER)),
    ("fleetsim.training", ("fleetsim.server", "fleetsim.engine", *RUNNER, *LOADER)),
    ("fleetsim.batched", ("fleetsim.server", "fleetsim.engine", *RUNNER, *LOADER)),
    ("fleetsim.backends", ("fleetsim.engine", *RUNNER, *LOADER)),
    ("fleetsim.traces", ("fleetsim.engine", *RUNNER, *LOADER)),
    ("fleetsim.nn", ("fleetsim.scenario", "fleetsim.config", "fleetsim.engine", *RUNNER)),
    ("fleetsim.data", ("fleetsim.scenario", "fleetsim.config", "fleetsim.engine", *RUNNER)),
    ("fleetsim.costs", ("fleetsim.scenario", "fleetsim.config", "fleetsim.engine", *RUNNER)),
    ("fleetsim.engine", (*RUNNER, *LOADER, "fleetsim.checkpoint")),
    ("fleetsim.config", ("fleetsim.scenario", "fleetsim.engine", *RUNNER)),
    # inside the engine: one device's timing knows no server; each server knows not the
    # other; the row definitions know nothing of the engine's other parts
    ("fleetsim.engine.timing", ("fleetsim.engine.server", "fleetsim.engine.sync",
                                "fleetsim.engine.async_server", "fleetsim.engine.core",
                                "fleetsim.engine.shared")),
    ("fleetsim.engine.power", ("fleetsim.engine.timing", "fleetsim.engine.server",
                               "fleetsim.engine.shared", "fleetsim.engine.core")),
    ("fleetsim.engine.shared", ("fleetsim.engine.server", "fleetsim.engine.sync",
                                "fleetsim.engine.async_server", "fleetsim.engine.core")),
    ("fleetsim.engine.sync", ("fleetsim.engine.async_server", "fleetsim.engine.core")),
    ("fleetsim.engine.async_server", ("fleetsim.engine.sync", "fleetsim.engine.core")),
    ("fleetsim.engine.rows", ("fleetsim.engine.settings", "fleetsim.engine.timing",
                              "fleetsim.engine.server", "fleetsim.engine.core")),
])
def test_layers_point_down(src: str, forbidden: tuple[str, ...]) -> None:
    assert any(n == src or n.startswith(src + ".") for n in GRAPH), src
    assert not reaches(src, forbidden)


def test_the_check_can_fail() -> None:
    # the CLI does reach the engine: the reachability test is not vacuous
    assert reaches("fleetsim.cli", ("fleetsim.engine",))


@pytest.mark.parametrize("module", ["fleetsim.engine", "fleetsim.training", "fleetsim.backends",
                                    "fleetsim.dse", "fleetsim.dse_proxy",
                                    "fleetsim.batched"])
def test_parts_take_settings_not_the_scenario(module: str) -> None:
    """The engine, trainer, backends and DSE never see a whole Scenario."""
    path = PKG / module.removeprefix("fleetsim.").replace(".", "/")
    paths = sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
    assert paths and all(p.exists() for p in paths), path
    text = "".join(p.read_text() for p in paths)
    assert "Scenario" not in text.replace("Scenario's", ""), \
        f"{module} mentions Scenario; it should take its own settings"


def test_device_timing_needs_no_simpy() -> None:
    """One device's round is timed in plain Python: no SimPy in the timer's imports."""
    tree = ast.parse((PKG / "engine" / "timing.py").read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert names and not any(m == "simpy" or m.startswith("simpy.") for m in names)
    assert GRAPH.has_edge("fleetsim.engine.timing", "fleetsim.traces") or \
        GRAPH.has_edge("fleetsim.engine.timing", "fleetsim.fleet")
    assert not reaches("fleetsim.engine.timing", ("fleetsim.engine.server",))
