"""The package's imports run one way: entry points -> federation / engine -> core.

The import graph is read from the source with `ast` (module-level and function-level
imports alike, since a function-level import is an arrow all the same) and checked:

- the core (fedmtl/data, fedmtl/model, fedmtl/weighting, fedmtl/cohort, tasks, train,
  metrics, client_step, sparse_codec, itemitem) imports nothing from
  fedmtl.federation, fedmtl.engine, Flower, Ray or the entry points, and importing it
  loads none of them;
- report and sweep are in no import cycle, and no cycle exists beyond those listed in
  KNOWN_CYCLES; no module outside federation / engine / the entry points imports one of
  them beyond KNOWN_UPWARD.

KNOWN_CYCLES and KNOWN_UPWARD are empty: a new cycle or upward import fails this test.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fedmtl"

CORE_PACKAGES = ("fedmtl.data", "fedmtl.model", "fedmtl.weighting", "fedmtl.cohort")
CORE_MODULES = ("fedmtl.tasks", "fedmtl.train", "fedmtl.metrics", "fedmtl.client_step",
                "fedmtl.sparse_codec", "fedmtl.itemitem", "fedmtl.sequence", "fedmtl.dp_rows", "fedmtl.privacy_floor",
                "fedmtl.local_rounds", "fedmtl.checks", "fedmtl.knob_names", "fedmtl.errors", "fedmtl.seeds",
                "fedmtl.config_types")
ENTRY_POINTS = ("fedmtl.simulate", "fedmtl.report", "fedmtl.sweep", "fedmtl.deploy", "fedmtl.baselines")
ABOVE_CORE = ("fedmtl.federation", "fedmtl.engine", "flwr", "ray", *ENTRY_POINTS)

KNOWN_CYCLES: set = set()
KNOWN_UPWARD: set = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def imports_of(name: str) -> set[str]:
    """Every module `name` imports, at any level of its source: `fedmtl.x.y` for a fedmtl
    module (`from .pkg import mod` gives pkg.mod, `from .pkg import func` gives pkg), the
    dotted name as written for anything else."""
    path = MODULES[name]
    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            out.update(f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in node.names)
    out.discard(name)
    return out


GRAPH = {name: imports_of(name) for name in MODULES}
CORE = sorted(m for m in MODULES if under(m, CORE_PACKAGES) or m in CORE_MODULES)


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    edges = {m: [n for n in deps if n in graph] for m, deps in graph.items()}
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(frozenset(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_imports_at_every_level():
    # the graph itself: a function-level import and a relative `from . import module` are arrows
    assert "fedmtl.report.summary" in GRAPH["fedmtl.sweep"]  # SweepReport.on_multirun_end's import
    assert "fedmtl.transfer.new_items" in GRAPH["fedmtl.client_step"]  # from .transfer import new_items
    assert "fedmtl.privacy_floor" in GRAPH["fedmtl.config"]  # inside validate
    assert len(CORE) > 20 and "fedmtl.data.split" in CORE and "fedmtl.weighting.pcgrad" in CORE


def test_the_core_imports_nothing_above_it():
    found = {m: sorted(d for d in GRAPH[m] if under(d, ABOVE_CORE)) for m in CORE}
    found = {m: d for m, d in found.items() if d}
    assert not found, f"core modules importing federation / engine / Flower / entry points: {found}"


def test_importing_the_core_loads_no_flower():
    code = (f"import sys\nfor m in {CORE!r}: __import__(m)\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in ('flwr', 'ray') "
            f"or m.split('.')[:2] in (['fedmtl', 'federation'], ['fedmtl', 'engine'])))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", f"importing the core loads {r.stdout.strip()}"


def test_report_and_sweep_are_in_no_cycle_and_no_new_cycle_exists():
    found = cycles(GRAPH)
    assert not [c for c in found if any(under(m, ("fedmtl.report", "fedmtl.sweep")) for m in c)], found
    assert set(found) <= KNOWN_CYCLES, f"new import cycles: {[sorted(c) for c in set(found) - KNOWN_CYCLES]}"
    # the report reads run folders without Hydra's callback
    assert not [m for m in GRAPH if under(m, ("fedmtl.report",)) and "fedmtl.sweep" in GRAPH[m]]


def test_no_new_upward_import():
    upward = {(m, d) for m, deps in GRAPH.items() if not under(m, ABOVE_CORE) for d in deps
              if under(d, ABOVE_CORE) and d in MODULES}
    assert upward <= KNOWN_UPWARD, f"new imports of federation / engine / entry points from below: {upward - KNOWN_UPWARD}"


MAX_LINES = 400


def test_no_module_is_over_400_lines():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by job): {long}"


CLIENT_SIDE = ("fedmtl.federation.deployed",)  # a SuperNode builds its own partition's data


def test_the_server_side_reads_the_federation_s_metadata_not_its_data():
    """Server code (ServerApp, strategies, reply checks, SecAgg+, the Gram round) gets
    data.federation_meta: the model's sizes and item features and two bounds, never the
    interactions that federation_for holds."""
    readers = sorted(m for m in MODULES if under(m, ("fedmtl.federation",)) and m not in CLIENT_SIDE
                     and "federation_for" in MODULES[m].read_text())
    assert not readers, f"federation modules reading the whole federation (use federation_meta): {readers}"
    assert "federation_meta" in MODULES["fedmtl.federation.server_app"].read_text()
