"""Two instances, one PostgreSQL (issue 15): two ``run.py`` on two ports, each with a data
directory of its own and the same keys from the environment, against one database in the
throwaway cluster (tests/pg.py). The client alternates between them and sees one server: every
rule that needs shared state (storage/postgres_state.py) holds in total, where an instance that
had not seen the other's requests would answer otherwise (each of those tests fails with the
state in memory), and what one store gives holds too (files, Range reads, resumable uploads, a
replacement during a download, one LIVE version per name, one audit chain).

Every test runs twice (issue 16): with the segments in the database (``blob_store: database``)
and in one bucket both instances share (``blob_store: s3``, SeaweedFS on loopback from
tests/s3server.py). In S3 mode, a kill mid-upload leaves objects no row names; the other
instance's own periodic collection, or ``admin gc``, removes them: the bucket, listed through
the S3 API, then holds exactly the objects the segment rows name."""

import base64
import hashlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests import pg
from tests.dbedit import server_database
from tests.s3server import S3Server, list_keys
from tests.server import Response, Server
from tests.test_api import user_id, wait_until_clean
from tests.test_limits import partial_put, read_response
from tests.test_transfers import cut, open_tls, start_upload, wait_for

PASSWORD = "correct horse battery"
LEASE = 2
GC_LEASE = 10  # s3_gc_lease: its least value
MiB = 1024 * 1024


def instance_env(url: str, keys: dict[str, str], **extra: str) -> dict[str, str]:
    return {
        "VAULT_STORAGE": "postgres",
        "VAULT_DATABASE_URL": url,
        **keys,
        "VAULT_WORKER_LEASE": str(LEASE),
        "VAULT_UPLOADS_PER_USER": "2",
        "VAULT_USER_QUOTA": str(8 * MiB),
        "VAULT_LOGIN_FREE_ATTEMPTS": "3",
        "VAULT_LOGIN_MAX_BACKOFF": "600",
        "VAULT_TRUSTED_PROXIES": "127.0.0.1",  # each test logs in from an address of its own
        **extra,
    }


def new_keys() -> dict[str, str]:
    return {
        "VAULT_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
        "VAULT_JWT_SECRET": base64.b64encode(os.urandom(32)).decode(),
    }


def start_pair(tmp: Path, url: str, **extra: str) -> tuple[Server, Server]:
    keys = new_keys()
    a = Server(tmp / "a", env=instance_env(url, keys, **extra)).start()
    try:
        b = Server(tmp / "b", env=instance_env(url, keys, **extra)).start()
    except BaseException:
        a.stop()
        raise
    return a, b


BLOB_STORES = ["database", "s3"]


def blob_env(request: pytest.FixtureRequest, blob: str, prefix: str) -> dict[str, str]:
    if blob == "database":
        return {}
    s3: S3Server = request.getfixturevalue("weed")
    return s3.env(prefix)


@pytest.fixture(scope="module", params=BLOB_STORES)
def pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pg_cluster: pg.Cluster
) -> Iterator[tuple[Server, Server]]:
    blob = request.param
    a, b = start_pair(
        tmp_path_factory.mktemp(f"instances-{blob}"),
        pg_cluster.database_sync(f"instances-{blob}"),
        **blob_env(request, blob, f"instances-{blob}/"),
    )
    yield a, b
    a.stop()
    b.stop()


def login(server: Server, name: str, password: str, address: str) -> Response:
    return server.request(
        "POST", "/login", {"username": name, "password": password}, {"X-Forwarded-For": address}
    )


def assert_status(resp: Response, status: int) -> None:
    assert resp.status == status, resp.body


def staged(server: Server, name: str) -> int:
    with server_database(server) as db:
        (count,) = db.execute(
            "SELECT COUNT(*) FROM files WHERE owner = ? AND state = 0", (user_id(server, name),)
        ).fetchone()
    return int(count)


def test_upload_on_one_download_and_range_on_the_other(pair: tuple[Server, Server]) -> None:
    a, b = pair
    _, token = a.new_user()
    data = os.urandom(3 * MiB + 123)
    assert a.put_file(token, "both.bin", data).status == 201
    got = b.request("GET", "/download/both.bin", token=token)
    assert got.status == 200 and hashlib.sha256(got.body).digest() == hashlib.sha256(data).digest()
    part = b.request(
        "GET", "/download/both.bin", headers={"Range": f"bytes={MiB - 10}-{MiB + 9}"}, token=token
    )
    assert part.status == 206 and part.body == data[MiB - 10 : MiB + 10]
    assert [f["filename"] for f in b.request("GET", "/files", token=token).json()["files"]] == ["both.bin"]


@pytest.mark.parametrize("route", ["/logout", "/logout/all"])
def test_a_logout_on_one_ends_the_token_on_the_other_within_a_second(
    pair: tuple[Server, Server], route: str
) -> None:
    a, b = pair
    _, token = a.new_user()
    assert_status(b.request("GET", "/files", token=token), 200)
    assert_status(a.request("POST", route, token=token), 200)
    time.sleep(1.0)  # the promise under test: every instance learns of a revocation within a second
    assert_status(b.request("GET", "/files", token=token), 401)
    assert_status(a.request("GET", "/files", token=token), 401)


def test_wrong_logins_alternating_lock_after_the_free_attempts_in_total(pair: tuple[Server, Server]) -> None:
    a, b = pair
    name, _ = a.new_user()
    failed = [login(s, name, "wrong password", "10.9.0.1") for s in (a, b, a)]
    assert [r.status for r in failed] == [401, 401, 401]
    for server in (b, a):  # even the right password, on either, from another address
        resp = login(server, name, PASSWORD, "10.9.1.1")
        assert resp.status == 429 and resp.headers["Retry-After"], resp.body


def test_uploads_per_user_hold_in_total(pair: tuple[Server, Server]) -> None:
    a, b = pair
    name, token = a.new_user()
    first, second = partial_put(a, token, "a.bin"), partial_put(b, token, "b.bin")
    try:
        for server in (a, b):
            assert_status(server.put_file(token, "c.bin", b"data"), 429)
        first.sendall(b"x" * 990)
        assert read_response(first)[0] == 201
        assert_status(b.put_file(token, "c.bin", b"data"), 201)  # given back before the 201
    finally:
        first.close()
        cut(second)
    wait_until_clean(a, user_id(a, name))


def test_quota_holds_in_total_with_an_upload_in_progress(pair: tuple[Server, Server]) -> None:
    """6 MiB held by an upload in progress on A leave 2 MiB of the 8 MiB quota on B too."""
    a, b = pair
    name, token = a.new_user()
    held = start_upload(a, token, "PUT", "/upload/held.bin", {"Content-Length": str(6 * MiB)}, b"x" * 1000)
    try:
        wait_for(lambda: staged(a, name) == 1, "the held upload is staged")
        assert_status(b.put_file(token, "big.bin", b"y" * (3 * MiB)), 413)
        assert_status(b.put_file(token, "fits.bin", b"y" * (2 * MiB)), 201)
        held.sendall(b"x" * (6 * MiB - 1000))
        assert read_response(held)[0] == 201
    finally:
        held.close()
    for server in (a, b):
        assert_status(server.put_file(token, "one.bin", b"z"), 413)


def test_a_one_time_link_fetched_at_once_on_both_gives_one_200_and_one_410(
    pair: tuple[Server, Server],
) -> None:
    a, b = pair
    _, token = a.new_user()
    assert a.put_file(token, "once.bin", os.urandom(60_000)).status == 201
    link = a.request("POST", "/files/once.bin/links", {"max_downloads": 1}, token=token).json()
    path = "/" + link["url"].split("/", 3)[3]
    barrier = threading.Barrier(2)

    def fetch(server: Server) -> Response:
        barrier.wait()
        return server.request("GET", path)

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(fetch, (a, b)))
    assert sorted(r.status for r in answers) == [200, 410]


def tus_headers(offset: int) -> dict[str, str]:
    return {
        "Tus-Resumable": "1.0.0",
        "Upload-Offset": str(offset),
        "Content-Type": "application/offset+octet-stream",
    }


def test_tus_created_on_one_is_continued_on_the_other(pair: tuple[Server, Server]) -> None:
    a, b = pair
    _, token = a.new_user()
    data = os.urandom(3 * MiB)
    meta = "filename " + base64.b64encode(b"t.bin").decode()
    created = a.request(
        "POST",
        "/tus",
        None,
        {"Tus-Resumable": "1.0.0", "Upload-Length": str(len(data)), "Upload-Metadata": meta},
        token=token,
    )
    assert created.status == 201, created.body
    path = "/" + created.headers["Location"].split("/", 3)[3]
    assert_status(a.request("PATCH", path, data[: 2 * MiB], tus_headers(0), token=token), 204)
    head = b.request("HEAD", path, headers={"Tus-Resumable": "1.0.0"}, token=token)
    assert head.headers["Upload-Offset"] == str(2 * MiB)
    assert_status(b.request("PATCH", path, data[2 * MiB :], tus_headers(2 * MiB), token=token), 204)
    assert a.request("GET", "/download/t.bin", token=token).body == data


def test_a_replace_on_one_while_the_other_streams_the_old_version_finishes_whole(
    pair: tuple[Server, Server],
) -> None:
    a, b = pair
    _, token = a.new_user()
    old, new = os.urandom(6 * MiB), os.urandom(2 * MiB)
    assert a.put_file(token, "r.bin", old).status == 201
    sock = open_tls(b)
    try:
        sock.sendall(
            f"GET /download/r.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
        )
        received = bytearray(sock.recv(64 * 1024))  # the download has begun
        assert received.startswith(b"HTTP/1.1 200")
        assert a.put_file(token, "r.bin", new).status == 201  # replaced on the other instance
        assert a.request("GET", "/download/r.bin", token=token).body == new
        head, _, body = bytes(received).partition(b"\r\n\r\n")
        rest = bytearray(body)
        while len(rest) < len(old):
            chunk = sock.recv(256 * 1024)
            if not chunk:
                break
            rest += chunk
    finally:
        sock.close()
    assert bytes(rest) == old


def test_the_same_name_uploaded_at_once_on_both_leaves_one_live_version(pair: tuple[Server, Server]) -> None:
    a, b = pair
    name, token = a.new_user()
    bodies = [bytes([65 + n]) * 50_000 for n in range(6)]
    answers: list[Response] = []
    for first in range(0, 6, 2):
        barrier = threading.Barrier(2)

        def upload(job: tuple[Server, bytes], barrier: threading.Barrier = barrier) -> Response:
            barrier.wait()
            return job[0].put_file(token, "same.bin", job[1])

        with ThreadPoolExecutor(2) as pool:
            answers += pool.map(upload, [(a, bodies[first]), (b, bodies[first + 1])])
    assert [r.status for r in answers] == [201] * 6
    with server_database(a) as db:
        live = db.execute(
            "SELECT COUNT(*) FROM files WHERE owner = ? AND name = 'same.bin' AND state = 1",
            (user_id(a, name),),
        ).fetchall()
    assert live == [(1,)]
    assert b.request("GET", "/download/same.bin", token=token).body in bodies


def segment_keys(server: Server, prefix: str) -> list[str]:
    """The object keys every segment row of the server's database names (storage/s3.py)."""
    with server_database(server) as db:
        rows = db.execute("SELECT file_id, idx, tag FROM segments").fetchall()
    return sorted(f"{prefix}{bytes(fid).hex()}/{idx:012d}.{bytes(tag).hex()}" for fid, idx, tag in rows)


def settled_keys(s3: S3Server, prefix: str) -> list[str]:
    """The bucket's keys once the listing stops changing (weed finishes the PUTs a killed
    instance had sent)."""
    listed = [list_keys(s3, prefix)]

    def settled() -> bool:
        listed.append(list_keys(s3, prefix))
        return listed[-1] == listed[-2]

    wait_for(settled, "the object listing to stop changing")
    return listed[-1]


def leave_orphans_and_kill(a: Server, b: Server) -> tuple[str, str]:
    """On A: a kept file, a replaced one, a deleted one, then ``kill -9`` in the middle of an
    upload (some of its objects written, their rows too or not). (user name, token)"""
    name, token = a.new_user()
    assert_status(a.put_file(token, "kept.bin", os.urandom(MiB + 5)), 201)
    assert_status(a.put_file(token, "replaced.bin", os.urandom(MiB + 6)), 201)
    assert_status(b.put_file(token, "replaced.bin", os.urandom(7)), 201)  # the old version: orphans
    assert_status(b.put_file(token, "deleted.bin", os.urandom(MiB + 8)), 201)
    assert_status(b.request("DELETE", "/files/deleted.bin", token=token), 200)
    size = 4 * MiB  # within the 8 MiB quota beside the files above
    sock = start_upload(a, token, "PUT", "/upload/big.bin", {"Content-Length": str(size)}, b"k" * (3 * MiB))
    try:
        owner = user_id(a, name)

        def stored() -> int:
            with server_database(a) as db:
                (count,) = db.execute(
                    "SELECT COUNT(*) FROM segments s JOIN files f ON f.file_id = s.file_id"
                    " WHERE f.owner = ? AND f.state = 0",
                    (owner,),
                ).fetchone()
            return int(count)

        wait_for(lambda: stored() >= 2, "segments of the upload stored")
        a.stop(signal.SIGKILL)
    finally:
        cut(sock)
    return name, token


def purged(b: Server, name: str) -> None:
    wait_for(lambda: staged(b, name) == 0, "the dead instance's upload is purged", timeout=8 * LEASE + 10)


@pytest.mark.parametrize("blob", BLOB_STORES)
def test_kill_of_one_mid_upload_and_the_other_cleans_up_after_the_lease(
    request: pytest.FixtureRequest, tmp_path: Path, pg_cluster: pg.Cluster, blob: str
) -> None:
    """In S3 mode B's own collection (every s3_gc_interval, objects older than s3_gc_lease)
    leaves the bucket holding exactly what the rows name, without any admin command."""
    prefix = "killed/"
    a, b = start_pair(
        tmp_path,
        pg_cluster.database_sync(str(tmp_path)),
        VAULT_UPLOADS_PER_USER="1",
        VAULT_S3_GC_LEASE=str(GC_LEASE),
        VAULT_S3_GC_INTERVAL="1",
        **blob_env(request, blob, prefix),
    )
    try:
        name, token = leave_orphans_and_kill(a, b)
        s3: S3Server | None = request.getfixturevalue("weed") if blob == "s3" else None
        before = settled_keys(s3, prefix) if s3 else []  # the killed upload's objects among them
        purged(b, name)
        wait_until_clean(b, user_id(b, name))
        assert_status(b.put_file(token, "after.bin", b"2"), 201)  # its upload slot is free again
        if s3:
            wait_for(
                lambda: list_keys(s3, prefix) == segment_keys(b, prefix),
                "the orphan objects collected by the running instance",
                timeout=GC_LEASE + 30,
            )
            assert set(before) - set(segment_keys(b, prefix)), "there were orphans to collect"
        assert b.request("GET", "/download/kept.bin", token=token).status == 200
        result = b.admin("audit-verify")
        assert result.returncode == 0, result.stderr
    finally:
        a.stop()
        b.stop()


def test_kill_of_one_mid_upload_then_admin_gc_leaves_no_orphan_in_the_shared_bucket(
    request: pytest.FixtureRequest, tmp_path: Path, pg_cluster: pg.Cluster
) -> None:
    """The instances collect nothing themselves (s3_gc_interval: 0): ``admin gc`` does, and
    reports it."""
    prefix = "admin-gc/"
    s3: S3Server = request.getfixturevalue("weed")
    a, b = start_pair(
        tmp_path,
        pg_cluster.database_sync(str(tmp_path)),
        VAULT_UPLOADS_PER_USER="1",
        VAULT_S3_GC_INTERVAL="0",
        **blob_env(request, "s3", prefix),
    )
    try:
        name, token = leave_orphans_and_kill(a, b)
        purged(b, name)
        b.stop()
        before = settled_keys(s3, prefix)
        result = b.admin("gc", "--lease", "0")  # both stopped: no upload can be about to name one
        assert result.returncode == 0, result
        live = segment_keys(b, prefix)
        assert list_keys(s3, prefix) == live
        assert set(live) < set(before)
        assert f"orphans: {len(before) - len(live)} deleted".encode() in result.stdout, result.stdout
        b.start()
        assert b.request("GET", "/download/kept.bin", token=token).status == 200
    finally:
        a.stop()
        b.stop()


def test_admin_audit_verify_passes_with_entries_from_both(pair: tuple[Server, Server]) -> None:
    a, b = pair
    for server in (a, b, a, b):
        server.new_user()
    result = a.admin("audit-verify")
    assert result.returncode == 0, result.stderr
