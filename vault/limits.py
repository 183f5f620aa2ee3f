"""Per-user limits on work in progress, held in the shared state (vault/store.py StateStore),
so that they hold in total however many processes serve the vault."""

from vault.errors import TooManyDownloads, TooManyUploads
from vault.state import LocalState
from vault.store import Hold, StateStore
from vault.throttle import address_key

UPLOAD = "upload"  # the hold kind of an upload slot, keyed by user id


class UploadSlots:
    """Counts each user's uploads in progress, every process's, and refuses one beyond
    ``per_user``. ``in_progress`` and ``total`` count this process's uploads (metrics)."""

    def __init__(self, per_user: int, state: StateStore | None = None) -> None:
        self.per_user = per_user
        self._state: StateStore = LocalState() if state is None else state
        self._mine: dict[str, Hold] = {}  # this process's slots, by hold id

    async def acquire(self, user_id: int) -> Hold:
        """Take a slot for ``user_id`` or raise TooManyUploads; pair with exactly one release."""
        hold = await self._state.hold(UPLOAD, str(user_id), 1, self.per_user)
        if hold is None:
            raise TooManyUploads(f"Too many uploads in progress: at most {self.per_user} at once")
        self._mine[hold.id] = hold
        return hold

    async def release(self, hold: Hold) -> None:
        """Give the slot back; a second release of the same hold does nothing."""
        if self._mine.pop(hold.id, None) is not None:
            await self._state.release(hold)

    def in_progress(self, user_id: int) -> int:
        """This process's uploads of ``user_id``."""
        return sum(1 for hold in self._mine.values() if hold.key == str(user_id))

    def total(self) -> int:
        """Uploads in progress in this process, across all users."""
        return len(self._mine)


DOWNLOAD_KINDS = {"user": "download-user", "link": "download-link", "address": "download-address"}
_BY = {"user": "for this account", "link": "through this link", "address": "from this address"}


class DownloadSlots:
    """Counts the downloads in progress, every process's, per user, per public link and per
    client address (IPv6: per /64), and refuses one beyond any of the three caps (0: no cap).
    ``total`` counts this process's downloads (metrics)."""

    def __init__(
        self, per_user: int, per_link: int, per_address: int, state: StateStore | None = None
    ) -> None:
        self._caps = {"user": per_user, "link": per_link, "address": per_address}
        self._state: StateStore = LocalState() if state is None else state
        self._mine: dict[str, Hold] = {}

    async def acquire(self, *, user: int | None, link: str | None, address: str) -> tuple[Hold, ...]:
        """Take a slot under each key that applies, or raise TooManyDownloads holding none;
        pass what it returns to ``release`` exactly once."""
        keys = [("user", str(user))] if user is not None else []
        if link is not None:
            keys.append(("link", link))
        keys.append(("address", address_key(address)))  # the broadest cap is named last
        taken: list[Hold] = []
        try:
            for kind, key in keys:
                cap = self._caps[kind]
                hold = await self._state.hold(DOWNLOAD_KINDS[kind], key, 1, cap or None)
                if hold is None:
                    raise TooManyDownloads(
                        f"Too many downloads in progress: at most {cap} at once {_BY[kind]}"
                    )
                taken.append(hold)
                self._mine[hold.id] = hold
        except BaseException:
            await self.release(tuple(taken))
            raise
        return tuple(taken)

    async def release(self, holds: tuple[Hold, ...]) -> None:
        """Give the slots back; a second release of the same holds does nothing."""
        for hold in holds:
            if self._mine.pop(hold.id, None) is not None:
                await self._state.release(hold)

    def total(self) -> int:
        """Downloads in progress in this process (each holds one address slot)."""
        return sum(1 for hold in self._mine.values() if hold.kind == DOWNLOAD_KINDS["address"])
