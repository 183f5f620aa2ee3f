import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests import incore, pg
from tests.server import Server

if TYPE_CHECKING:
    from tests.s3server import S3Server


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``VAULT_IN_PROCESS_ONLY=1`` (bench/mutation.sh) keeps only the tests that need no server
    process: mutation testing sees only code that runs inside the test process."""
    if os.environ.get("VAULT_IN_PROCESS_ONLY") != "1":
        return
    kept = [item for item in items if not any("server" in name for name in getattr(item, "fixturenames", ()))]
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = kept


# These black-box suites run against a server in each storage mode (the server_store parameter).
BOTH_STORES = {"tests.test_api", "tests.test_transfers", "tests.test_sharing"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.module.__name__ in BOTH_STORES and {"server", "fresh_server"} & set(metafunc.fixturenames):
        metafunc.parametrize("server_store", ["sqlite", "postgres"], indirect=True, scope="session")


@pytest.fixture(scope="session")
def server_store(request: pytest.FixtureRequest) -> str:
    """``sqlite`` (the default) or ``postgres``: the storage of the ``server`` and
    ``fresh_server`` fixtures (parametrised for the BOTH_STORES suites)."""
    return str(getattr(request, "param", "sqlite"))


def store_env(request: pytest.FixtureRequest, kind: str, key: str) -> dict[str, str]:
    """The environment that starts a server on ``kind`` of storage (a database of its own)."""
    if kind != "postgres":
        return {}
    cluster: pg.Cluster = request.getfixturevalue("pg_cluster")
    return {"VAULT_STORAGE": "postgres", "VAULT_DATABASE_URL": cluster.database_sync(key)}


@pytest.fixture(scope="session")
def server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, server_store: str
) -> Iterator[Server]:
    """One real HTTPS server for the session; tests isolate themselves with fresh users."""
    srv = Server(tmp_path_factory.mktemp("vault"), env=store_env(request, server_store, "session-server"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def fresh_server(tmp_path: Path, request: pytest.FixtureRequest, server_store: str) -> Iterator[Server]:
    """A server of the test's own, for tests that restart, kill or reconfigure it."""
    srv = Server(tmp_path / "vault", env=store_env(request, server_store, str(tmp_path)))
    yield srv
    srv.stop()


@pytest.fixture
def user(server: Server) -> tuple[str, str]:
    return server.new_user()


@pytest.fixture
def token(user: tuple[str, str]) -> str:
    return user[1]


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[pg.Cluster]:
    """A throwaway PostgreSQL cluster for the session (tests/pg.py), started on first use."""
    if not pg.available():
        pytest.fail("PostgreSQL is not installed: apt-get install postgresql (.ci/run does)")
    cluster = pg.Cluster().start()
    pg.CLUSTER = cluster
    yield cluster
    pg.CLUSTER = None
    cluster.stop()


@pytest.fixture(scope="session")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator["S3Server"]:
    """One S3 server (SeaweedFS, tests/s3server.py) for the session's multi-instance tests,
    started on first use; each database there keeps its objects under a prefix of its own."""
    from tests.s3server import S3Server, weed_binary

    if weed_binary() is None:
        pytest.skip("no weed binary (requirements-s3.txt)")
    pytest.importorskip("aiohttp", reason="requirements-s3.txt is not installed")
    server = S3Server(tmp_path_factory.mktemp("weed")).start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def store_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test once per store (``pytestmark = pytest.mark.usefixtures("store_kind")``): the
    in-process core (tests/incore.py) and database edits (tests/dbedit.py) follow it."""
    kind = str(request.param)
    if kind == "postgres":
        request.getfixturevalue("pg_cluster")
    monkeypatch.setattr(incore, "BACKEND", kind)
    return kind
