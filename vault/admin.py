"""Administration: accounts, limits, offline verification and export (``run.py admin ...``).

Everything here works on the database and the key files directly, with or without a server
running on them, so data is never hostage to the server: ``export`` decrypts a file to stdout
given only the data directory.
"""

import argparse
import sys
from collections.abc import Callable
from typing import BinaryIO, TextIO

from vault import format as sfs
from vault.audit import LOST_ACTION, rechain, verify_chain
from vault.core import Core
from vault.errors import ConfigError, FileNotFound, IntegrityError, NotFound, VaultError
from vault.keys import Keyring, remove_key
from vault.rows import rotate


class Admin:
    def __init__(self, core: Core, out: TextIO = sys.stdout, progress: TextIO = sys.stderr) -> None:
        self.core = core
        self.store, self.files, self.auth = core.store, core.files, core.auth
        self.out, self.progress = out, progress

    async def run(self, args: argparse.Namespace, read_password: Callable[[], str], sink: BinaryIO) -> int:
        """Carry out one parsed ``run.py admin`` command and record it in the audit log; the
        exit code: 0 done, 1 failed or damage found, 2 refused."""
        target = getattr(args, "username", "")
        try:
            code = await self._dispatch(args, read_password, sink)
        except ConfigError as exc:
            self.core.audit.record("admin", "local", args.command, target, "refused")
            self.progress.write(f"vault: {exc.message}\n")
            return 2
        except VaultError as exc:
            self.core.audit.record("admin", "local", args.command, target, "failed")
            self.progress.write(f"vault: {exc.message}\n")
            return 1
        self.core.audit.record(
            "admin", "local", args.command, target, "done" if code == 0 else "found damage"
        )
        return code

    async def _dispatch(
        self, args: argparse.Namespace, read_password: Callable[[], str], sink: BinaryIO
    ) -> int:
        command, keyring = args.command, self.core.keyring
        if command == "show":
            await self.show(args.username)
        elif command == "set-limits":
            await self.set_limits(args.username, {name: getattr(args, name) for name in args.given})
        elif command == "create-user":
            await self.create_user(args.username, read_password())
        elif command == "reset-password":
            await self.reset_password(args.username, read_password())
        elif command == "verify":
            return 1 if await self.verify() else 0
        elif command == "export":
            await self.export(args.username, args.filename, sink)
        elif command == "audit-verify":
            return await self.audit_verify(keyring)
        elif command == "rotate-key":
            await self.rewrap(keyring)
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
        self.out.write(
            f"{name}: {usage.files} files, {usage.used} bytes used;"
            f" quota {usage.limits.quota or 'none'}{quota_note};"
            f" max file size {usage.limits.max_file_size}{size_note}\n"
        )

    async def set_limits(self, username: str, changes: dict[str, int | None]) -> None:
        """``changes`` names only the limits to change; None means back to the default."""
        user_id, name = await self._user_id(username)
        quota, max_file_size = await self.store.get_limits(user_id)
        quota = changes["quota"] if "quota" in changes else quota
        max_file_size = changes["max_file_size"] if "max_file_size" in changes else max_file_size
        await self.store.set_limits(name, quota, max_file_size)
        await self.show(name)

    async def create_user(self, username: str, password: str) -> None:
        await self.auth.register(username, password)
        self.out.write(f"created user {username}\n")

    async def reset_password(self, username: str, password: str) -> None:
        await self.auth.reset_password(username, password)
        self.out.write(f"new password set for {username}\n")

    async def verify(self) -> int:
        """Check every header, wrapped key, segment list and segment MAC of every file; name the
        damaged ones. Nothing is written anywhere. Returns how many are damaged."""
        stored = await self.store.all_files()
        names: dict[int, str] = {}
        damaged = checked_bytes = 0
        for number, item in enumerate(stored, 1):
            header = item.header
            if header.owner not in names:
                user = await self.auth.user_by_id(header.owner)
                names[header.owner] = user.username if user else f"<user {header.owner}>"
            where = f"{names[header.owner]}/{header.name}"
            try:
                download = await self.files.open(header.owner, header.name)
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
