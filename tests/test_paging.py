"""Pages of the listings (``/files``, ``/links``, ``/shared``) read in the store, after the cursor
(keyset pagination): the real core on SQLite and on PostgreSQL, with every row the store hands
back counted. The HTTP side (limit, after, next, 400s) is in tests/test_hostile.py."""

import inspect
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests import incore
from vault.auth import Identity
from vault.core import Core
from vault.errors import InvalidField
from vault.records import Page

pytestmark = pytest.mark.usefixtures("store_kind")  # each test on SQLite and on PostgreSQL

T = TypeVar("T")
PASSWORD = "correct horse battery"
LIMIT = 4
# Code point order, which neither a locale's collation nor case folding gives: "Z" < "a" < "ä".
NAMES = [f"f{n:02}.txt" for n in range(17)] + ["Zeta.txt", "a b.txt", "ä.txt", "é.txt", "日本.txt"]


class Rows:
    """Counts the rows each store method hands back (a list: its length; anything else: 1)."""

    def __init__(self, core: Core) -> None:
        self.read: Counter[str] = Counter()
        store = core.store
        for attr in dir(store):
            method = getattr(store, attr)
            if not attr.startswith("_") and inspect.iscoroutinefunction(method):

                async def counted(*args: Any, _method: Any = method, _attr: str = attr) -> Any:
                    result = await _method(*args)
                    self.read[_attr] += len(result) if isinstance(result, list) else 1
                    return result

                setattr(store, attr, counted)


async def account(core: Core, name: str) -> Identity:
    await core.auth.register(name, PASSWORD)
    user = await core.auth.find_user(name)
    assert user is not None
    return Identity(user.id, user.username)


async def walk(rows: Rows, read: Callable[[str | None], Awaitable[Page[T]]]) -> list[T]:
    """Every page in turn; each must read at most LIMIT + 1 rows, none of a whole listing's."""
    items: list[T] = []
    after = None
    while True:
        rows.read.clear()
        page = await read(after)
        assert len(page.items) <= LIMIT
        assert sum(rows.read.values()) <= LIMIT + 2, rows.read  # the page, one more, its owner
        assert not {"list_files", "links_of", "shared_files"} & set(rows.read), rows.read
        items += page.items
        if page.next is None:
            return items
        after = page.next


run = incore.run


def names(items: Sequence[Any]) -> list[str]:
    return [getattr(item, "name", None) or item.info.name for item in items]


def test_each_page_reads_its_own_rows_and_all_pages_make_the_whole_listing(tmp_path: Path) -> None:
    async def scenario(core: Core) -> None:
        alice, bob = await account(core, "alice"), await account(core, "bob")
        for name in NAMES:
            upload = await core.files.begin_upload(alice.user_id, 1)
            await upload.write(b"x")
            await upload.finish(name)
            await core.sharing.create_link(alice, name, None, None, 2)
            await core.sharing.grant(alice, name, "bob")
        rows = Rows(core)

        files = await walk(rows, lambda after: core.files.page(alice.user_id, after, LIMIT))
        assert names(files) == sorted(NAMES) == names(await core.files.list(alice.user_id))
        links = await walk(rows, lambda after: core.sharing.links_page(alice, after, LIMIT))
        assert links == await core.sharing.links(alice)
        assert [link.downloads_left for link in links] == [2.0] * len(NAMES)  # sizes found
        shared = await walk(rows, lambda after: core.sharing.shared_page(bob, after, LIMIT))
        assert shared == await core.sharing.shared_with(bob)
        assert names(shared) == sorted(NAMES) and {s.owner for s in shared} == {"alice"}

    run(tmp_path, scenario)


@pytest.mark.parametrize("cursor", ["", "x", "nan/abc", "inf/abc", "1.5/", "1e400/abc", "1.5/a/b", "١/abc"])
def test_a_links_cursor_not_from_next_is_refused(tmp_path: Path, cursor: str) -> None:
    async def scenario(core: Core) -> None:
        alice = await account(core, "alice")
        with pytest.raises(InvalidField, match="not a cursor"):
            await core.sharing.links_page(alice, cursor, LIMIT)

    run(tmp_path, scenario)
