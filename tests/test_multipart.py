"""The streaming multipart/form-data parser: chunking, framing errors, header parsing."""

import os
from collections.abc import Callable, Iterable

import pytest

from vault.errors import MalformedUpload
from vault.multipart import (
    BodyEnd,
    Event,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    boundary_from_content_type,
    parse_disposition,
)

BOUNDARY = b"----vaultFormBoundary7MA4YWxkTrZu0gW"
DELIMITER = b"\r\n--" + BOUNDARY
FIELD_DISPOSITION = 'form-data; name="comment"'
FILE_DISPOSITION = 'form-data; name="file"; filename="data.bin"'
FIELD_VALUE = b"hello,\r\nworld --"
# Binary content full of things that look like a delimiter but are not one.
FILE_DATA = b"x".join(
    [
        bytes(range(256)),
        b"\r\n--",
        b"\r\n--" + BOUNDARY[:-1],
        b"\r\n--" + BOUNDARY[:-1] + b"X",
        b"\r\n-" + BOUNDARY,
        b"--" + BOUNDARY + b"--",
        b"\n--" + BOUNDARY,
        b"\r--" + BOUNDARY,
        b"\r\r\n--" + BOUNDARY[:5],
        b"\r\n\r\n",
        bytes(range(255, -1, -1)),
        b"\r\n-",  # the data ends in a partial delimiter
    ]
)
assert DELIMITER not in FILE_DATA

PREAMBLE = b"This is the preamble; a MIME reader ignores it.\r\n--not-the-boundary\r\n"
EPILOGUE = b"\r\nThis is the epilogue.\r\n--" + BOUNDARY + b"\r\nContent-Type: text/plain\r\n\r\nignored"
BODY = (
    PREAMBLE
    + b"--"
    + BOUNDARY
    + b"\r\n"
    + f"Content-Disposition: {FIELD_DISPOSITION}\r\n\r\n".encode()
    + FIELD_VALUE
    + DELIMITER
    + b"\r\n"
    + f"Content-Disposition: {FILE_DISPOSITION}\r\n".encode()
    + b"Content-Type: application/octet-stream\r\n\r\n"
    + FILE_DATA
    + DELIMITER
    + b"--"
    + EPILOGUE
)
EXPECTED = [
    ({"content-disposition": FIELD_DISPOSITION}, FIELD_VALUE),
    ({"content-disposition": FILE_DISPOSITION, "content-type": "application/octet-stream"}, FILE_DATA),
]

Parts = list[tuple[dict[str, str], bytes]]


def collect(events: list[Event]) -> Parts:
    """Reassemble the parts, asserting the events come as (Start, Data*, End)* BodyEnd."""
    parts: Parts = []
    in_part = False
    for i, event in enumerate(events):
        if isinstance(event, PartStart):
            assert not in_part, f"PartStart inside a part at event {i}"
            parts.append((event.headers, b""))
            in_part = True
        elif isinstance(event, PartData):
            assert in_part, f"PartData outside a part at event {i}"
            headers, data = parts[-1]
            parts[-1] = (headers, data + event.data)
        elif isinstance(event, PartEnd):
            assert in_part, f"PartEnd outside a part at event {i}"
            in_part = False
        else:
            assert isinstance(event, BodyEnd)
            assert not in_part, "BodyEnd inside a part"
            assert i == len(events) - 1, "events after BodyEnd"
    assert events and isinstance(events[-1], BodyEnd), "no BodyEnd"
    return parts


def parse(chunks: Iterable[bytes], boundary: bytes = BOUNDARY, **kwargs: int) -> Parts:
    parser = MultipartParser(boundary, **kwargs)
    events: list[Event] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    parser.finish()
    assert parser.done
    return collect(events)


def form(*parts: bytes, boundary: bytes = BOUNDARY) -> bytes:
    """A body from raw part blocks (headers, blank line, data)."""
    body = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts)
    return body + b"--" + boundary + b"--\r\n"


# --- chunking -------------------------------------------------------------------------------


def test_body_in_one_chunk() -> None:
    assert parse([BODY]) == EXPECTED


def test_body_in_one_byte_chunks() -> None:
    assert parse(BODY[i : i + 1] for i in range(len(BODY))) == EXPECTED


def test_body_split_in_two_at_every_offset() -> None:
    for cut in range(len(BODY) + 1):
        assert parse([BODY[:cut], BODY[cut:]]) == EXPECTED, f"split at {cut}"


def test_body_split_in_three_at_sampled_offsets() -> None:
    for first in range(0, len(BODY) + 1, 7):
        for second in range(first, len(BODY) + 1, 11):
            chunks = [BODY[:first], BODY[first:second], BODY[second:]]
            assert parse(chunks) == EXPECTED, f"split at {first} and {second}"


def test_disposition_of_parsed_parts() -> None:
    parser = MultipartParser(BOUNDARY)
    starts = [e for e in parser.feed(BODY) if isinstance(e, PartStart)]
    assert [s.disposition for s in starts] == [
        {"": "form-data", "name": "comment"},
        {"": "form-data", "name": "file", "filename": "data.bin"},
    ]


def test_feeding_after_the_end_returns_nothing() -> None:
    parser = MultipartParser(BOUNDARY)
    parser.feed(BODY)
    assert parser.feed(b"\r\n--" + BOUNDARY + b"\r\n\r\nmore") == []
    parser.finish()


# --- part shapes ----------------------------------------------------------------------------


def test_empty_file_part() -> None:
    body = form(b'Content-Disposition: form-data; name="file"; filename="empty.txt"\r\n\r\n')
    for chunks in ([body], [body[i : i + 1] for i in range(len(body))]):
        parser = MultipartParser(BOUNDARY)
        events = [e for c in chunks for e in parser.feed(c)]
        parser.finish()
        assert not any(isinstance(e, PartData) for e in events)
        assert collect(events) == [
            ({"content-disposition": 'form-data; name="file"; filename="empty.txt"'}, b"")
        ]


def test_part_without_headers() -> None:
    body = form(b"\r\nno headers here")
    assert parse([body]) == [({}, b"no headers here")]
    assert parse(body[i : i + 1] for i in range(len(body))) == [({}, b"no headers here")]


def test_empty_part_without_headers() -> None:
    assert parse([form(b"\r\n")]) == [({}, b"")]


def test_body_without_preamble_starts_with_the_boundary() -> None:
    assert parse([form(b"A: 1\r\n\r\nx")]) == [({"a": "1"}, b"x")]


def test_header_names_are_lowercased_and_values_stripped() -> None:
    body = form(b"CONTENT-Type:   text/plain  \r\nX-Odd:value:with:colons\r\n\r\ndata")
    assert parse([body]) == [({"content-type": "text/plain", "x-odd": "value:with:colons"}, b"data")]


def test_transport_padding_after_boundaries_is_allowed() -> None:
    body = (
        b"--" + BOUNDARY + b" \t \r\nA: 1\r\n\r\none"
        b"\r\n--" + BOUNDARY + b"\t\r\nA: 2\r\n\r\ntwo"
        b"\r\n--" + BOUNDARY + b"-- \t\r\n"
    )
    expected = [({"a": "1"}, b"one"), ({"a": "2"}, b"two")]
    assert parse([body]) == expected
    assert parse(body[i : i + 1] for i in range(len(body))) == expected


def test_data_after_the_closing_boundary_is_ignored() -> None:
    body = (
        form(b"A: 1\r\n\r\nx")
        + b"garbage \xff\xfe with no structure\r\n--"
        + BOUNDARY
        + b"\r\nbad header\r\n"
    )
    assert parse([body]) == [({"a": "1"}, b"x")]
    assert parse(body[i : i + 1] for i in range(len(body))) == [({"a": "1"}, b"x")]


def test_closing_boundary_without_final_crlf() -> None:
    body = b"--" + BOUNDARY + b"\r\nA: 1\r\n\r\nx\r\n--" + BOUNDARY + b"--"
    assert parse([body]) == [({"a": "1"}, b"x")]


# --- malformed bodies -----------------------------------------------------------------------


def parse_expecting_error(chunks: Iterable[bytes], **kwargs: int) -> MalformedUpload:
    parser = MultipartParser(BOUNDARY, **kwargs)
    with pytest.raises(MalformedUpload) as info:
        for chunk in chunks:
            parser.feed(chunk)
        parser.finish()
    assert str(info.value).startswith("Malformed multipart upload")
    return info.value


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"just a preamble, no boundary at all",
        b"--" + BOUNDARY,
        b"--" + BOUNDARY + b"\r\n",
        b"--" + BOUNDARY + b"\r\nA: 1\r\n",
        b"--" + BOUNDARY + b"\r\nA: 1\r\n\r\npart data that never ends",
        b"--" + BOUNDARY + b"\r\nA: 1\r\n\r\nx\r\n--" + BOUNDARY,
        b"--" + BOUNDARY + b"\r\nA: 1\r\n\r\nx\r\n--" + BOUNDARY + b"-",
        b"--" + BOUNDARY + b"\r\nA: 1\r\n\r\nx\r\n--" + BOUNDARY + b"\r\n",
    ],
    ids=[
        "empty",
        "preamble-only",
        "first-boundary-only",
        "first-boundary-line",
        "unterminated-headers",
        "unterminated-data",
        "delimiter-without-close",
        "half-close-marker",
        "second-part-missing",
    ],
)
def test_body_missing_the_closing_boundary_fails_at_finish(body: bytes) -> None:
    parser = MultipartParser(BOUNDARY)
    parser.feed(body)
    assert not parser.done
    with pytest.raises(MalformedUpload, match="closing boundary"):
        parser.finish()


@pytest.mark.parametrize(
    "after",
    [
        b"garbage\r\n",
        b"X\r\nA: 1\r\n\r\n",
        b"  x  \r\n",
        b"-x\r\n",
        b"\t-\r\n",
        b" \x0b\r\n",
        b"\x0c\r\n",
        b"\r\r\n",
    ],
    # Transport padding is spaces and tabs only (RFC 2046 LWSP), not any whitespace.
    ids=[
        "word",
        "lookalike-boundary",
        "padding-then-text",
        "single-dash",
        "tab-dash",
        "vtab",
        "formfeed",
        "lone-cr",
    ],
)
def test_garbage_after_a_boundary_is_malformed(after: bytes) -> None:
    body = b"--" + BOUNDARY + after + b"A: 1\r\n\r\nx\r\n--" + BOUNDARY + b"--\r\n"
    parse_expecting_error([body])
    parse_expecting_error(body[i : i + 1] for i in range(len(body)))


def test_garbage_after_a_later_boundary_is_malformed() -> None:
    body = b"--" + BOUNDARY + b"\r\nA: 1\r\n\r\nx\r\n--" + BOUNDARY + b"junk\r\n\r\ny" + DELIMITER + b"--"
    parse_expecting_error([body])


def test_endless_garbage_after_a_boundary_is_refused_without_a_line_end() -> None:
    parser = MultipartParser(BOUNDARY)
    parser.feed(b"--" + BOUNDARY)
    with pytest.raises(MalformedUpload):
        for _ in range(100):
            parser.feed(b" " * 1000)


def test_part_headers_over_the_limit_are_malformed() -> None:
    header = b"X-Long: " + b"a" * 2000 + b"\r\n\r\n"
    assert parse([form(header + b"data")], max_header_bytes=4096) == [({"x-long": "a" * 2000}, b"data")]
    parse_expecting_error([form(header + b"data")], max_header_bytes=1024)


def test_unterminated_part_headers_over_the_limit_fail_while_feeding() -> None:
    parser = MultipartParser(BOUNDARY, max_header_bytes=1024)
    parser.feed(b"--" + BOUNDARY + b"\r\nX-Long: ")
    with pytest.raises(MalformedUpload, match="too large"):
        for _ in range(100):
            parser.feed(b"a" * 100)


def test_part_headers_exactly_at_the_limit_are_accepted() -> None:
    block = b"X: " + b"a" * 100 + b"\r\n\r\n"
    assert parse([form(block + b"d")], max_header_bytes=len(block)) == [({"x": "a" * 100}, b"d")]
    parse_expecting_error([form(block + b"d")], max_header_bytes=len(block) - 1)


def test_non_utf8_part_headers_are_malformed() -> None:
    body = form(b'Content-Disposition: form-data; name="f"; filename="caf\xe9.txt"\r\n\r\ndata')
    error = parse_expecting_error([body])
    assert "UTF-8" in str(error)


def test_utf8_part_headers_are_decoded() -> None:
    body = form('Content-Disposition: form-data; name="f"; filename="café.txt"\r\n\r\nd'.encode())
    [(headers, data)] = parse([body])
    assert headers["content-disposition"].endswith('filename="café.txt"')


@pytest.mark.parametrize(
    "line",
    [b"no colon here", b": no name", b"   : blank name", b"A: 1\r\nsecond line without colon"],
    ids=["no-colon", "empty-name", "blank-name", "second-line"],
)
def test_header_line_without_a_name_and_colon_is_malformed(line: bytes) -> None:
    error = parse_expecting_error([form(line + b"\r\n\r\ndata")])
    assert "header line" in str(error)


@pytest.mark.parametrize("boundary", [b"", b"a" * 71, b"ends with space ", b"bad\r\n", b"caf\xc3\xa9"])
def test_parser_refuses_an_invalid_boundary(boundary: bytes) -> None:
    with pytest.raises(MalformedUpload):
        MultipartParser(boundary)


# --- memory -------------------------------------------------------------------------------


def test_parser_never_buffers_a_whole_part(monkeypatch: pytest.MonkeyPatch) -> None:
    chunk_size = 64 * 1024
    total = 10 * 1024 * 1024
    # Each chunk ends in a near-delimiter, so the parser must hold back as much as it ever does.
    chunk = (bytes(range(256)) * (chunk_size // 256))[: chunk_size - len(DELIMITER) + 1] + DELIMITER[:-1]
    assert len(chunk) == chunk_size
    parser = MultipartParser(BOUNDARY)
    peak = 0
    step = parser._step

    def measured_step(events: list[Event]) -> bool:
        nonlocal peak
        peak = max(peak, len(parser._buf))
        return step(events)

    monkeypatch.setattr(parser, "_step", measured_step)
    parser.feed(b"--" + BOUNDARY + b"\r\nContent-Disposition: form-data; name=file\r\n\r\n")
    received = 0
    for _ in range(total // chunk_size):
        for event in parser.feed(chunk):
            if isinstance(event, PartData):
                received += len(event.data)
        assert len(parser._buf) <= len(DELIMITER)
    # Everything but the held-back tail has been handed on already.
    assert received >= total - len(DELIMITER)
    assert peak <= len(DELIMITER) + chunk_size
    events = parser.feed(DELIMITER + b"--\r\n")
    received += sum(len(e.data) for e in events if isinstance(e, PartData))
    assert received == total
    assert isinstance(events[-1], BodyEnd)
    parser.finish()


def test_a_large_part_comes_as_views_of_the_chunks_fed_whatever_their_ends() -> None:
    """Within a part's body, a chunk without a delimiter is handed on as a view of itself (no
    copy), less a tail that may begin a delimiter; every way a chunk can end (a CR, CRLF, a
    delimiter but its last byte, a CR that begins no delimiter) still reassembles exactly."""
    holding = [b"\r", b"\r\n", b"\r\n-", DELIMITER[:-1], b"\rA\r", b"\r\n--X\r"]  # may begin one
    plain = [b"\r\nX", b"-" * 80, b"\r" + DELIMITER[2:] + b"."]  # cannot: no CR left to begin one
    endings = [end for pair in zip(holding, plain * 2, strict=True) for end in pair]
    chunks = [os.urandom(1000) + DELIMITER[:5] + os.urandom(2000) + end for end in endings]
    chunks = [chunk.replace(b"\r", b"\n", 1) if DELIMITER in chunk else chunk for chunk in chunks]
    file_data = b"".join(chunks)
    assert DELIMITER not in file_data
    parser = MultipartParser(BOUNDARY)
    events = parser.feed(b"--" + BOUNDARY + b"\r\nContent-Disposition: form-data; name=file\r\n\r\n")
    for at, chunk in enumerate(chunks):
        fed = parser.feed(chunk)
        viewed = [e.data for e in fed if isinstance(e, PartData) and isinstance(e.data, memoryview)]
        # A view of the chunk unless the one before held back the start of a delimiter: that
        # chunk goes the general way (a copy), and the next is a view again.
        assert bool(viewed) == (at == 0 or endings[at - 1] in plain), f"chunk {at}"
        assert all(view.obj is chunk for view in viewed)
        events += fed
    events += parser.feed(DELIMITER + b"--\r\n")
    parser.finish()
    assert collect(events) == [({"content-disposition": "form-data; name=file"}, file_data)]


# --- boundary_from_content_type -------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        ("multipart/form-data; boundary=abc123", b"abc123"),
        ('multipart/form-data; boundary="abc123"', b"abc123"),
        ('multipart/form-data; boundary="with spaces and :?=/"', b"with spaces and :?=/"),
        ("Multipart/Form-Data; BOUNDARY=XyZ", b"XyZ"),
        (
            "multipart/form-data;boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW",
            b"----WebKitFormBoundary7MA4YWxkTrZu0gW",
        ),
        ("multipart/form-data; charset=utf-8; boundary=abc", b"abc"),
        ("multipart/form-data; boundary=abc; charset=utf-8", b"abc"),
        ("multipart/form-data; boundary=abc  ", b"abc"),
        ("multipart/form-data; boundary=" + "b" * 70, b"b" * 70),
        ("multipart/form-data; boundary=x", b"x"),
    ],
)
def test_boundary_from_content_type(content_type: str, boundary: bytes) -> None:
    assert boundary_from_content_type(content_type) == boundary


@pytest.mark.parametrize(
    "content_type",
    [
        "",
        "multipart/form-data",
        "multipart/form-data;",
        "multipart/form-data; charset=utf-8",
        "multipart/form-data; boundary=",
        'multipart/form-data; boundary=""',
        "multipart/mixed; boundary=abc",
        "application/x-www-form-urlencoded",
        "text/plain; boundary=abc",
        "multipart/form-data; boundary=" + "b" * 71,
        'multipart/form-data; boundary="' + "b" * 71 + '"',
        'multipart/form-data; boundary="ends with space "',
        "multipart/form-data; boundary=a<b>",
        "multipart/form-data; boundary=a@b",
        'multipart/form-data; boundary="a\\"b"',
        "multipart/form-data; boundary=café",
        "multipart/form-data; boundary=snow\u2603man",
        "multipart/form-data; boundary=euro\u20ac",
    ],
)
def test_bad_content_type_or_boundary_is_malformed(content_type: str) -> None:
    with pytest.raises(MalformedUpload):
        boundary_from_content_type(content_type)


# --- parse_disposition ----------------------------------------------------------------------


def test_disposition_type_and_parameters() -> None:
    assert parse_disposition('form-data; name="file"; filename="a b.txt"') == {
        "": "form-data",
        "name": "file",
        "filename": "a b.txt",
    }


def test_disposition_unquoted_parameters() -> None:
    assert parse_disposition("attachment; filename=plain.txt ; name=x") == {
        "": "attachment",
        "filename": "plain.txt",
        "name": "x",
    }


def test_disposition_filename_with_escaped_quotes_and_semicolons() -> None:
    value = r'form-data; name="f"; filename="say \"hi\"; now.txt"'
    assert parse_disposition(value)["filename"] == 'say "hi"; now.txt'


@pytest.mark.parametrize(
    "value",
    [
        'form-data; name="f"; filename="cafe.txt"; filename*=UTF-8\'\'caf%C3%A9.txt',
        'form-data; name="f"; filename*=UTF-8\'\'caf%C3%A9.txt; filename="cafe.txt"',
        'form-data; name="f"; filename*=utf-8\'en\'caf%C3%A9.txt; filename="cafe.txt"',
    ],
    ids=["extended-last", "extended-first", "with-language"],
)
def test_disposition_extended_filename_wins(value: str) -> None:
    assert parse_disposition(value)["filename"] == "café.txt"


def test_disposition_extended_filename_in_latin1() -> None:
    assert parse_disposition("form-data; filename*=ISO-8859-1''caf%E9.txt")["filename"] == "café.txt"


@pytest.mark.parametrize(
    "value",
    [
        "form-data; filename*=no-such-charset''abc.txt",
        "form-data; filename*=no-such-charset''caf%C3%A9.txt",
        "form-data; filename*=UTF-8''caf%E9.txt",  # not UTF-8
        "form-data; filename*=UTF-8''%FF%FE",
    ],
    ids=["unknown-charset", "unknown-charset-with-escapes", "latin1-bytes-as-utf8", "invalid-utf8"],
)
def test_disposition_bad_extended_parameter_is_malformed(value: str) -> None:
    with pytest.raises(MalformedUpload):
        parse_disposition(value)


def test_disposition_parameter_names_are_case_insensitive() -> None:
    assert parse_disposition('Form-Data; NAME="f"; FileName="x.txt"') == {
        "": "form-data",
        "name": "f",
        "filename": "x.txt",
    }
    assert parse_disposition("form-data; FILENAME*=UTF-8''%C3%A9; filename=e")["filename"] == "é"


def test_disposition_first_plain_parameter_wins_over_a_duplicate() -> None:
    assert parse_disposition('form-data; filename="first"; filename="second"')["filename"] == "first"


def test_empty_disposition() -> None:
    assert parse_disposition("") == {"": ""}


# --- exact limits, messages and hand-over (mutation testing, bench/mutation-survivors.md) -----


def test_padding_after_a_boundary_may_reach_1024_bytes_without_a_line_end() -> None:
    parser = MultipartParser(BOUNDARY)
    parser.feed(b"--" + BOUNDARY)
    assert parser.feed(b" " * 1024) == []
    events = parser.feed(b"\r\nA: 1\r\n\r\nx" + DELIMITER + b"--")
    parser.finish()
    assert collect(events) == [({"a": "1"}, b"x")]
    parser = MultipartParser(BOUNDARY)
    parser.feed(b"--" + BOUNDARY)
    with pytest.raises(MalformedUpload, match="garbage after a boundary"):
        parser.feed(b" " * 1025)


def test_unterminated_part_headers_may_reach_the_limit_and_not_one_byte_more() -> None:
    parser = MultipartParser(BOUNDARY, max_header_bytes=200)
    parser.feed(b"--" + BOUNDARY + b"\r\n")
    assert parser.feed(b"X: " + b"a" * 197) == []
    with pytest.raises(MalformedUpload, match="too large"):
        parser.feed(b"a")


@pytest.mark.parametrize(
    ("value", "filename"),
    [
        ('form-data; filename="abc', '"abc'),  # an unterminated quote is kept as it is
        ('form-data; filename="', '"'),
        ('form-data; filename=""', ""),
        ("form-data; filename*=UTF-8''it's%20here", "it's here"),  # only the first two quotes split
        ("form-data; filename*=UTF-8'en'it's", "it's"),
    ],
    ids=["unterminated-quote", "lone-quote", "empty-quoted", "quote-in-extended", "quote-after-language"],
)
def test_disposition_quotes_at_the_edges(value: str, filename: str) -> None:
    assert parse_disposition(value)["filename"] == filename


def test_a_chunk_exactly_as_long_as_a_delimiter_comes_as_a_view() -> None:
    parser = MultipartParser(BOUNDARY)
    parser.feed(b"--" + BOUNDARY + b"\r\nA: 1\r\n\r\n")
    chunk = b"y" * len(DELIMITER)
    [event] = parser.feed(chunk)
    assert isinstance(event, PartData) and isinstance(event.data, memoryview)
    assert event.data.obj is chunk and bytes(event.data) == chunk


@pytest.mark.parametrize("chunk", [b"\rX", b"\r\nX", b"\r" + DELIMITER[2:] + b"."])
def test_a_short_chunk_that_cannot_begin_a_delimiter_is_handed_on_at_once(chunk: bytes) -> None:
    """Its CR at the very start begins no delimiter: nothing is held back for the next chunk."""
    parser = MultipartParser(BOUNDARY)
    parser.feed(b"--" + BOUNDARY + b"\r\nA: 1\r\n\r\n")
    events = parser.feed(chunk)
    assert [bytes(e.data) for e in events if isinstance(e, PartData)] == [chunk]
    assert len(events) == 1


def _feed_all(body: bytes, **kwargs: int) -> None:
    parser = MultipartParser(BOUNDARY, **kwargs)
    parser.feed(body)
    parser.finish()


def _feed_in_bytes(body: bytes) -> None:
    parser = MultipartParser(BOUNDARY)
    for i in range(len(body)):
        parser.feed(body[i : i + 1])
    parser.finish()


GARBAGE = "Malformed multipart upload: garbage after a boundary"
TOO_LARGE = "Malformed multipart upload: part headers too large"


@pytest.mark.parametrize(
    ("refused", "message"),
    [
        (
            lambda: boundary_from_content_type("text/plain"),
            "Expected Content-Type multipart/form-data with a boundary",
        ),
        (
            lambda: boundary_from_content_type("multipart/form-data; boundary=a@b"),
            "Malformed multipart upload: missing or invalid boundary",
        ),
        (
            lambda: boundary_from_content_type("multipart/form-data"),
            "Malformed multipart upload: missing or invalid boundary",
        ),
        (lambda: MultipartParser(b"a@b"), "Malformed multipart upload: invalid boundary"),
        (
            lambda: _feed_all(b"--" + BOUNDARY + b"\r\n"),
            "Malformed multipart upload: the body ended before the closing boundary",
        ),
        (lambda: _feed_all(b"--" + BOUNDARY + b"junk\r\n"), GARBAGE),
        (lambda: _feed_all(b"--" + BOUNDARY + b" " * 1025), GARBAGE),
        (lambda: _feed_in_bytes(b"--" + BOUNDARY + b" " * 1025), GARBAGE),
        (lambda: _feed_all(b"--" + BOUNDARY + b"\r\nX: " + b"a" * 300, max_header_bytes=100), TOO_LARGE),
        (lambda: _feed_all(form(b"X: " + b"a" * 300 + b"\r\n\r\nd"), max_header_bytes=100), TOO_LARGE),
        (
            lambda: _feed_all(form(b"X: \xff\r\n\r\nd")),
            "Malformed multipart upload: part headers must be UTF-8",
        ),
        (lambda: _feed_all(form(b"no colon\r\n\r\nd")), "Malformed multipart upload: bad part header line"),
        (
            lambda: parse_disposition("form-data; filename*=koi8-r''abc"),
            "Malformed multipart upload: unsupported charset in filename*",
        ),
        (
            lambda: parse_disposition("form-data; name*=UTF-8''%FF"),
            "Malformed multipart upload: bad name* parameter",
        ),
    ],
    ids=[
        "not-multipart",
        "invalid-boundary",
        "no-boundary",
        "parser-boundary",
        "unfinished",
        "garbage-line",
        "endless-garbage",
        "endless-garbage-bytewise",
        "unterminated-headers",
        "terminated-headers",
        "headers-not-utf8",
        "header-line",
        "charset",
        "extended-value",
    ],
)
def test_each_refusal_says_what_was_wrong(refused: Callable[[], object], message: str) -> None:
    """The message is the client's 400 answer (handlers send MalformedUpload's text)."""
    with pytest.raises(MalformedUpload) as info:
        refused()
    assert str(info.value) == message
    assert info.value.message == message
