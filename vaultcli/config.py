"""Where the client keeps its session and its transfer state, and the lock that guards them.

``credentials.json`` (config directory): server URL, CA file, user name, refresh token and the
current access token; ``transfers.json`` (state directory): the tus URL of every unfinished
upload, by file fingerprint, and the ETag every partial download started with. Both are
written atomically (temporary file + rename) with mode 0600 in a 0700 directory, and every
read-modify-write holds an exclusive ``flock``, so two ``vault`` commands at once never
interleave and never both spend one refresh token. ``VAULT_CONFIG_DIR`` puts both files in one
directory of your choice (scripts, tests).
"""

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

CREDENTIALS = "credentials.json"
TRANSFERS = "transfers.json"
LOCK = ".lock"


@dataclass
class Credentials:
    """A logged-in session. ``refreshing`` is set while a refresh request is out: if the
    process dies before the answer is saved, the refresh token may already be spent, and
    sending it again would make the server revoke the session."""

    url: str
    username: str
    refresh_token: str
    cacert: str | None = None
    access_token: str | None = None
    access_expires: float = 0.0
    refreshing: bool = False


@dataclass
class Transfers:
    uploads: dict[str, dict[str, Any]] = field(default_factory=dict)
    downloads: dict[str, dict[str, Any]] = field(default_factory=dict)


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


class Store:
    """The two files and their lock."""

    def __init__(self, config_dir: Path | None = None, state_dir: Path | None = None) -> None:
        override = os.environ.get("VAULT_CONFIG_DIR")
        self.config_dir = config_dir or Path(override or platformdirs.user_config_dir("vault"))
        self.state_dir = state_dir or Path(override or platformdirs.user_state_dir("vault"))

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        fd = os.open(_private_dir(self.config_dir) / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        with os.fdopen(fd, "r+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # unreadable or corrupt: treated as absent
        return data if isinstance(data, dict) else None

    def _write(self, path: Path, data: dict[str, Any], durable: bool = True) -> None:
        """Atomically; ``durable`` also waits for the disk (the session's tokens: a rotated
        refresh token lost in a crash means logging in again). Transfer state does not wait:
        an fsync there can stall behind the gigabytes a download just wrote, and losing it
        only means starting that transfer again."""
        _private_dir(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as out:  # mkstemp creates it 0600
                json.dump(data, out, indent=1)
                out.flush()
                if durable:
                    os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def load_credentials(self) -> Credentials | None:
        data = self._read(self.config_dir / CREDENTIALS)
        if data is None:
            return None
        try:
            return Credentials(**data)
        except TypeError:
            return None

    def save_credentials(self, creds: Credentials) -> None:
        self._write(self.config_dir / CREDENTIALS, asdict(creds))

    def forget_credentials(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.config_dir / CREDENTIALS).unlink()

    def load_transfers(self) -> Transfers:
        data = self._read(self.state_dir / TRANSFERS) or {}
        return Transfers(uploads=dict(data.get("uploads", {})), downloads=dict(data.get("downloads", {})))

    @contextlib.contextmanager
    def transfers(self) -> Iterator[Transfers]:
        """Read, let the caller change, write back, under the lock."""
        with self.locked():
            state = self.load_transfers()
            yield state
            self._write(self.state_dir / TRANSFERS, asdict(state), durable=False)
