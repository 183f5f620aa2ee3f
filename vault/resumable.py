"""Resumable (tus) uploads: created with a wrapped key and an authenticated description, then
appended to by one request at a time (docs/FORMAT.md, "Resumable uploads")."""

import asyncio
import hashlib
import logging
import secrets
import time

from vault import format as sfs
from vault.errors import IntegrityError, NotFound, OffsetMismatch
from vault.names import check_new_filename
from vault.pipeline import Pipeline
from vault.records import FileInfo, ResumeState, UploadState
from vault.store import Hold, Resumable
from vault.upload import Upload

log = logging.getLogger(__name__)
RESUMABLE_ID_BYTES = 16
WRITING = "tus"  # the hold kind of a request writing to a resumable upload (limit 1), by tus id


class Resumables:
    """Resumable uploads: create, look up (verified), resume, terminate."""

    def __init__(self, pipe: Pipeline, ttl: int) -> None:
        self._pipe = pipe
        self.ttl = ttl
        self._busy: dict[str, Hold] = {}  # uploads a request in this process is writing to now
        # uploads whose request stopped receiving (ended or cut off) and is saving what arrived:
        # set when that save is over, so a HEAD or PATCH asked meanwhile waits for its offset
        self._saving: dict[str, asyncio.Event] = {}
        # tus_id -> (offset, SHA-256 of the segments before it, last used): saves re-reading them
        self._hashes: dict[str, tuple[int, hashlib._Hash, float]] = {}

    def prune(self, now: float) -> None:
        """Forget cached hash states of uploads idle past their expiry."""
        for tus_id in [t for t, (_, _, used) in self._hashes.items() if used < now - self.ttl]:
            del self._hashes[tus_id]

    async def create(self, owner: int, name: str, length: int, metadata: str) -> UploadState:
        """Register a resumable upload of ``length`` bytes; its key is wrapped at once so the
        upload survives a restart."""
        name = check_new_filename(name)
        reservation = await self._pipe.quotas.admit(owner, length)
        try:
            upload = self._new(owner, name, length, metadata)
            await self._pipe.store.create_resumable(upload)  # from now on the store counts it
            await reservation.settle()
        finally:
            await reservation.release()
        return UploadState.of(upload)

    def _new(self, owner: int, name: str, length: int, metadata: str) -> Resumable:
        file_id, file_key, now = sfs.new_file_id(), sfs.new_file_key(), time.time()
        primary, tus_id = self._pipe.keyring.primary, secrets.token_urlsafe(RESUMABLE_ID_BYTES)
        ticket = sfs.UploadTicket(self._pipe.seg_size, file_id, owner, length, now, tus_id, name)
        return Resumable(
            tus_id=tus_id,
            file_id=file_id,
            owner=owner,
            name=name,
            length=length,
            offset=0,
            seg_size=self._pipe.seg_size,
            key_id=primary,
            wrapped_key=sfs.wrap_file_key(self._pipe.keyring.keks[primary], primary, file_id, file_key),
            tail=None,
            expires=now + self.ttl,
            metadata=metadata,
            created=now,
            tag=sfs.upload_tag(sfs.derive_file_keys(file_key, file_id), ticket),
        )

    async def state(self, owner: int, tus_id: str) -> UploadState:
        """Where the owner's upload stands (verified), once a save under way has ended: the
        offset a PATCH will be accepted at."""
        await self.settled(tus_id)
        return UploadState.of(await self.get(owner, tus_id))

    def saving(self, tus_id: str) -> None:
        """The request writing ``tus_id`` stopped receiving and saves what arrived."""
        self._saving.setdefault(tus_id, asyncio.Event())

    async def settled(self, tus_id: str) -> None:
        """Wait until no save of ``tus_id`` is under way (a request still receiving is not
        waited for: it may go on for as long as its client sends)."""
        saving = self._saving.get(tus_id)
        if saving is not None:
            await saving.wait()

    async def get(self, owner: int, tus_id: str) -> Resumable:
        upload = await self._pipe.store.get_resumable(owner, tus_id)
        if upload is None or upload.expires < time.time():
            raise NotFound("Upload not found")
        self._upload_keys(upload)
        return upload

    def _upload_keys(self, upload: Resumable) -> tuple[bytes, sfs.KeyPair]:
        """Unwrap a resumable upload's key and check its tag: (file key, derived keys)."""
        kek = self._pipe.keyring.kek(upload.key_id)
        try:
            if kek is None:
                raise IntegrityError()
            file_key = sfs.unwrap_file_key(kek, upload.key_id, upload.file_id, upload.wrapped_key)
            keys = sfs.derive_file_keys(file_key, upload.file_id)
            ticket = sfs.UploadTicket(
                upload.seg_size,
                upload.file_id,
                upload.owner,
                upload.length,
                upload.created,
                upload.tus_id,
                upload.name,
            )
            sfs.verify_upload(keys, ticket, upload.tag)
        except IntegrityError:
            log.error("resumable upload %s failed its integrity check", upload.file_id.hex())
            raise
        return file_key, keys

    async def resume(self, owner: int, tus_id: str, offset: int) -> "ResumedUpload":
        """Open a resumable upload for one request that appends at ``offset``."""
        await self.get(owner, tus_id)
        await self._begin(tus_id, "Another request is writing to this upload; retry with HEAD")
        try:
            upload = await self.get(owner, tus_id)  # as it stands now that no one else writes
            if offset != upload.offset:
                raise OffsetMismatch(f"Upload-Offset must be {upload.offset}")
        except BaseException:
            self._done(tus_id)
            raise
        await self._pipe.pins.pin(upload.file_id)
        try:
            state = await self._resume_state(upload)
        except BaseException:
            self.end(upload)
            raise
        return ResumedUpload(self, upload, Upload(self._pipe, self._pipe.quotas.unmetered(owner), state))

    async def _begin(self, tus_id: str, busy: str) -> None:
        """Be the one request writing to ``tus_id`` (in every process), or OffsetMismatch."""
        hold = await self._pipe.state.hold(WRITING, tus_id, 1, 1)
        if hold is None:
            raise OffsetMismatch(busy)
        self._busy[tus_id] = hold

    def _done(self, tus_id: str) -> "asyncio.Future[None] | None":
        hold = self._busy.pop(tus_id, None)
        if hold is None:
            return None
        # Given back in a task's first step (at once, in one process); a shared state's write
        # is awaited by ``ResumedUpload`` before its answer goes out (see ``end``).
        return asyncio.ensure_future(self._pipe.state.release(hold))

    def end(self, upload: Resumable) -> "asyncio.Future[None] | None":
        """A request stopped writing to ``upload``; pair with each successful ``resume``.
        Returns the release of its write hold, for a caller that must answer only once every
        process can see it (else a client's next PATCH, above all on another instance after
        this one dies, finds the upload still being written: 409 until the lease runs out)."""
        released = self._done(upload.tus_id)
        saving = self._saving.pop(upload.tus_id, None)
        if saving is not None:
            saving.set()
        self._pipe.pins.release(upload.file_id)
        return released

    def completed(self, upload: Resumable) -> None:
        """``upload`` became a file: nothing to resume any more."""
        self._hashes.pop(upload.tus_id, None)

    async def keep_progress(self, upload: Resumable, state: ResumeState) -> int:
        """Store the progress of ``upload`` up to ``state`` (its partial segment sealed), so a
        later request, or a restarted server, goes on from there; returns the new offset."""
        keys = sfs.derive_file_keys(state.file_key, state.file_id)
        root = sfs.segment_root(state.tags)
        tail = await self._pipe.crypto(
            sfs.seal_tail, keys, state.file_id, state.seg_size, state.offset, root, state.tail
        )
        expires = time.time() + self.ttl
        if not await self._pipe.store.save_progress(
            upload.file_id, upload.offset, state.offset, tail, expires
        ):
            raise OffsetMismatch()
        self._hashes[upload.tus_id] = (state.offset, state.sha, time.time())
        return state.offset

    async def _resume_state(self, upload: Resumable) -> ResumeState:
        file_key, keys = self._upload_keys(upload)
        tags = await self._pipe.segment_tags(upload.file_id, upload.offset // upload.seg_size)
        tail = b""
        if upload.tail is not None:
            root = sfs.segment_root(tags)
            tail = sfs.open_tail(keys, upload.file_id, upload.seg_size, upload.offset, root, upload.tail)
        elif upload.offset:
            raise IntegrityError()
        cached = self._hashes.get(upload.tus_id)
        if cached is not None and cached[0] == upload.offset:
            sha = cached[1].copy()  # a copy: a failed request must not spoil the cached state
        else:
            sha = await self._rehash(upload, keys, tags)
        return ResumeState(
            upload.file_id, file_key, upload.seg_size, upload.length, upload.offset, tail, sha, tags
        )

    async def _rehash(self, upload: Resumable, keys: sfs.KeyPair, tags: bytes) -> "hashlib._Hash":
        """After a restart the running SHA-256 is gone: hash the stored full segments once."""
        sha = hashlib.sha256()
        for index in range(upload.offset // upload.seg_size):
            tag = tags[index * sfs.TAG_LEN : (index + 1) * sfs.TAG_LEN]
            seg_size = upload.seg_size
            plaintext = await self._pipe.open_segment(
                keys, upload.file_id, seg_size, index, seg_size, False, tag
            )
            await self._pipe.hash(sha.update, plaintext)
        return sha

    async def terminate(self, owner: int, tus_id: str) -> None:
        upload = await self.get(owner, tus_id)
        # No PATCH may start while its segments are being deleted.
        await self._begin(tus_id, "Another request is writing to this upload")
        try:
            self._hashes.pop(tus_id, None)
            await self._pipe.store.discard_file(upload.file_id)
            await self._pipe.quotas.changed(owner)
        finally:
            self._done(tus_id)


class ResumedUpload:
    """One request's worth of appending to a resumable upload: ``write``, then ``save`` (which
    completes the file when the last byte arrived) or ``discard``."""

    def __init__(self, service: Resumables, resumable: Resumable, upload: Upload) -> None:
        self._uploads = service
        self.resumable = resumable
        self._upload = upload
        self._done = False
        self.info: FileInfo | None = None

    @property
    def offset(self) -> int:
        return self._upload.size

    @property
    def state(self) -> UploadState:
        return UploadState.of(self.resumable)

    @property
    def done(self) -> bool:
        return self._done

    async def write(self, data: bytes) -> None:
        await self._upload.write(data)

    async def save(self) -> int:
        """Make what arrived durable and return the new offset; commit the file if complete."""
        if self._done:
            raise RuntimeError("resumed upload already saved or discarded")
        resumable = self.resumable
        self._uploads.saving(resumable.tus_id)
        try:
            if self._upload.size == resumable.length:
                self.info = await self._upload.finish(resumable.name)
                self._uploads.completed(resumable)
                return resumable.length
            return await self._uploads.keep_progress(resumable, await self._upload.checkpoint())
        finally:
            await self._close()

    async def discard(self) -> None:
        """Forget what this request sent: the stored offset stays where it was."""
        if not self._done:
            self._uploads.saving(self.resumable.tus_id)
            try:
                await self._upload.checkpoint()  # let segment writes under way finish first
            finally:
                await self._close()

    async def _close(self) -> None:
        """End the request's writing, and wait until every process can see it ended."""
        if self._done:
            return
        self._done = True
        released = self._uploads.end(self.resumable)
        if released is not None:
            try:
                await released
            except Exception:  # the hold's lease frees it; the saved bytes stay saved
                log.exception("a resumable upload's write hold could not be given back")
