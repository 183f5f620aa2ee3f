"""Per-user limits on work in progress, held in the shared state (vault/store.py StateStore),
so that they hold in total however many processes serve the vault."""

from vault.errors import TooManyUploads
from vault.state import LocalState
from vault.store import Hold, StateStore

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
