"""Value objects the core hands to handlers: file listings, limits and usage, resume state."""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from vault.store import Resumable, StoredFile

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing: its items, and ``next``, the cursor of the page after it (None:
    this is the last). A page may hold fewer items than asked where rows failed their checks."""

    items: Sequence[T]
    next: str | None


@dataclass(frozen=True)
class Limits:
    """What one user may store: ``quota`` None means no quota."""

    max_file_size: int
    quota: int | None


@dataclass(frozen=True)
class Usage:
    used: int
    files: int
    limits: Limits


@dataclass(frozen=True)
class FileInfo:
    name: str
    size: int
    sha256: str
    created: float
    etag: str

    @classmethod
    def of(cls, stored: StoredFile) -> "FileInfo":
        header = stored.header
        return cls(header.name, header.size, header.sha256.hex(), header.created, header.file_id.hex())


@dataclass
class ResumeState:
    """Where a resumable upload stands: its keys, the bytes stored so far, the plaintext of the
    partial segment and the SHA-256 of everything before it."""

    file_id: bytes
    file_key: bytes
    seg_size: int
    length: int
    offset: int
    tail: bytes
    sha: "hashlib._Hash"
    tags: bytes  # of the full segments before the offset, in index order


@dataclass(frozen=True)
class UploadState:
    """What the owner of a resumable upload may see of it: no wrapped key, no tag."""

    tus_id: str
    owner: int
    name: str
    length: int
    offset: int
    expires: float
    metadata: str

    @classmethod
    def of(cls, row: Resumable) -> "UploadState":
        return cls(row.tus_id, row.owner, row.name, row.length, row.offset, row.expires, row.metadata)
