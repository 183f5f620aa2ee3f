"""The layering (docs/ARCHITECTURE.md): imports point one way, handlers -> vault <- storage, and
only handlers/ knows HTTP. Read from the source, so a stray import fails here, not in review."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# package -> top-level packages it must never import
FORBIDDEN = {
    "vault": {"tornado", "storage", "handlers", "run"},
    "storage": {"tornado", "handlers", "run"},
    "handlers": {"storage", "run"},
    # the command-line client speaks only the public HTTP API: it works against any server
    "vaultcli": {"vault", "storage", "handlers", "run", "tornado"},
}


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, by full dotted name."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_point_one_way(package: str) -> None:
    wrong = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / package).glob("*.py"))
        for name in imported(path)
        if name.split(".")[0] in FORBIDDEN[package]
    }
    assert not wrong


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import tornado.web\nfrom storage.sqlite import SQLiteStore\n")
    assert imported(module) == {"tornado.web", "storage.sqlite"}


def cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle in ``graph`` (module -> modules it imports), or [] if there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_core_modules_import_no_cycle() -> None:
    """Nothing in vault/ imports its parent (TYPE_CHECKING imports included): the file pipeline
    gets a parameter object instead (vault/pipeline.py)."""
    modules = {path.stem for path in (ROOT / "vault").glob("*.py")}
    graph = {
        f"vault.{name}": {m for m in imported(ROOT / "vault" / f"{name}.py") if m.startswith("vault.")}
        for name in modules
    }
    assert cycle(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) == []
