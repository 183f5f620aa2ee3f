"""Sharing over real HTTPS: grants to other users (``/files/<name>/shares``, ``/shared``) and
public links (``/files/<name>/links``, ``/links``, ``/s/<token>``), black-box against run.py.

The rules under test are in vault/sharing.py's docstring: grants and links follow the file by
name and die with it; a user without a grant sees exactly the 404 of a missing file; a link's
secret is stored only as its SHA-256; its download limit is a byte budget of N copies plus a
preview allowance of min(64 KiB, size // 2), reserved before headers go out; wrong passwords
lock it with an exponential backoff kept in its row; grant and link rows carry an HMAC, so
writing the database grants nothing.

The tests that write the database use sqlite3 beside the running server (WAL). One of them
plays the administrator who holds the master key, to move a link's expiry into the past with a
valid tag, since the tag covers the expiry and waiting a minute is not an option.
"""

import base64
import datetime
import hashlib
import html
import json
import random
import re
import subprocess
import threading
import time
import unicodedata
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, urlsplit

import pytest

from tests import pg
from tests.dbedit import server_database
from tests.marks import needs_curl
from tests.server import Response, Server
from vault.keys import load_keyring
from vault.rows import LINK
from vault.store import Link

KiB = 1024
MiB = 1024 * KiB
PREVIEW_ALLOWANCE = 64 * KiB
LINK_PASSWORD = "open sesame 42"
CURL_TIMEOUT = 60
NOT_FOUND = {"message": "File not found", "status": 404}
LINK_NOT_FOUND = {"message": "Link not found", "status": 404}
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{22,}$")
LINK_COLUMNS = (
    "id",
    "token_hash",
    "owner",
    "name",
    "created",
    "expires",
    "password_hash",
    "max_downloads",
    "bytes_served",
    "failures",
    "locked_until",
    "key_id",
    "tag",
)
ACCESS_LINE = re.compile(r"tornado\.access: (\d{3} [A-Z]+ \S+) \(")
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"

Account = tuple[str, str]  # (username, token)

# --------------------------------------------------------------------------- helpers


def blob(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def unique(name: str) -> str:
    return f"{uuid.uuid4().hex[:8]}-{name}"


def q(name: str) -> str:
    return quote(name, safe="")


def upload(server: Server, token: str, name: str, data: bytes) -> None:
    resp = server.put_file(token, name, data)
    assert resp.status == 201, resp.body


def share(server: Server, token: str, name: str, body: Any) -> Response:
    return server.request("POST", f"/files/{q(name)}/shares", body, token=token)


def grantees(server: Server, token: str, name: str) -> Response:
    return server.request("GET", f"/files/{q(name)}/shares", token=token)


def revoke(server: Server, token: str, name: str, username: str) -> Response:
    return server.request("DELETE", f"/files/{q(name)}/shares/{q(username)}", token=token)


def shared_get(
    server: Server, token: str, owner: str, name: str, method: str = "GET", **headers: str
) -> Response:
    return server.request(method, f"/shared/{q(owner)}/{q(name)}", headers=headers, token=token)


def shared_list(server: Server, token: str) -> Any:
    resp = server.request("GET", "/shared", token=token)
    assert resp.status == 200, resp.body
    return resp.json()


def create_link(server: Server, token: str, name: str, body: Any = None) -> Response:
    return server.request("POST", f"/files/{q(name)}/links", {} if body is None else body, token=token)


def new_link(server: Server, token: str, name: str, **fields: Any) -> dict[str, Any]:
    resp = create_link(server, token, name, fields)
    assert resp.status == 201, resp.body
    return cast(dict[str, Any], resp.json())


def link_token(link: dict[str, Any]) -> str:
    path = urlsplit(str(link["url"])).path
    assert path.startswith("/s/"), link["url"]
    return path[len("/s/") :]


def list_links(server: Server, token: str) -> list[dict[str, Any]]:
    resp = server.request("GET", "/links", token=token)
    assert resp.status == 200, resp.body
    assert set(resp.json()) == {"links"}
    return cast(list[dict[str, Any]], resp.json()["links"])


def fetch(server: Server, link_tok: str, method: str = "GET", query: str = "", **headers: str) -> Response:
    """A request to a public link, with no account (and, unless given, no Accept header: curl-like)."""
    return server.request(method, f"/s/{link_tok}{query}", headers=headers)


def basic(password: str, username: str = "") -> dict[str, str]:
    raw = f"{username}:{password}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def curl(server: Server, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    cmd = ["curl", "--silent", "--show-error", "--cacert", str(server.cert), *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, timeout=CURL_TIMEOUT, check=False)


def error(status: int, message: str) -> dict[str, Any]:
    return {"message": message, "status": status}


@contextmanager
def database(server: Server) -> Iterator[Any]:
    """The server's database, opened beside it (WAL); changes are committed on exit."""
    with server_database(server) as conn:
        yield conn


def database_files(server: Server) -> list[Path]:
    """The files that hold the server's database: vault.db and its WAL, or every file of the
    PostgreSQL cluster (tables, WAL)."""
    if server.database_url:
        assert pg.CLUSTER is not None
        return [p for p in pg.CLUSTER.data.rglob("*") if p.is_file()]
    return list(server.data_dir.glob("vault.db*"))


def user_id(server: Server, username: str) -> int:
    with database(server) as conn:
        row = conn.execute("SELECT id FROM users WHERE username = ?", (username,)).fetchone()
    assert row is not None
    return int(row[0])


def link_row(server: Server, link_id: str) -> dict[str, Any]:
    with database(server) as conn:
        sql = f"SELECT {', '.join(LINK_COLUMNS)} FROM links WHERE id = ?"  # noqa: S608 (constant columns)
        row = conn.execute(sql, (link_id,)).fetchone()
    assert row is not None, f"no links row {link_id}"
    return dict(zip(LINK_COLUMNS, row, strict=True))


def resign_link(server: Server, link_id: str, **changes: Any) -> None:
    """Change a links row as the administrator holding the master key would: with a valid tag
    (computed by the product's own code, so the field list is not duplicated here)."""
    values = {**link_row(server, link_id), **changes}
    keyring = load_keyring(server.data_dir, {})
    tag = LINK.tag(keyring, Link(**values))
    sets = ", ".join(f"{column} = ?" for column in changes)
    with database(server) as conn:
        sql = f"UPDATE links SET {sets}, tag = ? WHERE id = ?"  # noqa: S608 (column names from this file)
        conn.execute(sql, (*changes.values(), tag, link_id))


def assert_full_download(resp: Response, data: bytes, name: str) -> None:
    assert resp.status == 200, resp.body[:300]
    assert resp.body == data
    assert resp.headers["Content-Length"] == str(len(data))
    disposition = resp.headers["Content-Disposition"]
    assert disposition.startswith("attachment;")
    assert f'filename="{name}"' in disposition or f"filename*=UTF-8''{q(name)}" in disposition, disposition


def assert_partial(resp: Response, data: bytes, start: int, end: int) -> None:
    """A 206 for the inclusive byte range start..end."""
    assert resp.status == 206, resp.body[:300]
    assert resp.headers["Content-Range"] == f"bytes {start}-{end}/{len(data)}"
    assert resp.body == data[start : end + 1]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def alice(server: Server) -> Account:
    return server.new_user()


@pytest.fixture
def bob(server: Server) -> Account:
    return server.new_user()


@pytest.fixture
def carol(server: Server) -> Account:
    return server.new_user()


@pytest.fixture
def shared_file(server: Server, alice: Account, bob: Account) -> tuple[str, bytes]:
    """A 300 KiB file of alice's, shared with bob."""
    name, data = unique("report.bin"), blob(300 * KiB, 1)
    upload(server, alice[1], name, data)
    assert share(server, alice[1], name, {"username": bob[0]}).status == 201
    return name, data


# --------------------------------------------------------------------------- grants


def test_owner_shares_a_file_and_lists_its_grantees_sorted_without_duplicates(
    server: Server, alice: Account, bob: Account, carol: Account
) -> None:
    name = unique("plan.txt")
    upload(server, alice[1], name, b"the plan")
    resp = share(server, alice[1], name, {"username": carol[0]})
    assert (resp.status, resp.json()) == (
        201,
        {"message": "File shared", "filename": name, "username": carol[0]},
    )
    resp = share(server, alice[1], name, {"username": bob[0]})
    assert (resp.status, resp.json()) == (
        201,
        {"message": "File shared", "filename": name, "username": bob[0]},
    )
    # Usernames are case-insensitive: sharing again answers with the account's own spelling.
    resp = share(server, alice[1], name, {"username": bob[0].upper()})
    assert (resp.status, resp.json()) == (
        201,
        {"message": "File shared", "filename": name, "username": bob[0]},
    )

    resp = grantees(server, alice[1], name)
    assert (resp.status, resp.json()) == (200, {"filename": name, "shared_with": sorted([bob[0], carol[0]])})


def test_recipient_sees_the_file_in_shared_and_downloads_it_whole_by_range_and_head(
    server: Server, alice: Account, bob: Account, shared_file: tuple[str, bytes]
) -> None:
    name, data = shared_file
    own = server.request("GET", "/files", token=alice[1]).json()["files"]
    entry = next(f for f in own if f["filename"] == name)
    assert shared_list(server, bob[1]) == {"files": [{"owner": alice[0], **entry}]}
    assert entry["size"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()

    resp = shared_get(server, bob[1], alice[0], name)
    assert_full_download(resp, data, name)
    owner_view = server.request("HEAD", f"/download/{q(name)}", token=alice[1])
    assert resp.headers["ETag"] == owner_view.headers["ETag"]
    assert resp.headers["Accept-Ranges"] == "bytes"

    assert_partial(shared_get(server, bob[1], alice[0], name, Range="bytes=1000-1999"), data, 1000, 1999)
    assert_partial(
        shared_get(server, bob[1], alice[0], name, Range="bytes=-10"), data, len(data) - 10, len(data) - 1
    )

    head = shared_get(server, bob[1], alice[0], name, method="HEAD")
    assert (head.status, head.body) == (200, b"")
    assert head.headers["Content-Length"] == str(len(data))
    assert head.headers["ETag"] == resp.headers["ETag"]

    cached = shared_get(server, bob[1], alice[0], name, **{"If-None-Match": resp.headers["ETag"]})
    assert (cached.status, cached.body) == (304, b"")


def test_user_without_a_grant_gets_exactly_the_404_of_a_missing_file(
    server: Server, alice: Account, bob: Account, carol: Account, shared_file: tuple[str, bytes]
) -> None:
    name, _ = shared_file
    refused = shared_get(server, carol[1], alice[0], name)
    missing = shared_get(server, carol[1], alice[0], unique("no-such-file.bin"))
    no_owner = shared_get(server, carol[1], "nobody" + uuid.uuid4().hex[:8], name)
    recipient_missing = shared_get(server, bob[1], alice[0], unique("no-such-file.bin"))
    for resp in (refused, missing, no_owner, recipient_missing):
        assert (resp.status, resp.json()) == (404, NOT_FOUND)
        assert "Content-Disposition" not in resp.headers and "ETag" not in resp.headers
    assert refused.body == missing.body == no_owner.body == recipient_missing.body
    assert refused.headers["Content-Type"] == missing.headers["Content-Type"]

    head = shared_get(server, carol[1], alice[0], name, method="HEAD")
    assert (head.status, head.body) == (404, b"")
    assert shared_list(server, carol[1]) == {"files": []}
    # The grant is for alice's name, not bob's namespace: bob's own /download has no such file.
    own = server.request("GET", f"/download/{q(name)}", token=bob[1])
    assert (own.status, own.json()) == (404, NOT_FOUND)
    # And without an account at all: 401, not the file.
    anonymous = server.request("GET", f"/shared/{q(alice[0])}/{q(name)}")
    assert anonymous.status == 401 and anonymous.json()["status"] == 401


def test_share_replies_name_the_stored_file_when_the_name_was_sent_decomposed(
    server: Server, alice: Account, bob: Account
) -> None:
    """Names are stored in NFC (macOS sends NFD); like DELETE /files and POST .../links, the share
    replies name the file as stored."""
    nfc = unique("caf\u00e9.txt")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfd != nfc
    upload(server, alice[1], nfc, b"coffee")
    link = create_link(server, alice[1], nfd)
    assert (link.status, link.json()["filename"]) == (201, nfc)

    resp = share(server, alice[1], nfd, {"username": bob[0]})
    assert (resp.status, resp.json()) == (
        201,
        {"message": "File shared", "filename": nfc, "username": bob[0]},
    )
    resp = grantees(server, alice[1], nfd)
    assert (resp.status, resp.json()) == (200, {"filename": nfc, "shared_with": [bob[0]]})
    assert shared_get(server, bob[1], alice[0], nfd).body == b"coffee"
    assert shared_list(server, bob[1])["files"][0]["filename"] == nfc


def test_revoking_a_grant_takes_effect_at_once(
    server: Server, alice: Account, bob: Account, shared_file: tuple[str, bytes]
) -> None:
    name, data = shared_file
    assert shared_get(server, bob[1], alice[0], name).body == data

    resp = revoke(server, alice[1], name, bob[0])
    assert (resp.status, resp.json()) == (
        200,
        {"message": "Share revoked", "filename": name, "username": bob[0]},
    )
    after = shared_get(server, bob[1], alice[0], name)
    assert (after.status, after.json()) == (404, NOT_FOUND)
    assert shared_list(server, bob[1]) == {"files": []}
    listed = grantees(server, alice[1], name)
    assert (listed.status, listed.json()) == (200, {"filename": name, "shared_with": []})

    again = revoke(server, alice[1], name, bob[0])
    assert (again.status, again.json()) == (404, error(404, "Not shared with that user"))
    unknown = revoke(server, alice[1], name, "nobody" + uuid.uuid4().hex[:8])
    assert (unknown.status, unknown.json()) == (404, error(404, "Not shared with that user"))


def test_revoking_a_grant_stops_a_ranged_download_from_being_continued(
    server: Server, alice: Account, bob: Account
) -> None:
    name, data = unique("movie.bin"), blob(1 * MiB, 2)
    upload(server, alice[1], name, data)
    assert share(server, alice[1], name, {"username": bob[0]}).status == 201
    first = shared_get(server, bob[1], alice[0], name, Range="bytes=0-262143")
    assert_partial(first, data, 0, 262143)

    assert revoke(server, alice[1], name, bob[0]).status == 200
    rest = shared_get(
        server, bob[1], alice[0], name, Range="bytes=262144-", **{"If-Range": first.headers["ETag"]}
    )
    assert (rest.status, rest.json()) == (404, NOT_FOUND)


def test_sharing_errors_missing_file_unknown_user_yourself_and_bad_bodies(
    server: Server, alice: Account, bob: Account
) -> None:
    name = unique("notes.txt")
    upload(server, alice[1], name, b"notes")

    resp = share(server, alice[1], unique("missing.txt"), {"username": bob[0]})
    assert (resp.status, resp.json()) == (404, NOT_FOUND)
    resp = share(server, alice[1], name, {"username": "nobody" + uuid.uuid4().hex[:8]})
    assert (resp.status, resp.json()) == (404, error(404, "User not found"))
    for me in (alice[0], alice[0].upper()):
        resp = share(server, alice[1], name, {"username": me})
        assert (resp.status, resp.json()["status"]) == (400, 400), resp.body
        assert "yourself" in resp.json()["message"]
    for body in ({}, {"username": ""}, {"username": 5}, {"username": None}, {"user": bob[0]}):
        resp = share(server, alice[1], name, body)
        assert (resp.status, resp.json()["status"]) == (400, 400), (body, resp.body)
        assert "username" in resp.json()["message"]
    for raw in ("not json", "[]", '"bob"', "{"):
        resp = server.request(
            "POST",
            f"/files/{q(name)}/shares",
            raw,
            headers={"Content-Type": "application/json"},
            token=alice[1],
        )
        assert (resp.status, resp.json()["status"]) == (400, 400), (raw, resp.body)
    resp = server.request("POST", f"/files/{q(name)}/shares", {"username": bob[0]})
    assert (resp.status, resp.json()["status"]) == (401, 401)

    listed = grantees(server, alice[1], name)
    assert (listed.status, listed.json()) == (200, {"filename": name, "shared_with": []})
    assert shared_list(server, bob[1]) == {"files": []}


def test_recipient_cannot_reshare_and_non_owners_cannot_list_or_revoke_grants(
    server: Server, alice: Account, bob: Account, carol: Account, shared_file: tuple[str, bytes]
) -> None:
    name, data = shared_file
    for who in (bob, carol):
        resp = grantees(server, who[1], name)
        assert (resp.status, resp.json()) == (404, NOT_FOUND)
        resp = revoke(server, who[1], name, bob[0])
        assert (resp.status, resp.json()) == (404, error(404, "Not shared with that user"))
    resp = share(server, bob[1], name, {"username": carol[0]})
    assert (resp.status, resp.json()) == (404, NOT_FOUND)

    # A file of bob's own by the same name has its own (empty) grant list.
    upload(server, bob[1], name, b"bob's own")
    resp = grantees(server, bob[1], name)
    assert (resp.status, resp.json()) == (200, {"filename": name, "shared_with": []})

    assert grantees(server, alice[1], name).json() == {"filename": name, "shared_with": [bob[0]]}
    assert shared_get(server, bob[1], alice[0], name).body == data
    assert shared_get(server, carol[1], alice[0], name).status == 404


def test_grant_follows_a_replacement_of_the_file(
    server: Server, alice: Account, bob: Account, shared_file: tuple[str, bytes]
) -> None:
    name, old = shared_file
    old_etag = shared_get(server, bob[1], alice[0], name, method="HEAD").headers["ETag"]
    new = blob(123 * KiB, 3)
    upload(server, alice[1], name, new)

    resp = shared_get(server, bob[1], alice[0], name)
    assert_full_download(resp, new, name)
    assert resp.headers["ETag"] != old_etag
    [entry] = shared_list(server, bob[1])["files"]
    assert (entry["owner"], entry["filename"], entry["size"], entry["sha256"]) == (
        alice[0],
        name,
        len(new),
        hashlib.sha256(new).hexdigest(),
    )


def test_deleting_the_file_drops_its_grants_for_good(
    server: Server, alice: Account, bob: Account, shared_file: tuple[str, bytes]
) -> None:
    name, _ = shared_file
    assert server.request("DELETE", f"/files/{q(name)}", token=alice[1]).status == 200
    resp = shared_get(server, bob[1], alice[0], name)
    assert (resp.status, resp.json()) == (404, NOT_FOUND)
    assert shared_list(server, bob[1]) == {"files": []}

    # A new file by the same name is not shared: the grant went with the old one.
    upload(server, alice[1], name, b"a new file, same name")
    resp = shared_get(server, bob[1], alice[0], name)
    assert (resp.status, resp.json()) == (404, NOT_FOUND)
    assert shared_list(server, bob[1]) == {"files": []}
    assert grantees(server, alice[1], name).json() == {"filename": name, "shared_with": []}


# --------------------------------------------------------------------------- links: creation


def test_create_link_gives_a_secret_url_that_the_listing_never_shows(server: Server, alice: Account) -> None:
    name = unique("photo.jpg")
    upload(server, alice[1], name, b"jpeg bytes")
    resp = create_link(server, alice[1], name)
    assert resp.status == 201, resp.body
    body = resp.json()
    assert set(body) == {
        "message",
        "url",
        "id",
        "filename",
        "created",
        "expires",
        "password",
        "max_downloads",
        "downloads_left",
    }
    url = urlsplit(body["url"])
    assert (url.scheme, url.netloc, url.query) == ("https", f"127.0.0.1:{server.port}", "")
    token = link_token(body)
    assert TOKEN_RE.match(token), token
    assert body["message"] == "Link created" and body["filename"] == name
    assert (body["expires"], body["password"], body["max_downloads"], body["downloads_left"]) == (
        None,
        False,
        None,
        None,
    )
    created = datetime.datetime.fromisoformat(body["created"])
    assert abs(created.timestamp() - time.time()) < 3600  # a real UTC timestamp, not a placeholder

    listed = server.request("GET", "/links", token=alice[1])
    assert listed.status == 200
    assert listed.json() == {"links": [{k: v for k, v in body.items() if k not in ("message", "url")}]}
    assert token.encode() not in listed.body

    other = create_link(
        server, alice[1], name, {"expires_in": 3600, "password": LINK_PASSWORD, "max_downloads": 3}
    )
    assert other.status == 201, other.body
    o = other.json()
    assert link_token(o) != token and o["id"] != body["id"]
    assert (o["password"], o["max_downloads"], o["downloads_left"]) == (True, 3, 3)
    span = datetime.datetime.fromisoformat(o["expires"]) - datetime.datetime.fromisoformat(o["created"])
    assert abs(span.total_seconds() - 3600) <= 1
    assert LINK_PASSWORD not in other.body.decode()
    assert [link["id"] for link in list_links(server, alice[1])] == [body["id"], o["id"]]


def test_database_holds_only_the_sha256_of_a_link_token(server: Server, alice: Account) -> None:
    name = unique("secret.pdf")
    upload(server, alice[1], name, b"%PDF-1.7")
    link = new_link(server, alice[1], name, max_downloads=2)
    token = link_token(link)
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))

    row = link_row(server, link["id"])
    assert row["token_hash"] == hashlib.sha256(token.encode()).digest()
    for column, value in row.items():
        assert value != token and value != raw and value != token.encode(), column
        if isinstance(value, str | bytes):
            assert token not in (value if isinstance(value, str) else value.decode("latin-1")), column
    # Nowhere in the database files either (main file, WAL).
    assert fetch(server, token).status == 200
    files = database_files(server)
    assert server.database_url or "vault.db" in {path.name for path in files}, files  # looked at
    assert files
    for path in files:
        content = path.read_bytes()
        assert token.encode() not in content and raw not in content, path.name


def test_link_token_is_not_written_to_the_server_log(server: Server, alice: Account) -> None:
    """The token is the whole secret of a link and the database keeps only its hash; the access
    log must not keep it in clear either. The requests must be in the log (redacted), or its
    absence would prove nothing."""
    name = unique("log.txt")
    upload(server, alice[1], name, b"logged?")
    token = link_token(new_link(server, alice[1], name))
    unknown = "Z" * 22  # the shape of a token, of no link: a guess is a secret too
    start = len(server.output())
    assert fetch(server, token).status == 200
    assert fetch(server, token, "HEAD").status == 200
    assert fetch(server, token, query="?dl=1", Accept=BROWSER_ACCEPT).status == 200
    assert fetch(server, unknown).status == 404
    # Requests are logged in order by the one event loop: once a later marker is in the log,
    # the link's requests have been logged too.
    marker = "/marker-" + uuid.uuid4().hex
    assert server.request("GET", marker).status == 404
    deadline = time.monotonic() + 10
    while marker not in server.output()[start:]:
        assert time.monotonic() < deadline, "the access log never showed the marker request"
        time.sleep(0.05)
    logged = server.output()[start:].splitlines()
    access = [m.group(1) for m in map(ACCESS_LINE.search, logged) if m and " /s/" in m.group(1)]
    assert access == [
        "200 GET /s/[secret]",
        "200 HEAD /s/[secret]",
        "200 GET /s/[secret]",
        "404 GET /s/[secret]",
    ], logged
    leaked = [line for line in logged if token in line or unknown in line]
    assert not leaked, f"link token written to the log: {leaked}"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"expires_in": 10}, "expires_in"),
        ({"expires_in": 59}, "expires_in"),
        ({"expires_in": 366 * 86400 + 1}, "expires_in"),
        ({"expires_in": 3600.5}, "expires_in"),
        ({"expires_in": "3600"}, "expires_in"),
        ({"expires_in": True}, "expires_in"),
        ({"max_downloads": 0}, "max_downloads"),
        ({"max_downloads": -1}, "max_downloads"),
        ({"max_downloads": 1_000_001}, "max_downloads"),
        ({"max_downloads": 1.5}, "max_downloads"),
        ({"max_downloads": "1"}, "max_downloads"),
        ({"max_downloads": True}, "max_downloads"),
        ({"password": "short"}, "password"),
        ({"password": ""}, "password"),
        ({"password": "x" * 73}, "password"),
        ({"password": "é" * 37}, "password"),  # 37 characters, 74 bytes
        ({"password": 12345678}, "password"),
        ({"password": ["correct horse"]}, "password"),
    ],
)
def test_bad_link_fields_are_400_and_create_nothing(
    server: Server, alice: Account, body: dict[str, Any], field: str
) -> None:
    name = unique("f.txt")
    upload(server, alice[1], name, b"data")
    resp = create_link(server, alice[1], name, body)
    assert (resp.status, resp.json()["status"]) == (400, 400), resp.body
    assert field in resp.json()["message"]
    assert list_links(server, alice[1]) == []


def test_link_fields_at_their_limits_are_accepted(server: Server, alice: Account) -> None:
    name = unique("f.txt")
    upload(server, alice[1], name, b"data")
    for body in (
        {"expires_in": 60},
        {"expires_in": 366 * 86400},
        {"max_downloads": 1},
        {"max_downloads": 1_000_000},
        {"password": "x" * 8},
        {"password": "x" * 72},
        {"expires_in": None, "password": None, "max_downloads": None},
    ):
        resp = create_link(server, alice[1], name, body)
        assert resp.status == 201, (body, resp.body)
    assert len(list_links(server, alice[1])) == 7


def test_link_requests_that_are_not_json_objects_or_for_missing_files_are_refused(
    server: Server, alice: Account
) -> None:
    name = unique("f.txt")
    upload(server, alice[1], name, b"data")
    for raw in ("not json", "[]", "3", "{"):
        resp = server.request(
            "POST",
            f"/files/{q(name)}/links",
            raw,
            headers={"Content-Type": "application/json"},
            token=alice[1],
        )
        assert (resp.status, resp.json()["status"]) == (400, 400), (raw, resp.body)
    resp = create_link(server, alice[1], unique("missing.txt"))
    assert (resp.status, resp.json()) == (404, NOT_FOUND)
    resp = server.request("POST", f"/files/{q(name)}/links", {})
    assert (resp.status, resp.json()["status"]) == (401, 401)
    assert list_links(server, alice[1]) == []


# --------------------------------------------------------------------------- links: downloads


@needs_curl
def test_curl_OJ_saves_a_linked_file_under_its_name(server: Server, alice: Account, tmp_path: Path) -> None:  # noqa: N802
    name, data = unique("quarterly report.bin"), blob(200 * KiB, 4)
    upload(server, alice[1], name, data)
    url = new_link(server, alice[1], name)["url"]
    result = curl(server, "-OJ", "-w", "%{http_code}", url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"200"
    assert [p.name for p in tmp_path.iterdir()] == [name]
    assert (tmp_path / name).read_bytes() == data


def test_range_and_head_through_a_link(server: Server, alice: Account) -> None:
    name, data = unique("archive.tar"), blob(150 * KiB, 5)
    upload(server, alice[1], name, data)
    token = link_token(new_link(server, alice[1], name))
    full = fetch(server, token)
    assert_full_download(full, data, name)
    assert full.headers["Accept-Ranges"] == "bytes"
    assert_partial(fetch(server, token, Range="bytes=10-19"), data, 10, 19)
    assert_partial(fetch(server, token, Range="bytes=-5"), data, len(data) - 5, len(data) - 1)
    resumed = fetch(server, token, Range="bytes=100000-", **{"If-Range": full.headers["ETag"]})
    assert_partial(resumed, data, 100000, len(data) - 1)
    head = fetch(server, token, "HEAD")
    assert (head.status, head.body) == (200, b"")
    assert head.headers["Content-Length"] == str(len(data)) and head.headers["ETag"] == full.headers["ETag"]
    unsatisfiable = fetch(server, token, Range=f"bytes={len(data)}-")
    assert unsatisfiable.status == 416


def test_unknown_token_is_404(server: Server) -> None:
    resp = fetch(server, "A" * 24)
    assert (resp.status, resp.json()) == (404, LINK_NOT_FOUND)


def test_head_a_one_byte_range_and_the_landing_page_do_not_use_up_a_one_time_link(
    server: Server, alice: Account
) -> None:
    name, data = unique("once.bin"), blob(200 * KiB, 6)
    upload(server, alice[1], name, data)
    link = new_link(server, alice[1], name, max_downloads=1)
    token = link_token(link)

    for _ in range(3):
        head = fetch(server, token, "HEAD")
        assert (head.status, head.body) == (200, b"")
        assert head.headers["Content-Length"] == str(len(data))
    assert_partial(fetch(server, token, Range="bytes=0-0"), data, 0, 0)
    page = fetch(server, token, Accept=BROWSER_ACCEPT)
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")

    assert_full_download(fetch(server, token), data, name)
    second = fetch(server, token)
    assert (second.status, second.json()) == (410, error(410, "This link has no downloads left"))
    [listed] = list_links(server, alice[1])
    assert (listed["id"], listed["max_downloads"], listed["downloads_left"]) == (link["id"], 1, 0)


@pytest.mark.parametrize("size", [0, 200 * KiB])
def test_a_link_whose_budget_is_spent_to_the_byte_is_gone_for_head_and_the_page_too(
    server: Server, alice: Account, size: int
) -> None:
    """Exhausted means no budget left, exactly 0 included: HEAD and the landing page, which
    cost nothing themselves, answer 410 like a download once the last byte is spent."""
    name, data = unique("spent.bin"), blob(size, 8)
    upload(server, alice[1], name, data)
    link = new_link(server, alice[1], name, max_downloads=1)
    token = link_token(link)
    assert_full_download(fetch(server, token), data, name)
    if size:  # spend the preview allowance, min(64 KiB, size // 2), to the last byte
        assert_partial(
            fetch(server, token, Range=f"bytes=0-{PREVIEW_ALLOWANCE - 1}"), data, 0, PREVIEW_ALLOWANCE - 1
        )
    gone = error(410, "This link has no downloads left")
    head = fetch(server, token, "HEAD")
    assert (head.status, head.body) == (410, b"")
    page = fetch(server, token, Accept=BROWSER_ACCEPT)  # a browser reads it as a page
    assert page.status == 410 and page.headers["Content-Type"].startswith("text/html")
    assert gone["message"] in page.body.decode()
    again = fetch(server, token)
    assert (again.status, again.json()) == (410, gone)
    [listed] = list_links(server, alice[1])
    assert listed["downloads_left"] == 0


def test_two_simultaneous_downloads_of_a_one_time_link_give_one_copy(server: Server, alice: Account) -> None:
    name, data = unique("race.bin"), blob(3 * MiB, 7)
    upload(server, alice[1], name, data)
    token = link_token(new_link(server, alice[1], name, max_downloads=1))
    barrier = threading.Barrier(2)
    results: list[tuple[int, bytes]] = []
    lock = threading.Lock()

    def download() -> None:
        conn = server.connection()
        try:
            conn.connect()
            barrier.wait(timeout=30)
            conn.request("GET", f"/s/{token}")
            resp = conn.getresponse()
            body = resp.read()
            with lock:
                results.append((resp.status, body))
        finally:
            conn.close()

    threads = [threading.Thread(target=download) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(status for status, _ in results) == [200, 410], [(s, len(b)) for s, b in results]
    for status, body in results:
        if status == 200:
            assert body == data
        else:
            assert json.loads(body) == error(410, "This link has no downloads left")


def test_a_second_download_while_the_first_is_still_streaming_is_refused(
    server: Server, alice: Account
) -> None:
    name, data = unique("stream.bin"), blob(3 * MiB, 8)
    upload(server, alice[1], name, data)
    token = link_token(new_link(server, alice[1], name, max_downloads=1))
    conn = server.connection()
    try:
        conn.request("GET", f"/s/{token}")
        first = conn.getresponse()
        assert first.status == 200
        head = first.read(64 * KiB)
        second = fetch(server, token)
        assert (second.status, second.json()) == (410, error(410, "This link has no downloads left"))
        assert head + first.read() == data
    finally:
        conn.close()


def test_a_one_time_link_cannot_be_assembled_twice_from_ranges(server: Server, alice: Account) -> None:
    size = 1 * MiB
    piece = 256 * KiB
    name, data = unique("pieces.bin"), blob(size, 9)
    upload(server, alice[1], name, data)
    token = link_token(new_link(server, alice[1], name, max_downloads=1))

    assembled = b""
    for start in range(0, size, piece):
        resp = fetch(server, token, Range=f"bytes={start}-{start + piece - 1}")
        assert_partial(resp, data, start, start + piece - 1)
        assembled += resp.body
    assert assembled == data

    again = fetch(server, token, Range=f"bytes=0-{piece - 1}")
    assert (again.status, again.json()) == (410, error(410, "This link has no downloads left"))
    # Small ranges only get the preview allowance, never a second copy.
    extra = 0
    for start in range(0, size, 16 * KiB):
        resp = fetch(server, token, Range=f"bytes={start}-{start + 16 * KiB - 1}")
        if resp.status == 410:
            break
        assert resp.status == 206, resp.body[:200]
        extra += len(resp.body)
    else:
        pytest.fail("every small range was served: a second whole copy came through a one-time link")
    assert extra <= min(PREVIEW_ALLOWANCE, size // 2)
    assert fetch(server, token).status == 410


def test_a_one_time_link_to_an_empty_file_can_be_downloaded(server: Server, alice: Account) -> None:
    name = unique("empty.txt")
    upload(server, alice[1], name, b"")
    link = new_link(server, alice[1], name, max_downloads=1)
    assert link["downloads_left"] == 1
    resp = fetch(server, link_token(link))
    assert (resp.status, resp.body) == (200, b""), resp.body
    assert resp.headers["Content-Length"] == "0"


def test_expired_link_is_410(server: Server, alice: Account) -> None:
    name = unique("expiring.txt")
    upload(server, alice[1], name, b"soon gone")
    link = new_link(server, alice[1], name, expires_in=60)
    token = link_token(link)
    assert fetch(server, token).body == b"soon gone"

    resign_link(server, link["id"], expires=time.time() - 1)
    for resp in (
        fetch(server, token),
        fetch(server, token, Accept=BROWSER_ACCEPT),
        fetch(server, token, "HEAD"),
    ):
        assert resp.status == 410
    resp = fetch(server, token)
    assert resp.json() == error(410, "This link has expired")
    assert b"soon gone" not in resp.body


@needs_curl
def test_password_link_wants_basic_auth_and_the_right_password(server: Server, alice: Account) -> None:
    name, data = unique("locked.bin"), blob(50 * KiB, 10)
    upload(server, alice[1], name, data)
    link = new_link(server, alice[1], name, password=LINK_PASSWORD)
    token = link_token(link)

    missing = fetch(server, token)
    assert (missing.status, missing.json()["status"]) == (401, 401)
    assert missing.headers["WWW-Authenticate"].startswith("Basic ")
    assert data not in missing.body
    bearer = fetch(server, token, Authorization="Bearer " + alice[1])
    assert bearer.status == 401 and bearer.headers["WWW-Authenticate"].startswith("Basic ")

    wrong = fetch(server, token, **basic("not the password"))
    assert (wrong.status, wrong.json()) == (401, error(401, "Wrong password for this link"))
    assert wrong.headers["WWW-Authenticate"].startswith("Basic ")

    assert_full_download(fetch(server, token, **basic(LINK_PASSWORD)), data, name)
    assert_full_download(fetch(server, token, **basic(LINK_PASSWORD, username="anyone")), data, name)

    no_pw = curl(server, "-o", "/dev/null", "-w", "%{http_code}", link["url"])
    assert no_pw.stdout == b"401", no_pw.stderr
    out = curl(server, "-u", f":{LINK_PASSWORD}", "-w", "%{http_code}", "-o", "-", link["url"])
    assert out.returncode == 0, out.stderr
    assert out.stdout == data + b"200"


def test_five_wrong_passwords_lock_a_link_with_a_growing_backoff_even_for_the_right_one(
    server: Server, alice: Account
) -> None:
    name = unique("guarded.txt")
    upload(server, alice[1], name, b"guarded")
    token = link_token(new_link(server, alice[1], name, password=LINK_PASSWORD))
    for attempt in range(5):
        resp = fetch(server, token, **basic(f"guess number {attempt}"))
        assert (resp.status, resp.json()) == (401, error(401, "Wrong password for this link")), attempt

    # Locked now (1 s); a wrong guess after the lock ends doubles it. Wait for a lock of >= 2 s
    # so that the right password below surely arrives while it holds.
    waits: list[int] = []
    deadline = time.monotonic() + 20
    while not waits or waits[-1] < 2:
        assert time.monotonic() < deadline, waits
        resp = fetch(server, token, **basic("another guess"))
        if resp.status == 429:
            assert resp.json() == error(429, "Too many wrong passwords: wait before trying again")
            waits.append(int(resp.headers["Retry-After"]))
            time.sleep(0.2)
        else:
            assert (resp.status, resp.json()) == (401, error(401, "Wrong password for this link"))
    assert all(1 <= wait <= 3600 for wait in waits)

    right = fetch(server, token, **basic(LINK_PASSWORD))
    assert (right.status, right.json()) == (
        429,
        error(429, "Too many wrong passwords: wait before trying again"),
    )
    assert int(right.headers["Retry-After"]) >= 1
    assert b"guarded" not in right.body


def wrong_guesses(server: Server, token: str, threads: int, rounds: int) -> list[int]:
    """``threads`` clients start together, each sending ``rounds`` wrong passwords in a row on
    its own connection; the statuses answered."""
    barrier = threading.Barrier(threads)
    statuses: list[int] = []
    lock = threading.Lock()

    def guesser(i: int) -> None:
        conn = server.connection()
        try:
            conn.connect()
            barrier.wait(timeout=30)
            for n in range(rounds):
                conn.request("GET", f"/s/{token}", headers=basic(f"wrong guess {i} {n}"))
                resp = conn.getresponse()
                resp.read()
                with lock:
                    statuses.append(resp.status)
        finally:
            conn.close()

    workers = [threading.Thread(target=guesser, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    return statuses


def test_wrong_passwords_sent_at_once_all_count_towards_the_lock(server: Server, alice: Account) -> None:
    """Ten guesses in parallel must cost as much as ten in a row: every 401 is a counted failure."""
    name = unique("parallel.txt")
    upload(server, alice[1], name, b"parallel")
    link = new_link(server, alice[1], name, password=LINK_PASSWORD)
    token = link_token(link)
    guesses = 10
    statuses = wrong_guesses(server, token, guesses, 1)
    assert len(statuses) == guesses and set(statuses) <= {401, 429}, statuses
    wrong = statuses.count(401)

    failures = link_row(server, link["id"])["failures"]  # read first: a success resets it
    right = fetch(server, token, **basic(LINK_PASSWORD))
    assert right.status == 429, (
        f"{wrong} wrong passwords were answered 401 in parallel, the link row counts {failures} "
        f"failures, and the right password then got {right.status}"
    )
    assert failures == wrong, f"{wrong} wrong guesses answered 401, {failures} counted"


def test_wrong_passwords_in_overlapping_waves_are_counted_exactly(server: Server, alice: Account) -> None:
    """Guesses that keep arriving while others wait for the link's lock: every guess that was
    checked (401) is counted, none overwrites another's count, none runs beside another."""
    name = unique("waves.txt")
    upload(server, alice[1], name, b"waves")
    link = new_link(server, alice[1], name, password=LINK_PASSWORD)
    token = link_token(link)
    statuses = wrong_guesses(server, token, 8, 6)
    assert len(statuses) == 48 and set(statuses) <= {401, 429}, statuses
    assert link_row(server, link["id"])["failures"] == statuses.count(401)


def test_link_failures_and_downloads_used_survive_a_restart(fresh_server: Server) -> None:
    server = fresh_server.start()
    _, token = server.new_user()
    data = blob(100 * KiB, 11)
    upload(server, token, "kept.bin", data)
    guarded = link_token(new_link(server, token, "kept.bin", password=LINK_PASSWORD))
    once = link_token(new_link(server, token, "kept.bin", max_downloads=1))
    for _ in range(4):
        assert fetch(server, guarded, **basic("wrong password")).status == 401
    assert fetch(server, once).body == data

    server.stop()
    server.start()
    resp = fetch(server, once)
    assert (resp.status, resp.json()) == (410, error(410, "This link has no downloads left"))

    wrong_after_restart = 0
    deadline = time.monotonic() + 20
    while True:
        assert time.monotonic() < deadline
        resp = fetch(server, guarded, **basic("wrong password"))
        if resp.status == 429:
            assert int(resp.headers["Retry-After"]) >= 1
            break
        assert resp.status == 401
        wrong_after_restart += 1
    # Four failures were kept: the first guess after the restart is the fifth, which locks. Had
    # the count restarted from zero, five more 401s would have come first.
    assert wrong_after_restart < 5, wrong_after_restart


def test_revoked_link_is_410_and_an_unknown_one_404(server: Server, alice: Account) -> None:
    name = unique("revoke.txt")
    upload(server, alice[1], name, b"revoke me")
    keep, gone = new_link(server, alice[1], name), new_link(server, alice[1], name)
    resp = server.request("DELETE", f"/links/{gone['id']}", token=alice[1])
    assert (resp.status, resp.json()) == (200, {"message": "Link revoked", "id": gone["id"]})

    revoked = fetch(server, link_token(gone))
    assert (revoked.status, revoked.json()) == (410, {"message": "This link was revoked", "status": 410})
    unknown = fetch(server, "B" * 24)
    assert (unknown.status, unknown.json()) == (404, LINK_NOT_FOUND)
    assert fetch(server, link_token(gone), "HEAD").status == 410
    assert [link["id"] for link in list_links(server, alice[1])] == [keep["id"]]
    assert fetch(server, link_token(keep)).body == b"revoke me"

    again = server.request("DELETE", f"/links/{gone['id']}", token=alice[1])
    assert (again.status, again.json()) == (404, LINK_NOT_FOUND)


def test_deleting_the_file_removes_its_links_for_good(server: Server, alice: Account) -> None:
    name = unique("temporary.txt")
    upload(server, alice[1], name, b"temporary")
    token = link_token(new_link(server, alice[1], name, max_downloads=5))
    assert server.request("DELETE", f"/files/{q(name)}", token=alice[1]).status == 200

    resp = fetch(server, token)
    assert (resp.status, resp.json()) == (410, {"message": "This link was revoked", "status": 410})
    assert list_links(server, alice[1]) == []
    upload(server, alice[1], name, b"a new file, same name")
    resp = fetch(server, token)
    assert (resp.status, resp.json()) == (410, {"message": "This link was revoked", "status": 410})


def test_link_follows_a_replacement_of_the_file(server: Server, alice: Account) -> None:
    name = unique("living.txt")
    upload(server, alice[1], name, b"version one")
    token = link_token(new_link(server, alice[1], name))
    assert fetch(server, token).body == b"version one"
    upload(server, alice[1], name, b"version two, longer")
    assert_full_download(fetch(server, token), b"version two, longer", name)


def test_browser_gets_an_escaped_landing_page_and_dl_1_downloads(server: Server, alice: Account) -> None:
    # Names cannot hold "/", so no closing tags; an attribute-breaking opening tag will do.
    name = f"<img src=x onerror='alert(1)' alt=\"&\">{uuid.uuid4().hex[:6]}.txt"
    data = b"FILE-CONTENT-" + uuid.uuid4().hex.encode()
    upload(server, alice[1], name, data)
    token = link_token(new_link(server, alice[1], name, max_downloads=1))

    for _ in range(3):  # a preview bot and a browser or two: free
        page = fetch(server, token, Accept=BROWSER_ACCEPT)
        assert page.status == 200
        assert page.headers["Content-Type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["Content-Security-Policy"]
        assert "Content-Disposition" not in page.headers
        text = page.body.decode()
        assert html.escape(name) in text
        assert "<img" not in text and name not in text
        assert data not in page.body
        assert "?dl=1" in text

    download = fetch(server, token, query="?dl=1", Accept=BROWSER_ACCEPT)
    assert_full_download(download, data, name)
    assert fetch(server, token, query="?dl=1", Accept=BROWSER_ACCEPT).status == 410


def test_other_users_cannot_list_or_revoke_your_links(server: Server, alice: Account, bob: Account) -> None:
    name = unique("mine.txt")
    upload(server, alice[1], name, b"mine")
    link = new_link(server, alice[1], name)
    assert list_links(server, bob[1]) == []
    resp = server.request("DELETE", f"/links/{link['id']}", token=bob[1])
    assert (resp.status, resp.json()) == (404, LINK_NOT_FOUND)
    assert server.request("GET", "/links").status == 401
    assert server.request("DELETE", f"/links/{link['id']}").status == 401
    assert [entry["id"] for entry in list_links(server, alice[1])] == [link["id"]]
    assert fetch(server, link_token(link)).body == b"mine"


# --------------------------------------------------------------------------- tampering


def test_a_grant_row_written_into_the_database_gives_no_access(
    server: Server, alice: Account, bob: Account, carol: Account, shared_file: tuple[str, bytes]
) -> None:
    name, data = shared_file
    alice_id, bob_id, carol_id = (user_id(server, who[0]) for who in (alice, bob, carol))
    with database(server) as conn:
        (real_tag, key_id) = conn.execute(
            "SELECT tag, key_id FROM grants WHERE owner = ? AND name = ? AND grantee = ?",
            (alice_id, name, bob_id),
        ).fetchone()
        conn.execute(
            "INSERT INTO grants (owner, name, grantee, created, key_id, tag) VALUES (?, ?, ?, ?, ?, ?)",
            (alice_id, name, carol_id, time.time(), key_id, bytes(32)),
        )
    resp = shared_get(server, carol[1], alice[0], name)
    assert (resp.status, resp.json()) == (404, NOT_FOUND)

    # Bob's genuine tag copied into carol's row does not fit it either.
    with database(server) as conn:
        conn.execute(
            "UPDATE grants SET tag = ? WHERE owner = ? AND name = ? AND grantee = ?",
            (real_tag, alice_id, name, carol_id),
        )
    resp = shared_get(server, carol[1], alice[0], name)
    assert (resp.status, resp.json()) == (404, NOT_FOUND)
    assert shared_list(server, carol[1]) == {"files": []}
    assert grantees(server, alice[1], name).json() == {"filename": name, "shared_with": [bob[0]]}
    assert shared_get(server, bob[1], alice[0], name).body == data


def test_edited_link_rows_stop_working(server: Server, alice: Account) -> None:
    name, other = unique("edited.txt"), unique("other.txt")
    upload(server, alice[1], name, b"edited")
    upload(server, alice[1], other, b"the other file")
    once = new_link(server, alice[1], name, max_downloads=1)
    renamed = new_link(server, alice[1], name)
    extended = new_link(server, alice[1], name, expires_in=60)
    with database(server) as conn:
        conn.execute("UPDATE links SET max_downloads = 1000000 WHERE id = ?", (once["id"],))
        conn.execute("UPDATE links SET name = ? WHERE id = ?", (other, renamed["id"]))
        conn.execute("UPDATE links SET expires = expires + 86400 * 300 WHERE id = ?", (extended["id"],))
    for link in (once, renamed, extended):
        resp = fetch(server, link_token(link))
        assert (resp.status, resp.json()) == (404, LINK_NOT_FOUND), link["id"]
        assert b"the other file" not in resp.body


def test_a_link_row_copied_with_another_token_hash_gives_no_link(server: Server, alice: Account) -> None:
    name = unique("copied.txt")
    upload(server, alice[1], name, b"copied")
    link = new_link(server, alice[1], name)
    attacker_token = "attacker-" + uuid.uuid4().hex
    attacker_hash = hashlib.sha256(attacker_token.encode()).digest()
    columns, rest = ", ".join(LINK_COLUMNS), ", ".join(LINK_COLUMNS[2:])  # constants: id, token_hash first
    with database(server) as conn:
        conn.execute(
            f"INSERT INTO links ({columns}) SELECT ?, ?, {rest} FROM links WHERE id = ?",  # noqa: S608
            ("forged" + uuid.uuid4().hex[:8], attacker_hash, link["id"]),
        )
    resp = fetch(server, attacker_token)
    assert (resp.status, resp.json()) == (404, LINK_NOT_FOUND)
    assert fetch(server, link_token(link)).body == b"copied"

    # Re-pointing the genuine row at the attacker's token kills it instead of handing it over.
    with database(server) as conn:
        conn.execute("DELETE FROM links WHERE token_hash = ?", (attacker_hash,))
        conn.execute("UPDATE links SET token_hash = ? WHERE id = ?", (attacker_hash, link["id"]))
    resp = fetch(server, attacker_token)
    assert (resp.status, resp.json()) == (404, LINK_NOT_FOUND)
    assert fetch(server, link_token(link)).status == 404
