"""Settings: one frozen dataclass. Sources, lowest to highest: field defaults, config.yaml,
``VAULT_<FIELD>`` environment variables, command-line flags. Relative paths are resolved
against the directory of the config file. Validation raises ConfigError naming the key.
"""

import dataclasses
import decimal
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vault.errors import ConfigError
from vault.format import DEFAULT_SEG_SIZE, check_seg_size
from vault.throttle import parse_networks
from vault.tls import subject_names

GiB = 1024**3
# A full disk must still hold the copy of SQLite's WAL (up to 16 MiB) into the database that a
# checkpoint makes, and a few pages more.
MIN_DISK_RESERVE = 20 * 1024 * 1024
_SIZE_UNITS = {"": 1, "b": 1}
for _power, _letter in enumerate("kmgt", 1):
    _SIZE_UNITS |= {_letter: 1024**_power, _letter + "ib": 1024**_power, _letter + "b": 1000**_power}
_SIZE_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", re.ASCII)


def parse_size(text: str) -> int:
    """A byte count: ``65536``, ``64K`` or ``64KiB`` (binary: K, M, G, T alone or with iB),
    ``100MB`` (decimal: kB, MB, GB, TB), ``1.5GiB``; ValueError otherwise."""
    match = _SIZE_RE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"not a size: {text!r} (use bytes, 64K, 500MiB, 100MB or 10G)")
    return int(decimal.Decimal(match.group(1)) * _SIZE_UNITS[unit])


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Settings:
    host: str = _setting("127.0.0.1", "Address to listen on.")
    port: int = _setting(5000, "TCP port for HTTPS (0 picks a free port and prints it).")
    data_dir: Path = _setting(Path("data"), "Directory for the database and generated secrets.")
    tls_cert: Path = _setting(
        Path("certs/cert.pem"), "PEM certificate; a self-signed one is generated if missing."
    )
    tls_key: Path = _setting(Path("certs/key.pem"), "PEM private key for tls_cert.")
    tls_names: str = _setting(
        "", "Extra comma-separated host names and IP addresses for the generated self-signed certificate."
    )
    max_file_size: int = _setting(64 * GiB, "Largest file accepted, in bytes (413 above it).")
    user_quota: int = _setting(
        0, "Bytes each user may store (0: no quota); `run.py admin set-limits` overrides per user."
    )
    max_json_size: int = _setting(64 * 1024, "Largest JSON request body, in bytes.")
    segment_size: int = _setting(
        DEFAULT_SEG_SIZE, "Plaintext bytes per encrypted segment for new files (docs/FORMAT.md)."
    )
    bcrypt_rounds: int = _setting(12, "bcrypt cost factor for new password hashes (4-31).")
    token_ttl: int = _setting(900, "Lifetime of an access token (JWT), in seconds.")
    refresh_ttl: int = _setting(
        30 * 86400, "Lifetime of a refresh token, in seconds; each refresh issues a new one with a full term."
    )
    jwt_issuer: str = _setting("vault", "JWT `iss` claim issued and required.")
    jwt_audience: str = _setting("vault", "JWT `aud` claim issued and required.")
    crypto_threads: int = _setting(2, "Threads that encrypt, decrypt and hash segments.")
    auth_threads: int = _setting(2, "Threads for bcrypt, kept apart so logins never stall transfers.")
    pipeline_depth: int = _setting(4, "Segments in flight per transfer.")
    segments_in_flight: int = _setting(
        8, "Segments being sealed or stored across all uploads together (bounds memory: ~2 MiB each)."
    )
    download_segments: int = _setting(
        32,
        "Decrypted segments all downloads together may hold (bounds memory: ~1 MiB each);"
        " at the limit a download waits, and clients that stopped reading give theirs up first.",
    )
    send_timeout: int = _setting(
        60, "Seconds a download may wait for its client to take the next 64 KiB before it is closed."
    )
    downloads_per_user: int = _setting(
        16, "Downloads one user may have in progress at once, own and shared files (429 beyond; 0: no limit)."
    )
    downloads_per_link: int = _setting(
        16, "Downloads in progress at once through one public link (429 beyond; 0: no limit)."
    )
    downloads_per_address: int = _setting(
        32, "Downloads in progress at once from one client address (IPv6: per /64; 429 beyond; 0: no limit)."
    )
    resumable_ttl: int = _setting(
        86400, "Seconds an unfinished resumable (tus) upload is kept after its last write."
    )
    login_free_attempts: int = _setting(
        5, "Wrong logins per account and per client address before each further one is delayed."
    )
    login_max_backoff: int = _setting(
        900, "Longest login lock-out, in seconds (doubling from 1 s); idle counts are then forgotten."
    )
    register_per_address: int = _setting(
        10, "Registrations per client address (IPv6: per /64) per hour (429 beyond; 0: no limit)."
    )
    register_per_hour: int = _setting(
        100, "Registrations from everyone together per hour (429 beyond; 0: no limit)."
    )
    trusted_proxies: str = _setting(
        "", "Comma-separated proxy addresses or networks whose X-Forwarded-For names the client."
    )
    idle_timeout: int = _setting(60, "Seconds an idle keep-alive connection is kept open.")
    body_timeout: int = _setting(
        60, "Seconds a request body may send nothing before it is cut off (408); uploads are dropped."
    )
    uploads_per_user: int = _setting(
        4, "Uploads (PUT, POST /upload, tus) one user may have in progress at once (429 beyond)."
    )
    busy_timeout: int = _setting(
        10, "Seconds a write waits for the database's lock (held by another process) before 503."
    )
    shutdown_grace: int = _setting(
        30, "Seconds SIGTERM lets requests in flight finish (no new connections) before closing them."
    )
    workers: int = _setting(
        1,
        "Server processes sharing the port (1: one process, as before); with more, they share"
        " limits, locks and sessions through the database (README, Several workers).",
    )
    worker_lease: int = _setting(
        10,
        "With workers > 1: seconds after which what a dead worker held (upload slots, quota,"
        " pins, its uploads in progress) is released and its staged uploads are purged.",
    )
    disk_reserve: int = _setting(
        32 * 1024 * 1024,
        "Bytes of disk held back beside the database so logins and deletes work on a full disk"
        " (0: none, else at least 20 MiB); uploads answer 507 while it is in use.",
    )
    keep_free: int = _setting(
        1024 * 1024 * 1024,
        "Bytes of deleted and replaced files' space the SQLite database keeps inside for new"
        " uploads, while the file system has as much free besides (0: all given back to the file"
        " system at once).",
    )
    registration: str = _setting(
        "invite",
        "Who may `POST /register`: `open` (anyone), `invite` (with a code from `run.py admin invite`)"
        " or `closed` (accounts only from `run.py admin create-user`).",
    )
    invite_ttl: int = _setting(
        7 * 86400, "Seconds an invite code stays valid (`admin invite --ttl` overrides)."
    )
    public_url: str = _setting(
        "", "Base URL in public links, e.g. https://files.example.org (default: from the request's Host)."
    )
    plain_http_port: int = _setting(
        0, "Benchmarks only: also serve plain HTTP on 127.0.0.1 at this port (0: off), to measure TLS."
    )
    metrics_port: int = _setting(
        0, "Serve Prometheus metrics on http://127.0.0.1:<port>/metrics (0: off); loopback only."
    )
    blob_store: str = _setting(
        "database",
        "Where sealed segments go: `database` (rows of the metadata store) or `s3` (one object per"
        " segment in the bucket below; README, Object storage).",
    )
    s3_endpoint: str = _setting(
        "",
        "S3 endpoint URL for blob_store: s3, e.g. https://s3.eu-west-1.amazonaws.com (path-style requests).",
    )
    s3_bucket: str = _setting("", "Bucket for blob_store: s3 (it must exist).")
    s3_prefix: str = _setting("segments/", "Key prefix of vault's objects in the bucket (`A-Za-z0-9/._-`).")
    s3_region: str = _setting("us-east-1", "Region the requests are signed for (SigV4).")
    s3_gc_lease: int = _setting(
        3600,
        "Seconds an object no segment row names is kept before garbage collection deletes it"
        " (an upload writes each object just before its row; at least 10, keep it long).",
    )
    s3_gc_interval: int = _setting(
        300,
        "Seconds between the server's own collections of orphan objects, in every instance and"
        " worker (0: none, then run `run.py admin gc` from a timer).",
    )
    storage: str = _setting(
        "sqlite",
        "Where metadata and segments live: `sqlite` (data_dir/vault.db) or `postgres` (the URL in the"
        " environment variable VAULT_DATABASE_URL; needs requirements-postgres.txt).",
    )
    access_log: str = _setting("text", "Access log lines: `text`, or `json` (one object per line).")
    log_level: str = _setting("INFO", "Logging level: DEBUG, INFO, WARNING or ERROR.")

    @property
    def db_path(self) -> Path:
        return self.data_dir / "vault.db"


FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_PATHS = {"data_dir", "tls_cert", "tls_key"}
_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR"}
REGISTRATION_MODES = ("open", "invite", "closed")
BLOB_STORES = ("database", "s3")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", re.ASCII)
_PREFIX = re.compile(r"[A-Za-z0-9/._-]*", re.ASCII)
STORAGE_KINDS = ("sqlite", "postgres")


def _coerce(key: str, value: Any) -> Any:
    kind = type(FIELDS[key].default)
    if kind is int:
        if isinstance(value, (bool, float)):
            raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}") from None
    if kind is str:
        if not isinstance(value, (str, int)):
            raise ConfigError(f"config key {key!r}: expected a string, got {value!r}")
        return str(value)
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise ConfigError(f"config key {key!r}: expected a path, got {value!r}")
    return Path(value)


def _check_range(values: Mapping[str, Any], key: str, low: int, high: int) -> None:
    if not low <= values[key] <= high:
        raise ConfigError(f"config key {key!r}: must be between {low} and {high}, got {values[key]}")


def _validate(values: dict[str, Any]) -> None:
    _check_range(values, "port", 0, 65535)
    _check_range(values, "plain_http_port", 0, 65535)
    _check_range(values, "metrics_port", 0, 65535)
    if values["access_log"] not in ("text", "json"):
        raise ConfigError("config key 'access_log': must be text or json")
    _check_range(values, "bcrypt_rounds", 4, 31)
    _check_range(values, "max_file_size", 0, 2**62)
    _check_range(values, "user_quota", 0, 2**62)
    _check_range(values, "max_json_size", 1024, 16 * 1024 * 1024)
    _check_range(values, "token_ttl", 1, 366 * 86400)
    _check_range(values, "refresh_ttl", 1, 366 * 86400)
    _check_range(values, "crypto_threads", 1, 64)
    _check_range(values, "auth_threads", 1, 64)
    _check_range(values, "pipeline_depth", 1, 64)
    _check_range(values, "segments_in_flight", 1, 1024)
    _check_range(values, "download_segments", 1, 4096)
    _check_range(values, "send_timeout", 1, 86400)
    for key in ("downloads_per_user", "downloads_per_link", "downloads_per_address"):
        _check_range(values, key, 0, 1_000_000)
    _check_range(values, "idle_timeout", 1, 86400)
    _check_range(values, "body_timeout", 1, 86400)
    _check_range(values, "uploads_per_user", 1, 10_000)
    _check_range(values, "busy_timeout", 1, 3600)
    _check_range(values, "shutdown_grace", 0, 86400)
    _check_range(values, "workers", 1, 256)
    _check_range(values, "worker_lease", 1, 3600)
    if values["disk_reserve"] != 0:
        _check_range(values, "disk_reserve", MIN_DISK_RESERVE, 2**40)
    _check_range(values, "keep_free", 0, 2**50)
    _check_range(values, "login_free_attempts", 1, 1_000_000)
    _check_range(values, "login_max_backoff", 1, 86400)
    _check_range(values, "register_per_address", 0, 1_000_000)
    _check_range(values, "register_per_hour", 0, 1_000_000)
    parse_networks(values["trusted_proxies"])
    try:
        subject_names(values["tls_names"])
    except ValueError as exc:
        raise ConfigError(f"config key 'tls_names': {exc}") from None
    _check_range(values, "resumable_ttl", 60, 366 * 86400)
    try:
        check_seg_size(values["segment_size"])
    except ValueError as exc:
        raise ConfigError(f"config key 'segment_size': {exc}") from None
    if values["log_level"].upper() not in _LEVELS:
        raise ConfigError(f"config key 'log_level': must be one of {sorted(_LEVELS)}")
    values["log_level"] = values["log_level"].upper()
    _check_range(values, "invite_ttl", 60, 366 * 86400)
    if values["registration"] not in REGISTRATION_MODES:
        raise ConfigError(f"config key 'registration': must be one of {', '.join(REGISTRATION_MODES)}")
    if values["storage"] not in STORAGE_KINDS:
        raise ConfigError(f"config key 'storage': must be one of {', '.join(STORAGE_KINDS)}")
    if values["public_url"] and not values["public_url"].startswith("https://"):
        raise ConfigError("config key 'public_url': must start with https://")
    values["public_url"] = values["public_url"].rstrip("/")
    _validate_blob_store(values)
    for key in ("host", "jwt_issuer", "jwt_audience"):
        if not values[key]:
            raise ConfigError(f"config key {key!r}: must not be empty")


def _validate_blob_store(values: dict[str, Any]) -> None:
    if values["blob_store"] not in BLOB_STORES:
        raise ConfigError(f"config key 'blob_store': must be one of {', '.join(BLOB_STORES)}")
    _check_range(values, "s3_gc_lease", 10, 30 * 86400)
    _check_range(values, "s3_gc_interval", 0, 86400)
    if not _PREFIX.fullmatch(values["s3_prefix"]):
        raise ConfigError("config key 's3_prefix': only letters, digits and / . _ - are allowed")
    if values["blob_store"] != "s3":
        return
    if not re.fullmatch(r"https?://[^/?#\s]+", values["s3_endpoint"].rstrip("/")):
        raise ConfigError("config key 's3_endpoint': must be an http:// or https:// URL with no path")
    if not _BUCKET.fullmatch(values["s3_bucket"]):
        raise ConfigError("config key 's3_bucket': must be an S3 bucket name (3-63 of a-z 0-9 . -)")
    if not values["s3_region"]:
        raise ConfigError("config key 's3_region': must not be empty")


SECRET_VARIABLES = frozenset(
    {
        "VAULT_MASTER_KEY",
        "VAULT_MASTER_KEY_COMMAND",
        "VAULT_JWT_SECRET",
        "VAULT_S3_ACCESS_KEY_ID",
        "VAULT_S3_SECRET_ACCESS_KEY",
        "VAULT_DATABASE_URL",  # storage: postgres: it carries a password, never in config.yaml
    }
)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """VAULT_* variables that name no setting (a typo such as VAULT_PROT goes unnoticed
    otherwise). Not an error: other software (HashiCorp Vault's VAULT_ADDR) uses the prefix."""
    known = {f"VAULT_{name.upper()}" for name in FIELDS} | SECRET_VARIABLES
    return sorted(k for k in environ if k.startswith("VAULT_") and k not in known)


def load_settings(
    config_file: Path | None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge defaults, the YAML file (if given), VAULT_* variables and explicit overrides."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {name: f.default for name, f in FIELDS.items()}
    base = Path.cwd()
    if config_file is not None:
        base = config_file.resolve().parent
        try:
            loaded = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {config_file} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {config_file} must hold a mapping of keys")
        for key, value in loaded.items():
            if key not in FIELDS:
                raise ConfigError(f"config key {key!r}: unknown setting")
            values[key] = _coerce(key, value)
    for key in FIELDS:
        env_value = environ.get(f"VAULT_{key.upper()}")
        if env_value is not None:
            values[key] = _coerce(key, env_value)
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = _coerce(key, value)
    for key in _PATHS:
        path = Path(values[key]).expanduser()
        values[key] = path if path.is_absolute() else base / path
    _validate(values)
    return Settings(**values)
