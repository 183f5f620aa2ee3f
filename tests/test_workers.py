"""workers: 2 over real HTTPS: two processes accept on one port, and every rule that needs
shared state holds in total (issue 15). Each rule is checked on answers from both workers:
with per-process state, the worker that had not seen the earlier requests would answer
otherwise. ``X-Vault-Worker`` names the pid that answered."""

import base64
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from functools import partial
from pathlib import Path

import pytest

from tests.server import Response, Server
from tests.test_api import user_id, wait_until_clean
from tests.test_limits import partial_put, read_response
from tests.test_transfers import cut, start_upload, wait_for

PASSWORD = "correct horse battery"
TRIES = 80  # requests sent until both workers have answered one
LEASE = 2


def worker_env(**extra: str) -> dict[str, str]:
    return {
        "VAULT_WORKERS": "2",
        "VAULT_WORKER_LEASE": str(LEASE),
        "VAULT_UPLOADS_PER_USER": "2",
        "VAULT_USER_QUOTA": "100000",
        "VAULT_LOGIN_FREE_ATTEMPTS": "3",
        "VAULT_LOGIN_MAX_BACKOFF": "600",
        "VAULT_TRUSTED_PROXIES": "127.0.0.1",  # each test logs in from an address of its own
        **extra,
    }


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("workers"), env=worker_env()).start()
    yield server
    server.stop()


def worker(resp: Response) -> int:
    return int(resp.headers["X-Vault-Worker"])


def from_both(send: Callable[[], Response], check: Callable[[Response], None]) -> set[int]:
    """Send until both workers have answered (each request on a new connection), checking
    every answer; the pids seen."""
    seen: set[int] = set()
    for _ in range(TRIES):
        resp = send()
        check(resp)
        seen.add(worker(resp))
        if len(seen) == 2:
            return seen
    raise AssertionError(f"only worker {seen} answered {TRIES} requests")


def login(server: Server, name: str, password: str, address: str) -> Response:
    body = {"username": name, "password": password}
    return server.request("POST", "/login", body, {"X-Forwarded-For": address})


def query(server: Server, sql: str, params: tuple[object, ...] = ()) -> list[tuple[int, ...]]:
    with closing(sqlite3.connect(server.db_path, timeout=10)) as db:
        return list(db.execute(sql, params))


def test_requests_land_on_both_workers_and_one_worker_names_none(
    workers: Server, fresh_server: Server
) -> None:
    pids = from_both(lambda: workers.request("GET", "/health"), lambda r: None)
    assert len(pids) == 2 and workers.process is not None and workers.process.pid not in pids
    single = fresh_server.start()
    resp = single.request("GET", "/health")
    assert resp.status == 200 and "X-Vault-Worker" not in resp.headers


def test_a_second_server_on_the_data_directory_is_refused(workers: Server) -> None:
    other = Server(workers.workdir, env=worker_env())
    with pytest.raises(RuntimeError, match="another vault is already running on the data directory"):
        other.start()
    assert workers.request("GET", "/health").status == 200


def test_wrong_logins_lock_after_the_free_attempts_in_total(workers: Server) -> None:
    """Three wrong passwords in all (landing on both workers) lock the account on both: even
    the right password is then refused by each of them."""
    for attempt in range(10):  # until the three failures were not all answered by one worker
        name, _ = workers.new_user(PASSWORD)
        address = f"10.1.{attempt}.1"
        failed = [login(workers, name, "wrong password", address) for _ in range(3)]
        assert [r.status for r in failed] == [401, 401, 401]
        if len({worker(r) for r in failed}) == 2:
            break
    else:
        pytest.fail("ten times all three failures went to one worker")
    from_both(lambda: login(workers, name, PASSWORD, f"10.2.{attempt}.1"), lambda r: assert_locked(r))
    # Another account from yet another address is not affected.
    other, _ = workers.new_user(PASSWORD)
    assert login(workers, other, PASSWORD, "10.3.0.1").status == 200


def assert_locked(resp: Response) -> None:
    assert resp.status == 429, resp.body
    assert resp.headers["Retry-After"]


def test_uploads_per_user_hold_in_total(workers: Server) -> None:
    """Two uploads in progress (uploads_per_user: 2) refuse a third on both workers; when one
    ends, a third is let in."""
    name, token = workers.new_user()
    _, other = workers.new_user()
    first, second = partial_put(workers, token, "a.bin"), partial_put(workers, token, "b.bin")
    try:
        from_both(lambda: workers.put_file(token, "c.bin", b"data"), lambda r: assert_status(r, 429))
        assert workers.put_file(other, "c.bin", b"data").status == 201  # another user's own
        first.sendall(b"x" * 990)
        assert read_response(first)[0] == 201
        assert workers.put_file(token, "c.bin", b"data").status == 201
    finally:
        first.close()
        cut(second)
    wait_until_clean(workers, user_id(workers, name))


def assert_status(resp: Response, status: int) -> None:
    assert resp.status == status, resp.body


def test_quota_holds_in_total_with_an_upload_in_progress(workers: Server) -> None:
    """60 000 bytes held by an upload in progress on one worker leave 40 000 of the 100 000
    quota on both; the upload's bytes count once it is stored."""
    name, token = workers.new_user()
    headers = {"Content-Length": "60000"}
    held = start_upload(workers, token, "PUT", "/upload/held.bin", headers, b"x" * 1000)
    try:
        wait_for(lambda: staged(workers, name) == 1, "the held upload is staged")
        from_both(lambda: workers.put_file(token, "big.bin", b"y" * 50_000), lambda r: assert_status(r, 413))
        assert workers.put_file(token, "fits.bin", b"y" * 40_000).status == 201
        held.sendall(b"x" * 59_000)
        assert read_response(held)[0] == 201
    finally:
        held.close()
    from_both(lambda: workers.put_file(token, "one.bin", b"z"), lambda r: assert_status(r, 413))
    me = workers.request("GET", "/me", token=token).json()
    assert me["usage"] == 100_000 and me["files"] == 2


def staged(server: Server, name: str) -> int:
    rows = query(server, "SELECT COUNT(*) FROM files WHERE owner = ? AND state = 0", (user_id(server, name),))
    return int(rows[0][0])


def test_parallel_uploads_stay_within_the_quota(workers: Server) -> None:
    name, token = workers.new_user()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda n: workers.put_file(token, f"p{n}.bin", b"q" * 30_000), range(8)))
    statuses = [r.status for r in answers]
    assert set(statuses) <= {201, 413, 429} and 1 <= statuses.count(201) <= 3, statuses
    assert len({worker(r) for r in answers}) == 2
    for n in range(8, 8 + 3 - statuses.count(201)):  # then fill it one at a time: 3 files in all
        assert workers.put_file(token, f"p{n}.bin", b"q" * 30_000).status == 201
    from_both(lambda: workers.put_file(token, "more.bin", b"q" * 30_000), lambda r: assert_status(r, 413))
    assert workers.request("GET", "/me", token=token).json()["usage"] == 90_000


def test_a_one_time_link_fetched_at_once_gives_exactly_one_200(workers: Server) -> None:
    _, token = workers.new_user()
    assert workers.put_file(token, "once.bin", os.urandom(60_000)).status == 201
    link = workers.request("POST", "/files/once.bin/links", {"max_downloads": 1}, token=token).json()
    path = "/" + link["url"].split("/", 3)[3]
    barrier = threading.Barrier(8)

    def fetch(_: int) -> Response:
        barrier.wait()
        return workers.request("GET", path)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(fetch, range(8)))
    assert sorted(r.status for r in answers) == [200] + [410] * 7
    assert len({worker(r) for r in answers}) == 2  # both took part
    from_both(lambda: workers.request("GET", path), lambda r: assert_status(r, 410))


def tus_create(server: Server, token: str, length: int) -> str:
    resp = server.request(
        "POST",
        "/tus",
        None,
        {
            "Tus-Resumable": "1.0.0",
            "Upload-Length": str(length),
            "Upload-Metadata": "filename " + base64.b64encode(b"t.bin").decode(),
        },
        token=token,
    )
    assert resp.status == 201, resp.body
    return "/" + resp.headers["Location"].split("/", 3)[3]


def tus_patch(server: Server, token: str, path: str, body: bytes, offset: int = 0) -> Response:
    headers = {
        "Tus-Resumable": "1.0.0",
        "Upload-Offset": str(offset),
        "Content-Type": "application/offset+octet-stream",
    }
    return server.request("PATCH", path, body, headers, token=token)


def test_tus_one_patch_at_a_time_across_workers(workers: Server) -> None:
    """A PATCH in progress on one worker makes every other PATCH of that upload 409, on both
    workers; it then completes the file alone."""
    _, token = workers.new_user()
    path = tus_create(workers, token, 2000)
    headers = {
        "Tus-Resumable": "1.0.0",
        "Upload-Offset": "0",
        "Content-Type": "application/offset+octet-stream",
        "Content-Length": "2000",
    }
    writing = start_upload(workers, token, "PATCH", path, headers, b"a" * 1000)
    try:
        wait_for(
            lambda: bool(query(workers, "SELECT 1 FROM state_holds WHERE kind = 'tus'")), "the PATCH writes"
        )
        from_both(lambda: tus_patch(workers, token, path, b"b" * 2000), lambda r: assert_status(r, 409))
        writing.sendall(b"a" * 1000)
        assert read_response(writing)[0] == 204
    finally:
        writing.close()
    resp = workers.request("GET", "/download/t.bin", token=token)
    assert resp.status == 200 and resp.body == b"a" * 2000


def test_the_same_name_uploaded_at_once_leaves_exactly_one_live_version(workers: Server) -> None:
    """Rounds of two uploads of one name at once (uploads_per_user: 2), at least four and until
    both workers have answered: every commit replaces the last one, and one version is live at
    the end."""
    name, token = workers.new_user()
    bodies: list[bytes] = []
    answers: list[Response] = []
    for round_ in range(TRIES // 2):
        if round_ >= 4 and len({worker(r) for r in answers}) == 2:
            break
        barrier = threading.Barrier(2)

        def upload(body: bytes, barrier: threading.Barrier = barrier) -> Response:
            barrier.wait()
            return workers.put_file(token, "same.bin", body)

        pair = [os.urandom(8) * 625 for _ in range(2)]
        bodies += pair
        with ThreadPoolExecutor(2) as pool:
            answers += pool.map(upload, pair)
    stored = [body for body, r in zip(bodies, answers, strict=True) if r.status == 201]
    assert {r.status for r in answers} <= {201, 429} and len(stored) >= 4
    assert len({worker(r) for r in answers}) == 2
    live = query(
        workers,
        "SELECT COUNT(*) FROM files WHERE owner = ? AND name = 'same.bin' AND state = 1",
        (user_id(workers, name),),
    )
    assert live == [(1,)]
    assert workers.request("GET", "/download/same.bin", token=token).body in stored


@pytest.mark.parametrize("route", ["/logout", "/logout/all"])
def test_a_logout_is_honoured_by_every_worker_within_a_second(workers: Server, route: str) -> None:
    _, token = workers.new_user()
    from_both(lambda: workers.request("GET", "/files", token=token), lambda r: assert_status(r, 200))
    assert workers.request("POST", route, token=token).status == 200
    time.sleep(1.0)  # the promise under test: each worker reads revocations at least every 0.5 s
    from_both(lambda: workers.request("GET", "/files", token=token), lambda r: assert_status(r, 401))


def test_a_killed_workers_upload_is_cleaned_up_after_its_lease(fresh_server: Server) -> None:
    """kill -9 of the worker receiving an upload: after its lease the other purges the staged
    row and its segments and the user's upload slot is free again; the supervisor starts a new
    worker in its place."""
    fresh_server.env = worker_env(VAULT_UPLOADS_PER_USER="1")
    server = fresh_server.start()
    name, token = server.new_user()
    sock = start_upload(server, token, "PUT", "/upload/big.bin", {"Content-Length": "90000"}, b"k" * 80_000)
    pin = "SELECT p.pid FROM state_holds h JOIN state_holders p ON p.holder = h.holder WHERE h.kind = 'pin'"
    wait_for(
        lambda: bool(query(server, pin)) and staged(server, name) == 1, "the upload is staged and pinned"
    )
    [(pid,)] = query(server, pin)
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGKILL)
    try:
        assert server.put_file(token, "later.bin", b"1").status in (201, 429)  # 429: its slot is leased
        wait_for(
            lambda: staged(server, name) == 0, "the dead worker's upload is purged", timeout=8 * LEASE + 10
        )
        wait_until_clean(server, user_id(server, name))
        assert server.put_file(token, "after.bin", b"2").status == 201
        pids = from_both(lambda: server.request("GET", "/health"), lambda r: assert_status(r, 200))
        assert pid not in pids  # a new worker took the dead one's place
    finally:
        cut(sock)


def test_sigterm_stops_every_worker(fresh_server: Server) -> None:
    fresh_server.env = worker_env()
    server = fresh_server.start()
    pids = from_both(lambda: server.request("GET", "/health"), lambda r: None)
    assert server.process is not None
    server.stop()
    assert server.process.returncode == 0
    for pid in pids:
        wait_for(partial(gone, pid), f"worker {pid} exits")
    assert server.output().count("shutting down: 0 request(s) in flight") == 2


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its parent counts: it runs no more)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True
