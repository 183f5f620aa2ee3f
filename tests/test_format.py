"""Unit tests of the SFS v1 segment format (vault/format.py): no server, no database.

One test per attack of the shared FORMAT.md that applies to a single segment, wrapped key or
header, plus RFC 5869 vectors for the KDF and known-answer vectors that freeze the format.
"""

import dataclasses
import hashlib
import hmac
import itertools
import os
import random
import struct
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from Crypto.Cipher import AES
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vault import format as sfs
from vault.errors import IntegrityError

S = 4096  # the smallest supported segment size keeps these tests fast
BLOCK = 16
MASTER_KEY = bytes(range(32))
FILE_KEY = bytes(range(32, 64))
FILE_ID = bytes(range(64, 80))
KEY_ID = 7
SIZES = [0, 1, 15, 16, 17, S - 1, S, S + 1, 2 * S, 2 * S + 1]


def data_of(size: int) -> bytes:
    return bytes((i * 7 + 3) % 251 for i in range(size))


def file_keys() -> sfs.KeyPair:
    return sfs.derive_file_keys(FILE_KEY, FILE_ID)


def seal_file(keys: sfs.KeyPair, file_id: bytes, seg_size: int, data: bytes) -> list[bytearray]:
    """Cut ``data`` into segments and seal each; the last one is final."""
    count = sfs.segment_count(len(data), seg_size)
    return [
        sfs.seal_segment(keys, file_id, seg_size, i, i == count - 1, data[i * seg_size : (i + 1) * seg_size])
        for i in range(count)
    ]


def open_file(keys: sfs.KeyPair, file_id: bytes, seg_size: int, size: int, blobs: list[bytes]) -> bytes:
    """Open segments as a reader does: index and final flag come from the loop and the
    authenticated size, never from the blobs."""
    count = sfs.segment_count(size, seg_size)
    if len(blobs) != count:
        raise IntegrityError() from None
    last_len = sfs.final_segment_len(size, seg_size)
    out = bytearray()
    for i, blob in enumerate(blobs):
        final = i == count - 1
        out += sfs.open_segment(keys, file_id, seg_size, i, final, last_len if final else seg_size, blob)
    return bytes(out)


def assert_integrity_error(fn: Callable[..., Any], *args: Any) -> None:
    """The call fails with exactly the one generic error, raised from None, same message."""
    with pytest.raises(IntegrityError) as info:
        fn(*args)
    exc = info.value
    assert type(exc) is IntegrityError
    assert exc.args == (IntegrityError.message,)
    assert str(exc) == IntegrityError.message
    assert exc.__cause__ is None
    assert exc.__context__ is None or exc.__suppress_context__


def flip(blob: bytes | bytearray, pos: int, bit: int = 0) -> bytes:
    out = bytearray(blob)
    out[pos] ^= 1 << bit
    return bytes(out)


def seg_tag_by_spec(
    mac_key: bytes, seg_size: int, final: bool, file_id: bytes, index: int, iv: bytes, ct: bytes
) -> bytes:
    """T_i exactly as docs/FORMAT.md writes it, built independently of vault.format."""
    prefix = (
        b"seg"
        + struct.pack(">BBI", 1, 1, seg_size)
        + bytes([1 if final else 0])
        + file_id
        + struct.pack(">QQ", index, len(ct))
    )
    return hmac.digest(mac_key, prefix + iv + ct, "sha256")


def blob_by_spec(keys: sfs.KeyPair, index: int, final: bool, padded_plaintext: bytes) -> bytes:
    iv = bytes(range(100, 116))
    ct = AES.new(keys.enc, AES.MODE_CBC, iv).encrypt(padded_plaintext)
    return iv + ct + seg_tag_by_spec(keys.mac, S, final, FILE_ID, index, iv, ct)


class RecordingAES:
    """Stands in for ``Crypto.Cipher.AES`` and counts every decrypt call (CBC or the ECB pass
    of ``sfs.cbc_decrypt``)."""

    MODE_CBC = AES.MODE_CBC
    MODE_ECB = AES.MODE_ECB

    def __init__(self) -> None:
        self.decrypts = 0

    def new(self, key: bytes, mode: int, *iv: Any) -> Any:
        assert mode in (AES.MODE_CBC, AES.MODE_ECB)
        cipher = AES.new(key, mode, *iv)
        recorder = self

        class Cipher:
            def encrypt(self, *args: Any, **kwargs: Any) -> Any:
                return cipher.encrypt(*args, **kwargs)

            def decrypt(self, *args: Any, **kwargs: Any) -> Any:
                recorder.decrypts += 1
                return cipher.decrypt(*args, **kwargs)

        return Cipher()


@pytest.fixture
def recording_aes(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingAES]:
    recorder = RecordingAES()
    monkeypatch.setattr(sfs, "AES", recorder)
    yield recorder


def fixed_urandom(first: int) -> Callable[[int], bytes]:
    """os.urandom replacement: call k returns first+k, first+k+1, ... (mod 256)."""
    calls = [0]

    def urandom(n: int) -> bytes:
        start = first + calls[0]
        calls[0] += 1
        return bytes((start + i) % 256 for i in range(n))

    return urandom


# --- HKDF (RFC 5869, appendix A, SHA-256 cases) ------------------------------------------------


@pytest.mark.parametrize(
    ("ikm", "salt", "info", "length", "okm"),
    [
        pytest.param(
            bytes([0x0B]) * 22,
            bytes(range(0x0D)),
            bytes(range(0xF0, 0xFA)),
            42,
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
            id="case1",
        ),
        pytest.param(
            bytes(range(0x50)),
            bytes(range(0x60, 0xB0)),
            bytes(range(0xB0, 0x100)),
            82,
            "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
            "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
            "cc30c58179ec3e87c14c01d5c1f3434f1d87",
            id="case2",
        ),
        pytest.param(
            bytes([0x0B]) * 22,
            b"",
            b"",
            42,
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
            id="case3",
        ),
    ],
)
def test_hkdf_matches_rfc5869_vectors(ikm: bytes, salt: bytes, info: bytes, length: int, okm: str) -> None:
    assert sfs.hkdf_sha256(ikm, salt, info, length).hex() == okm


def hkdf_reference(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 by the cryptography package (OpenSSL), independent of vault.format."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt or None, info=info).derive(ikm)


@pytest.mark.parametrize("length", [1, 31, 32, 33, 64, 65, 255 * 32])
def test_hkdf_matches_an_independent_implementation_up_to_the_rfc_limit(length: int) -> None:
    """Every output length up to L = 255 * HashLen (RFC 5869's limit), with and without salt."""
    ikm, info = bytes(range(22)), b"sfs/v1/test"
    for salt in (b"", bytes(range(13))):
        assert sfs.hkdf_sha256(ikm, salt, info, length) == hkdf_reference(ikm, salt, info, length)


def test_hkdf_refuses_more_than_the_rfc_limit() -> None:
    with pytest.raises(ValueError):
        sfs.hkdf_sha256(bytes(22), b"", b"", 255 * 32 + 1)


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_file_round_trips_at_edge_sizes(size: int) -> None:
    keys, data = file_keys(), data_of(size)
    blobs = seal_file(keys, FILE_ID, S, data)
    assert len(blobs) == max(1, -(-size // S))
    assert open_file(keys, FILE_ID, S, size, [bytes(b) for b in blobs]) == data


@pytest.mark.parametrize("size", SIZES)
def test_stored_blob_lengths_follow_the_format(size: int) -> None:
    blobs = seal_file(file_keys(), FILE_ID, S, data_of(size))
    for blob in blobs[:-1]:
        assert len(blob) == sfs.IV_LEN + S + sfs.TAG_LEN
    last_len = sfs.final_segment_len(size, S)
    assert len(blobs[-1]) == sfs.IV_LEN + (last_len // 16 + 1) * 16 + sfs.TAG_LEN


def test_segment_built_from_the_spec_opens() -> None:
    """Control for the bad-padding test: the independent construction matches the code."""
    keys = file_keys()
    plaintext = data_of(20)
    blob = blob_by_spec(keys, 3, True, plaintext + bytes([12]) * 12)
    assert sfs.open_segment(keys, FILE_ID, S, 3, True, 20, blob) == plaintext
    full = data_of(S)
    blob = blob_by_spec(keys, 0, False, full)
    assert sfs.open_segment(keys, FILE_ID, S, 0, False, S, blob) == full


@pytest.mark.parametrize("length", [0, 1, BLOCK - 1, BLOCK, S - BLOCK, S - 1, S + 1, S + BLOCK, 2 * S])
def test_seal_refuses_a_non_final_segment_of_any_length_but_the_segment_size(length: int) -> None:
    """The format's own check, not the cipher's padding error (block multiples pass that)."""
    with pytest.raises(ValueError, match="^a non-final segment must hold exactly the segment size$"):
        sfs.seal_segment(file_keys(), FILE_ID, S, 0, False, data_of(length))


@pytest.mark.parametrize("length", [S + 1, S + BLOCK, 2 * S])
def test_seal_refuses_a_final_segment_longer_than_the_segment_size(length: int) -> None:
    with pytest.raises(ValueError, match="^final segment longer than the segment size$"):
        sfs.seal_segment(file_keys(), FILE_ID, S, 0, True, data_of(length))


# --- tampered segments -------------------------------------------------------------------------

# (name, offset from the start of a blob, or negative from its end)
_REGIONS = [
    ("iv_first", 0),
    ("iv_last", sfs.IV_LEN - 1),
    ("ct_first", sfs.IV_LEN),
    ("ct_middle", sfs.IV_LEN + 40),
    ("ct_last", -sfs.TAG_LEN - 1),
    ("tag_first", -sfs.TAG_LEN),
    ("tag_last", -1),
]


@pytest.mark.parametrize("final", [False, True], ids=["nonfinal", "final"])
@pytest.mark.parametrize(("region", "pos"), _REGIONS, ids=[r[0] for r in _REGIONS])
@pytest.mark.parametrize("bit", [0, 7])
def test_bit_flip_in_segment_fails_without_decrypting(
    recording_aes: RecordingAES, final: bool, region: str, pos: int, bit: int
) -> None:
    keys = file_keys()
    length = 100 if final else S
    blob = sfs.seal_segment(keys, FILE_ID, S, 1, final, data_of(length))
    assert_integrity_error(sfs.open_segment, keys, FILE_ID, S, 1, final, length, flip(blob, pos, bit))
    assert recording_aes.decrypts == 0
    assert sfs.open_segment(keys, FILE_ID, S, 1, final, length, bytes(blob)) == data_of(length)
    assert recording_aes.decrypts == 1  # the recorder does see real decryptions


def test_every_single_bit_flip_in_a_final_segment_fails() -> None:
    keys = file_keys()
    blob = sfs.seal_segment(keys, FILE_ID, S, 0, True, b"short final segment")
    for pos in range(len(blob)):
        for bit in range(8):
            assert_integrity_error(sfs.open_segment, keys, FILE_ID, S, 0, True, 19, flip(blob, pos, bit))


def test_segment_opened_at_another_index_fails(recording_aes: RecordingAES) -> None:
    keys = file_keys()
    blob = bytes(sfs.seal_segment(keys, FILE_ID, S, 1, False, data_of(S)))
    for index in (0, 2, 1 << 32, (1 << 64) - 1):
        assert_integrity_error(sfs.open_segment, keys, FILE_ID, S, index, False, S, blob)
    assert recording_aes.decrypts == 0


def test_swapped_segments_fail() -> None:
    keys, data = file_keys(), data_of(3 * S)
    blobs = [bytes(b) for b in seal_file(keys, FILE_ID, S, data)]
    swapped = [blobs[1], blobs[0], blobs[2]]
    assert_integrity_error(open_file, keys, FILE_ID, S, len(data), swapped)


def test_final_flag_swapped_fails(recording_aes: RecordingAES) -> None:
    """A final segment of S-1 bytes has the same blob length as a non-final one, so only the
    MAC can tell them apart."""
    keys = file_keys()
    final = bytes(sfs.seal_segment(keys, FILE_ID, S, 1, True, data_of(S - 1)))
    nonfinal = bytes(sfs.seal_segment(keys, FILE_ID, S, 1, False, data_of(S)))
    assert len(final) == len(nonfinal)
    assert_integrity_error(sfs.open_segment, keys, FILE_ID, S, 1, False, S, final)
    assert_integrity_error(sfs.open_segment, keys, FILE_ID, S, 1, True, S - 1, nonfinal)
    assert recording_aes.decrypts == 0


def test_final_and_non_final_segment_swapped_fails() -> None:
    keys, data = file_keys(), data_of(2 * S - 1)
    blobs = [bytes(b) for b in seal_file(keys, FILE_ID, S, data)]
    assert_integrity_error(open_file, keys, FILE_ID, S, len(data), blobs[::-1])


def test_dropped_or_appended_segment_fails() -> None:
    keys, data = file_keys(), data_of(2 * S + 1)
    blobs = [bytes(b) for b in seal_file(keys, FILE_ID, S, data)]
    assert_integrity_error(open_file, keys, FILE_ID, S, len(data), blobs[:-1])
    assert_integrity_error(open_file, keys, FILE_ID, S, len(data), [blobs[0], blobs[2]])
    # truncating and claiming the shorter size: the non-final segment cannot pose as final
    assert_integrity_error(open_file, keys, FILE_ID, S, 2 * S, blobs[:2])
    extra = bytes(sfs.seal_segment(keys, FILE_ID, S, 3, True, b"x"))
    assert_integrity_error(open_file, keys, FILE_ID, S, len(data), [*blobs, extra])


def test_segment_of_another_file_fails(recording_aes: RecordingAES) -> None:
    keys = file_keys()
    other_id = bytes(16)
    other_keys = sfs.derive_file_keys(FILE_KEY, other_id)  # even under the same file key
    blob = bytes(sfs.seal_segment(other_keys, other_id, S, 0, False, data_of(S)))
    assert_integrity_error(sfs.open_segment, keys, FILE_ID, S, 0, False, S, blob)
    # the right keys but the wrong file id in the MAC input
    blob = bytes(sfs.seal_segment(keys, other_id, S, 0, False, data_of(S)))
    assert_integrity_error(sfs.open_segment, keys, FILE_ID, S, 0, False, S, blob)
    assert recording_aes.decrypts == 0


def test_segment_opened_with_another_segment_size_fails(recording_aes: RecordingAES) -> None:
    keys = file_keys()
    final = bytes(sfs.seal_segment(keys, FILE_ID, 2 * S, 0, True, data_of(100)))
    assert_integrity_error(sfs.open_segment, keys, FILE_ID, S, 0, True, 100, final)
    final = bytes(sfs.seal_segment(keys, FILE_ID, S, 0, True, data_of(100)))
    assert_integrity_error(sfs.open_segment, keys, FILE_ID, 2 * S, 0, True, 100, final)
    nonfinal = bytes(sfs.seal_segment(keys, FILE_ID, S, 0, False, data_of(S)))
    assert_integrity_error(sfs.open_segment, keys, FILE_ID, 2 * S, 0, False, 2 * S, nonfinal)
    assert recording_aes.decrypts == 0


def test_final_segment_opened_with_another_expected_length_fails() -> None:
    keys = file_keys()
    blob = bytes(sfs.seal_segment(keys, FILE_ID, S, 0, True, data_of(20)))
    for length in (0, 16, 19, 21, 31, 32, S, S + 1):
        assert_integrity_error(sfs.open_segment, keys, FILE_ID, S, 0, True, length, blob)


@pytest.mark.parametrize("final", [False, True], ids=["nonfinal", "final"])
def test_malformed_blob_fails_without_decrypting(recording_aes: RecordingAES, final: bool) -> None:
    keys = file_keys()
    length = 100 if final else S
    blob = bytes(sfs.seal_segment(keys, FILE_ID, S, 0, final, data_of(length)))
    malformed = {
        "empty": b"",
        "one_byte": blob[:1],
        "iv_only": blob[: sfs.IV_LEN],
        "iv_and_tag": blob[: sfs.IV_LEN] + blob[-sfs.TAG_LEN :],
        "one_block_short": blob[: sfs.IV_LEN] + blob[sfs.IV_LEN + 16 :],
        "not_block_aligned": blob[:-1],
        "one_byte_too_long": blob + b"\x00",
        "one_block_too_long": blob[:-32] + bytes(16) + blob[-32:],
    }
    for bad in malformed.values():
        assert_integrity_error(sfs.open_segment, keys, FILE_ID, S, 0, final, length, bad)
    assert recording_aes.decrypts == 0


@pytest.mark.parametrize(
    "padded",
    [
        pytest.param(data_of(31) + b"\x00", id="pad_byte_zero"),
        pytest.param(data_of(31) + b"\x11", id="pad_byte_over_block"),
        pytest.param(data_of(31) + b"\x20", id="pad_byte_whole_ciphertext"),
        pytest.param(data_of(31) + b"\xff", id="pad_byte_255"),
        pytest.param(data_of(20) + b"\x0c" * 11 + b"\x0b", id="pad_bytes_inconsistent"),
        pytest.param(data_of(20) + b"\x0b" * 11 + b"\x0c", id="pad_bytes_one_short"),
        pytest.param(data_of(30) + b"\x02\x02", id="valid_padding_wrong_length"),
        pytest.param(data_of(16) + b"\x10" * 16, id="valid_full_block_padding_wrong_length"),
    ],
)
def test_valid_mac_over_bad_padding_gives_the_same_error(padded: bytes) -> None:
    """No padding oracle: a segment whose MAC verifies but whose padding is wrong fails with
    exactly the error a forged MAC gives."""
    keys = file_keys()
    blob = blob_by_spec(keys, 0, True, padded)
    assert_integrity_error(sfs.open_segment, keys, FILE_ID, S, 0, True, 20, blob)
    with pytest.raises(IntegrityError) as forged:
        sfs.open_segment(keys, FILE_ID, S, 0, True, 20, flip(blob, -1))
    with pytest.raises(IntegrityError) as bad_padding:
        sfs.open_segment(keys, FILE_ID, S, 0, True, 20, blob)
    assert forged.value.args == bad_padding.value.args


# --- wrapped file key --------------------------------------------------------------------------


def test_wrapped_key_round_trips() -> None:
    kek = sfs.derive_kek(MASTER_KEY)
    wrapped = sfs.wrap_file_key(kek, KEY_ID, FILE_ID, FILE_KEY)
    assert len(wrapped) == sfs.WRAPPED_KEY_LEN
    assert FILE_KEY not in wrapped
    assert sfs.unwrap_file_key(kek, KEY_ID, FILE_ID, wrapped) == FILE_KEY


def test_unwrap_with_wrong_key_id_fails(recording_aes: RecordingAES) -> None:
    kek = sfs.derive_kek(MASTER_KEY)
    wrapped = sfs.wrap_file_key(kek, KEY_ID, FILE_ID, FILE_KEY)
    for key_id in (0, KEY_ID - 1, KEY_ID + 1, 2**32 - 1):
        assert_integrity_error(sfs.unwrap_file_key, kek, key_id, FILE_ID, wrapped)
    assert recording_aes.decrypts == 0


def test_unwrap_with_wrong_file_id_fails(recording_aes: RecordingAES) -> None:
    kek = sfs.derive_kek(MASTER_KEY)
    wrapped = sfs.wrap_file_key(kek, KEY_ID, FILE_ID, FILE_KEY)
    assert_integrity_error(sfs.unwrap_file_key, kek, KEY_ID, bytes(16), wrapped)
    assert_integrity_error(sfs.unwrap_file_key, kek, KEY_ID, flip(FILE_ID, 15), wrapped)
    assert recording_aes.decrypts == 0


def test_unwrap_with_wrong_master_key_fails(recording_aes: RecordingAES) -> None:
    wrapped = sfs.wrap_file_key(sfs.derive_kek(MASTER_KEY), KEY_ID, FILE_ID, FILE_KEY)
    other = sfs.derive_kek(flip(MASTER_KEY, 0))
    assert_integrity_error(sfs.unwrap_file_key, other, KEY_ID, FILE_ID, wrapped)
    assert recording_aes.decrypts == 0


def test_every_bit_flip_in_wrapped_key_fails(recording_aes: RecordingAES) -> None:
    kek = sfs.derive_kek(MASTER_KEY)
    wrapped = sfs.wrap_file_key(kek, KEY_ID, FILE_ID, FILE_KEY)
    for pos in range(len(wrapped)):
        for bit in range(8):
            assert_integrity_error(sfs.unwrap_file_key, kek, KEY_ID, FILE_ID, flip(wrapped, pos, bit))
    for bad in (b"", wrapped[:-1], wrapped + b"\x00", wrapped[:48]):
        assert_integrity_error(sfs.unwrap_file_key, kek, KEY_ID, FILE_ID, bad)
    assert recording_aes.decrypts == 0


# --- header ------------------------------------------------------------------------------------


def header() -> sfs.Header:
    size = 2 * S + 5
    return sfs.Header(
        version=sfs.VERSION,
        suite=sfs.SUITE_AES256CBC_HMACSHA256,
        seg_size=S,
        file_id=FILE_ID,
        owner=42,
        name="report.pdf",
        size=size,
        seg_count=3,
        sha256=hashlib.sha256(b"contents").digest(),
    )


def test_untouched_header_verifies() -> None:
    keys, h = file_keys(), header()
    sfs.verify_header(keys, h, sfs.header_tag(keys, h))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("owner", 43),
        ("owner", 0),
        ("size", 2 * S + 4),
        ("size", 2 * S + 6),
        ("seg_count", 4),
        ("name", "report.pdF"),
        ("name", "report.pdf "),
        ("name", ""),
        ("sha256", hashlib.sha256(b"other").digest()),
        ("file_id", bytes(16)),
        ("version", 0),
        ("version", 2),
        ("suite", 0),
        ("suite", 2),
        ("seg_size", 2 * S),
        ("seg_size", S - 16),
    ],
)
def test_header_with_changed_field_fails(field: str, value: Any) -> None:
    keys, h = file_keys(), header()
    tag = sfs.header_tag(keys, h)
    assert_integrity_error(sfs.verify_header, keys, dataclasses.replace(h, **{field: value}), tag)


def test_header_with_changed_size_and_matching_seg_count_fails() -> None:
    """Drop the last segment and rewrite P and N consistently: the tag still catches it."""
    keys, h = file_keys(), header()
    tag = sfs.header_tag(keys, h)
    assert_integrity_error(sfs.verify_header, keys, dataclasses.replace(h, size=2 * S, seg_count=2), tag)


def test_header_under_another_file_key_fails() -> None:
    h = header()
    tag = sfs.header_tag(sfs.derive_file_keys(flip(FILE_KEY, 0), FILE_ID), h)
    assert_integrity_error(sfs.verify_header, file_keys(), h, tag)


def test_header_with_bad_tag_fails() -> None:
    keys, h = file_keys(), header()
    tag = sfs.header_tag(keys, h)
    for bad in (b"", tag[:-1], tag + b"\x00", flip(tag, 0), flip(tag, 31, 7), bytes(32)):
        assert_integrity_error(sfs.verify_header, keys, h, bad)


@pytest.mark.parametrize(("size", "seg_count"), [(2 * S + 5, 2), (2 * S, 3), (0, 0), (S, 2), (1, 0)])
def test_header_with_seg_count_inconsistent_with_size_fails(size: int, seg_count: int) -> None:
    """Even a correctly tagged header is refused when N != max(1, ceil(P/S))."""
    keys = file_keys()
    h = dataclasses.replace(header(), size=size, seg_count=seg_count)
    assert_integrity_error(sfs.verify_header, keys, h, sfs.header_tag(keys, h))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("size", -1),
        ("size", 2**64),
        ("seg_count", -1),
        ("seg_count", 2**64),
        ("owner", -1),
        ("owner", 2**64),
        ("seg_size", -1),
        ("seg_size", 0),
        ("seg_size", 2**40),
        ("file_id", FILE_ID[:-1]),
        ("file_id", FILE_ID + b"\x00"),
        ("sha256", b""),
        ("sha256", bytes(33)),
        ("name", "n" * (sfs.MAX_NAME_BYTES + 1)),
        ("version", -1),
        ("version", 256),
        ("suite", 2**40),
    ],
)
def test_header_field_out_of_range_fails_as_integrity_error(field: str, value: Any) -> None:
    """A tampered column outside its field's range is an integrity failure, not struct.error."""
    keys, h = file_keys(), header()
    tag = sfs.header_tag(keys, h)
    assert_integrity_error(sfs.verify_header, keys, dataclasses.replace(h, **{field: value}), tag)


# A digest and a file id whose last byte is zero: struct's "32s" and "16s" pad a short value
# with zeros, so the value cut by its last byte would pack to the same bytes.
ENDS_IN_ZERO = {"sha256": bytes(range(1, 32)) + b"\x00", "seg_root": bytes(range(101, 132)) + b"\x00"}
ENDS_IN_ZERO["file_id"] = FILE_ID[:-1] + b"\x00"


@pytest.mark.parametrize("field", ["sha256", "seg_root", "file_id"])
def test_a_header_field_one_byte_short_is_not_zero_padded_into_the_same_tag(field: str) -> None:
    keys, full = file_keys(), ENDS_IN_ZERO[field]
    whole: dict[str, Any] = {field: full}
    cut: dict[str, Any] = {field: full[:-1]}
    h = dataclasses.replace(header(), **whole)
    tag = sfs.header_tag(keys, h)
    sfs.verify_header(keys, h, tag)
    short = dataclasses.replace(h, **cut)
    assert_integrity_error(sfs.header_tag, keys, short)
    assert_integrity_error(sfs.verify_header, keys, short, tag)


def test_a_header_name_of_exactly_max_name_bytes_verifies_and_one_byte_more_is_refused() -> None:
    keys, name = file_keys(), "\u00e9" * 127 + "x"  # 255 bytes of UTF-8
    assert len(name.encode()) == sfs.MAX_NAME_BYTES
    h = dataclasses.replace(header(), name=name)
    sfs.verify_header(keys, h, sfs.header_tag(keys, h))
    assert_integrity_error(sfs.header_tag, keys, dataclasses.replace(h, name=name + "x"))


@pytest.mark.parametrize(
    "seg_size", [sfs.MIN_SEG_SIZE, sfs.MIN_SEG_SIZE + 16, 3 * S, sfs.DEFAULT_SEG_SIZE, sfs.MAX_SEG_SIZE]
)
def test_a_supported_segment_size_is_accepted(seg_size: int) -> None:
    sfs.check_seg_size(seg_size)
    keys = file_keys()
    h = dataclasses.replace(header(), seg_size=seg_size, seg_count=sfs.segment_count(2 * S + 5, seg_size))
    sfs.verify_header(keys, h, sfs.header_tag(keys, h))
    t = ticket(seg_size=seg_size)
    sfs.verify_upload(keys, t, sfs.upload_tag(keys, t))


UNSUPPORTED_SEG_SIZES = [0, 16, sfs.MIN_SEG_SIZE - 16, S + 1, S + 8, 3 * S + 4, sfs.MAX_SEG_SIZE - 8]
UNSUPPORTED_SEG_SIZES += [sfs.MAX_SEG_SIZE + 16, 2 * sfs.MAX_SEG_SIZE]


@pytest.mark.parametrize("seg_size", UNSUPPORTED_SEG_SIZES)
def test_an_unsupported_segment_size_is_refused_even_under_a_valid_tag(seg_size: int) -> None:
    """Below the minimum, above the maximum or not a whole number of blocks: refused by
    check_seg_size, and a header or upload ticket that names it is refused though its tag is
    right (the tag alone does not make a segment size one the format supports)."""
    with pytest.raises(ValueError, match="^segment size must be a multiple of 16 between 4096 and 16777216$"):
        sfs.check_seg_size(seg_size)
    keys = file_keys()
    h = dataclasses.replace(header(), seg_size=seg_size, seg_count=3)
    assert_integrity_error(sfs.verify_header, keys, h, sfs.header_tag(keys, h))
    t = ticket(seg_size=seg_size)
    assert_integrity_error(sfs.verify_upload, keys, t, sfs.upload_tag(keys, t))


# --- freshness ---------------------------------------------------------------------------------


def test_same_plaintext_sealed_twice_differs() -> None:
    keys, plaintext = file_keys(), data_of(S)
    first = sfs.seal_segment(keys, FILE_ID, S, 0, False, plaintext)
    second = sfs.seal_segment(keys, FILE_ID, S, 0, False, plaintext)
    assert first[: sfs.IV_LEN] != second[: sfs.IV_LEN]
    assert first[sfs.IV_LEN : -sfs.TAG_LEN] != second[sfs.IV_LEN : -sfs.TAG_LEN]
    assert first != second
    kek = sfs.derive_kek(MASTER_KEY)
    assert sfs.wrap_file_key(kek, 1, FILE_ID, FILE_KEY) != sfs.wrap_file_key(kek, 1, FILE_ID, FILE_KEY)


def test_two_files_get_different_ids_and_keys() -> None:
    ids = {sfs.new_file_id() for _ in range(8)}
    file_keys_ = {sfs.new_file_key() for _ in range(8)}
    assert len(ids) == 8 and all(len(i) == sfs.FILE_ID_LEN for i in ids)
    assert len(file_keys_) == 8 and all(len(k) == sfs.KEY_LEN for k in file_keys_)
    a = sfs.derive_file_keys(sfs.new_file_key(), sfs.new_file_id())
    b = sfs.derive_file_keys(sfs.new_file_key(), sfs.new_file_id())
    assert len({a.enc, a.mac, b.enc, b.mac}) == 4
    # the same file key under another file id still gives other keys (the id is the salt)
    assert sfs.derive_file_keys(FILE_KEY, FILE_ID).enc != sfs.derive_file_keys(FILE_KEY, bytes(16)).enc


def test_key_pair_repr_hides_key_material() -> None:
    keys = file_keys()
    assert keys.enc.hex() not in repr(keys) and keys.mac.hex() not in repr(keys)
    assert str(keys.enc) not in repr(keys)


# --- cbc_decrypt: CBC decryption as one ECB pass and one XOR -----------------------------------

# NIST SP 800-38A, F.2.6 CBC-AES256.Decrypt
NIST_KEY = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
NIST_IV = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
NIST_PLAINTEXT = bytes.fromhex(
    "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710"
)
NIST_CIPHERTEXT = bytes.fromhex(
    "f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d"
    "39f23369a9d9bacfa530e26304231461b2eb05e2c39be9fcda6c19078c6a9d1b"
)


@pytest.mark.parametrize("blocks", [1, 2, 3, 4])
def test_cbc_decrypt_matches_nist_sp800_38a(blocks: int) -> None:
    iv_ct = NIST_IV + NIST_CIPHERTEXT[: blocks * 16]
    assert sfs.cbc_decrypt(NIST_KEY, iv_ct) == NIST_PLAINTEXT[: blocks * 16]
    assert sfs.cbc_decrypt(NIST_KEY, memoryview(bytearray(iv_ct))) == NIST_PLAINTEXT[: blocks * 16]


# Edge sizes around the smallest and the default segment; a large one first, so the smaller
# ones after it run in a reused (larger) scratch buffer.
CBC_SIZES = [2**20 + 16, 16, 32, S - 16, S, S + 16, 2**20 - 16, 2**20, 48]


def test_cbc_decrypt_equals_pycryptodome_cbc_on_random_data() -> None:
    for size in CBC_SIZES:
        key, iv, ct = os.urandom(32), os.urandom(16), os.urandom(size)
        expected = AES.new(key, AES.MODE_CBC, iv).decrypt(ct)
        assert sfs.cbc_decrypt(key, iv + ct) == expected, size
        # and the other way round: it inverts pycryptodome's CBC encryption
        plaintext = os.urandom(size)
        assert sfs.cbc_decrypt(key, iv + AES.new(key, AES.MODE_CBC, iv).encrypt(plaintext)) == plaintext


def test_cbc_decrypt_results_do_not_share_the_scratch_buffer() -> None:
    key, iv = os.urandom(32), os.urandom(16)
    a, b = os.urandom(S), os.urandom(S)
    first = sfs.cbc_decrypt(key, iv + a)
    second = sfs.cbc_decrypt(key, iv + b)
    assert first == AES.new(key, AES.MODE_CBC, iv).decrypt(a)  # unchanged by the second call
    assert second == AES.new(key, AES.MODE_CBC, iv).decrypt(b)


def test_cbc_decrypt_in_parallel_threads() -> None:
    key = os.urandom(32)
    jobs = [os.urandom(16 + 16 * n) for n in range(1, 400)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda blob: sfs.cbc_decrypt(key, blob), jobs))
    assert got == [AES.new(key, AES.MODE_CBC, b[:16]).decrypt(b[16:]) for b in jobs]


def scratch_buffers_in_a_new_thread(sizes: list[int]) -> list[tuple[int, object]]:
    """``_scratch_buffer`` called for each size in turn by one fresh thread (no buffer yet):
    the length of each view and the buffer under it."""

    def take(size: int) -> tuple[int, object]:
        view = sfs._scratch_buffer(size)
        try:
            return len(view), view.obj
        finally:
            view.release()  # as cbc_decrypt does

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: [take(size) for size in sizes]).result()


def test_cbc_decrypt_reuses_one_scratch_buffer_per_thread_grown_to_the_largest_segment() -> None:
    """The ECB pass writes into one buffer per thread, reused call after call and replaced
    only by a larger one: a fresh segment-sized buffer per call costs page faults (issue 17)."""
    taken = scratch_buffers_in_a_new_thread([S, S, 16, 2 * S, S])
    assert [length for length, _ in taken] == [S, S, 16, 2 * S, S]
    first, same, smaller, larger, after_larger = (buffer for _, buffer in taken)
    assert same is first and smaller is first
    assert larger is not first and len(larger) == 2 * S  # type: ignore[arg-type]
    assert after_larger is larger
    ((_, other_thread),) = scratch_buffers_in_a_new_thread([S])
    assert other_thread is not first and other_thread is not larger


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 31, 33])
def test_cbc_decrypt_refuses_anything_but_iv_and_whole_blocks(size: int) -> None:
    assert_integrity_error(sfs.cbc_decrypt, bytes(32), bytes(size))


# --- cbc_encrypt_into: segments are sealed by OpenSSL's CBC, byte for byte pycryptodome's --------


@pytest.mark.parametrize("blocks", [1, 2, 3, 4])
def test_cbc_encrypt_into_matches_nist_sp800_38a(blocks: int) -> None:
    # NIST SP 800-38A, F.2.5 CBC-AES256.Encrypt (the same key, IV and blocks as F.2.6 above)
    out = memoryview(bytearray(blocks * 16 + 15))
    sfs.cbc_encrypt_into(NIST_KEY, NIST_IV, NIST_PLAINTEXT[: blocks * 16], out)
    assert bytes(out[: blocks * 16]) == NIST_CIPHERTEXT[: blocks * 16]


def test_cbc_encrypt_into_equals_pycryptodome_cbc_on_random_data() -> None:
    for size in CBC_SIZES:
        key, iv, plaintext = os.urandom(32), os.urandom(16), os.urandom(size)
        room = bytearray(b"\xa5" * (size + sfs.TAG_LEN))
        sfs.cbc_encrypt_into(key, iv, memoryview(bytearray(plaintext)), memoryview(room))
        assert bytes(room[:size]) == AES.new(key, AES.MODE_CBC, iv).encrypt(plaintext), size
        assert room[size:] == b"\xa5" * sfs.TAG_LEN  # nothing written past the ciphertext
        assert sfs.cbc_decrypt(key, iv + bytes(room[:size])) == plaintext


@pytest.mark.parametrize("size", [1, 15, 17, 33])
def test_cbc_encrypt_into_refuses_a_partial_block(size: int) -> None:
    with pytest.raises(ValueError, match="^CBC encryption of a partial block$"):
        sfs.cbc_encrypt_into(bytes(32), bytes(16), bytes(size), memoryview(bytearray(size + 32)))


def random_cuts(data: bytes, rng: random.Random) -> list[sfs.Piece]:
    """``data`` as an upload's body may bring it: pieces of any length (empty ones too), some
    bytes, some bytearrays, some views of a larger buffer."""
    pieces: list[sfs.Piece] = []
    at = 0
    while at < len(data):
        end = min(len(data), at + rng.choice([0, 1, 7, 15, 16, 17, 100, 1000, S]))
        kind = rng.randrange(3)
        piece = data[at:end]
        pieces.append(
            piece if kind == 0 else bytearray(piece) if kind == 1 else memoryview(b"<" + piece + b">")[1:-1]
        )
        at = end
    return pieces


@pytest.mark.parametrize("final", [False, True])
def test_a_segment_sealed_from_pieces_is_the_segment_of_their_bytes(final: bool) -> None:
    """seal_pieces (an upload's chunks, never joined) gives what seal_segment gives for the
    joined bytes: the same CBC chain through every cut, the same tag, opened as one segment."""
    rng, keys = random.Random(17), file_keys()
    for length in [S] if not final else [0, 1, 15, 16, 17, 1000, S - 1, S]:
        data = os.urandom(length)
        for _ in range(20):
            pieces = random_cuts(data, rng)
            fed: list[memoryview] = []
            blob = bytes(sfs.seal_pieces(keys, FILE_ID, S, 5, final, pieces, fed.append))
            assert sfs.open_segment(keys, FILE_ID, S, 5, final, length, blob) == data
            assert b"".join(fed) == data  # the plaintext, in order, without the padding
            assert all(0 < len(step) <= sfs.SEAL_STEP for step in fed)
            iv, ct = blob[: sfs.IV_LEN], blob[sfs.IV_LEN : -sfs.TAG_LEN]
            padded = data + bytes([16 - length % 16]) * (16 - length % 16) if final else data
            assert ct == AES.new(keys.enc, AES.MODE_CBC, iv).encrypt(padded)


def test_the_plaintext_fed_beside_the_seal_is_never_the_padding() -> None:
    """A final segment of 15 bytes pads with the one byte 0x01, which may also be its last
    piece (bytes of one byte are shared objects): the plaintext fed is still all 15 bytes."""
    fed: list[bytes] = []
    pieces: list[sfs.Piece] = [data_of(14), bytes([1])]
    blob = bytes(
        sfs.seal_pieces(file_keys(), FILE_ID, S, 0, True, pieces, lambda step: fed.append(bytes(step)))
    )
    assert b"".join(fed) == data_of(14) + b"\x01"
    assert sfs.open_segment(file_keys(), FILE_ID, S, 0, True, 15, blob) == data_of(14) + b"\x01"


def test_sealing_from_pieces_checks_their_total_length() -> None:
    with pytest.raises(ValueError, match="^a non-final segment must hold exactly the segment size$"):
        sfs.seal_pieces(file_keys(), FILE_ID, S, 0, False, [data_of(S // 2), data_of(S // 2 - 16)])
    with pytest.raises(ValueError, match="^final segment longer than the segment size$"):
        sfs.seal_pieces(file_keys(), FILE_ID, S, 0, True, [data_of(S), b"x"])


STEP = sfs.SEAL_STEP
BIG_S = 3 * STEP + 48  # a segment of three and a bit seal steps (a block multiple, supported)


def cuts_across_steps(data: bytes) -> list[list[sfs.Piece]]:
    """``data`` split as an upload may bring it, every cut a seal step and a block may meet:
    whole, empty pieces around and inside, cuts one byte either side of each step and block
    boundary, pieces longer than a step, and memoryviews (of a larger buffer) and bytearrays."""
    n = len(data)
    splits: list[list[int]] = [
        [],
        [0, 0, n, n],
        [STEP - 1, STEP, STEP + 1, 2 * STEP - 16, 2 * STEP + 17],
        [1, 15, 16, 17, STEP + 33, 3 * STEP - 1],
        [STEP // 2 + 7, 2 * STEP + STEP // 2, 2 * STEP + STEP // 2],
        list(range(0, n, STEP + 5)),
    ]
    out = []
    for kind, split in enumerate(splits):
        bounds = [0, *(min(max(at, 0), n) for at in split), n]
        pieces: list[sfs.Piece] = []
        for i, (start, end) in enumerate(itertools.pairwise(bounds)):
            chunk = data[start:end]
            choice = (kind + i) % 3
            pieces.append(
                chunk
                if choice == 0
                else bytearray(chunk)
                if choice == 1
                else memoryview(b"<" + chunk + b">")[1:-1]
            )
        out.append(pieces)
    return out


@pytest.mark.parametrize(
    ("final", "length"),
    [(False, BIG_S)]
    + [(True, n) for n in [0, 1, 15, 16, STEP - 1, STEP, STEP + 1, 2 * STEP + 15, BIG_S - 1, BIG_S]],
)
def test_a_segment_sealed_from_pieces_across_seal_steps_is_the_segment_of_their_bytes(
    monkeypatch: pytest.MonkeyPatch, final: bool, length: int
) -> None:
    """seal_pieces over segments larger than SEAL_STEP, cut anyhow (empty pieces, cuts either
    side of a step or block boundary, memoryviews, bytearrays): byte for byte what seal_segment
    gives for the joined bytes under the same IV, and what the spec builds independently
    (pycryptodome's CBC of the padded bytes, the documented tag). The plaintext fed beside it
    is every byte once, in order, a step at most at a time."""
    keys, data, iv = file_keys(), os.urandom(length), bytes(range(200, 216))
    monkeypatch.setattr("vault.format.os.urandom", lambda n: iv[:n])
    pad = 16 - length % 16 if final else 0
    ct = AES.new(keys.enc, AES.MODE_CBC, iv).encrypt(data + bytes([pad]) * pad)
    by_spec = iv + ct + seg_tag_by_spec(keys.mac, BIG_S, final, FILE_ID, 9, iv, ct)
    assert bytes(sfs.seal_segment(keys, FILE_ID, BIG_S, 9, final, data)) == by_spec
    fed: list[bytes] = []
    for pieces in cuts_across_steps(data):
        fed.clear()
        blob = sfs.seal_pieces(keys, FILE_ID, BIG_S, 9, final, pieces, lambda step: fed.append(bytes(step)))
        assert bytes(blob) == by_spec, [len(piece) for piece in pieces]
        assert b"".join(fed) == data
        assert all(0 < len(step) <= STEP for step in fed)
    assert sfs.open_segment(keys, FILE_ID, BIG_S, 9, final, length, by_spec) == data


def test_a_segment_size_off_the_block_grid_is_refused_by_the_seal_not_sealed_short() -> None:
    """Callers check the segment size first (check_seg_size); if one did not, a non-final
    segment of S + 4 bytes leaves 4 bytes in OpenSSL's CBC: the seal's own after-check refuses
    it with its message instead of sealing 4 bytes short or failing inside OpenSSL."""
    data = data_of(S + 4)
    cuts: list[list[sfs.Piece]] = [[data], [data[:S], data[S:]], [data[:5], b"", memoryview(data)[5:]]]
    for pieces in cuts:
        with pytest.raises(ValueError, match="^CBC encryption wrote another length$"):
            sfs.seal_pieces(file_keys(), FILE_ID, S + 4, 0, False, pieces)


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, S - 1])
def test_sealed_segment_decrypts_with_pycryptodome_cbc(size: int) -> None:
    keys, plaintext = file_keys(), os.urandom(size)
    blob = bytes(sfs.seal_segment(keys, FILE_ID, S, 3, True, plaintext))
    iv, ct = blob[: sfs.IV_LEN], blob[sfs.IV_LEN : -sfs.TAG_LEN]
    pad = 16 - size % 16
    assert AES.new(keys.enc, AES.MODE_CBC, iv).decrypt(ct) == plaintext + bytes([pad]) * pad
    assert blob[-sfs.TAG_LEN :] == seg_tag_by_spec(keys.mac, S, True, FILE_ID, 3, iv, ct)


def test_segments_are_sealed_by_openssl_not_pycryptodome(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoPycryptodome:
        MODE_CBC, MODE_ECB = AES.MODE_CBC, AES.MODE_ECB

        def new(self, *args: Any) -> Any:
            raise AssertionError("pycryptodome's AES was used to seal a segment")

    monkeypatch.setattr(sfs, "AES", NoPycryptodome())
    for final, plaintext in ((False, data_of(S)), (True, data_of(S - 5))):
        blob = sfs.seal_segment(file_keys(), FILE_ID, S, 0, final, plaintext)
        monkeypatch.undo()
        assert sfs.open_segment(file_keys(), FILE_ID, S, 0, final, len(plaintext), bytes(blob)) == plaintext
        monkeypatch.setattr(sfs, "AES", NoPycryptodome())


# --- known-answer vectors: these freeze SFS v1 -------------------------------------------------


def test_derive_kek_known_answer() -> None:
    kek = sfs.derive_kek(MASTER_KEY)
    assert kek.enc.hex() == "2e67505a18644572879b05deb2308c9fd6905b966b69a8b19ab7ffe5e0e0a5bd"
    assert kek.mac.hex() == "a192addde5388693bdfdbd2f2fd0950ed193d5251fc4062955276c8d9cbe76a8"


def test_derive_file_keys_known_answer() -> None:
    keys = file_keys()
    assert keys.enc.hex() == "89944eb5b35c8c1a1c73e496078bf404c6c72e30f0889bc81f8c8e56eed75462"
    assert keys.mac.hex() == "4764d9a391b4a816ab0580d2f365469f5dd77289bce78b016a09fa032dbc6c9f"


def test_derive_user_key_known_answer() -> None:
    """K_user = HKDF-SHA256(ikm=MK, salt="", info="sfs/v1/user", 32) (docs/FORMAT.md)."""
    key = sfs.derive_user_key(MASTER_KEY)
    assert key.hex() == "811b8b0a20d5ee1de7d9875a1e296cbd9b15cb8d5316696cd6755b83c79df7ed"
    assert key == hkdf_reference(MASTER_KEY, b"", b"sfs/v1/user", 32)
    kek = sfs.derive_kek(MASTER_KEY)
    assert kek.enc + kek.mac == hkdf_reference(MASTER_KEY, b"", b"sfs/v1/kek", 64)
    assert key not in (kek.enc, kek.mac)


def test_wrap_file_key_known_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("vault.format.os.urandom", fixed_urandom(0xA0))
    wrapped = sfs.wrap_file_key(sfs.derive_kek(MASTER_KEY), KEY_ID, FILE_ID, FILE_KEY)
    assert wrapped.hex() == (
        "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"
        "5d3c873cbe5c9faac5d6e5c513b1c3c4a3368cc93a2e7770fe157baff144f37a"
        "ddfa07bae8be9721ab95006763930f2486484efcf0017272aa98495ad885267c"
    )


def test_sealed_non_final_segment_known_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("vault.format.os.urandom", fixed_urandom(0xA0))
    plaintext = bytes(i % 251 for i in range(S))
    blob = bytes(sfs.seal_segment(file_keys(), FILE_ID, S, 0, False, plaintext))
    assert len(blob) == 4144
    assert blob[: sfs.IV_LEN].hex() == "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"
    assert blob[-sfs.TAG_LEN :].hex() == "5cff491e5341df23be7b9f19704e97fb409475fe26e9c94934ffee24435f7174"
    assert hashlib.sha256(blob).hexdigest() == (
        "e2262aa1b11f6dba6e794015143e9c6a92a8f12220ed3ff2185d836f936b67db"
    )
    assert sfs.open_segment(file_keys(), FILE_ID, S, 0, False, S, blob) == plaintext


def test_sealed_final_segment_known_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("vault.format.os.urandom", fixed_urandom(0xA0))
    blob = bytes(sfs.seal_segment(file_keys(), FILE_ID, S, 1, True, b"final segment of the test file"))
    assert blob.hex() == (
        "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"
        "1ac2b84f7580701ca2e7c93249289efc6c973324330b82f8ebe59c8c0efc0b61"
        "a31f7c8c2814405e2f30a4fa450f0ab6465da15e79dc96bdac97399e6ddb6997"
    )


def test_open_final_segment_known_answer() -> None:
    blob = bytes.fromhex(
        "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"
        "1ac2b84f7580701ca2e7c93249289efc6c973324330b82f8ebe59c8c0efc0b61"
        "a31f7c8c2814405e2f30a4fa450f0ab6465da15e79dc96bdac97399e6ddb6997"
    )
    opened = sfs.open_segment(file_keys(), FILE_ID, S, 1, True, 30, blob)
    assert opened == b"final segment of the test file"


def test_header_tag_known_answer() -> None:
    h = sfs.Header(
        version=1,
        suite=1,
        seg_size=S,
        file_id=FILE_ID,
        owner=42,
        name="report.pdf",
        size=S + 30,
        seg_count=2,
        sha256=hashlib.sha256(b"x").digest(),
        created=1_800_000_000.123456,
        seg_root=sfs.segment_root(b"\x01" * 32 + b"\x02" * 32),
    )
    assert sfs.header_tag(file_keys(), h).hex() == (
        "5787f1f16c10dbe62bb1aac65644fa22a50317e46d2fd0cd8fe7991695cc49d1"
    )


def test_header_tag_matches_the_documented_layout() -> None:
    """header_tag = HMAC(K_mac, "hdr" || version || suite || seg_size || file_id || owner || P ||
    N || created (u64 microseconds) || sha256 || seg_root || len(name) u16 || name), built here
    independently of vault.format; seg_root = SHA-256("sfs/v1/segroot" || T_0 || ... || T_N-1)."""
    keys, h = file_keys(), header()
    tags = bytes(range(32)) + bytes(range(32, 64))
    h = dataclasses.replace(h, created=1_800_000_000.5, seg_root=sfs.segment_root(tags))
    assert h.seg_root == hashlib.sha256(b"sfs/v1/segroot" + tags).digest()
    name = h.name.encode()
    msg = (
        b"hdr"
        + struct.pack(">BBI", h.version, h.suite, h.seg_size)
        + h.file_id
        + struct.pack(">QQQQ", h.owner, h.size, h.seg_count, 1_800_000_000_500_000)
        + h.sha256
        + h.seg_root
        + struct.pack(">H", len(name))
        + name
    )
    assert sfs.header_tag(keys, h) == hmac.digest(keys.mac, msg, "sha256")


# --- resumable uploads: the sealed tail and the upload ticket ----------------------------------

ROOT = hashlib.sha256(b"some prefix").digest()
TAIL_OFFSETS = [0, 1, 15, 16, 17, S - 1, 2 * S, 2 * S + 1, 2 * S + S - 1]


def tail_mac_by_spec(keys: sfs.KeyPair, seg_size: int, offset: int, root: bytes, iv_ct: bytes) -> bytes:
    """T of a tail exactly as docs/FORMAT.md writes it, built independently of vault.format."""
    fields = b"tail" + struct.pack(">BBI", 1, 1, seg_size) + FILE_ID
    fields += struct.pack(">QQ", offset // seg_size, offset) + root + struct.pack(">Q", len(iv_ct) - 16)
    return hmac.digest(keys.mac, fields + iv_ct, "sha256")


@pytest.mark.parametrize("offset", TAIL_OFFSETS)
def test_a_sealed_tail_matches_the_documented_layout_and_opens_where_it_was_sealed(offset: int) -> None:
    keys, tail = file_keys(), data_of(offset % S)
    blob = sfs.seal_tail(keys, FILE_ID, S, offset, ROOT, tail)
    assert len(blob) == 16 + (len(tail) // 16 + 1) * 16 + 32
    iv, ct, tag = blob[:16], blob[16:-32], blob[-32:]
    assert tag == tail_mac_by_spec(keys, S, offset, ROOT, iv + ct)
    pad = 16 - len(tail) % 16
    assert AES.new(keys.enc, AES.MODE_CBC, iv).decrypt(ct) == tail + bytes([pad]) * pad
    assert sfs.open_tail(keys, FILE_ID, S, offset, ROOT, blob) == tail


@pytest.mark.parametrize("offset", [1, 17, S - 1, 2 * S + 17])
def test_a_tail_opens_nowhere_else(offset: int) -> None:
    keys, tail = file_keys(), data_of(offset % S)
    blob = sfs.seal_tail(keys, FILE_ID, S, offset, ROOT, tail)
    elsewhere: list[tuple[sfs.KeyPair, bytes, int, int, bytes]] = [
        (sfs.derive_file_keys(FILE_KEY, bytes(16)), FILE_ID, S, offset, ROOT),  # other keys
        (keys, bytes(16), S, offset, ROOT),  # another file
        (keys, FILE_ID, S, offset + S, ROOT),  # the same tail one segment on
        (keys, FILE_ID, 2 * S, offset, ROOT),  # another segment size
        (keys, FILE_ID, S, offset, hashlib.sha256(b"other").digest()),  # other full segments
        (keys, FILE_ID, S, offset, ROOT[:-1]),  # a malformed root
        (keys, FILE_ID[:-1], S, offset, ROOT),  # a malformed file id
    ]
    for args in elsewhere:
        with pytest.raises(IntegrityError):
            sfs.open_tail(*args, blob)
    for bit in range(len(blob) * 8):
        with pytest.raises(IntegrityError):
            sfs.open_tail(keys, FILE_ID, S, offset, ROOT, flip(blob, bit // 8, bit % 8))
    for cut in (blob[:-1], blob + b"\x00", blob[:-16]):
        with pytest.raises(IntegrityError):
            sfs.open_tail(keys, FILE_ID, S, offset, ROOT, cut)


@pytest.mark.parametrize("field", ["prefix_root", "file_id"])
def test_a_tail_root_or_file_id_one_byte_short_is_not_zero_padded_into_the_same_tag(field: str) -> None:
    keys, offset, tail = file_keys(), 17, data_of(17)
    root, file_id = ENDS_IN_ZERO["seg_root"], ENDS_IN_ZERO["file_id"]
    blob = sfs.seal_tail(keys, file_id, S, offset, root, tail)
    assert sfs.open_tail(keys, file_id, S, offset, root, blob) == tail
    if field == "prefix_root":
        root = root[:-1]
    else:
        file_id = file_id[:-1]
    assert_integrity_error(sfs.open_tail, keys, file_id, S, offset, root, blob)
    assert_integrity_error(sfs.seal_tail, keys, file_id, S, offset, root, tail)


def test_a_validly_tagged_tail_with_a_wrong_pad_length_is_refused() -> None:
    """Padding is checked after the MAC too: a sealer bug cannot hand back the wrong bytes."""
    keys, offset = file_keys(), 17
    iv = bytes(16)
    ct = AES.new(keys.enc, AES.MODE_CBC, iv).encrypt(data_of(17) + bytes([14]) * 15)  # pad says 14
    blob = iv + ct + tail_mac_by_spec(keys, S, offset, ROOT, iv + ct)
    with pytest.raises(IntegrityError):
        sfs.open_tail(keys, FILE_ID, S, offset, ROOT, blob)


@pytest.mark.parametrize(("offset", "length"), [(17, 16), (17, 18), (S + 1, S + 1), (S, 1), (0, 1)])
def test_seal_tail_refuses_anything_but_the_bytes_since_the_last_full_segment(
    offset: int, length: int
) -> None:
    with pytest.raises(
        ValueError, match="^the tail must hold the bytes of the current segment up to the offset$"
    ):
        sfs.seal_tail(file_keys(), FILE_ID, S, offset, ROOT, data_of(length))


def ticket(**changes: Any) -> sfs.UploadTicket:
    fields: dict[str, Any] = {
        "seg_size": S,
        "file_id": FILE_ID,
        "owner": 42,
        "length": 3 * S + 5,
        "created": 1_800_000_000.25,
        "upload_id": "3f1c0d2e9a8b7c6d",
        "name": "report.pdf",
    }
    return sfs.UploadTicket(**{**fields, **changes})


def test_upload_tag_matches_the_documented_layout() -> None:
    keys, t = file_keys(), ticket()
    upload_id, name = t.upload_id.encode(), t.name.encode()
    msg = b"tus" + struct.pack(">BBI", 1, 1, S) + FILE_ID
    msg += struct.pack(">QQQBH", 42, 3 * S + 5, 1_800_000_000_250_000, len(upload_id), len(name))
    assert sfs.upload_tag(keys, t) == hmac.digest(keys.mac, msg + upload_id + name, "sha256")
    sfs.verify_upload(keys, t, sfs.upload_tag(keys, t))


@pytest.mark.parametrize(
    "changes",
    [
        {"seg_size": 2 * S},
        {"file_id": bytes(16)},
        {"owner": 43},
        {"length": 3 * S + 6},
        {"created": 1_800_000_000.250001},
        {"upload_id": "3f1c0d2e9a8b7c6e"},
        {"name": "report.pdf.exe"},
    ],
    ids=lambda changes: next(iter(changes)),
)
def test_an_upload_ticket_with_any_field_changed_fails_its_tag(changes: dict[str, Any]) -> None:
    keys = file_keys()
    tag = sfs.upload_tag(keys, ticket())
    with pytest.raises(IntegrityError):
        sfs.verify_upload(keys, ticket(**changes), tag)
    with pytest.raises(IntegrityError):
        sfs.verify_upload(sfs.derive_file_keys(FILE_KEY, bytes(16)), ticket(), tag)
    for bit in range(len(tag) * 8):
        with pytest.raises(IntegrityError):
            sfs.verify_upload(keys, ticket(), flip(tag, bit // 8, bit % 8))


@pytest.mark.parametrize(
    "changes",
    [
        {"seg_size": S + 1},  # not a supported segment size
        {"seg_size": sfs.MAX_SEG_SIZE * 2},
        {"file_id": bytes(15)},
        {"name": "x" * 256},
        {"upload_id": "u" * 256},
        {"owner": -1},
        {"owner": 2**64},
        {"length": 2**64},
        {"created": -1.0},
        {"upload_id": "3f1c0d2e9a8b7c6\u00e9"},  # not ASCII: a tampered column
    ],
    # plain ids: pytest's escaped id of a bytes value is not found again when passed back on
    # the command line, as mutmut does (the whole mutation run stopped on it)
    ids=[
        "seg_size_not_supported",
        "seg_size_over_max",
        "file_id_15_bytes",
        "name_256_bytes",
        "upload_id_256_chars",
        "owner_negative",
        "owner_2_64",
        "length_2_64",
        "created_negative",
        "upload_id_not_ascii",
    ],
)
def test_an_upload_ticket_outside_the_format_is_refused_not_crashed_on(changes: dict[str, Any]) -> None:
    keys = file_keys()
    with pytest.raises(IntegrityError):
        sfs.verify_upload(keys, ticket(**changes), bytes(32))


def test_a_key_pair_never_shows_its_keys() -> None:
    keys = file_keys()
    assert repr(keys) == str(keys) == "KeyPair(<secret>)"
    assert keys.enc.hex() not in repr(keys) and keys.mac.hex() not in repr(keys)


@pytest.mark.parametrize(
    "changes",
    [
        {"file_id": ENDS_IN_ZERO["file_id"][:-1]},
        {"name": "\u00e9" * 127 + "xx"},
        {"upload_id": "u" * 256},
    ],
    ids=["file_id_one_byte_short", "name_256_bytes", "upload_id_256_chars"],
)
def test_upload_tag_refuses_a_field_outside_the_format_instead_of_packing_it(changes: dict[str, Any]) -> None:
    """A short file id would be zero-padded by struct into another ticket's tag; a name over
    MAX_NAME_BYTES or an id over 255 has no place in the layout."""
    keys = file_keys()
    assert_integrity_error(sfs.upload_tag, keys, ticket(**changes))
    assert_integrity_error(sfs.verify_upload, keys, ticket(**changes), sfs.upload_tag(keys, ticket()))


def test_upload_tag_takes_every_field_at_its_largest() -> None:
    keys = file_keys()
    for t in (
        ticket(file_id=ENDS_IN_ZERO["file_id"]),
        ticket(name="\u00e9" * 127 + "x"),  # MAX_NAME_BYTES of UTF-8
        ticket(upload_id="u" * 255),
    ):
        sfs.verify_upload(keys, t, sfs.upload_tag(keys, t))
