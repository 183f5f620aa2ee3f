"""Attacks on a real SQLite database: upload through FileService, tamper with the .db file
directly (the threat model's attacker can write it, but holds no master key), then read.

Every tampered read must fail with the one IntegrityError (or, for a file moved away from its
owner, not be found) and yield nothing but a correct prefix of the original bytes.
"""

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import incore, pg
from tests.dbedit import edit
from tests.incore import MASTER_KEY, keyring
from vault import format as sfs
from vault.errors import FileNotFound, IntegrityError, NotFound
from vault.files import FileService
from vault.keys import Keyring

S = 4096
OWNER, OTHER_OWNER = 1, 2
NAME = "report.bin"
DATA = random.Random(5869).randbytes(3 * S + 100)  # four segments, the last one short
N = 4
pytestmark = pytest.mark.usefixtures("store_kind")  # each test on SQLite and on PostgreSQL


@contextlib.asynccontextmanager
async def service(db: Path, ring: Keyring | None = None) -> AsyncIterator[FileService]:
    """The files service of a real core (tests/incore.py) on ``db``, closed on exit."""
    async with incore.core(db, ring, segment_size=S, max_file_size=1 << 20, pipeline_depth=2) as core:
        yield core.files


def run(db: Path, fn: Callable[[FileService], Any], ring: Keyring | None = None) -> Any:
    """Run ``await fn(service)`` on a fresh event loop and service."""

    async def main() -> Any:
        async with service(db, ring) as svc:
            return await fn(svc)

    return asyncio.run(main())


async def _upload(svc: FileService, owner: int, name: str, data: bytes) -> None:
    upload = await svc.begin_upload(owner, None)
    for start in range(0, len(data), 1000):  # chunks that do not line up with segments
        await upload.write(data[start : start + 1000])
    await upload.finish(name)


def upload(db: Path, data: bytes = DATA, owner: int = OWNER, name: str = NAME) -> None:
    run(db, lambda svc: _upload(svc, owner, name, data))


async def _read(svc: FileService, owner: int, name: str) -> tuple[bytes, BaseException | None]:
    got = bytearray()
    try:
        download = await svc.open(owner, name)
    except (IntegrityError, FileNotFound) as exc:
        return b"", exc
    try:
        async for chunk in download.read():
            got += chunk
    except IntegrityError as exc:
        return bytes(got), exc
    finally:
        download.close()
    return bytes(got), None


def read(
    db: Path, owner: int = OWNER, name: str = NAME, ring: Keyring | None = None
) -> tuple[bytes, BaseException | None]:
    """(bytes yielded, the error that ended the read or None)."""
    result: tuple[bytes, BaseException | None] = run(db, lambda svc: _read(svc, owner, name), ring)
    return result


def assert_fails(db: Path, prefix_len: int = 0, **kwargs: Any) -> None:
    """The read fails with the one generic error after yielding exactly ``prefix_len``
    correct bytes (the verified segments before the tampered one), and nothing altered."""
    got, exc = read(db, **kwargs)
    assert type(exc) is IntegrityError, exc
    assert exc.args == (IntegrityError.message,)
    assert exc.__cause__ is None
    assert exc.__context__ is None or exc.__suppress_context__
    assert DATA.startswith(got)
    assert len(got) == prefix_len


@contextlib.contextmanager
def tamper(db: Path) -> Iterator[Any]:
    """A plain connection to the vault's database (SQLite, or PostgreSQL under the store_kind
    fixture: tests/dbedit.py), committed and closed on exit."""
    with edit(db) as con:
        yield con


def file_id_of(con: Any, name: str = NAME, owner: int = OWNER) -> bytes:
    row = con.execute("SELECT file_id FROM files WHERE owner = ? AND name = ?", (owner, name)).fetchone()
    return bytes(row[0])


def segment(con: Any, file_id: bytes, idx: int) -> bytes:
    row = con.execute("SELECT data FROM segments WHERE file_id = ? AND idx = ?", (file_id, idx)).fetchone()
    return bytes(row[0])


def put(con: Any, file_id: bytes, idx: int, data: bytes) -> None:
    con.execute("UPDATE segments SET data = ? WHERE file_id = ? AND idx = ?", (data, file_id, idx))


def segments_of(db: Path) -> dict[bytes, dict[int, bytes]]:
    with tamper(db) as con:
        rows = con.execute("SELECT file_id, idx, data FROM segments").fetchall()
    out: dict[bytes, dict[int, bytes]] = {}
    for fid, idx, data in rows:
        out.setdefault(bytes(fid), {})[idx] = bytes(data)
    return out


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A database holding DATA as NAME for OWNER."""
    path = tmp_path / "vault.db"
    upload(path)
    return path


def test_untampered_file_reads_back(db: Path) -> None:
    assert read(db) == (DATA, None)
    with tamper(db) as con:
        (count,) = con.execute("SELECT count(*) FROM segments").fetchone()
    assert count == N


# --- segments ----------------------------------------------------------------------------------

_FLIPS = [
    ("iv", 0),
    ("iv", sfs.IV_LEN - 1),
    ("ciphertext", sfs.IV_LEN),
    ("ciphertext", sfs.IV_LEN + 50),
    ("ciphertext", -sfs.TAG_LEN - 1),
    ("tag", -sfs.TAG_LEN),
    ("tag", -1),
]


@pytest.mark.parametrize("idx", [0, 1, N - 1])
@pytest.mark.parametrize(("part", "pos"), _FLIPS, ids=[f"{p}{o}" for p, o in _FLIPS])
def test_download_of_segment_with_flipped_byte_fails(db: Path, idx: int, part: str, pos: int) -> None:
    with tamper(db) as con:
        fid = file_id_of(con)
        blob = bytearray(segment(con, fid, idx))
        blob[pos] ^= 0x01
        put(con, fid, idx, bytes(blob))
    assert_fails(db, prefix_len=idx * S)


def test_download_with_two_segments_swapped_fails(db: Path) -> None:
    with tamper(db) as con:
        fid = file_id_of(con)
        a, b = segment(con, fid, 1), segment(con, fid, 2)
        put(con, fid, 1, b)
        put(con, fid, 2, a)
    assert_fails(db, prefix_len=S)


def test_download_with_final_and_non_final_segment_swapped_fails(db: Path) -> None:
    with tamper(db) as con:
        fid = file_id_of(con)
        a, b = segment(con, fid, 0), segment(con, fid, N - 1)
        put(con, fid, 0, b)
        put(con, fid, N - 1, a)
    assert_fails(db, prefix_len=0)


def test_download_with_swapped_idx_values_fails(db: Path) -> None:
    """Swap the rows' idx columns rather than their data."""
    with tamper(db) as con:
        fid = file_id_of(con)
        con.execute("UPDATE segments SET idx = -1 WHERE file_id = ? AND idx = 1", (fid,))
        con.execute("UPDATE segments SET idx = 1 WHERE file_id = ? AND idx = 2", (fid,))
        con.execute("UPDATE segments SET idx = 2 WHERE file_id = ? AND idx = -1", (fid,))
    assert_fails(db, prefix_len=0)  # the tags moved with the rows: the list no longer matches


@pytest.mark.parametrize(("old", "new"), [(1, 7), (N - 1, N), (N - 1, -1), (2, 2**40)])
def test_download_with_changed_stored_idx_fails(db: Path, old: int, new: int) -> None:
    with tamper(db) as con:
        con.execute("UPDATE segments SET idx = ? WHERE file_id = ? AND idx = ?", (new, file_id_of(con), old))
    assert_fails(db, prefix_len=0)  # the segment list no longer matches the header: refused at open


def test_download_with_last_segment_dropped_fails(db: Path) -> None:
    with tamper(db) as con:
        con.execute("DELETE FROM segments WHERE file_id = ? AND idx = ?", (file_id_of(con), N - 1))
    assert_fails(db, prefix_len=0)  # the segment list no longer matches the header: refused at open


def test_download_with_middle_segment_dropped_fails(db: Path) -> None:
    with tamper(db) as con:
        con.execute("DELETE FROM segments WHERE file_id = ? AND idx = 1", (file_id_of(con),))
    assert_fails(db, prefix_len=0)  # the segment list no longer matches the header: refused at open


@pytest.mark.parametrize("size", [(N - 1) * S, (N - 1) * S - 1, S])
def test_download_with_last_segment_dropped_and_size_rewritten_fails(db: Path, size: int) -> None:
    with tamper(db) as con:
        fid = file_id_of(con)
        con.execute("DELETE FROM segments WHERE file_id = ? AND idx = ?", (fid, N - 1))
        con.execute(
            "UPDATE files SET size = ?, seg_count = ? WHERE file_id = ?",
            (size, sfs.segment_count(size, S), fid),
        )
    assert_fails(db, prefix_len=0)


def test_appended_segment_is_never_served(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """N is authenticated: an extra row after the last segment is not read at all (every row
    the store hands the reader is counted)."""
    with tamper(db) as con:
        fid = file_id_of(con)
        last = segment(con, fid, N - 1)
        first = segment(con, fid, 0)
        con.execute(
            "INSERT INTO segments (file_id, idx, tag, data) VALUES (?, ?, ?, ?)", (fid, N, last[-32:], last)
        )
        con.execute(
            "INSERT INTO segments (file_id, idx, tag, data) VALUES (?, ?, ?, ?)",
            (fid, N + 1, first[-32:], first),
        )
    tags_read: list[int] = []
    segments_read: list[int] = []

    async def counted(svc: FileService) -> tuple[bytes, BaseException | None]:
        read_tags, read_segment = svc.store.read_tags, svc.store.read_segment

        async def counting_tags(file_id: bytes, count: int) -> list[tuple[int, bytes]]:
            rows = await read_tags(file_id, count)
            tags_read.extend(index for index, _ in rows)
            return rows

        async def counting_segment(file_id: bytes, index: int, tag: bytes) -> bytes | None:
            segments_read.append(index)
            return await read_segment(file_id, index, tag)

        monkeypatch.setattr(svc.store, "read_tags", counting_tags)
        monkeypatch.setattr(svc.store, "read_segment", counting_segment)
        return await _read(svc, OWNER, NAME)

    assert run(db, counted) == (DATA, None)
    assert sorted(segments_read) == list(range(N))  # each of the N segments once, the extra rows never
    assert set(tags_read) <= set(range(N))


def test_appended_segment_with_rewritten_size_fails(db: Path) -> None:
    with tamper(db) as con:
        fid = file_id_of(con)
        first = segment(con, fid, 0)
        con.execute(
            "INSERT INTO segments (file_id, idx, tag, data) VALUES (?, ?, ?, ?)", (fid, N, first[-32:], first)
        )
        con.execute("UPDATE files SET size = ?, seg_count = ? WHERE file_id = ?", (len(DATA) + S, N + 1, fid))
    assert_fails(db, prefix_len=0)


def test_download_with_segment_moved_from_another_file_fails(db: Path) -> None:
    upload(db, DATA, name="other.bin")  # the same plaintext, so only the keys and ids differ
    with tamper(db) as con:
        fid, other = file_id_of(con), file_id_of(con, "other.bin")
        con.execute("DELETE FROM segments WHERE file_id = ? AND idx = 2", (fid,))
        con.execute("UPDATE segments SET file_id = ? WHERE file_id = ? AND idx = 2", (fid, other))
    assert_fails(db, prefix_len=0)  # the moved segment's tag is not in the header's list: refused at open


def test_download_with_segment_copied_from_another_users_file_fails(db: Path) -> None:
    upload(db, DATA, owner=OTHER_OWNER)
    with tamper(db) as con:
        fid, other = file_id_of(con), file_id_of(con, owner=OTHER_OWNER)
        put(con, fid, 0, segment(con, other, 0))
    assert_fails(db, prefix_len=0)


# --- the files row -----------------------------------------------------------------------------


def test_download_with_wrapped_keys_swapped_between_files_fails(db: Path) -> None:
    upload(db, DATA, name="other.bin")
    with tamper(db) as con:
        fid, other = file_id_of(con), file_id_of(con, "other.bin")
        (a,) = con.execute("SELECT wrapped_key FROM files WHERE file_id = ?", (fid,)).fetchone()
        (b,) = con.execute("SELECT wrapped_key FROM files WHERE file_id = ?", (other,)).fetchone()
        con.execute("UPDATE files SET wrapped_key = ? WHERE file_id = ?", (b, fid))
        con.execute("UPDATE files SET wrapped_key = ? WHERE file_id = ?", (a, other))
    assert_fails(db)
    assert_fails(db, name="other.bin")


def test_download_with_wrapped_key_and_header_tag_copied_from_another_file_fails(db: Path) -> None:
    upload(db, DATA, name="other.bin")
    with tamper(db) as con:
        fid, other = file_id_of(con), file_id_of(con, "other.bin")
        con.execute(
            "UPDATE files SET (wrapped_key, header_tag) ="
            " (SELECT wrapped_key, header_tag FROM files WHERE file_id = ?) WHERE file_id = ?",
            (other, fid),
        )
    assert_fails(db)


@pytest.mark.parametrize("pos", [0, 20, 60, 79])
def test_download_with_flipped_wrapped_key_fails(db: Path, pos: int) -> None:
    with tamper(db) as con:
        (wrapped,) = con.execute("SELECT wrapped_key FROM files").fetchone()
        wrapped = bytearray(wrapped)
        wrapped[pos] ^= 0x80
        con.execute("UPDATE files SET wrapped_key = ?", (bytes(wrapped),))
    assert_fails(db)


def test_file_with_changed_owner_opens_for_nobody(db: Path) -> None:
    with tamper(db) as con:
        con.execute("UPDATE files SET owner = ? WHERE owner = ?", (OTHER_OWNER, OWNER))
    got, exc = read(db, owner=OTHER_OWNER)
    assert got == b""
    assert type(exc) in (IntegrityError, FileNotFound)
    got, exc = read(db, owner=OWNER)
    assert (got, type(exc)) == (b"", FileNotFound)


@pytest.mark.parametrize(
    ("column", "value"),
    [("version", 0), ("version", 2), ("suite", 0), ("suite", 2), ("seg_size", 2 * S), ("seg_size", S // 2)],
)
def test_download_with_downgraded_format_fails(db: Path, column: str, value: int) -> None:
    with tamper(db) as con:
        con.execute(f"UPDATE files SET {column} = ?", (value,))  # noqa: S608 (a test constant)
    assert_fails(db)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("size", len(DATA) - 1),
        ("size", len(DATA) + 1),
        ("size", -1),
        ("seg_count", N + 1),
        ("seg_count", -1),
        ("seg_size", 2**40),
        ("seg_size", 0),
        ("owner", -1),
        ("sha256", bytes(32)),
        ("sha256", b""),
        ("header_tag", bytes(32)),
        ("header_tag", b""),
        ("key_id", 2),
        ("key_id", 2**40),
        ("key_id", -1),
    ],
)
def test_download_with_tampered_header_column_fails(db: Path, column: str, value: object) -> None:
    with tamper(db) as con:
        con.execute(f"UPDATE files SET {column} = ?", (value,))  # noqa: S608 (a test constant)
    got, exc = read(db, owner=-1 if column == "owner" else OWNER)
    assert (got, type(exc)) == (b"", IntegrityError)


@pytest.mark.parametrize(
    ("column", "value"), [("size", None), ("size", "many"), ("seg_size", None), ("wrapped_key", None)]
)
def test_download_with_header_column_of_wrong_type_fails_as_integrity_error(
    db: Path, column: str, value: object
) -> None:
    """Every failure is the one generic error (docs/FORMAT.md), also for a NULL or text value
    written into an integer or blob column."""
    if incore.BACKEND == "postgres" and isinstance(value, str):
        pytest.skip("PostgreSQL's columns are typed: text cannot be stored in an integer column")
    with tamper(db) as con:
        con.execute(f"UPDATE files SET {column} = ?", (value,))  # noqa: S608 (a test constant)
    assert_fails(db)


def test_files_renamed_into_each_other_fail(db: Path) -> None:
    upload(db, b"the other file", name="other.bin")
    with tamper(db) as con:
        con.execute("UPDATE files SET name = 'tmp' WHERE name = ?", (NAME,))
        con.execute("UPDATE files SET name = ? WHERE name = 'other.bin'", (NAME,))
        con.execute("UPDATE files SET name = 'other.bin' WHERE name = 'tmp'")
    assert_fails(db)
    assert_fails(db, name="other.bin")


def test_file_renamed_to_a_free_name_fails(db: Path) -> None:
    with tamper(db) as con:
        con.execute("UPDATE files SET name = 'renamed.bin'")
    assert_fails(db, name="renamed.bin")
    assert read(db)[0] == b"" and type(read(db)[1]) is FileNotFound


# --- keys --------------------------------------------------------------------------------------


def test_download_with_wrong_master_key_fails(db: Path) -> None:
    assert_fails(db, ring=keyring(bytes(32)))
    assert_fails(db, ring=keyring(MASTER_KEY, key_id=2))  # the right key under another id


def test_rotated_file_key_opens_and_leaves_segments_byte_identical(db: Path) -> None:
    new_master = bytes(range(100, 132))
    old_kek, new_kek = sfs.derive_kek(MASTER_KEY), sfs.derive_kek(new_master)
    before = segments_of(db)
    with tamper(db) as con:
        fid, wrapped, tag = con.execute("SELECT file_id, wrapped_key, header_tag FROM files").fetchone()
        file_key = sfs.unwrap_file_key(old_kek, 1, bytes(fid), bytes(wrapped))
        rewrapped = sfs.wrap_file_key(new_kek, 2, bytes(fid), file_key)
        con.execute("UPDATE files SET key_id = 2, wrapped_key = ? WHERE file_id = ?", (rewrapped, fid))
    both = Keyring(primary=2, keks={1: old_kek, 2: new_kek})
    assert read(db, ring=both) == (DATA, None)
    assert read(db, ring=Keyring(primary=2, keks={2: new_kek})) == (DATA, None)
    assert_fails(db, ring=keyring())  # the old key alone no longer opens it
    assert segments_of(db) == before
    with tamper(db) as con:
        assert con.execute("SELECT header_tag FROM files").fetchone()[0] == tag


# --- lifecycle ---------------------------------------------------------------------------------


def test_unfinished_upload_is_never_served_and_is_purged(tmp_path: Path) -> None:
    db = tmp_path / "vault.db"

    async def stage(svc: FileService) -> None:
        upload = await svc.begin_upload(OWNER, None)
        await upload.write(DATA)
        await asyncio.gather(*upload._inflight)  # every sealed segment reached the store

    run(db, stage)
    with tamper(db) as con:
        assert con.execute("SELECT state, name FROM files").fetchall() == [(0, None)]
        (count,) = con.execute("SELECT count(*) FROM segments").fetchone()
        assert count >= 1
        # the attacker names the staged row: it still is not LIVE
        con.execute("UPDATE files SET name = ?", (NAME,))
    got, exc = read(db)
    assert (got, type(exc)) == (b"", FileNotFound)
    assert run(db, lambda svc: svc.list(OWNER)) == []
    assert run(db, lambda svc: svc.purge(staged_too=True)) == 1
    with tamper(db) as con:
        assert con.execute("SELECT count(*) FROM files").fetchone() == (0,)
        assert con.execute("SELECT count(*) FROM segments").fetchone() == (0,)


def test_deleted_file_leaves_no_segments(db: Path) -> None:
    upload(db, b"kept", name="kept.bin")
    run(db, lambda svc: svc.delete(OWNER, NAME))
    got, exc = read(db)
    assert (got, type(exc)) == (b"", FileNotFound)
    with tamper(db) as con:
        fids = {bytes(r[0]) for r in con.execute("SELECT file_id FROM files")}
        seg_fids = {bytes(r[0]) for r in con.execute("SELECT DISTINCT file_id FROM segments")}
    assert len(fids) == 1 and seg_fids == fids
    assert read(db, name="kept.bin") == (b"kept", None)


def test_replaced_file_leaves_no_old_segments(db: Path) -> None:
    upload(db, b"second version")
    with tamper(db) as con:
        assert con.execute("SELECT count(*) FROM files").fetchone() == (1,)
        assert con.execute("SELECT count(*) FROM segments").fetchone() == (1,)
    assert read(db) == (b"second version", None)


def test_two_uploads_of_same_plaintext_share_no_ids_keys_or_blobs(db: Path) -> None:
    upload(db, DATA, name="copy.bin")
    with tamper(db) as con:
        rows = con.execute("SELECT file_id, wrapped_key, header_tag FROM files").fetchall()
    assert len(rows) == 2
    for column in zip(*rows, strict=True):
        assert column[0] != column[1]
    blobs = [b for per_file in segments_of(db).values() for b in per_file.values()]
    assert len(blobs) == 2 * N and len(set(blobs)) == 2 * N
    assert len({b[: sfs.IV_LEN] for b in blobs}) == 2 * N


def raw_files(folder: Path) -> list[bytes]:
    return [p.read_bytes() for p in folder.rglob("*") if p.is_file()]


def test_no_plaintext_on_disk(tmp_path: Path) -> None:
    db = tmp_path / "vault.db"
    if incore.BACKEND == "postgres":  # every file of the cluster: tables, WAL, the server's log
        assert pg.CLUSTER is not None
        tmp_path = pg.CLUSTER.dir
    marker = b"PLAINTEXT-MARKER-7f3a"
    data = marker * (5 * S // len(marker))

    async def upload_and_look(svc: FileService) -> list[bytes]:
        await _upload(svc, OWNER, "secret.txt", data)
        # while the store is open: the WAL and shared-memory files exist
        return await asyncio.to_thread(raw_files, tmp_path)

    while_open = run(db, upload_and_look)
    assert len(while_open) >= 2
    after_close = raw_files(tmp_path)
    for raw in while_open + after_close:
        assert marker not in raw
        assert marker[:16] not in raw
    assert read(db, name="secret.txt") == (data, None)


def _file_keys(con: Any, fid: bytes, ring: Keyring) -> sfs.KeyPair:
    key_id, wrapped = con.execute(
        "SELECT key_id, wrapped_key FROM files WHERE file_id = ?", (fid,)
    ).fetchone()
    file_key = sfs.unwrap_file_key(ring.keks[key_id], key_id, fid, bytes(wrapped))
    return sfs.derive_file_keys(file_key, fid)


def test_validly_sealed_but_uncommitted_segment_is_never_served(db: Path) -> None:
    """The replay a resumed upload makes possible: a segment sealed under the file's own key at
    the same index (say, from a chunk that failed its checksum and was sent again) verifies on
    its own; the header's commitment to the exact segment tags must still refuse it."""
    other_plaintext = bytes(S)
    with tamper(db) as con:
        fid = file_id_of(con)
        keys = _file_keys(con, fid, keyring())
        stale = bytes(sfs.seal_segment(keys, fid, S, 1, False, other_plaintext))
        con.execute(
            "UPDATE segments SET data = ?, tag = ? WHERE file_id = ? AND idx = 1", (stale, stale[-32:], fid)
        )
    assert_fails(db, prefix_len=0)  # its tag is not the committed one: refused at open


def test_stale_segment_with_the_committed_tag_column_fails_at_that_segment(db: Path) -> None:
    with tamper(db) as con:
        fid = file_id_of(con)
        keys = _file_keys(con, fid, keyring())
        stale = bytes(sfs.seal_segment(keys, fid, S, 2, False, bytes(S)))
        con.execute("UPDATE segments SET data = ? WHERE file_id = ? AND idx = 2", (stale, fid))
    assert_fails(db, prefix_len=2 * S)


def test_listing_leaves_out_a_file_whose_header_was_edited(db: Path) -> None:
    upload(db, DATA, name="other.bin")
    with tamper(db) as con:
        con.execute("UPDATE files SET size = 1, sha256 = ? WHERE name = ?", (bytes(32), NAME))
    names = run(db, lambda svc: svc.list(OWNER))
    assert [info.name for info in names] == ["other.bin"]


async def _start_resumable(svc: FileService) -> str:
    upload = await svc.resumables.create(OWNER, "partial.bin", len(DATA), "")
    session = await svc.resumables.resume(OWNER, upload.tus_id, 0)
    await session.write(DATA[: S + 10])
    await session.save()
    return upload.tus_id


@pytest.mark.parametrize(
    "edit",
    [
        "owner = 2",
        "name = 'other.bin'",
        "upload_length = upload_length + 1",
        "seg_size = 0",
        "seg_size = 16",
        "created = created + 1",
        "tus_id = 'forged'",
    ],
)
def test_edited_resumable_upload_row_is_refused(db: Path, edit: str) -> None:
    tus_id = run(db, _start_resumable)
    with tamper(db) as con:
        con.execute(f"UPDATE files SET {edit} WHERE tus_id = ? OR tus_id = 'forged'", (tus_id,))  # noqa: S608
    owner = OTHER_OWNER if edit == "owner = 2" else OWNER
    lookup = "forged" if "forged" in edit else tus_id

    async def attempt(svc: FileService) -> BaseException | None:
        try:
            await svc.resumables.get(owner, lookup)
        except (IntegrityError, FileNotFound, NotFound) as exc:
            return exc
        return None

    exc = run(db, attempt)
    assert type(exc) is IntegrityError, exc


def test_resumable_tail_from_another_offset_is_refused(db: Path) -> None:
    tus_id = run(db, _start_resumable)
    with tamper(db) as con:
        con.execute("UPDATE files SET upload_offset = upload_offset + 1 WHERE tus_id = ?", (tus_id,))

    async def attempt(svc: FileService) -> BaseException | None:
        try:
            await svc.resumables.resume(OWNER, tus_id, S + 11)
        except IntegrityError as exc:
            return exc
        return None

    assert type(run(db, attempt)) is IntegrityError
