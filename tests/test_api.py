"""Black-box tests of the HTTP API over real HTTPS: every endpoint, bad input, auth and limits.

Every error is asserted as status and JSON body together; every refused upload is followed by a
check that nothing was stored (neither a listed file nor a STAGED row or a stray segment).
"""

import base64
import hashlib
import http.client
import json
import random
import re
import ssl
import time
import unicodedata
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, unquote

import jwt
import pytest

from tests.dbedit import server_database
from tests.server import Response, Server

S = 1024 * 1024  # the default segment size
SMALL_LIMIT = 100_000  # VAULT_MAX_FILE_SIZE of the limited server
STAGED, LIVE, DELETED = 0, 1, 2
PASSWORD = "correct horse battery"
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
BOUNDARY = "vault-test-boundary-7MA4YWxkTrZu0gW"

# --------------------------------------------------------------------------- helpers


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload(size: int) -> bytes:
    return random.Random(size).randbytes(size)


def quoted(name: str) -> str:
    return quote(name, safe="")


def assert_error(resp: Response, status: int, message: str | None = None, prefix: str | None = None) -> str:
    """The one error shape: ``{"message": ..., "status": ...}`` as JSON, with the given status."""
    assert resp.status == status, (resp.status, resp.body)
    assert resp.headers.get("Content-Type", "").startswith("application/json"), resp.headers
    body = resp.json()
    assert set(body) == {"message", "status"}, body
    assert body["status"] == status
    assert isinstance(body["message"], str) and body["message"]
    if message is not None:
        assert body["message"] == message
    if prefix is not None:
        assert body["message"].startswith(prefix), body["message"]
    return str(body["message"])


def assert_uploaded(resp: Response, name: str, data: bytes) -> dict[str, Any]:
    assert resp.status == 201, (resp.status, resp.body)
    body = resp.json()
    assert body == {
        "message": "File uploaded successfully",
        "filename": name,
        "size": len(data),
        "sha256": sha256(data),
        "created": body.get("created"),
    }
    assert ISO_UTC.fullmatch(body["created"]), body["created"]
    return dict(body)


def multipart(
    parts: list[tuple[str, str | None, bytes]], boundary: str = BOUNDARY
) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body of (field name, filename or None, data) parts, and its headers."""
    out = bytearray()
    for field, filename, data in parts:
        disposition = f'form-data; name="{field}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        out += b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def post_file(server: Server, token: str, name: str, data: bytes) -> Response:
    body, headers = multipart([("file", name, data)])
    return server.request("POST", "/upload", body, headers=headers, token=token)


def send(
    server: Server, method: str, path: str, body: bytes, headers: dict[str, str], token: str | None = None
) -> Response:
    """Send a whole request even if the server answers early; the answer may then arrive first."""
    conn = server.connection(timeout=20)
    try:
        if token is not None:
            headers = {**headers, "Authorization": f"Bearer {token}"}
        conn.putrequest(method, path, skip_accept_encoding=True)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            conn.putheader(key, value)
        conn.endheaders()
        try:
            conn.send(body)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # the server answered and closed without reading the body: read that answer
        resp = conn.getresponse()
        return Response(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def listing(server: Server, token: str) -> list[dict[str, Any]]:
    resp = server.request("GET", "/files", token=token)
    assert resp.status == 200, resp.body
    body = resp.json()
    assert set(body) == {"files"}
    return list(body["files"])


def send_headers_only(server: Server, method: str, path: str, headers: dict[str, str]) -> Response:
    """Send a request's headers (typically announcing a large body) and no body; read the reply."""
    conn = server.connection(timeout=20)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for key, value in headers.items():
            conn.putheader(key, value)
        conn.endheaders()
        resp = conn.getresponse()
        return Response(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def query(server: Server, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    """Read the server's database read-only, beside the running server."""
    with server_database(server, read_only=True) as db:
        return [tuple(row) for row in db.execute(sql, params).fetchall()]


def user_id(server: Server, username: str) -> int:
    rows = query(server, "SELECT id FROM users WHERE username = ?", (username,))
    assert len(rows) == 1, rows
    return int(rows[0][0])


def leftovers(server: Server, owner: int) -> tuple[int, int]:
    """(STAGED file rows of ``owner``, segments that belong to no file or to a non-LIVE file of
    ``owner``). Both are 0 once every failed or abandoned upload of that user has been cleaned up."""
    (staged,) = query(server, "SELECT COUNT(*) FROM files WHERE owner = ? AND state = ?", (owner, STAGED))[0]
    (orphans,) = query(
        server,
        "SELECT COUNT(*) FROM segments s LEFT JOIN files f ON f.file_id = s.file_id"
        " WHERE f.file_id IS NULL OR (f.owner = ? AND f.state != ?)",
        (owner, LIVE),
    )[0]
    return int(staged), int(orphans)


def wait_until_clean(server: Server, owner: int, timeout: float = 10.0) -> None:
    """Poll until the owner has no STAGED rows and no orphan segments (clean-up is asynchronous)."""
    deadline = time.monotonic() + timeout
    while (found := leftovers(server, owner)) != (0, 0):
        if time.monotonic() > deadline:
            raise AssertionError(f"still (staged rows, orphan segments) = {found} after {timeout} s")
        time.sleep(0.1)


def assert_nothing_stored(server: Server, username: str, token: str) -> None:
    assert listing(server, token) == []
    wait_until_clean(server, user_id(server, username))


_PARAM = re.compile(r';\s*([\w*]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)')


def disposition_name(value: str) -> tuple[str, str]:
    """(the name a client should save as, the ASCII fallback) from an attachment Content-Disposition."""
    kind, _, rest = value.partition(";")
    assert kind == "attachment", value
    params: dict[str, str] = {}
    for key, raw in _PARAM.findall(";" + rest):
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[key.lower()] = raw
    fallback = params["filename"]
    assert fallback.isascii() and fallback, value
    extended = params.get("filename*")
    if extended is None:
        return fallback, fallback
    charset, _, encoded = extended.partition("''")
    assert charset.upper() == "UTF-8", value
    return unquote(encoded, errors="strict"), fallback


def jwt_secret(server: Server) -> bytes:
    return base64.b64decode((server.data_dir / "jwt.secret").read_text())


def claims_of(server: Server, token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, jwt_secret(server), algorithms=["HS256"], audience="vault"))


def b64url(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of this module's own with VAULT_MAX_FILE_SIZE=100000."""
    srv = Server(tmp_path_factory.mktemp("limited"), env={"VAULT_MAX_FILE_SIZE": str(SMALL_LIMIT)})
    srv.start()
    yield srv
    srv.stop()


# --------------------------------------------------------------------------- health, unknown routes


def test_health_answers_without_auth(server: Server) -> None:
    resp = server.request("GET", "/health")
    assert resp.status == 200
    assert resp.json() == {"status": "ok"}


@pytest.mark.parametrize("path", ["/nope", "/download", "/files/", "/register/x"])
def test_unknown_route_is_json_404(server: Server, path: str) -> None:
    assert_error(server.request("GET", path), 404, "Not found")


def test_put_without_a_file_name_says_the_name_is_missing(server: Server, token: str) -> None:
    """``curl -T - https://host/upload/`` (stdin) has no name to append: say so, not 404."""
    resp = server.request("PUT", "/upload/", b"data", token=token)
    assert_error(resp, 400, "Invalid filename: a non-empty file name is required")
    assert_error(server.request("GET", "/upload/", token=token), 405, "Method not allowed")


@pytest.mark.parametrize(("method", "path"), [("DELETE", "/health"), ("POST", "/files"), ("GET", "/login")])
def test_unsupported_method_is_json_405(server: Server, token: str, method: str, path: str) -> None:
    assert_error(server.request(method, path, token=token), 405, "Method not allowed")


# --------------------------------------------------------------------------- register


def test_register_creates_user_that_can_log_in(server: Server) -> None:
    name = "Reg_" + uuid.uuid4().hex[:8]
    resp = server.request("POST", "/register", {"username": name, "password": PASSWORD})
    assert resp.status == 201
    assert resp.json() == {"message": "User registered successfully"}
    resp = server.request("POST", "/login", {"username": name, "password": PASSWORD})
    assert resp.status == 200


def test_register_duplicate_name_is_409(server: Server, user: tuple[str, str]) -> None:
    resp = server.request("POST", "/register", {"username": user[0], "password": "another password"})
    assert_error(resp, 409, "Username already exists")


def test_register_duplicate_differing_only_in_case_is_409(server: Server) -> None:
    name = "Alice" + uuid.uuid4().hex[:8]
    assert server.request("POST", "/register", {"username": name, "password": PASSWORD}).status == 201
    resp = server.request("POST", "/register", {"username": name.lower(), "password": PASSWORD})
    assert_error(resp, 409, "Username already exists")
    resp = server.request("POST", "/register", {"username": name.upper(), "password": PASSWORD})
    assert_error(resp, 409, "Username already exists")


@pytest.mark.parametrize("endpoint", ["/register", "/login"])
@pytest.mark.parametrize(
    ("body", "prefix"),
    [
        ("{", "Malformed JSON"),
        ('{"username": "abc", "password": ', "Malformed JSON"),
        ("", "Malformed JSON"),
        (b"\xff\xfe{}", "Malformed JSON"),
        ("[]", None),
        ('["username", "password"]', None),
        ('"just a string"', None),
        ("42", None),
        ("null", None),
        ("[" * 30_000 + "]" * 30_000, None),
        ('{"a": ' * 8_000 + "1" + "}" * 8_000, None),
    ],
    ids=[
        "unclosed",
        "truncated",
        "empty",
        "not-utf8",
        "empty-list",
        "list",
        "string",
        "number",
        "null",
        "deeply-nested-list",
        "deeply-nested-object",
    ],
)
def test_body_that_is_not_a_json_object_is_400(
    server: Server, endpoint: str, body: str | bytes, prefix: str | None
) -> None:
    resp = server.request("POST", endpoint, body, headers={"Content-Type": "application/json"})
    message = assert_error(resp, 400, prefix=prefix)
    assert "JSON" in message


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "username"),
        ({"password": PASSWORD}, "username"),
        ({"username": "validname1"}, "password"),
        ({"username": "", "password": PASSWORD}, "username"),
        ({"username": "validname1", "password": ""}, "password"),
        ({"username": 12345, "password": PASSWORD}, "username"),
        ({"username": None, "password": PASSWORD}, "username"),
        ({"username": ["validname1"], "password": PASSWORD}, "username"),
        ({"username": {"a": 1}, "password": PASSWORD}, "username"),
        ({"username": True, "password": PASSWORD}, "username"),
        ({"username": "validname1", "password": 12345678}, "password"),
        ({"username": "validname1", "password": None}, "password"),
        ({"username": "validname1", "password": ["correct horse"]}, "password"),
    ],
)
def test_register_missing_empty_or_non_string_field_is_400(
    server: Server, body: dict[str, Any], field: str
) -> None:
    message = assert_error(server.request("POST", "/register", body), 400)
    assert f"'{field}'" in message


@pytest.mark.parametrize(
    "username",
    [
        "ab",
        "a" * 33,
        "-abc",
        "_abc",
        ".abc",
        "has space",
        "jürgen",
        "a/b/c",
        "../etc",
        "abc\x00",
        "abc\n",
        "ab@c",
    ],
)
def test_register_bad_username_is_400(server: Server, username: str) -> None:
    resp = server.request("POST", "/register", {"username": username, "password": PASSWORD})
    message = assert_error(resp, 400)
    assert "'username'" in message


def test_register_username_of_32_chars_is_accepted(server: Server) -> None:
    name = "u" + uuid.uuid4().hex[:31]
    assert len(name) == 32
    resp = server.request("POST", "/register", {"username": name, "password": PASSWORD})
    assert resp.status == 201, resp.body


def test_register_password_with_nul_is_400(server: Server) -> None:
    name = "u" + uuid.uuid4().hex[:12]
    resp = server.request("POST", "/register", {"username": name, "password": "correct\x00horse"})
    assert "'password'" in assert_error(resp, 400)


@pytest.mark.parametrize("password", ["", "1234567", "short"])
def test_register_short_password_is_400(server: Server, password: str) -> None:
    name = "u" + uuid.uuid4().hex[:12]
    message = assert_error(server.request("POST", "/register", {"username": name, "password": password}), 400)
    assert "'password'" in message
    assert_error(server.request("POST", "/login", {"username": name, "password": PASSWORD}), 401)


def test_register_password_of_8_chars_is_accepted(server: Server) -> None:
    name = "u" + uuid.uuid4().hex[:12]
    assert server.request("POST", "/register", {"username": name, "password": "12345678"}).status == 201


def test_password_of_72_utf8_bytes_is_accepted_and_logs_in(server: Server) -> None:
    name, password = "u" + uuid.uuid4().hex[:12], "é" * 36
    assert len(password.encode()) == 72
    resp = server.request("POST", "/register", {"username": name, "password": password})
    assert resp.status == 201, resp.body
    assert server.request("POST", "/login", {"username": name, "password": password}).status == 200
    # bcrypt looks at 72 bytes at most: a 73rd byte must not log in as the same password
    longer = {"username": name, "password": password + "x"}
    assert_error(server.request("POST", "/login", longer), 401, "Invalid username or password")


@pytest.mark.parametrize(
    "password", ["é" * 36 + "x", "a" * 73, "€" * 25], ids=["73-bytes", "73-ascii", "75-bytes"]
)
def test_register_password_over_72_utf8_bytes_is_400(server: Server, password: str) -> None:
    assert len(password.encode()) > 72
    name = "u" + uuid.uuid4().hex[:12]
    resp = server.request("POST", "/register", {"username": name, "password": password})
    message = assert_error(resp, 400)
    assert "'password'" in message and "72" in message


@pytest.mark.parametrize("endpoint", ["/register", "/login"])
def test_json_body_over_max_json_size_is_413(server: Server, endpoint: str) -> None:
    big = json.dumps({"username": "someone", "password": PASSWORD, "pad": "x" * 70_000}).encode()
    resp = send(server, "POST", endpoint, big, {"Content-Type": "application/json"})
    assert_error(resp, 413, prefix="Request body too large")


@pytest.mark.parametrize("endpoint", ["/register", "/login"])
def test_json_body_over_max_json_size_is_refused_before_it_is_read(server: Server, endpoint: str) -> None:
    headers = {"Content-Type": "application/json", "Content-Length": str(50 * S)}
    resp = send_headers_only(server, "POST", endpoint, headers)
    assert_error(resp, 413, prefix="Request body too large")


# --------------------------------------------------------------------------- login


def test_login_returns_a_bearer_token(server: Server, user: tuple[str, str]) -> None:
    resp = server.request("POST", "/login", {"username": user[0], "password": PASSWORD})
    assert resp.status == 200
    body = resp.json()
    assert set(body) == {"token", "expires_in", "refresh_token", "refresh_expires_in"}
    assert isinstance(body["token"], str) and body["token"].count(".") == 2
    assert body["expires_in"] == 900
    assert isinstance(body["refresh_token"], str) and body["refresh_token"].count(".") == 0
    assert body["refresh_expires_in"] == 30 * 86400
    claims = claims_of(server, body["token"])
    assert claims["name"] == user[0]
    assert claims["exp"] - claims["iat"] == 900


def test_login_unknown_user_and_wrong_password_are_indistinguishable(
    server: Server, user: tuple[str, str]
) -> None:
    unknown = server.request(
        "POST", "/login", {"username": "nobody" + uuid.uuid4().hex[:8], "password": PASSWORD}
    )
    assert_error(unknown, 401, "Invalid username or password")
    for attempt in [
        {"username": user[0], "password": PASSWORD + "!"},  # wrong password
        {"username": user[0], "password": "short"},  # a password register would refuse
        {"username": "no", "password": PASSWORD},  # a name register would refuse
        {"username": user[0], "password": "x" * 100},  # over 72 bytes
    ]:
        resp = server.request("POST", "/login", attempt)
        assert (resp.status, resp.body) == (unknown.status, unknown.body), attempt
        assert resp.headers.get("WWW-Authenticate") == unknown.headers.get("WWW-Authenticate")


def test_login_name_is_case_insensitive(server: Server) -> None:
    name = "Carol" + uuid.uuid4().hex[:8]
    assert server.request("POST", "/register", {"username": name, "password": PASSWORD}).status == 201
    resp = server.request("POST", "/login", {"username": name.lower(), "password": PASSWORD})
    assert resp.status == 200, resp.body
    assert server.request("GET", "/files", token=resp.json()["token"]).status == 200


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"username": "abc"},
        {"password": PASSWORD},
        {"username": "", "password": ""},
        {"username": 1, "password": 2},
    ],
)
def test_login_missing_or_non_string_fields_is_400(server: Server, body: dict[str, Any]) -> None:
    assert_error(server.request("POST", "/login", body), 400)


# --------------------------------------------------------------------------- auth on protected endpoints


def _protected_request(server: Server, endpoint: str, headers: dict[str, str]) -> Response:
    if endpoint == "POST /upload":
        body, extra = multipart([("file", "auth.txt", b"secret data")])
        return server.request("POST", "/upload", body, headers={**headers, **extra})
    if endpoint == "PUT /upload":
        return server.request("PUT", "/upload/auth.txt", b"secret data", headers=headers)
    if endpoint == "GET /download":
        return server.request("GET", "/download/auth.txt", headers=headers)
    if endpoint == "HEAD /download":
        return server.request("HEAD", "/download/auth.txt", headers=headers)
    if endpoint == "GET /files":
        return server.request("GET", "/files", headers=headers)
    assert endpoint == "DELETE /files"
    return server.request("DELETE", "/files/auth.txt", headers=headers)


PROTECTED = ["POST /upload", "PUT /upload", "GET /download", "GET /files", "DELETE /files"]
MISSING = "Authentication required: send Authorization: Bearer <token>"


def _forged_tokens(server: Server, token: str) -> dict[str, tuple[str, str]]:
    """Authorization values that must all be refused, with the message each must get."""
    real = claims_of(server, token)
    secret = jwt_secret(server)
    now = int(time.time())
    none_header = b64url({"alg": "none", "typ": "JWT"})
    return {
        "no-header": ("", MISSING),
        "bearer-empty": ("Bearer ", MISSING),
        "bearer-alone": ("Bearer", MISSING),
        "basic": ("Basic " + base64.b64encode(b"alice:correct horse").decode(), MISSING),
        "token-without-scheme": (token, MISSING),
        "garbage": ("Bearer not.a.jwt", "Invalid token"),
        "garbage-base64": ("Bearer " + base64.b64encode(b"x" * 60).decode(), "Invalid token"),
        "other-key": ("Bearer " + jwt.encode(real, b"k" * 32, algorithm="HS256"), "Invalid token"),
        "alg-none": (f"Bearer {none_header}.{b64url(real)}.", "Invalid token"),
        "alg-none-with-signature": (
            f"Bearer {none_header}.{b64url(real)}.{token.split('.')[2]}",
            "Invalid token",
        ),
        "other-audience": (
            "Bearer " + jwt.encode({**real, "aud": "other"}, secret, algorithm="HS256"),
            "Invalid token",
        ),
        "other-issuer": (
            "Bearer " + jwt.encode({**real, "iss": "other"}, secret, algorithm="HS256"),
            "Invalid token",
        ),
        "tampered-payload": (
            "Bearer " + ".".join([token.split(".")[0], b64url({**real, "sub": "1"}), token.split(".")[2]]),
            "Invalid token",
        ),
        "expired": (
            "Bearer " + jwt.encode({**real, "iat": now - 7200, "exp": now - 3600}, secret, algorithm="HS256"),
            "Token expired: log in again",
        ),
    }


FORGERIES = [
    "no-header",
    "bearer-empty",
    "bearer-alone",
    "basic",
    "token-without-scheme",
    "garbage",
    "garbage-base64",
    "other-key",
    "alg-none",
    "alg-none-with-signature",
    "other-audience",
    "other-issuer",
    "tampered-payload",
    "expired",
]


@pytest.mark.parametrize("endpoint", PROTECTED)
@pytest.mark.parametrize("kind", FORGERIES)
def test_protected_endpoint_refuses_missing_or_bad_token_with_401(
    server: Server, user: tuple[str, str], endpoint: str, kind: str
) -> None:
    # the victim owns auth.txt, so a wrongly accepted token would have something to reach
    assert server.put_file(user[1], "auth.txt", b"owner data").status == 201
    value, message = _forged_tokens(server, user[1])[kind]
    resp = _protected_request(server, endpoint, {"Authorization": value} if value else {})
    assert_error(resp, 401, message)
    assert resp.headers.get("WWW-Authenticate", "").startswith("Bearer"), resp.headers
    assert b"owner data" not in resp.body
    files = listing(server, user[1])
    assert [(f["filename"], f["sha256"]) for f in files] == [("auth.txt", sha256(b"owner data"))]


def test_expired_token_tells_the_user_to_log_in_again(server: Server, user: tuple[str, str]) -> None:
    value, _ = _forged_tokens(server, user[1])["expired"]
    resp = server.request("GET", "/files", headers={"Authorization": value})
    message = assert_error(resp, 401)
    assert "log in again" in message.lower()
    assert 'error="invalid_token"' in resp.headers.get("WWW-Authenticate", "")


def test_token_signed_by_the_test_with_the_server_secret_is_accepted(
    server: Server, user: tuple[str, str]
) -> None:
    """Control for the forgery tests: the test's own signing is right, so their 401s are meaningful."""
    real = claims_of(server, user[1])
    now = int(time.time())
    resigned = jwt.encode({**real, "iat": now, "exp": now + 600}, jwt_secret(server), algorithm="HS256")
    resp = server.request("GET", "/files", token=resigned)
    assert resp.status == 200, resp.body


def test_bearer_scheme_is_case_insensitive(server: Server, token: str) -> None:
    resp = server.request("GET", "/files", headers={"Authorization": f"bearer {token}"})
    assert resp.status == 200, resp.body


def test_head_download_without_token_is_401(server: Server) -> None:
    resp = server.request("HEAD", "/download/auth.txt")
    assert resp.status == 401
    assert resp.body == b""
    assert resp.headers.get("WWW-Authenticate", "").startswith("Bearer")


@pytest.mark.parametrize(
    ("method", "path", "content_type"),
    [
        ("PUT", "/upload/big.bin", "application/octet-stream"),
        ("POST", "/upload", f"multipart/form-data; boundary={BOUNDARY}"),
    ],
)
def test_upload_without_token_is_refused_before_its_body_is_read(
    server: Server, method: str, path: str, content_type: str
) -> None:
    headers = {"Content-Type": content_type, "Content-Length": str(1024 * S)}
    resp = send_headers_only(server, method, path, headers)
    assert_error(resp, 401, MISSING)
    assert resp.headers.get("WWW-Authenticate", "").startswith("Bearer")


@pytest.mark.parametrize("content_type", ["application/json", "multipart/form-data", ""])
def test_multipart_upload_without_token_is_401_whatever_the_content_type(
    server: Server, content_type: str
) -> None:
    """Authentication comes first: an anonymous caller learns nothing about the body's format."""
    headers = {"Content-Type": content_type} if content_type else {}
    resp = send(server, "POST", "/upload", b"{}", headers)
    assert_error(resp, 401, MISSING)


# --------------------------------------------------------------------------- upload, download, list, delete


def test_put_upload_download_list_delete_round_trip(server: Server, token: str) -> None:
    data = b"hello vault\n" * 1000
    uploaded = assert_uploaded(server.put_file(token, "hello.txt", data), "hello.txt", data)

    resp = server.request("GET", "/download/hello.txt", token=token)
    assert resp.status == 200
    assert resp.body == data
    assert resp.headers["Content-Length"] == str(len(data))
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert resp.headers["Content-Disposition"] == 'attachment; filename="hello.txt"'
    assert re.fullmatch(r'"[^"]+"', resp.headers["ETag"]), resp.headers["ETag"]

    entry = {k: uploaded[k] for k in ("filename", "size", "sha256", "created")}
    assert listing(server, token) == [entry]

    resp = server.request("DELETE", "/files/hello.txt", token=token)
    assert resp.status == 200
    assert resp.json() == {"message": "File deleted", "filename": "hello.txt"}
    assert listing(server, token) == []
    assert_error(server.request("GET", "/download/hello.txt", token=token), 404, "File not found")
    assert_error(server.request("DELETE", "/files/hello.txt", token=token), 404, "File not found")


def test_multipart_upload_round_trip(server: Server, token: str) -> None:
    data = payload(5000)
    assert_uploaded(post_file(server, token, "photo.jpg", data), "photo.jpg", data)
    resp = server.request("GET", "/download/photo.jpg", token=token)
    assert resp.status == 200
    assert resp.body == data
    assert resp.headers["Content-Type"] == "image/jpeg"


def test_multipart_upload_ignores_other_fields_around_the_file(server: Server, token: str) -> None:
    data = payload(3000)
    body, headers = multipart([("note", None, b"before"), ("file", "x.bin", data), ("after", None, b"--")])
    resp = server.request("POST", "/upload", body, headers=headers, token=token)
    assert_uploaded(resp, "x.bin", data)
    assert server.request("GET", "/download/x.bin", token=token).body == data


def test_listing_shows_every_file_of_the_user_and_only_those(server: Server, token: str) -> None:
    names = ["b.txt", "a.txt", "c.bin"]
    for name in names:
        assert server.put_file(token, name, name.encode()).status == 201
    files = listing(server, token)
    assert sorted(f["filename"] for f in files) == sorted(names)
    for f in files:
        assert f["size"] == len(f["filename"])
        assert f["sha256"] == sha256(f["filename"].encode())
        assert ISO_UTC.fullmatch(f["created"])


def test_download_of_missing_file_is_404(server: Server, token: str) -> None:
    assert_error(server.request("GET", "/download/never-uploaded.txt", token=token), 404, "File not found")


def test_delete_of_missing_file_is_404(server: Server, token: str) -> None:
    assert_error(server.request("DELETE", "/files/never-uploaded.txt", token=token), 404, "File not found")


def test_download_etag_stays_for_the_same_file_and_changes_on_replacement(server: Server, token: str) -> None:
    assert server.put_file(token, "e.txt", b"one").status == 201
    first = server.request("GET", "/download/e.txt", token=token).headers["ETag"]
    assert server.request("GET", "/download/e.txt", token=token).headers["ETag"] == first
    assert server.put_file(token, "e.txt", b"one").status == 201
    assert server.request("GET", "/download/e.txt", token=token).headers["ETag"] != first


# --------------------------------------------------------------------------- isolation


def test_other_users_file_is_invisible_like_a_missing_one(server: Server) -> None:
    _, alice = server.new_user()
    _, bob = server.new_user()
    secret = b"alice's secret\n" * 100
    assert server.put_file(alice, "diary.txt", secret).status == 201

    theirs = server.request("GET", "/download/diary.txt", token=bob)
    missing = server.request("GET", "/download/no-such-diary.txt", token=bob)
    assert_error(theirs, 404, "File not found")
    assert (theirs.status, theirs.body) == (missing.status, missing.body)
    assert sorted(k for k in theirs.headers if k != "Date") == sorted(
        k for k in missing.headers if k != "Date"
    )

    theirs = server.request("HEAD", "/download/diary.txt", token=bob)
    missing = server.request("HEAD", "/download/no-such-diary.txt", token=bob)
    assert (theirs.status, theirs.body) == (missing.status, missing.body) == (404, b"")

    theirs = server.request("DELETE", "/files/diary.txt", token=bob)
    missing = server.request("DELETE", "/files/no-such-diary.txt", token=bob)
    assert_error(theirs, 404, "File not found")
    assert (theirs.status, theirs.body) == (missing.status, missing.body)

    assert listing(server, bob) == []
    assert [f["filename"] for f in listing(server, alice)] == ["diary.txt"]
    assert server.request("GET", "/download/diary.txt", token=alice).body == secret


def test_same_name_for_two_users_keeps_two_files(server: Server) -> None:
    _, alice = server.new_user()
    _, bob = server.new_user()
    assert server.put_file(alice, "notes.txt", b"alice").status == 201
    assert server.put_file(bob, "notes.txt", b"bob").status == 201
    assert server.request("GET", "/download/notes.txt", token=alice).body == b"alice"
    assert server.request("GET", "/download/notes.txt", token=bob).body == b"bob"
    assert server.request("DELETE", "/files/notes.txt", token=bob).status == 200
    assert server.request("GET", "/download/notes.txt", token=alice).body == b"alice"


# --------------------------------------------------------------------------- replacement


@pytest.mark.parametrize("second", ["put", "multipart"])
def test_upload_of_same_name_replaces_the_file(server: Server, user: tuple[str, str], second: str) -> None:
    username, token = user
    old, new = payload(S + 10), payload(2000)
    assert server.put_file(token, "report.pdf", old).status == 201
    if second == "put":
        resp = server.put_file(token, "report.pdf", new)
    else:
        resp = post_file(server, token, "report.pdf", new)
    assert_uploaded(resp, "report.pdf", new)

    files = listing(server, token)
    assert [(f["filename"], f["size"], f["sha256"]) for f in files] == [("report.pdf", len(new), sha256(new))]
    assert server.request("GET", "/download/report.pdf", token=token).body == new

    # the old version is gone from the database too: one row, LIVE, holding the new content
    owner = user_id(server, username)
    deadline = time.monotonic() + 10
    while True:
        rows = query(server, "SELECT state, size FROM files WHERE owner = ?", (owner,))
        if rows == [(LIVE, len(new))] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert rows == [(LIVE, len(new))]
    wait_until_clean(server, owner)


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["résumé 2026.pdf", "日本語.txt", "emoji 🎉.bin", "naïve café.txt"])
def test_non_ascii_name_round_trips_with_rfc6266_disposition(server: Server, token: str, name: str) -> None:
    data = name.encode() * 100
    assert_uploaded(server.put_file(token, name, data), name, data)
    assert [f["filename"] for f in listing(server, token)] == [name]

    resp = server.request("GET", "/download/" + quoted(name), token=token)
    assert resp.status == 200
    assert resp.body == data
    disposition = resp.headers["Content-Disposition"]
    assert "filename*=UTF-8''" in disposition
    saved, fallback = disposition_name(disposition)
    assert saved == name
    assert not set(fallback) & set('/\\"%')


@pytest.mark.parametrize(
    "name", ['say "hi".txt', "100%.txt", "semi;colon, comma.txt", "c++ notes.txt", "a?b#c&d=e.txt"]
)
def test_name_with_http_special_characters_round_trips(server: Server, token: str, name: str) -> None:
    data = name.encode()
    assert_uploaded(server.put_file(token, name, data), name, data)
    resp = server.request("GET", "/download/" + quoted(name), token=token)
    assert resp.status == 200
    assert resp.body == data
    assert disposition_name(resp.headers["Content-Disposition"])[0] == name
    assert server.request("DELETE", "/files/" + quoted(name), token=token).status == 200


def test_non_ascii_name_round_trips_via_multipart(server: Server, token: str) -> None:
    name, data = "résumé 2026.pdf", payload(4000)
    assert_uploaded(post_file(server, token, name, data), name, data)
    resp = server.request("GET", "/download/" + quoted(name), token=token)
    assert resp.status == 200
    assert resp.body == data


def test_decomposed_name_is_stored_composed(server: Server, token: str) -> None:
    nfd = unicodedata.normalize("NFD", "résumé.txt")
    assert nfd != "résumé.txt"
    assert_uploaded(server.put_file(token, nfd, b"x"), "résumé.txt", b"x")
    assert [f["filename"] for f in listing(server, token)] == ["résumé.txt"]
    assert server.request("GET", "/download/" + quoted(nfd), token=token).body == b"x"


def test_name_of_255_utf8_bytes_is_accepted(server: Server, token: str) -> None:
    name = "é" * 127 + "x"
    assert len(name.encode()) == 255
    assert_uploaded(server.put_file(token, name, b"long"), name, b"long")
    assert server.request("GET", "/download/" + quoted(name), token=token).body == b"long"


BAD_NAMES = {
    "slash": "a%2Fb",
    "backslash": "a%5Cb",
    "dotdot": "%2E%2E",
    "dot": "%2E",
    "dotdot-slash": "..%2Fetc%2Fpasswd",
    "nul": "a%00b",
    "ctrl-01": "a%01b",
    "newline": "a%0Ab",
    "cr": "a%0Db",
    "del": "a%7Fb",
    "256-bytes": "a" * 256,
    "256-utf8-bytes": quoted("é" * 128),
    "rtl-override": quoted("evil\u202etxt.exe"),
    "line-separator": quoted("a\u2028b"),
}


@pytest.mark.parametrize("encoded", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
def test_put_with_bad_filename_is_400_and_stores_nothing(
    server: Server, user: tuple[str, str], encoded: str
) -> None:
    username, token = user
    resp = send(server, "PUT", "/upload/" + encoded, b"payload", {}, token=token)
    assert_error(resp, 400, prefix="Invalid filename")
    assert_nothing_stored(server, username, token)


@pytest.mark.parametrize(
    "encoded", ["a%2Fb", "%2E%2E", "a%00b", "a" * 256], ids=["slash", "dotdot", "nul", "256"]
)
def test_download_and_delete_with_bad_filename_are_400(server: Server, token: str, encoded: str) -> None:
    assert_error(server.request("GET", "/download/" + encoded, token=token), 400, prefix="Invalid filename")
    assert_error(server.request("DELETE", "/files/" + encoded, token=token), 400, prefix="Invalid filename")


@pytest.mark.parametrize(
    "filename", ["a/b.txt", "..", ".", "../../etc/passwd", "evil\u202etxt.exe", "a\x01b", "", "x" * 256]
)
def test_multipart_with_bad_filename_is_400_and_stores_nothing(
    server: Server, user: tuple[str, str], filename: str
) -> None:
    username, token = user
    body, headers = multipart([("file", filename, payload(S))])
    resp = send(server, "POST", "/upload", body, headers, token=token)
    assert_error(resp, 400, prefix="Invalid filename")
    assert_nothing_stored(server, username, token)


# --------------------------------------------------------------------------- malformed multipart


def _raw_multipart(kind: str) -> tuple[bytes, dict[str, str]]:
    ok, headers = multipart([("file", "ok.txt", b"data")])
    if kind == "no-file-field":
        return multipart([("document", "ok.txt", b"data")])
    if kind == "file-field-without-filename":
        return multipart([("file", None, b"data")])
    if kind == "two-file-parts":
        return multipart([("file", "one.txt", payload(S + 5)), ("file", "two.txt", b"second")])
    if kind == "no-boundary":
        return ok, {"Content-Type": "multipart/form-data"}
    if kind == "wrong-boundary":
        return ok, {"Content-Type": "multipart/form-data; boundary=somethingelse"}
    if kind == "wrong-content-type":
        return ok, {"Content-Type": "application/octet-stream"}
    if kind == "json-content-type":
        return b'{"file": "data"}', {"Content-Type": "application/json"}
    if kind == "no-content-type":
        return ok, {}
    if kind == "no-closing-boundary":  # big enough that part of the file is staged first
        body, headers = multipart([("file", "cut.bin", payload(S + 5))])
        return body[: body.rindex(b"--" + BOUNDARY.encode())], headers
    if kind == "empty-body":
        return b"", headers
    assert kind == "garbage-after-boundary"
    return ok.replace(f"--{BOUNDARY}\r\n".encode(), f"--{BOUNDARY}garbage\r\n".encode(), 1), headers


MALFORMED = [
    "no-file-field",
    "file-field-without-filename",
    "two-file-parts",
    "no-boundary",
    "wrong-boundary",
    "wrong-content-type",
    "json-content-type",
    "no-content-type",
    "no-closing-boundary",
    "empty-body",
    "garbage-after-boundary",
]


@pytest.mark.parametrize("kind", MALFORMED)
def test_malformed_multipart_is_400_and_stores_nothing(
    server: Server, user: tuple[str, str], kind: str
) -> None:
    username, token = user
    body, headers = _raw_multipart(kind)
    resp = send(server, "POST", "/upload", body, headers, token=token)
    assert_error(resp, 400)
    assert_nothing_stored(server, username, token)


# --------------------------------------------------------------------------- sizes


SIZES = [0, 1, S - 1, S, S + 1, 2 * S + 1]


@pytest.mark.parametrize("how", ["put", "multipart"])
@pytest.mark.parametrize("size", SIZES, ids=["0", "1", "S-1", "S", "S+1", "2S+1"])
def test_edge_sizes_round_trip_byte_identical(server: Server, token: str, size: int, how: str) -> None:
    data = payload(size)
    name = f"size-{size}.bin"
    resp = server.put_file(token, name, data) if how == "put" else post_file(server, token, name, data)
    assert_uploaded(resp, name, data)
    resp = server.request("GET", "/download/" + name, token=token)
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(size)
    assert resp.body == data
    assert [(f["size"], f["sha256"]) for f in listing(server, token)] == [(size, sha256(data))]


# --------------------------------------------------------------------------- digests


def _digest(data: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"


@pytest.mark.parametrize("header", ["Repr-Digest", "Content-Digest"])
def test_upload_with_correct_digest_is_stored(server: Server, token: str, header: str) -> None:
    data = payload(S + 7)
    resp = server.request("PUT", "/upload/d.bin", data, headers={header: _digest(data)}, token=token)
    assert_uploaded(resp, "d.bin", data)
    assert server.request("GET", "/download/d.bin", token=token).body == data


def test_upload_with_digest_among_others_is_stored(server: Server, token: str) -> None:
    data = b"several digests"
    value = "sha-512=:" + base64.b64encode(b"z" * 64).decode() + ":, " + _digest(data)
    resp = server.request("PUT", "/upload/d.txt", data, headers={"Repr-Digest": value}, token=token)
    assert_uploaded(resp, "d.txt", data)


@pytest.mark.parametrize("header", ["Repr-Digest", "Content-Digest"])
def test_upload_with_wrong_digest_is_400_and_stores_nothing(
    server: Server, user: tuple[str, str], header: str
) -> None:
    username, token = user
    data = payload(2 * S + 1)
    resp = send(server, "PUT", "/upload/d.bin", data, {header: _digest(data + b"!")}, token=token)
    assert_error(resp, 400, "Digest mismatch: the upload was not stored")
    assert_nothing_stored(server, username, token)


def test_upload_with_wrong_digest_keeps_the_previous_version(server: Server, user: tuple[str, str]) -> None:
    username, token = user
    assert server.put_file(token, "keep.txt", b"version 1").status == 201
    resp = server.request(
        "PUT", "/upload/keep.txt", b"version 2", headers={"Repr-Digest": _digest(b"v")}, token=token
    )
    assert_error(resp, 400, "Digest mismatch: the upload was not stored")
    assert server.request("GET", "/download/keep.txt", token=token).body == b"version 1"
    assert [f["sha256"] for f in listing(server, token)] == [sha256(b"version 1")]
    wait_until_clean(server, user_id(server, username))


@pytest.mark.parametrize(
    "value",
    [
        "sha-256=:not base64!:",
        "sha-256=:YWJj:",  # valid base64, but 3 bytes
        "sha-256=" + hashlib.sha256(b"x").hexdigest(),  # hex, not the structured-field byte sequence
        "md5=:" + base64.b64encode(hashlib.md5(b"x").digest()).decode() + ":",  # noqa: S324
        "",
        "garbage",
    ],
    ids=["bad-base64", "short", "hex", "md5-only", "empty", "garbage"],
)
def test_upload_with_malformed_digest_is_400_and_stores_nothing(
    server: Server, user: tuple[str, str], value: str
) -> None:
    username, token = user
    resp = send(server, "PUT", "/upload/m.bin", payload(S), {"Repr-Digest": value}, token=token)
    assert_error(resp, 400)
    assert_nothing_stored(server, username, token)


# --------------------------------------------------------------------------- max file size


@pytest.fixture
def limited_user(limited_server: Server) -> tuple[str, str]:
    return limited_server.new_user()


@pytest.mark.parametrize(
    ("method", "path", "content_type"),
    [
        ("PUT", "/upload/big.bin", "application/octet-stream"),
        ("POST", "/upload", f"multipart/form-data; boundary={BOUNDARY}"),
    ],
)
def test_declared_length_over_max_file_size_is_413_before_the_body_is_read(
    limited_server: Server, limited_user: tuple[str, str], method: str, path: str, content_type: str
) -> None:
    username, token = limited_user
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": content_type,
        "Content-Length": str(100 * S),
    }
    resp = send_headers_only(limited_server, method, path, headers)
    assert_error(resp, 413, f"File too large: the limit is {SMALL_LIMIT} bytes")
    assert_nothing_stored(limited_server, username, token)


def test_put_of_exactly_max_file_size_is_stored(
    limited_server: Server, limited_user: tuple[str, str]
) -> None:
    data = payload(SMALL_LIMIT)
    assert_uploaded(limited_server.put_file(limited_user[1], "max.bin", data), "max.bin", data)
    assert limited_server.request("GET", "/download/max.bin", token=limited_user[1]).body == data


def test_multipart_of_exactly_max_file_size_is_stored(
    limited_server: Server, limited_user: tuple[str, str]
) -> None:
    data = payload(SMALL_LIMIT)
    assert_uploaded(post_file(limited_server, limited_user[1], "max.bin", data), "max.bin", data)


def test_put_of_max_file_size_plus_one_is_413_and_stores_nothing(
    limited_server: Server, limited_user: tuple[str, str]
) -> None:
    username, token = limited_user
    headers = {"Authorization": f"Bearer {token}"}
    resp = send(limited_server, "PUT", "/upload/over.bin", payload(SMALL_LIMIT + 1), headers)
    assert_error(resp, 413, f"File too large: the limit is {SMALL_LIMIT} bytes")
    assert_nothing_stored(limited_server, username, token)


def test_multipart_file_of_max_file_size_plus_one_is_413_and_stores_nothing(
    limited_server: Server, limited_user: tuple[str, str]
) -> None:
    username, token = limited_user
    body, headers = multipart([("file", "over.bin", payload(SMALL_LIMIT + 1))])
    resp = send(limited_server, "POST", "/upload", body, {**headers, "Authorization": f"Bearer {token}"})
    assert_error(resp, 413, f"File too large: the limit is {SMALL_LIMIT} bytes")
    assert_nothing_stored(limited_server, username, token)


def _chunked_upload(server: Server, token: str, name: str, chunks: list[bytes]) -> Response | None:
    """PUT with Transfer-Encoding: chunked; None if the server dropped the connection unanswered."""
    conn = server.connection(timeout=20)
    try:
        conn.request(
            "PUT",
            "/upload/" + quoted(name),
            body=iter(chunks),
            headers={"Authorization": f"Bearer {token}", "Transfer-Encoding": "chunked"},
            encode_chunked=True,
        )
        resp = conn.getresponse()
        return Response(resp.status, resp.headers, resp.read())
    except (ConnectionError, http.client.HTTPException, ssl.SSLError):
        return None
    finally:
        conn.close()


def test_chunked_upload_within_max_file_size_is_stored(
    limited_server: Server, limited_user: tuple[str, str]
) -> None:
    data = payload(SMALL_LIMIT)
    resp = _chunked_upload(
        limited_server,
        limited_user[1],
        "chunked.bin",
        [data[i : i + 7000] for i in range(0, len(data), 7000)],
    )
    assert resp is not None
    assert_uploaded(resp, "chunked.bin", data)
    assert limited_server.request("GET", "/download/chunked.bin", token=limited_user[1]).body == data


def test_chunked_upload_over_max_file_size_fails_and_stores_nothing(
    limited_server: Server, limited_user: tuple[str, str]
) -> None:
    username, token = limited_user
    data = payload(3 * SMALL_LIMIT)
    resp = _chunked_upload(
        limited_server, token, "chunked.bin", [data[i : i + 8192] for i in range(0, len(data), 8192)]
    )
    assert resp is None or resp.status >= 400, resp
    assert_nothing_stored(limited_server, username, token)
    assert limited_server.request("GET", "/health").status == 200


def test_chunked_upload_over_max_file_size_is_json_413(
    limited_server: Server, limited_user: tuple[str, str]
) -> None:
    """A chunked body has no Content-Length to refuse up front; once it runs over the limit the
    answer should still be the API's JSON 413 rather than a bare framework error or a reset."""
    data = payload(SMALL_LIMIT + 20_000)
    resp = _chunked_upload(
        limited_server, limited_user[1], "c.bin", [data[i : i + 10_000] for i in range(0, len(data), 10_000)]
    )
    assert resp is not None, "connection dropped without an answer"
    assert_error(resp, 413, f"File too large: the limit is {SMALL_LIMIT} bytes")


# --------------------------------------------------------------------------- oversized headers


def test_huge_request_header_is_refused_and_server_stays_healthy(server: Server, token: str) -> None:
    conn = server.connection(timeout=20)
    status: int | None = None
    try:
        conn.request("GET", "/files", headers={"Authorization": f"Bearer {token}", "X-Huge": "a" * 100_000})
        status = conn.getresponse().status
    except (ConnectionError, http.client.HTTPException, ssl.SSLError):
        status = None  # closed without an answer: also a refusal
    finally:
        conn.close()
    assert status is None or 400 <= status < 500, status
    resp = server.request("GET", "/health")
    assert resp.status == 200
    assert listing(server, token) == []


def test_many_headers_are_refused_and_server_stays_healthy(server: Server) -> None:
    conn = server.connection(timeout=20)
    status: int | None = None
    try:
        conn.request("GET", "/health", headers={f"X-H{i}": "v" * 50 for i in range(2000)})
        status = conn.getresponse().status
    except (ConnectionError, http.client.HTTPException, ssl.SSLError):
        status = None
    finally:
        conn.close()
    assert status is None or 400 <= status < 500, status
    assert server.request("GET", "/health").status == 200


# --------------------------------------------------------------------------- logging


def test_server_log_never_contains_tokens_or_passwords(server: Server) -> None:
    name, token = server.new_user("a very secret password")
    server.request("GET", "/files", token=token)
    server.request("GET", "/files", token=token + "x")
    log = server.output()
    assert token not in log
    assert token.split(".")[2] not in log
    assert "a very secret password" not in log
