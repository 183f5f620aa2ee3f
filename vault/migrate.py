"""Moving a vault to another metadata store: ``run.py admin migrate --to postgres|sqlite``.

Rows are copied as they are, never re-encrypted: the file keys stay wrapped under the master
keys of the data directory, and every tag (accounts, grants, links, refresh tokens, headers,
segments, the audit chain) binds only the row's own fields (random user ids, file ids, names),
never a store-specific row number, so it verifies in the target unchanged. What is copied, in
this order (vault/tables.py names every table of both schemas):

1. The audit log, entry by entry after the target's last one, each entry's MAC checked against
   the previous one while copying. A target that already holds rows must hold a prefix of this
   chain (an earlier, interrupted migration of this vault), else nothing is written.
2. Accounts, invites, grants, links (with their counters), revoked links and refresh tokens:
   each table replaced whole in one transaction; a tagged row whose tag does not verify, or a
   column of the wrong type, is reported DAMAGED and not copied.
3. Every LIVE file: its wrapped key, header and segment list verified against the segment root,
   then each segment read, checked against its committed tag and MAC, and written; the file's
   row last, so a file row in the target means all of it is there. Restartable per file: a file
   whose row and segment list are already in the target is skipped, a half-copied one is
   copied again, a file the source no longer has is removed from the target.

Deleted and abandoned files are purged from the source first; resumable (tus) uploads in
progress are refused, listed, to be finished or deleted first. Shared-state rows (leases,
holds, counters) are not copied: they belong to the processes of the store.
"""

import asyncio
import dataclasses
import hmac
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, TextIO

from vault import format as sfs
from vault.audit import GENESIS, entry_mac
from vault.core import Core
from vault.errors import ConfigError, IntegrityError
from vault.rows import GRANT, LINK, REFRESH, USER, RowKind
from vault.store import AuditEntry, BlobFront, Store, StoredFile
from vault.tables import REAL, SMALL_TABLES, TABLES, as_dict, well_typed

STAGED, LIVE = 0, 1
AUDIT_BATCH = 1000
_TAGGED: dict[str, RowKind[Any]] = {"users": USER, "grants": GRANT, "links": LINK, "refresh_tokens": REFRESH}


@dataclass
class Tally:
    audit: int = 0  # entries copied now
    rows: dict[str, int] = field(default_factory=dict)
    copied: int = 0
    skipped: int = 0
    removed: int = 0
    segments: int = 0
    bytes: int = 0
    damaged: list[str] = field(default_factory=list)


class Migration:
    """One run of a migration from ``core``'s store (its FileService verifies) to ``target``
    (with its blob layer, if any). Every server on either store must be stopped."""

    def __init__(self, core: Core, target: Store, out: TextIO, progress: TextIO) -> None:
        self.core, self.source, self.target = core, core.store, target
        self.meta = target.inner if isinstance(target, BlobFront) else target
        self.source_meta = core.store.inner if isinstance(core.store, BlobFront) else core.store
        # both in the same bucket: the segment rows are copied as they are, naming the objects
        self.shared_objects = isinstance(core.store, BlobFront) and isinstance(target, BlobFront)
        self.out, self.progress = out, progress
        self.tally = Tally()

    async def run(self) -> Tally:
        await self._check_stopped(self.source, "the source")
        await self._check_stopped(self.meta, "the target")
        await self.core.files.purge(staged_too=True)
        await self._refuse_resumables()
        await self._copy_audit()
        for table in SMALL_TABLES:
            await self._copy_table(table)
        await self._copy_files()
        return self.tally

    async def _check_stopped(self, store: Store, which: str) -> None:
        """A live lease in the shared state is a server (another instance, another machine)
        still serving that store: the data-dir lock cannot see it."""
        now = time.time()
        for holder, pid, expires in await store.dump_rows("state_holders"):
            if isinstance(expires, (int, float)) and expires > now:
                raise ConfigError(
                    f"a server (pid {pid} as {holder}) still serves {which} store, its lease running"
                    f" {expires - now:.0f} s more: stop every instance first"
                )

    async def _refuse_resumables(self) -> None:
        rows = [as_dict("files", r) for r in await self.source.dump_rows("files")]
        staged = [r for r in rows if r["state"] == STAGED and r["tus_id"] is not None]
        if staged:
            names = {u.id: u.username for u in await self.source.all_users()}
            for r in staged:
                owner = r["owner"] if isinstance(r["owner"], int) else -1
                self.out.write(
                    f"upload in progress: {names.get(owner, f'<user {owner}>')}/{r['name']}"
                    f" ({r['upload_offset']} of {r['upload_length']} bytes, tus id {r['tus_id']})\n"
                )
            raise ConfigError(
                f"{len(staged)} resumable upload(s) in progress (listed): finish or delete them first"
            )

    # ------------------------------------------------------------------ the audit log

    async def _copy_audit(self) -> None:
        """Check that the target's log is a prefix of the source's, then append the rest,
        each entry's MAC verified against its predecessor before it is written."""
        counts = await self.meta.row_counts()
        target = _entries(self.meta)
        known = counts["audit"]
        if any(counts.values()) and not known and await self.source.audit_entries(0, 1):
            raise ConfigError(_FOREIGN)
        keyring, previous, expected, batch = self.core.keyring, GENESIS, 1, []
        async for entry in _entries(self.source):
            if entry.seq != expected or not hmac.compare_digest(
                entry.mac, entry_mac(keyring, previous, entry)
            ):
                raise ConfigError(
                    f"the audit log is broken at entry {entry.seq}: not migrating (audit-verify)"
                )
            if entry.seq <= known:
                if await anext(target, None) != entry:
                    raise ConfigError(_FOREIGN)
            else:
                batch.append(dataclasses.astuple(entry))
                if len(batch) == AUDIT_BATCH:
                    await self._append_audit(batch)
            previous, expected = entry.mac, expected + 1
        await target.aclose()
        if expected - 1 < known:
            raise ConfigError(_FOREIGN)  # the target's log goes on past the source's
        await self._append_audit(batch)

    async def _append_audit(self, batch: list[tuple[object, ...]]) -> None:
        if batch:
            await self.meta.append_rows("audit", batch)
            self.tally.audit += len(batch)
            batch.clear()

    # ------------------------------------------------------------------ the small tables

    async def _copy_table(self, table: str) -> None:
        good = []
        for row in await self.source.dump_rows(table):
            if well_typed(table, row) and self._authentic(table, row):
                good.append(row)
            else:
                self.tally.damaged.append(f"{table} row {_key(table, row)}")
                self.out.write(f"DAMAGED (not copied): {table} row {_key(table, row)}\n")
        await self.meta.replace_rows(table, good)
        self.tally.rows[table] = len(good)

    def _authentic(self, table: str, row: tuple[object, ...]) -> bool:
        """A tagged row (accounts, grants, links, refresh tokens) verifies under its key; the
        others (invites: an HMAC of a code; revoked links) carry nothing to verify."""
        kind = _TAGGED.get(table)
        if kind is None:
            return True
        values = as_dict(table, row)
        record = kind.row(**{f.name: values[f.name] for f in dataclasses.fields(kind.row)})
        return kind.authentic(self.core.keyring, record)

    # ------------------------------------------------------------------ files

    async def _copy_files(self) -> None:
        live = [fid for fid, state in await self.source.file_states() if state == LIVE]
        wanted = set(live)
        present = {fid for fid, _ in await self.meta.file_states()}
        for fid in present - wanted:  # replaced or deleted in the source since an earlier run
            await self.meta.drop_file_rows(fid)
            self.tally.removed += 1
        for number, fid in enumerate(live, 1):
            row = await self.source.file_row(fid)
            try:
                if row is None:
                    raise IntegrityError()
                stored = _stored(row)
                keys, tags = await self.core.files.verify_stored(stored)
                if fid in present and await self._already_copied(row, tags):
                    self.tally.skipped += 1
                else:
                    if fid in present:
                        await self.meta.drop_file_rows(fid)
                    await self._copy_file(stored, keys, tags, row)
                    self.tally.copied += 1
            except IntegrityError:
                await self.meta.drop_file_rows(fid)
                where = await self._where(row, fid)
                self.tally.damaged.append(where)
                self.out.write(f"DAMAGED (not copied): {where}\n")
            self.progress.write(f"\rfiles {number}/{len(live)}")
            self.progress.flush()
        if live:
            self.progress.write("\n")

    async def _already_copied(self, row: tuple[object, ...], tags: bytes) -> bool:
        """The target has this very row and the same segment list, its bytes where ``--blobs``
        wants them (the file row is written last, after every segment)."""
        there = await self.meta.file_row(row[0])  # type: ignore[arg-type]
        if there is None or not _same("files", row, there):
            return False
        segments = await self.meta.segment_rows(row[0])  # type: ignore[arg-type]
        in_objects = isinstance(self.target, BlobFront)  # where --blobs wants the bytes
        return b"".join(t for _, t, _ in segments) == tags and all(
            (size is not None) == in_objects for _, _, size in segments
        )

    async def _copy_file(
        self, stored: StoredFile, keys: sfs.KeyPair, tags: bytes, row: tuple[object, ...]
    ) -> None:
        """Each segment read, checked and written (the next one read meanwhile), then the row."""
        h = stored.header
        # with both in one bucket, a segment already in an object is named, not copied; one
        # still in its row (a vault part-way through `migrate --blobs s3`) is written out
        in_objects = {i for i, _, size in await self.source_meta.segment_rows(h.file_id) if size is not None}
        ahead: asyncio.Future[bytes] | None = None
        try:
            for index in range(h.seg_count):
                current = ahead or asyncio.ensure_future(self._checked(stored, keys, tags, index))
                ahead = None
                if index + 1 < h.seg_count:
                    ahead = asyncio.ensure_future(self._checked(stored, keys, tags, index + 1))
                blob = await current
                tag = tags[index * sfs.TAG_LEN : (index + 1) * sfs.TAG_LEN]
                if self.shared_objects and index in in_objects:  # the source's object
                    await self.meta.put_segment(h.file_id, index, tag, b"", len(blob))
                else:
                    await self.target.put_segment(h.file_id, index, tag, blob)
                self.tally.segments += 1
                self.tally.bytes += len(blob)
        finally:
            if ahead is not None:
                ahead.cancel()
                await asyncio.gather(ahead, return_exceptions=True)
        await self.meta.append_rows("files", [row])

    async def _checked(self, stored: StoredFile, keys: sfs.KeyPair, tags: bytes, index: int) -> bytes:
        """Segment ``index`` from the source, once it is the committed one and its MAC holds."""
        h = stored.header
        tag = tags[index * sfs.TAG_LEN : (index + 1) * sfs.TAG_LEN]
        blob = await self.source.read_segment(h.file_id, index, tag)
        if blob is None or not hmac.compare_digest(blob[-sfs.TAG_LEN :], tag):
            raise IntegrityError()
        final = index == h.seg_count - 1
        length = sfs.final_segment_len(h.size, h.seg_size) if final else h.seg_size
        pipe = self.core.files.pipe
        await pipe.crypto(sfs.check_segment, keys, h.file_id, h.seg_size, index, final, length, blob)
        return blob

    async def _where(self, row: tuple[object, ...] | None, fid: bytes) -> str:
        values = as_dict("files", row) if row is not None and len(row) == len(TABLES["files"]) else {}
        owner, name = values.get("owner"), values.get("name")
        try:
            user = await self.source.get_user_by_id(owner) if isinstance(owner, int) else None
        except IntegrityError:  # a damaged account row: the file is still named, by number
            user = None
        who = user.username if user else f"<user {owner}>"
        return f"file {who}/{name} ({fid.hex()})"


_FOREIGN = (
    "the target store holds data that is not an earlier migration of this vault (its audit log"
    " is not a prefix of this one's): give an empty database, or move data/vault.db away (it may"
    " be the database this vault was migrated from, which went on without it)"
)


async def _entries(store: Store) -> AsyncGenerator[AuditEntry]:
    after = 0
    while entries := await store.audit_entries(after, AUDIT_BATCH):
        for entry in entries:
            yield entry
        after = entries[-1].seq


def _stored(row: tuple[object, ...]) -> StoredFile:
    """A LIVE file row as a record; a column of the wrong type is an IntegrityError."""
    if not well_typed("files", row):
        raise IntegrityError()
    v = as_dict("files", row)
    try:
        header = sfs.Header(
            version=int(v["version"]),  # type: ignore[call-overload]
            suite=int(v["suite"]),  # type: ignore[call-overload]
            seg_size=int(v["seg_size"]),  # type: ignore[call-overload]
            file_id=bytes(v["file_id"]),  # type: ignore[call-overload]
            owner=int(v["owner"]),  # type: ignore[call-overload]
            name=str(v["name"]),
            size=int(v["size"]),  # type: ignore[call-overload]
            seg_count=int(v["seg_count"]),  # type: ignore[call-overload]
            sha256=bytes(v["sha256"]),  # type: ignore[call-overload]
            created=float(v["created"]),  # type: ignore[arg-type]
            seg_root=bytes(v["seg_root"]),  # type: ignore[call-overload]
        )
        return StoredFile(header, int(v["key_id"]), bytes(v["wrapped_key"]), bytes(v["header_tag"]))  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise IntegrityError() from None


def _same(table: str, a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    """Equal rows, a whole REAL stored as an integer (SQLite) equal to its float."""
    return len(a) == len(b) == len(TABLES[table]) and all(
        (float(x) == float(y) if c.kind == REAL and x is not None and y is not None else x == y)  # type: ignore[arg-type]
        for c, x, y in zip(TABLES[table], a, b, strict=True)
    )


def _key(table: str, row: tuple[object, ...]) -> str:
    """A damaged row named by its first column (an id, a hash: hex)."""
    first = row[0] if row else None
    return first.hex() if isinstance(first, bytes) else str(first)
