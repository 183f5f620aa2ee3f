"""The floor under vault's CPU per GB: each per-byte primitive alone, measured in one run.

    python -m bench.floor [--size 256MiB] [--segment-size 1MiB] [--runs 5] [--tmpdir DIR] [--json FILE]

Each row runs one primitive over ``--size`` bytes, a segment at a time, on this thread, and
reports the thread's CPU time (user + system, ``time.thread_time``) per GB (10^9 bytes):
median, min and max of ``--runs``, and the ratio to the first row of its group (the reference
measured in the same run). The process sets the server's allocator thresholds first
(vault/memory.py), as ``run.py`` does. Groups:

- upload: AES-256-CBC encryption by pycryptodome (``AES.MODE_CBC``) and by OpenSSL (the
  ``cryptography`` package, ``sfs.cbc_encrypt_into``), HMAC-SHA256 and SHA-256 (the standard
  library's, OpenSSL), ``sfs.seal_segment`` as a whole, TLS 1.3 record decryption;
- download: CBC decryption by pycryptodome's CBC mode, by one ECB pass + one XOR
  (``sfs.cbc_decrypt``) and by OpenSSL, ``sfs.open_segment`` as a whole, TLS 1.3 record
  encryption (Python's ``ssl``, which the server uses, through memory BIOs: no socket);
- sqlite: the store's write of sealed segments to a new database with its own pragmas (WAL,
  ``synchronous = NORMAL``, one transaction per segment, the checkpoints included: every byte
  goes to the log, then into the database), and reading them back one query per segment.

See bench/README.md and the README's Performance section.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import socket
import sqlite3
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

from Crypto.Cipher import AES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from bench.transfer import parse_size
from storage.sqlite import _PRAGMAS
from vault import format as sfs
from vault.memory import tune_malloc
from vault.tls import ensure_certificate

GB = 1_000_000_000
TLS_WRITE = 256 * 1024  # what one socket write of the server hands to TLS at most


@dataclass
class Row:
    group: str
    name: str
    runs: list[float]  # CPU-s/GB of each run
    median: float = 0.0
    ratio: float = 1.0  # median / the median of the group's first row


class Clock:
    """This thread's CPU seconds, summed over the ``with clock:`` blocks only (setup outside)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0

    def __enter__(self) -> None:
        self._start = time.thread_time()

    def __exit__(self, *exc: object) -> None:
        self.seconds += time.thread_time() - self._start


Case = Callable[[Clock], None]  # processes Segments.total bytes, timing its work on the Clock


class Segments:
    """``count`` random plaintext segments of ``size`` bytes (4 distinct ones, reused)."""

    def __init__(self, size: int, count: int) -> None:
        self.size, self.count = size, count
        self.plain = [os.urandom(size) for _ in range(4)]
        self.key, self.iv = os.urandom(sfs.KEY_LEN), os.urandom(sfs.IV_LEN)
        self.keys = sfs.KeyPair(os.urandom(sfs.KEY_LEN), os.urandom(sfs.KEY_LEN))
        self.file_id = sfs.new_file_id()
        self.cipher = [AES.new(self.key, AES.MODE_CBC, self.iv).encrypt(p) for p in self.plain]
        self.iv_cipher = [self.iv + c for c in self.cipher]
        self.sealed = [
            bytes(sfs.seal_segment(self.keys, self.file_id, size, 0, False, p)) for p in self.plain
        ]

    def each(self, items: list[bytes]) -> Iterator[bytes]:
        for i in range(self.count):
            yield items[i % len(items)]

    @property
    def total(self) -> int:
        return self.size * self.count


def crypto_cases(seg: Segments) -> dict[tuple[str, str], Case]:
    out = memoryview(bytearray(seg.size + sfs.TAG_LEN))
    exact = out[: seg.size]

    def pyc_cbc_encrypt(clock: Clock) -> None:
        with clock:
            for p in seg.each(seg.plain):
                AES.new(seg.key, AES.MODE_CBC, seg.iv).encrypt(p, output=exact)

    def openssl_cbc_encrypt(clock: Clock) -> None:
        with clock:
            for p in seg.each(seg.plain):
                sfs.cbc_encrypt_into(seg.key, seg.iv, p, out)

    def hmac_sha256(clock: Clock) -> None:
        with clock:
            for p in seg.each(seg.plain):
                mac = hmac.new(seg.key, b"fields", "sha256")
                mac.update(p)
                mac.digest()

    def sha256(clock: Clock) -> None:
        with clock:
            digest = hashlib.sha256()
            for p in seg.each(seg.plain):
                digest.update(p)
            digest.digest()

    def seal(clock: Clock) -> None:
        with clock:
            for i, p in enumerate(seg.each(seg.plain)):
                sfs.seal_segment(seg.keys, seg.file_id, seg.size, i, False, p)

    def pyc_cbc_decrypt(clock: Clock) -> None:
        with clock:
            for c in seg.each(seg.cipher):
                AES.new(seg.key, AES.MODE_CBC, seg.iv).decrypt(c, output=exact)

    def ecb_strxor_decrypt(clock: Clock) -> None:
        with clock:
            for c in seg.each(seg.iv_cipher):
                sfs.cbc_decrypt(seg.key, c)

    def openssl_cbc_decrypt(clock: Clock) -> None:
        with clock:
            for c in seg.each(seg.cipher):
                decryptor = Cipher(algorithms.AES(seg.key), modes.CBC(seg.iv)).decryptor()
                decryptor.update_into(c, out)
                decryptor.finalize()

    def open_(clock: Clock) -> None:
        with clock:
            for blob in seg.each(seg.sealed):
                sfs.open_segment(seg.keys, seg.file_id, seg.size, 0, False, seg.size, blob)

    return {
        ("upload", "AES-256-CBC encrypt, pycryptodome MODE_CBC"): pyc_cbc_encrypt,
        ("upload", "AES-256-CBC encrypt, OpenSSL (cryptography)"): openssl_cbc_encrypt,
        ("upload", "HMAC-SHA256 (hmac: OpenSSL)"): hmac_sha256,
        ("upload", "SHA-256 (hashlib: OpenSSL)"): sha256,
        ("upload", "seal_segment (encrypt + HMAC)"): seal,
        ("download", "AES-256-CBC decrypt, pycryptodome MODE_CBC"): pyc_cbc_decrypt,
        ("download", "AES-256-CBC decrypt, ECB + strxor (cbc_decrypt)"): ecb_strxor_decrypt,
        ("download", "AES-256-CBC decrypt, OpenSSL (cryptography)"): openssl_cbc_decrypt,
        ("download", "open_segment (HMAC + decrypt)"): open_,
    }


def _self_signed(workdir: Path) -> tuple[Path, Path]:
    cert_path, key_path = workdir / "cert.pem", workdir / "key.pem"
    ensure_certificate(cert_path, key_path)
    return cert_path, key_path


class TLSPair:
    """A server and a client ``ssl.SSLObject`` joined by memory BIOs, the handshake done:
    Python's ``ssl`` (the server's OpenSSL) with its defaults, as ``run.py`` and curl agree."""

    def __init__(self, cert: Path, key: Path) -> None:
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(cert, key)
        client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client_ctx.load_verify_locations(cert)
        self.s_in, self.s_out, self.c_in, self.c_out = (ssl.MemoryBIO() for _ in range(4))
        self.server = server_ctx.wrap_bio(self.s_in, self.s_out, server_side=True)
        self.client = client_ctx.wrap_bio(self.c_in, self.c_out, server_hostname="localhost")
        for _ in range(10):
            done = [self._step(self.client), self._step(self.server)]
            self.c_in.write(self.s_out.read())
            self.s_in.write(self.c_out.read())
            if all(done):
                break
        self.server.write(b"ready")  # the client takes the session tickets
        self.c_in.write(self.s_out.read())
        assert self.client.read(5) == b"ready"
        cipher = self.server.cipher()
        self.name = f"{cipher[1]} {cipher[0]}" if cipher else "TLS"

    @staticmethod
    def _step(obj: ssl.SSLObject) -> bool:
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        return True


def tls_cases(seg: Segments, workdir: Path) -> dict[tuple[str, str], Case]:
    """TLS records alone (memory BIOs: no socket, no kernel), ``TLS_WRITE`` bytes of plaintext
    per call; and the server's side of a TLS connection over loopback TCP, whose client reads
    on another thread (the kernel's send, the loopback and the wake-ups count, the reader not)."""
    cert, key = _self_signed(workdir)
    data = memoryview(seg.plain[0])
    sink = bytearray(TLS_WRITE)

    def encrypt(clock: Clock) -> None:  # the server's loop on a download
        pair = TLSPair(cert, key)
        with clock:
            for _ in range(seg.count):
                for at in range(0, seg.size, TLS_WRITE):
                    pair.server.write(data[at : at + TLS_WRITE])
                    pair.s_out.read()

    def decrypt(clock: Clock) -> None:  # the server's loop on an upload
        pair = TLSPair(cert, key)  # records are never replayed: the client encrypts each once
        for _ in range(seg.count):
            for at in range(0, seg.size, TLS_WRITE):
                pair.client.write(data[at : at + TLS_WRITE])
                records = pair.c_out.read()
                with clock:
                    pair.s_in.write(records)
                    got = 0
                    while got < len(sink):
                        # with a buffer, read returns a count (typeshed says bytes)
                        got += cast(int, pair.server.read(len(sink) - got, memoryview(sink)[got:]))  # type: ignore[arg-type]

    def send(clock: Clock) -> None:  # the server's loop on a download, with the kernel's part
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(cert, key)
        client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client_ctx.load_verify_locations(cert)
        with socket.create_server(("127.0.0.1", 0)) as listener:
            port = listener.getsockname()[1]
            reader = threading.Thread(target=_drain, args=(client_ctx, port, seg.total), name="floor-reader")
            reader.start()
            raw, _ = listener.accept()
            with server_ctx.wrap_socket(raw, server_side=True) as sock:
                with clock:
                    for _ in range(seg.count):
                        for at in range(0, seg.size, TLS_WRITE):
                            sock.sendall(data[at : at + TLS_WRITE])
                reader.join()

    def receive(clock: Clock) -> None:  # the server's loop on an upload, with the kernel's part
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(cert, key)
        client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client_ctx.load_verify_locations(cert)
        with socket.create_server(("127.0.0.1", 0)) as listener:
            port = listener.getsockname()[1]
            writer = threading.Thread(target=_fill, args=(client_ctx, port, seg), name="floor-writer")
            writer.start()
            raw, _ = listener.accept()
            with server_ctx.wrap_socket(raw, server_side=True) as sock:
                view = memoryview(sink)
                got = 0
                with clock:
                    while got < seg.total:  # a read takes one record, as Python's ssl does
                        n = sock.recv_into(view)
                        if not n:
                            raise RuntimeError(f"the floor's TLS writer stopped early: {got} of {seg.total}")
                        got += n
                sock.sendall(b"k")
                writer.join()

    name = TLSPair(cert, key).name
    return {
        ("upload", "TLS receive over loopback TCP (records + the kernel's receive)"): receive,
        ("upload", f"TLS record decrypt ({name})"): decrypt,
        ("download", f"TLS record encrypt ({name})"): encrypt,
        ("download", "TLS send over loopback TCP (records + the kernel's send)"): send,
    }


def _fill(ctx: ssl.SSLContext, port: int, seg: Segments) -> None:
    """The client of the ``receive`` row, on its own thread (its CPU is not counted)."""
    data = memoryview(seg.plain[0])
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
            for _ in range(seg.count):
                for at in range(0, seg.size, TLS_WRITE):
                    sock.sendall(data[at : at + TLS_WRITE])
            sock.recv(1)  # closing before the reader has it all would reset the connection


def _drain(ctx: ssl.SSLContext, port: int, total: int) -> None:
    """The client of the ``send`` row, on its own thread (its CPU is not counted)."""
    buffer = memoryview(bytearray(TLS_WRITE))
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
            got = 0
            while got < total:
                n = sock.recv_into(buffer)
                if not n:
                    raise RuntimeError("the floor's TLS sender stopped early")
                got += n


@contextmanager
def segment_database(workdir: Path) -> Iterator[sqlite3.Connection]:
    """A new database with the store's pragmas (storage/sqlite.py) and its segments table."""
    path = workdir / "floor.db"
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA page_size = 65536")
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        for pragma in _PRAGMAS:
            db.execute(pragma)
        db.execute(
            "CREATE TABLE segments (file_id BLOB NOT NULL, idx INTEGER NOT NULL, tag BLOB NOT NULL,"
            " data BLOB NOT NULL, size INTEGER, PRIMARY KEY (file_id, idx))"
        )
        yield db
    finally:
        db.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


INSERT = "INSERT INTO segments (file_id, idx, tag, data) VALUES (?, ?, ?, ?)"


def sqlite_cases(seg: Segments, workdir: Path) -> dict[tuple[str, str], Case]:
    def write(clock: Clock) -> None:
        with segment_database(workdir) as db, clock:
            for i, blob in enumerate(seg.each(seg.sealed)):
                db.execute("BEGIN IMMEDIATE")
                db.execute(INSERT, (seg.file_id, i, blob[-sfs.TAG_LEN :], blob))
                db.execute("COMMIT")
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def read(clock: Clock) -> None:
        with segment_database(workdir) as db:
            db.execute("BEGIN")
            for i, blob in enumerate(seg.each(seg.sealed)):
                db.execute(INSERT, (seg.file_id, i, blob[-sfs.TAG_LEN :], blob))
            db.execute("COMMIT")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            with clock:
                for i in range(seg.count):
                    db.execute(
                        "SELECT data FROM segments WHERE file_id = ? AND idx = ?", (seg.file_id, i)
                    ).fetchone()

    return {
        ("sqlite", "WAL write, one transaction per segment, checkpoints included"): write,
        ("sqlite", "read, one SELECT per segment (page cache warm)"): read,
    }


def measure(cases: dict[tuple[str, str], Case], seg: Segments, runs: int) -> list[Row]:
    """Every case once per run, in order, so a change in the machine's load falls on all."""
    rows = {k: Row(k[0], k[1], []) for k in cases}
    for _ in range(runs):
        for k, case in cases.items():
            clock = Clock()
            case(clock)
            rows[k].runs.append(clock.seconds / (seg.total / GB))
    firsts: dict[str, float] = {}
    for row in rows.values():
        row.median = statistics.median(row.runs)
        firsts.setdefault(row.group, row.median)
        row.ratio = row.median / firsts[row.group]
    return list(rows.values())


def report(
    rows: list[Row], seg: Segments, runs: int, load: tuple[tuple[float, ...], tuple[float, ...]]
) -> None:
    print("vault floor: per-byte primitives alone, CPU-s/GB of this thread (user + system)")
    print(f"  {seg.count} segments of {seg.size} bytes = {seg.total / GB:.3f} GB per run, median of {runs}")
    before, after = (" ".join(f"{x:.2f}" for x in loads) for loads in load)
    print(f"  load average {before} before, {after} after")
    print(f"  {ssl.OPENSSL_VERSION} (ssl); cryptography's {openssl_backend_version()}")
    print()
    print(f"{'group':9s} {'primitive':62s} {'CPU-s/GB':>8s} {'min':>6s} {'max':>6s} {'x first':>7s}")
    print("-" * 102)
    for row in rows:
        print(
            f"{row.group:9s} {row.name:62s} {row.median:8.3f} {min(row.runs):6.3f} {max(row.runs):6.3f} "
            f"{row.ratio:7.2f}"
        )


def openssl_backend_version() -> str:
    from cryptography.hazmat.backends.openssl.backend import backend

    return str(backend.openssl_version_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("256MiB"), help="bytes per run")
    parser.add_argument("--segment-size", type=parse_size, default=sfs.DEFAULT_SEG_SIZE)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tmpdir", type=Path, default=None, help="for the database and the certificate")
    parser.add_argument("--json", type=Path, default=None, help="write every measurement here")
    args = parser.parse_args(argv)
    sfs.check_seg_size(args.segment_size)
    tune_malloc(args.segment_size, os.environ)
    seg = Segments(args.segment_size, max(1, args.size // args.segment_size))
    before = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=args.tmpdir, prefix="vault-floor-") as tmp:
        workdir = Path(tmp)
        cases = {**crypto_cases(seg), **tls_cases(seg, workdir), **sqlite_cases(seg, workdir)}
        rows = measure(cases, seg, args.runs)
    load = (before, os.getloadavg())
    report(sorted(rows, key=lambda r: ["upload", "download", "sqlite"].index(r.group)), seg, args.runs, load)
    if args.json is not None:
        record = {"segment_size": seg.size, "segments": seg.count, "runs": args.runs, "load": load}
        args.json.write_text(json.dumps({**record, "rows": [asdict(r) for r in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
