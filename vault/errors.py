"""Domain errors of vault. The core raises these; handlers/ maps them to HTTP statuses.

VaultError
├── ConfigError             a setting is missing or invalid (names the key)
├── InputError              the request is malformed
│   ├── InvalidJSON         the body is not a JSON object
│   ├── InvalidField        a field is missing, of the wrong type or out of range
│   ├── InvalidFilename     a file name breaks the naming rules
│   ├── MalformedUpload     the multipart body cannot be parsed
│   ├── DigestMismatch      the client's digest does not match what arrived
│   ├── ChecksumMismatch    a resumable upload's chunk does not match its checksum
│   ├── UnsupportedMediaType the body's Content-Type is not the one required
│   └── PreconditionFailed  a required protocol version header is missing or unsupported
├── AuthError               the caller is not authenticated
│   ├── InvalidCredentials  unknown user or wrong password (one error for both)
│   ├── InvalidToken        the token is missing, malformed, forged or of the wrong kind
│   │   └── RevokedToken    the token was valid but has been revoked (logout, password change)
│   └── ExpiredToken        the token was valid but has expired
├── Forbidden               understood but not allowed (registration closed, no valid invite, disabled)
├── Conflict                the request conflicts with the resource's current state
│   ├── UserExists          the username is taken
│   └── OffsetMismatch      a resumable upload is not at the offset the client claims
├── NotFound                no such resource visible to the caller
│   └── FileNotFound        no such file for this caller
├── Gone                    a public link expired, ran out of downloads or lost its file
├── TooManyAttempts         too many wrong logins or link passwords; carries the seconds to wait
│   └── TooManyRegistrations too many registrations from one address or in total
├── TooManyUploads          a user already has ``uploads_per_user`` uploads in progress
├── TooManyDownloads        a user, link or address is at its cap of downloads in progress
├── BodyTimeout             a request body sent nothing for ``body_timeout`` seconds
├── TooLarge                a body or file is over its configured limit
├── RangeNotSatisfiable     the requested byte range lies outside the file
├── Busy                    the server is at a configured limit; retry later
│   ├── StorageBusy         the database stayed locked (by another process) past busy_timeout
│   └── ObjectStoreError    the object store (blob_store: s3) failed or refused a request
├── StorageFull             the disk under the database is full
└── IntegrityError          stored data failed authentication (never says which check)
    └── DatabaseDamaged     the database file itself is damaged (SQLite reports it corrupt)
"""


class VaultError(Exception):
    """Base class of every error the vault core raises."""

    message = "Internal error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message


class ConfigError(VaultError):
    """A setting is missing or invalid; the message names the key."""


class Forbidden(VaultError):
    """The request is understood but not allowed: registration closed, no valid invite code,
    a disabled account."""

    message = "Forbidden"


class InputError(VaultError):
    """The request is malformed."""

    message = "Bad request"


class InvalidJSON(InputError):
    """The body is not a JSON object."""

    message = "Request body must be a JSON object"


class InvalidField(InputError):
    """A field is missing, of the wrong type or out of range."""


class InvalidFilename(InputError):
    """A file name breaks the naming rules."""

    message = "Invalid filename"


class MalformedUpload(InputError):
    """The multipart body cannot be parsed."""

    message = "Malformed multipart upload"


class DigestMismatch(InputError):
    """The digest the client declared does not match the bytes that arrived."""

    message = "Digest mismatch: the upload was not stored"


class ChecksumMismatch(InputError):
    """A resumable upload's chunk does not match its Upload-Checksum; the chunk was discarded."""

    message = "Checksum mismatch: the chunk was discarded"


class UnsupportedMediaType(InputError):
    """The body's Content-Type is not the one this endpoint requires."""

    message = "Unsupported Content-Type"


class PreconditionFailed(InputError):
    """A required protocol version header is missing or names an unsupported version."""

    message = "Unsupported protocol version"


class AuthError(VaultError):
    """The caller is not authenticated."""

    message = "Authentication required"


class InvalidCredentials(AuthError):
    """Unknown user or wrong password; deliberately one error for both."""

    message = "Invalid username or password"


class InvalidToken(AuthError):
    """The token is missing, malformed, forged or of the wrong kind."""

    message = "Invalid token"


class RevokedToken(InvalidToken):
    """The token was valid but has been revoked: logout, password change, or refresh-token reuse."""

    message = "Token revoked: log in again"


class ExpiredToken(AuthError):
    """The token was valid but has expired."""

    message = "Token expired: log in again"


class Conflict(VaultError):
    """The request conflicts with the current state of the resource."""

    message = "Conflict"


class UserExists(Conflict):
    """The username is taken."""

    message = "Username already exists"


class OffsetMismatch(Conflict):
    """A resumable upload is not at the offset the client claims (or is busy with another request)."""

    message = "Upload-Offset does not match the upload's offset"


class NotFound(VaultError):
    """No such resource visible to the caller."""

    message = "Not found"


class FileNotFound(NotFound):
    """No such file for this caller (also: another user's file)."""

    message = "File not found"


class Gone(VaultError):
    """A public link expired, ran out of downloads, or its file is no longer there."""

    message = "This link is no longer available"


class TooManyAttempts(VaultError):
    """Too many wrong passwords (login or link): wait ``retry_after`` seconds."""

    message = "Too many wrong passwords: wait before trying again"

    def __init__(self, retry_after: int) -> None:
        super().__init__()
        self.retry_after = retry_after


class TooManyRegistrations(TooManyAttempts):
    """Too many registrations from the client's address, or in total: wait ``retry_after``."""

    message = "Too many registrations: try again later"


class TooManyUploads(VaultError):
    """The user already has as many uploads in progress as allowed; retry when one ends."""

    message = "Too many uploads in progress"
    retry_after = 5


class TooManyDownloads(VaultError):
    """A user, a link or a client address already has as many downloads in progress as
    allowed; retry when one ends."""

    message = "Too many downloads in progress"
    retry_after = 5


class BodyTimeout(VaultError):
    """A request body stalled: no bytes arrived for the configured time."""

    message = "Request body timed out"


class TooLarge(VaultError):
    """A body or file is over its configured limit."""

    message = "Request body too large"


class RangeNotSatisfiable(VaultError):
    """The requested byte range lies outside the file; carries the file size for Content-Range."""

    message = "Range not satisfiable"

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size


class Busy(VaultError):
    """The server is at a configured limit right now; the client should retry shortly."""

    message = "Server busy: retry shortly"


class StorageBusy(Busy):
    """The database stayed locked (by another process) for the whole ``busy_timeout``."""

    message = "The database is busy: retry shortly"


class ObjectStoreError(Busy):
    """The object store did not answer, or refused a request (the server log says why)."""

    message = "The object store is unavailable: retry shortly"


class StorageFull(VaultError):
    """The disk under the database is full: nothing more can be stored until space is freed."""

    message = "Insufficient storage: the server's disk is full"


class IntegrityError(VaultError):
    """Stored data failed authentication. Deliberately says nothing about which check failed."""

    message = "Stored data failed its integrity check"


class DatabaseDamaged(IntegrityError):
    """The database file is damaged below the MACs (SQLite reports a corrupt page); answered
    as any integrity failure, while ``detail`` (SQLite's words) goes to the operator."""

    def __init__(self, detail: str = "") -> None:
        super().__init__()
        self.detail = detail

    def explain(self) -> str:
        """For the operator (never a client): what is wrong and what to do."""
        return (
            f"the database is damaged ({self.detail}): stop everything using it, rebuild it from"
            " what is readable or restore a backup (README, 'A damaged database file')"
        )
