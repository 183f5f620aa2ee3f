"""admin backup (consistent while the server writes), restore from it, verify, compact."""

import os
import shutil
import sqlite3
import threading
from contextlib import closing
from pathlib import Path

from tests.server import Server

PASSWORD = "correct horse battery"  # noqa: S105 (a test password)


def test_a_backup_taken_during_uploads_restores_every_file_byte_identical(
    fresh_server: Server, tmp_path: Path
) -> None:
    server = fresh_server.start()
    name, token = server.new_user()
    uploaded: dict[str, bytes] = {}
    for n in range(3):
        uploaded[f"before-{n}.bin"] = os.urandom(1024 * 1024 + n)
        assert server.put_file(token, f"before-{n}.bin", uploaded[f"before-{n}.bin"]).status == 201
    started = threading.Event()

    def upload_more() -> None:
        for n in range(6):
            data = os.urandom(2 * 1024 * 1024 + n)
            uploaded[f"during-{n}.bin"] = data
            started.set()
            assert server.put_file(token, f"during-{n}.bin", data).status == 201

    writer = threading.Thread(target=upload_more)
    writer.start()
    started.wait(30)
    dest = tmp_path / "backup"
    done = server.admin("backup", str(dest), "--with-keys")
    writer.join()
    assert done.returncode == 0, done.stderr
    assert b", 0 damaged" in done.stdout
    assert sorted(p.name for p in dest.iterdir()) == ["jwt.secret", "master.keys", "vault.db"]
    server.stop()

    restored = Server(tmp_path / "restored")
    (restored.workdir / "certs").mkdir(parents=True)
    shutil.copytree(dest, restored.data_dir)
    try:
        restored.start()
        token = restored.request("POST", "/login", {"username": name, "password": PASSWORD}).json()["token"]
        listed = [f["filename"] for f in restored.request("GET", "/files", token=token).json()["files"]]
        assert {"before-0.bin", "before-1.bin", "before-2.bin"} <= set(listed)
        for filename in listed:
            assert restored.request("GET", f"/download/{filename}", token=token).body == uploaded[filename]
    finally:
        restored.stop()


def test_backup_refuses_an_existing_destination_and_a_copy_without_keys_needs_them(
    server: Server, tmp_path: Path
) -> None:
    _, token = server.new_user()
    assert server.put_file(token, "x.bin", b"x" * 1000).status == 201
    taken = tmp_path / "taken"
    taken.mkdir()
    refused = server.admin("backup", str(taken))
    assert refused.returncode == 2 and b"give a new directory" in refused.stderr
    assert list(taken.iterdir()) == []
    dest = tmp_path / "bare"
    done = server.admin("backup", str(dest))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["vault.db"]
    # verify of the copy alone: refused rather than run under new, wrong keys
    alone = server.admin("--data-dir", str(dest), "verify")
    assert alone.returncode == 2 and b"no master key" in alone.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["vault.db"]
    shutil.copy(server.data_dir / "master.keys", dest / "master.keys")
    checked = server.admin("--data-dir", str(dest), "verify")
    assert checked.returncode == 0, checked.stderr
    assert b"files checked, 0 damaged" in checked.stdout


def test_compact_gives_deleted_space_back_and_refuses_while_the_server_runs(fresh_server: Server) -> None:
    """A database made before incremental auto-vacuum keeps the pages of deleted files until
    compact, which also turns the incremental vacuum on (deletes give space back from then on)."""
    server = fresh_server.start()
    server.stop()
    with closing(sqlite3.connect(server.db_path, isolation_level=None)) as db:
        db.execute("PRAGMA auto_vacuum = NONE")
        db.execute("VACUUM")  # as databases were made before
    server.start()
    _, token = server.new_user()
    for n in range(4):
        assert server.put_file(token, f"big-{n}.bin", os.urandom(2 * 1024 * 1024)).status == 201
    for n in range(4):
        assert server.request("DELETE", f"/files/big-{n}.bin", token=token).status == 200
    running = server.admin("compact")
    assert running.returncode == 2 and b"already running" in running.stderr
    server.stop()
    before = server.db_path.stat().st_size
    done = server.admin("compact")
    assert done.returncode == 0, done.stderr
    after = server.db_path.stat().st_size
    # Every deleted byte given back: an empty database is left, ~32 pages of 64 KiB (a page at
    # least per table and index, so the bound is not the empty size to the page).
    assert before - after >= 8 * 1024 * 1024 and after < 4 * 1024 * 1024
    with closing(sqlite3.connect(server.db_path)) as db:
        assert db.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # INCREMENTAL
    assert done.stdout.startswith(b"database ") and b" -> " in done.stdout
