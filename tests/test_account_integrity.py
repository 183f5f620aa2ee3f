"""Account rows are authenticated: someone who can write the database but lacks the master key
cannot take over an account by editing its row (review finding: password-hash swap)."""

import sqlite3
import uuid

import bcrypt

from tests.dbedit import Edits
from tests.server import Server

PASSWORD = "correct horse battery"


def register(server: Server, password: str = PASSWORD) -> str:
    name = "acct" + uuid.uuid4().hex[:10]
    assert server.request("POST", "/register", {"username": name, "password": password}).status == 201
    return name


def login_status(server: Server, name: str, password: str) -> tuple[int, bytes]:
    resp = server.request("POST", "/login", {"username": name, "password": password})
    return resp.status, resp.body


def edit(server: Server, sql: str, params: tuple[object, ...]) -> None:
    with sqlite3.connect(server.db_path, factory=Edits) as con:
        con.execute(sql, params)


def test_password_hash_swapped_into_a_row_does_not_log_in(server: Server) -> None:
    victim = register(server)
    forged = bcrypt.hashpw(b"attacker password", bcrypt.gensalt(4))
    edit(server, "UPDATE users SET password_hash = ? WHERE username = ?", (forged, victim))
    assert login_status(server, victim, "attacker password") == (
        401,
        b'{"message": "Invalid username or password", "status": 401}',
    )
    assert login_status(server, victim, PASSWORD)[0] == 401  # the row is no longer trusted at all
    assert "failed its integrity check" in server.output()


def test_hash_copied_from_another_account_does_not_log_in(server: Server) -> None:
    attacker, victim = register(server, "attacker password"), register(server)
    with sqlite3.connect(server.db_path, factory=Edits) as con:
        (attacker_hash,) = con.execute(
            "SELECT password_hash FROM users WHERE username = ?", (attacker,)
        ).fetchone()
        con.execute("UPDATE users SET password_hash = ? WHERE username = ?", (attacker_hash, victim))
    assert login_status(server, victim, "attacker password")[0] == 401
    assert login_status(server, attacker, "attacker password")[0] == 200


def test_renamed_account_row_does_not_log_in(server: Server) -> None:
    old = register(server)
    new = "renamed" + uuid.uuid4().hex[:8]
    edit(server, "UPDATE users SET username = ? WHERE username = ?", (new, old))
    assert login_status(server, new, PASSWORD)[0] == 401


def test_untouched_account_still_logs_in(server: Server) -> None:
    name = register(server)
    assert login_status(server, name, PASSWORD)[0] == 200
