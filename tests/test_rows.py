"""Row authentication in one place (vault/rows.py): every tagged row kind is rotated by
rotate-key, and after a rotation every kind still verifies under the new key alone."""

import asyncio
import dataclasses
import inspect
import io
import logging
from pathlib import Path

import pytest

from tests import incore
from vault import rows
from vault import store as store_module
from vault.admin import Admin
from vault.auth import Identity
from vault.keys import Keyring, row_tag
from vault.rows import GRANT, LINK, REFRESH, ROW_KINDS, USER
from vault.store import Resumable, User

pytestmark = pytest.mark.usefixtures("store_kind")  # each test on SQLite and on PostgreSQL
OLD_KEY, NEW_KEY = bytes(range(32)), bytes(range(1, 33))
PASSWORD = "correct horse battery"


def tagged_row_types() -> set[type]:
    """The store's records that carry a master-key ``tag``; a resumable upload's tag is under its
    own file key (re-wrapped by rotate-key with the files' keys)."""
    return {
        cls
        for _, cls in inspect.getmembers(store_module, inspect.isclass)
        if dataclasses.is_dataclass(cls)
        and {"key_id", "tag"} <= {f.name for f in dataclasses.fields(cls)}
        and cls is not Resumable
    }


def test_every_tagged_row_kind_is_rotated() -> None:
    assert {kind.row for kind in ROW_KINDS} == tagged_row_types()
    assert len(tagged_row_types()) == 4  # the check above sees the rows it is about


def test_a_seal_under_one_key_is_not_authentic_under_another() -> None:
    old, new = incore.keyring(OLD_KEY), incore.keyring(NEW_KEY)
    user = USER.seal(old, User(7, "alice", b"$2b$hash", 0, b""))
    assert USER.authentic(old, user)
    assert not USER.authentic(new, user)  # key 1 there is another key
    assert not USER.authentic(old, dataclasses.replace(user, password_hash=b"$2b$other"))
    assert not USER.authentic(old, dataclasses.replace(user, key_id=2))  # not in the ring


def test_rotate_key_keeps_every_row_kind_valid(tmp_path: Path) -> None:
    db = tmp_path / "vault.db"
    both = Keyring.of(2, {1: OLD_KEY, 2: NEW_KEY})
    new_only = Keyring.of(2, {2: NEW_KEY})

    async def populate() -> tuple[str, str, str]:
        async with incore.core(db, incore.keyring(OLD_KEY)) as core:
            for name in ("alice", "bob"):
                await core.auth.register(name, PASSWORD)
            pair = await core.auth.login("alice", PASSWORD)
            alice = (await core.auth.authenticate(pair.token)).identity
            upload = await core.files.begin_upload(alice.user_id, None)
            await upload.write(b"shared bytes")
            await upload.finish("f.bin")
            await core.sharing.grant(alice, "f.bin", "bob")
            _, secret = await core.sharing.create_link(alice, "f.bin", None, None, 3)
            resumable = await core.files.resumables.create(alice.user_id, "r.bin", 10, "")
            return pair.refresh_token, secret, resumable.tus_id

    async def rotate() -> None:
        async with incore.core(db, both) as core:
            await Admin(core, out=io.StringIO(), progress=io.StringIO()).rewrap(both)

    async def check(refresh: str, secret: str, tus_id: str) -> None:
        async with incore.core(db, new_only) as core:
            for kind in ROW_KINDS:
                rows = await kind.every(core.store)
                assert rows and all(kind.authentic(new_only, row) for row in rows), kind.label
            await core.auth.login("alice", PASSWORD)  # user rows
            assert (await core.auth.refresh(refresh)).token  # refresh rows
            bob = await core.auth.find_user("bob")
            assert bob is not None
            shared = await core.sharing.shared_with(Identity(bob.id, "bob"))  # grant rows
            assert [s.info.name for s in shared] == ["f.bin"]
            link, download = await core.sharing.open_link(secret, None)  # link rows, file keys
            download.close()
            alice = await core.auth.find_user("alice")
            assert alice is not None
            assert (await core.files.resumables.get(alice.id, tus_id)).length == 10  # its key

    refresh, secret, tus_id = asyncio.run(populate())
    asyncio.run(rotate())
    asyncio.run(check(refresh, secret, tus_id))


def test_rotate_leaves_a_forged_row_refused(tmp_path: Path) -> None:
    db = tmp_path / "vault.db"
    both = Keyring.of(2, {1: OLD_KEY, 2: NEW_KEY})

    async def forge_and_rotate() -> tuple[bool, str]:
        async with incore.core(db, incore.keyring(OLD_KEY)) as core:
            await core.auth.register("mallory", PASSWORD)
            user = await core.store.get_user("mallory")
            assert user is not None
            await core.store.update_user(dataclasses.replace(user, password_hash=b"$2b$forged"))
        out = io.StringIO()
        async with incore.core(db, both) as core:
            await Admin(core, out=out, progress=io.StringIO()).rewrap(both)
            forged = await core.store.get_user("mallory")
            assert forged is not None
            return USER.authentic(both, forged), out.getvalue()

    authentic, report = asyncio.run(forge_and_rotate())
    assert not authentic
    assert "SKIPPED 1 user rows" in report


def test_each_kind_names_its_label_once() -> None:
    assert [kind.label for kind in ROW_KINDS] == [b"user", b"grant", b"link", b"refresh"]
    assert {USER, GRANT, LINK, REFRESH} == set(ROW_KINDS)


def test_a_user_row_tags_its_epoch_and_disabled_flag_only_once_set() -> None:
    """Rows written before the token epoch (and before the disabled flag) existed keep their
    tag: the epoch is authenticated only once raised, the flag only while set, after it."""
    ring = incore.keyring(OLD_KEY)
    base = User(7, "alice", b"$2b$hash", 1, b"")
    layouts = {
        (0, 0): (1, 7, "alice", b"$2b$hash"),
        (3, 0): (1, 7, "alice", b"$2b$hash", 3),
        (0, 1): (1, 7, "alice", b"$2b$hash", 0, 1),
        (3, 1): (1, 7, "alice", b"$2b$hash", 3, 1),
    }
    for (epoch, disabled), fields in layouts.items():
        user = dataclasses.replace(base, token_epoch=epoch, disabled=disabled)
        assert USER.tag(ring, user) == row_tag(ring, 1, b"user", *fields), (epoch, disabled)


def test_rotation_counts_and_logs_each_row_it_sealed_and_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    both = Keyring.of(2, {1: OLD_KEY, 2: NEW_KEY})

    async def forge_and_rotate() -> dict[str, tuple[int, int]]:
        async with incore.core(tmp_path / "vault.db", incore.keyring(OLD_KEY), bcrypt_rounds=4) as core:
            for name in ("alice", "bob", "mallory", "trudy"):
                await core.auth.register(name, PASSWORD)
            for name in ("mallory", "trudy"):
                user = await core.store.get_user(name)
                assert user is not None
                await core.store.update_user(dataclasses.replace(user, password_hash=b"$2b$forged"))
            caplog.clear()
            with caplog.at_level(logging.ERROR, logger="vault.rows"):
                return await rows.rotate(core.store, both)

    report = asyncio.run(forge_and_rotate())
    assert report == {"user": (2, 2), "grant": (0, 0), "link": (0, 0), "refresh": (0, 0)}
    logged = [r.getMessage() for r in caplog.records if r.name == "vault.rows"]
    assert logged == ["a user row failed its integrity check: left as it is"] * 2
