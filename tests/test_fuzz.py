"""Property tests (hypothesis) of every header and body parser: whatever a client sends, a
parser returns a valid result or raises a domain error (a 4xx), never anything else (a 500).
The last test sends generated headers to a live server and checks that no answer is a 5xx and
every error is the JSON error."""

import string
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tornado.httputil import HTTPHeaders

from handlers.files import content_disposition, expected_digest
from handlers.headers import declared_length, parse_length
from handlers.ranges import if_range_holds, none_match, parse_range
from handlers.tus import parse_checksum, parse_metadata
from tests.server import Server
from vault.errors import InputError, RangeNotSatisfiable
from vault.multipart import (
    MultipartParser,
    PartData,
    PartStart,
    boundary_from_content_type,
    parse_disposition,
)
from vault.names import check_filename

# Header values as Tornado hands them over: latin-1 text without CR or LF.
header_text = st.text(st.characters(min_codepoint=0, max_codepoint=255, blacklist_characters="\r\n"))
digits_and_noise = st.text(alphabet=string.digits + " -=,bytes\u00b2\u0661+", max_size=60)
sizes = st.integers(min_value=0, max_value=2**63)


@given(st.one_of(header_text, digits_and_noise.map(lambda t: "bytes=" + t)), sizes)
def test_parse_range_gives_a_range_inside_the_file_or_416(header: str, size: int) -> None:
    try:
        result = parse_range(header, size)
    except RangeNotSatisfiable:
        return
    if result is not None:
        start, end = result
        assert 0 <= start < end <= size


@given(st.one_of(header_text, digits_and_noise, st.text()))
def test_length_headers_are_plain_integers_or_400(value: str) -> None:
    try:
        number = parse_length(value, "Upload-Length")
    except InputError:
        return
    assert number >= 0 and value.isascii() and value.isdigit()
    assert declared_length(HTTPHeaders({"Content-Length": value})) == number


@given(header_text, header_text)
def test_validators_answer_a_bool(header: str, etag: str) -> None:
    assert isinstance(none_match(header, etag), bool)
    assert isinstance(if_range_holds(header, etag, "Wed, 02 Dec 2026 10:00:00 GMT"), bool)


@given(header_text)
def test_tus_metadata_and_checksum_parse_or_400(value: str) -> None:
    for parser in (parse_metadata, parse_checksum):
        try:
            parser(value)
        except InputError:
            pass


@given(header_text, st.sampled_from(["Repr-Digest", "Content-Digest"]))
def test_digest_headers_give_32_bytes_or_400(value: str, header: str) -> None:
    try:
        digest = expected_digest(HTTPHeaders({header: value}))
    except InputError:
        return
    assert digest is None or len(digest) == 32


@given(st.one_of(st.text(), st.binary(), st.integers(), st.none()))
def test_file_names_are_checked_and_always_fit_a_header(name: Any) -> None:
    try:
        checked = check_filename(name)
    except InputError:
        return
    content_disposition(checked).encode("latin-1")  # Tornado writes headers as latin-1


@given(header_text)
def test_multipart_headers_parse_or_400(value: str) -> None:
    for parser in (parse_disposition, boundary_from_content_type):
        try:
            parser(value)
        except InputError:
            pass


@given(st.binary(max_size=2000), st.lists(st.integers(min_value=1, max_value=300), max_size=20))
def test_multipart_parser_on_any_bytes_gives_events_or_400(body: bytes, cuts: list[int]) -> None:
    parser = MultipartParser(b"xyzzy")
    try:
        rest = body
        for cut in cuts:
            parser.feed(rest[:cut])
            rest = rest[cut:]
        parser.feed(rest)
        parser.finish()
    except InputError:
        pass


@given(st.binary(max_size=3000), st.lists(st.integers(min_value=1, max_value=500), max_size=20))
def test_multipart_parser_returns_the_file_however_the_body_is_cut(data: bytes, cuts: list[int]) -> None:
    body = (
        b'--xyzzy\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n\r\n'
        + data
        + b"\r\n--xyzzy--\r\n"
    )
    parser, got, starts, rest = MultipartParser(b"xyzzy"), bytearray(), 0, body
    for cut in [*cuts, len(body)]:
        for event in parser.feed(rest[:cut]):
            if isinstance(event, PartData):
                got += event.data
            starts += isinstance(event, PartStart)
        rest = rest[cut:]
    parser.finish()
    assert (bytes(got), starts) == (data, 1)


FUZZED_HEADERS = (
    "Range",
    "If-Range",
    "If-None-Match",
    "Authorization",
    "Repr-Digest",
    "Upload-Metadata",
    "Upload-Checksum",
    "Upload-Offset",
    "Upload-Length",
    "Tus-Resumable",
    "X-HTTP-Method-Override",
    "Content-Type",
    "Accept",
)
visible = st.text(
    st.characters(min_codepoint=32, max_codepoint=255, blacklist_characters="\x7f"), max_size=80
)


@pytest.fixture(scope="module")
def targets(server: Server) -> dict[str, str]:
    name, token = server.new_user()
    assert server.put_file(token, "fuzz.bin", b"0123456789" * 10).status == 201
    link = server.request("POST", "/files/fuzz.bin/links", {"password": "fuzz password"}, token=token)
    return {"token": token, "link": "/s/" + str(link.json()["url"]).rsplit("/", 1)[1], "user": name}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from(["GET /download/fuzz.bin", "HEAD /download/fuzz.bin", "GET LINK", "POST /login",
                     "POST /tus", "PATCH /tus/abc", "PUT /upload/f.bin", "GET /files", "POST /register"]),
    st.dictionaries(st.sampled_from(FUZZED_HEADERS), visible, max_size=4),
    st.binary(max_size=200),
    st.booleans(),
)  # fmt: skip
def test_live_server_answers_generated_requests_without_5xx(
    server: Server, targets: dict[str, str], route: str, headers: dict[str, str], body: bytes, auth: bool
) -> None:
    method, path = route.split(" ")
    path = targets["link"] if path == "LINK" else path
    if path == "/register":
        body = b'{"username": "f%s", "password": %s}' % (uuid.uuid4().hex[:8].encode(), body[:20] or b"1")
    conn = server.connection()
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        if auth and "Authorization" not in headers:
            conn.putheader("Authorization", f"Bearer {targets['token']}")
        for key, value in headers.items():
            conn.putheader(key, value.encode("latin-1"))
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        answer = resp.read()
    finally:
        conn.close()
    assert resp.status < 500, (resp.status, answer[:300])
    if resp.status >= 400 and method != "HEAD":
        assert resp.getheader("Content-Type", "").startswith("application/json"), answer[:200]
        assert b'"status": %d' % resp.status in answer
