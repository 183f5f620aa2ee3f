"""Per-user limits kept in memory (one server process per data directory)."""

from vault.errors import TooManyUploads


class UploadSlots:
    """Counts each user's uploads in progress and refuses one beyond ``per_user``."""

    def __init__(self, per_user: int) -> None:
        self.per_user = per_user
        self._active: dict[int, int] = {}

    def acquire(self, user_id: int) -> None:
        """Take a slot for ``user_id`` or raise TooManyUploads; pair with exactly one release."""
        count = self._active.get(user_id, 0)
        if count >= self.per_user:
            raise TooManyUploads(f"Too many uploads in progress: at most {self.per_user} at once")
        self._active[user_id] = count + 1

    def release(self, user_id: int) -> None:
        count = self._active.get(user_id, 0) - 1
        if count > 0:
            self._active[user_id] = count
        else:
            self._active.pop(user_id, None)

    def in_progress(self, user_id: int) -> int:
        return self._active.get(user_id, 0)

    def total(self) -> int:
        """Uploads in progress across all users."""
        return sum(self._active.values())
