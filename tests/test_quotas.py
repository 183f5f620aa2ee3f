"""Quotas and per-user limits: enforced before and while streaming, nothing stored past them."""

import base64
import concurrent.futures
import http.client
from collections.abc import Iterator

import pytest

from tests.server import Server

QUOTA = 3_000_000


@pytest.fixture(scope="module")
def quota_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("quota"), env={"VAULT_USER_QUOTA": str(QUOTA)}).start()
    yield srv
    srv.stop()


def me(server: Server, token: str) -> dict[str, object]:
    resp = server.request("GET", "/me", token=token)
    assert resp.status == 200, resp.body
    body: dict[str, object] = resp.json()
    return body


def chunked_put(server: Server, token: str, name: str, data: bytes) -> tuple[int, bytes]:
    conn = server.connection()
    try:
        chunks = (data[i : i + 65536] for i in range(0, len(data), 65536))
        conn.request(
            "PUT",
            f"/upload/{name}",
            body=chunks,
            headers={"Authorization": f"Bearer {token}"},
            encode_chunked=True,
        )
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (ConnectionError, http.client.HTTPException):
        return 0, b""
    finally:
        conn.close()


def test_me_reports_usage_and_limits(quota_server: Server) -> None:
    name, token = quota_server.new_user()
    assert me(quota_server, token) == {
        "username": name,
        "files": 0,
        "usage": 0,
        "stored": 0,
        "quota": QUOTA,
        "max_file_size": 64 * 1024**3,
    }
    assert quota_server.put_file(token, "a.bin", b"x" * 1000).status == 201
    assert me(quota_server, token)["usage"] == 1000
    assert me(quota_server, token)["stored"] == 16 + 1008 + 32  # IV, padded ciphertext, MAC
    assert me(quota_server, token)["files"] == 1


def test_me_without_token_is_401(quota_server: Server) -> None:
    assert quota_server.request("GET", "/me").status == 401


def test_declared_upload_over_the_quota_is_refused_before_its_body(quota_server: Server) -> None:
    _, token = quota_server.new_user()
    conn = quota_server.connection()
    try:
        conn.putrequest("PUT", "/upload/big.bin")
        conn.putheader("Authorization", f"Bearer {token}")
        conn.putheader("Content-Length", str(QUOTA + 1))
        conn.endheaders()  # no body is ever sent: the answer must come anyway
        resp = conn.getresponse()
        assert resp.status == 413
        assert b"Quota exceeded" in resp.read()
    finally:
        conn.close()
    assert me(quota_server, token)["usage"] == 0


def test_chunked_upload_growing_past_the_quota_stores_nothing(quota_server: Server) -> None:
    _, token = quota_server.new_user()
    assert quota_server.put_file(token, "first.bin", b"a" * 2_000_000).status == 201
    status, body = chunked_put(quota_server, token, "second.bin", b"b" * 2_000_000)
    assert status in (413, 0)
    if status:
        assert b"Quota exceeded" in body
    assert me(quota_server, token)["usage"] == 2_000_000
    listing = quota_server.request("GET", "/files", token=token).json()["files"]
    assert [f["filename"] for f in listing] == ["first.bin"]


@pytest.mark.parametrize("over", [0, 1, 65536])
def test_chunked_upload_whose_last_chunk_crosses_the_quota_stores_nothing(
    quota_server: Server, over: int
) -> None:
    """The streaming check counts the chunk it is looking at: a body of no declared length
    that ends one byte (or one chunk) past the quota is refused, not stored; one that ends
    exactly at the quota is stored."""
    _, token = quota_server.new_user()
    status, body = chunked_put(quota_server, token, "edge.bin", b"e" * (QUOTA + over))
    listing = quota_server.request("GET", "/files", token=token).json()["files"]
    if over == 0:
        assert status == 201, body
        assert [f["filename"] for f in listing] == ["edge.bin"]
        assert me(quota_server, token)["usage"] == QUOTA
        return
    assert status == 413, body
    assert b"Quota exceeded" in body
    assert listing == []
    assert me(quota_server, token)["usage"] == 0


def test_upload_exactly_filling_the_quota_is_accepted_and_one_more_byte_is_not(quota_server: Server) -> None:
    _, token = quota_server.new_user()
    assert quota_server.put_file(token, "fill.bin", b"f" * QUOTA).status == 201
    resp = quota_server.put_file(token, "more.bin", b"!")
    assert resp.status == 413, resp.body
    assert me(quota_server, token)["usage"] == QUOTA


def test_resumable_upload_longer_than_the_room_left_is_413(quota_server: Server) -> None:
    _, token = quota_server.new_user()
    resp = quota_server.request(
        "POST",
        "/tus",
        headers={
            "Tus-Resumable": "1.0.0",
            "Upload-Length": str(QUOTA + 1),
            "Upload-Metadata": "filename " + base64.b64encode(b"t.bin").decode(),
        },
        token=token,
    )
    assert resp.status == 413
    assert resp.json()["message"].startswith("Quota exceeded")


def test_parallel_resumable_creations_over_https_never_exceed_the_quota(quota_server: Server) -> None:
    _, token = quota_server.new_user()

    def create(number: int) -> int:
        return quota_server.request(
            "POST",
            "/tus",
            headers={
                "Tus-Resumable": "1.0.0",
                "Upload-Length": str(QUOTA // 3),
                "Upload-Metadata": "filename " + base64.b64encode(f"p{number}.bin".encode()).decode(),
            },
            token=token,
        ).status

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(create, range(12)))
    assert sorted(statuses) == [201] * 3 + [413] * 9
    assert me(quota_server, token)["usage"] == 3 * (QUOTA // 3)


def test_admin_overrides_a_users_limits_and_none_restores_the_default(quota_server: Server) -> None:
    name, token = quota_server.new_user()
    done = quota_server.admin("set-limits", name, "--max-file-size", "1000", "--quota", "10M")
    assert done.returncode == 0, done.stderr
    assert b"quota 10.0 MiB;" in done.stdout and b"max file size 1000 B\n" in done.stdout
    assert me(quota_server, token)["max_file_size"] == 1000
    assert me(quota_server, token)["quota"] == 10 * 1024**2
    assert quota_server.put_file(token, "ok.bin", b"o" * 1000).status == 201
    resp = quota_server.put_file(token, "big.bin", b"o" * 1001)
    assert resp.status == 413 and resp.json()["message"] == "File too large: the limit is 1000 bytes"
    assert quota_server.admin("set-limits", name, "--max-file-size", "none").returncode == 0
    assert me(quota_server, token)["max_file_size"] == 64 * 1024**3
    assert me(quota_server, token)["quota"] == 10 * 1024**2  # untouched: only named options change


def test_admin_for_an_unknown_user_fails_clearly(quota_server: Server) -> None:
    done = quota_server.admin("show", "nobody-here")
    assert done.returncode == 1
    assert b"no user 'nobody-here'" in done.stderr


def test_admin_rejects_a_malformed_size(quota_server: Server) -> None:
    name, _ = quota_server.new_user()
    done = quota_server.admin("set-limits", name, "--quota", "lots")
    assert done.returncode == 2
    assert b"not a size" in done.stderr
