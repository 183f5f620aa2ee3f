"""The OpenAPI document at /openapi.json against the live server, with schemathesis.

Every operation gets generated requests (schemathesis' examples, coverage and fuzzing phases,
valid and invalid inputs, deterministic), authenticated with a real token. A reply fails the
test if it is a 5xx, or if its status, Content-Type, headers or body are not what the document
says, or if the server accepts what the document forbids (or, where the schema can say it,
refuses what it allows). Random file names, link tokens and upload ids almost always miss, so
each request for an operation with path parameters is sent a second time at a real resource
(a file, a share, a link, a resumable upload), keeping its generated headers and body: Range
and conditional headers against a real file, generated tus bodies against a real upload.
"""

import base64
import http.client
import http.cookiejar
import json
import re
import ssl
import tomllib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import jsonschema_rs
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import vault
from handlers import make_app
from handlers.base import Context
from handlers.openapi import DOCUMENT
from handlers.pages import assets
from handlers.web import CSRF_HEADER, DOWNLOAD_COOKIE, REFRESH_COOKIE
from tests.server import Server

MAX_EXAMPLES = 25
# Checks for a request re-aimed at a real resource: its generated mode no longer describes it.
CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Where a valid request can still be refused for a reason no schema states: a digest header
# that does not match the body, a base64 file name in Upload-Metadata that is not a valid name.
NO_POSITIVE_ACCEPTANCE = {"POST /upload", "PUT /upload/{filename}", "POST /tus"}
TUS = {"Tus-Resumable": "1.0.0"}
# Operations that end the caller's sessions (once described) run with a throwaway account's
# token, so the rest of the run keeps a valid one (each replay below checks that it does).
SESSION_ENDING = {"POST /logout", "POST /logout/all", "POST /password", "POST /web/session/password"}

schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")


@dataclass
class World:
    """Real resources for the caller (``token``) and for another user who shares with them."""

    server: Server
    session: requests.Session
    token: str
    other: str
    other_token: str
    link_token: str
    tus_id: str
    seen: defaultdict[str, set[int]] = field(default_factory=lambda: defaultdict(set))

    def saw(self, label: str, response: Any) -> None:
        self.seen[label].add(response.status_code)

    def call(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {token or self.token}", **kwargs.pop("headers", {})}
        return self.session.request(method, self.server.url + path, headers=headers, timeout=30, **kwargs)

    def put(self, name: str, data: bytes, token: str | None = None) -> None:
        assert self.call("PUT", f"/upload/{name}", token, data=data).status_code == 201

    def new_link(self) -> tuple[str, str]:
        resp = self.call("POST", "/files/a.txt/links", json={})
        assert resp.status_code == 201, resp.text
        return resp.json()["id"], resp.json()["url"].rsplit("/", 1)[1]

    def new_tus(self, length: int) -> str:
        meta = "filename " + base64.b64encode(b"resumable.bin").decode()
        headers = {**TUS, "Upload-Length": str(length), "Upload-Metadata": meta}
        resp = self.call("POST", "/tus", headers=headers)
        assert resp.status_code == 201, resp.text
        return str(resp.headers["Location"].rsplit("/", 1)[1])

    def refresh_token(self) -> str:
        """A fresh refresh token, of a throwaway account's session."""
        name, _ = self.server.new_user()
        resp = self.server.request("POST", "/login", {"username": name, "password": "correct horse battery"})
        assert resp.status == 200, resp.body
        return str(resp.json()["refresh_token"])

    def web_refresh_cookie(self) -> str:
        """A fresh web session's refresh cookie, of a throwaway account."""
        name, _ = self.server.new_user()
        body = {"username": name, "password": "correct horse battery"}
        resp = self.session.post(self.server.url + "/web/session", json=body, headers={CSRF_HEADER: "1"})
        assert resp.status_code == 200, resp.text
        return str(resp.cookies[REFRESH_COOKIE])

    def target(self, label: str) -> dict[str, str] | None:
        """Path parameters naming a real resource for this operation (made afresh where the
        operation destroys it), or None where the operation has no path parameters."""
        method, path = label.split(" ", 1)
        if path.startswith(("/shared/", "/web/dl/shared/")):
            return {"owner": self.other, "filename": "b.txt"}
        if path.startswith("/static/"):
            return {"version": assets().version, "name": "app.js"}
        if path == "/files/{filename}":
            self.put("victim.txt", b"delete me")
            return {"filename": "victim.txt"}
        if path == "/files/{filename}/shares/{username}":
            assert self.call("POST", "/files/a.txt/shares", json={"username": self.other}).status_code == 201
            return {"filename": "a.txt", "username": self.other}
        if path == "/upload/{filename}":
            return {"filename": "put.bin"}
        if "{filename}" in path:
            return {"filename": "a.txt"}
        if path == "/links/{id}":
            return {"id": self.new_link()[0]}
        if path == "/s/{token}":
            return {"token": self.link_token}
        if path == "/tus/{id}":
            return {"id": self.new_tus(1 << 20) if method in ("PATCH", "DELETE") else self.tus_id}
        return None


@pytest.fixture(scope="module")
def world(server: Server) -> World:
    session = requests.Session()
    session.verify = str(server.cert)
    session.trust_env = False  # REQUESTS_CA_BUNDLE would override verify; loopback needs no proxy
    # Keep no cookie: the web session routes set some, and each request names its own.
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    # A fresh connection per request: after an error answered before the body was read, the
    # server closes the connection without saying so (test_early_error_says_connection_close).
    session.headers["Connection"] = "close"
    schema.config.update(tls_verify=str(server.cert))  # for the checks' own probes
    _, token = server.new_user()
    other, other_token = server.new_user()
    w = World(server, session, token, other, other_token, "", "")
    w.put("a.txt", bytes(range(256)) * 40)
    w.put("b.txt", b"shared with you\n", token=other_token)
    grant = w.call("POST", "/files/b.txt/shares", other_token, json={"username": server_username(w)})
    assert grant.status_code == 201, grant.text
    w.link_token = w.new_link()[1]
    # The document's example login, so that the examples phase logs in (the coverage phase,
    # which runs first, registers that name with passwords of its own).
    example = DOCUMENT["components"]["schemas"]["Login"]["examples"][0]
    assert server.request("POST", "/register", example).status in (201, 409)
    w.tus_id = w.new_tus(100)
    return w


def server_username(w: World) -> str:
    return str(w.call("GET", "/me").json()["username"])


# The document as served (test_document_is_served_without_auth_and_valid checks they are equal);
# schemathesis' lazy from_fixture loader does not run under pytest 9.2, so the schema is loaded
# here and each request is aimed at the live server by the test.
schema = schemathesis.openapi.from_dict(json.loads(json.dumps(DOCUMENT)))
schema.config.generation.update(max_examples=MAX_EXAMPLES, deterministic=True)
# tus answers a missing Tus-Resumable with 412 (tus 1.0.0), not 400.
# The web app's session routes answer a missing X-Vault-Web header with 403 (CSRF).
schema.config.checks.missing_required_header.expected_statuses = ["400", "401", "403", "412"]
# An invalid request can be refused for its size (413), a tus protocol header (412), a tus
# checksum (460) or a range (416) before anything else looks at it.
schema.config.checks.negative_data_rejection.expected_statuses = [
    *schema.config.checks.negative_data_rejection.expected_statuses,
    "412",
    "413",
    "416",
    "460",
]


@schema.hook("filter_body")
def password_fits(context: Any, body: Any) -> bool:
    """A password is 8+ characters but at most 72 UTF-8 bytes, which no JSON Schema keyword can
    say (maxLength counts characters): drop valid-looking bodies over the byte limit."""
    if not isinstance(body, dict):
        return True
    passwords = [body.get("password"), body.get("new_password")]
    return all(not isinstance(p, str) or len(p.encode("utf-8", "replace")) <= 72 for p in passwords)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_document(case: Any, world: World) -> None:
    label = f"{case.method.upper()} {case.path}"
    excluded = [positive_data_acceptance] if label in NO_POSITIVE_ACCEPTANCE else []
    token = world.server.new_user()[1] if label in SESSION_ENDING else world.token
    call = {"base_url": world.server.url, "session": world.session}
    call["headers"] = {"Authorization": f"Bearer {token}"}  # a fresh dict: schemathesis adds to it
    world.saw(label, case.call_and_validate(**call, excluded_checks=excluded))
    if label == "POST /token/refresh":  # and with a real refresh token, keeping the other fields
        body = case.body if isinstance(case.body, dict) else {}
        case.body = {**body, "refresh_token": world.refresh_token()}
        world.saw(label, case.call_and_validate(**call, checks=CONFORMANCE))
    if label == "POST /web/session/refresh":  # and with a real refresh cookie
        case.cookies = {**(case.cookies or {}), REFRESH_COOKIE: world.web_refresh_cookie()}
        world.saw(label, case.call_and_validate(**call, checks=CONFORMANCE))
    if "/web/dl/" in label:  # the download cookie is the access token
        case.cookies = {**(case.cookies or {}), DOWNLOAD_COOKIE: token}
    target = world.target(label)
    if target is None or case.method.lower() not in DOCUMENT["paths"][case.path]:
        return  # nothing to aim at, or a probe with an undeclared method
    case.path_parameters = {**(case.path_parameters or {}), **target}
    if label == "PATCH /tus/{id}":
        case.headers = {**(case.headers or {}), "Upload-Offset": "0"}
    call["headers"] = {"Authorization": f"Bearer {token}"}
    world.saw(label, case.call_and_validate(**call, checks=CONFORMANCE))
    if label == "GET /s/{token}":  # and as a browser, without ?dl: the landing page
        case.query = {}
        call["headers"] = {"Authorization": f"Bearer {token}", "Accept": "text/html"}
        response = case.call_and_validate(**call, checks=CONFORMANCE)
        assert response.status_code != 200 or "text/html" in response.headers["content-type"][0]


def test_every_operation_succeeded_at_least_once(world: World) -> None:
    """The run above reached every operation's success path, its token valid throughout (a
    revoked token would leave a run of nothing but 401s that still passes)."""
    if not world.seen:
        pytest.skip("only after test_api_conforms_to_its_document")
    operations = [
        f"{m.upper()} {p}" for p, item in DOCUMENT["paths"].items() for m in item if m != "parameters"
    ]
    never = [label for label in operations if not any(200 <= s < 300 for s in world.seen[label])]
    assert never == []
    assert world.call("GET", "/me").status_code == 200


def patterns(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
        return found + [p for value in node.values() for p in patterns(value)]
    if isinstance(node, list):
        return [p for value in node for p in patterns(value)]
    return []


def test_every_pattern_is_an_ecma_regex() -> None:
    """schemathesis drops a pattern it cannot compile (a surrogate range, say) without a word."""
    found = patterns(DOCUMENT)
    assert len(found) > 5
    for pattern in found:
        jsonschema_rs.validator_for({"type": "string", "pattern": pattern})


def test_document_is_served_without_auth_and_valid(server: Server) -> None:
    resp = server.request("GET", "/openapi.json")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    served = resp.json()
    assert served == json.loads(json.dumps(DOCUMENT))
    schemathesis.openapi.from_dict(served).validate()  # the OpenAPI 3.1 meta-schema


def test_document_version_is_the_package_version() -> None:
    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    assert DOCUMENT["info"]["version"] == vault.__version__ == project["project"]["version"]


# Routes their author describes in handlers/openapi.py (issue 6, tokens); drop each from here
# as it is described. The test fails either way: a new route left out, or a stale entry here.
NOT_YET_DESCRIBED: set[str] = set()


def test_every_route_is_described() -> None:
    """Each route of make_app's table has a path in the document, and each path a route."""
    app = make_app(cast(Context, None))
    routes = [rule.matcher.regex for rule in app.wildcard_router.rules]  # type: ignore[attr-defined]
    # A sample URL for each described path: parameters filled with a plausible value.
    samples = {path: re.sub(r"\{[^}]+\}", "sample0123456789abcd", path) for path in DOCUMENT["paths"]}
    undescribed = {
        r.pattern.removesuffix("$") for r in routes if not any(r.fullmatch(url) for url in samples.values())
    }
    assert undescribed == NOT_YET_DESCRIBED, "routes missing from handlers/openapi.py (or described now)"
    unrouted = [path for path, url in samples.items() if not any(r.fullmatch(url) for r in routes)]
    assert unrouted == [], "paths in handlers/openapi.py that no route serves"


# Found by the schemathesis run: an error answered before the request body was read (in
# prepare(): a bad name, an unknown upload, a body over max_json_size) makes Tornado close the
# connection after the reply, and the reply did not say "Connection: close" (Tornado decides
# only after the headers are out), so a keep-alive client (requests, tuspy) sent its next
# request on a dead connection. handlers/base.py write_error now says Connection: close when
# the body has not been read; these check that the client is told, or the connection works.
@pytest.mark.parametrize(
    ("method", "path", "headers", "size"),
    [
        ("PUT", "/upload/%00", {}, 100),  # 400 Invalid filename
        (
            "PATCH",
            "/tus/nosuch",
            {**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
            100,
        ),
        ("POST", "/register", {"Content-Type": "application/json"}, 70_000),  # 413 over max_json_size
    ],
)
def test_early_error_says_connection_close(
    server: Server, token: str, method: str, path: str, headers: dict[str, str], size: int
) -> None:
    conn = server.connection()
    try:
        try:
            conn.request(
                method, path, body=b"x" * size, headers={"Authorization": f"Bearer {token}", **headers}
            )
            first = conn.getresponse()
            first.read()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected, ssl.SSLEOFError):
            return  # the server answered and closed while the body was still going out: the client knows
        assert 400 <= first.status < 500
        if (first.getheader("Connection") or "").lower() == "close":
            return  # the client was told
        conn.request("GET", "/health")
        assert conn.getresponse().status == 200  # or the connection must still work
    finally:
        conn.close()


# Found by the schemathesis run (its unsupported_method check): a 405 must list the allowed
# methods in Allow (RFC 9110 15.5.6), and come before anything the handler's prepare() checks:
# PUT /tus answered 412 (no Tus-Resumable) and PUT /files/<name>/links 401 (no token).
@pytest.mark.parametrize(
    ("method", "path", "allowed", "token_given"),
    [
        ("PATCH", "/files", "GET", True),
        ("PUT", "/tus", "POST, OPTIONS", False),
        ("PUT", "/tus", "POST, OPTIONS", True),
        ("DELETE", "/upload", "POST", False),
        ("GET", "/upload/a.bin", "PUT", False),
        ("PUT", "/files/a.bin/links", "POST", False),
        ("POST", "/health", "GET", False),
    ],
)
def test_method_not_allowed_is_405_with_allow_before_any_other_check(
    server: Server, token: str, method: str, path: str, allowed: str, token_given: bool
) -> None:
    resp = server.request(method, path, token=token if token_given else None)
    assert (resp.status, resp.json()) == (405, {"message": "Method not allowed", "status": 405})
    assert resp.headers.get("Allow") == allowed


def test_an_unknown_route_is_404_for_every_method(server: Server) -> None:
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        resp = server.request(method, "/no/such/route")
        assert (resp.status, resp.json()) == (404, {"message": "Not found", "status": 404}), method
