"""SFS v1: the encrypted segment format (see docs/FORMAT.md for the full specification).

Every file is cut into segments of ``seg_size`` plaintext bytes (the last one 0..seg_size).
Each segment is AES-256-CBC encrypted under a per-file key with a fresh random IV and then
authenticated with HMAC-SHA256 (encrypt-then-MAC) over every field that gives it meaning:
format version, suite, segment size, final flag, file id, index and ciphertext length.
The per-file key is random, and stored only wrapped under a master key.

Every failure raises the one generic :class:`IntegrityError`, raised ``from None``: callers
and clients never learn which check failed.
"""

import hashlib
import hmac
import os
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from Crypto.Cipher import AES  # nosec B413  # pycryptodome (maintained), not the old PyCrypto
from Crypto.Util.strxor import strxor  # nosec B413  # pycryptodome, as above
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from vault.errors import IntegrityError
from vault.memory import uninitialized

VERSION = 1
SUITE_AES256CBC_HMACSHA256 = 1
SUPPORTED = frozenset({(VERSION, SUITE_AES256CBC_HMACSHA256)})

KEY_LEN = 32
FILE_ID_LEN = 16
IV_LEN = 16
BLOCK_LEN = 16
TAG_LEN = 32
SHA256_LEN = 32
WRAPPED_KEY_LEN = IV_LEN + KEY_LEN + TAG_LEN
MIN_SEG_SIZE = 4096
MAX_SEG_SIZE = 16 * 1024 * 1024
DEFAULT_SEG_SIZE = 1024 * 1024
MAX_NAME_BYTES = 255
Piece = bytes | bytearray | memoryview  # a run of plaintext bytes, sealed without joining
SEAL_STEP = 64 * 1024  # plaintext sealed at a time (seal_pieces): it stays in the core's cache

_SEG_LABEL = b"seg"
_HDR_LABEL = b"hdr"
_WRAP_LABEL = b"wrap"
_TAIL_LABEL = b"tail"
_KEK_INFO = b"sfs/v1/kek"
_FILE_INFO = b"sfs/v1/file"
_USER_INFO = b"sfs/v1/user"
# label, version u8, suite u8, seg_size u32, final u8, file_id 16, index u64, len(C) u64
_SEG_FIELDS = struct.Struct(">3sBBIB16sQQ")
# label, version u8, suite u8, seg_size u32, file_id 16, owner u64, P u64, N u64, created u64
# (microseconds), sha256 32, seg_root 32, len(name) u16 -- followed by the UTF-8 name
_HDR_FIELDS = struct.Struct(">3sBBI16sQQQQ32s32sH")
# label, version u8, suite u8, seg_size u32, file_id 16, owner u64, length u64, created u64,
# len(upload id) u8, len(name) u16 -- followed by the upload id and the UTF-8 name
_TUS_FIELDS = struct.Struct(">3sBBI16sQQQBH")
_TUS_LABEL = b"tus"
_ROOT_LABEL = b"sfs/v1/segroot"
# label, version u8, suite u8, seg_size u32, file_id 16, index u64, offset u64, prefix_root 32,
# len(C) u64
_TAIL_FIELDS = struct.Struct(">4sBBI16sQQ32sQ")
# label, version u8, key_id u32, file_id 16 -- followed by IV and wrapped ciphertext
_WRAP_FIELDS = struct.Struct(">4sBI16s")


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869) with the standard library's HMAC."""
    prk = hmac.digest(salt or bytes(32), ikm, "sha256")
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.digest(prk, block + info + bytes([counter]), "sha256")
        okm += block
        counter += 1
    return okm[:length]


@dataclass(frozen=True, repr=False)
class KeyPair:
    """An encryption key and a MAC key derived together; ``repr`` never shows them."""

    enc: bytes
    mac: bytes

    def __repr__(self) -> str:
        return "KeyPair(<secret>)"


def derive_kek(master_key: bytes) -> KeyPair:
    """Key-encryption keys for one master key."""
    okm = hkdf_sha256(master_key, b"", _KEK_INFO, 2 * KEY_LEN)
    return KeyPair(okm[:KEY_LEN], okm[KEY_LEN:])


def derive_user_key(master_key: bytes) -> bytes:
    """The key that authenticates account rows (vault/auth.py) under one master key."""
    return hkdf_sha256(master_key, b"", _USER_INFO, KEY_LEN)


def derive_file_keys(file_key: bytes, file_id: bytes) -> KeyPair:
    """Per-file encryption and MAC keys from the random file key FK."""
    okm = hkdf_sha256(file_key, file_id, _FILE_INFO, 2 * KEY_LEN)
    return KeyPair(okm[:KEY_LEN], okm[KEY_LEN:])


def new_file_id() -> bytes:
    return os.urandom(FILE_ID_LEN)


def new_file_key() -> bytes:
    return os.urandom(KEY_LEN)


_scratch = threading.local()  # per thread: the buffer cbc_decrypt reuses for its ECB pass


def _scratch_buffer(size: int) -> memoryview:
    """A writable buffer of ``size`` bytes owned by the calling thread, reused call after call.

    Bounded: one per thread that decrypts (the crypto pool), as large as the largest segment
    it opened. A fresh segment-sized buffer each time would cost page faults, not just a copy.
    """
    buffer: bytearray | None = getattr(_scratch, "buffer", None)
    if buffer is None or len(buffer) < size:
        buffer = _scratch.buffer = bytearray(size)
    return memoryview(buffer)[:size]


def cbc_decrypt(key: bytes, iv_ct: bytes | bytearray | memoryview) -> bytes:
    """AES-CBC decryption of ``IV || C`` (C a whole number of blocks), without unpadding.

    P_i = D_K(C_i) xor C_(i-1) with C_(-1) = IV: one ECB decryption of all of C into a reused
    buffer, then one XOR of that against ``IV || C`` shifted by a block. Exactly
    ``AES.new(key, AES.MODE_CBC, IV).decrypt(C)`` (tests/test_format.py checks both ways on
    known answers and random data), but pycryptodome runs ECB and strxor over the whole buffer
    at once, where its CBC mode goes a block at a time: about ten times slower on a segment.
    Only the caller decides whether to decrypt: segment, tail and wrapped key are each
    decrypted only after their MAC verified.
    """
    view = memoryview(iv_ct)
    size = len(view) - IV_LEN
    if size <= 0 or size % BLOCK_LEN:
        raise IntegrityError() from None
    decrypted = _scratch_buffer(size)
    try:
        AES.new(key, AES.MODE_ECB).decrypt(view[IV_LEN:], output=decrypted)
        return strxor(decrypted, view[:size])
    finally:
        decrypted.release()


def cbc_encrypt_into(key: bytes, iv: bytes, data: Piece, out: memoryview) -> None:
    """AES-256-CBC encryption of ``data`` (a whole number of blocks, no padding added) into the
    first ``len(data)`` bytes of ``out``, which must hold at least ``len(data) + 15`` bytes.

    OpenSSL's CBC (the ``cryptography`` package, already what vault/tls.py uses), not
    pycryptodome's: the same AES-256-CBC, byte for byte (tests/test_format.py checks it
    against pycryptodome and NIST SP 800-38A), but CBC encryption is sequential, one block
    after the other, and OpenSSL's assembly chains the blocks about 1.5 times cheaper than
    pycryptodome's per-block loop (``python -m bench.floor``: ~1.0 against ~1.6 CPU-s/GB).
    Uploads seal every byte this way (``seal_pieces``); the rest of the format stays with
    pycryptodome.
    """
    if len(data) % BLOCK_LEN:
        raise ValueError("CBC encryption of a partial block")
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    written = encryptor.update_into(data, out)
    if written != len(data) or encryptor.finalize():
        raise ValueError("CBC encryption wrote another length")


def _wrap_tag(kek: KeyPair, key_id: int, file_id: bytes, iv_ct: bytes) -> bytes:
    prefix = _WRAP_FIELDS.pack(_WRAP_LABEL, VERSION, key_id, file_id)
    return hmac.digest(kek.mac, prefix + iv_ct, "sha256")


def wrap_file_key(kek: KeyPair, key_id: int, file_id: bytes, file_key: bytes) -> bytes:
    """IV || AES-256-CBC(KEK_enc, FK) || HMAC(KEK_mac, "wrap" || version || key_id || file_id || IV || ct)."""
    iv = os.urandom(IV_LEN)
    iv_ct = iv + AES.new(kek.enc, AES.MODE_CBC, iv).encrypt(file_key)
    return iv_ct + _wrap_tag(kek, key_id, file_id, iv_ct)


def unwrap_file_key(kek: KeyPair, key_id: int, file_id: bytes, wrapped: bytes) -> bytes:
    """Check the wrap MAC, then decrypt FK."""
    if len(wrapped) != WRAPPED_KEY_LEN:
        raise IntegrityError() from None
    iv_ct, tag = wrapped[:-TAG_LEN], wrapped[-TAG_LEN:]
    if not hmac.compare_digest(tag, _wrap_tag(kek, key_id, file_id, iv_ct)):
        raise IntegrityError() from None
    return cbc_decrypt(kek.enc, iv_ct)


def check_seg_size(seg_size: int) -> None:
    """Raise ValueError unless seg_size is a block multiple within the supported range."""
    if not (MIN_SEG_SIZE <= seg_size <= MAX_SEG_SIZE and seg_size % BLOCK_LEN == 0):
        raise ValueError(
            f"segment size must be a multiple of {BLOCK_LEN} between {MIN_SEG_SIZE} and {MAX_SEG_SIZE}"
        )


def segment_count(size: int, seg_size: int) -> int:
    """N = max(1, ceil(P / S)): an empty file still has one (final, padded) segment."""
    return max(1, -(-size // seg_size))


def final_segment_len(size: int, seg_size: int) -> int:
    """Plaintext bytes in the final segment of a file of ``size`` bytes."""
    return size - (segment_count(size, seg_size) - 1) * seg_size


def _seg_prefix(seg_size: int, final: bool, file_id: bytes, index: int, ct_len: int) -> bytes:
    """What a segment's MAC covers before IV || C (docs/FORMAT.md)."""
    return _SEG_FIELDS.pack(
        _SEG_LABEL, VERSION, SUITE_AES256CBC_HMACSHA256, seg_size, 1 if final else 0, file_id, index, ct_len
    )


def _seg_mac(
    keys: KeyPair, seg_size: int, final: bool, file_id: bytes, index: int, iv_ct: memoryview
) -> bytes:
    return _mac(keys.mac, _seg_prefix(seg_size, final, file_id, index, len(iv_ct) - IV_LEN), iv_ct)


def _mac(key: bytes, prefix: bytes, body: bytes | memoryview) -> bytes:
    """HMAC-SHA256(key, prefix || body) without copying the (segment-sized) body."""
    mac = hmac.new(key, prefix, "sha256")
    mac.update(body)
    return mac.digest()


def seal_segment(
    keys: KeyPair, file_id: bytes, seg_size: int, index: int, final: bool, plaintext: Piece
) -> bytearray:
    """Encrypt and authenticate one segment: returns IV || C || T.

    A non-final segment holds exactly ``seg_size`` bytes and is not padded (the size is a
    block multiple); the final one holds 0..seg_size bytes and is PKCS#7-padded.
    """
    return seal_pieces(keys, file_id, seg_size, index, final, (plaintext,))


def seal_pieces(
    keys: KeyPair,
    file_id: bytes,
    seg_size: int,
    index: int,
    final: bool,
    pieces: Sequence[Piece],
    also: Callable[[memoryview], object] | None = None,
) -> bytearray:
    """``seal_segment`` of the concatenation of ``pieces`` (an upload's body chunks, or views
    of them), which are never joined; ``also``, if given, is fed the plaintext in order (the
    file's SHA-256: vault/upload.py).

    The segment goes through in steps of ``SEAL_STEP``: each is encrypted (one OpenSSL CBC
    chain, which keeps a partial block between steps), then its ciphertext MACed and its
    plaintext given to ``also`` while both are still in this core's cache, instead of three
    passes over the whole segment (measured alone: ~0.3 CPU-s/GB less with the hash, ~0.17
    without). The bytes are exactly ``seal_segment``'s: the MAC is over the same
    prefix || IV || C.
    """
    length = sum(len(piece) for piece in pieces)
    padding = b""
    if final:
        if length > seg_size:
            raise ValueError("final segment longer than the segment size")
        pad_len = BLOCK_LEN - length % BLOCK_LEN
        padding = bytes([pad_len]) * pad_len
    elif length != seg_size:
        raise ValueError("a non-final segment must hold exactly the segment size")
    ct_len = length + len(padding)
    iv = os.urandom(IV_LEN)
    # Not zeroed first: every byte is written below (IV, the ciphertext, whose length is
    # checked, then the tag).
    blob = uninitialized(IV_LEN + ct_len + TAG_LEN)
    view = memoryview(blob)
    view[:IV_LEN] = iv
    mac = hmac.new(keys.mac, _seg_prefix(seg_size, final, file_id, index, ct_len), "sha256")
    mac.update(iv)
    encryptor = Cipher(algorithms.AES(keys.enc), modes.CBC(iv)).encryptor()
    written = IV_LEN  # OpenSSL may write into the tag's room, which the MAC then overwrites
    for piece, feed in [*((piece, also) for piece in pieces), (padding, None)]:  # not the padding
        with memoryview(piece) as whole:
            for at in range(0, len(whole), SEAL_STEP):
                step = whole[at : at + SEAL_STEP]
                got = encryptor.update_into(step, view[written:])
                mac.update(view[written : written + got])
                written += got
                if feed is not None:
                    feed(step)
    if written != IV_LEN + ct_len or encryptor.finalize():
        raise ValueError("CBC encryption wrote another length")
    view[-TAG_LEN:] = mac.digest()
    return blob


def open_segment(
    keys: KeyPair,
    file_id: bytes,
    seg_size: int,
    index: int,
    final: bool,
    expected_len: int,
    blob: bytes,
) -> bytes:
    """Verify and decrypt one segment whose position and length come from the caller.

    Order: exact length check, constant-time MAC check, decrypt, then (final only) unpad and
    check the length. No byte of the segment is decrypted before its MAC verifies.
    """
    ct_len = check_segment(keys, file_id, seg_size, index, final, expected_len, blob)
    view = memoryview(blob)
    plaintext = cbc_decrypt(keys.enc, view[:-TAG_LEN])
    if not final:
        return plaintext
    pad_len = plaintext[-1]
    if pad_len != ct_len - expected_len or plaintext[-pad_len:] != bytes([pad_len]) * pad_len:
        raise IntegrityError() from None
    return plaintext[:expected_len]


def check_segment(
    keys: KeyPair,
    file_id: bytes,
    seg_size: int,
    index: int,
    final: bool,
    expected_len: int,
    blob: bytes,
) -> int:
    """The checks of ``open_segment`` before decryption: the exact length, then the MAC in
    constant time. Returns the ciphertext's length. ``run.py admin migrate`` copies a segment
    only after this (the bytes as they are, never decrypted)."""
    if final:
        ct_len = (expected_len // BLOCK_LEN + 1) * BLOCK_LEN
    else:
        ct_len = seg_size
    if expected_len > seg_size or len(blob) != IV_LEN + ct_len + TAG_LEN:
        raise IntegrityError() from None
    view = memoryview(blob)
    tag = _seg_mac(keys, seg_size, final, file_id, index, view[:-TAG_LEN])
    if not hmac.compare_digest(tag, view[-TAG_LEN:]):
        raise IntegrityError() from None
    return ct_len


@dataclass(frozen=True)
class Header:
    """The authenticated description of one stored file."""

    version: int
    suite: int
    seg_size: int
    file_id: bytes
    owner: int
    name: str
    size: int
    seg_count: int
    sha256: bytes
    created: float = 0.0
    seg_root: bytes = bytes(SHA256_LEN)


def segment_root(tags: bytes) -> bytes:
    """The commitment to a file's exact segments: SHA-256 over their tags, in index order.

    The header binds it, and a reader checks every segment's tag against the list, so an old
    segment rewritten at the same index (a resumed upload sends it again) can never be served.
    """
    if len(tags) % TAG_LEN:
        raise IntegrityError() from None
    return hashlib.sha256(_ROOT_LABEL + tags).digest()


def _micros(timestamp: float) -> int:
    return round(timestamp * 1_000_000)


def header_tag(keys: KeyPair, header: Header) -> bytes:
    """HMAC over every header field; fixed-width fields then the length-prefixed name."""
    name = header.name.encode("utf-8")
    if (
        len(name) > MAX_NAME_BYTES
        or len(header.sha256) != SHA256_LEN
        or len(header.seg_root) != SHA256_LEN
        or len(header.file_id) != FILE_ID_LEN
    ):
        raise IntegrityError() from None
    try:
        fields = _HDR_FIELDS.pack(
            _HDR_LABEL,
            header.version,
            header.suite,
            header.seg_size,
            header.file_id,
            header.owner,
            header.size,
            header.seg_count,
            _micros(header.created),
            header.sha256,
            header.seg_root,
            len(name),
        )
    except (struct.error, ValueError, OverflowError):  # a tampered column outside its range
        raise IntegrityError() from None
    return hmac.digest(keys.mac, fields + name, "sha256")


def verify_header(keys: KeyPair, header: Header, tag: bytes) -> None:
    """Check the header tag and the segment count; only then may P and N be trusted."""
    if (header.version, header.suite) not in SUPPORTED:
        raise IntegrityError() from None
    try:
        check_seg_size(header.seg_size)
    except ValueError:
        raise IntegrityError() from None
    if not hmac.compare_digest(tag, header_tag(keys, header)):
        raise IntegrityError() from None
    if header.seg_count != segment_count(header.size, header.seg_size):
        raise IntegrityError() from None


def _tail_mac(
    keys: KeyPair, seg_size: int, file_id: bytes, offset: int, prefix_root: bytes, iv_ct: bytes | memoryview
) -> bytes:
    if len(prefix_root) != SHA256_LEN or len(file_id) != FILE_ID_LEN:
        raise IntegrityError() from None
    prefix = _TAIL_FIELDS.pack(
        _TAIL_LABEL,
        VERSION,
        SUITE_AES256CBC_HMACSHA256,
        seg_size,
        file_id,
        offset // seg_size,
        offset,
        prefix_root,
        len(iv_ct) - IV_LEN,
    )
    return _mac(keys.mac, prefix, iv_ct)


def seal_tail(
    keys: KeyPair, file_id: bytes, seg_size: int, offset: int, prefix_root: bytes, tail: bytes | bytearray
) -> bytes:
    """Encrypt the partial segment a resumable upload holds between two requests.

    ``tail`` is the plaintext from the start of segment ``offset // seg_size`` up to ``offset``;
    ``prefix_root`` is the segment_root of the full segments before it. Its own label, the
    offset and the root keep it from being taken for a segment, for the tail of another offset
    or file, or from vouching for other segments than those stored when it was sealed.
    """
    if len(tail) != offset % seg_size:
        raise ValueError("the tail must hold the bytes of the current segment up to the offset")
    pad_len = BLOCK_LEN - len(tail) % BLOCK_LEN
    iv = os.urandom(IV_LEN)
    iv_ct = iv + AES.new(keys.enc, AES.MODE_CBC, iv).encrypt(bytes(tail) + bytes([pad_len]) * pad_len)
    return iv_ct + _tail_mac(keys, seg_size, file_id, offset, prefix_root, iv_ct)


def open_tail(
    keys: KeyPair, file_id: bytes, seg_size: int, offset: int, prefix_root: bytes, blob: bytes
) -> bytes:
    """Verify and decrypt a tail sealed for exactly this file, segment size, offset and prefix."""
    expected_len = offset % seg_size
    ct_len = (expected_len // BLOCK_LEN + 1) * BLOCK_LEN
    if len(blob) != IV_LEN + ct_len + TAG_LEN:
        raise IntegrityError() from None
    iv_ct = blob[:-TAG_LEN]
    try:
        tag = _tail_mac(keys, seg_size, file_id, offset, prefix_root, iv_ct)
    except struct.error:
        raise IntegrityError() from None
    if not hmac.compare_digest(tag, blob[-TAG_LEN:]):
        raise IntegrityError() from None
    plaintext = cbc_decrypt(keys.enc, iv_ct)
    if plaintext[-1] != ct_len - expected_len:
        raise IntegrityError() from None
    return plaintext[:expected_len]


@dataclass(frozen=True)
class UploadTicket:
    """The authenticated description of a resumable upload in progress."""

    seg_size: int
    file_id: bytes
    owner: int
    length: int
    created: float
    upload_id: str
    name: str


def upload_tag(keys: KeyPair, ticket: UploadTicket) -> bytes:
    """HMAC binding a resumable upload's owner, target name, length and id to its file key."""
    name, upload_id = ticket.name.encode("utf-8"), ticket.upload_id.encode("ascii", "replace")
    if len(name) > MAX_NAME_BYTES or len(upload_id) > 255 or len(ticket.file_id) != FILE_ID_LEN:
        raise IntegrityError() from None
    try:
        fields = _TUS_FIELDS.pack(
            _TUS_LABEL,
            VERSION,
            SUITE_AES256CBC_HMACSHA256,
            ticket.seg_size,
            ticket.file_id,
            ticket.owner,
            ticket.length,
            _micros(ticket.created),
            len(upload_id),
            len(name),
        )
    except (struct.error, ValueError, OverflowError):
        raise IntegrityError() from None
    return hmac.digest(keys.mac, fields + upload_id + name, "sha256")


def verify_upload(keys: KeyPair, ticket: UploadTicket, tag: bytes) -> None:
    """Check a resumable upload's tag (and its segment size) before any of it is trusted."""
    try:
        check_seg_size(ticket.seg_size)
    except ValueError:
        raise IntegrityError() from None
    if not hmac.compare_digest(tag, upload_tag(keys, ticket)):
        raise IntegrityError() from None
