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


# Every sleep in the tests, by module and enclosing function, and why it is not a guess at how
# long something takes (issue 18). A new sleep fails test_every_sleep_is_classified until it is
# listed here, which makes its author say which kind it is; one used to wait for something to
# happen must become a wait on the real condition instead. asyncio.sleep(0) (one turn of the
# event loop, no time) is not listed.
POLL = "poll: waits on a real condition, checked each turn; the deadline only ends a hang"
TIME = "time is the input: a TTL, lock-out or Retry-After on the real clock must pass"
PEER = "a slow peer: paces bytes, the behaviour under test"
PROMISE = "the documented bound under test (a revocation reaches every process within 1 s)"
INTERLEAVE = "holds a lock across a real wait, so that a second holder would show as overlap"
SLEEPS = {
    ("s3server.py", "S3Server._start"): POLL,
    ("server.py", "Server.start"): POLL,
    ("test_admin.py", "test_sighup_reloads_the_certificate_and_keeps_it_when_the_new_one_is_broken"): POLL,
    ("test_answer_order.py", "answer"): POLL,
    ("test_api.py", "wait_until_clean"): POLL,
    ("test_api.py", "test_upload_of_same_name_replaces_the_file"): POLL,
    ("test_audit.py", "wait_for_rows"): POLL,
    ("test_auth.py", "test_with_several_processes_a_logout_in_one_reaches_the_other.main"): POLL,
    ("test_cli.py", "interrupted_get.some_written"): POLL,
    ("test_faults.py", "wait_for_log"): POLL,
    ("test_faults.py", "fill_and_free"): POLL,
    ("test_faults.py", "test_kill_9_under_mixed_load_loses_no_acknowledged_upload"): POLL,
    ("test_hostile.py", "test_invalid_utf8_in_an_audited_path_is_400_and_audited"): POLL,
    ("test_hostile.py", "wait_until_charged"): POLL,
    ("test_instances.py", "test_a_logout_on_one_ends_the_token_on_the_other_within_a_second"): PROMISE,
    ("test_limits.py", "test_slow_steady_body_is_not_cut_off"): PEER,
    ("test_ops.py", "test_delete_user_asks_and_removes_files_shares_links_and_tokens"): POLL,
    ("test_proxy.py", "Nginx.start"): POLL,
    ("test_proxy.py", "test_the_client_address_comes_from_x_forwarded_for_of_the_trusted_proxy"): POLL,
    ("test_registration.py", "wait_for_status"): POLL,
    ("test_sharing.py", "test_link_token_is_not_written_to_the_server_log"): POLL,
    (
        "test_sharing.py",
        "test_five_wrong_passwords_lock_a_link_with_a_growing_backoff_even_for_the_right_one",
    ): TIME,
    ("test_slow_readers.py", "wait_for"): POLL,
    ("test_state.py", "test_a_mutex_lets_one_in_at_a_time_in_turn.scenario.visit"): INTERLEAVE,
    ("test_state.py", "test_sqlite_a_mutex_is_exclusive_across_processes.scenario.visit"): INTERLEAVE,
    (
        "test_throttle.py",
        "test_wrong_passwords_are_401_then_429_and_the_right_one_works_after_retry_after",
    ): TIME,
    ("test_tokens.py", "test_admin_reset_password_beside_the_server_revokes_every_token"): POLL,
    ("test_tokens.py", "test_expired_access_token_refreshes_and_an_expired_refresh_token_is_401"): TIME,
    ("test_transfers.py", "wait_for"): POLL,
    ("test_tus.py", "wait_for"): POLL,
    ("test_workers.py", "test_a_logout_is_honoured_by_every_worker_within_a_second"): PROMISE,
}


def sleeps(tree: ast.Module) -> set[str]:
    """The functions (dotted through nested defs and classes) that call a sleep of any kind
    but asyncio.sleep(0)."""
    found: set[str] = set()

    def visit(node: ast.AST, scope: tuple[str, ...]) -> None:
        for child in ast.iter_child_nodes(node):
            inner = scope
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                inner = (*scope, child.name)
            if isinstance(child, ast.Call) and ast.unparse(child.func).split(".")[-1] == "sleep":
                if ast.unparse(child) != "asyncio.sleep(0)":
                    found.add(".".join(scope) or "<module>")
            visit(child, inner)

    visit(tree, ())
    return found


def test_every_sleep_is_classified() -> None:
    seen = {
        (path.name, name)
        for path in sorted(TESTS.glob("*.py"))
        for name in sleeps(ast.parse(path.read_text(encoding="utf-8")))
    }
    assert sorted(seen - SLEEPS.keys()) == []  # a new sleep: classify it above, or wait on a condition
    assert sorted(SLEEPS.keys() - seen) == []  # gone: take it off the list


def test_the_sleep_rule_sees_sleeps_in_nested_functions_but_not_a_loop_turn() -> None:
    tree = ast.parse(
        "import asyncio, time\n"
        "def helper(): time.sleep(0.1)\n"
        "class C:\n    async def m(self):\n        async def inner(): await asyncio.sleep(0.5)\n"
        "async def turn(): await asyncio.sleep(0)\n"
        "def test_x(): sleep(1)\n"
    )
    assert sleeps(tree) == {"helper", "C.m.inner", "test_x"}


def own_defs(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """The functions defined in ``fn``'s own body, at any depth of its blocks (``with``,
    ``if``, loops), but not inside a nested function or class."""
    found = []
    todo: list[ast.AST] = list(fn.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found.append(node)
        elif not isinstance(node, ast.ClassDef | ast.Lambda):
            todo += ast.iter_child_nodes(node)
    return found


def unused_inner_functions(tree: ast.Module) -> list[str]:
    """Functions defined in a function's body (not methods of a class there) and never named
    in it but in their own body (so never called, passed or returned): a test whose scenario
    sits in such a function checks nothing. A decorated one counts as used (a decorator may
    register it)."""
    unused = []
    for outer in ast.walk(tree):
        if not isinstance(outer, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for fn in own_defs(outer):
            if fn.decorator_list:
                continue
            inside = {id(n) for n in ast.walk(fn)}
            if not any(
                isinstance(n, ast.Name)
                and n.id == fn.name
                and isinstance(n.ctx, ast.Load)
                and id(n) not in inside
                for n in ast.walk(outer)
            ):
                unused.append(f"{outer.name}.{fn.name}")
    return sorted(unused)


def test_every_inner_function_is_used() -> None:
    found = [
        f"{path.name}::{name}"
        for path in sorted(TESTS.glob("*.py"))
        for name in unused_inner_functions(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert found == []


def test_the_inner_function_rule_sees_a_scenario_never_run() -> None:
    """The check above can fail: b5c2262's test defined its scenario and never ran it."""
    tree = ast.parse(
        "def test_a():\n    async def run(): assert False\n"
        "def test_b():\n    def go(): pass\n    go()\n"
        "def test_c():\n    def again(n): return again(n - 1)\n"
        "def test_d():\n    @fixture\n    def registered(): pass\n"
        "def test_e():\n    class Handler:\n        def get(self): pass\n"
        "def test_f():\n    with open('x'):\n        async def hidden(): assert False\n"
    )
    assert unused_inner_functions(tree) == ["test_a.run", "test_c.again", "test_f.hidden"]
