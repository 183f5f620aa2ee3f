"""The audit log's chain: every edit, removal, insertion or reordering is found (vault/audit.py)."""

import asyncio
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from storage.sqlite import SQLiteStore
from tests.dbedit import Edits
from tests.server import ROOT, Server
from vault.audit import LOST_ACTION, AuditLog, ChainCheck, verify_chain
from vault.keys import Keyring

RING = Keyring.of(1, {1: bytes(range(32))})
OTHER_RING = Keyring.of(1, {1: bytes(32)})


def write_entries(db: Path, count: int) -> None:
    async def main() -> None:
        store = await SQLiteStore.open(db)
        try:
            log = AuditLog(store, RING)
            await log.start()
            for n in range(count):
                log.record(f"user{n % 3}", "127.0.0.1", "download", f"file{n}.bin", "200")
            await log.close()
        finally:
            await store.close()

    asyncio.run(main())


def verify(db: Path, ring: Keyring = RING) -> tuple[int, Any, bytes]:
    check = verify_full(db, ring)
    return check.checked, check.broken, check.last_mac


def verify_full(db: Path, ring: Keyring = RING) -> ChainCheck:
    async def main() -> ChainCheck:
        store = await SQLiteStore.open(db)
        try:
            return await verify_chain(store, ring, batch=4)
        finally:
            await store.close()

    return asyncio.run(main())


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "vault.db"
    write_entries(path, 10)
    return path


def test_an_untouched_log_verifies_across_restarts(db: Path) -> None:
    write_entries(db, 5)  # a second process continues the same chain
    checked, broken, _ = verify(db)
    assert (checked, broken) == (15, None)


def test_entries_keep_their_order_and_content(db: Path) -> None:
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT seq, target FROM audit ORDER BY seq").fetchall()
    assert rows == [(n + 1, f"file{n}.bin") for n in range(10)]


@pytest.mark.parametrize(
    ("sql", "intact", "first_broken"),
    [
        ("UPDATE audit SET outcome = '403' WHERE seq = 4", 3, 4),
        ("UPDATE audit SET actor = 'someone' WHERE seq = 1", 0, 1),
        ("UPDATE audit SET at = at + 1 WHERE seq = 7", 6, 7),
        ("DELETE FROM audit WHERE seq = 5", 4, 6),  # the gap shows at the entry after it
        ("UPDATE audit SET seq = 100 WHERE seq = 3", 2, 4),
        ("UPDATE audit SET mac = zeroblob(32) WHERE seq = 9", 8, 9),
    ],
)
def test_a_changed_entry_breaks_the_chain_there(db: Path, sql: str, intact: int, first_broken: int) -> None:
    with sqlite3.connect(db, factory=Edits) as con:
        con.execute(sql)
    checked, broken, _ = verify(db)
    assert (checked, broken.seq if broken else None) == (intact, first_broken)


def test_swapped_entries_break_the_chain(db: Path) -> None:
    with sqlite3.connect(db, factory=Edits) as con:
        a = con.execute("SELECT actor, action, target, outcome, mac FROM audit WHERE seq = 2").fetchone()
        b = con.execute("SELECT actor, action, target, outcome, mac FROM audit WHERE seq = 3").fetchone()
        for seq, row in ((2, b), (3, a)):
            con.execute(
                "UPDATE audit SET actor=?, action=?, target=?, outcome=?, mac=? WHERE seq=?", (*row, seq)
            )
    _, broken, _ = verify(db)
    assert broken is not None and broken.seq == 2


def test_a_forged_entry_appended_does_not_verify(db: Path) -> None:
    with sqlite3.connect(db, factory=Edits) as con:
        con.execute(
            "INSERT INTO audit (seq, at, actor, address, action, target, outcome, key_id, mac)"
            " VALUES (11, 0, 'x', 'x', 'delete', 'x', '200', 1, zeroblob(32))"
        )
    checked, broken, _ = verify(db)
    assert (checked, broken.seq if broken else None) == (10, 11)


def test_the_chain_needs_the_master_key(db: Path) -> None:
    checked, broken, _ = verify(db, OTHER_RING)
    assert (checked, broken.seq if broken else None) == (0, 1)


def audit_rows(server: Server) -> list[tuple[str, str, str, str]]:
    with sqlite3.connect(server.db_path) as con:
        return con.execute("SELECT actor, action, target, outcome FROM audit ORDER BY seq").fetchall()


def wait_for_rows(server: Server, count: int) -> list[tuple[str, str, str, str]]:
    deadline = time.monotonic() + 10
    rows = audit_rows(server)
    while len(rows) < count and time.monotonic() < deadline:
        time.sleep(0.05)
        rows = audit_rows(server)
    return rows


def test_requests_are_audited_with_actor_action_target_and_outcome(fresh_server: Server) -> None:
    server = fresh_server.start()
    name, token = server.new_user()
    assert server.request("POST", "/login", {"username": name, "password": "wrong password"}).status == 401
    assert server.put_file(token, "a.txt", b"hello").status == 201
    assert server.request("GET", "/download/a.txt", token=token).status == 200
    link = server.request("POST", "/files/a.txt/links", {}, token=token).json()["url"]
    secret = link.rsplit("/", 1)[1]
    assert server.request("GET", "/s/" + secret).status == 200
    assert server.request("DELETE", "/files/a.txt", token=token).status == 200
    rows = wait_for_rows(server, 8)
    assert rows == [
        (name, "register", "", "201"),
        (name, "login", "", "200"),
        (name, "login", "", "401"),
        (name, "upload", "a.txt", "201"),
        (name, "download", "a.txt", "200"),
        (name, "link-create", "a.txt", "201"),
        (rows[6][0], "link-download", "[link secret]", "200"),
        (name, "delete", "a.txt", "200"),
    ]
    assert rows[6][0].startswith("link ")
    with sqlite3.connect(server.db_path) as con:
        dump = "\n".join(con.iterdump())
    assert secret not in dump and "wrong password" not in dump


def test_the_live_log_verifies_and_admin_commands_are_audited(fresh_server: Server) -> None:
    server = fresh_server.start()
    server.new_user()
    wait_for_rows(server, 2)
    server.stop()
    command = [sys.executable, str(ROOT / "run.py"), "admin", "--config", str(server.workdir / "config.yaml")]
    done = subprocess.run([*command, "audit-verify"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("audit log intact: 2 entries; last mac ")
    rows = audit_rows(server)
    assert rows[-1] == ("admin", "audit-verify", "", "done")
    with sqlite3.connect(server.db_path, factory=Edits) as con:
        con.execute("UPDATE audit SET outcome = '500' WHERE seq = 1")
    done = subprocess.run([*command, "audit-verify"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "BROKEN at entry 1 (register" in done.stdout


def test_two_processes_writing_at_once_continue_one_chain(tmp_path: Path) -> None:
    """Each writer takes seq and previous mac inside its insert: a second process (run.py admin
    beside the server) interleaves with the first instead of colliding on seq."""
    db = tmp_path / "vault.db"

    async def main() -> None:
        stores = [await SQLiteStore.open(db) for _ in range(2)]
        logs = [AuditLog(store, RING) for store in stores]
        for log in logs:
            await log.start()
        try:
            for n in range(6):
                logs[n % 2].record(f"writer{n % 2}", "-", "download", f"f{n}", "200")
                await logs[n % 2].close()  # written before the other process writes
                await logs[n % 2].start()
        finally:
            for log, store in zip(logs, stores, strict=True):
                await log.close()
                await store.close()

    asyncio.run(main())
    check = verify_full(db)
    assert (check.checked, check.broken, check.lost) == (6, None, 0)


def test_entries_that_could_not_be_written_are_reported_lost(tmp_path: Path) -> None:
    db = tmp_path / "vault.db"
    write_entries(db, 2)
    with sqlite3.connect(db) as con:  # a real database failure for one kind of entry
        con.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON audit WHEN NEW.action = 'boom'"
            " BEGIN SELECT RAISE(ABORT, 'disk trouble'); END"
        )

    async def main() -> None:
        store = await SQLiteStore.open(db)
        log = AuditLog(store, RING)
        await log.start()
        try:
            log.record("a", "-", "boom", "x", "200")
            log.record("b", "-", "download", "y", "200")
        finally:
            await log.close()
            await store.close()

    asyncio.run(main())
    check = verify_full(db)
    assert (check.checked, check.broken, check.lost) == (4, None, 1)
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT actor, action, outcome FROM audit WHERE seq > 2 ORDER BY seq").fetchall()
    assert rows == [("vault", LOST_ACTION, "1"), ("b", "download", "200")]


def test_admin_commands_beside_a_running_server_keep_its_audit_log_writable(fresh_server: Server) -> None:
    server = fresh_server.start()
    name, token = server.new_user()
    wait_for_rows(server, 2)
    shown = server.admin("show", name)
    assert shown.returncode == 0, shown.stderr
    assert len(wait_for_rows(server, 3)) == 3
    assert server.put_file(token, "after.txt", b"x").status == 201
    rows = wait_for_rows(server, 4)
    assert rows[2:] == [("admin", "show", name, "done"), (name, "upload", "after.txt", "201")]
    assert "audit entry not written" not in server.output()
    done = server.admin("audit-verify")
    assert done.returncode == 0, done.stdout
    assert done.stdout.startswith(b"audit log intact: 4 entries")


def test_audit_verify_fails_when_entries_were_lost(fresh_server: Server) -> None:
    server = fresh_server.start()
    server.new_user()
    wait_for_rows(server, 2)
    server.stop()
    with sqlite3.connect(server.db_path) as con:
        con.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON audit WHEN NEW.action = 'show'"
            " BEGIN SELECT RAISE(ABORT, 'disk trouble'); END"
        )
    server.admin("show", "nobody")  # its audit entry cannot be written
    with sqlite3.connect(server.db_path) as con:
        con.execute("DROP TRIGGER refuse")
    server.admin("show", "nobody")
    done = server.admin("audit-verify")
    assert done.returncode == 1
    assert b"INCOMPLETE" in done.stdout and b"1 entries could not be written" in done.stdout


def test_failed_logins_record_only_names_of_existing_accounts(fresh_server: Server) -> None:
    server = fresh_server.start()
    name, _ = server.new_user()
    typed = "Tr0ub4dor&3-typed-as-a-name"
    for username in (typed, name):
        resp = server.request("POST", "/login", {"username": username, "password": "wrong password"})
        assert resp.status == 401
    rows = wait_for_rows(server, 4)
    assert rows[2:] == [("(no such account)", "login", "", "401"), (name, "login", "", "401")]
    with sqlite3.connect(server.db_path) as con:
        assert typed not in "\n".join(con.iterdump())


def test_rotation_rechains_the_audit_log_so_the_old_key_can_retire(fresh_server: Server) -> None:
    server = fresh_server.start()
    server.new_user()
    wait_for_rows(server, 2)
    server.stop()
    assert server.admin("rotate-key").returncode == 0
    retired = server.admin("retire-key", "1")
    assert retired.returncode == 0, retired.stderr
    done = server.admin("audit-verify")
    assert done.returncode == 0, done.stdout
    with sqlite3.connect(server.db_path) as con:
        assert {row[0] for row in con.execute("SELECT key_id FROM audit")} == {2}


def test_retire_key_refuses_while_audit_entries_use_it(fresh_server: Server) -> None:
    server = fresh_server.start()
    server.new_user()
    wait_for_rows(server, 2)
    server.stop()
    # a broken entry is not re-chained: it keeps key 1
    with sqlite3.connect(server.db_path, factory=Edits) as con:
        con.execute("UPDATE audit SET outcome = '500' WHERE seq = 2")
    assert server.admin("rotate-key").returncode == 0
    with sqlite3.connect(server.db_path) as con:
        assert [row[0] for row in con.execute("SELECT key_id FROM audit ORDER BY seq")][:2] == [2, 1]
        assert con.execute("SELECT COUNT(*) FROM users WHERE key_id = 1").fetchone() == (0,)
    refused = server.admin("retire-key", "1")
    assert refused.returncode == 2
    assert b"audit entries" in refused.stderr


def test_admin_creates_a_private_data_directory(tmp_path: Path) -> None:
    server = Server(tmp_path / "vault")
    server.workdir.mkdir()
    (server.workdir / "config.yaml").write_text("data_dir: data\n")
    done = server.admin("--init", "show", "nobody")  # without --init it refuses (tests/test_ops.py)
    assert done.returncode == 1
    assert server.data_dir.stat().st_mode & 0o077 == 0
    assert server.db_path.stat().st_mode & 0o077 == 0
