"""Upload admission: the one place size limits and quotas are reasoned about.

A user's usage is what the store counts (LIVE files, plus the declared length of resumable
uploads under way) plus what uploads under way hold, in every process: ``admit`` checks the
limits and reserves bytes for one upload, and its :class:`Reservation` is charged as the upload
streams, grows if the upload outruns what it declared, and is given back exactly once.

The bytes held are holds in the shared state (vault/store.py StateStore, kind ``quota``, keyed
by the owner), each taken or grown in one atomic operation against a limit of ``quota - stored``.
A reservation whose bytes the store now counts (a committed file, a created resumable upload)
``settle``\\ s: the owner's version is raised, then the hold dropped. A hold computed from a
store count read before such a change names the version it read and is refused, so the count
is read again: a byte is never counted in neither place, whichever process committed it.
"""

import logging

from vault.errors import TooLarge
from vault.records import Limits, Usage
from vault.store import FileStore, Hold, StateStore

log = logging.getLogger(__name__)


QUOTA = "quota"  # the hold kind and counter of a user's bytes, keyed by user id
STALE_READS = 20  # store counts read again because another upload committed meanwhile


class Quotas:
    def __init__(
        self, store: FileStore, *, default_quota: int, max_file_size: int, state: StateStore
    ) -> None:
        self._store = store
        self._state = state
        self.default_quota = default_quota  # 0: none
        self.max_file_size = max_file_size
        self._stored: dict[int, tuple[int, int]] = {}  # owner -> (version, bytes stored then)

    async def limits(self, owner: int) -> Limits:
        quota, max_file_size = await self._store.get_limits(owner)
        quota = self.default_quota if quota is None else quota
        return Limits(self.max_file_size if max_file_size is None else max_file_size, quota or None)

    async def usage(self, owner: int) -> Usage:
        """What the owner stores, counting the bytes uploads under way hold."""
        limits = await self.limits(owner)
        _, stored, files = await self._read_usage(owner)
        return Usage(stored + await self._state.held(QUOTA, str(owner)), files, limits)

    async def admit(self, owner: int, length: int | None, *, slack: int = 0) -> "Reservation":
        """Admit an upload of ``length`` bytes (None: not known yet) or raise TooLarge, and
        reserve them. ``slack`` is framing the declared length carries around the file (a
        multipart body's boundaries): allowed past both limits, and not reserved when it does
        not fit."""
        limits = await self.limits(owner)
        if length is not None and length > limits.max_file_size + slack:
            raise TooLarge(f"File too large: the limit is {limits.max_file_size} bytes")
        if limits.quota is None:
            return Reservation(self, owner, limits.max_file_size, None)
        want = length or 0
        need = max(want - slack, 0)
        for _ in range(STALE_READS):
            version, stored, _ = await self._read_usage(owner)
            # One atomic check and update: min(want, room) is held unless less than need fits.
            hold = await self._state.hold(
                QUOTA, str(owner), want, limits.quota - stored, need=need, version=version
            )
            if hold is not None:
                reservation = Reservation(self, owner, limits.max_file_size, limits.quota)
                reservation.hold = hold
                return reservation
            if (await self._state.counter(QUOTA, str(owner))).version == version:
                room = max(limits.quota - stored - await self._state.held(QUOTA, str(owner)), 0)
                raise TooLarge(f"Quota exceeded: {room} bytes of your quota are left")
        raise TooLarge("Quota exceeded: your usage is changing too fast to admit this upload")

    def unmetered(self, owner: int) -> "Reservation":
        """For appending to a resumable upload, whose whole length was reserved when it was
        created: charges nothing."""
        return Reservation(self, owner, None, None)

    async def changed(self, owner: int) -> None:
        """The store's count for ``owner`` changed (a commit, delete or termination): reads
        taken before are stale, in every process."""
        self._stored.pop(owner, None)
        await self._state.bump(QUOTA, str(owner))

    async def _read_usage(self, owner: int) -> tuple[int, int, int]:
        """(version, bytes, files): the store's count, with the version read before it."""
        version = (await self._state.counter(QUOTA, str(owner))).version
        stored, files = await self._store.usage(owner)
        self._stored[owner] = (version, stored)
        return version, stored, files

    async def _grow(self, reservation: "Reservation", total: int) -> None:
        """Hold ``total`` bytes for an upload that outran its reservation, against the store's
        count as last read (exact while its version holds: else it is read again) or refuse."""
        owner, quota, hold = reservation.owner, reservation.quota, reservation.hold
        assert quota is not None and hold is not None
        for _ in range(STALE_READS):
            cached = self._stored.get(owner)
            if cached is None:
                await self._read_usage(owner)
                continue
            version, stored = cached
            grown = await self._state.resize(hold, total, quota - stored, version=version)
            if grown is not None:
                reservation.hold = grown
                return
            if (await self._state.counter(QUOTA, str(owner))).version == version:
                room = quota - stored - await self._state.held(QUOTA, str(owner))
                left = max(room, 0) + reservation.reserved - reservation.charged
                raise TooLarge(f"Quota exceeded: this upload could use {left} more bytes of your quota")
            self._stored.pop(owner, None)
        raise TooLarge("Quota exceeded: your usage is changing too fast to admit this upload")

    async def _drop(self, hold: Hold) -> None:
        await self._state.release(hold)


class Reservation:
    """Bytes held for one upload: ``charge`` as they arrive, then ``settle`` once the store
    counts them (the file committed) or ``release`` (idempotent) to give them back."""

    def __init__(self, quotas: Quotas, owner: int, max_size: int | None, quota: int | None) -> None:
        self._quotas = quotas
        self.owner = owner
        self.max_size = max_size  # largest file, None: no check here
        self.quota = quota  # None: nothing to hold
        self.hold: Hold | None = None  # the bytes held in the shared state
        self.charged = 0

    @property
    def reserved(self) -> int:
        return 0 if self.hold is None else self.hold.amount

    async def charge(self, nbytes: int) -> None:
        """Count ``nbytes`` more of the upload, or raise TooLarge (nothing is then counted)."""
        total = self.charged + nbytes
        if self.max_size is not None and total > self.max_size:
            raise TooLarge(f"File too large: the limit is {self.max_size} bytes")
        if self.quota is not None and total > self.reserved:
            await self._quotas._grow(self, total)
        self.charged = total

    async def settle(self) -> None:
        """The store now counts these bytes: stop holding them (before ``release``)."""
        await self._quotas.changed(self.owner)
        await self.release()

    async def release(self) -> None:
        """Give back whatever is still held; safe to call any number of times."""
        hold, self.hold = self.hold, None
        if hold is not None:
            await self._quotas._drop(hold)
