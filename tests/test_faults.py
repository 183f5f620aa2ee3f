"""The fault suite: what a change to the storage layer must still pass (issue 11).

Read-your-writes under download load: every answer after an acknowledged write (201, 204, 200)
reflects it, whatever else the server is reading at the time.
"""

import asyncio
import hashlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from storage.sqlite import SQLiteStore
from tests.server import Server
from tests.test_tus import create, listing, offset_of, patch, payload
from vault.errors import OffsetMismatch
from vault.store import Resumable

MiB = 1024 * 1024
SEG = 64 * 1024  # a small segment size: a download reads the database many times per file


@contextmanager
def downloading(server: Server, token: str, name: str, data: bytes, clients: int = 4) -> Iterator[None]:
    """``clients`` threads download ``name`` over and over until the block ends; each copy must be
    whole (the file is never replaced meanwhile)."""
    stop, rounds = threading.Event(), [0]
    failures: list[object] = []

    def loop() -> None:
        conn = server.connection(timeout=60)
        try:
            while not stop.is_set():
                conn.request("GET", "/download/" + name, headers={"Authorization": f"Bearer {token}"})
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200 or body != data:
                    failures.append((resp.status, len(body)))
                rounds[0] += 1
        except Exception as exc:  # noqa: BLE001 - reported below, in the test's thread
            failures.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not failures, failures[:5]
    assert rounds[0] > 0


def read_back(server: Server, token: str, name: str, data: bytes) -> None:
    """GET and the listing, at once, show exactly ``data``."""
    resp = server.request("GET", "/download/" + name, token=token)
    assert (resp.status, hashlib.sha256(resp.body).hexdigest()) == (200, hashlib.sha256(data).hexdigest())
    entry = listing(server, token)[name]
    assert (entry["size"], entry["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())


def test_every_write_is_read_back_at_once_under_parallel_downloads(fresh_server: Server) -> None:
    server = fresh_server
    server.env["VAULT_SEGMENT_SIZE"] = str(SEG)
    server.env["VAULT_UPLOADS_PER_USER"] = "16"
    server.start()
    _, token = server.new_user()
    big = payload(2 * MiB, seed=7)
    assert server.put_file(token, "big.bin", big).status == 201
    with downloading(server, token, "big.bin", big):
        for round_ in range(12):
            # an upload, then a replacement of it: each read back at once
            for version in range(2):
                data = payload(3 * SEG + round_, seed=100 * round_ + version)
                assert server.put_file(token, f"f{round_}.bin", data).status == 201
                read_back(server, token, f"f{round_}.bin", data)
            # tus: PATCH at once after the 201, and each PATCH at the offset the last 204 gave,
            # which HEAD, asked at once, confirms
            data = payload(3 * SEG + 100, seed=round_)
            resp = create(server, token, f"t{round_}.bin", len(data))
            assert resp.status == 201, resp.body
            path = urlsplit(resp.headers["Location"]).path
            offset = 0
            for end in (SEG // 2, 2 * SEG + 1, len(data) - 1):
                resp = patch(server, token, path, offset, data[offset:end])
                assert (resp.status, resp.headers.get("Upload-Offset")) == (204, str(end)), resp.body
                offset = end
                assert offset_of(server, token, path) == offset
            assert patch(server, token, path, offset, data[offset:]).status == 204
            read_back(server, token, f"t{round_}.bin", data)


def test_a_write_from_an_old_offset_never_replaces_a_saved_segment(tmp_path: Path) -> None:
    """The last line of defence behind the offset check: a resumable upload's segments below its
    stored offset are never rewritten, so a client that re-synced from an old offset cannot
    spoil what was saved (its tail's MAC covers those segments' tags)."""
    db = tmp_path / "vault.db"

    async def main() -> None:
        store = await SQLiteStore.open(db)
        try:
            upload = Resumable(
                tus_id="t",
                file_id=b"f" * 16,
                owner=1,
                name="a.bin",
                length=10 * SEG,
                offset=0,
                seg_size=SEG,
                key_id=1,
                wrapped_key=b"w",
                tail=None,
                expires=time.time() + 60,
                metadata="",
                created=time.time(),
                tag=b"t",
            )
            await store.create_resumable(upload)
            for index in (0, 1, 2):
                await store.put_segment(upload.file_id, index, b"old", b"saved")
            assert await store.save_progress(upload.file_id, 0, 2 * SEG + 5, b"tail", time.time() + 60)
            for index in (0, 1):
                with pytest.raises(OffsetMismatch):
                    await store.put_segment(upload.file_id, index, b"new", b"rewritten")
            await store.put_segment(upload.file_id, 2, b"new", b"the partial one")  # not saved yet
            await store.put_segment(upload.file_id, 3, b"new", b"beyond")
        finally:
            await store.close()

    asyncio.run(main())
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT idx, data FROM segments ORDER BY idx").fetchall()
    assert rows == [(0, b"saved"), (1, b"saved"), (2, b"the partial one"), (3, b"beyond")]
