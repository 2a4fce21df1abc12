"""The shape of the source tree, read from the ast of ``src/``: no import circle, every arrow
points down the layers, no module over 450 lines but the numba kernel files.

Every import counts, function-local and ``TYPE_CHECKING`` ones included (a circle through a
lazy import is still a circle); only the layering check leaves ``TYPE_CHECKING`` imports out.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 450

# Lowest first: a module may import modules of its own layer or of a lower one.  Each entry is a
# module or a package prefix (``llmds`` itself: the package's __init__ only); the longest
# matching entry decides.
LAYERS: list[tuple[str, ...]] = [
    ("llmds", "llmds.errors", "llmds._checks", "llmds._lazy", "llmds._jit"),
    ("llmds.utils", "llmds.memory", "llmds.scheduling", "llmds.sketches"),  # the structures
    ("llmds.retrieval",),
    ("llmds.engine.config", "llmds.engine.request", "llmds.engine.metrics",  # the engine's data
     "llmds.engine.structured", "llmds.engine._mask_kernel", "llmds.engine.sequence"),
    ("llmds.engine.kv", "llmds.engine.sched"),
    ("llmds.engine.models", "llmds.engine.loader", "llmds.engine.sampling", "llmds.engine._sample_kernel", "llmds.engine.text",
     "llmds.engine.runner"),
    ("llmds.engine.engine", "llmds.engine.async_engine", "llmds.engine"),
    ("llmds.kv_arena",),
    ("cb_lab",),
    ("llmds.server",),
    ("llmds.cli", "llmds.bench_runner", "llmds.terminal"),
]
# The seed's import paths: one-line re-exports for users; nothing in src imports them.
SEED_PATHS = {
    "llmds.paged_allocator", "llmds.kv_cache", "llmds.token_lru", "llmds.indexed_heap",
    "llmds.scheduler", "llmds.admissions", "llmds.cmsketch", "llmds.tokenizer",
    "llmds.inverted_index", "llmds.hnsw", "llmds.retrieval_pipeline", "llmds.fusion",
    "llmds.chunking", "llmds.embeddings",
}


def _modules() -> dict[str, Path]:
    out = {}
    for f in SRC.rglob("*.py"):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(name: str) -> list[tuple[str, bool]]:
    """``(imported module, only for type checkers)`` for every import of ``name`` that names
    one of our modules (``from pkg import mod`` is an import of ``pkg.mod``)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[tuple[str, bool]] = []

    def visit(node: ast.AST, typing_only: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, typing_only)
            return
        if isinstance(node, ast.Import):
            out.extend((a.name, typing_only) for a in node.names if a.name in MODULES)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                if full in MODULES:
                    out.append((full, typing_only))
                elif base in MODULES:
                    out.append((base, typing_only))
        for child in ast.iter_child_nodes(node):
            visit(child, typing_only)

    visit(ast.parse(path.read_text()), False)
    return [(m, t) for m, t in out if m != name]


GRAPH = {m: _imports(m) for m in MODULES}


def _layer(module: str) -> int:
    best, rank = "", None
    for i, entries in enumerate(LAYERS):
        for e in entries:
            if (module == e or (e != "llmds" and module.startswith(e + "."))) and len(e) >= len(best):
                best, rank = e, i
    assert rank is not None, f"{module} is in no layer of tests/test_import_graph.py: add it"
    return rank


def test_no_import_circle():
    graph = {m: {t for t, _ in edges} for m, edges in GRAPH.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    assert circles == []


def test_every_arrow_points_down_the_layers():
    up = []
    for m, edges in sorted(GRAPH.items()):
        if m in SEED_PATHS:
            continue
        for target, typing_only in edges:
            if typing_only:
                continue
            assert target not in SEED_PATHS, f"{m} imports the seed path {target}: import the real module"
            if _layer(target) > _layer(m):
                up.append(f"{m} -> {target}")
    assert up == []


def test_seed_paths_are_one_line_re_exports():
    for name in SEED_PATHS:
        tree = ast.parse(MODULES[name].read_text())
        body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        assert len(body) == 1 and isinstance(body[0], ast.ImportFrom), name


def test_the_engine_never_imports_the_arena_or_cb_lab():
    for m, edges in GRAPH.items():
        if m.startswith("llmds.") and not m.startswith("llmds.kv_arena"):
            bad = [t for t, _ in edges if t.startswith(("llmds.kv_arena", "cb_lab"))]
            assert bad == [], f"{m} imports {bad}"


def test_no_module_over_450_lines_but_numba_kernels():
    long = {m: n for m, p in MODULES.items()
            if not p.name.endswith("_kernels.py") and (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
