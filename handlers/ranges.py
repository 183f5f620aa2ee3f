"""HTTP byte ranges and validators (RFC 9110 sections 13 and 14), as pure functions."""

import re

from handlers.headers import MAX_DIGITS
from vault.errors import RangeNotSatisfiable

_RANGE_RE = re.compile(r"\s*bytes\s*=\s*([0-9]*)\s*-\s*([0-9]*)\s*")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The half-open byte range [start, end) a single-range ``Range`` header asks for.

    None means "send the whole file": no header, a unit other than bytes, a syntax error or a
    multi-range request (RFC 9110 lets a server ignore those). An unsatisfiable range raises
    RangeNotSatisfiable (416).
    """
    if header is None:
        return None
    match = _RANGE_RE.fullmatch(header)
    if not match:
        return None
    first, last = (_number(text) for text in match.groups())
    if first is None and last is None:
        return None
    if first is None:  # suffix: the last N bytes
        assert last is not None
        if last == 0 or size == 0:
            raise RangeNotSatisfiable(size)
        return max(size - last, 0), size
    start = first
    end = last + 1 if last is not None else size
    if last is not None and end <= start:
        return None  # invalid: ignore the header
    if start >= size:
        raise RangeNotSatisfiable(size)
    return start, min(end, size)


def _number(digits: str) -> int | None:
    """A position in a Range; thousands of digits mean "beyond any file" (``int()`` would
    refuse them with an exception)."""
    if not digits:
        return None
    return int(digits) if len(digits) <= MAX_DIGITS else 10**MAX_DIGITS


def _tags(header: str) -> list[str]:
    return [tag.strip() for tag in header.split(",") if tag.strip()]


def none_match(header: str | None, etag: str) -> bool:
    """If-None-Match matches (weak comparison): answer 304."""
    if header is None:
        return False
    tags = _tags(header)
    return "*" in tags or etag in [tag.removeprefix("W/") for tag in tags]


def if_range_holds(header: str | None, etag: str, last_modified: str) -> bool:
    """If-Range: honour the Range only if the validator still matches (strong comparison)."""
    if header is None:
        return True
    value = header.strip()
    return value == etag if value.startswith('"') else value == last_modified
