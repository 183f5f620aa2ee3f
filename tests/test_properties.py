"""Property-based tests (hypothesis) of the parsers and the segment format, through their public
functions: the multipart parser under any chunking, Range parsing against a model of RFC 9110,
the file-name allow-list, and segment seal/open round trips with every single-bit flip refused.

Example counts are bounded and the runs derandomized (a fixed seed per test), so the default
run stays fast and CI sees the same examples every time; ``HYPOTHESIS_PROFILE=thorough`` runs
many more.
"""

import os
import unicodedata

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from handlers.ranges import parse_range
from vault import format as sfs
from vault.errors import IntegrityError, InvalidFilename, RangeNotSatisfiable
from vault.multipart import BodyEnd, MultipartParser, PartData, PartEnd, PartStart
from vault.names import check_filename

settings.register_profile(
    "default", derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("thorough", parent=settings.get_profile("default"), max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

S = sfs.MIN_SEG_SIZE  # the smallest segment size keeps the bit flips cheap
KEYS = sfs.derive_file_keys(bytes(range(32)), bytes(range(16)))
FILE_ID = bytes(range(16))

# --------------------------------------------------------------------------- multipart

BOUNDARY = b"----vaultBoundary7MA4YWxkTrZu0gW"
# Contents rich in near-delimiters: CR, LF, dashes and pieces of the boundary itself.
NEAR_DELIMITERS = st.lists(
    st.sampled_from(
        [b"\r", b"\n", b"\r\n", b"-", b"--", b"\r\n--", BOUNDARY[:10], BOUNDARY[:-1], b"x", b"\x00"]
    )
    | st.binary(max_size=40),
    max_size=40,
).map(b"".join)


def multipart_body(parts: list[tuple[str, bytes]], preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    body = preamble + b"\r\n" if preamble else b""
    for name, content in parts:
        body += b"--" + BOUNDARY + b"\r\n"
        body += f'Content-Disposition: form-data; name="{name}"; filename="{name}.bin"\r\n'.encode()
        body += b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n"
    return body + b"--" + BOUNDARY + b"--\r\n" + epilogue


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def parse(chunks: list[bytes]) -> list[tuple[str, bytes]]:
    """Feed the chunks; return (name, content) per part, checking the event grammar."""
    parser = MultipartParser(BOUNDARY)
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    parser.finish()
    parts: list[tuple[str, bytes]] = []
    current: tuple[str, bytearray] | None = None
    assert isinstance(events[-1], BodyEnd) and events.count(BodyEnd()) == 1
    for event in events[:-1]:
        if isinstance(event, PartStart):
            assert current is None
            current = (event.disposition["name"], bytearray())
        elif isinstance(event, PartData):
            assert current is not None and event.data  # no empty data events
            current[1].extend(event.data)
        else:
            assert isinstance(event, PartEnd) and current is not None
            parts.append((current[0], bytes(current[1])))
            current = None
    assert current is None
    return parts


@settings(max_examples=100)
@given(
    contents=st.lists(NEAR_DELIMITERS, min_size=1, max_size=3),
    preamble=NEAR_DELIMITERS.filter(lambda p: b"--" + BOUNDARY not in b"\r\n" + p),
    epilogue=NEAR_DELIMITERS,
    cuts=st.lists(st.integers(min_value=0), max_size=12),
)
def test_multipart_parts_come_back_whole_however_the_body_is_cut(
    contents: list[bytes], preamble: bytes, epilogue: bytes, cuts: list[int]
) -> None:
    assume(all(b"\r\n--" + BOUNDARY not in c + b"\r\n" for c in contents))  # a real client's boundary
    parts = [(f"f{i}", content) for i, content in enumerate(contents)]
    body = multipart_body(parts, preamble, epilogue)
    assert parse(split(body, cuts)) == parts
    assert parse([body[i : i + 1] for i in range(len(body))]) == parts  # one byte at a time


@settings(max_examples=100)
@given(
    content=NEAR_DELIMITERS, cut=st.integers(min_value=0), cuts=st.lists(st.integers(min_value=0), max_size=8)
)
def test_a_multipart_body_cut_short_never_parses(content: bytes, cut: int, cuts: list[int]) -> None:
    """Any proper prefix of a body lacks its closing delimiter: finish() refuses it."""
    body = multipart_body([("file", content)])
    prefix = body[: cut % len(body.rstrip(b"\r\n"))]
    parser = MultipartParser(BOUNDARY)
    events = [event for chunk in split(prefix, cuts) for event in parser.feed(chunk)]
    assert BodyEnd() not in events
    with pytest.raises(Exception, match="ended before the closing boundary"):
        parser.finish()


# --------------------------------------------------------------------------- ranges


def model_range(first: int | None, last: int | None, size: int) -> tuple[int, int] | str | None:
    """RFC 9110 14.1.2 and 14.2 for one range: (start, end) half-open, "416", or None (ignored)."""
    if first is None:
        assert last is not None
        return "416" if last == 0 or size == 0 else (max(size - last, 0), size)
    if last is not None and last < first:
        return None
    if first >= size:
        return "416"
    return first, min(size, size if last is None else last + 1)


def outcome(header: str, size: int) -> tuple[int, int] | str | None:
    try:
        return parse_range(header, size)
    except RangeNotSatisfiable as exc:
        assert exc.size == size
        return "416"


SIZES = st.integers(min_value=0, max_value=10**12)
POSITIONS = st.none() | st.integers(min_value=0, max_value=2 * 10**12)
SPACE = st.sampled_from(["", " ", "  ", "\t"])


@settings(max_examples=300)
@given(first=POSITIONS, last=POSITIONS, size=SIZES, pad=st.lists(SPACE, min_size=5, max_size=5))
def test_range_parsing_matches_the_rfc_model(
    first: int | None, last: int | None, size: int, pad: list[str]
) -> None:
    assume(first is not None or last is not None)
    f, la = "" if first is None else str(first), "" if last is None else str(last)
    header = f"{pad[0]}bytes{pad[1]}={pad[2]}{f}{pad[3]}-{pad[4]}{la}"
    assert outcome(header, size) == model_range(first, last, size)


@settings(max_examples=300)
@given(header=st.text(alphabet=st.sampled_from("bytes=-,0123456789 \t;xX\u0660"), max_size=30), size=SIZES)
def test_any_range_header_gives_a_range_inside_the_file_or_none_or_416(header: str, size: int) -> None:
    result = outcome(header, size)
    if isinstance(result, tuple):
        start, end = result
        assert 0 <= start < end <= size
    if "," in header:  # a multi-range request is ignored, never half-served
        assert result is None


# --------------------------------------------------------------------------- names

FORBIDDEN = (
    {"/", "\\", "\u2028", "\u2029", "\u061c", "\u200e", "\u200f"}
    | {chr(c) for c in range(0x2066, 0x206A)}
    | {chr(c) for c in range(0x202A, 0x202F)}
)


def acceptable(char: str) -> bool:
    return char not in FORBIDDEN and unicodedata.category(char) not in ("Cc", "Cs")


@settings(max_examples=300)
@given(name=st.text(max_size=80))
def test_a_name_is_accepted_exactly_when_its_nfc_form_obeys_every_rule(name: str) -> None:
    nfc = unicodedata.normalize("NFC", name)
    ok = (
        nfc not in ("", ".", "..")
        and len(nfc.encode("utf-8", "replace")) <= sfs.MAX_NAME_BYTES
        and all(acceptable(c) for c in nfc)
    )
    if ok:
        assert check_filename(name) == nfc
        assert check_filename(nfc) == nfc  # idempotent
    else:
        with pytest.raises(InvalidFilename):
            check_filename(name)


@settings(max_examples=200)
@given(before=st.text(max_size=20), after=st.text(max_size=20), bad=st.sampled_from(sorted(FORBIDDEN)))
def test_a_forbidden_character_anywhere_is_refused(before: str, after: str, bad: str) -> None:
    with pytest.raises(InvalidFilename):
        check_filename(before + bad + after)


# --------------------------------------------------------------------------- segments


def expected_length(final: bool, length: int) -> int:
    return length if final else S


@settings(max_examples=40)
@given(
    final=st.booleans(),
    length=st.integers(min_value=0, max_value=S),
    index=st.integers(min_value=0, max_value=2**32),
    data=st.data(),
)
def test_a_sealed_segment_opens_to_its_plaintext_only_where_it_was_sealed(
    final: bool, length: int, index: int, data: st.DataObject
) -> None:
    length = length if final else S
    plaintext = data.draw(st.binary(min_size=length, max_size=length))
    blob = bytes(sfs.seal_segment(KEYS, FILE_ID, S, index, final, plaintext))
    assert sfs.open_segment(KEYS, FILE_ID, S, index, final, length, blob) == plaintext
    with pytest.raises(IntegrityError):  # another position
        sfs.open_segment(KEYS, FILE_ID, S, index + 1, final, length, blob)
    with pytest.raises(IntegrityError):  # the other role
        sfs.open_segment(KEYS, FILE_ID, S, index, not final, S if final else length, blob)
    if final and length:
        with pytest.raises(IntegrityError):  # another claimed length
            sfs.open_segment(KEYS, FILE_ID, S, index, final, length - 1, blob)


@settings(max_examples=4)
@given(
    final=st.booleans(), length=st.integers(min_value=0, max_value=S), seed=st.binary(min_size=1, max_size=8)
)
def test_every_single_bit_flip_of_a_segment_is_refused(final: bool, length: int, seed: bytes) -> None:
    length = length if final else S
    plaintext = (seed * (length // len(seed) + 1))[:length]
    blob = bytearray(sfs.seal_segment(KEYS, FILE_ID, S, 3, final, plaintext))
    for bit in range(len(blob) * 8):
        blob[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(IntegrityError):
            sfs.open_segment(KEYS, FILE_ID, S, 3, final, length, bytes(blob))
        blob[bit // 8] ^= 1 << (bit % 8)
    assert sfs.open_segment(KEYS, FILE_ID, S, 3, final, length, bytes(blob)) == plaintext
