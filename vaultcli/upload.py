"""``vault put``: resumable uploads through the server's tus 1.0.0 endpoint.

The upload is created first (``POST /tus``) and its URL saved, by the file's fingerprint,
before any byte is sent, so running the same command again after Ctrl-C, a crash or a lost
connection asks the server for its offset (``HEAD``) and sends only the rest. Each ``PATCH``
carries one chunk (64 MiB by default) with ``Upload-Checksum: sha256``; the server keeps a
chunk only if it arrived whole and matches, so a resumed upload never holds a torn chunk.
The checksum has to be known before the chunk's first byte goes out, so chunks are read twice
in 1 MiB blocks (memory is flat at any file size): once in a thread that hashes the next
chunk, its one read feeding both the chunk's SHA-256 and the whole file's, while the chunk
before it is being sent (the server never waits for the client's hashing), and once to send.
At the end the server's SHA-256 of the stored file (its ``Repr-Digest``) must equal the
client's own.

Standard input (``-``) cannot be read twice or resumed: it goes as one streamed
``PUT /upload/<name>`` and is checked against the ``sha256`` in the reply.
"""

import base64
import hashlib
import http.client
import os
import re
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlsplit

import httpx

from vaultcli.client import Session, path_of, server_message, transport_message
from vaultcli.errors import CliError, IntegrityFailure, LoginNeeded
from vaultcli.progress import Progress

BLOCK = 1 << 20
DEFAULT_CHUNK = 64 << 20
TUS = {"Tus-Resumable": "1.0.0"}
OFFSET_TYPE = "application/offset+octet-stream"
RETRIES = 8
_DIGEST = re.compile(r"sha-256=:([A-Za-z0-9+/=]+):", re.IGNORECASE)


def repr_digest(headers: "httpx.Headers | http.client.HTTPMessage") -> bytes | None:
    match = _DIGEST.search(headers.get("Repr-Digest", ""))
    return base64.b64decode(match.group(1)) if match else None


class Backoff:
    """Retries after network errors and 5xx answers: 1, 2, 4 ... 30 s apart, ``RETRIES`` in a
    row at most (progress starts the count again). ``VAULT_RETRY_DELAY`` scales the waits."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.failures = 0
        self.base = float(os.environ.get("VAULT_RETRY_DELAY", "1"))

    def wait(self, why: str) -> None:
        self.failures += 1
        if self.failures > RETRIES:
            raise CliError(f"{why}; gave up after {RETRIES} retries (run the same command again to resume)")
        delay = min(30.0, self.base * 2 ** (self.failures - 1))
        self.progress.note(f"vault: {why}; retrying in {delay:g} s")
        time.sleep(delay)

    def succeeded(self) -> None:
        self.failures = 0


def fingerprint(session: Session, path: str, name: str) -> str:
    """Same server, user, target name and the same file, unchanged since (size, mtime, inode)."""
    st = os.stat(path)
    parts = [session.url, session.creds.username, name, os.path.realpath(path)]
    parts += [str(st.st_size), str(st.st_mtime_ns), str(st.st_ino), str(st.st_dev)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def blocks(f: IO[bytes], offset: int, length: int) -> Iterator[bytes]:
    """``length`` bytes of ``f`` from ``offset``, in blocks of at most 1 MiB."""
    f.seek(offset)
    left = length
    while left:
        block = f.read(min(BLOCK, left))
        if not block:
            raise CliError(
                f"{getattr(f, 'name', 'the file')} is shorter than expected: did it change meanwhile?"
            )
        left -= len(block)
        yield block


def hash_prefix(f: IO[bytes], length: int) -> "hashlib._Hash":
    """SHA-256 of the first ``length`` bytes; the file is left positioned after them."""
    digest = hashlib.sha256()
    for block in blocks(f, 0, length):
        digest.update(block)
    return digest


class Checksums:
    """Each chunk's SHA-256 and the whole file's up to its end, one chunk ahead: ``take``
    returns the digests of the chunk at ``offset`` (computed meanwhile if it was the one
    expected next) and starts hashing the chunk after it in a thread (hashlib lets go of the
    GIL while it hashes) while the caller sends this one."""

    def __init__(self, f: IO[bytes], size: int, chunk: int) -> None:
        self.fd, self.size, self.chunk = f.fileno(), size, chunk
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="vault-checksums")
        self.ahead: tuple[int, Future[tuple[bytes, hashlib._Hash]]] | None = None

    def take(self, offset: int, whole: "hashlib._Hash") -> tuple[bytes, "hashlib._Hash"]:
        """(the chunk's digest, the whole-file hash after it); ``whole`` is the hash of the
        file before ``offset``, used when the chunk was not the one expected."""
        if self.ahead is not None and self.ahead[0] == offset:
            checksum, after = self.ahead[1].result()
        else:
            checksum, after = self._hash(offset, whole.copy())
        self.ahead = None
        end = offset + min(self.chunk, self.size - offset)
        if end < self.size:
            self.ahead = (end, self.pool.submit(self._hash, end, after.copy()))
        return checksum, after

    def _hash(self, offset: int, whole: "hashlib._Hash") -> tuple[bytes, "hashlib._Hash"]:
        chunk = hashlib.sha256()
        buffer = memoryview(bytearray(BLOCK))
        end = offset + min(self.chunk, self.size - offset)
        while offset < end:
            n = os.preadv(self.fd, [buffer[: min(BLOCK, end - offset)]], offset)
            if not n:
                raise CliError("the file is shorter than expected: did it change meanwhile?")
            chunk.update(buffer[:n])
            whole.update(buffer[:n])
            offset += n
        return chunk.digest(), whole

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class Outcome:
    """What ``put`` reports for one file."""

    name: str
    size: int
    sha256: str
    resumed_from: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "filename": self.name,
            "size": self.size,
            "sha256": self.sha256,
            "resumed_from": self.resumed_from,
        }


class TusUpload:
    """One file's resumable upload."""

    def __init__(self, session: Session, path: str, name: str, chunk: int, progress: Progress) -> None:
        self.session, self.path, self.name, self.chunk, self.progress = session, path, name, chunk, progress
        self.size = os.stat(path).st_size
        self.key = fingerprint(session, path, name)
        self.backoff = Backoff(progress)
        self.renewed = False  # a 401 renews the token once; a second one in a row ends

    def run(self) -> Outcome:
        with open(self.path, "rb") as f:
            url, offset = self._resume_or_create(f)
            if url is None:  # an earlier run completed it; only its answer was lost
                return Outcome(self.name, self.size, self._local_digest(f).hex(), self.size)
            resumed = offset
            if offset:
                self.progress.note(f"vault: resuming {self.name} at {offset:,} of {self.size:,} bytes")
            whole = hash_prefix(f, offset)
            self.progress.start(self.name, self.size, initial=offset)
            checksums = Checksums(f, self.size, self.chunk)
            try:
                while offset < self.size:
                    checksum, after = checksums.take(offset, whole)
                    offset, whole = self._send_chunk(f, url, offset, checksum, whole, after)
            finally:
                checksums.close()
            self.progress.finish()
        self._forget()
        self._verify(whole.digest())
        return Outcome(self.name, self.size, whole.hexdigest(), resumed)

    # -- state ----------------------------------------------------------------------------

    def _remember(self, url: str) -> None:
        with self.session.store.transfers() as state:
            state.uploads[self.key] = {"url": url, "name": self.name, "path": os.path.abspath(self.path)}

    def _forget(self) -> None:
        with self.session.store.transfers() as state:
            state.uploads.pop(self.key, None)

    def _resume_or_create(self, f: IO[bytes]) -> tuple[str | None, int]:
        entry = self.session.store.load_transfers().uploads.get(self.key)
        if entry is not None:
            offset = self._server_offset(entry["url"])
            if offset is not None:
                return entry["url"], offset
            if self._already_stored(f):
                self._forget()
                return None, self.size
            self.progress.note(
                f"vault: the earlier upload of {self.name} expired on the server; starting again"
            )
        return self._create(), 0

    def _control(self, method: str, url: str, headers: dict[str, str]) -> httpx.Response:
        """A small tus request, retried with backoff on network errors and 5xx."""
        while True:
            try:
                response = self.session.request(method, url, headers=headers)
            except CliError as exc:
                self.backoff.wait(str(exc))
                continue
            if response.status_code < 500:
                return response
            self.backoff.wait(server_message(response))

    def _server_offset(self, url: str) -> int | None:
        """The server's offset, or None if it no longer knows the upload (done or expired)."""
        response = self._control("HEAD", url, TUS)
        if response.status_code in (404, 410):
            return None
        self.session.expect(response, 200)
        if int(response.headers.get("Upload-Length", -1)) != self.size:
            return None
        self.backoff.succeeded()
        return int(response.headers["Upload-Offset"])

    def _already_stored(self, f: IO[bytes]) -> bool:
        response = self.session.request("HEAD", "/download/" + path_of(self.name))
        if response.status_code != 200 or int(response.headers.get("Content-Length", -1)) != self.size:
            return False
        return repr_digest(response.headers) == self._local_digest(f)

    def _local_digest(self, f: IO[bytes]) -> bytes:
        return hash_prefix(f, self.size).digest()

    def _create(self) -> str:
        name = base64.b64encode(self.name.encode()).decode()
        headers = {**TUS, "Upload-Length": str(self.size), "Upload-Metadata": f"filename {name}"}
        response = self.session.expect(self._control("POST", "/tus", headers), 201)
        url = urlsplit(response.headers["Location"]).path
        self.backoff.succeeded()
        if self.size:
            self._remember(url)
        return url

    # -- chunks ---------------------------------------------------------------------------

    def _send_chunk(
        self,
        f: IO[bytes],
        url: str,
        offset: int,
        checksum: bytes,
        whole: "hashlib._Hash",
        after: "hashlib._Hash",
    ) -> tuple[int, "hashlib._Hash"]:
        """One PATCH of the chunk at ``offset`` whose SHA-256 is ``checksum``; the whole file's
        hash is ``whole`` before it and ``after`` it. On a failure the server's offset says
        where to go on."""
        length = min(self.chunk, self.size - offset)
        headers = {
            **TUS,
            "Upload-Offset": str(offset),
            "Content-Type": OFFSET_TYPE,
            "Content-Length": str(length),
            "Upload-Checksum": "sha256 " + base64.b64encode(checksum).decode(),
        }
        sent = [0]
        try:
            with self.session.stream(
                "PATCH", url, headers=headers, content=self._body(f, offset, length, sent)
            ) as r:
                status, message = r.status_code, ("" if r.status_code == 204 else server_message(r))
                new_offset = int(r.headers.get("Upload-Offset", offset))
        except httpx.TransportError as exc:
            status, message = 0, transport_message(self.session.url, exc)
        if status == 204 and new_offset == offset + length:
            self.backoff.succeeded()
            self.renewed = False
            return new_offset, after
        self.progress.rewind(sent[0])
        self._after_failure(status, message)
        server = self._server_offset(url)
        if server is None:
            raise CliError(f"the server no longer has this upload of {self.name}; run the same command again")
        if server != offset:  # the chunk was stored after all, or something else moved it
            self.progress.advance(server - offset)
            return server, hash_prefix(f, server)
        return offset, whole

    def _after_failure(self, status: int, message: str) -> None:
        if status == 401:
            if self.renewed:
                raise LoginNeeded(f"{message}: run `vault login` again")
            self.renewed = True
            self.session.renew()
        elif status in (0, 409, 423, 460) or status >= 500:
            self.backoff.wait(message)
        else:
            raise CliError(message)

    def _body(self, f: IO[bytes], offset: int, length: int, sent: list[int]) -> Iterator[bytes]:
        for block in blocks(f, offset, length):
            sent[0] += len(block)
            self.progress.advance(len(block))
            yield block

    def _verify(self, digest: bytes) -> None:
        response = self.session.expect(self.session.request("HEAD", "/download/" + path_of(self.name)), 200)
        server = repr_digest(response.headers)
        if server != digest:
            got = server.hex() if server else "none"
            raise IntegrityFailure(
                f"integrity check failed: the server stored {self.name} with SHA-256 {got},"
                f" but the local file's is {digest.hex()}"
            )


def put_stdin(session: Session, name: str, progress: Progress) -> Outcome:
    """Standard input as one streamed PUT (not resumable), checked against the reply."""
    progress.note("vault: reading standard input: this upload cannot be resumed if it is interrupted")
    digest, size = hashlib.sha256(), [0]

    def body() -> Iterator[bytes]:
        while block := sys.stdin.buffer.read(BLOCK):
            digest.update(block)
            size[0] += len(block)
            progress.advance(len(block))
            yield block

    progress.start(name, None)
    try:
        with session.stream("PUT", "/upload/" + path_of(name), content=body()) as response:
            session.expect(response, 201)
            response.read()
            reply = response.json()
    except httpx.TransportError as exc:
        raise CliError(transport_message(session.url, exc)) from None
    progress.finish()
    if reply.get("sha256") != digest.hexdigest():
        raise IntegrityFailure(
            f"integrity check failed: the server stored {name} with SHA-256 {reply.get('sha256')},"
            f" but what was read from standard input has {digest.hexdigest()}"
        )
    return Outcome(reply.get("filename", name), size[0], digest.hexdigest())
