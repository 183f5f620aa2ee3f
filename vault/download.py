"""One verified file being read: byte ranges decrypted a few segments ahead of the reader."""

import asyncio
import collections
from collections.abc import AsyncIterator

from vault import format as sfs
from vault.pipeline import Pipeline
from vault.records import FileInfo
from vault.store import StoredFile


class Download:
    """A verified, pinned file. Read byte ranges with ``read``; always ``close`` it."""

    def __init__(self, pipe: Pipeline, stored: StoredFile, keys: sfs.KeyPair, tags: bytes) -> None:
        self._pipe = pipe
        self.header = stored.header
        self.info = FileInfo.of(stored)
        self._keys = keys
        self._tags = tags  # verified against the header's seg_root
        self._closed = False

    @property
    def size(self) -> int:
        return self.header.size

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pipe.pins.release(self.header.file_id)

    async def _segment(self, index: int) -> bytes:
        header = self.header
        final = index == header.seg_count - 1
        length = sfs.final_segment_len(header.size, header.seg_size) if final else header.seg_size
        tag = self._tags[index * sfs.TAG_LEN : (index + 1) * sfs.TAG_LEN]
        return await self._pipe.open_segment(
            self._keys, header.file_id, header.seg_size, index, length, final, tag
        )

    async def read(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Yield the plaintext of bytes [start, end), verifying each segment before it is used."""
        end = self.size if end is None else end
        if not 0 <= start <= end <= self.size:
            raise ValueError("range outside the file")
        if start == end:
            return
        seg_size = self.header.seg_size
        first, last = start // seg_size, (end - 1) // seg_size
        pending: collections.deque[asyncio.Future[bytes]] = collections.deque()
        next_index = first
        try:
            for index in range(first, last + 1):
                while next_index <= last and len(pending) < self._pipe.pipeline_depth:
                    pending.append(asyncio.ensure_future(self._segment(next_index)))
                    next_index += 1
                plaintext = await pending.popleft()
                offset = index * seg_size
                lo, hi = max(start - offset, 0), min(end - offset, len(plaintext))
                yield plaintext if (lo, hi) == (0, len(plaintext)) else plaintext[lo:hi]
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
