"""blob_store: s3 end to end: a real vault server keeping its segments in a real S3 server
(SeaweedFS on loopback, tests/s3server.py). Uploads, downloads, ranges, tampering through the
S3 API, crash clean-up and garbage collection."""

import asyncio
import hashlib
import re
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from storage.s3 import MAX_OBJECT, S3Client, S3Config
from tests import pg
from tests.server import Server
from tests.test_api import LIVE, assert_error, payload, query, user_id
from tests.test_transfers import cut, read_streaming, start_upload, wait_for

pytest.importorskip("aiohttp", reason="requirements-s3.txt is not installed")
from tests.s3server import BUCKET, PORT_FLAGS, PORT_TAKEN, S3Server, free_ports, weed_binary  # noqa: E402

pytestmark = pytest.mark.skipif(weed_binary() is None, reason="no weed binary (requirements-s3.txt)")
S = 64 * 1024  # segment size of these servers: many segments from small files
T = TypeVar("T")


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("weed")).start()
    yield server
    server.stop()


def vault_on(s3: S3Server, workdir: Path, prefix: str) -> Server:
    return Server(workdir, env={**s3.env(prefix), "VAULT_SEGMENT_SIZE": str(S)})


@pytest.fixture(scope="module")
def vault(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = vault_on(s3, tmp_path_factory.mktemp("vault-s3"), "shared/").start()
    yield srv
    srv.stop()


def on_s3(s3: S3Server, work: Callable[[S3Client], Awaitable[T]]) -> T:
    """Run ``work`` with a client of the test's own, as someone with the bucket's keys would."""

    async def main() -> T:
        config = S3Config(s3.endpoint, BUCKET, "", "us-east-1", s3.access_key, s3.secret_key)
        client = await S3Client.open(config)
        try:
            return await work(client)
        finally:
            await client.close()

    return asyncio.run(main())


def keys(s3: S3Server, prefix: str) -> list[str]:
    async def work(client: S3Client) -> list[str]:
        return [info.key async for info, _ in client.list(prefix)]

    return on_s3(s3, work)


def get_object(s3: S3Server, key: str) -> bytes:
    body = on_s3(s3, lambda c: c.get(key))
    assert body is not None, key
    return body


def put_object(s3: S3Server, key: str, body: bytes) -> None:
    on_s3(s3, lambda c: c.put(key, body))


def delete_object(s3: S3Server, key: str) -> None:
    on_s3(s3, lambda c: c.delete(key))


def segment_keys(server: Server, prefix: str, owner: int, name: str) -> list[str]:
    """The object keys of a LIVE file's segments, in index order, from its metadata rows."""
    rows = query(
        server,
        "SELECT s.file_id, s.idx, s.tag FROM segments s JOIN files f ON f.file_id = s.file_id"
        " WHERE f.owner = ? AND f.name = ? AND f.state = ? ORDER BY s.idx",
        (owner, name, LIVE),
    )
    return [f"{prefix}{bytes(fid).hex()}/{idx:012d}.{bytes(tag).hex()}" for fid, idx, tag in rows]


def upload(server: Server, token: str, name: str, data: bytes) -> None:
    resp = server.put_file(token, name, data)
    assert resp.status == 201, resp.body
    assert resp.json()["sha256"] == hashlib.sha256(data).hexdigest()


def download(server: Server, token: str, name: str, headers: dict[str, str] | None = None) -> Any:
    return server.request("GET", f"/download/{name}", token=token, headers=headers)


@pytest.mark.parametrize("size", [0, 1, S - 1, S, S + 1, 5 * S + 7])
def test_files_round_trip_through_the_bucket_one_object_per_segment(
    vault: Server, s3: S3Server, size: int
) -> None:
    name, token = vault.new_user()
    data = payload(size)
    upload(vault, token, "f.bin", data)
    resp = download(vault, token, "f.bin")
    assert (resp.status, resp.body) == (200, data)
    owner = user_id(vault, name)
    wanted = segment_keys(vault, "shared/", owner, "f.bin")
    assert len(wanted) == max(1, -(-size // S))
    assert set(wanted) <= set(keys(s3, "shared/"))
    # The database keeps the rows (index, tag, size) but none of the bytes.
    rows = query(
        vault,
        "SELECT length(s.data), s.size FROM segments s JOIN files f ON f.file_id = s.file_id"
        " WHERE f.owner = ? ORDER BY s.idx",
        (owner,),
    )
    assert all(length == 0 for length, _ in rows)
    sizes = [len(get_object(s3, key)) for key in wanted]
    assert [size for _, size in rows] == sizes
    me = vault.request("GET", "/me", token=token).json()
    assert me["stored"] == sum(sizes)


def test_range_reads_fetch_only_the_segments_they_need(vault: Server, s3: S3Server) -> None:
    name, token = vault.new_user()
    data = payload(6 * S)
    upload(vault, token, "r.bin", data)
    wanted = segment_keys(vault, "shared/", user_id(vault, name), "r.bin")
    for index in (0, 1, 3, 4, 5):  # everything but segment 2 goes: a read that needs them fails
        delete_object(s3, wanted[index])
    start, end = 2 * S + 100, 3 * S - 1
    resp = download(vault, token, "r.bin", {"Range": f"bytes={start}-{end}"})
    assert (resp.status, resp.body) == (206, data[start : end + 1])
    resp = download(vault, token, "r.bin", {"Range": f"bytes=0-{S}"})
    assert_error(resp, 500, "Stored data failed its integrity check")


def tampered_download(vault: Server, token: str, name: str) -> tuple[int, bytes]:
    status, _, body = read_streaming(vault, f"/download/{name}", token)
    return status, body


def tamper(s3: S3Server, attack: str, keys: list[str], old: list[str]) -> None:
    """Change segment 2 of a file through the S3 API, as someone with the bucket's keys could."""
    body = get_object(s3, keys[2])
    if attack == "flipped":  # one bit of its ciphertext
        put_object(s3, keys[2], body[:100] + bytes([body[100] ^ 1]) + body[101:])
    elif attack == "swapped":  # exchanged with segment 3, a valid object of this very file
        put_object(s3, keys[2], get_object(s3, keys[3]))
        put_object(s3, keys[3], body)
    elif attack == "deleted":
        delete_object(s3, keys[2])
    elif attack == "replayed":  # the same segment of the version this one replaced
        put_object(s3, keys[2], get_object(s3, old[2]))
    elif attack == "extended":  # the right body with more after it
        put_object(s3, keys[2], body + bytes(16))
    elif attack == "oversized":  # larger than any segment: refused unread
        put_object(s3, keys[2], bytes(MAX_OBJECT - len(body) + 1) + body)


ATTACKS = ["flipped", "swapped", "deleted", "replayed", "extended", "oversized"]


@pytest.mark.parametrize("attack", ATTACKS)
def test_tampered_object_is_an_integrity_failure_and_no_altered_byte_is_sent(
    vault: Server, s3: S3Server, attack: str
) -> None:
    name, token = vault.new_user()
    owner = user_id(vault, name)
    upload(vault, token, "t.bin", payload(5 * S))
    old_keys = segment_keys(vault, "shared/", owner, "t.bin")  # kept until the lease runs out
    data = payload(5 * S + 3)
    upload(vault, token, "t.bin", data)  # replaces it
    wanted = segment_keys(vault, "shared/", owner, "t.bin")
    tamper(s3, attack, wanted, old_keys)
    status, body = tampered_download(vault, token, "t.bin")
    assert status == 200  # the headers went out before segment 2 was read
    assert len(body) < len(data) and data.startswith(body)  # cut short, never altered
    assert len(body) <= 2 * S
    # A range that starts at the tampered segment fails before any byte: the generic JSON 500.
    resp = download(vault, token, "t.bin", {"Range": f"bytes={2 * S}-{3 * S - 1}"})
    assert_error(resp, 500, "Stored data failed its integrity check")


def test_verify_reports_a_file_whose_object_was_deleted(vault: Server, s3: S3Server) -> None:
    name, token = vault.new_user()
    upload(vault, token, "gone.bin", payload(2 * S))
    delete_object(s3, segment_keys(vault, "shared/", user_id(vault, name), "gone.bin")[1])
    result = vault.admin("verify")
    assert result.returncode == 1, result
    assert b"gone.bin" in result.stdout + result.stderr


def test_kill_mid_upload_then_gc_leaves_no_orphan_object(s3: S3Server, tmp_path: Path) -> None:
    prefix = "crash/"
    vault = vault_on(s3, tmp_path / "vault", prefix).start()
    try:
        name, token = vault.new_user()
        kept = payload(3 * S + 1)
        upload(vault, token, "kept.bin", kept)
        upload(vault, token, "replaced.bin", payload(2 * S))
        upload(vault, token, "replaced.bin", payload(2 * S + 5))  # the first version's objects: orphans
        upload(vault, token, "deleted.bin", payload(S + 1))
        assert vault.request("DELETE", "/files/deleted.bin", token=token).status == 200
        sock = start_upload(
            vault, token, "PUT", "/upload/partial.bin", {"Content-Length": str(40 * S)}, payload(20 * S)
        )
        owner = user_id(vault, name)
        wait_for(lambda: staged_objects(vault, owner) >= 4, "segments of the partial upload stored")
        vault.stop(signal.SIGKILL)
        cut(sock)
    finally:
        vault.stop()
    listed = [keys(s3, prefix)]

    def settled() -> bool:  # weed finishes the PUTs the killed server had sent
        listed.append(keys(s3, prefix))
        return listed[-1] == listed[-2]

    wait_for(settled, "the object listing to stop changing")
    before = listed[-1]
    live = sorted(
        segment_keys(vault, prefix, owner, "kept.bin") + segment_keys(vault, prefix, owner, "replaced.bin")
    )
    assert len(before) > len(live)  # the partial upload's, the replaced and the deleted version's
    result = vault.admin("gc", "--lease", "0")  # the server is stopped: its lock is free
    assert result.returncode == 0, result
    report = result.stdout.decode()
    found = re.search(r"objects: (\d+) under the prefix, (\d+) in use; orphans: (\d+) deleted", report)
    assert found is not None, report
    total, in_use, deleted = map(int, found.groups())
    assert total >= len(before) and in_use == len(live) and deleted == total - in_use, report
    assert sorted(keys(s3, prefix)) == live  # exactly the committed files' objects remain
    vault.start()
    try:
        assert download(vault, token, "kept.bin").body == kept
        again = vault.admin("gc", "--lease", "0")
        assert b"orphans: 0 deleted" in again.stdout, again
    finally:
        vault.stop()


def staged_objects(vault: Server, owner: int) -> int:
    rows = query(
        vault,
        "SELECT COUNT(*) FROM segments s JOIN files f ON f.file_id = s.file_id"
        " WHERE f.owner = ? AND f.state = 0",
        (owner,),
    )
    return int(rows[0][0])


def test_gc_keeps_orphans_younger_than_the_lease(vault: Server, s3: S3Server) -> None:
    put_object(
        s3,
        "shared/" + "ab" * 16 + "/000000000000." + "cd" * 32,
        b"an upload's object, its row not yet written",
    )
    put_object(s3, "shared/not-ours.txt", b"left alone")
    result = vault.admin("gc")  # beside the running server, with the default lease
    assert result.returncode == 0, result
    assert b"younger than the lease kept" in result.stdout
    assert "shared/" + "ab" * 16 + "/000000000000." + "cd" * 32 in keys(s3, "shared/")
    assert "shared/not-ours.txt" in keys(s3, "shared/")


def test_wrong_credentials_stop_start_up_with_a_clear_message(s3: S3Server, tmp_path: Path) -> None:
    vault = Server(tmp_path / "vault", env={**s3.env(), "AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    with pytest.raises(RuntimeError, match="object store is unavailable"):
        vault.start()


def test_missing_credentials_are_a_config_error(s3: S3Server, tmp_path: Path) -> None:
    env = {k: v for k, v in s3.env().items() if not k.startswith("AWS_")}
    vault = Server(tmp_path / "vault", env={**env, "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""})
    with pytest.raises(RuntimeError, match="AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        vault.start()


def test_health_answers_while_the_bucket_does(vault: Server) -> None:
    resp = vault.request("GET", "/health")
    assert (resp.status, resp.json()) == (200, {"status": "ok"})


def test_weed_starts_again_on_other_ports_when_one_is_taken_before_it_binds(tmp_path: Path) -> None:
    """free_ports() closes its sockets before weed binds them, so another process can take one
    in between (seen in a loaded full run: weed exited, test_s3's fixture errored). The S3 port
    here is held by a listening socket; weed exits on it and is started on fresh ports."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        ports = free_ports(len(PORT_FLAGS))
        ports[PORT_FLAGS.index("s3.port")] = held.getsockname()[1]
        server = S3Server(tmp_path / "weed").start(ports=ports)
        try:
            assert server.port != held.getsockname()[1]
            assert PORT_TAKEN in server.log()
            assert server.process is not None and server.process.poll() is None
        finally:
            server.stop()


def test_object_store_down_gives_503_and_keeps_nothing(s3: S3Server, tmp_path: Path) -> None:
    other = S3Server(tmp_path / "weed", s3.access_key, s3.secret_key).start()
    vault = Server(tmp_path / "vault", env=other.env()).start()
    try:
        name, token = vault.new_user()
        upload(vault, token, "before.bin", payload(10))
        other.stop()
        resp = vault.put_file(token, "after.bin", payload(3 * S))
        assert_error(resp, 503, "The object store is unavailable: retry shortly")
        assert resp.headers.get("Retry-After") == "5"
        resp = download(vault, token, "before.bin")
        assert_error(resp, 503, "The object store is unavailable: retry shortly")
        assert vault.request("GET", "/health").status == 503
        owner = user_id(vault, name)
        wait_for(lambda: staged_objects(vault, owner) == 0, "the failed upload's rows discarded")
        names = [f["filename"] for f in vault.request("GET", "/files", token=token).json()["files"]]
        assert names == ["before.bin"]
    finally:
        vault.stop()
        other.stop()


def segment_bytes_in_database(server: Server) -> int:
    return int(query(server, "SELECT COALESCE(SUM(length(data)), 0) FROM segments")[0][0])


def test_migrate_moves_a_populated_vault_to_the_bucket_and_back_byte_identical(
    s3: S3Server, tmp_path: Path, pg_cluster: pg.Cluster
) -> None:
    database_env = {"VAULT_SEGMENT_SIZE": str(S)}
    s3_env = {**s3.env("migrated/"), **database_env}
    vault = Server(tmp_path / "vault", env=database_env).start()
    files: dict[tuple[str, str], bytes] = {}
    try:
        alice, alice_token = vault.new_user()
        bob, bob_token = vault.new_user()
        for size in (0, 1, S, 3 * S + 5):
            files[(alice, f"a{size}.bin")] = payload(size)
            upload(vault, alice_token, f"a{size}.bin", files[(alice, f"a{size}.bin")])
        files[(bob, "b.bin")] = payload(2 * S + 1)
        upload(vault, bob_token, "b.bin", files[(bob, "b.bin")])
        upload(vault, bob_token, "b.bin", files[(bob, "b.bin")])  # a replaced version, purged first
        shared = vault.request("POST", f"/files/a{S}.bin/shares", {"username": bob}, token=alice_token)
        assert shared.status == 201
        refused = vault.admin("migrate", "--to", "sqlite", "--blobs", "s3")
        assert refused.returncode == 2 and b"another vault is already running" in refused.stderr
    finally:
        vault.stop()
    tokens = {alice: alice_token, bob: bob_token}

    def all_download_identical() -> None:
        for (owner, name), data in files.items():
            tokens[owner] = vault.request(
                "POST", "/login", {"username": owner, "password": "correct horse battery"}
            ).json()["token"]
            assert download(vault, tokens[owner], name).body == data, name
        resp = vault.request("GET", f"/shared/{alice}/a{S}.bin", token=tokens[bob])
        assert (resp.status, resp.body) == (200, files[(alice, f"a{S}.bin")])

    vault.env = s3_env
    vault.start()  # in S3 mode before the move: segments still in rows are read from there
    try:
        all_download_identical()
        files[(alice, "new.bin")] = payload(10)
        upload(vault, tokens[alice], "new.bin", files[(alice, "new.bin")])  # into the bucket
    finally:
        vault.stop()
    to_bucket = vault.admin("migrate", "--to", "sqlite", "--blobs", "s3")
    assert to_bucket.returncode == 0, to_bucket
    assert b"audit log intact" in to_bucket.stdout
    assert b"6 file(s) now in the bucket: 10 segment(s) moved, 1 already there; 0 damaged" in to_bucket.stdout
    assert segment_bytes_in_database(vault) == 0
    assert len(keys(s3, "migrated/")) == 11
    again = vault.admin("migrate", "--to", "sqlite", "--blobs", "s3")  # restartable: nothing left to move
    assert b"0 segment(s) moved, 11 already there" in again.stdout, again
    vault.start()
    try:
        all_download_identical()
    finally:
        vault.stop()
    back = vault.admin("migrate", "--to", "sqlite", "--blobs", "database")
    assert back.returncode == 0, back
    assert b"6 file(s) now in the database: 11 segment(s) moved" in back.stdout
    assert keys(s3, "migrated/") == []
    assert segment_bytes_in_database(vault) > sum(len(d) for d in files.values())
    vault.env = database_env
    vault.start()
    try:
        all_download_identical()
    finally:
        vault.stop()
    assert vault.admin("audit-verify").returncode == 0

    # SQLite with the segments in rows -> PostgreSQL with them in the bucket, and back
    url = pg_cluster.database_sync(str(tmp_path))
    # the source in S3 mode with its segments still in rows: each written out to an object
    vault.env = {**s3_env, "VAULT_DATABASE_URL": url}
    to_postgres = vault.admin("migrate", "--to", "postgres", "--blobs", "s3")
    assert to_postgres.returncode == 0, to_postgres
    assert b"files: 6 copied (11 segments" in to_postgres.stdout, to_postgres.stdout
    assert b"and blob_store: s3 before starting the server" in to_postgres.stdout
    assert len(keys(s3, "migrated/")) == 11
    vault.env = {**s3_env, "VAULT_STORAGE": "postgres", "VAULT_BLOB_STORE": "s3", "VAULT_DATABASE_URL": url}
    assert vault.admin("audit-verify").returncode == 0
    vault.start()
    try:
        all_download_identical()
    finally:
        vault.stop()
    for path in vault.data_dir.glob("vault.db*"):  # the old vault.db moved away
        path.rename(tmp_path / path.name)
    to_sqlite = vault.admin("migrate", "--to", "sqlite")  # the bucket on both sides: rows name the objects
    assert to_sqlite.returncode == 0, to_sqlite
    assert b"files: 6 copied (11 segments" in to_sqlite.stdout, to_sqlite.stdout
    vault.env = s3_env
    assert segment_bytes_in_database(vault) == 0
    assert len(keys(s3, "migrated/")) == 11
    vault.start()
    try:
        all_download_identical()
    finally:
        vault.stop()
    for path in vault.data_dir.glob("vault.db*"):  # and once more, from PostgreSQL into rows
        path.unlink()
    vault.env = {**s3_env, "VAULT_STORAGE": "postgres", "VAULT_DATABASE_URL": url}
    to_rows = vault.admin("migrate", "--to", "sqlite", "--blobs", "database")
    assert to_rows.returncode == 0, to_rows
    assert b"files: 6 copied (11 segments" in to_rows.stdout, to_rows.stdout
    vault.env = database_env
    assert segment_bytes_in_database(vault) > sum(len(d) for d in files.values())
    vault.start()
    try:
        all_download_identical()
    finally:
        vault.stop()
