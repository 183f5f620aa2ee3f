"""Pagination of the listings (``GET /files``, ``/shared``, ``/links``): ``?limit=N`` (1 to
MAX_LIMIT) answers at most N items and ``"next"``, the cursor to pass as ``?after=`` for the
following page (null on the last). Without ``limit`` and ``after`` a listing is whole and has
no ``"next"``, as before pagination existed. Any other query parameter is a 400. The core reads
a page alone (keyset pagination in the store: the rows after the cursor, through an index), so
walking all pages costs one pass over the rows, not one per page."""

from collections.abc import Callable
from typing import Any, TypeVar

import tornado.web

from vault.errors import InvalidField
from vault.records import Page

T = TypeVar("T")
MAX_LIMIT = 1000
MAX_CURSOR = 1024


def page_query(handler: tornado.web.RequestHandler) -> tuple[str | None, int] | None:
    """(after, limit) of a request for one page; None for the whole listing (module doc)."""
    unknown = sorted(set(handler.request.query_arguments) - {"limit", "after"})
    if unknown:
        raise InvalidField(f"Unknown query parameter {unknown[0][:64]!r}: use 'limit' and 'after'")
    limit_text = handler.get_query_argument("limit", None)
    after = handler.get_query_argument("after", None)
    if limit_text is None and after is None:
        return None
    limit = MAX_LIMIT
    if limit_text is not None:
        if not (limit_text.isascii() and limit_text.isdigit() and 1 <= int(limit_text[:5]) <= MAX_LIMIT):
            raise InvalidField(f"Query parameter 'limit' must be a whole number, 1 to {MAX_LIMIT}")
        limit = int(limit_text)
    if after is not None and len(after) > MAX_CURSOR:
        raise InvalidField("Query parameter 'after' is not a cursor from 'next'")
    return after, limit


def page_json(key: str, page: Page[T], render: Callable[[T], Any]) -> dict[str, Any]:
    return {key: [render(item) for item in page.items], "next": page.next}
