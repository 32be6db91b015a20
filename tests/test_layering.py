"""The house rules, read from the source (ast), so they stay true without running any code:

- imports point down only: ``cli/commands > pipeline, advise > stages > tasks > train > models, data,
  metrics > runtime > config`` (every import counts: module-level, inside functions, relative, absolute);
- a stage never imports another stage (they meet in output folders);
- the import graph has no cycle (delayed, function-level imports included: they hide a cycle, not break it);
- no file over 450 lines, no function over 80 (today's exceptions listed, to be split).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Floor of each top-level part of the package: a module may import its own floor or any lower one.
FLOORS = {
    "config": 0,
    "runtime": 1,
    "folders": 1,
    "models": 2,
    "data": 2,
    "metrics": 2,
    "train": 3,
    "tasks": 4,
    "stages": 5,
    "pipeline": 6,
    "advise": 6,
    "cli": 7,
    "commands": 7,
    # package data: lm-evaluation-harness loads this file by path, it imports nothing of lmadapt
    "harness_tasks": 7,
}

# Imports that run up today, each with why it is tolerated; the test fails when one disappears,
# so this list only shrinks.
ALLOWED_UP: set[tuple[str, str]] = set()


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The lmadapt modules one import statement names (``from pkg import mod`` names pkg.mod)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "lmadapt"]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    base = node.module or ""
    if node.level:
        parts = package.split(".")
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([base] if base else []))
    if base.split(".")[0] != "lmadapt":
        return []
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def _imports() -> list[tuple[str, str, int, bool]]:
    """(importer, imported, line, at module level) for every lmadapt import in the package."""
    out = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        top = {id(n) for n in tree.body}
        # an import under a module-level `if`/`try` (TYPE_CHECKING aside) still runs at import time
        for stmt in tree.body:
            if isinstance(stmt, (ast.If, ast.Try)) and not _is_type_checking(stmt):
                top |= {id(n) for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(module, path, node):
                    out.append((module, target, node.lineno, id(node) in top))
    return out


def _is_type_checking(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test)


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "lmadapt"


def _floor(module: str) -> int | None:
    return FLOORS.get(_part(module))


def test_every_part_has_a_floor():
    unknown = sorted({_part(m) for m in MODULES} - set(FLOORS) - {"lmadapt"})
    assert not unknown, f"parts of lmadapt with no floor in tests/test_layering.py FLOORS: {unknown}"


def test_imports_point_down():
    up, seen = [], set()
    for importer, imported, line, _ in _imports():
        low, high = _floor(importer), _floor(imported)
        if low is None or high is None or high <= low:
            continue
        if (importer, imported) in ALLOWED_UP:
            seen.add((importer, imported))
            continue
        up.append(f"{MODULES[importer].relative_to(SRC)}:{line} imports {imported} (a higher floor)")
    assert not up, "imports that run up:\n" + "\n".join(up)
    assert seen == ALLOWED_UP, f"allowed exceptions no longer needed (remove them): {sorted(ALLOWED_UP - seen)}"


def test_stages_never_import_each_other():
    # a stage's own helper modules share its name's first word (pretrain.py, pretrain_data.py, pretrain_vocab.py)
    bad = [
        f"{MODULES[a].relative_to(SRC)}:{line} imports {b}"
        for a, b, line, _ in _imports()
        if _part(a) == _part(b) == "stages"
        and a != "lmadapt.stages"
        and b != "lmadapt.stages"
        and a.split(".")[2].split("_")[0] != b.split(".")[2].split("_")[0]
    ]
    assert not bad, "a stage imports another stage:\n" + "\n".join(bad)


# Cycles tolerated for a while (each with why); none since issue 21's moves. The test fails when one
# listed here disappears, so the list only shrinks.
KNOWN_CYCLES: list[frozenset[str]] = []


def test_no_import_cycle():
    """Every import counts, delayed ones too: a delayed import only hides a cycle, it does not break it."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for importer, imported, _, _ in _imports():
        # a module importing its own package's __init__ (`from . import x` of a name there) is how packages work
        if imported in graph and imported != importer and not importer.startswith(imported + "."):
            graph[importer].add(imported)
    cycles = [frozenset(c) for c in _cycles(graph)]
    new = [c for c in cycles if c not in KNOWN_CYCLES]
    assert not new, "import cycles:\n" + "\n".join(" <-> ".join(sorted(c)) for c in new)
    gone = [sorted(c) for c in KNOWN_CYCLES if c not in cycles]
    assert not gone, f"KNOWN_CYCLES holds cycles that are gone (remove them): {gone}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, comps = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps


MAX_FILE_LINES, MAX_FUNCTION_LINES = 450, 80
# Over the limits today, each to be split (issue 21); the test fails when one shrinks under its limit
# (remove it then), so these lists only shrink.
LONG_FILES = set()
LONG_FUNCTIONS = set()


def test_files_and_functions_read_in_one_sitting():
    long_files, long_functions = set(), set()
    for path in MODULES.values():
        name = path.relative_to(SRC / "lmadapt").as_posix()
        text = path.read_text()
        if len(text.splitlines()) > MAX_FILE_LINES:
            long_files.add(name)
        for node in ast.walk(ast.parse(text)):
            if (
                isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
            ):
                long_functions.add(f"{name}:{node.name}")
    assert long_files <= LONG_FILES, f"files over {MAX_FILE_LINES} lines: {sorted(long_files - LONG_FILES)}"
    assert long_functions <= LONG_FUNCTIONS, (
        f"functions over {MAX_FUNCTION_LINES} lines: {sorted(long_functions - LONG_FUNCTIONS)}"
    )
    assert long_files == LONG_FILES and long_functions == LONG_FUNCTIONS, (
        f"now within the limits (remove from the lists): {sorted((LONG_FILES - long_files) | (LONG_FUNCTIONS - long_functions))}"
    )
