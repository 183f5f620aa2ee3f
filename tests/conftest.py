import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server import Server


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``VAULT_IN_PROCESS_ONLY=1`` (bench/mutation.sh) keeps only the tests that need no server
    process: mutation testing sees only code that runs inside the test process."""
    if os.environ.get("VAULT_IN_PROCESS_ONLY") != "1":
        return
    kept = [item for item in items if not any("server" in name for name in getattr(item, "fixturenames", ()))]
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = kept


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real HTTPS server for the session; tests isolate themselves with fresh users."""
    srv = Server(tmp_path_factory.mktemp("vault")).start()
    yield srv
    srv.stop()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[Server]:
    """A server of the test's own, for tests that restart, kill or reconfigure it."""
    srv = Server(tmp_path / "vault")
    yield srv
    srv.stop()


@pytest.fixture
def user(server: Server) -> tuple[str, str]:
    return server.new_user()


@pytest.fixture
def token(user: tuple[str, str]) -> str:
    return user[1]
