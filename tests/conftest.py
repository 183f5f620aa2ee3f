from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server import Server


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
