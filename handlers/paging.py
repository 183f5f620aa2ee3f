"""Pagination of the listings (``GET /files``, ``/shared``, ``/links``): ``?limit=N`` (1 to
MAX_LIMIT) answers at most N items and ``"next"``, the cursor to pass as ``?after=`` for the
following page (null on the last). Without ``limit`` and ``after`` a listing is whole and has
no ``"next"``, as before pagination existed. Any other query parameter is a 400."""

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import tornado.web

from vault.errors import InvalidField

T = TypeVar("T")
MAX_LIMIT = 1000
MAX_CURSOR = 1024


def paginate(
    handler: tornado.web.RequestHandler, key: str, items: Sequence[T], cursor: Callable[[T], str],
    render: Callable[[T], Any],
) -> dict[str, Any]:  # fmt: skip
    """The JSON body of a listing: ``{key: [...]}``, one page of it when asked (module doc)."""
    unknown = sorted(set(handler.request.query_arguments) - {"limit", "after"})
    if unknown:
        raise InvalidField(f"Unknown query parameter {unknown[0][:64]!r}: use 'limit' and 'after'")
    limit_text = handler.get_query_argument("limit", None)
    after = handler.get_query_argument("after", None)
    if limit_text is None and after is None:
        return {key: [render(item) for item in items]}
    limit = MAX_LIMIT
    if limit_text is not None:
        if not (limit_text.isascii() and limit_text.isdigit() and 1 <= int(limit_text[:5]) <= MAX_LIMIT):
            raise InvalidField(f"Query parameter 'limit' must be a whole number, 1 to {MAX_LIMIT}")
        limit = int(limit_text)
    if after is not None and len(after) > MAX_CURSOR:
        raise InvalidField("Query parameter 'after' is not a cursor from 'next'")
    ordered = sorted(items, key=cursor)
    rest = [item for item in ordered if after is None or cursor(item) > after]
    page = rest[:limit]
    more = len(rest) > limit
    return {key: [render(item) for item in page], "next": cursor(page[-1]) if more else None}
