"""Sharing: read access for other users (grants) and public links.

Both refer to the owner's file by name: they follow a replacement, and deleting the file drops
them. Their rows carry an HMAC under the master-derived account key (like user rows), so that
someone who can write the database cannot grant themselves access or plant a link.

Link download limits are a byte budget: a link allowed N downloads may send N times the file's
size plus a preview allowance of min(64 KiB, half the file), charged as bytes are actually sent.
Each request reserves its length before its headers go out, so two simultaneous full downloads
of a one-time link cannot both succeed, and no sequence of ranges yields more than N whole
copies. HEAD and the HTML landing page cost nothing, and a short Range (a preview bot's) only
its length, which the allowance covers. Bytes charged to a response cut off before its end
that may not have arrived (TCP had not acknowledged them, or a client receive buffer's worth
before them) go back to the budget when the next request asks for them again, so ``curl -C -``
resumes to completion; at most ``in_flight_allowance`` over a link's life. What a cut-off
response may not have delivered, and the refunds given, are counted in the memory of the
process that served it (a resume that reaches another process gets no refund).

Where the budget is kept (the decision, after two read orders that each left a window): in the
shared state (vault/store.py StateStore, kind ``link``, key the link id), as holds of the bytes
reserved by responses under way and a counter whose count is the bytes served. A response ends
by ``settle``: one atomic step that gives its hold back and adds what it sent to the count, so
a check (``tally``: count and holds read at one instant, by any process) sees those bytes held
or served, never both (a preview right after a copy refused) nor neither (a spent link still
offered). A reservation is a hold at the version read with the count (every settle raises it),
so one computed from an older count is refused and computed again. The store's
``bytes_served`` is the durable record, written just before the settle: the state's count is
seeded from it when it has none (first use, a lone process restarted). Not chosen: a snapshot
of the store's count and the holds checked by versions (a reader must then wait out every
charge in progress), or the store's write in the state's transaction (the state would have to
know the store's tables, and in memory it cannot).
"""

import decimal
import hashlib
import logging
import math
import re
import secrets
import time
from dataclasses import dataclass

from vault.auth import Authenticator, Identity, check_password
from vault.download import Download
from vault.errors import (
    Busy,
    FileNotFound,
    Gone,
    InvalidCredentials,
    InvalidField,
    NotFound,
    TooManyAttempts,
)
from vault.files import FileService
from vault.keys import Keyring
from vault.names import check_filename
from vault.records import FileInfo, Page
from vault.rows import GRANT, LINK
from vault.state import LocalState
from vault.store import Counter, Grant, Hold, Link, SharingStore, StateStore, StoredFile

log = logging.getLogger(__name__)

LINK_ID_BYTES = 9  # a public handle for the owner's listing and revocation: 18 hex digits
# (hex, not base64url: an id starting with "-" reads as an option in `vault revoke ID`)
LINK_TOKEN_BYTES = 18  # 144 bits of secret in the URL
FREE_FAILURES = 5  # wrong passwords before the backoff starts
MAX_BACKOFF = 3600
MAX_EXPIRY = 366 * 86400
MAX_DOWNLOADS = 1_000_000
PREVIEW_ALLOWANCE = 64 * 1024
IN_FLIGHT_ALLOWANCE = 16 * 1024 * 1024  # given back in all to resumed downloads (in_flight_allowance)
RECEIVE_SLACK = 8 * 1024 * 1024  # a client's receive buffer (Linux: up to 6 MiB), lost when it dies
LINK_BYTES = "link"  # by link id: holds of the bytes reserved, a counter of the bytes served
COUNT_KEPT = 86400  # seconds the shared state keeps a link's count: after its expiry, or after
# it was seeded for a link without one (then seeded again from the store)
LINK_GUESS = "link-password"  # noqa: S105 (a state kind, not a secret): the mutex of a link's password guesses, by link id
LINK_CURSOR = r"^[0-9]{1,40}(\.[0-9]{1,200})?/[A-Za-z0-9_-]{1,32}$"  # link_cursor (OpenAPI too)
STALE_READS = 20  # budgets computed again because another download was charged meanwhile


def in_flight_allowance(size: int) -> int:
    """Bytes a link may give back, in all, to downloads resumed after being cut off (what was
    charged as sent but never arrived: socket buffers, the network, the client's buffers)."""
    return min(IN_FLIGHT_ALLOWANCE, size)


def link_budget(max_downloads: int, size: int) -> int:
    """Bytes a link may send in all: whole copies plus a preview allowance (module docstring)."""
    return max_downloads * max(size, 1) + min(PREVIEW_ALLOWANCE, size // 2)


def lock_out(failures: int, now: float) -> float:
    """Until when a link is locked after its ``failures``-th wrong password (0: not locked)."""
    if failures < FREE_FAILURES:
        return 0.0
    return now + min(1 << min(failures - FREE_FAILURES, 30), MAX_BACKOFF)


def link_cursor(link: Link) -> str:
    """A link's place in the owner's listing (``GET /links`` pages): its creation time, exactly
    (a float's decimal expansion is finite and reads back as the same float), and its id."""
    return f"{decimal.Decimal(link.created):f}/{link.id}"


def link_key(cursor: str) -> tuple[float, str]:
    """(created, id) from a ``link_cursor`` (LINK_CURSOR); anything else is an InvalidField."""
    if re.fullmatch(LINK_CURSOR, cursor) is None:
        raise InvalidField("Query parameter 'after' is not a cursor from 'next'")
    created, _, link_id = cursor.partition("/")
    return float(created), link_id


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


@dataclass(frozen=True)
class SharedFile:
    owner: str
    info: FileInfo


@dataclass(frozen=True)
class LinkInfo:
    id: str
    name: str
    created: float
    expires: float | None
    has_password: bool
    max_downloads: int | None
    downloads_left: float | None  # in whole-file units; a partial range costs a fraction

    @classmethod
    def of(cls, link: Link, size: int, served: int) -> "LinkInfo":
        left = None
        if link.max_downloads is not None:
            budget = link.max_downloads * max(size, 1)
            left = round(max(budget - served, 0) / max(size, 1), 3)
        return cls(
            link.id,
            link.name,
            link.created,
            link.expires,
            link.password_hash is not None,
            link.max_downloads,
            left,
        )


@dataclass
class _Usage:
    """What this process remembers of a link's cut-off responses."""

    refunded: int = 0  # given back to resumed downloads, at most in_flight_allowance(size)
    doubt: tuple[int, int] | None = None  # bytes [start, end) the last response may not have delivered


class Reservation:
    """Bytes a link download may send; ``close`` charges what was actually sent, less what
    ``refund`` gave back, and, if the response was cut off, remembers which of those bytes may
    not have arrived: the last ``unacked`` (what the socket had not had acknowledged when last
    measured) and RECEIVE_SLACK before them (what the client's own buffers may have lost)."""

    def __init__(
        self, sharing: "Sharing", link: Link, hold: Hold | None, reserved: int, start: int, refund: int
    ) -> None:
        self._sharing, self._link, self._hold, self._reserved = sharing, link, hold, reserved
        self._start, self._refund = start, refund
        self.sent = 0
        self.unacked = 0
        self._closed = False

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            sent = min(self.sent, self._reserved)
            end = self._start + sent
            # Only a response cut off before its end is in doubt: one the server finished on a
            # live connection counts as delivered (or a one-time link to a small file, all of it
            # unacknowledged at the end, could be fetched twice).
            cut = 0 < sent < self._reserved
            doubt = (max(end - self.unacked - RECEIVE_SLACK, self._start), end) if cut else None
            await self._sharing._charge(self._link, self._hold, sent, self._refund, doubt)


class Sharing:
    def __init__(
        self,
        store: SharingStore,
        files: FileService,
        keyring: Keyring,
        auth: Authenticator,
        state: StateStore | None = None,
    ) -> None:
        self._store, self._files, self._keyring, self._auth = store, files, keyring, auth
        self._state: StateStore = LocalState() if state is None else state
        self._usage: dict[str, _Usage] = {}

    # ------------------------------------------------------------------ grants

    def _grant_ok(self, grant: Grant) -> bool:
        ok = GRANT.authentic(self._keyring, grant)
        if not ok:
            log.error("grant of %r by %d failed its integrity check", grant.name, grant.owner)
        return ok

    async def _live(self, owner: int, name: str) -> str:
        name = check_filename(name)
        if await self._store.get_file(owner, name) is None:
            raise FileNotFound()
        return name

    async def grant(self, owner: Identity, name: str, username: object) -> tuple[str, str]:
        """Give ``username`` read access; returns the stored (file name, username)."""
        name = await self._live(owner.user_id, name)
        if not isinstance(username, str) or not username:
            raise InvalidField("Field 'username' is required and must be a non-empty string")
        grantee = await self._auth.find_user(username)
        if grantee is None:
            raise NotFound("User not found")
        if grantee.id == owner.user_id:
            raise InvalidField("You cannot share a file with yourself")
        grant = GRANT.seal(self._keyring, Grant(owner.user_id, name, grantee.id, time.time(), 0, b""))
        if not await self._store.put_grant(grant):
            raise FileNotFound()  # deleted meanwhile
        return name, grantee.username

    async def revoke(self, owner: Identity, name: str, username: str) -> tuple[str, str]:
        """Revoke at once; returns the stored (file name, username)."""
        name = check_filename(name)
        grantee = await self._auth.find_user(username)
        if grantee is None or not await self._store.delete_grant(owner.user_id, name, grantee.id):
            raise NotFound("Not shared with that user")
        return name, grantee.username

    async def grantees(self, owner: Identity, name: str) -> tuple[str, list[str]]:
        """The stored file name and who may read it."""
        name = await self._live(owner.user_id, name)
        names = []
        for grant in await self._store.grants_of(owner.user_id, name):
            user = await self._auth.user_by_id(grant.grantee) if self._grant_ok(grant) else None
            if user is not None:
                names.append(user.username)
        return name, sorted(names)

    async def shared_with(self, user: Identity) -> list[SharedFile]:
        """Files shared with ``user`` whose grant, owner and header verify: one query for the
        grants with their files, one account read per owner, the headers checked off the loop."""
        return await self._shared(await self._store.shared_files(user.user_id))

    async def shared_page(self, user: Identity, after: str | None, limit: int) -> Page[SharedFile]:
        """``limit`` of the files shared with ``user`` by ``owner/name`` after the cursor
        ``after`` (one of those): the page alone is read and checked."""
        rows = await self._store.shared_after(user.user_id, after, limit + 1)
        shared = await self._shared([(grant, stored) for grant, stored, _ in rows[:limit]])
        more = len(rows) > limit
        return Page(shared, f"{rows[limit - 1][2]}/{rows[limit - 1][0].name}" if more else None)

    async def _shared(self, grants: list[tuple[Grant, StoredFile]]) -> list[SharedFile]:
        rows = [(g, f) for g, f in grants if self._grant_ok(g)]
        owners: dict[int, str | None] = {}
        for grant, _ in rows:
            if grant.owner not in owners:
                account = await self._auth.user_by_id(grant.owner)
                owners[grant.owner] = account.username if account else None
        infos = await self._files.verified([stored for _, stored in rows])
        return [
            SharedFile(owner, info)
            for (grant, _), info in zip(rows, infos, strict=True)
            if info is not None and (owner := owners[grant.owner]) is not None
        ]

    async def open_shared(self, user: Identity, owner_name: str, name: str) -> Download:
        """A file shared with ``user``; anything else is the same 404 as a missing file."""
        owner = await self._auth.find_user(owner_name)
        name = check_filename(name)
        grant = await self._store.get_grant(owner.id, name, user.user_id) if owner else None
        if owner is None or grant is None or not self._grant_ok(grant):
            raise FileNotFound()
        return await self._files.open(owner.id, name)

    # ------------------------------------------------------------------ links

    def _link_ok(self, link: Link) -> bool:
        ok = LINK.authentic(self._keyring, link)
        if not ok:
            log.error("link %s failed its integrity check", link.id)
        return ok

    async def create_link(
        self, owner: Identity, name: str, expires_in: object, password: object, max_downloads: object
    ) -> tuple[LinkInfo, str]:
        """A new link and its secret token (shown once; only its hash is stored)."""
        name = await self._live(owner.user_id, name)
        now = time.time()
        expires = None
        if expires_in is not None:
            if (
                not isinstance(expires_in, int)
                or isinstance(expires_in, bool)
                or not 60 <= expires_in <= MAX_EXPIRY
            ):
                raise InvalidField(
                    f"Field 'expires_in' must be a whole number of seconds, 60 to {MAX_EXPIRY}"
                )
            expires = now + expires_in
        if max_downloads is not None and (
            not isinstance(max_downloads, int)
            or isinstance(max_downloads, bool)
            or not 1 <= max_downloads <= MAX_DOWNLOADS
        ):
            raise InvalidField(f"Field 'max_downloads' must be a whole number, 1 to {MAX_DOWNLOADS}")
        password_hash = None
        if password is not None:
            password_hash = await self._auth.hash_secret(check_password(password))
        token = secrets.token_urlsafe(LINK_TOKEN_BYTES)
        draft = Link(
            secrets.token_hex(LINK_ID_BYTES), token_hash(token), owner.user_id, name, now, expires,
            password_hash, max_downloads, 0, 0, 0.0, 0, b"",
        )  # fmt: skip
        link = LINK.seal(self._keyring, draft)
        if not await self._store.put_link(link):
            raise FileNotFound()  # deleted while the password was hashed
        stored = await self._store.get_file(owner.user_id, name)
        return LinkInfo.of(link, stored.header.size if stored else 0, 0), token

    async def links(self, owner: Identity) -> list[LinkInfo]:
        infos = []
        held = await self._state.held_keys(LINK_BYTES)  # before the rows: see _spent
        sizes = {info.name: info.size for info in await self._files.list(owner.user_id)}
        for link in await self._store.links_of(owner.user_id):
            if self._link_ok(link):
                infos.append(LinkInfo.of(link, sizes.get(link.name, 0), await self._spent(link, held)))
        return infos

    async def _spent(self, link: Link, held_keys: set[str]) -> int:
        """The bytes a listing counts as used: served, and held by responses under way, as a
        budget check counts them. The store's count alone lags a copy that has ended for its
        client until its charge is written, while its hold is still live: the listing would
        offer a download that HEAD and the link itself already refuse. So a link with a live
        hold (``held_keys``, read before the rows: a charge that ended since was written to the
        store first) is counted from the shared state's tally, the rest from the row just
        listed, one state read per listing rather than one per link. A held link the state has
        no count for is counted from the row too, not seeded (a listing writes nothing)."""
        if link.max_downloads is None or link.id not in held_keys:
            return link.bytes_served
        served, held = await self._state.tally(LINK_BYTES, link.id)
        return (served.count if served.stamp else link.bytes_served) + held

    async def links_page(self, owner: Identity, after: str | None, limit: int) -> Page[LinkInfo]:
        """``limit`` of the caller's links by creation after the cursor ``after``, with the size
        of the file each names: the page alone is read and checked (``links`` reads every
        file for the sizes)."""
        held = await self._state.held_keys(LINK_BYTES)  # before the rows: see _spent
        rows = await self._store.links_after(
            owner.user_id, None if after is None else link_key(after), limit + 1
        )
        page = rows[:limit]
        files = [stored for _, stored in page if stored is not None]
        sizes = {
            stored.header.name: info.size
            for stored, info in zip(files, await self._files.verified(files), strict=True)
            if info is not None
        }
        infos = [
            LinkInfo.of(link, sizes.get(link.name, 0), await self._spent(link, held))
            for link, _ in page
            if self._link_ok(link)
        ]
        return Page(infos, link_cursor(page[-1][0]) if len(rows) > limit else None)

    async def revoke_link(self, owner: Identity, link_id: str) -> None:
        if not await self._store.delete_link(owner.user_id, link_id):
            raise NotFound("Link not found")
        self._usage.pop(link_id, None)

    async def open_link(self, token: str, password: str | None) -> tuple[Link, Download]:
        """Check a link, its expiry, its password and its budget (rules: module docstring)."""
        hashed = token_hash(token)
        link = await self._store.get_link(hashed)
        if link is None and await self._store.link_revoked(hashed):
            raise Gone("This link was revoked")
        if link is None or not self._link_ok(link):
            raise NotFound("Link not found")
        now = time.time()
        if link.expires is not None and now >= link.expires:
            raise Gone("This link has expired")
        if link.password_hash is not None:
            await self._check_link_password(link, password, now)
        try:
            download = await self._files.open(link.owner, link.name)
        except FileNotFound:
            raise Gone("The file behind this link is no longer available") from None
        left = await self._left(link, download.size)
        if left is not None and left <= 0:
            download.close()
            raise Gone("This link has no downloads left")
        return link, download

    async def _check_link_password(self, link: Link, password: str | None, now: float) -> None:
        """One guess at a time per link, each seeing the failures before it: guesses sent all
        at once cannot all be tried before the lock-out starts. The lock stays while anyone
        holds or awaits it (a new lock beside a busy one would let guesses run in parallel)."""
        async with self._state.mutex(LINK_GUESS, link.id):
            fresh = await self._store.get_link(link.token_hash)
            if fresh is None or fresh.id != link.id:
                raise NotFound("Link not found")
            await self._check_password_once(fresh, password, time.time())

    async def _check_password_once(self, link: Link, password: str | None, now: float) -> None:
        if now < link.locked_until:
            raise TooManyAttempts(math.ceil(link.locked_until - now))
        if password is None:
            raise InvalidCredentials("This link needs a password: curl -u :PASSWORD ...")
        assert link.password_hash is not None
        if await self._auth.check_secret(password.encode("utf-8"), link.password_hash):
            if link.failures:
                await self._store.set_link_failures(link.id, 0, 0.0)
            return
        await self._store.add_link_failure(link.id, time.time(), lock_out)
        raise InvalidCredentials("Wrong password for this link")

    async def check_left(self, link: Link, size: int, nbytes: int, start: int = 0) -> None:
        """Gone unless the link could send ``nbytes`` from ``start`` now."""
        left = await self._left(link, size)
        if left is not None and nbytes > left + self._refund(link, size, start):
            raise Gone("This link has no downloads left")

    async def reserve(self, link: Link, size: int, nbytes: int, start: int = 0) -> Reservation:
        """Hold ``nbytes`` of the link's budget for one response from byte ``start`` (none
        needed without a limit); a resumed download first gets back what its cut-off
        predecessor was charged for but evidently did not deliver."""
        if link.max_downloads is None:
            return Reservation(self, link, None, nbytes, start, 0)
        for _ in range(STALE_READS):
            served, _ = await self._tally(link)
            refund = self._refund(link, size, start)
            limit = link_budget(link.max_downloads, size) - served.count + refund
            hold = await self._state.hold(LINK_BYTES, link.id, nbytes, limit, version=served.version)
            if hold is not None:
                usage = self._usage_of(link)
                usage.refunded += refund
                usage.doubt = None  # only the next request can claim it
                return Reservation(self, link, hold, nbytes, start, refund)
            if (await self._state.counter(LINK_BYTES, link.id)).version == served.version:
                break
        raise Gone("This link has no downloads left")

    async def _tally(self, link: Link) -> tuple[Counter, int]:
        """(bytes served, as the count of a counter with its version; bytes held by responses
        under way), read at one instant from the shared state, their one home for budget
        checks (module docstring). A link the state has no count for yet (first use, a restart
        of a lone process, a version before this one) gets the store's, its durable record,
        set at the version read with it: a charge settled meanwhile raised it, and the count is
        read again. A seeded counter has a nonzero stamp (when it was seeded)."""
        for _ in range(STALE_READS):
            served, held = await self._state.tally(LINK_BYTES, link.id)
            if served.stamp:
                return served, held
            fresh = await self._store.get_link(link.token_hash)
            count = link.bytes_served if fresh is None else fresh.bytes_served
            if held:
                # Responses under way that began with no count here (kept by a version before
                # this one): their bytes may be in the store's count too. Counted twice until
                # they end, never not at all; the count is seeded once none runs.
                return Counter(count, 0.0, served.version), held
            # Every count is forgotten in time, a revoked or deleted link's too (kept forever,
            # one row per link ever used): the store's bytes_served, written before each
            # settle, is the durable record it is seeded from again.
            expires = (time.time() if link.expires is None else link.expires) + COUNT_KEPT
            await self._state.set_counter(
                LINK_BYTES, link.id, count, time.time(), version=served.version, expires=expires
            )
        raise Busy("This link's count of downloads is changing too fast to read: try again")

    def _refund(self, link: Link, size: int, start: int) -> int:
        """A request that starts inside the bytes the previous response may not have delivered
        has not got them (it asks again): that part goes back to the budget, at most
        ``in_flight_allowance`` in the link's whole life."""
        usage = self._usage_of(link)
        if link.max_downloads is None or usage.doubt is None or not usage.doubt[0] <= start < usage.doubt[1]:
            return 0
        return max(min(usage.doubt[1] - start, in_flight_allowance(size) - usage.refunded), 0)

    async def _left(self, link: Link, size: int) -> int | None:
        """Bytes the link may still send (None: no limit): its budget less the bytes served and
        what responses under way hold, both as of one instant."""
        if link.max_downloads is None:
            return None
        served, held = await self._tally(link)
        return link_budget(link.max_downloads, size) - served.count - held

    def _usage_of(self, link: Link) -> _Usage:
        usage = self._usage.get(link.id)
        if usage is None:
            usage = self._usage[link.id] = _Usage()
        return usage

    async def _charge(
        self, link: Link, hold: Hold | None, sent: int, refund: int, doubt: tuple[int, int] | None
    ) -> None:
        """Count what a response sent (less its refund): in the store (the durable record),
        then in the shared state, in the same step that gives its hold back (``settle``), so
        no budget check sees these bytes both held and served, or neither. The store first, so
        that a count seeded from the store (``_tally``: only while no hold is live) has every
        byte settled before it was read, and settle adds only bytes it has not."""
        try:
            if doubt is not None:
                self._usage_of(link).doubt = doubt
            if sent != refund:
                await self._store.charge_link(link.id, sent - refund)
        finally:
            if hold is not None:
                await self._state.settle(hold, sent - refund)
