"""``vault get``: streamed downloads that resume, never splice versions, and verify.

The body arrives on the lean path of ``vaultcli.fetch`` (the TLS socket read straight into
256 KiB buffers), which a second thread hashes and writes with ``os``-level writes while the
next ones arrive (``pour``). Bytes go to ``PATH.part`` and become ``PATH`` only when the whole
file's SHA-256 equals the server's ``Repr-Digest``. The ETag the download started with is
saved (state file) before the first byte is written; a later run resumes with ``Range`` and
``If-Range: <that ETag>``, so a file replaced meanwhile comes back whole (200) and the download
starts again instead of appending another version's bytes. A ``.part`` with no saved ETag is
never trusted. An error answer is read as a message, never written to the file. A mismatching
digest keeps the ``.part`` file and exits with the integrity status.
"""

import contextlib
import hashlib
import os
import queue
import re
import ssl
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import unquote

import httpx

from vaultcli import fetch
from vaultcli.client import Session, body_message, transport_message, user_agent
from vaultcli.errors import CliError, IntegrityFailure, LoginNeeded
from vaultcli.progress import Progress
from vaultcli.upload import Backoff, hash_prefix, repr_digest

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_FILENAME_STAR = re.compile(r"filename\*\s*=\s*UTF-8''([^;]+)", re.IGNORECASE)
_FILENAME = re.compile(r'filename\s*=\s*"([^"]*)"', re.IGNORECASE)


@dataclass
class Source:
    """Where the file comes from: ``path`` on ``http`` (a session's client, or a plain one for
    a public link; its base URL and ``tls`` serve the lean GET), and ``key``, which names it in
    the state file."""

    http: httpx.Client
    tls: ssl.SSLContext
    path: str
    key: str
    session: Session | None = None
    password: str | None = None

    @property
    def auth(self) -> Any:
        """A link's password as HTTP Basic with an empty user name, or the client default."""
        return httpx.BasicAuth("", self.password) if self.password is not None else httpx.USE_CLIENT_DEFAULT

    def headers(self) -> dict[str, str]:
        """What every GET carries: a fresh access token, or the link's password."""
        headers = {"Accept": "*/*", "User-Agent": user_agent()}
        if self.session is not None:
            headers["Authorization"] = f"Bearer {self.session.token()}"
        elif self.password is not None:
            headers["Authorization"] = fetch.basic_auth(self.password)
        return headers

    @contextlib.contextmanager
    def get(self, headers: dict[str, str]) -> Iterator[fetch.Reply]:
        with fetch.get(str(self.http.base_url), self.tls, self.path, headers) as reply:
            yield reply


def reply_message(reply: fetch.Reply) -> str:
    return body_message(reply.status_code, reply.reason_phrase, reply.error_body())


# 256 KiB blocks, 16 of them (4 MiB) between the socket and the disk. Blocks that stay in the
# CPU's cache while they are decrypted into, hashed and written cost less: writing 1 GiB to
# the page cache took 0.23-0.29 CPU-s in 256 KiB writes against 0.68-1.14 in 1 MiB ones.
PIECE = 256 << 10
DEPTH = 16


def pour(reply: fetch.Reply, out: IO[bytes], digest: "hashlib._Hash", progress: Progress, label: str) -> int:
    """The body into ``out`` (unbuffered) and ``digest``, block by block; its length.

    This thread only reads the socket (decrypting TLS); a second one hashes and writes each
    block it hands over (hashlib and ``write`` let go of the GIL), from a ring of ``DEPTH``
    buffers, so the socket is drained while the previous blocks are hashed and written and
    two CPUs can share the work. Whatever arrived is written before this returns or raises (a
    cut or Ctrl-C leaves every received byte in the file, to resume from). A failed write
    (``label``: what is written to) ends the transfer with that error."""
    free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
    for _ in range(DEPTH):
        free.put(memoryview(bytearray(PIECE)))
    full: queue.SimpleQueue[tuple[memoryview, int] | None] = queue.SimpleQueue()
    failed: list[BaseException] = []

    def sink() -> None:
        while (item := full.get()) is not None:
            buffer, n = item
            if not failed:
                try:
                    block = buffer[:n]
                    digest.update(block)
                    while block:
                        block = block[out.write(block) or 0 :]
                except BaseException as exc:  # handed to the reading thread, raised there
                    failed.append(exc)
            free.put(buffer)

    writer = threading.Thread(target=sink, name="vault-write", daemon=True)
    writer.start()
    size = 0
    try:
        while not failed:
            buffer = free.get()
            n = reply.readinto(buffer)
            if not n:
                break
            full.put((buffer, n))
            size += n
            progress.advance(n)
    finally:
        full.put(None)
        writer.join()
    if failed:
        exc = failed[0]
        if isinstance(exc, OSError) and not isinstance(exc, BrokenPipeError):
            raise CliError(f"cannot write {label}: {exc.strerror or exc}") from None
        raise exc
    return size


def disposition_name(header: str) -> str | None:
    """The file name from Content-Disposition (RFC 6266 ``filename*`` first), reduced to one
    harmless path component: a server does not choose where a file lands."""
    match = _FILENAME_STAR.search(header)
    name = unquote(match.group(1).strip()) if match else None
    if name is None and (plain := _FILENAME.search(header)):
        name = plain.group(1)
    if not name:
        return None
    name = os.path.basename(name.replace("\\", "/")).lstrip(".")
    return name if name and not any(ord(c) < 32 for c in name) else None


class Download:
    def __init__(self, source: Source, dest: str, progress: Progress) -> None:
        self.source, self.dest, self.progress = source, dest, progress
        self.part = dest + ".part"
        self.key = os.path.realpath(self.part)
        self.store = source.session.store if source.session else None
        self.backoff = Backoff(progress)

    # -- state ----------------------------------------------------------------------------

    def _saved_etag(self) -> str | None:
        if self.store is None or not os.path.exists(self.part):
            return None
        entry = self.store.load_transfers().downloads.get(self.key)
        if entry and entry.get("source") == self.source.key:
            return str(entry["etag"])
        return None

    def _save_etag(self, etag: str) -> None:
        if self.store is not None:
            with self.store.transfers() as state:
                state.downloads[self.key] = {"source": self.source.key, "etag": etag}

    def _forget(self) -> None:
        if self.store is not None:
            with self.store.transfers() as state:
                state.downloads.pop(self.key, None)

    # -- transfer -------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        etag = self._saved_etag()
        offset = os.path.getsize(self.part) if etag else 0
        while True:
            try:
                result = self._attempt(etag, offset)
            except (httpx.TransportError, fetch.FetchError) as exc:
                self.backoff.wait(transport_message(str(self.source.http.base_url), exc))
                etag = self._saved_etag()
                offset = os.path.getsize(self.part) if etag else 0
                continue
            if result is not None:
                return result
            etag, offset = None, 0  # a new version: start again

    def _headers(self, etag: str | None, offset: int) -> dict[str, str]:
        headers = self.source.headers()
        if etag and offset:
            headers.update({"Range": f"bytes={offset}-", "If-Range": etag})
        return headers

    def _attempt(self, etag: str | None, offset: int, renewed: bool = False) -> dict[str, Any] | None:
        headers = self._headers(etag, offset)
        with self.source.get(headers) as r:
            if r.status_code == 416 and etag:
                return self._complete_already(etag, offset)
            if r.status_code == 401 and self.source.session is not None and not renewed:
                self.source.session.token(rejected=headers["Authorization"].removeprefix("Bearer "))
                return self._attempt(etag, offset, renewed=True)
            if r.status_code == 401 and self.source.session is not None:
                raise LoginNeeded(f"{reply_message(r)}: run `vault login` again")
            if r.status_code >= 500:
                self.backoff.wait(reply_message(r))
                return self._attempt(self._saved_etag(), offset)
            if r.status_code not in (200, 206):
                raise CliError(reply_message(r))  # the error body never reaches the file
            new_etag = r.headers.get("ETag", "")
            if r.status_code == 206 and not self._same_version(r, etag, offset):
                return None
            if r.status_code == 200 and etag:
                self.progress.note(
                    f"vault: {self.dest} changed on the server since the partial download; starting again"
                )
                offset = 0
            self._save_etag(new_etag)
            return self._receive(r, offset)

    def _same_version(self, r: fetch.Reply, etag: str | None, offset: int) -> bool:
        match = _CONTENT_RANGE.fullmatch(r.headers.get("Content-Range", ""))
        return bool(match) and int(match.group(1)) == offset and r.headers.get("ETag") == etag  # type: ignore[union-attr]

    def _receive(self, r: fetch.Reply, offset: int) -> dict[str, Any]:
        expected = repr_digest(r.headers)
        total = offset + int(r.headers.get("Content-Length", 0))
        mode = "r+b" if offset else "wb"
        with open(self.part, mode, buffering=0) as out:
            digest = hash_prefix(out, offset)
            out.truncate(offset)
            self.progress.start(os.path.basename(self.dest), total, initial=offset)
            pour(r, out, digest, self.progress, self.part)
            self.progress.finish()
        self.backoff.succeeded()
        return self._finish(digest.digest(), expected, total, offset)

    def _complete_already(self, etag: str, offset: int) -> dict[str, Any] | None:
        """A 416 to ``Range: bytes=<size>-``: the part may already hold the whole version."""
        head_headers = {k: v for k, v in self._headers(None, 0).items()}
        auth = self.source.auth
        r = self.source.http.head(self.source.path, headers=head_headers, auth=auth)
        if (
            r.status_code != 200
            or r.headers.get("ETag") != etag
            or int(r.headers.get("Content-Length", -1)) != offset
        ):
            return None
        with open(self.part, "rb") as f:
            digest = hash_prefix(f, offset)
        return self._finish(digest.digest(), repr_digest(r.headers), offset, offset)

    def _finish(self, digest: bytes, expected: bytes | None, size: int, resumed: int) -> dict[str, Any]:
        self._forget()
        if expected is None:
            raise IntegrityFailure(
                f"the server sent no Repr-Digest: {self.part} could not be verified and was kept"
            )
        if digest != expected:
            raise IntegrityFailure(
                f"integrity check failed: SHA-256 {digest.hex()} of the bytes received differs from the"
                f" server's {expected.hex()}; kept as {self.part}"
            )
        os.replace(self.part, self.dest)
        return {"path": self.dest, "size": size, "sha256": digest.hex(), "resumed_from": resumed}


def to_stdout(source: Source, progress: Progress) -> dict[str, Any]:
    """``-o -``: streamed to stdout (not resumable), verified at the end all the same."""
    try:
        with source.get(source.headers()) as r:
            if r.status_code != 200:
                raise CliError(reply_message(r))
            expected = repr_digest(r.headers)
            digest = hashlib.sha256()
            progress.start("-", int(r.headers.get("Content-Length", 0)) or None)
            sys.stdout.buffer.flush()
            with open(sys.stdout.fileno(), "wb", buffering=0, closefd=False) as out:
                size = pour(r, out, digest, progress, "standard output")
            progress.finish()
    except fetch.FetchError as exc:
        raise CliError(transport_message(str(source.http.base_url), exc)) from None
    if digest.digest() != expected:
        raise IntegrityFailure(
            "integrity check failed: the SHA-256 of what was written differs from Repr-Digest"
        )
    return {"path": "-", "size": size, "sha256": digest.hexdigest(), "resumed_from": 0}
