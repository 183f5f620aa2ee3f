"""vault/upload.py: a file's SHA-256 is fed by the crypto threads that seal its segments, in
index order whatever order the seals end in (InOrderHash), and an upload's digest is that of
its bytes however they were cut and whichever threads sealed them."""

import asyncio
import contextlib
import hashlib
import itertools
import os
import random
import sqlite3
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests import incore
from vault import format as sfs
from vault.core import Core
from vault.download import Download
from vault.errors import DigestMismatch, InputError
from vault.upload import InOrderHash, _seal_and_hash

OWNER = 1


def segments(count: int, rng: random.Random) -> list[list[sfs.Piece]]:
    """``count`` segments, each a list of pieces of assorted kinds and lengths (some empty)."""
    return [
        [
            os.urandom(rng.choice([0, 1, 100, 5000])),
            bytearray(os.urandom(rng.randrange(64))),
            memoryview(b"ab"),
        ]
        for _ in range(count)
    ]


def joined(pieces: list[list[sfs.Piece]]) -> bytes:
    return b"".join(bytes(piece) for segment in pieces for piece in segment)


def test_segments_filed_in_any_order_are_hashed_in_index_order() -> None:
    rng = random.Random(5)
    parts = segments(4, rng) + [[]]  # the final segment may be empty
    for order in itertools.permutations(range(len(parts))):
        hasher = InOrderHash(hashlib.sha256(), 0)
        for index in order:
            hasher.add(index, parts[index])
        assert hasher.sha.digest() == hashlib.sha256(joined(parts)).digest(), order


def test_a_resumed_file_hashes_on_from_its_first_new_segment() -> None:
    rng = random.Random(6)
    before, after = segments(3, rng), segments(3, rng)
    sha = hashlib.sha256(joined(before))
    hasher = InOrderHash(sha, 3)
    for index in (5, 3, 4):
        hasher.add(index, after[index - 3])
    assert sha.digest() == hashlib.sha256(joined(before + after)).digest()


def test_only_the_next_segment_may_be_hashed_during_its_seal_and_by_one_thread() -> None:
    rng = random.Random(9)
    parts = segments(4, rng)
    hasher = InOrderHash(hashlib.sha256(), 0)
    assert not hasher.claim(1)  # not the next one
    assert hasher.claim(0)
    assert not hasher.claim(0)  # held
    hasher.add(2, parts[2])  # filed while the hash is held: not hashed yet
    hasher.add(1, parts[1])
    assert hasher.sha.digest() == hashlib.sha256().digest()
    for piece in parts[0]:
        hasher.sha.update(piece)
    hasher.hashed(0)  # goes on with 1 and 2, filed meanwhile
    assert hasher.sha.digest() == hashlib.sha256(joined(parts[:3])).digest()
    assert not hasher.claim(4) and hasher.claim(3)
    for piece in parts[3]:
        hasher.sha.update(piece)
    hasher.hashed(3)
    assert hasher.sha.digest() == hashlib.sha256(joined(parts)).digest()


def test_every_segment_is_in_the_hash_once_every_add_has_returned() -> None:
    """Segments filed from several threads in index order, as the crypto pool takes them
    (the work before each add differs, so they end in any order)."""
    rng = random.Random(7)

    def seal(hasher: InOrderHash, index: int, pieces: list[sfs.Piece], work: int) -> None:
        # As upload._seal_and_hash: the next segment is hashed during its seal if nobody
        # holds the hash, any other after it.
        claimed = hasher.claim(index)
        hashlib.sha256(os.urandom(work)).digest()  # a seal's work, longer for some than others
        if claimed:
            for piece in pieces:
                hasher.sha.update(piece)
            hasher.hashed(index)
        else:
            hasher.add(index, pieces)

    with ThreadPoolExecutor(4) as pool:
        for _ in range(30):
            parts = segments(40, rng)
            hasher = InOrderHash(hashlib.sha256(), 0)
            futures = [
                pool.submit(seal, hasher, index, pieces, rng.randrange(1, 200_000))
                for index, pieces in enumerate(parts)
            ]
            for future in futures:
                future.result()
            assert hasher.sha.digest() == hashlib.sha256(joined(parts)).digest()


def test_an_upload_cut_anyhow_and_sealed_on_many_threads_has_its_bytes_digest(tmp_path: Path) -> None:
    """Three uploads at once, each of its own bytes cut into pieces below and above
    GATHER_BELOW and across segments: each file holds its own bytes and digest."""
    rng = random.Random(8)
    seg_size = sfs.MIN_SEG_SIZE
    datas = [os.urandom(37 * seg_size + 123) for _ in range(3)]

    async def one(core: Core, n: int) -> tuple[str, bytes]:
        data = datas[n]
        upload = await core.files.begin_upload(OWNER, None)
        at = 0
        while at < len(data):
            size = rng.choice([1, 15, 16, 1000, seg_size - 1, seg_size, 3 * seg_size + 5])
            await upload.write(data[at : at + size])
            at += size
        info = await upload.finish(f"f{n}.bin", hashlib.sha256(data).digest())
        return info.sha256, await read_back(core, f"f{n}.bin")

    async def upload(core: Core) -> list[tuple[str, bytes]]:
        return list(await asyncio.gather(*(one(core, n) for n in range(3))))

    results = incore.run(tmp_path, upload, segment_size=seg_size, crypto_threads=4, pipeline_depth=8)
    assert results == [(hashlib.sha256(data).hexdigest(), data) for data in datas]


def test_a_body_in_tiny_chunks_holds_about_its_own_size_until_sealed(tmp_path: Path) -> None:
    """A client can have its body delivered in tiny chunks (a few bytes per TLS record, paced so
    that each read finds one; Tornado's chunked decoding also hands on each chunk that arrives
    alone). Kept as they came, each chunk cost its own object and a memoryview (~320 bytes for
    16 bytes: a 1 MiB segment held ~20 MiB, and several are in flight); gathered, the segment
    being filled holds about what was sent."""
    chunks = [os.urandom(16) for _ in range(20_000)]  # distinct objects, as Tornado's copies are
    sent, expected = sum(map(len, chunks)), hashlib.sha256()

    async def held(core: Core) -> tuple[int, str]:
        upload = await core.files.begin_upload(OWNER, None)
        first = os.urandom(16)
        await upload.write(first)  # staged (its row written) before measuring
        expected.update(first)
        for chunk in chunks:
            expected.update(chunk)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for chunk in chunks:
                await upload.write(chunk)
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        chunks.clear()  # the upload keeps what it needs; the test keeps nothing
        info = await upload.finish("tiny.bin")
        return grown, info.sha256

    grown, digest = incore.run(tmp_path, held)
    assert grown < 2 * sent, f"{grown} bytes held for {sent} bytes sent"  # before: 6.4 MB
    assert digest == expected.hexdigest()


async def read_back(core: Core, name: str) -> bytes:
    """The stored file, downloaded whole (these files are small)."""
    download = await core.files.open(OWNER, name)
    try:
        return b"".join([bytes(chunk) async for chunk in download.read()])
    finally:
        download.close()


def rows(db: Path) -> tuple[int, int]:
    """(files rows, segment rows) in the SQLite database ``db``."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        files = con.execute("SELECT count(*) FROM files").fetchone()[0]
        segs = con.execute("SELECT count(*) FROM segments").fetchone()[0]
    return files, segs


def test_an_aborted_upload_leaves_nothing_and_takes_nothing_more(tmp_path: Path) -> None:
    """Aborted with segments still being sealed and stored: the STAGED row and its segments
    go, its pin and its bytes are given back, a second abort does nothing, and the upload
    takes no more writes and cannot finish."""
    seg_size = sfs.MIN_SEG_SIZE

    async def scenario(core: Core) -> None:
        upload = await core.files.begin_upload(OWNER, None)
        await upload.write(os.urandom(7 * seg_size + 10))  # six segments emitted, most in flight
        assert upload.file_id in core.files.pipe.pins
        await upload.abort()
        await upload.abort()
        assert upload.file_id not in core.files.pipe.pins
        assert (await core.files.quotas.usage(OWNER)).used == 0
        with pytest.raises(RuntimeError, match="^upload already finished or aborted$"):
            await upload.write(b"more")
        with pytest.raises(RuntimeError, match="^upload already finished or aborted$"):
            await upload.finish("late.bin")
        assert await core.files.list(OWNER) == []

    incore.run(tmp_path, scenario, segment_size=seg_size, crypto_threads=1, pipeline_depth=8)
    assert rows(tmp_path / "vault.db") == (0, 0)


def test_an_abort_after_the_commit_keeps_the_file(tmp_path: Path) -> None:
    seg_size = sfs.MIN_SEG_SIZE
    data = os.urandom(3 * seg_size + 7)

    async def scenario(core: Core) -> bytes:
        upload = await core.files.begin_upload(OWNER, None)
        assert upload.max_size == 5 * seg_size  # the limit the handler reads the body against
        await upload.write(data)
        before = time.time()
        info = await upload.finish("kept.bin")
        assert before <= info.created <= time.time()
        with pytest.raises(RuntimeError, match="^upload already finished or aborted$"):
            await upload.write(b"more")
        with pytest.raises(RuntimeError, match="^upload already finished or aborted$"):
            await upload.finish("again.bin")
        download = await core.files.open(OWNER, "kept.bin")  # pins the file
        try:
            await upload.abort()  # as a handler's cleanup does whatever happened before
            assert upload.file_id in core.files.pipe.pins  # the upload's pin went once, at commit
            return b"".join([bytes(chunk) async for chunk in download.read()])
        finally:
            download.close()

    assert incore.run(tmp_path, scenario, segment_size=seg_size, max_file_size=5 * seg_size) == data


def test_a_resumable_upload_in_several_requests_has_its_bytes_and_digest(tmp_path: Path) -> None:
    """Each request ends inside a segment whose bytes came as several pieces (kept and
    gathered): the checkpoint's tail is those pieces joined, and the running SHA-256 goes on
    from the one the checkpoint kept."""
    seg_size = 4 * sfs.MIN_SEG_SIZE
    data = os.urandom(5 * seg_size + 1234)
    cuts = [0, 2 * seg_size + 9000, 3 * seg_size + 4100, 3 * seg_size + 15000, len(data)]
    sizes = [5000, 10, 4096, 3, 6000, 700]

    async def scenario(core: Core) -> tuple[str, bytes]:
        resumables = core.files.resumables
        created = await resumables.create(OWNER, "resumed.bin", len(data), "")
        for start, end in itertools.pairwise(cuts):
            session = await resumables.resume(OWNER, created.tus_id, start)
            at, turn = start, 0
            while at < end:
                size = min(sizes[turn % len(sizes)], end - at)
                await session.write(data[at : at + size])
                at, turn = at + size, turn + 1
            assert await session.save() == end
        assert session.info is not None
        got = await read_back(core, "resumed.bin")
        return session.info.sha256, got

    digest, got = incore.run(tmp_path, scenario, segment_size=seg_size)
    assert got == data
    assert digest == hashlib.sha256(data).hexdigest()


def test_a_final_segment_sealed_while_the_hash_is_held_is_sealed_as_final() -> None:
    """A segment whose seal cannot take the hash (another is next) is sealed as it is, final
    or not, then filed for the hash."""
    file_key, file_id = sfs.new_file_key(), sfs.new_file_id()
    keys, seg_size = sfs.derive_file_keys(file_key, file_id), sfs.MIN_SEG_SIZE
    hasher = InOrderHash(hashlib.sha256(), 0)
    last: list[sfs.Piece] = [b"the end"]
    blob = _seal_and_hash(hasher, keys, file_id, seg_size, 1, True, last)  # 0 is not sealed yet
    assert sfs.open_segment(keys, file_id, seg_size, 1, True, len(b"the end"), bytes(blob)) == b"the end"
    assert hasher.sha.digest() == hashlib.sha256().digest()  # filed, waiting for segment 0
    first: list[sfs.Piece] = [os.urandom(seg_size)]
    blob = _seal_and_hash(hasher, keys, file_id, seg_size, 0, False, first)
    assert sfs.open_segment(keys, file_id, seg_size, 0, False, seg_size, bytes(blob)) == first[0]
    assert hasher.sha.digest() == hashlib.sha256(bytes(first[0]) + b"the end").digest()


def test_a_resumed_upload_keeps_its_segment_size_and_declared_length(tmp_path: Path) -> None:
    """Resumed by a server now configured with another segment size, an upload goes on with
    its own; a request may not write past the declared length, nor finish before it."""
    seg_size = 2 * sfs.MIN_SEG_SIZE
    data = os.urandom(3 * seg_size + 100)

    async def start(core: Core) -> str:
        created = await core.files.resumables.create(OWNER, "resumed.bin", len(data), "")
        session = await core.files.resumables.resume(OWNER, created.tus_id, 0)
        await session.write(data[: seg_size + 10])
        assert await session.save() == seg_size + 10
        return created.tus_id

    async def go_on(core: Core, tus_id: str) -> tuple[str, bytes]:
        resumables = core.files.resumables
        session = await resumables.resume(OWNER, tus_id, seg_size + 10)
        with pytest.raises(InputError, match="^The body goes beyond the declared Upload-Length$"):
            await session.write(data[seg_size + 10 :] + b"!")
        with pytest.raises(InputError, match="^The upload is not complete$"):
            await session._upload.finish("resumed.bin")  # what save does once all has come
        await session.discard()
        session = await resumables.resume(OWNER, tus_id, seg_size + 10)
        await session.write(data[seg_size + 10 :])
        assert await session.save() == len(data)
        assert session.info is not None
        got = await read_back(core, "resumed.bin")
        return session.info.sha256, got

    tus_id = incore.run(tmp_path, start, segment_size=seg_size)
    digest, got = incore.run(tmp_path, lambda core: go_on(core, tus_id), segment_size=sfs.MIN_SEG_SIZE)
    assert got == data
    assert digest == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("resumable", [False, True])
def test_writes_ending_on_segment_boundaries(tmp_path: Path, resumable: bool) -> None:
    """Each write (and each resumable request) ends exactly where a segment does, and the
    file's size is a whole number of segments: the last full segment is the final one, the
    others are sealed as they fill (a resumed upload knows more follows from its length)."""
    seg_size = sfs.MIN_SEG_SIZE
    data = os.urandom(3 * seg_size)

    async def scenario(core: Core) -> tuple[str, bytes]:
        if resumable:
            resumables = core.files.resumables
            created = await resumables.create(OWNER, "even.bin", len(data), "")
            for start in range(0, len(data), seg_size):
                session = await resumables.resume(OWNER, created.tus_id, start)
                await session.write(data[start : start + seg_size])
                assert await session.save() == start + seg_size
            assert session.info is not None
            info = session.info
        else:
            upload = await core.files.begin_upload(OWNER, None)
            for start in range(0, len(data), seg_size):
                await upload.write(data[start : start + seg_size])
            info = await upload.finish("even.bin")
        got = await read_back(core, "even.bin")
        return info.sha256, got

    digest, got = incore.run(tmp_path, scenario, segment_size=seg_size)
    assert got == data
    assert digest == hashlib.sha256(data).hexdigest()


def test_a_hash_that_failed_on_a_piece_goes_on_with_the_next_segment() -> None:
    """A piece the hash cannot read (a released view) fails the add that met it, and lets go
    of the hash: the next segment filed is hashed, not left waiting for a holder."""
    released = memoryview(b"gone")
    released.release()
    hasher = InOrderHash(hashlib.sha256(), 0)
    with pytest.raises(ValueError, match="released"):
        hasher.add(0, [released])
    hasher.add(1, [b"next"])
    assert hasher.sha.digest() == hashlib.sha256(b"next").digest()


def test_at_most_pipeline_depth_segments_are_in_flight(tmp_path: Path) -> None:
    """pipeline_depth bounds the segments an upload has sealing or storing (each holds a
    segment of plaintext and one of ciphertext): the oldest is waited for before another
    goes."""
    seg_size, depth = sfs.MIN_SEG_SIZE, 3

    async def scenario(core: Core) -> list[int]:
        upload = await core.files.begin_upload(OWNER, None)
        counts = []
        for _ in range(6):
            await upload.write(os.urandom(seg_size))  # the segment before it is sealed now
            counts.append(len(upload._inflight))
        await upload.abort()
        return counts

    counts = incore.run(tmp_path, scenario, segment_size=seg_size, pipeline_depth=depth)
    assert counts == [0, 1, 2, 3, 3, 3]


def test_a_wrong_expected_digest_commits_nothing(tmp_path: Path) -> None:
    data = os.urandom(2 * sfs.MIN_SEG_SIZE + 3)

    async def scenario(core: Core) -> list[object]:
        upload = await core.files.begin_upload(OWNER, None)
        await upload.write(data)
        with pytest.raises(DigestMismatch):
            await upload.finish("wrong.bin", hashlib.sha256(data + b"!").digest())
        await upload.abort()
        return list(await core.files.list(OWNER))

    assert incore.run(tmp_path, scenario, segment_size=sfs.MIN_SEG_SIZE) == []
    assert rows(tmp_path / "vault.db") == (0, 0)


def test_a_download_opened_as_a_resumed_upload_commits_keeps_its_pin(tmp_path: Path) -> None:
    """The pin of a resumable upload is Resumables' (taken on resume, given back at the
    request's end), not the Upload's: a download of the new file opened between the commit
    and the request's end (here from the quota's notice of the commit, the one await there)
    still holds its own pin afterwards."""
    data = os.urandom(sfs.MIN_SEG_SIZE + 5)

    async def scenario(core: Core) -> tuple[bool, bytes]:
        files = core.files
        created = await files.resumables.create(OWNER, "resumed.bin", len(data), "")
        session = await files.resumables.resume(OWNER, created.tus_id, 0)
        await session.write(data)
        opened: list[Download] = []
        real_changed = files.quotas.changed

        async def changed(owner: int) -> None:  # the real one, then a download begins
            await real_changed(owner)
            if not opened:
                opened.append(await files.open(OWNER, "resumed.bin"))

        files.quotas.changed = changed  # type: ignore[method-assign]
        await session.save()
        files.quotas.changed = real_changed  # type: ignore[method-assign]
        [download] = opened
        try:
            pinned = session.resumable.file_id in files.pipe.pins
            return pinned, b"".join([bytes(chunk) async for chunk in download.read()])
        finally:
            download.close()

    pinned, got = incore.run(tmp_path, scenario, segment_size=sfs.MIN_SEG_SIZE)
    assert pinned
    assert got == data
