"""Numeric request headers, parsed strictly (ASCII digits only, bounded length), as pure
functions: ``int()`` alone accepts ``²`` and other Unicode digits, and raises on thousands of
digits, and either would surface as a 500."""

from tornado.httputil import HTTPHeaders

from vault.errors import InputError

MAX_DIGITS = 19  # anything longer is over 2**63 and no length vault could store


def parse_length(value: str | None, header: str) -> int:
    """A required non-negative integer header; 400 naming ``header`` otherwise."""
    if value is None or not value.isascii() or not value.isdigit() or len(value) > MAX_DIGITS:
        raise InputError(f"{header} must be a non-negative integer")
    return int(value)


def declared_length(headers: HTTPHeaders) -> int | None:
    """The request's Content-Length, None if absent; 400 if it is not a plain integer."""
    value = headers.get("Content-Length")
    return None if value is None else parse_length(value.strip(), "Content-Length")
