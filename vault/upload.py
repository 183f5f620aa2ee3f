"""One file being written: segments sealed in parallel, hashed in order, committed at once."""

import asyncio
import collections
import hashlib
import threading
import time

from vault import format as sfs
from vault.errors import DigestMismatch, InputError
from vault.names import check_new_filename
from vault.pipeline import Pipeline
from vault.quota import Reservation
from vault.records import FileInfo, ResumeState
from vault.store import StoredFile

# A piece shorter than this is copied into a buffer of the segment's own instead of kept: each
# kept piece costs a memoryview and its chunk's object (~300 bytes), so a body that arrives a
# few bytes at a time would hold many times its size until its segment is sealed.
GATHER_BELOW = 4096


class InOrderHash:
    """A file's SHA-256, fed each segment by a crypto thread that sealed it, in index order
    whatever order the seals end in, and no thread waits for another.

    A thread about to seal the segment the hash needs next, with nobody hashing, ``claim``s
    it and hashes it during the seal, a step at a time while the step is in its cache
    (``sfs.seal_pieces``' ``also``), then calls ``hashed``. Any other sealed segment is
    ``add``ed: filed, and hashed at once if it is the next one and nobody is hashing. Whoever
    holds the hash goes on with every segment filed from the next index on (each taken under
    the lock) and lets go at the first one not filed yet, whose own ``add`` goes on. So a
    thread only hashes segments from its own on, before its seal returns: once every seal of
    the file has returned, the hash holds them all. No segment is handed to a hashing thread
    (a submit, a wake-up, a future back to the loop).
    """

    def __init__(self, sha: "hashlib._Hash", first: int) -> None:
        self.sha = sha
        self._next = first  # the index the hash needs next
        self._filed: dict[int, list[sfs.Piece]] = {}
        self._busy = False  # a thread holds the hash
        self._lock = threading.Lock()

    def claim(self, index: int) -> bool:
        """Take the hash for segment ``index`` if it is the next one and nobody holds it; the
        caller then feeds it that segment and calls ``hashed``."""
        with self._lock:
            if self._busy or self._next != index:
                return False
            self._busy = True
            return True

    def hashed(self, index: int) -> None:
        """The claimed segment ``index`` is in the hash: go on with those filed meanwhile."""
        with self._lock:
            self._next = index + 1
        self._go_on()

    def add(self, index: int, pieces: list[sfs.Piece]) -> None:
        """Segment ``index`` is sealed, not hashed: it goes in now or in its turn."""
        with self._lock:
            self._filed[index] = pieces
            if self._busy:
                return  # whoever holds the hash takes it in turn
            self._busy = True
        self._go_on()

    def _go_on(self) -> None:
        try:
            while True:
                with self._lock:
                    taken = self._filed.pop(self._next, None)
                    if taken is None:
                        self._busy = False
                        return
                    self._next += 1
                for piece in taken:
                    self.sha.update(piece)
        except BaseException:
            with self._lock:
                self._busy = False
            raise


def _seal_and_hash(
    hasher: InOrderHash,
    keys: sfs.KeyPair,
    file_id: bytes,
    seg_size: int,
    index: int,
    final: bool,
    pieces: list[sfs.Piece],
) -> bytearray:
    """On a crypto thread: seal a segment, and feed it to the file's hash (during the seal
    if it is the one the hash needs next, else in its turn)."""
    if hasher.claim(index):
        # A seal that fails leaves the hash held and spoilt: the upload fails with it.
        blob = sfs.seal_pieces(keys, file_id, seg_size, index, final, pieces, hasher.sha.update)
        hasher.hashed(index)
    else:
        blob = sfs.seal_pieces(keys, file_id, seg_size, index, final, pieces)
        hasher.add(index, pieces)
    return blob


class Upload:
    """One file being written. Call ``write`` with body bytes, then ``finish`` or ``abort``.

    A one-shot upload learns its size at the end, so a full segment is sealed only once a
    further byte shows it is not the last. A resumed upload knows its length in advance.
    """

    def __init__(self, pipe: Pipeline, reservation: Reservation, resume: ResumeState | None = None) -> None:
        self._pipe = pipe
        self._reservation = reservation
        self.owner = reservation.owner
        self.max_size = reservation.max_size
        self.file_id = resume.file_id if resume else sfs.new_file_id()
        self._file_key = resume.file_key if resume else sfs.new_file_key()
        self._keys = sfs.derive_file_keys(self._file_key, self.file_id)
        self._seg_size = resume.seg_size if resume else pipe.seg_size
        self.length = resume.length if resume else None
        # The segment being filled: the body's chunks (or views of them) as they came, never
        # copied into one buffer (but for short ones: _take); sealing and hashing read them in
        # place (sfs.seal_pieces).
        self._pieces: list[sfs.Piece] = [resume.tail] if resume and resume.tail else []
        self._gather: bytearray | None = None  # the last of _pieces, small pieces copied into it
        self._filled = len(resume.tail) if resume else 0
        self.size = resume.offset if resume else 0
        self._index = self.size // self._seg_size
        self._sha = resume.sha if resume else hashlib.sha256()
        self._hash = InOrderHash(self._sha, self._index)
        self._prefix_tags = resume.tags if resume else b""  # segments sealed by earlier requests
        self._tags: dict[int, bytes] = {}  # index -> tag of the segments this object sealed
        self._inflight: collections.deque[asyncio.Future[None]] = collections.deque()
        self._staged = resume is not None
        self._pinned = False  # pinned by this object (a one-shot upload's STAGED row)
        self._closed = False
        self._committed = False
        self._lock = asyncio.Lock()  # write, finish and abort never interleave

    async def write(self, data: sfs.Piece) -> None:
        """Take the next bytes of the body. ``data`` is kept, not copied, until its segment is
        sealed and hashed: the caller hands it over and never changes it afterwards."""
        async with self._lock:
            await self._write(data)

    async def _write(self, data: sfs.Piece) -> None:
        if self._closed:
            raise RuntimeError("upload already finished or aborted")
        if self.length is not None and self.size + len(data) > self.length:
            raise InputError("The body goes beyond the declared Upload-Length")
        await self._reservation.charge(len(data))
        if not self._staged:
            await self._stage()
        self.size += len(data)
        view = memoryview(data)
        while view:
            # A full segment is only sealed once a further byte proves it is not the last.
            if self._filled == self._seg_size:
                await self._emit(final=False)
            room = self._seg_size - self._filled
            piece = view[:room] if len(view) > room else view
            self._take(piece)
            view = view[len(piece) :]
        if self.length is not None and self._filled == self._seg_size and self.size < self.length:
            await self._emit(final=False)  # the declared length says more follows

    def _take(self, piece: memoryview) -> None:
        """Add ``piece`` to the segment being filled: kept as it is, or, if short, copied."""
        if len(piece) >= GATHER_BELOW:
            self._pieces.append(piece)
            self._gather = None
        elif self._gather is not None:
            self._gather += piece
        else:
            self._gather = bytearray(piece)
            self._pieces.append(self._gather)
        self._filled += len(piece)

    async def _stage(self) -> None:
        """Reserve the STAGED row, pinned first: a STAGED row no process pins is an upload cut
        off by a crash, which a purge removes (a resumed upload is pinned by Resumables)."""
        await self._pipe.pins.pin(self.file_id)
        self._pinned = True
        await self._pipe.store.stage_file(self.file_id, self.owner, time.time())
        self._staged = True

    def _unpin(self) -> None:
        if self._pinned:
            self._pinned = False
            self._pipe.pins.release(self.file_id)

    async def _emit(self, final: bool) -> None:
        segment, self._pieces, self._filled, self._gather = self._pieces, [], 0, None
        index, self._index = self._index, self._index + 1
        await self._limit_inflight(self._pipe.pipeline_depth)
        await self._pipe.slots.acquire()
        task = asyncio.ensure_future(self._store_segment(index, final, segment))
        task.add_done_callback(lambda _: self._pipe.slots.release())
        self._inflight.append(task)

    async def _limit_inflight(self, limit: int) -> None:
        while len(self._inflight) > limit - 1 and self._inflight:
            await self._inflight.popleft()

    async def _drain(self) -> None:
        """Wait until every sealed segment is stored and hashed (InOrderHash: each segment is
        in the hash before the last of the seals that could have fed it returns)."""
        while self._inflight:
            await self._inflight.popleft()

    async def checkpoint(self) -> ResumeState:
        """Store everything but the partial segment; return the state to resume from."""
        async with self._lock:
            await self._drain()
            return ResumeState(
                self.file_id,
                self._file_key,
                self._seg_size,
                self.length or 0,
                self.size,
                b"".join(self._pieces),
                self._sha,
                self._all_tags(),
            )

    def _all_tags(self) -> bytes:
        first = len(self._prefix_tags) // sfs.TAG_LEN
        return self._prefix_tags + b"".join(self._tags[i] for i in range(first, self._index))

    async def _store_segment(self, index: int, final: bool, segment: list[sfs.Piece]) -> None:
        blob = await self._pipe.crypto(
            _seal_and_hash, self._hash, self._keys, self.file_id, self._seg_size, index, final, segment
        )
        tag = bytes(blob[-sfs.TAG_LEN :])
        await self._pipe.store.put_segment(self.file_id, index, tag, blob)
        self._tags[index] = tag

    async def finish(self, name: str, expected_sha256: bytes | None = None) -> FileInfo:
        """Seal the last segment, wait for every write, check the digest and commit atomically."""
        async with self._lock:
            if self._closed:
                raise RuntimeError("upload already finished or aborted")
            info = await self._finish(check_new_filename(name), expected_sha256)
        self._pipe.committed()  # a replaced version goes in the background, not before the reply
        return info

    async def _finish(self, name: str, expected_sha256: bytes | None) -> FileInfo:
        if not self._staged:
            await self._stage()
        if self.length is not None and self.size != self.length:
            raise InputError("The upload is not complete")
        await self._emit(final=True)
        self._closed = True
        await self._drain()
        digest = self._sha.digest()
        if expected_sha256 is not None and expected_sha256 != digest:
            raise DigestMismatch()
        header = sfs.Header(
            version=sfs.VERSION,
            suite=sfs.SUITE_AES256CBC_HMACSHA256,
            seg_size=self._seg_size,
            file_id=self.file_id,
            owner=self.owner,
            name=name,
            size=self.size,
            seg_count=self._index,
            sha256=digest,
            created=time.time(),
            seg_root=sfs.segment_root(self._all_tags()),
        )
        keyring = self._pipe.keyring
        stored = StoredFile(
            header=header,
            key_id=keyring.primary,
            wrapped_key=sfs.wrap_file_key(
                keyring.keks[keyring.primary], keyring.primary, self.file_id, self._file_key
            ),
            header_tag=sfs.header_tag(self._keys, header),
        )
        await self._pipe.store.commit_file(stored)
        self._committed = True
        self._unpin()
        await self._reservation.settle()
        return FileInfo.of(stored)

    async def abort(self) -> None:
        """Stop and remove everything staged, unless it committed. Safe to call more than once."""
        self._closed = True  # no new write begins; one under way ends within its chunk
        async with self._lock:
            for task in self._inflight:
                task.cancel()
            await asyncio.gather(*self._inflight, return_exceptions=True)
            self._inflight.clear()
            await self._reservation.release()
            if self._staged and not self._committed:
                self._staged = False
                try:
                    await self._pipe.store.discard_file(self.file_id)
                finally:
                    self._unpin()
            self._unpin()
