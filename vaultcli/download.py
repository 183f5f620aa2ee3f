"""``vault get``: streamed downloads that resume, never splice versions, and verify.

Bytes go to ``PATH.part`` and become ``PATH`` only when the whole file's SHA-256 equals the
server's ``Repr-Digest``. The ETag the download started with is saved (state file) before the
first byte is written; a later run resumes with ``Range`` and ``If-Range: <that ETag>``, so a
file replaced meanwhile comes back whole (200) and the download starts again instead of
appending another version's bytes. A ``.part`` with no saved ETag is never trusted. An error
answer is read as a message, never written to the file. A mismatching digest keeps the
``.part`` file and exits with the integrity status.
"""

import hashlib
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import httpx

from vaultcli.client import Session, server_message, transport_message
from vaultcli.errors import CliError, IntegrityFailure, LoginNeeded
from vaultcli.progress import Progress
from vaultcli.upload import BLOCK, Backoff, hash_prefix, repr_digest

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_FILENAME_STAR = re.compile(r"filename\*\s*=\s*UTF-8''([^;]+)", re.IGNORECASE)
_FILENAME = re.compile(r'filename\s*=\s*"([^"]*)"', re.IGNORECASE)


@dataclass
class Source:
    """Where the file comes from: ``path`` on ``http`` (a session's client, or a plain one for
    a public link), and ``key``, which names it in the state file."""

    http: httpx.Client
    path: str
    key: str
    session: Session | None = None
    password: str | None = None

    @property
    def auth(self) -> Any:
        """A link's password as HTTP Basic with an empty user name, or the client default."""
        return httpx.BasicAuth("", self.password) if self.password is not None else httpx.USE_CLIENT_DEFAULT


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
            except httpx.TransportError as exc:
                self.backoff.wait(transport_message(str(self.source.http.base_url), exc))
                etag = self._saved_etag()
                offset = os.path.getsize(self.part) if etag else 0
                continue
            if result is not None:
                return result
            etag, offset = None, 0  # a new version: start again

    def _headers(self, etag: str | None, offset: int) -> dict[str, str]:
        headers = {"Accept": "*/*"}
        if etag and offset:
            headers.update({"Range": f"bytes={offset}-", "If-Range": etag})
        if self.source.session is not None:
            headers["Authorization"] = f"Bearer {self.source.session.token()}"
        return headers

    def _attempt(self, etag: str | None, offset: int, renewed: bool = False) -> dict[str, Any] | None:
        auth = self.source.auth
        headers = self._headers(etag, offset)
        with self.source.http.stream("GET", self.source.path, headers=headers, auth=auth) as r:
            if r.status_code == 416 and etag:
                return self._complete_already(etag, offset)
            if r.status_code == 401 and self.source.session is not None and not renewed:
                self.source.session.token(rejected=headers["Authorization"].removeprefix("Bearer "))
                return self._attempt(etag, offset, renewed=True)
            if r.status_code == 401 and self.source.session is not None:
                raise LoginNeeded(f"{server_message(r)}: run `vault login` again")
            if r.status_code >= 500:
                self.backoff.wait(server_message(r))
                return self._attempt(self._saved_etag(), offset)
            if r.status_code not in (200, 206):
                raise CliError(server_message(r))  # the error body never reaches the file
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

    def _same_version(self, r: httpx.Response, etag: str | None, offset: int) -> bool:
        match = _CONTENT_RANGE.fullmatch(r.headers.get("Content-Range", ""))
        return bool(match) and int(match.group(1)) == offset and r.headers.get("ETag") == etag  # type: ignore[union-attr]

    def _receive(self, r: httpx.Response, offset: int) -> dict[str, Any]:
        expected = repr_digest(r.headers)
        total = offset + int(r.headers.get("Content-Length", 0))
        mode = "r+b" if offset else "wb"
        # TLS hands over at most one 16 KiB record per read: a 1 MiB buffer turns those into
        # 1 MiB writes without another copy per piece.
        with open(self.part, mode, buffering=BLOCK) as out:
            digest = hash_prefix(out, offset)
            out.truncate(offset)
            self.progress.start(os.path.basename(self.dest), total, initial=offset)
            for chunk in r.iter_raw():
                out.write(chunk)
                digest.update(chunk)
                self.progress.advance(len(chunk))
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
    headers = {"Accept": "*/*"}
    if source.session is not None:
        headers["Authorization"] = f"Bearer {source.session.token()}"
    auth = source.auth
    try:
        with source.http.stream("GET", source.path, headers=headers, auth=auth) as r:
            if r.status_code != 200:
                raise CliError(server_message(r))
            expected = repr_digest(r.headers)
            digest, size = hashlib.sha256(), 0
            progress.start("-", int(r.headers.get("Content-Length", 0)) or None)
            for chunk in _chunks(r):
                sys.stdout.buffer.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                progress.advance(len(chunk))
            sys.stdout.buffer.flush()
            progress.finish()
    except httpx.TransportError as exc:
        raise CliError(transport_message(str(source.http.base_url), exc)) from None
    if digest.digest() != expected:
        raise IntegrityFailure(
            "integrity check failed: the SHA-256 of what was written differs from Repr-Digest"
        )
    return {"path": "-", "size": size, "sha256": digest.hexdigest(), "resumed_from": 0}


def _chunks(r: httpx.Response) -> Iterator[bytes]:
    yield from r.iter_raw()
