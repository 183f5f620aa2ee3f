"""The README's "Several instances" setup, run: PostgreSQL (tests/pg.py), a bucket (SeaweedFS,
tests/s3server.py), two ``run.py`` sharing the first one's keys and certificate (copied, as the
README says), and nginx from docs/deploy/nginx-vault-instances.conf (the file the README shows
verbatim; checked here) on loopback ports. A user registers, logs in and uploads through the
proxy, and the file downloads whole from each instance; a tus upload begun on one instance is
resumed through the proxy on the other once the first is killed."""

import base64
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import pg
from tests.balancer import RECIPE, Balancer, readme_recipe, several_instances
from tests.dbedit import server_database
from tests.s3server import S3Server
from tests.server import Server
from tests.test_proxy import CLIENT_ADDRESS, PASSWORD

MiB = 1024 * 1024


@pytest.fixture
def setup(
    tmp_path: Path, pg_cluster: pg.Cluster, weed: S3Server
) -> Iterator[tuple[Server, Server, Balancer]]:
    database = pg_cluster.database_sync(str(tmp_path))
    with several_instances(tmp_path, database, weed, {"VAULT_WORKER_LEASE": "2"}) as started:
        yield started


def test_the_readme_shows_the_tested_nginx_file_verbatim() -> None:
    assert readme_recipe() == RECIPE.read_text(encoding="utf-8")


def through(
    proxy: Balancer, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    status, answer_headers, answer = proxy.request(
        method, path, body, {k.replace("_", "-"): v for k, v in headers.items()}
    )
    return status, dict(answer_headers.items()), answer


def test_register_login_upload_through_the_proxy_and_download_from_each_instance(
    setup: tuple[Server, Server, Balancer],
) -> None:
    a, b, proxy = setup
    name = "alice" + os.urandom(4).hex()
    account = json.dumps({"username": name, "password": PASSWORD}).encode()
    status, _, answer = through(proxy, "POST", "/register", account, Content_Type="application/json")
    assert status == 201, answer
    status, _, answer = through(proxy, "POST", "/login", account, Content_Type="application/json")
    assert status == 200, answer
    token = json.loads(answer)["token"]
    data = os.urandom(5 * MiB + 3)
    status, _, answer = through(proxy, "PUT", "/upload/big.bin", data, Authorization=f"Bearer {token}")
    assert status == 201, answer
    for instance in (a, b):  # the token and the file, on both
        got = instance.request("GET", "/download/big.bin", token=token)
        assert (got.status, got.body == data) == (200, True)
    for _ in range(2):
        status, _, body = through(proxy, "GET", "/download/big.bin", Authorization=f"Bearer {token}")
        assert (status, body == data) == (200, True)
    # nginx spread the requests over both instances.
    used = {upstream for _, _, _, upstream in proxy.served()}
    assert used == {f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"}, proxy.served()
    # Both instances saw the client's own address (X-Forwarded-For from the trusted proxy).
    with server_database(a) as db:
        rows = db.execute(
            "SELECT address FROM audit WHERE actor = ? AND action = 'login'", (name,)
        ).fetchall()
    assert [tuple(r) for r in rows] == [(CLIENT_ADDRESS,)]


def test_a_tus_upload_is_resumed_through_the_proxy_on_the_other_instance_after_a_kill(
    setup: tuple[Server, Server, Balancer],
) -> None:
    a, b, proxy = setup
    _, token = a.new_user()
    auth = {"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0"}
    data = os.urandom(3 * MiB + 5)
    meta = "filename " + base64.b64encode(b"tus.bin").decode()
    status, headers, _ = proxy.request(
        "POST", "/tus", b"", {**auth, "Upload-Length": str(len(data)), "Upload-Metadata": meta}
    )
    assert status == 201
    path = headers["Location"].split(str(proxy.port), 1)[1]
    half = len(data) // 2
    patch = {**auth, "Content-Type": "application/offset+octet-stream"}
    status, _, _ = proxy.request("PATCH", path, data[:half], {**patch, "Upload-Offset": "0"})
    assert status == 204
    first = proxy.served()[-1][3]  # the instance that took the first half
    killed, other = (a, b) if first == f"127.0.0.1:{a.port}" else (b, a)
    assert first == f"127.0.0.1:{killed.port}"
    killed.stop(signal.SIGKILL)
    status, headers, _ = proxy.request("HEAD", path, None, auth)
    assert (status, headers["Upload-Offset"]) == (200, str(half))
    status, _, _ = proxy.request("PATCH", path, data[half:], {**patch, "Upload-Offset": str(half)})
    assert status == 204
    assert proxy.served()[-1][3].endswith(f"127.0.0.1:{other.port}")  # resumed on the other
    status, _, body = proxy.request("GET", "/download/tus.bin", None, {"Authorization": f"Bearer {token}"})
    assert (status, body == data) == (200, True)
