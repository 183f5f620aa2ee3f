"""The token lifecycle over HTTPS: access tokens (short-lived JWTs) and opaque refresh tokens
that rotate on every use; reuse of a rotated one revokes its family; logout, log out everywhere
and a password change revoke at once; the two kinds never stand in for each other."""

import asyncio
import base64
import hashlib
import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from storage.sqlite import SCHEMA_VERSION, SQLiteStore
from tests.server import Response, Server

PASSWORD = "correct horse battery"
NEW_PASSWORD = "battery staple horse"
REVOKED = "Token revoked: log in again"
EXPIRED = "Token expired: log in again"

# --------------------------------------------------------------------------- helpers


def assert_error(resp: Response, status: int, message: str | None = None) -> None:
    """The one error shape, with the given status (and message)."""
    assert resp.status == status, (resp.status, resp.body)
    body = resp.json()
    assert set(body) == {"message", "status"} and body["status"] == status, body
    if message is not None:
        assert body["message"] == message, body


def register(server: Server, password: str = PASSWORD) -> str:
    name = "tok" + uuid.uuid4().hex[:10]
    assert server.request("POST", "/register", {"username": name, "password": password}).status == 201
    return name


def login(server: Server, name: str, password: str = PASSWORD) -> dict[str, Any]:
    resp = server.request("POST", "/login", {"username": name, "password": password})
    assert resp.status == 200, resp.body
    return dict(resp.json())


def refresh(server: Server, refresh_token: object) -> Response:
    return server.request("POST", "/token/refresh", {"refresh_token": refresh_token})


def works(server: Server, access_token: str) -> bool:
    """Whether an access token is accepted (GET /files); anything but 200 must be 401."""
    resp = server.request("GET", "/files", token=access_token)
    if resp.status != 200:
        assert_error(resp, 401)
    return resp.status == 200


def dead(server: Server, pair: dict[str, Any]) -> None:
    """Neither token of the pair works any more (the refresh attempt is itself a reuse)."""
    assert_error(server.request("GET", "/files", token=pair["token"]), 401, REVOKED)
    assert_error(refresh(server, pair["refresh_token"]), 401, REVOKED)


def alive(server: Server, pair: dict[str, Any]) -> dict[str, Any]:
    """Both tokens of the pair work; returns the pair the refresh gave (the old one is used up)."""
    assert works(server, pair["token"])
    resp = refresh(server, pair["refresh_token"])
    assert resp.status == 200, resp.body
    assert works(server, resp.json()["token"])
    return dict(resp.json())


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def query(server: Server, sql: str, params: tuple[object, ...] = ()) -> list[Any]:
    with sqlite3.connect(server.db_path) as con:
        return con.execute(sql, params).fetchall()


def edit(server: Server, sql: str, params: tuple[object, ...] = ()) -> None:
    """One change to exactly one row (an edit that matched nothing would prove nothing)."""
    with sqlite3.connect(server.db_path) as con:
        assert con.execute(sql, params).rowcount == 1, sql


# --------------------------------------------------------------------------- login and refresh


def test_login_returns_an_access_token_and_an_opaque_refresh_token(server: Server) -> None:
    name = register(server)
    pair = login(server, name)
    assert set(pair) == {"token", "expires_in", "refresh_token", "refresh_expires_in"}
    assert pair["expires_in"] == 900 and pair["refresh_expires_in"] == 30 * 86400
    access = claims(pair["token"])
    assert access["typ"] == "access" and access["exp"] - access["iat"] == 900
    raw = pair["refresh_token"]
    assert len(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))) >= 32  # 256 bits
    assert set(raw) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    # Only the SHA-256 is stored, in a row of the session the access token names.
    rows = query(server, "SELECT id, family FROM refresh_tokens WHERE family = ?", (access["sid"],))
    assert rows == [(hashlib.sha256(raw.encode()).digest(), access["sid"])]
    with open(server.db_path, "rb") as db:
        assert raw.encode() not in db.read()


def test_refresh_rotates_and_the_old_refresh_token_is_refused(server: Server) -> None:
    first = login(server, register(server))
    resp = refresh(server, first["refresh_token"])
    assert resp.status == 200, resp.body
    second = resp.json()
    assert set(second) == set(first)
    assert second["refresh_token"] != first["refresh_token"] and second["token"] != first["token"]
    assert claims(second["token"])["sid"] == claims(first["token"])["sid"]  # the same session
    assert works(server, second["token"])
    assert_error(refresh(server, first["refresh_token"]), 401, REVOKED)


def test_reuse_of_a_rotated_refresh_token_revokes_the_whole_family(server: Server) -> None:
    name = register(server)
    first = login(server, name)
    other_session = login(server, name)
    second = refresh(server, first["refresh_token"]).json()
    third = refresh(server, second["refresh_token"]).json()
    assert works(server, third["token"])

    assert_error(refresh(server, first["refresh_token"]), 401, REVOKED)  # a thief's copy
    assert_error(refresh(server, third["refresh_token"]), 401, REVOKED)  # the newest one too
    assert_error(server.request("GET", "/files", token=third["token"]), 401, REVOKED)  # and its access
    revoked = query(
        server,
        "SELECT COUNT(*) FROM refresh_tokens WHERE family = ? AND used IS NULL AND revoked IS NULL",
        (claims(first["token"])["sid"],),
    )
    assert revoked == [(0,)]
    alive(server, other_session)  # another login of the same user is untouched


def test_two_refreshes_with_one_token_at_once_leave_exactly_one_winner(server: Server) -> None:
    """Four refreshes with one token, released together: the first to rotate the row wins (no
    one can revoke the family before a rotation exists to reuse), every other one is a reuse."""
    pair = login(server, register(server))
    results: list[Response] = []
    start = threading.Barrier(4)

    def go() -> None:
        start.wait()
        results.append(refresh(server, pair["refresh_token"]))

    threads = [threading.Thread(target=go) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4
    winners = [r for r in results if r.status == 200]
    assert len(winners) == 1, [(r.status, r.body) for r in results]
    for loser in (r for r in results if r.status != 200):
        assert_error(loser, 401, REVOKED)
    dead(server, winners[0].json())  # the others counted as reuse: the winner's tokens are dead too


def test_unknown_forged_and_oversized_refresh_tokens_are_401(server: Server) -> None:
    pair = login(server, register(server))
    raw = pair["refresh_token"]
    for token in ["x", raw[:-1], raw + "A", raw.upper(), "A" * 43, "A" * 10_000]:
        assert_error(refresh(server, token), 401, "Invalid token")
    alive(server, pair)  # none of that touched the real one


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[]", b'"token"', b"{}", b'{"refresh_token": null}', b'{"refresh_token": ""}']
    + [b'{"refresh_token": 7}', b'{"refresh_token": ["a"]}', b'{"token": "abc"}'],
)
def test_malformed_refresh_body_is_400(server: Server, body: bytes) -> None:
    resp = server.request("POST", "/token/refresh", body, headers={"Content-Type": "application/json"})
    assert_error(resp, 400)


# --------------------------------------------------------------------------- the two kinds never swap


def test_refresh_token_as_bearer_is_401(server: Server) -> None:
    pair = login(server, register(server))
    resp = server.request("GET", "/files", token=pair["refresh_token"])
    assert_error(resp, 401, "Invalid token")
    assert resp.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    alive(server, pair)


def test_access_token_sent_to_refresh_is_401(server: Server) -> None:
    pair = login(server, register(server))
    assert_error(refresh(server, pair["token"]), 401, "Invalid token")
    alive(server, pair)


# --------------------------------------------------------------------------- logout


def test_logout_kills_that_access_token_and_refresh_family_at_once(server: Server) -> None:
    name = register(server)
    ending, staying = login(server, name), login(server, name)
    earlier_access = ending["token"]
    ending = refresh(server, ending["refresh_token"]).json()  # a second access token of that session
    resp = server.request(
        "POST", "/logout", {"refresh_token": ending["refresh_token"]}, token=ending["token"]
    )
    assert (resp.status, resp.json()) == (200, {"message": "Logged out"})
    dead(server, ending)
    assert_error(server.request("GET", "/files", token=earlier_access), 401, REVOKED)
    alive(server, staying)


def test_logout_without_a_body_ends_the_bearer_tokens_session(server: Server) -> None:
    pair = login(server, register(server))
    assert server.request("POST", "/logout", token=pair["token"]).status == 200
    dead(server, pair)


def test_logout_with_someone_elses_refresh_token_leaves_theirs_alone(server: Server) -> None:
    mine, theirs = login(server, register(server)), login(server, register(server))
    resp = server.request("POST", "/logout", {"refresh_token": theirs["refresh_token"]}, token=mine["token"])
    assert resp.status == 200
    dead(server, mine)
    alive(server, theirs)


def test_logout_needs_a_valid_access_token(server: Server) -> None:
    pair = login(server, register(server))
    assert_error(server.request("POST", "/logout", {"refresh_token": pair["refresh_token"]}), 401)
    resp = server.request("POST", "/logout", {}, token=pair["refresh_token"])
    assert_error(resp, 401, "Invalid token")
    alive(server, pair)


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"refresh_token": 7}', b'{"refresh_token": ""}'])
def test_malformed_logout_body_is_400_and_logs_nothing_out(server: Server, body: bytes) -> None:
    pair = login(server, register(server))
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {pair['token']}"}
    assert_error(server.request("POST", "/logout", body, headers=headers), 400)
    alive(server, pair)


def test_logout_survives_a_restart(fresh_server: Server) -> None:
    server = fresh_server.start()
    pair = login(server, register(server))
    assert server.request("POST", "/logout", token=pair["token"]).status == 200
    server.stop()
    server.start()
    assert_error(server.request("GET", "/files", token=pair["token"]), 401, REVOKED)
    assert_error(refresh(server, pair["refresh_token"]), 401, REVOKED)


# --------------------------------------------------------------------------- everywhere at once


def test_logout_all_kills_every_token_of_the_user_and_no_one_elses(server: Server) -> None:
    name = register(server)
    first, second = login(server, name), login(server, name)
    second = refresh(server, second["refresh_token"]).json()
    bystander = login(server, register(server))
    resp = server.request("POST", "/logout/all", token=first["token"])
    assert (resp.status, resp.json()) == (200, {"message": "Logged out everywhere"})
    dead(server, first)
    dead(server, second)
    alive(server, bystander)
    alive(server, login(server, name))  # logging in again works


def test_password_change_kills_every_token_and_answers_a_fresh_pair(server: Server) -> None:
    name = register(server)
    first, second = login(server, name), login(server, name)
    bystander = login(server, register(server))
    body = {"old_password": PASSWORD, "new_password": NEW_PASSWORD}
    resp = server.request("POST", "/password", body, token=first["token"])
    assert resp.status == 200, resp.body
    fresh = resp.json()
    assert set(fresh) == {"message", "token", "expires_in", "refresh_token", "refresh_expires_in"}
    dead(server, first)
    dead(server, second)
    alive(server, fresh)
    alive(server, bystander)
    assert_error(
        server.request("POST", "/login", {"username": name, "password": PASSWORD}),
        401,
        "Invalid username or password",
    )
    alive(server, login(server, name, NEW_PASSWORD))


def test_password_change_with_a_wrong_old_password_changes_nothing(server: Server) -> None:
    name = register(server)
    pair = login(server, name)
    body = {"old_password": PASSWORD + "!", "new_password": NEW_PASSWORD}
    resp = server.request("POST", "/password", body, token=pair["token"])
    assert_error(resp, 401, "Wrong password: 'old_password' is not the current one")
    pair = alive(server, pair)
    login(server, name, PASSWORD)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "old_password"),
        ({"new_password": NEW_PASSWORD}, "old_password"),
        ({"old_password": PASSWORD}, "new_password"),
        ({"old_password": 7, "new_password": NEW_PASSWORD}, "old_password"),
        ({"old_password": PASSWORD, "new_password": "short"}, "new_password"),
        ({"old_password": PASSWORD, "new_password": "x" * 73}, "new_password"),
        ({"old_password": PASSWORD, "new_password": ["a" * 10]}, "new_password"),
    ],
)
def test_malformed_password_change_is_400_and_changes_nothing(
    server: Server, body: dict[str, Any], field: str
) -> None:
    name = register(server)
    pair = login(server, name)
    resp = server.request("POST", "/password", body, token=pair["token"])
    assert_error(resp, 400)
    assert field in resp.json()["message"]
    alive(server, pair)
    login(server, name, PASSWORD)


def test_password_change_needs_an_access_token(server: Server) -> None:
    pair = login(server, register(server))
    body = {"old_password": PASSWORD, "new_password": NEW_PASSWORD}
    assert_error(server.request("POST", "/password", body), 401)
    assert_error(server.request("POST", "/password", body, token=pair["refresh_token"]), 401, "Invalid token")
    alive(server, pair)


def test_admin_reset_password_beside_the_server_revokes_every_token(server: Server) -> None:
    name = register(server)
    pair = login(server, name)
    assert works(server, pair["token"])  # the server now holds the user's epoch in its cache
    done = server.admin("reset-password", name, stdin=NEW_PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    assert_error(refresh(server, pair["refresh_token"]), 401, REVOKED)  # at once
    deadline = time.monotonic() + 4  # access tokens: once the epoch cache's 2 s are up
    while works(server, pair["token"]):
        assert time.monotonic() < deadline, "the access token outlived the reset"
        time.sleep(0.25)
    alive(server, login(server, name, NEW_PASSWORD))


# --------------------------------------------------------------------------- expiry


def test_expired_access_token_refreshes_and_an_expired_refresh_token_is_401(fresh_server: Server) -> None:
    fresh_server.env.update({"VAULT_TOKEN_TTL": "1", "VAULT_REFRESH_TTL": "2"})
    server = fresh_server.start()
    pair = login(server, register(server))
    assert pair["expires_in"] == 1 and pair["refresh_expires_in"] == 2
    time.sleep(1.2)
    assert_error(server.request("GET", "/files", token=pair["token"]), 401, EXPIRED)
    resp = refresh(server, pair["refresh_token"])
    assert resp.status == 200, resp.body
    time.sleep(2.1)
    assert_error(refresh(server, resp.json()["refresh_token"]), 401, EXPIRED)


# --------------------------------------------------------------------------- stored rows


def test_un_revoking_a_refresh_row_in_the_database_does_not_bring_it_back(server: Server) -> None:
    pair = login(server, register(server))
    assert server.request("POST", "/logout", token=pair["token"]).status == 200
    row_id = hashlib.sha256(pair["refresh_token"].encode()).digest()
    edit(server, "UPDATE refresh_tokens SET revoked = NULL WHERE id = ?", (row_id,))
    assert_error(refresh(server, pair["refresh_token"]), 401, "Invalid token")
    assert "refresh token row of user" in server.output()


def test_extending_a_refresh_row_in_the_database_is_refused(server: Server) -> None:
    pair = login(server, register(server))
    row_id = hashlib.sha256(pair["refresh_token"].encode()).digest()
    edit(server, "UPDATE refresh_tokens SET expires = expires + 86400 WHERE id = ?", (row_id,))
    assert_error(refresh(server, pair["refresh_token"]), 401, "Invalid token")


def test_setting_the_token_epoch_back_in_the_database_is_detected(server: Server) -> None:
    name = register(server)
    pair = login(server, name)
    assert server.request("POST", "/logout/all", token=pair["token"]).status == 200
    assert query(server, "SELECT token_epoch FROM users WHERE username = ?", (name,)) == [(1,)]
    edit(server, "UPDATE users SET token_epoch = 0 WHERE username = ?", (name,))
    assert_error(server.request("POST", "/login", {"username": name, "password": PASSWORD}), 401)


def test_an_old_access_token_stays_dead_when_the_epoch_is_set_back_in_the_database(server: Server) -> None:
    """The epoch an access token is checked against comes from a row that verifies: setting it
    back (without the master key) must not revive the tokens a reset ended. The reset runs in
    another process, so the server holds no cached epoch and reads the edited row."""
    # Another user's request first: the server reads the revoked sessions once, at its first
    # authentication, and a revocation by another process after that reaches it only through
    # the epoch (run alone, this test would otherwise see the revoked family, not the epoch).
    assert works(server, login(server, register(server))["token"])
    name = register(server)
    pair = login(server, name)
    done = server.admin("reset-password", name, stdin=NEW_PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    assert query(server, "SELECT token_epoch FROM users WHERE username = ?", (name,)) == [(1,)]
    edit(server, "UPDATE users SET token_epoch = 0 WHERE username = ?", (name,))
    assert_error(server.request("GET", "/files", token=pair["token"]), 401, "Invalid token")
    assert f"account row {claims(pair['token'])['sub']} failed its integrity check" in server.output()


def test_a_refresh_row_rolled_back_to_before_log_out_everywhere_does_not_refresh(server: Server) -> None:
    """A database writer who restores a refresh row as it was before "log out everywhere" (a
    genuine old row: its tag verifies) gets nothing: the row's epoch is no longer the user's."""
    pair = login(server, register(server))
    row_id = hashlib.sha256(pair["refresh_token"].encode()).digest()
    [before] = query(server, "SELECT revoked, key_id, tag FROM refresh_tokens WHERE id = ?", (row_id,))
    assert before[0] is None
    assert server.request("POST", "/logout/all", token=pair["token"]).status == 200
    edit(server, "UPDATE refresh_tokens SET revoked = ?, key_id = ?, tag = ? WHERE id = ?", (*before, row_id))
    assert_error(refresh(server, pair["refresh_token"]), 401, REVOKED)


def test_rotated_and_retired_master_key_keeps_sessions_and_raised_epochs_working(
    fresh_server: Server,
) -> None:
    server = fresh_server.start()
    name = register(server)
    first = login(server, name)
    assert server.request("POST", "/logout/all", token=first["token"]).status == 200  # epoch 1
    kept = login(server, name)
    server.stop()
    for args in (("rotate-key",), ("retire-key", "1")):
        done = server.admin(*args)
        assert done.returncode == 0, done.stderr
    assert query(server, "SELECT DISTINCT key_id FROM refresh_tokens") == [(2,)]
    server.start()
    alive(server, kept)
    assert_error(refresh(server, first["refresh_token"]), 401, REVOKED)
    login(server, name)


def test_a_version_1_database_gains_the_token_epoch_column(tmp_path: Path) -> None:
    path = tmp_path / "vault.db"
    with sqlite3.connect(path) as con:
        con.execute(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, username TEXT NOT NULL UNIQUE COLLATE NOCASE,"
            " password_hash BLOB NOT NULL, key_id INTEGER NOT NULL, tag BLOB NOT NULL, created REAL NOT NULL,"
            " quota INTEGER, max_file_size INTEGER)"
        )
        con.execute("INSERT INTO users VALUES (7, 'alice', x'00', 1, x'01', 0, NULL, NULL)")
        con.execute("PRAGMA user_version = 1")

    async def upgrade() -> Any:
        store = await SQLiteStore.open(path)
        try:
            return await store.get_user("alice")
        finally:
            await store.close()

    user = asyncio.run(upgrade())
    assert (user.id, user.username, user.token_epoch) == (7, "alice", 0)
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert con.execute("SELECT COUNT(*) FROM refresh_tokens").fetchone() == (0,)


def test_a_version_3_database_gains_the_segment_size_column(tmp_path: Path) -> None:
    path = tmp_path / "vault.db"
    with sqlite3.connect(path) as con:
        con.execute(
            "CREATE TABLE segments (file_id BLOB NOT NULL, idx INTEGER NOT NULL, tag BLOB NOT NULL,"
            " data BLOB NOT NULL, PRIMARY KEY (file_id, idx))"
        )
        con.execute("INSERT INTO segments VALUES (x'01', 0, x'02', x'0304')")
        con.execute("PRAGMA user_version = 3")

    async def upgrade() -> Any:
        store = await SQLiteStore.open(path)
        try:
            return await store.read_segment(b"\x01", 0, b"\x02")
        finally:
            await store.close()

    assert asyncio.run(upgrade()) == b"\x03\x04"
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,) == (4,)
        assert con.execute("SELECT size FROM segments").fetchall() == [(None,)]
