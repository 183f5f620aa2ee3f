"""Administration: accounts, limits, offline verification and export (``run.py admin ...``).

Everything here works on the database and the key files directly, with or without a server
running on them, so data is never hostage to the server: ``export`` decrypts a file to stdout
given only the data directory.
"""

import argparse
import datetime
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TextIO, cast

from vault import format as sfs
from vault.audit import LOST_ACTION, rechain, verify_chain
from vault.core import Core
from vault.errors import ConfigError, DatabaseDamaged, FileNotFound, IntegrityError, NotFound, VaultError
from vault.keys import JWT_SECRET_FILE, KEYRING_FILE, Keyring, remove_key
from vault.migrate import Migration
from vault.rows import rotate
from vault.store import BlobCollector, BlobMover, Store, StoredFile
from vault.units import format_size

DATABASE_FILE = "vault.db"


class Admin:
    def __init__(self, core: Core, out: TextIO = sys.stdout, progress: TextIO = sys.stderr) -> None:
        self.core = core
        self.store, self.files, self.auth = core.store, core.files, core.auth
        self.out, self.progress = out, progress
        self.target: Store | None = None  # migrate --to another store: opened by run.py

    async def run(
        self,
        args: argparse.Namespace,
        read_password: Callable[[], str],
        sink: BinaryIO,
        confirm: Callable[[str], str] = input,
    ) -> int:
        """Carry out one parsed ``run.py admin`` command and record it in the audit log; the
        exit code: 0 done, 1 failed or damage found, 2 refused."""
        target = getattr(args, "username", "")
        try:
            code = await self._dispatch(args, read_password, sink, confirm)
        except ConfigError as exc:
            self.core.audit.record("admin", "local", args.command, target, "refused")
            self.progress.write(f"vault: {exc.message}\n")
            return 2
        except VaultError as exc:
            self.core.audit.record("admin", "local", args.command, target, "failed")
            self.progress.write(
                f"vault: {exc.explain() if isinstance(exc, DatabaseDamaged) else exc.message}\n"
            )
            return 1
        self.core.audit.record(
            "admin", "local", args.command, target, "done" if code == 0 else "found damage"
        )
        return code

    async def _dispatch(
        self,
        args: argparse.Namespace,
        read_password: Callable[[], str],
        sink: BinaryIO,
        confirm: Callable[[str], str],
    ) -> int:
        command, keyring = args.command, self.core.keyring
        if command == "show":
            await self.show(args.username)
        elif command == "set-limits":
            await self.set_limits(args.username, {name: getattr(args, name) for name in args.given})
        elif command == "invite":
            await self.invite(args.ttl or self.core.settings.invite_ttl)
        elif command in ("disable-user", "enable-user"):
            await self.set_disabled(args.username, command == "disable-user")
        elif command == "backup":
            await self.backup(args.dest, args.with_keys)
        elif command == "compact":
            await self.compact()
        elif command == "list-users":
            await self.list_users()
        elif command == "delete-user":
            await self.delete_user(args.username, None if args.yes else confirm)
        elif command == "create-user":
            await self.create_user(args.username, read_password())
        elif command == "reset-password":
            await self.reset_password(args.username, read_password())
        elif command == "verify":
            return 1 if await self.verify() else 0
        elif command == "export" and args.output is not None:
            await self.export_to(args.username, args.filename, args.output)
        elif command == "export":
            await self.export(args.username, args.filename, sink)
        elif command == "audit-verify":
            return await self.audit_verify(keyring)
        elif command == "rotate-key":
            await self.rewrap(keyring)
        elif command == "migrate":
            return await self.migrate(args.to, args.blobs)
        elif command == "gc":
            await self.gc(args.lease, getattr(args, "offline", False))
        elif command == "retire-key":
            await self.retire_key(args.key_id)
        else:
            raise ConfigError(f"unknown admin command {command!r}")
        return 0

    async def retire_key(self, key_id: int) -> None:
        """Drop an old master key from the keyring file, once nothing uses it."""
        if key_id == self.core.keyring.primary:
            raise ConfigError(f"key {key_id} is the primary key: rotate first")
        if key_id in await self.key_ids_in_use():
            raise ConfigError(
                f"key {key_id} still wraps or tags some data (files, rows or audit entries):"
                " run rotate-key first"
            )
        remove_key(self.core.settings.data_dir, key_id)
        self.out.write(f"key {key_id} removed from the keyring\n")

    async def _user_id(self, username: str) -> tuple[int, str]:
        user = await self.store.get_user(username)
        if user is None:
            raise NotFound(f"no user {username!r}")
        return user.id, user.username

    async def show(self, username: str) -> None:
        user_id, name = await self._user_id(username)
        quota, max_file_size = await self.store.get_limits(user_id)
        usage = await self.files.usage(user_id)
        quota_note = "" if quota is not None else " (default)"
        size_note = "" if max_file_size is not None else " (default)"
        limits = usage.limits
        self.out.write(
            f"{name}: {usage.files} files, {format_size(usage.used)} used;"
            f" quota {format_size(limits.quota) if limits.quota else 'none'}{quota_note};"
            f" max file size {format_size(limits.max_file_size)}{size_note}\n"
        )

    async def set_limits(self, username: str, changes: dict[str, int | None]) -> None:
        """``changes`` names only the limits to change; None means back to the default."""
        user_id, name = await self._user_id(username)
        quota, max_file_size = await self.store.get_limits(user_id)
        quota = changes["quota"] if "quota" in changes else quota
        max_file_size = changes["max_file_size"] if "max_file_size" in changes else max_file_size
        await self.store.set_limits(name, quota, max_file_size)
        await self.show(name)

    async def invite(self, ttl: int) -> None:
        """Print a new single-use invite code for ``POST /register`` (field ``invite``)."""
        code = await self.auth.make_invite(ttl)
        self.out.write(f"{code}\n")
        self.progress.write(f"invite code valid once, for {ttl} seconds\n")

    async def set_disabled(self, username: str, disabled: bool) -> None:
        await self.auth.set_disabled(username, disabled)
        self.out.write(
            f"{username} disabled: every session ended, files kept\n" if disabled else f"{username} enabled\n"
        )

    async def list_users(self) -> None:
        """One line per account: the columns an operator asks for, sizes human-readable."""
        default = self.core.settings.user_quota
        rows = [("user", "created", "files", "usage", "stored", "quota", "disabled", "last login")]
        for a in await self.store.accounts():
            quota = a.quota if a.quota is not None else default
            rows.append(
                (
                    a.username,
                    _when(a.created),
                    str(a.files),
                    format_size(a.used),
                    format_size(a.stored),
                    (format_size(quota) if quota else "none") + ("" if a.quota is not None else " (default)"),
                    "yes" if a.disabled else "no",
                    _when(a.last_login),
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            self.out.write(
                "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n"
            )

    async def delete_user(self, username: str, confirm: Callable[[str], str] | None) -> None:
        """Remove the account, its files (purged at once), grants, links and tokens. Without
        ``--yes`` (``confirm`` given) the user name must be typed again."""
        user_id, name = await self._user_id(username)
        usage = await self.files.usage(user_id)
        if confirm is not None:
            answer = confirm(
                f"delete {name} with {usage.files} files ({format_size(usage.used)}), their shares,"
                " links and sessions? Type the user name to confirm: "
            )
            if answer.strip() != name:
                raise ConfigError("not confirmed: nothing deleted")
        if not await self.store.delete_user(user_id):
            raise NotFound(f"no user {username!r}")
        await self.files.purge()
        self.out.write(f"deleted {name}: {usage.files} files, {format_size(usage.used)}\n")

    async def backup(self, dest: Path, with_keys: bool) -> None:
        """A consistent copy of the database in the new directory ``dest`` (taken in one read
        transaction while the server writes on), with the key files beside it if asked, and
        SQLite's structural check of the copy. ``run.py`` then verifies every file in it."""
        try:
            os.mkdir(dest, 0o700)
        except OSError as exc:
            raise ConfigError(f"backup destination {dest}: {exc.strerror} (give a new directory)") from None
        await self.store.backup(dest / DATABASE_FILE)
        copied = []
        if with_keys:
            for name in (KEYRING_FILE, JWT_SECRET_FILE):
                source = self.core.settings.data_dir / name
                if source.exists():
                    shutil.copy2(source, dest / name)
                    copied.append(name)
        self.out.write(
            f"backup of {self.core.settings.data_dir} in {dest}: {DATABASE_FILE}"
            + "".join(f", {name}" for name in copied)
            + ("" if with_keys else " (no key files: keep data/master.keys backed up apart)")
            + "\n"
        )

    async def compact(self) -> None:
        """VACUUM: the space of deleted files goes back to the file system."""
        before, after = await self.store.compact()
        self.out.write(f"database {format_size(before)} -> {format_size(after)}\n")

    async def gc(self, lease: int | None, offline: bool) -> None:
        """Purge replaced, deleted and expired files (and, with the server stopped, uploads cut
        off by a crash); then, on a blob store, delete the objects no segment row names."""
        purged = await self.files.purge(staged_too=offline)
        self.out.write(f"purged {purged} replaced, deleted, expired or abandoned file(s)\n")
        if not isinstance(self.store, BlobCollector):
            self.out.write("blob_store: database: no objects to collect\n")
            return
        found = await self.store.collect(lease)
        self.out.write(
            f"objects: {found.objects} under the prefix, {found.referenced} in use;"
            f" orphans: {found.removed} deleted ({format_size(found.removed_bytes)}),"
            f" {found.young} younger than the lease kept; {found.foreign} foreign key(s) left alone\n"
        )

    async def migrate(self, to: str, blobs: str | None) -> int:
        """To another metadata store (``migrate_store``), or, on the same one, move every LIVE
        file's segments between rows and objects, rows as they are (no re-encryption), each
        file verified against its header's segment root first, the audit chain checked before.
        Restartable: a segment already moved is skipped. Server stopped."""
        if to != self.core.settings.storage:
            return await self.migrate_store(to, blobs)
        if blobs is None:
            self.out.write("nothing to do: give --blobs s3 or --blobs database\n")
            return 0
        if not isinstance(self.store, BlobMover):
            raise ConfigError("migrate --blobs needs the s3_* settings (README, Object storage)")
        if await self.audit_verify(self.core.keyring):
            raise ConfigError("the audit log does not verify: not migrating (see audit-verify)")
        await self.files.purge(staged_too=True)
        live = await self.store.all_files()
        unfinished = {fid for fid, _, _ in await self.store.wrapped_keys()} - {f.header.file_id for f in live}
        if unfinished:
            raise ConfigError(
                f"{len(unfinished)} resumable upload(s) in progress: finish or delete them first"
            )
        moved = kept = damaged = 0
        for number, item in enumerate(live, 1):
            try:
                moved_now = await self._move_file(item, blobs == "s3")
            except IntegrityError:
                damaged += 1
                self.out.write(f"DAMAGED (left where it is): file {item.header.file_id.hex()}\n")
                continue
            moved += moved_now
            kept += item.header.seg_count - moved_now
            self.progress.write(f"\rmigrated {number}/{len(live)} files")
        self.progress.write("\n")
        where = "the bucket" if blobs == "s3" else "the database"
        self.out.write(
            f"{len(live) - damaged} file(s) now in {where}: {moved} segment(s) moved, {kept} already there;"
            f" {damaged} damaged. Set blob_store: {blobs} before starting the server.\n"
        )
        return 1 if damaged else 0

    async def migrate_store(self, to: str, blobs: str | None) -> int:
        """Copy the vault into ``self.target``, the other metadata store (vault/migrate.py);
        the source is left as it was. Exit 1 if anything was damaged (and not copied)."""
        if self.target is None:
            raise ConfigError(f"migrate --to {to}: no target store opened")  # run.py opens it
        if await self.audit_verify(self.core.keyring):
            raise ConfigError("the audit log does not verify: not migrating (see audit-verify)")
        t = await Migration(self.core, self.target, self.out, self.progress).run()
        check = await verify_chain(self.target, self.core.keyring)
        rows = ", ".join(f"{n} {table.replace('_', ' ')}" for table, n in t.rows.items())
        self.out.write(
            f"copied to {to}: {rows}; {t.audit} audit entries (target log"
            f" {'intact' if check.broken is None else 'BROKEN'}: {check.checked} entries,"
            f" last mac {check.last_mac.hex()});"
            f" files: {t.copied} copied ({t.segments} segments, {format_size(t.bytes)}),"
            f" {t.skipped} already there, {t.removed} removed from the target; {len(t.damaged)} damaged\n"
        )
        blob_store = blobs or self.core.settings.blob_store
        where = (
            "storage: postgres, with VAULT_DATABASE_URL in the server's environment"
            if to == "postgres"
            else f"storage: sqlite (the database is {self.core.settings.db_path})"
        )
        self.out.write(f"Set {where} and blob_store: {blob_store} before starting the server.\n")
        return 1 if t.damaged or check.broken is not None else 0

    async def _move_file(self, item: StoredFile, to_objects: bool) -> int:
        assert isinstance(self.store, BlobMover)  # noqa: S101  # checked by migrate
        header = item.header
        download = await self.files.open(header.owner, header.name)  # header and segment root verified
        try:
            tags = await self.store.read_tags(header.file_id, header.seg_count)
            moved = 0
            for index, tag in tags:
                moved += await self.store.move_segment(header.file_id, index, tag, to_objects)
            return moved
        finally:
            download.close()

    async def check_store(self) -> int:
        """SQLite's structural check; 1 if it finds anything."""
        result = await self.store.check()
        (self.progress if result == "ok" else self.out).write(f"database structure: {result}\n")
        return 0 if result == "ok" else 1

    async def create_user(self, username: str, password: str) -> None:
        await self.auth.register(username, password)
        self.out.write(f"created user {username}\n")

    async def reset_password(self, username: str, password: str) -> None:
        await self.auth.reset_password(username, password)
        self.out.write(f"new password set for {username}\n")

    async def verify(self) -> int:
        """Check every header, wrapped key, segment list and segment MAC of every file; name the
        damaged ones, whatever is damaged (a MAC, a page of the database), and go on. Nothing
        is written anywhere. Returns how many are damaged."""
        stored = await self.store.file_names()
        names: dict[int, str] = {}
        damaged = checked_bytes = 0
        for number, (owner, name) in enumerate(stored, 1):
            if owner not in names:
                names[owner] = await self._username(owner)
            where = f"{names[owner]}/{name}"
            try:
                download = await self.files.open(owner, name)
                try:
                    async for chunk in download.read():
                        checked_bytes += len(chunk)
                finally:
                    download.close()
            except (IntegrityError, FileNotFound):
                damaged += 1
                self.out.write(f"DAMAGED {where}\n")
            self.progress.write(f"\rverified {number}/{len(stored)} files, {checked_bytes} bytes")
            self.progress.flush()
        self.progress.write("\n")
        self.out.write(f"{len(stored)} files checked, {damaged} damaged\n")
        return damaged

    async def _username(self, user_id: int) -> str:
        try:
            user = await self.auth.user_by_id(user_id)
        except IntegrityError:  # a damaged account row: the file is still named, by number
            user = None
        return user.username if user else f"<user {user_id}>"

    async def rewrap(self, keyring: Keyring) -> None:
        """After a new primary master key: re-wrap every file key under it, re-tag every
        account, grant, link and refresh-token row and re-chain the audit log. Segments and
        headers are untouched (they depend on the file key only), so this reads and writes a
        few hundred bytes per file."""
        primary, kek = keyring.primary, keyring.keks[keyring.primary]
        rows = await self.store.wrapped_keys()
        for number, (file_id, key_id, wrapped) in enumerate(rows, 1):
            old = keyring.kek(key_id)
            if key_id == primary:
                continue
            if old is None:
                self.out.write(f"SKIPPED file {file_id.hex()}: its key id {key_id} is not in the keyring\n")
                continue
            file_key = sfs.unwrap_file_key(old, key_id, file_id, wrapped)
            await self.store.set_wrapped_key(
                file_id, key_id, primary, sfs.wrap_file_key(kek, primary, file_id, file_key)
            )
            self.progress.write(f"\rre-wrapped {number}/{len(rows)} file keys")
        for label, (_, refused) in (await rotate(self.store, keyring)).items():
            if refused:
                self.out.write(f"SKIPPED {refused} {label} rows that fail their integrity check\n")
        chain = await rechain(self.store, keyring)
        self.progress.write("\n")
        if chain.broken is not None:
            self.out.write(
                f"audit log BROKEN at entry {chain.broken.seq}: it and later entries keep their old key\n"
            )
        self.out.write(
            f"every key now wrapped under master key {primary}; audit log re-chained,"
            f" last mac {chain.last_mac.hex()}\n"
        )

    async def audit_verify(self, keyring: Keyring) -> int:
        """Check the audit chain; print how far it holds, the first broken entry and how many
        entries the server recorded as lost. Exit status 1 if either."""
        check = await verify_chain(self.store, keyring)
        if check.broken is not None:
            b = check.broken
            self.out.write(
                f"audit log BROKEN at entry {b.seq} ({b.action} {b.target} by {b.actor});"
                f" {check.checked} entries before it verify\n"
            )
            return 1
        if check.lost:
            self.out.write(
                f"audit log INCOMPLETE: {check.checked} entries verify, but {check.lost} entries"
                f" could not be written (see the '{LOST_ACTION}' entries); last mac {check.last_mac.hex()}\n"
            )
            return 1
        self.out.write(f"audit log intact: {check.checked} entries; last mac {check.last_mac.hex()}\n")
        return 0

    async def key_ids_in_use(self) -> set[int]:
        return await self.store.key_ids_in_use()

    async def export(self, username: str, name: str, sink: BinaryIO) -> int:
        """Write a file's verified plaintext to ``sink``; returns its size."""
        user_id, _ = await self._user_id(username)
        download = await self.files.open(user_id, name)
        try:
            async for chunk in download.read():
                sink.write(chunk)
            sink.flush()
            return download.size
        finally:
            download.close()

    async def export_to(self, username: str, name: str, path: Path) -> int:
        """``export`` into ``path``, through a temporary file beside it renamed at the end: on
        any error nothing is left at ``path`` (an existing file there is not touched)."""
        try:
            handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False)
        except OSError as exc:
            raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
        try:
            with handle:
                size = await self.export(username, name, cast(BinaryIO, handle))
                os.fsync(handle.fileno())
            os.replace(handle.name, path)
        except BaseException:
            os.unlink(handle.name)
            raise
        return size


def _when(timestamp: float | None) -> str:
    """UTC, to the minute; ``-`` for never."""
    if timestamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M")
