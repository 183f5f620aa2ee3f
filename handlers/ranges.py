"""HTTP byte ranges and validators (RFC 9110 sections 13 and 14), as pure functions."""

import re

from vault.errors import RangeNotSatisfiable

_RANGE_RE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*")


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
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        length = int(last)
        if length == 0 or size == 0:
            raise RangeNotSatisfiable(size)
        return max(size - length, 0), size
    start = int(first)
    end = int(last) + 1 if last else size
    if last and end <= start:
        return None  # invalid: ignore the header
    if start >= size:
        raise RangeNotSatisfiable(size)
    return start, min(end, size)


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
