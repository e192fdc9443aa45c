"""The package's import graph, read from the source (every import statement, function-level ones
included): which modules import which, the wings' order, and what code a DVC stage runs."""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipeline"
# Each wing builds on the ones before it (pipeline/__init__.py says so too).
WINGS = ["run", "backends", "data", "guidance", "evaluation", "config", "plan", "stages", "cli"]


def module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


@lru_cache(maxsize=None)
def modules() -> dict[str, Path]:
    return {module_of(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def wing(module: str) -> str | None:
    """The wing a module belongs to (None: the package's own __init__, below every wing)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def rank(module: str) -> int:
    w = wing(module)
    return -1 if w is None else WINGS.index(w)


def _resolve(name: str) -> str | None:
    """The module of ours an import names: "pipeline.run.files" or, for `from pipeline.run import files`,
    the submodule when there is one."""
    known = modules()
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the nodes under `if TYPE_CHECKING:` (imports for annotations: never run)."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            skip |= {id(n) for inner in node.body for n in ast.walk(inner)}
    return skip


def has_code(module: str) -> bool:
    """False for a module that is a docstring alone (a package's description): it cannot change a result."""
    body = ast.parse(modules()[module].read_text()).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


@lru_cache(maxsize=None)
def imports(module: str, run_only: bool = False) -> frozenset[str]:
    """Every module of ours that `module` imports anywhere in its code (run_only: not those imported for
    type annotations alone)."""
    path = modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    skip = _type_checking_only(tree) if run_only else set()
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # `from pipeline.x import y`: the submodule pipeline.x.y where there is one, else pipeline.x
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules() else base for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] == "pipeline":
                resolved = _resolve(target)
                if resolved and resolved != module:
                    found.add(resolved)
    return frozenset(found)


def edges() -> list[tuple[str, str]]:
    return [(a, b) for a in modules() for b in sorted(imports(a))]


def parents(module: str) -> list[str]:
    """The packages Python runs before a module: their __init__ is code the module depends on."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def closure(roots: list[str], skip=lambda a, b: False) -> set[str]:
    """Every module the roots run, transitively (with their packages' __init__); `skip(a, b)`: an edge
    that does not count (the CLI's import of the other stages)."""
    seen, todo = set(), list(roots)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo += [p for p in parents(m) if p in modules()]
        todo += [b for b in imports(m, run_only=True) if not skip(m, b)]
    return seen


def cycles() -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in imports(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in modules():
        if v not in index:
            visit(v)
    return out


def cli_commands() -> dict[str, str]:
    """`agd` sub-command -> the stage module its function imports (read from cli.py)."""
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    found = {}
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for deco in node.decorator_list:
            if isinstance(deco, ast.Call) and getattr(deco.func, "attr", "") == "command":
                name = deco.args[0].value if deco.args else node.name.replace("_", "-")
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom) and inner.module == "pipeline.stages":
                        found[name] = f"pipeline.stages.{inner.names[0].name}"
    return found


def stage_code(command: str) -> set[str]:
    """The modules `agd <command>` runs: the CLI (but not the other stages it names) and the stage."""
    stage = cli_commands()[command]

    def other_stage(a, b):
        return a == "pipeline.cli" and b.startswith("pipeline.stages.") and b != stage

    return {m for m in closure(["pipeline.cli", stage], skip=other_stage) if has_code(m)}
