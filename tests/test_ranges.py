"""Byte ranges and validators on downloads: the pure functions of handlers/ranges.py, the same
rules over real HTTPS (GET and HEAD), a real ``curl -C -`` resume, and a check that a range
read fetches exactly the segments it needs and no others."""

import asyncio
import base64
import email.utils
import hashlib
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from handlers.ranges import if_range_holds, none_match, parse_range
from tests import incore
from tests.marks import needs_curl
from tests.server import Response, Server
from vault.errors import RangeNotSatisfiable
from vault.files import FileService
from vault.store import Store

S = 1024 * 1024  # the server's default segment size
SIZE = 2 * S + 123  # three segments, the last one short
DATA = random.Random(9110).randbytes(SIZE)
NAME = "ranges.bin"
CURL_TIMEOUT = 60

# --------------------------------------------------------------------------- helpers


def b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def expected_slice(header: str, size: int) -> tuple[int, int] | None | str:
    """An independent model of a single byte range in Python slice terms: (start, end), None for
    "ignore the header, send everything", or "416"."""
    spec = header.removeprefix("bytes=")
    if not header.startswith("bytes=") or "," in spec or spec.count("-") != 1:
        return None
    first, last = spec.split("-")
    if not (first.isdigit() or first == "") or not (last.isdigit() or last == "") or first == last == "":
        return None
    if first == "":
        n = int(last)
        if n == 0 or size == 0:
            return "416"
        data = range(size)[-n:]  # the last n positions, Python-style
        return data.start, data.stop
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        return "416"
    end = size if last == "" else int(last) + 1
    window = range(size)[start:end]
    return window.start, window.stop


def get(server: Server, token: str, name: str = NAME, **headers: str) -> Response:
    return server.request("GET", "/download/" + name, headers=_headers(headers), token=token)


def head(server: Server, token: str, name: str = NAME, **headers: str) -> Response:
    return server.request("HEAD", "/download/" + name, headers=_headers(headers), token=token)


def _headers(kwargs: dict[str, str]) -> dict[str, str]:
    return {key.replace("_", "-"): value for key, value in kwargs.items()}


def assert_partial(resp: Response, start: int, end: int, data: bytes = DATA) -> None:
    """A 206 for bytes [start, end) of ``data``, with the headers a client relies on."""
    assert resp.status == 206, (resp.status, resp.body[:200])
    assert resp.headers["Content-Range"] == f"bytes {start}-{end - 1}/{len(data)}"
    assert resp.headers["Content-Length"] == str(end - start)
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert resp.headers["Repr-Digest"] == f"sha-256=:{b64_sha256(data)}:"
    assert resp.headers["ETag"].startswith('"')  # a 206 carries the validators a 200 would
    assert "Last-Modified" in resp.headers
    assert resp.body == data[start:end]


def assert_full(resp: Response, data: bytes = DATA) -> None:
    assert resp.status == 200, (resp.status, resp.body[:200])
    assert "Content-Range" not in resp.headers
    assert resp.headers["Content-Length"] == str(len(data))
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert resp.headers["Repr-Digest"] == f"sha-256=:{b64_sha256(data)}:"
    assert resp.body == data


def assert_416(resp: Response, size: int = SIZE) -> None:
    assert resp.status == 416, (resp.status, resp.body[:200])
    assert resp.headers["Content-Range"] == f"bytes */{size}"
    assert resp.json() == {"message": "Range not satisfiable", "status": 416}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def owner(server: Server) -> str:
    """A token of a user of this module's own, who holds DATA as NAME."""
    _, token = server.new_user()
    assert server.put_file(token, NAME, DATA).status == 201
    return token


# --------------------------------------------------------------------------- parse_range (unit)


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-0", 10, (0, 1)),
        ("bytes=0-9", 10, (0, 10)),
        ("bytes=2-5", 10, (2, 6)),
        ("bytes=3-", 10, (3, 10)),
        ("bytes=9-", 10, (9, 10)),
        ("bytes=9-9", 10, (9, 10)),
        ("bytes=5-1000", 10, (5, 10)),
        ("bytes=-1", 10, (9, 10)),
        ("bytes=-4", 10, (6, 10)),
        ("bytes=-10", 10, (0, 10)),
        ("bytes=-1000", 10, (0, 10)),
        ("bytes=0-", 1, (0, 1)),
        ("bytes=-1", 1, (0, 1)),
        (" bytes = 2 - 5 ", 10, (2, 6)),
        ("bytes=0-99999999999999999999999", 10, (0, 10)),
    ],
)
def test_parse_range_of_a_single_range_is_the_half_open_slice(
    header: str, size: int, expected: tuple[int, int]
) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    "header",
    [
        "bytes=5-3",  # reversed: invalid, so ignored
        "bytes=1-0",
        "bytes=0-1,3-4",  # multi-range: the whole file instead
        "bytes=0-1, 5-",
        "bytes=-",
        "bytes=",
        "bytes=a-b",
        "bytes=1-2-3",
        "bytes=--1",
        "bytes=-1-",
        "bytes=0x10-",
        "bytes=1.5-2",
        "items=0-5",
        "0-5",
        "",
        "bytes 0-5",
    ],
)
def test_parse_range_ignores_invalid_multi_and_foreign_unit_ranges(header: str) -> None:
    assert parse_range(header, 10) is None


def test_parse_range_without_header_is_the_whole_file() -> None:
    assert parse_range(None, 10) is None


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=10-", 10),  # starts just past the last byte
        ("bytes=10-10", 10),
        ("bytes=11-20", 10),
        ("bytes=1000-", 10),
        ("bytes=-0", 10),  # an empty suffix
        ("bytes=0-", 0),  # nothing of an empty file can be satisfied
        ("bytes=0-0", 0),
        ("bytes=-1", 0),
        ("bytes=-0", 0),
    ],
)
def test_parse_range_beyond_the_end_or_of_an_empty_file_is_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as info:
        parse_range(header, size)
    assert info.value.size == size


def test_parse_range_positions_past_19_digits_are_beyond_any_file() -> None:
    """Past MAX_DIGITS a position is 10**MAX_DIGITS, never int() of thousands of digits (which
    Python refuses past 4300): the range runs to the end, or starts past it."""
    for digits in (20, 5000):
        assert parse_range("bytes=0-" + "9" * digits, 1000) == (0, 1000)
        assert parse_range("bytes=-" + "9" * digits, 1000) == (0, 1000)
        with pytest.raises(RangeNotSatisfiable):
            parse_range("bytes=" + "9" * digits + "-", 1000)
    assert parse_range("bytes=0-" + "0" * 18 + "9", 1000) == (0, 10)  # 19 digits: read as is


@pytest.mark.parametrize("seed", range(5))
def test_parse_range_agrees_with_python_slicing_on_random_ranges(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(400):
        size = rng.choice([0, 1, 2, 15, 16, 17, rng.randrange(0, 5000)])
        data = rng.randbytes(size)
        a, b = rng.randrange(0, size + 20), rng.randrange(0, size + 20)
        header = rng.choice([f"bytes={a}-{b}", f"bytes={a}-", f"bytes=-{b}"])
        expected = expected_slice(header, size)
        if expected == "416":
            with pytest.raises(RangeNotSatisfiable):
                parse_range(header, size)
            continue
        got = parse_range(header, size)
        assert got == expected, (header, size)
        if got is not None:
            start, end = got
            assert 0 <= start < end <= size, (header, size)
            if header.startswith("bytes=-"):
                assert data[start:end] == data[-b:], header
            elif header.endswith("-"):
                assert data[start:end] == data[a:], header
            else:
                assert data[start:end] == data[a : b + 1], header


# --------------------------------------------------------------------------- validators (unit)

ETAG = '"0123456789abcdef0123456789abcdef"'
LAST_MODIFIED = "Fri, 27 Nov 2026 08:00:00 GMT"


@pytest.mark.parametrize(
    "header",
    [ETAG, "W/" + ETAG, "*", f'"other", {ETAG}', f'"other",W/{ETAG} , "more"', f" {ETAG} "],
)
def test_none_match_is_true_for_the_etag_a_weak_copy_a_list_or_star(header: str) -> None:
    assert none_match(header, ETAG) is True


@pytest.mark.parametrize("header", [None, "", '"other"', ETAG.strip('"'), '"other", W/"else"', ","])
def test_none_match_is_false_without_the_etag(header: str | None) -> None:
    assert none_match(header, ETAG) is False


def test_if_range_holds_without_header_or_for_the_current_etag_or_date() -> None:
    assert if_range_holds(None, ETAG, LAST_MODIFIED) is True
    assert if_range_holds(ETAG, ETAG, LAST_MODIFIED) is True
    assert if_range_holds(f"  {ETAG} ", ETAG, LAST_MODIFIED) is True
    assert if_range_holds(LAST_MODIFIED, ETAG, LAST_MODIFIED) is True


@pytest.mark.parametrize(
    "header",
    [
        '"another"',
        "W/" + ETAG,  # If-Range compares strongly: a weak validator never matches
        "Thu, 26 Nov 2026 08:00:00 GMT",
        "*",
        "",
        ETAG.strip('"'),
    ],
)
def test_if_range_fails_for_another_validator(header: str) -> None:
    assert if_range_holds(header, ETAG, LAST_MODIFIED) is False


# --------------------------------------------------------------------------- ranges over HTTPS

_RNG = random.Random(7233)
_RANDOM = [sorted((_RNG.randrange(SIZE), _RNG.randrange(SIZE))) for _ in range(8)]
RANGES = [
    "bytes=0-0",  # the first byte
    "bytes=0-",
    "bytes=0-9",
    f"bytes={S - 1}-{S - 1}",  # the last byte of segment 0
    f"bytes={S}-{S}",  # the first byte of segment 1
    f"bytes={S + 1}-{S + 1}",
    f"bytes={S - 1}-{S}",  # across a boundary
    f"bytes={S - 1}-{S + 1}",
    f"bytes=0-{S - 1}",  # exactly segment 0
    f"bytes={S}-{2 * S - 1}",  # exactly segment 1
    f"bytes={S}-",
    f"bytes={S + 1}-",
    f"bytes={2 * S}-",  # exactly the short last segment
    f"bytes={S - 1}-{2 * S}",  # touches all three segments
    f"bytes={SIZE - 1}-",  # the last byte
    f"bytes={SIZE - 1}-{SIZE - 1}",
    f"bytes=100-{SIZE + 1000}",  # end beyond the file: clipped
    "bytes=-1",
    "bytes=-123",
    f"bytes=-{S + 124}",
    f"bytes=-{SIZE}",
    f"bytes=-{SIZE + 10}",  # longer than the file: all of it
    "bytes=12345-678901",
    *[f"bytes={a}-{b}" for a, b in _RANDOM],
]


@pytest.mark.parametrize("header", RANGES)
def test_download_range_is_206_with_the_slice_and_content_range(
    server: Server, owner: str, header: str
) -> None:
    expected = expected_slice(header, SIZE)
    assert isinstance(expected, tuple)
    assert_partial(get(server, owner, Range=header), *expected)


@pytest.mark.parametrize(
    "header", [f"bytes={SIZE}-", f"bytes={SIZE}-{SIZE + 5}", f"bytes={SIZE + 100}-", "bytes=-0"]
)
def test_download_range_outside_the_file_is_416_with_the_size(
    server: Server, owner: str, header: str
) -> None:
    assert_416(get(server, owner, Range=header))
    resp = head(server, owner, Range=header)
    assert resp.status == 416
    assert resp.headers["Content-Range"] == f"bytes */{SIZE}"
    assert resp.body == b""


@pytest.mark.parametrize(
    "header", ["bytes=0-1,5-6", f"bytes=0-0,{S}-{S}", "bytes=5-3", "items=0-5", "bytes=abc", "bytes=-", ""]
)
def test_download_with_multi_reversed_or_garbage_range_is_the_full_200(
    server: Server, owner: str, header: str
) -> None:
    assert_full(get(server, owner, Range=header))


def test_download_without_range_is_200_with_accept_ranges_strong_etag_and_repr_digest(
    server: Server, owner: str
) -> None:
    resp = get(server, owner)
    assert_full(resp)
    etag = resp.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 2  # strong: no W/
    assert email.utils.parsedate_to_datetime(resp.headers["Last-Modified"]) is not None


@pytest.mark.parametrize("header", [None, "bytes=0-0", f"bytes={S - 1}-{S + 1}", "bytes=-123"])
def test_head_gives_the_get_headers_and_no_body(server: Server, owner: str, header: str | None) -> None:
    headers = {} if header is None else {"Range": header}
    got, headed = get(server, owner, **headers), head(server, owner, **headers)
    assert headed.status == got.status
    assert headed.body == b""

    def comparable(resp: Response) -> dict[str, str]:
        return {k.lower(): v for k, v in resp.headers.items() if k.lower() != "date"}

    assert comparable(headed) == comparable(got)


@pytest.mark.parametrize("size", [1, S - 1, S, S + 1])
def test_ranges_at_the_edges_of_files_of_edge_sizes(server: Server, token: str, size: int) -> None:
    data = random.Random(size).randbytes(size)
    name = f"edge-{size}.bin"
    assert server.put_file(token, name, data).status == 201
    for header in (
        "bytes=0-0",
        "bytes=-1",
        f"bytes={size - 1}-",
        "bytes=0-",
        f"bytes={size // 2}-{size + 5}",
    ):
        expected = expected_slice(header, size)
        assert isinstance(expected, tuple), header
        assert_partial(get(server, token, name, Range=header), *expected, data=data)
    assert_416(get(server, token, name, Range=f"bytes={size}-"), size=size)


def test_empty_file_with_range_is_416_and_without_is_an_empty_200(server: Server, token: str) -> None:
    assert server.put_file(token, "empty.bin", b"").status == 201
    for header in ("bytes=0-", "bytes=0-0", "bytes=-1", "bytes=-0"):
        assert_416(get(server, token, "empty.bin", Range=header), size=0)
    assert_full(get(server, token, "empty.bin"), data=b"")


# --------------------------------------------------------------------------- validators over HTTPS


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_if_none_match_with_the_etag_is_304_without_body(server: Server, owner: str, method: str) -> None:
    etag = head(server, owner).headers["ETag"]
    for header in (etag, "W/" + etag, f'"nope", {etag}', "*"):
        resp = server.request(method, "/download/" + NAME, headers={"If-None-Match": header}, token=owner)
        assert resp.status == 304, (header, resp.status)
        assert resp.body == b""
        assert resp.headers["ETag"] == etag


def test_if_none_match_with_another_etag_is_the_full_200(server: Server, owner: str) -> None:
    assert_full(get(server, owner, If_None_Match='"not-the-etag"'))


def test_if_none_match_wins_over_range(server: Server, owner: str) -> None:
    etag = head(server, owner).headers["ETag"]
    resp = get(server, owner, If_None_Match=etag, Range="bytes=0-9")
    assert resp.status == 304
    assert resp.body == b""


def test_if_range_with_the_current_etag_or_date_gives_the_range(server: Server, owner: str) -> None:
    headers = head(server, owner).headers
    assert_partial(get(server, owner, Range="bytes=10-19", If_Range=headers["ETag"]), 10, 20)
    assert_partial(get(server, owner, Range="bytes=10-19", If_Range=headers["Last-Modified"]), 10, 20)


@pytest.mark.parametrize("validator", ['"stale"', "weak", "Thu, 01 Jan 2015 00:00:00 GMT"])
def test_if_range_with_another_validator_is_the_full_200(server: Server, owner: str, validator: str) -> None:
    if validator == "weak":
        validator = "W/" + head(server, owner).headers["ETag"]
    assert_full(get(server, owner, Range="bytes=10-19", If_Range=validator))


def test_if_range_that_fails_sends_the_full_200_even_for_an_unsatisfiable_range(
    server: Server, owner: str
) -> None:
    assert_full(get(server, owner, Range=f"bytes={SIZE}-", If_Range='"stale"'))


def test_replacing_a_file_changes_its_etag_and_if_range_with_the_old_one_sends_it_all(
    server: Server, token: str
) -> None:
    old, new = b"first version " * 100, b"second version " * 100
    assert server.put_file(token, "doc.txt", old).status == 201
    old_etag = head(server, token, "doc.txt").headers["ETag"]
    assert get(server, token, "doc.txt").headers["ETag"] == old_etag  # stable while unchanged
    assert server.put_file(token, "doc.txt", new).status == 201
    resp = get(server, token, "doc.txt", Range="bytes=0-4", If_Range=old_etag)
    assert_full(resp, data=new)
    assert resp.headers["ETag"] != old_etag
    new_etag = resp.headers["ETag"]
    assert_partial(get(server, token, "doc.txt", Range="bytes=0-4", If_Range=new_etag), 0, 5, data=new)
    # The old ETag no longer matches If-None-Match either: the client gets the new file.
    assert_full(get(server, token, "doc.txt", If_None_Match=old_etag), data=new)


def test_reuploading_identical_content_still_changes_the_etag(server: Server, token: str) -> None:
    assert server.put_file(token, "same.txt", b"same bytes").status == 201
    first = head(server, token, "same.txt").headers["ETag"]
    assert server.put_file(token, "same.txt", b"same bytes").status == 201
    assert head(server, token, "same.txt").headers["ETag"] != first


# --------------------------------------------------------------------------- curl -C -


@needs_curl
def test_curl_continue_at_resumes_a_partial_download_byte_identical(
    server: Server, owner: str, tmp_path: Path
) -> None:
    partial = tmp_path / "partial"
    partial.write_bytes(DATA[:1_000_000])
    result = subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--fail",
            "--cacert",
            str(server.cert),
            "-H",
            f"Authorization: Bearer {owner}",
            "-C",
            "-",
            "-o",
            str(partial),
            f"{server.url}/download/{NAME}",
        ],
        capture_output=True,
        timeout=CURL_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert partial.read_bytes() == DATA


# --------------------------------------------------------------------------- segments a range reads

SEG = 4096
SEGMENTS = 100
SEG_DATA = random.Random(4096).randbytes((SEGMENTS - 1) * SEG + 100)  # the last segment short


def _read_ranges(tmp_path: Path, ranges: list[tuple[int, int]]) -> list[tuple[bytes, list[int]]]:
    """Upload SEG_DATA in-process, then read each [start, end) range; for each, the bytes and the
    segment indices the store was asked for (one list entry per index fetched)."""

    async def main() -> list[tuple[bytes, list[int]]]:
        async with incore.core(tmp_path / "vault.db", segment_size=SEG, max_file_size=1 << 24) as core:
            upload = await core.files.begin_upload(1, None)
            for at in range(0, len(SEG_DATA), 10_000):
                await upload.write(SEG_DATA[at : at + 10_000])
            await upload.finish("segments.bin")
            return [await _read_one(core.files, core.store, start, end) for start, end in ranges]

    return asyncio.run(main())


async def _read_one(svc: FileService, store: Store, start: int, end: int) -> tuple[bytes, list[int]]:
    fetched: list[int] = []
    real = store.read_segment

    async def counting(file_id: bytes, index: int, tag: bytes) -> bytes | None:
        fetched.append(index)
        return await real(file_id, index, tag)

    store.read_segment = counting  # type: ignore[method-assign]
    try:
        download = await svc.open(1, "segments.bin")
        try:
            got = b"".join([chunk async for chunk in download.read(start, end)])
        finally:
            download.close()
    finally:
        store.read_segment = real  # type: ignore[method-assign]
    return got, fetched


@pytest.fixture(scope="module")
def segment_reads(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    last = len(SEG_DATA)
    cases = {
        "inside 40-42": (40 * SEG + 10, 42 * SEG + 20),
        "exactly 40-42": (40 * SEG, 43 * SEG),
        "one byte": (57 * SEG + 1234, 57 * SEG + 1235),
        "first byte of a segment": (41 * SEG, 41 * SEG + 1),
        "last byte of a segment": (41 * SEG - 1, 41 * SEG),
        "last byte": (last - 1, last),
        "first byte": (0, 1),
    }
    results = _read_ranges(tmp_path_factory.mktemp("segments"), list(cases.values()))
    yield {label: (cases[label], result) for label, result in zip(cases, results, strict=True)}


@pytest.mark.parametrize(
    ("label", "indices"),
    [
        ("inside 40-42", [40, 41, 42]),
        ("exactly 40-42", [40, 41, 42]),
        ("one byte", [57]),
        ("first byte of a segment", [41]),
        ("last byte of a segment", [40]),
        ("last byte", [SEGMENTS - 1]),
        ("first byte", [0]),
    ],
)
def test_range_read_fetches_exactly_the_segments_it_covers(
    segment_reads: dict[str, Any], label: str, indices: list[int]
) -> None:
    (start, end), (got, fetched) = segment_reads[label]
    assert got == SEG_DATA[start:end]
    assert fetched == indices
