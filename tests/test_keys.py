"""vault/keys.py in-process: where the master keys come from (environment, a command, the
keyring file generated on first run), the keyring file's shape and its rotation (add, remove),
and the row-tag field encoding. The server tests reach these only in another process."""

import base64
import hmac
import json
import logging
import shlex
import stat
import struct
import sys
from pathlib import Path

import pytest

from vault import keys
from vault.errors import ConfigError, IntegrityError
from vault.format import derive_kek, derive_user_key

KEY = bytes(range(32))
KEY_B64 = base64.b64encode(KEY).decode()


def printing(text: str, status: int = 0) -> str:
    """A command line printing ``text`` and exiting with ``status`` (a stand-in KMS client)."""
    code = f"import sys; sys.stdout.write({text!r}); sys.exit({status})"
    return shlex.join([sys.executable, "-c", code])


def assert_keyring(ring: keys.Keyring, primary: int, master: dict[int, bytes]) -> None:
    assert ring.primary == primary
    assert dict(ring.user_keys) == {kid: derive_user_key(key) for kid, key in master.items()}
    assert {kid: (p.enc, p.mac) for kid, p in ring.keks.items()} == {
        kid: (derive_kek(key).enc, derive_kek(key).mac) for kid, key in master.items()
    }


def test_the_environment_key_comes_first(tmp_path: Path) -> None:
    environ = {"VAULT_MASTER_KEY": f" {KEY_B64}\n", "VAULT_MASTER_KEY_COMMAND": printing("x")}
    assert_keyring(keys.load_keyring(tmp_path, environ), 1, {1: KEY})
    assert not (tmp_path / keys.KEYRING_FILE).exists()


def test_the_key_command_comes_before_the_file(tmp_path: Path) -> None:
    keys.load_keyring(tmp_path, {})  # a keyring file with another key
    ring = keys.load_keyring(tmp_path, {"VAULT_MASTER_KEY_COMMAND": printing(KEY_B64 + "\n")})
    assert_keyring(ring, 1, {1: KEY})


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"VAULT_MASTER_KEY": "not base64!"}, "VAULT_MASTER_KEY: not valid base64"),
        # a stray character inside a valid key: refused, not skipped over
        ({"VAULT_MASTER_KEY": KEY_B64[:20] + "*" + KEY_B64[20:]}, "VAULT_MASTER_KEY: not valid base64"),
        ({"VAULT_MASTER_KEY": KEY_B64[:20] + "\n" + KEY_B64[20:]}, "VAULT_MASTER_KEY: not valid base64"),
        (
            {"VAULT_MASTER_KEY": base64.b64encode(KEY[:31]).decode()},
            "VAULT_MASTER_KEY: must decode to 32..32 bytes, got 31",
        ),
        (
            {"VAULT_MASTER_KEY_COMMAND": printing(base64.b64encode(KEY + b"x").decode())},
            "VAULT_MASTER_KEY_COMMAND: must decode to 32..32 bytes, got 33",
        ),
        ({"VAULT_MASTER_KEY_COMMAND": printing(KEY_B64, 3)}, "VAULT_MASTER_KEY_COMMAND exited 3"),
    ],
)
def test_a_bad_key_from_the_environment_or_command_is_refused(
    tmp_path: Path, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        keys.load_keyring(tmp_path, environ)
    assert str(info.value) == message
    assert not (tmp_path / keys.KEYRING_FILE).exists()


def test_a_key_command_that_never_ends_is_stopped_and_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KMS client that hangs must not hang the server's start: it is killed after
    COMMAND_TIMEOUT (30 s; a fraction of a second here) and the start refused."""
    monkeypatch.setattr(keys, "COMMAND_TIMEOUT", 0.2)
    hanging = shlex.join([sys.executable, "-c", "import signal; signal.pause()"])  # waits for a signal
    with pytest.raises(ConfigError) as info:
        keys.load_keyring(tmp_path, {"VAULT_MASTER_KEY_COMMAND": hanging})
    assert str(info.value).startswith("VAULT_MASTER_KEY_COMMAND failed to run: ")
    assert "timed out after 0.2 seconds" in str(info.value)


def test_a_key_command_that_cannot_run_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-kms-client"
    with pytest.raises(ConfigError) as info:
        keys.load_keyring(tmp_path, {"VAULT_MASTER_KEY_COMMAND": str(missing)})
    assert str(info.value).startswith("VAULT_MASTER_KEY_COMMAND failed to run: ")
    assert str(missing) in str(info.value)


def test_the_keyring_file_is_generated_once_private_and_documented(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="vault.keys"):
        first = keys.load_keyring(tmp_path, {})
    path = tmp_path / keys.KEYRING_FILE
    assert [r.getMessage() for r in caplog.records] == [
        f"generated a new master key in {path} (back it up: without it no file opens)"
    ]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text(encoding="utf-8")
    doc = json.loads(text)
    assert set(doc) == {"primary", "keys"} and doc["primary"] == 1 and list(doc["keys"]) == ["1"]
    assert text == json.dumps(doc, indent=2) + "\n"  # one field a line, for the operator who reads it
    master = base64.b64decode(doc["keys"]["1"], validate=True)
    assert len(master) == 32
    assert_keyring(first, 1, {1: master})
    assert_keyring(keys.load_keyring(tmp_path, {}), 1, {1: master})  # read back, not regenerated
    assert keys.read_keyring_file(path) == (1, {1: master})


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("not json", ": unreadable or not of the documented shape"),
        ("[]", ": unreadable or not of the documented shape"),
        (json.dumps({"keys": {"1": KEY_B64}}), ": unreadable or not of the documented shape"),
        ('{"primary": 1}', ": unreadable or not of the documented shape"),
        (json.dumps({"primary": 1, "keys": {"one": KEY_B64}}), ": unreadable or not of the documented shape"),
        ('{"primary": 1, "keys": []}', ": unreadable or not of the documented shape"),
        (json.dumps({"primary": 2, "keys": {"1": KEY_B64}}), ": primary key id 2 is not in the ring"),
        (
            json.dumps({"primary": 1, "keys": {"1": KEY_B64[:-4]}}),
            " key 1: must decode to 32..32 bytes, got 30",
        ),
    ],
)
def test_a_keyring_file_not_of_the_documented_shape_is_refused(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / keys.KEYRING_FILE
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        keys.load_keyring(tmp_path, {})
    assert str(info.value) == f"keyring {path}{problem}"


def test_a_missing_keyring_file_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / keys.KEYRING_FILE
    with pytest.raises(ConfigError, match="unreadable"):
        keys.read_keyring_file(path)


def test_rotation_adds_a_primary_key_and_removes_only_a_retired_one(tmp_path: Path) -> None:
    path = tmp_path / keys.KEYRING_FILE
    keys.write_keyring_file(path, 1, {1: KEY})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys.read_keyring_file(path) == (1, {1: KEY})
    assert keys.add_primary_key(tmp_path) == 2
    primary, ring = keys.read_keyring_file(path)
    assert (primary, sorted(ring), ring[1]) == (2, [1, 2], KEY)
    assert len(ring[2]) == 32 and ring[2] != KEY
    assert keys.add_primary_key(tmp_path) == 3  # the next id after the largest
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not path.with_suffix(".new").exists()
    with pytest.raises(ConfigError) as info:
        keys.remove_key(tmp_path, 3)
    assert str(info.value) == "key 3 is the primary key: rotate first"
    with pytest.raises(ConfigError) as info:
        keys.remove_key(tmp_path, 7)
    assert str(info.value) == "key 7 is not in the keyring"
    keys.remove_key(tmp_path, 1)
    primary, left = keys.read_keyring_file(path)
    assert (primary, sorted(left), left[2]) == (3, [2, 3], ring[2])
    text = path.read_text(encoding="utf-8")
    doc = json.loads(text)
    assert doc == {"primary": 3, "keys": {str(k): base64.b64encode(v).decode() for k, v in left.items()}}
    assert text == json.dumps(doc, indent=2) + "\n"


def test_a_leftover_temporary_keyring_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / keys.KEYRING_FILE
    path.with_suffix(".new").write_text("half-written", encoding="utf-8")
    keys.write_keyring_file(path, 4, {4: KEY})
    assert keys.read_keyring_file(path) == (4, {4: KEY})
    assert sorted(p.name for p in tmp_path.iterdir()) == [keys.KEYRING_FILE]  # the leftover is gone


def test_the_keyring_repr_shows_ids_only() -> None:
    ring = keys.Keyring.of(2, {1: KEY, 2: bytes(32)})
    assert repr(ring) == "Keyring(primary=2, ids=[1, 2])"


def test_a_row_tag_encodes_each_field_by_type_and_length() -> None:
    ring = keys.Keyring.of(1, {1: KEY})
    fields = (None, 1.5, 7, "é", b"\x00")
    message = (
        b"N"
        + b"F" + struct.pack(">Q", 1_500_000)
        + b"I" + struct.pack(">Q", 7)
        + b"B" + struct.pack(">I", 2) + "é".encode()
        + b"B" + struct.pack(">I", 1) + b"\x00"
    )  # fmt: skip
    expected = hmac.digest(derive_user_key(KEY), b"row" + message, "sha256")
    assert keys.row_tag(ring, 1, b"row", *fields) == expected
    distinct = {keys.row_tag(ring, 1, b"row", f) for f in (None, 0, 0.0, "", b"", "0", 1, True)}
    assert len(distinct) == 6  # "" and b"" are the same bytes, True is the int 1
    assert keys.row_tag(ring, 1, b"row", "ab", "c") != keys.row_tag(ring, 1, b"row", "a", "bc")


@pytest.mark.parametrize("bad", [-1, 2**64, -1.5, float("inf"), float("nan")])
def test_a_field_that_cannot_be_encoded_is_an_integrity_error(bad: float) -> None:
    with pytest.raises(IntegrityError):
        keys.row_tag(keys.Keyring.of(1, {1: KEY}), 1, b"row", bad)


def test_a_row_tag_under_a_key_not_in_the_ring_is_an_integrity_error() -> None:
    with pytest.raises(IntegrityError):
        keys.row_tag(keys.Keyring.of(1, {1: KEY}), 2, b"row", 1)


# --- the JWT signing secret ---------------------------------------------------------------------


def test_the_jwt_secret_from_the_environment_comes_first(tmp_path: Path) -> None:
    for secret in (bytes(range(32)), bytes(range(256)) * 4):  # the shortest and the longest taken
        environ = {"VAULT_JWT_SECRET": f" {base64.b64encode(secret).decode()}\n"}
        assert keys.load_jwt_secret(tmp_path, environ) == secret
    assert not (tmp_path / keys.JWT_SECRET_FILE).exists()


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("not base64!", "VAULT_JWT_SECRET: not valid base64"),
        (base64.b64encode(bytes(31)).decode(), "VAULT_JWT_SECRET: must decode to 32..1024 bytes, got 31"),
        (base64.b64encode(bytes(1025)).decode(), "VAULT_JWT_SECRET: must decode to 32..1024 bytes, got 1025"),
    ],
)
def test_a_bad_jwt_secret_from_the_environment_is_refused(tmp_path: Path, secret: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        keys.load_jwt_secret(tmp_path, {"VAULT_JWT_SECRET": secret})
    assert str(info.value) == message
    assert not (tmp_path / keys.JWT_SECRET_FILE).exists()


def test_the_jwt_secret_file_is_generated_once_private_and_read_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "srv" / "data"  # created on first run, parents too
    with caplog.at_level(logging.INFO, logger="vault.keys"):
        first = keys.load_jwt_secret(data_dir, {"VAULT_JWT_SECRET": ""})  # empty: not set
    path = data_dir / keys.JWT_SECRET_FILE
    assert [r.getMessage() for r in caplog.records] == [f"generated a new JWT signing secret in {path}"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n") and base64.b64decode(text, validate=False) == first
    assert len(first) == keys.MIN_JWT_SECRET_LEN
    assert keys.load_jwt_secret(data_dir, {}) == first  # read back, not regenerated
    assert keys.load_jwt_secret(tmp_path / "other", {}) != first


def test_sync_directory_opens_only_a_directory(tmp_path: Path) -> None:
    """It exists to make a file's creation or rename durable, so it fsyncs the directory
    itself, opened as one (O_DIRECTORY): a file in its place is an error, not synced instead."""
    keys.sync_directory(tmp_path)
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(NotADirectoryError):
        keys.sync_directory(tmp_path / "file")


def test_a_jwt_secret_file_that_is_unreadable_or_short_is_refused(tmp_path: Path) -> None:
    path = tmp_path / keys.JWT_SECRET_FILE
    path.mkdir()  # exists, but cannot be read as a file
    with pytest.raises(ConfigError) as info:
        keys.load_jwt_secret(tmp_path, {})
    assert str(info.value) == f"JWT secret {path}: Is a directory"
    path.rmdir()
    path.write_text(base64.b64encode(bytes(31)).decode(), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        keys.load_jwt_secret(tmp_path, {})
    assert str(info.value) == f"JWT secret {path}: must decode to 32..1024 bytes, got 31"
