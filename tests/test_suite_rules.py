"""Rules of the test suite itself, checked on its source (no server, no subprocess)."""

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def functions(tree: ast.Module) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    return {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def runs_curl(tree: ast.Module) -> set[str]:
    """The functions of a module that run curl: those naming the binary ("curl" as a string
    of its own), and those calling one that does, however deep."""
    defs = functions(tree)
    found = {
        name
        for name, fn in defs.items()
        if any(isinstance(n, ast.Constant) and n.value == "curl" for n in ast.walk(fn))
    }
    while True:
        callers = {
            name
            for name, fn in defs.items()
            if name not in found and any(isinstance(n, ast.Name) and n.id in found for n in ast.walk(fn))
        }
        if not callers:
            return found
        found |= callers


def test_every_test_that_runs_curl_skips_where_curl_is_missing() -> None:
    """A test that runs the curl binary carries tests.marks.needs_curl: without it, a machine
    without curl fails the test with FileNotFoundError instead of skipping it."""
    unmarked = []
    for path in sorted(TESTS.glob("test_*.py")):
        if path.name == Path(__file__).name:  # names curl to look for it, and runs nothing
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defs = functions(tree)
        for name in sorted(runs_curl(tree)):
            decorators = [ast.unparse(d) for d in defs[name].decorator_list]
            if name.startswith("test_") and "needs_curl" not in decorators:
                unmarked.append(f"{path.name}::{name}")
    assert unmarked == []


def test_the_curl_rule_sees_a_test_that_runs_curl_through_a_helper() -> None:
    """The check above can fail: a helper naming curl makes its callers' callers count."""
    tree = ast.parse(
        "def curl(*a): return run(['curl', *a])\n"
        "def fetch(): return curl('-sS')\n"
        "def test_a(): fetch()\n"
        "def test_b(): pass\n"
    )
    assert runs_curl(tree) == {"curl", "fetch", "test_a"}
