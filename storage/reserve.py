"""Disk space held back beside the database for the writes that free space on a full disk.

A full disk must still let users log in, sign up and delete (each a few pages of WAL), or
nobody could free space. A file of ``size`` bytes, allocated while there is room, holds that
space against uploads and against anything else writing to the file system. When the free
space falls below ``size`` (or a write fails for want of space) the file is removed, and
uploads are refused until twice ``size`` is free again and the file is allocated anew.
"""

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


class Reserve:
    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size  # 0: no reserve, never refuses anything
        self.asked = False  # hold() has been called before: an allocation now is a retaking

    def free(self) -> int:
        """Bytes free on the file system, for this (unprivileged) process."""
        try:
            stat = os.statvfs(self.path.parent)
        except OSError:  # the file system is gone (unmounted): nothing to hold or give
            return 0
        return stat.f_bavail * stat.f_frsize

    @property
    def held(self) -> bool:
        return self.size == 0 or self.path.exists()

    def hold(self) -> bool:
        """Whether the reserve is held, allocating it if there is room for it twice over."""
        first, self.asked = not self.asked, True
        if self.held:
            return True
        if self.free() < 2 * self.size:
            return False
        staging = self.path.with_name(f"{self.path.name}.{os.getpid()}.new")  # workers: one each
        try:
            fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.size)  # real blocks, not a sparse file
            finally:
                os.close(fd)
            os.replace(staging, self.path)
        except OSError as exc:
            log.warning("cannot allocate the disk reserve %s: %s", self.path, exc)
            staging.unlink(missing_ok=True)
            return False
        if first:  # a fresh data directory
            log.info("allocated a disk reserve of %d bytes: %s", self.size, self.path)
        else:  # given up by this process or another (workers), or refused until now
            log.warning("disk reserve of %d bytes held again: uploads are accepted", self.size)
        return True

    def make_room(self) -> None:
        """Before a write that must work on a full disk: give up the reserve if space is short."""
        if self.size and self.free() < self.size:
            self.release()

    def release(self) -> None:
        if self.size and self.path.exists():
            self.path.unlink(missing_ok=True)
            log.error(
                "the disk is full: released the %d-byte reserve for logins and deletes;"
                " uploads answer 507 until space is freed",
                self.size,
            )
