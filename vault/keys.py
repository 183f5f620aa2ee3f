"""Secrets: the master keyring and the JWT signing secret.

Both come from the environment if set (``VAULT_MASTER_KEY``: base64 of 32 bytes, key id 1;
``VAULT_JWT_SECRET``: base64 of at least 32 bytes), otherwise from files in the data directory,
generated on first run with mode 0600. They are never stored in the database or in config.yaml.
The keyring file holds ``{"primary": id, "keys": {"id": "<base64>"}}`` so that keys can be
rotated: files wrapped under an older key id still open while that key is in the ring.
"""

import base64
import binascii
import hmac
import json
import logging
import os
import shlex
import struct
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from vault.errors import ConfigError, IntegrityError
from vault.format import KEY_LEN, KeyPair, derive_kek, derive_user_key

log = logging.getLogger(__name__)

KEYRING_FILE = "master.keys"
JWT_SECRET_FILE = "jwt.secret"  # noqa: S105 (a file name)
MIN_JWT_SECRET_LEN = 32
COMMAND_TIMEOUT = 30


@dataclass(frozen=True, repr=False)
class Keyring:
    """Master keys by id, one of them primary. ``repr`` never shows key material."""

    primary: int
    keks: Mapping[int, KeyPair] = field(default_factory=dict)
    user_keys: Mapping[int, bytes] = field(default_factory=dict)

    @classmethod
    def of(cls, primary: int, master_keys: Mapping[int, bytes]) -> "Keyring":
        return cls(
            primary,
            {kid: derive_kek(key) for kid, key in master_keys.items()},
            {kid: derive_user_key(key) for kid, key in master_keys.items()},
        )

    def __repr__(self) -> str:
        return f"Keyring(primary={self.primary}, ids={sorted(self.keks)})"

    def kek(self, key_id: int) -> KeyPair | None:
        return self.keks.get(key_id)


def _b64(value: str, what: str, min_len: int, max_len: int) -> bytes:
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{what}: not valid base64") from None
    if not min_len <= len(raw) <= max_len:
        raise ConfigError(f"{what}: must decode to {min_len}..{max_len} bytes, got {len(raw)}")
    return raw


def _write_private(path: Path, text: str) -> None:
    """Create a file readable only by its owner; never overwrite an existing one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())  # on disk before anything (a database row) depends on it
    sync_directory(path.parent)


def sync_directory(path: Path) -> None:
    """Make a file's creation or renaming in ``path`` survive a power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _key_from_command(command: str) -> str:
    """Run the configured command (a KMS client, a password manager) and take its output."""
    try:
        done = subprocess.run(  # noqa: S603  # nosec B603: the operator's own configured command
            shlex.split(command), capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"VAULT_MASTER_KEY_COMMAND failed to run: {exc}") from None
    if done.returncode != 0:
        raise ConfigError(f"VAULT_MASTER_KEY_COMMAND exited {done.returncode}")
    return done.stdout.strip()


def load_keyring(data_dir: Path, environ: Mapping[str, str]) -> Keyring:
    """The master keys, from (first found) VAULT_MASTER_KEY, the output of
    VAULT_MASTER_KEY_COMMAND (each: base64 of 32 bytes, key id 1), or the keyring file in the
    data directory, generated on first run."""
    env_key = environ.get("VAULT_MASTER_KEY")
    if env_key:
        return Keyring.of(1, {1: _b64(env_key, "VAULT_MASTER_KEY", KEY_LEN, KEY_LEN)})
    command = environ.get("VAULT_MASTER_KEY_COMMAND")
    if command:
        return Keyring.of(
            1, {1: _b64(_key_from_command(command), "VAULT_MASTER_KEY_COMMAND", KEY_LEN, KEY_LEN)}
        )
    path = data_dir / KEYRING_FILE
    if not path.exists():
        encoded = base64.b64encode(os.urandom(KEY_LEN)).decode()
        _write_private(path, json.dumps({"primary": 1, "keys": {"1": encoded}}, indent=2) + "\n")
        log.info("generated a new master key in %s (back it up: without it no file opens)", path)
    primary, keys = read_keyring_file(path)
    return Keyring.of(primary, keys)


def read_keyring_file(path: Path) -> tuple[int, dict[int, bytes]]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        keys = {int(k): v for k, v in doc["keys"].items()}
        primary = int(doc["primary"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError(f"keyring {path}: unreadable or not of the documented shape") from None
    if primary not in keys:
        raise ConfigError(f"keyring {path}: primary key id {primary} is not in the ring")
    return primary, {kid: _b64(v, f"keyring {path} key {kid}", KEY_LEN, KEY_LEN) for kid, v in keys.items()}


def write_keyring_file(path: Path, primary: int, keys: Mapping[int, bytes]) -> None:
    """Replace the keyring file atomically (a new file, 0600, renamed over the old one)."""
    doc = {
        "primary": primary,
        "keys": {str(k): base64.b64encode(v).decode() for k, v in sorted(keys.items())},
    }
    temporary = path.with_suffix(".new")
    temporary.unlink(missing_ok=True)
    _write_private(temporary, json.dumps(doc, indent=2) + "\n")
    os.replace(temporary, path)
    sync_directory(path.parent)  # the rename too, before the database uses the new key


def add_primary_key(data_dir: Path) -> int:
    """Add a fresh master key to the keyring file and make it primary; returns its id."""
    path = data_dir / KEYRING_FILE
    _, keys = read_keyring_file(path)
    new_id = max(keys) + 1
    write_keyring_file(path, new_id, {**keys, new_id: os.urandom(KEY_LEN)})
    return new_id


def remove_key(data_dir: Path, key_id: int) -> None:
    path = data_dir / KEYRING_FILE
    primary, keys = read_keyring_file(path)
    if key_id == primary:
        raise ConfigError(f"key {key_id} is the primary key: rotate first")
    if key_id not in keys:
        raise ConfigError(f"key {key_id} is not in the keyring")
    write_keyring_file(path, primary, {k: v for k, v in keys.items() if k != key_id})


def load_jwt_secret(data_dir: Path, environ: Mapping[str, str]) -> bytes:
    env_secret = environ.get("VAULT_JWT_SECRET")
    if env_secret:
        return _b64(env_secret, "VAULT_JWT_SECRET", MIN_JWT_SECRET_LEN, 1024)
    path = data_dir / JWT_SECRET_FILE
    if not path.exists():
        _write_private(path, base64.b64encode(os.urandom(MIN_JWT_SECRET_LEN)).decode() + "\n")
        log.info("generated a new JWT signing secret in %s", path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"JWT secret {path}: {exc.strerror}") from None
    return _b64(text, f"JWT secret {path}", MIN_JWT_SECRET_LEN, 1024)


def _field(value: bytes | str | int | float | None) -> bytes:
    """Self-delimiting encoding of one MAC field (type byte, then fixed or length-prefixed)."""
    if value is None:
        return b"N"
    if isinstance(value, float):
        return b"F" + struct.pack(">Q", round(value * 1_000_000))
    if isinstance(value, int):
        return b"I" + struct.pack(">Q", value)
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return b"B" + struct.pack(">I", len(raw)) + raw


def row_tag(keyring: Keyring, key_id: int, label: bytes, *fields: bytes | str | int | float | None) -> bytes:
    """HMAC over a database row (account, grant, link) under the master-derived row key
    ``key_id``; each field self-delimiting, after a label that names the kind of row."""
    key = keyring.user_keys.get(key_id)
    if key is None:
        raise IntegrityError()
    try:
        message = b"".join(_field(f) for f in fields)
    except (struct.error, ValueError, OverflowError):
        raise IntegrityError() from None
    return hmac.digest(key, label + message, "sha256")
