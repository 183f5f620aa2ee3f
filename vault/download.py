"""One verified file being read: byte ranges decrypted a segment at a time, handed out in
pieces, and read ahead only while the client takes them (vault/budget.py bounds the plaintext
of all downloads together)."""

import asyncio
from collections.abc import AsyncGenerator

from vault import format as sfs
from vault.pipeline import Pipeline
from vault.records import FileInfo
from vault.store import StoredFile

# The most a consumer of ``Download.read`` copies out of a segment for a client that does not
# take the bytes as fast as they come: a stalled client holds at most this much in the
# server's write buffer; the segment it came from can be reclaimed (vault/budget.py).
PIECE = 64 * 1024


class Abandoned(Exception):
    """The download's reader went away (``Download.abandon``): nothing more is read."""


def _retrieve(task: "asyncio.Future[bytes]") -> None:
    """A read-ahead dropped unused must not log its error as never retrieved."""
    if not task.cancelled():
        task.exception()


class Download:
    """A verified, pinned file. Read byte ranges with ``read``; always ``close`` it.

    It is a ``Holder`` of the server's segment budget: ``held`` counts the decrypted segments
    it keeps (the one being sent, ``_current``, and those read ahead, ``_ahead``)."""

    held = 0

    def __init__(self, pipe: Pipeline, stored: StoredFile, keys: sfs.KeyPair, tags: bytes) -> None:
        self._pipe = pipe
        self.header = stored.header
        self.info = FileInfo.of(stored)
        self._keys = keys
        self._tags = tags  # verified against the header's seg_root
        self._closed = False
        self._abandoned = False
        self._current: bytes | None = None  # the plaintext of segment _index
        self._index = -1
        self._ahead: dict[int, asyncio.Future[bytes]] = {}  # the segments after it, in order

    @property
    def size(self) -> int:
        return self.header.size

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._drop()
            self._pipe.pins.release(self.header.file_id)

    def abandon(self) -> None:
        """The reader went away: give the memory back now, read nothing more (the pin stays
        until ``close``, so no segment is purged under a read still finishing)."""
        self._abandoned = True
        self._drop()

    def revoke(self) -> None:
        """Drop every decrypted segment (the budget reclaims them from an idle download)."""
        self._current = None
        for task in self._ahead.values():
            task.cancel()
        self._ahead.clear()

    def _drop(self) -> None:
        self.revoke()
        self._pipe.download_budget.give(self, self.held)

    async def _segment(self, index: int) -> bytes:
        header = self.header
        final = index == header.seg_count - 1
        length = sfs.final_segment_len(header.size, header.seg_size) if final else header.seg_size
        tag = self._tags[index * sfs.TAG_LEN : (index + 1) * sfs.TAG_LEN]
        return await self._pipe.open_segment(
            self._keys, header.file_id, header.seg_size, index, length, final, tag
        )

    def _start(self, index: int) -> "asyncio.Future[bytes]":
        task = asyncio.ensure_future(self._segment(index))
        task.add_done_callback(_retrieve)
        return task

    async def _plaintext(self, index: int) -> bytes:
        """Segment ``index``, decrypted: kept, read ahead, or read now (waiting for room)."""
        if self._index == index and self._current is not None:
            return self._current
        budget = self._pipe.download_budget
        if self._current is not None:
            self._current = None
            budget.give(self)
        task = self._ahead.pop(index, None)
        if task is None:
            self._drop()  # what was read ahead no longer follows on: wait holding nothing
            await budget.take(self)
            if self._abandoned:
                self._drop()
                raise Abandoned()
            task = self._start(index)
        self._index = index
        try:
            self._current = await task
        except BaseException:
            self._drop()
            raise
        if self._abandoned:
            self._drop()
            raise Abandoned()
        return self._current

    def _read_ahead(self, pos: int, last: int) -> None:
        """Start reading the segments after ``pos`` up to ``pipeline_depth`` held, while the
        budget has room to spare (never waiting for it)."""
        if self.held >= self._pipe.pipeline_depth or self._abandoned:
            return  # the common case, after each step: nothing to start
        seg_size, budget = self.header.seg_size, self._pipe.download_budget
        base = pos // seg_size
        index = base + 1 if self._current is not None and self._index == base else base
        index = max(self._ahead, default=index - 1) + 1
        while index <= last and self.held < self._pipe.pipeline_depth and budget.try_take(self):
            self._ahead[index] = self._start(index)
            index += 1

    async def read(self, start: int = 0, end: int | None = None) -> AsyncGenerator[memoryview, int | None]:
        """Yield the plaintext of bytes [start, end) as views of its segments, each verified
        before it is used: the rest of a segment within the range, each time. The consumer
        sends back (``asend``) how many bytes of the view it took, or None for all of them,
        and is given the rest next.

        The consumer hands each view's bytes to its client before it asks for more and drops
        the view before it waits for its client: while it waits, this download is idle and
        its segments may be reclaimed (then read again), so a stalled client holds only what
        the consumer copied out of the view for it (``PIECE``, handlers/files.py). Reading
        ahead starts only after the client took something."""
        end = self.size if end is None else end
        if not 0 <= start <= end <= self.size:
            raise ValueError("range outside the file")
        seg_size, budget = self.header.seg_size, self._pipe.download_budget
        last = (end - 1) // seg_size if end else 0
        pos = start
        try:
            while pos < end:
                index = pos // seg_size
                offset = index * seg_size
                stop = min(end, offset + len(await self._plaintext(index)))
                budget.idle(self)
                # Only _current keeps the segment (no local here), so reclaiming frees it
                # once the consumer dropped the view.
                taken = yield memoryview(self._current or b"")[pos - offset : stop - offset]
                budget.busy(self)
                pos = stop if taken is None else pos + taken
                if pos == stop and self._index == index and self._current is not None:
                    self._current = None  # this segment is all handed out
                    budget.give(self)
                self._read_ahead(pos, last)
        finally:
            budget.busy(self)
            self._drop()
