"""Upload admission: the one place size limits and quotas are reasoned about.

A user's usage is what the store counts (LIVE files, plus the declared length of resumable
uploads under way) plus what uploads in this process hold: ``admit`` checks the limits and
reserves bytes for one upload, and its :class:`Reservation` is charged as the upload streams,
grows if the upload outruns what it declared, and is given back exactly once.

Check and update are atomic: each decision is made on numbers read before it, with no await
between the check and the update of ``held``. A reservation whose bytes the store now counts
(a committed file, a created resumable upload) ``settle``\\ s: its hold is dropped and the
owner's generation bumped, and a read of the store's usage that overlapped such a change is
taken again, so a byte is never counted in neither place. Holds live in memory: one server
process per data directory (run.py takes a lock).
"""

import collections
import logging

from vault.errors import TooLarge
from vault.records import Limits, Usage
from vault.store import FileStore

log = logging.getLogger(__name__)


class Quotas:
    def __init__(self, store: FileStore, *, default_quota: int, max_file_size: int) -> None:
        self._store = store
        self.default_quota = default_quota  # 0: none
        self.max_file_size = max_file_size
        self._held: collections.Counter[int] = collections.Counter()  # owner -> bytes reserved
        # owner -> bumped whenever the store's count for the owner changed under this process
        self._generation: collections.Counter[int] = collections.Counter()
        self._stored: dict[int, tuple[int, int]] = {}  # owner -> (generation, bytes stored then)

    async def limits(self, owner: int) -> Limits:
        quota, max_file_size = await self._store.get_limits(owner)
        quota = self.default_quota if quota is None else quota
        return Limits(self.max_file_size if max_file_size is None else max_file_size, quota or None)

    async def usage(self, owner: int) -> Usage:
        """What the owner stores, counting the bytes uploads under way hold."""
        limits = await self.limits(owner)
        stored, files = await self._read_usage(owner)
        return Usage(stored + self._held[owner], files, limits)

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
        stored, _ = await self._read_usage(owner)
        # From here to the end: no await, so no other admission can interleave.
        room = max(limits.quota - stored - self._held[owner], 0)
        if length is not None and length > room + slack:
            raise TooLarge(f"Quota exceeded: {room} bytes of your quota are left")
        reservation = Reservation(self, owner, limits.max_file_size, limits.quota)
        reservation.reserved = min(length or 0, room)
        self._held[owner] += reservation.reserved
        return reservation

    def unmetered(self, owner: int) -> "Reservation":
        """For appending to a resumable upload, whose whole length was reserved when it was
        created: charges nothing."""
        return Reservation(self, owner, None, None)

    def changed(self, owner: int) -> None:
        """The store's count for ``owner`` changed (a commit, delete or termination): reads
        taken before are stale."""
        self._generation[owner] += 1
        self._stored.pop(owner, None)

    async def _read_usage(self, owner: int) -> tuple[int, int]:
        """(bytes, files) the store counts, read with no settle overlapping the read."""
        while True:
            generation = self._generation[owner]
            stored, files = await self._store.usage(owner)
            if self._generation[owner] == generation:
                self._stored[owner] = (generation, stored)
                return stored, files

    def _grow(self, reservation: "Reservation", nbytes: int) -> None:
        """Reserve ``nbytes`` more for an upload that outran its reservation, against the
        store's count as last read (still exact if nothing changed it since) or refuse."""
        owner, quota = reservation.owner, reservation.quota
        assert quota is not None
        cached = self._stored.get(owner)
        if cached is None or cached[0] != self._generation[owner]:
            raise _Stale()
        room = quota - cached[1] - self._held[owner]
        if nbytes > room:
            left = max(room, 0) + reservation.reserved - reservation.charged
            raise TooLarge(f"Quota exceeded: this upload could use {left} more bytes of your quota")
        self._held[owner] += nbytes
        reservation.reserved += nbytes

    def _drop(self, owner: int, nbytes: int) -> None:
        self._held[owner] -= nbytes
        if self._held[owner] <= 0:
            del self._held[owner]


class _Stale(Exception):
    """The store's count must be read again before a reservation grows."""


class Reservation:
    """Bytes held for one upload: ``charge`` as they arrive, then ``settle`` once the store
    counts them (the file committed) or ``release`` (idempotent) to give them back."""

    def __init__(self, quotas: Quotas, owner: int, max_size: int | None, quota: int | None) -> None:
        self._quotas = quotas
        self.owner = owner
        self.max_size = max_size  # largest file, None: no check here
        self.quota = quota  # None: nothing to hold
        self.reserved = 0
        self.charged = 0

    async def charge(self, nbytes: int) -> None:
        """Count ``nbytes`` more of the upload, or raise TooLarge (nothing is then counted)."""
        total = self.charged + nbytes
        if self.max_size is not None and total > self.max_size:
            raise TooLarge(f"File too large: the limit is {self.max_size} bytes")
        if self.quota is not None and total > self.reserved:
            try:
                self._quotas._grow(self, total - self.reserved)
            except _Stale:
                await self._quotas._read_usage(self.owner)
                self._quotas._grow(self, total - self.reserved)
        self.charged = total

    def settle(self) -> None:
        """The store now counts these bytes: stop holding them (before ``release``)."""
        self._quotas.changed(self.owner)
        self.release()

    def release(self) -> None:
        """Give back whatever is still held; safe to call any number of times."""
        if self.reserved:
            self._quotas._drop(self.owner, self.reserved)
            self.reserved = 0
