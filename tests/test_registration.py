"""Who may register (open, invite, closed), invite codes, and disabled accounts."""

import hashlib
import logging
import socket
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from run import warn_if_exposed
from tests.dbedit import Edits
from tests.server import Response, Server
from vault.config import Settings

PASSWORD = "correct horse battery"  # noqa: S105 (a test password)


@pytest.fixture(scope="module")
def invite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("invite"), env={"VAULT_REGISTRATION": "invite"}).start()
    yield srv
    srv.stop()


def register(server: Server, name: str, invite: str | None = None) -> Response:
    body = {"username": name, "password": PASSWORD}
    if invite is not None:
        body["invite"] = invite
    return server.request("POST", "/register", body)


def login(server: Server, name: str, password: str = PASSWORD) -> Response:
    return server.request("POST", "/login", {"username": name, "password": password})


def new_invite(server: Server, *args: str) -> str:
    done = server.admin("invite", *args)
    assert done.returncode == 0, done.stderr
    code = done.stdout.decode().strip()
    assert len(code) == 24
    return code


def assert_error(resp: Response, status: int, message: str) -> None:
    assert (resp.status, resp.json()) == (status, {"message": message, "status": status})


def test_the_default_is_invite_only() -> None:
    assert Settings().registration == "invite"


def test_register_without_an_invite_is_refused_and_creates_nothing(invite_server: Server) -> None:
    assert_error(
        register(invite_server, "no-invite-user"), 403, "Registration needs an invite code (field 'invite')"
    )
    assert_error(
        register(invite_server, "no-invite-user", "A" * 24), 403, "Invite code unknown, used or expired"
    )
    assert login(invite_server, "no-invite-user").status == 401


def test_an_invite_that_is_not_a_string_is_a_bad_request(server: Server) -> None:
    resp = server.request(
        "POST", "/register", {"username": "typed-invite", "password": PASSWORD, "invite": 1}
    )
    assert_error(resp, 400, "Field 'invite' must be a string")


def test_an_invite_admits_one_account_only(invite_server: Server) -> None:
    code = new_invite(invite_server)
    assert register(invite_server, "invited-one", code).status == 201
    assert login(invite_server, "invited-one").status == 200
    assert_error(register(invite_server, "invited-two", code), 403, "Invite code unknown, used or expired")
    assert login(invite_server, "invited-two").status == 401


def test_a_refused_registration_does_not_use_up_the_invite(invite_server: Server) -> None:
    code = new_invite(invite_server)
    taken = new_invite(invite_server)
    assert register(invite_server, "taken-name", taken).status == 201
    assert register(invite_server, "taken-name", code).status == 409  # name taken: code kept
    short = invite_server.request(
        "POST", "/register", {"username": "bad-pw", "password": "x", "invite": code}
    )
    assert short.status == 400
    assert register(invite_server, "second-try", code).status == 201


def test_concurrent_use_of_one_invite_admits_exactly_one(invite_server: Server) -> None:
    code = new_invite(invite_server)
    names = [f"racer-{n}" for n in range(8)]
    with ThreadPoolExecutor(len(names)) as pool:
        statuses = sorted(pool.map(lambda name: register(invite_server, name, code).status, names))
    assert statuses == [201] + [403] * 7
    assert sorted(login(invite_server, name).status for name in names) == [200] + [401] * 7


def test_an_expired_invite_is_refused(invite_server: Server) -> None:
    code = new_invite(invite_server, "--ttl", "1h")
    with sqlite3.connect(invite_server.db_path, factory=Edits) as con:
        con.execute("UPDATE invites SET expires = ? WHERE used IS NULL", (time.time() - 1,))
    assert_error(register(invite_server, "too-late", code), 403, "Invite code unknown, used or expired")


def test_invites_are_stored_keyed_so_a_row_cannot_be_forged(invite_server: Server) -> None:
    code = new_invite(invite_server)
    forged = "F" * 24
    with sqlite3.connect(invite_server.db_path, factory=Edits) as con:
        con.execute(
            "INSERT INTO invites (code_hash, key_id, created, expires) VALUES (?, 1, ?, ?)",
            (hashlib.sha256(forged.encode()).digest(), time.time(), time.time() + 3600),
        )
    data = b"".join(p.read_bytes() for p in invite_server.data_dir.glob("vault.db*"))
    assert code.encode() not in data
    assert register(invite_server, "forger", forged).status == 403
    assert register(invite_server, "honest", code).status == 201


def test_closed_registration_refuses_even_an_invite(fresh_server: Server) -> None:
    fresh_server.env["VAULT_REGISTRATION"] = "closed"
    server = fresh_server.start()
    code = new_invite(server)
    assert_error(
        register(server, "closed-out", code),
        403,
        "Registration is closed: ask an administrator for an account",
    )
    assert server.admin("create-user", "by-admin", stdin=PASSWORD + "\n").returncode == 0
    assert login(server, "by-admin").status == 200


@pytest.mark.parametrize(
    ("host", "registration", "quota", "warned"),
    [
        ("0.0.0.0", "open", 0, True),  # noqa: S104 (bound, never connected to)
        ("127.0.0.1", "open", 0, False),
        ("0.0.0.0", "invite", 0, False),  # noqa: S104
        ("0.0.0.0", "open", 1024, False),  # noqa: S104
    ],
)
def test_open_registration_without_quota_on_a_public_address_is_warned_about(
    caplog: pytest.LogCaptureFixture, host: str, registration: str, quota: int, warned: bool
) -> None:
    settings = Settings(host=host, registration=registration, user_quota=quota, data_dir=Path("unused"))
    with socket.socket() as sock, caplog.at_level(logging.WARNING, "vault"):
        sock.bind((host, 0))
        warn_if_exposed(settings, [sock])
    assert ("anyone who can reach it can create an account" in caplog.text) is warned


# --- disabled accounts --------------------------------------------------------------------------


def wait_for_status(server: Server, token: str, status: int) -> int:
    """Another process disabled the user: the server sees it within its epoch cache (2 s)."""
    deadline = time.monotonic() + 10
    while (
        got := server.request("GET", "/files", token=token).status
    ) != status and time.monotonic() < deadline:
        time.sleep(0.1)
    return got


def test_a_disabled_user_loses_every_session_and_keeps_their_files(server: Server) -> None:
    name, _ = server.new_user()
    pair = login(server, name).json()
    token = pair["token"]
    assert server.put_file(token, "kept.bin", b"kept data").status == 201
    done = server.admin("disable-user", name)
    assert done.returncode == 0, done.stderr
    assert wait_for_status(server, token, 401) == 401
    assert server.request("POST", "/token/refresh", {"refresh_token": pair["refresh_token"]}).status == 401
    assert_error(login(server, name), 403, "Account disabled: ask an administrator")
    assert login(server, name, "wrong password here").status == 401  # no hint without the password
    assert server.admin("enable-user", name).returncode == 0
    token = login(server, name).json()["token"]
    assert wait_for_status(server, token, 200) == 200  # the server's epoch cache, again
    assert server.request("GET", "/download/kept.bin", token=token).body == b"kept data"


def test_enabling_a_row_by_hand_does_not_let_a_disabled_user_in(server: Server) -> None:
    name, _ = server.new_user()
    assert server.admin("disable-user", name).returncode == 0
    with sqlite3.connect(server.db_path, factory=Edits) as con:
        con.execute("UPDATE users SET disabled = 0 WHERE username = ?", (name,))
    assert login(server, name).status == 401  # the row's tag no longer verifies


def test_disable_of_an_unknown_user_fails(server: Server) -> None:
    done = server.admin("disable-user", "nobody-at-all")
    assert done.returncode == 1 and b"no user 'nobody-at-all'" in done.stderr
