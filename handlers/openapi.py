"""The OpenAPI 3.1 description of the HTTP API, built once at import and served without auth at
``GET /openapi.json``. tests/test_openapi.py runs schemathesis against a live server with it, so
a reply the document does not describe (a status, a content type, a body) fails CI."""

import base64
from typing import Any

from handlers.base import BaseHandler
from handlers.paging import MAX_CURSOR, MAX_LIMIT
from handlers.sharing import MAX_FORM_BYTES
from handlers.tus import CHECKSUM_ALGORITHMS, TUS_EXTENSIONS, TUS_VERSION
from handlers.web import CSRF_HEADER, DOWNLOAD_COOKIE, MAX_QR_TEXT, REFRESH_COOKIE
from vault import __version__
from vault.auth import MAX_PASSWORD_BYTES, MIN_PASSWORD_CHARS
from vault.format import MAX_NAME_BYTES
from vault.sharing import LINK_CURSOR, MAX_DOWNLOADS, MAX_EXPIRY

Schema = dict[str, Any]

JSON = "application/json"
# JSON Schema (ECMA 262) spelling of vault.auth.USERNAME_RE.
USERNAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]{2,31}$"
# vault.names: no path separators, control characters (Cc), line separators or bidirectional
# controls, and not "." or "..". Length is 1-255 UTF-8 bytes (maxLength counts characters, so it
# is exact only for ASCII names). Every pattern must compile as ECMA 262 (tests/test_openapi.py):
# a surrogate range, for one, does not, and schemathesis then silently ignores the pattern.
FILENAME_PATTERN = (
    "^(?!\\.\\.?$)[^\\u0000-\\u001f\\u007f-\\u009f/\\\\\\u2028\\u2029\\u061c\\u200e\\u200f"
    "\\u202a-\\u202e\\u2066-\\u2069]+$"
)
SHA256_PATTERN = "^[0-9a-f]{64}$"
DIGEST_PATTERN = "^sha-256=:[A-Za-z0-9+/]{43}=:$"


def ref(kind: str, name: str) -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def schema(name: str) -> Schema:
    return ref("schemas", name)


def json_body(body: Schema) -> Schema:
    return {JSON: {"schema": body}}


def obj(required: list[str], properties: Schema, extra: bool = False) -> Schema:
    """An object schema; replies are closed (``extra`` False) unless a field may be added."""
    return {
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": extra,
    }


def reply(description: str, body: Schema, headers: Schema | None = None) -> Schema:
    out: Schema = {"description": description, "content": json_body(body)}
    if headers:
        out["headers"] = headers
    return out


def header(description: str, body: Schema | None = None, required: bool = True) -> Schema:
    return {"description": description, "required": required, "schema": body or {"type": "string"}}


def errors(*codes: int) -> Schema:
    return {str(code): ref("responses", ERROR_NAMES[code]) for code in codes}


ERROR_NAMES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    410: "Gone",
    412: "PreconditionFailed",
    413: "TooLarge",
    415: "UnsupportedMediaType",
    416: "RangeNotSatisfiable",
    429: "TooManyAttempts",
    460: "ChecksumMismatch",
    500: "IntegrityFailure",
    503: "Busy",
}

ERROR_RESPONSES: Schema = {
    "BadRequest": reply(
        "Malformed request: bad JSON, a missing or invalid field, a bad file name, a bad header.",
        schema("Error"),
    ),
    "Unauthorized": reply(
        "Missing, malformed, forged or expired token (an expired one says"
        ' "Token expired: log in again"), or wrong credentials.',
        schema("Error"),
        {"WWW-Authenticate": header("`Bearer` (RFC 6750); `Basic` on public links.")},
    ),
    "Forbidden": reply(
        f"Not allowed: a web session request without `{CSRF_HEADER}: 1` or from another origin (CSRF),"
        " registration closed, an invite code missing, unknown, used or expired, or a disabled account.",
        schema("Error"),
    ),
    "NotFound": reply(
        "No such resource visible to the caller (another user's file looks exactly like a missing one).",
        schema("Error"),
    ),
    "Conflict": reply("Conflicts with the current state (a taken username, a tus offset).", schema("Error")),
    "Gone": reply("The link expired, has no downloads left, or its file was removed.", schema("Error")),
    "PreconditionFailed": reply(f"`Tus-Resumable: {TUS_VERSION}` is missing or different.", schema("Error")),
    "TooLarge": reply(
        "Over a limit: `max_json_size` for JSON bodies, `max_file_size` or the quota for files.",
        schema("Error"),
    ),
    "UnsupportedMediaType": reply("The body's Content-Type is not the one required.", schema("Error")),
    "RangeNotSatisfiable": reply(
        "The Range starts past the end of the file.",
        schema("Error"),
        {"Content-Range": header("`bytes */<size>`", {"type": "string", "pattern": "^bytes \\*/[0-9]+$"})},
    ),
    "TooManyAttempts": reply(
        "Too many wrong passwords: wait Retry-After seconds.",
        schema("Error"),
        {"Retry-After": header("Seconds to wait.", {"type": "integer", "minimum": 0})},
    ),
    "TooManyDownloads": reply(
        "Too many downloads in progress for this account, link or client address"
        " (`downloads_per_user`, `downloads_per_link`, `downloads_per_address`):"
        " retry after Retry-After seconds.",
        schema("Error"),
        {"Retry-After": header("Seconds to wait.", {"type": "integer", "minimum": 0})},
    ),
    "ChecksumMismatch": reply(
        "tus checksum extension: the chunk did not match Upload-Checksum.", schema("Error")
    ),
    "IntegrityFailure": reply("Stored data failed its integrity check (never says which).", schema("Error")),
    "Busy": reply(
        "Too many password hashes queued, or (any write) the database stayed locked by another"
        " process past `busy_timeout`: retry shortly.",
        schema("Error"),
        {"Retry-After": header("Seconds to wait.", {"type": "integer", "minimum": 0}, required=False)},
    ),
}

FILE_INFO: Schema = {
    "filename": {"type": "string", "description": "The stored (NFC-normalised) name."},
    "size": {"type": "integer", "minimum": 0},
    "sha256": {"type": "string", "pattern": SHA256_PATTERN},
    "created": {"type": "string", "format": "date-time"},
}

LINK_INFO: Schema = {
    "id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,32}$"},
    "filename": {"type": "string"},
    "created": {"type": "string", "format": "date-time"},
    "expires": {"type": ["string", "null"], "format": "date-time"},
    "password": {"type": "boolean", "description": "Whether the link needs a password."},
    "max_downloads": {"type": ["integer", "null"], "minimum": 1},
    "downloads_left": {
        "type": ["number", "null"],
        "minimum": 0,
        "description": "Whole-file downloads left (a partial range costs a fraction).",
    },
}

TOKEN_PAIR: Schema = {
    "token": {"type": "string", "description": "An HS256 JWT for `Authorization: Bearer`."},
    "expires_in": {"type": "integer", "minimum": 1, "description": "Seconds."},
    "refresh_token": {
        "type": "string",
        "minLength": 1,
        "description": "Opaque; for `POST /token/refresh`, which uses it up.",
    },
    "refresh_expires_in": {"type": "integer", "minimum": 1, "description": "Seconds."},
}

NEW_PASSWORD: Schema = {
    "type": "string",
    "minLength": MIN_PASSWORD_CHARS,
    "maxLength": MAX_PASSWORD_BYTES,
    "pattern": "^[^\\u0000]*$",
    "description": f"{MIN_PASSWORD_CHARS}+ characters, at most {MAX_PASSWORD_BYTES} UTF-8 bytes, no NUL.",
}

NEXT: Schema = {
    "type": ["string", "null"],
    "description": "Only with ?limit or ?after: the cursor to pass as ?after= (null: the last page).",
}
LIMIT = {
    "name": "limit",
    "in": "query",
    "required": False,
    "description": "At most this many items, and a 'next' cursor (without it: the whole list).",
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
}
PAGING = [
    LIMIT,
    {
        "name": "after",
        "in": "query",
        "required": False,
        "description": "The 'next' of the previous page.",
        "schema": {"type": "string", "maxLength": MAX_CURSOR},
    },
]
LINK_PAGING = [
    LIMIT,
    {
        "name": "after",
        "in": "query",
        "required": False,
        "description": "The 'next' of the previous page (creation time/id).",
        "schema": {"type": "string", "maxLength": MAX_CURSOR, "pattern": LINK_CURSOR},
    },
]

SCHEMAS: Schema = {
    "Error": {
        "description": "Every error reply.",
        **obj(["message", "status"], {"message": {"type": "string"}, "status": {"type": "integer"}}),
    },
    "Message": obj(["message"], {"message": {"type": "string"}}),
    "Credentials": {
        "type": "object",
        "examples": [{"username": "alice", "password": "correct horse"}],
        "required": ["username", "password"],
        "properties": {
            "username": {"type": "string", "pattern": USERNAME_PATTERN},
            "password": NEW_PASSWORD,
            "invite": {
                "type": ["string", "null"],
                "description": "A code from `run.py admin invite`, required when `registration` is"
                " `invite` (used up by the account it creates); ignored when `open`. null: none.",
            },
        },
    },
    "Login": {
        "type": "object",
        "examples": [{"username": "alice", "password": "correct horse"}],
        "required": ["username", "password"],
        "properties": {
            "username": {"type": "string", "minLength": 1},
            "password": {"type": "string", "minLength": 1},
        },
    },
    "Token": obj(
        list(TOKEN_PAIR),
        TOKEN_PAIR,
        extra=True,  # more fields may come
    ),
    "RefreshRequest": {
        "type": "object",
        "required": ["refresh_token"],
        "properties": {"refresh_token": {"type": "string", "minLength": 1}},
    },
    "LogoutRequest": {
        "type": "object",
        "description": "Every field is optional; an empty body ends the Bearer token's session only.",
        "properties": {
            "refresh_token": {
                "type": ["string", "null"],
                "minLength": 1,
                "description": "Its session ends too, if it is yours (an unknown one is ignored).",
            }
        },
    },
    "PasswordChange": {
        "type": "object",
        "examples": [{"old_password": "correct horse battery", "new_password": "correct horse staple"}],
        "required": ["old_password", "new_password"],
        "properties": {
            "old_password": {"type": "string", "minLength": 1},
            "new_password": NEW_PASSWORD,
        },
    },
    "PasswordChanged": obj(
        ["message", *TOKEN_PAIR],
        {"message": {"type": "string"}, **TOKEN_PAIR},
        extra=True,  # more fields may come, as in Token
    ),
    "WebSession": obj(
        ["token", "expires_in", "username"],
        {
            "token": TOKEN_PAIR["token"],
            "expires_in": TOKEN_PAIR["expires_in"],
            "username": {"type": "string"},
            "message": {"type": "string"},
        },
    ),
    "QRRequest": {
        "type": "object",
        "required": ["text"],
        "properties": {"text": {"type": "string", "minLength": 1, "maxLength": MAX_QR_TEXT}},
    },
    "FileInfo": obj(list(FILE_INFO), FILE_INFO),
    "Uploaded": obj(["message", *FILE_INFO], {"message": {"type": "string"}, **FILE_INFO}),
    "FileList": obj(["files"], {"files": {"type": "array", "items": schema("FileInfo")}, "next": NEXT}),
    "Deleted": obj(["message", "filename"], {"message": {"type": "string"}, "filename": {"type": "string"}}),
    "Me": obj(
        ["username", "files", "usage", "stored", "quota", "max_file_size"],
        {
            "username": {"type": "string"},
            "files": {"type": "integer", "minimum": 0},
            "usage": {
                "type": "integer",
                "minimum": 0,
                "description": "Bytes of plaintext (what the quota counts).",
            },
            "stored": {
                "type": "integer",
                "minimum": 0,
                "description": "Bytes the files really take in the database: encrypted, with IVs and MACs,"
                " and uploads in progress.",
            },
            "quota": {"type": ["integer", "null"], "minimum": 0, "description": "Bytes; null: no quota."},
            "max_file_size": {"type": "integer", "minimum": 0},
        },
    ),
    "Health": obj(["status"], {"status": {"const": "ok"}}),
    "ShareRequest": {
        "type": "object",
        "required": ["username"],
        "properties": {"username": {"type": "string", "pattern": USERNAME_PATTERN}},
    },
    "Share": obj(
        ["message", "filename", "username"],
        {"message": {"type": "string"}, "filename": {"type": "string"}, "username": {"type": "string"}},
    ),
    "Grantees": obj(
        ["filename", "shared_with"],
        {"filename": {"type": "string"}, "shared_with": {"type": "array", "items": {"type": "string"}}},
    ),
    "SharedList": obj(
        ["files"],
        {
            "files": {
                "type": "array",
                "items": obj(["owner", *FILE_INFO], {"owner": {"type": "string"}, **FILE_INFO}),
            },
            "next": NEXT,
        },
    ),
    "LinkRequest": {
        "type": "object",
        "description": "Every field is optional; an empty body makes a link without limits.",
        "properties": {
            "expires_in": {"type": ["integer", "null"], "minimum": 60, "maximum": MAX_EXPIRY},
            "password": {
                "type": ["string", "null"],
                "minLength": MIN_PASSWORD_CHARS,
                "maxLength": MAX_PASSWORD_BYTES,
                "pattern": "^[^\\u0000]*$",
                "description": "Asked for as HTTP Basic (any user name) on every download.",
            },
            "max_downloads": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_DOWNLOADS},
        },
    },
    "Link": obj(list(LINK_INFO), LINK_INFO),
    "LinkList": obj(["links"], {"links": {"type": "array", "items": schema("Link")}, "next": NEXT}),
    "NewLink": obj(
        ["message", "url", *LINK_INFO],
        {
            "message": {"type": "string"},
            "url": {"type": "string", "format": "uri", "description": "Shown once: holds the secret."},
            **LINK_INFO,
        },
    ),
    "LinkRevoked": obj(["message", "id"], {"message": {"type": "string"}, "id": {"type": "string"}}),
    "TusCreated": {
        "oneOf": [
            obj(
                ["message", "offset"], {"message": {"const": "Upload created"}, "offset": {"type": "integer"}}
            ),
            schema("Uploaded"),
        ],
    },
}

PARAMETERS: Schema = {
    "filename": {
        "name": "filename",
        "in": "path",
        "required": True,
        "description": f"1-{MAX_NAME_BYTES} UTF-8 bytes, normalised to NFC; case-sensitive.",
        "schema": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_NAME_BYTES,
            "pattern": FILENAME_PATTERN,
        },
    },
    "Range": {
        "name": "Range",
        "in": "header",
        "required": False,
        "description": "One byte range gives 206; several, or a malformed one, the whole file.",
        "schema": {"type": "string", "examples": ["bytes=0-1023", "bytes=-512"]},
    },
    "If-None-Match": {
        "name": "If-None-Match",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": "A matching ETag gives 304.",
    },
    "If-Range": {
        "name": "If-Range",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": "An ETag or HTTP date: the Range is honoured only if it still matches.",
    },
    "Tus-Resumable": {
        "name": "Tus-Resumable",
        "in": "header",
        "required": True,
        "schema": {"const": TUS_VERSION},
    },
    "Upload-Checksum": {
        "name": "Upload-Checksum",
        "in": "header",
        "required": False,
        "description": "`<algorithm> <base64 digest>` of this request's body.",
        "schema": {"type": "string", "pattern": f"^({'|'.join(CHECKSUM_ALGORITHMS)}) [A-Za-z0-9+/=]+$"},
    },
    "tus_id": {
        "name": "id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
    },
}

DIGEST_HEADERS = [
    {
        "name": name,
        "in": "header",
        "required": False,
        "description": "RFC 9530 SHA-256 of the whole file: a different body is refused (400).",
        "schema": {"type": "string", "pattern": DIGEST_PATTERN},
    }
    for name in ("Repr-Digest", "Content-Digest")
]

DOWNLOAD_HEADERS: Schema = {
    "Content-Length": header("Bytes in this reply's body.", {"type": "integer", "minimum": 0}),
    "ETag": header("Strong; changes when the file is replaced.", {"type": "string", "pattern": '^"[^"]+"$'}),
    "Last-Modified": header("When this version was stored."),
    "Accept-Ranges": header("`bytes`", {"const": "bytes"}),
    "Content-Disposition": header("`attachment` with an ASCII `filename` and `filename*` (RFC 6266)."),
    "Repr-Digest": header(
        "SHA-256 of the whole file (RFC 9530).", {"type": "string", "pattern": DIGEST_PATTERN}
    ),
}
ANY_BYTES: Schema = {"*/*": {"schema": {"description": "The file's bytes, Content-Type from its name."}}}
LANDING_PAGE: Schema = {"text/html": {"schema": {"type": "string"}}}


def download(
    summary: str, params: list[Schema], head: bool, extra: Schema | None = None, landing: bool = False
) -> Schema:
    """GET or HEAD of a stored file: Range, conditional requests and the errors they share.
    ``landing``: a browser may get an HTML page instead, without the file's headers."""
    full: Schema = {"description": "The whole file.", "headers": DOWNLOAD_HEADERS}
    part: Schema = {
        "description": "The one byte range asked for.",
        "headers": {
            **DOWNLOAD_HEADERS,
            "Content-Range": header(
                "`bytes <first>-<last>/<size>`", {"pattern": "^bytes [0-9]+-[0-9]+/[0-9]+$"}
            ),
        },
    }
    if not head:
        full["content"] = ANY_BYTES
        part["content"] = ANY_BYTES
    if landing:
        full = {
            "description": "The whole file; or, for `Accept: text/html` (a browser, a link-preview bot)"
            " without `dl`, a landing page (name, size, a Download button) without the file's headers.",
            "headers": {name: {**value, "required": False} for name, value in DOWNLOAD_HEADERS.items()},
            "content": {**LANDING_PAGE, **ANY_BYTES},
        }
    return {
        "summary": summary + (" (headers only)" if head else ""),
        "parameters": [
            *params,
            ref("parameters", "Range"),
            ref("parameters", "If-None-Match"),
            ref("parameters", "If-Range"),
        ],  # fmt: skip
        "responses": {
            "200": full,
            "206": part,
            "304": {"description": "If-None-Match matched."},
            **(extra or {}),
            **errors(400, 404, 416, 500),
            **({} if head else {"429": ref("responses", "TooManyDownloads")}),
        },
    }


def tus_headers(*names: str) -> Schema:
    known: Schema = {
        "Tus-Resumable": header(TUS_VERSION, {"const": TUS_VERSION}),
        "Upload-Offset": header("Bytes stored so far.", {"type": "integer", "minimum": 0}),
        "Upload-Expires": header("When an unfinished upload is purged (HTTP date)."),
        "Upload-Length": header("The upload's total size.", {"type": "integer", "minimum": 0}),
        "Location": header("The upload's URL.", {"type": "string", "format": "uri"}),
    }
    return {name: known[name] for name in names}


TUS_ERRORS = (400, 401, 404, 409, 412, 413, 415, 460)


def tus_errors(*codes: int) -> Schema:
    """tus replies carry Tus-Resumable, errors included; only a URL that names no tus resource
    at all (a malformed id) gets the server's plain 404."""
    out: Schema = {}
    for code in codes:
        error = dict(ERROR_RESPONSES[ERROR_NAMES[code]])
        tus = tus_headers("Tus-Resumable")
        if code == 404:
            tus = {"Tus-Resumable": {**tus["Tus-Resumable"], "required": False}}
        error["headers"] = {**error.get("headers", {}), **tus}
        out[str(code)] = error
    return out


TUS_OPTIONS: Schema = {
    "summary": "tus discovery (no auth)",
    "security": [],
    "responses": {
        **errors(404),
        "204": {
            "description": "What this server supports.",
            "headers": {
                **tus_headers("Tus-Resumable"),
                "Tus-Version": header(TUS_VERSION, {"const": TUS_VERSION}),
                "Tus-Extension": header(TUS_EXTENSIONS, {"const": TUS_EXTENSIONS}),
                "Tus-Max-Size": header("`max_file_size`", {"type": "integer", "minimum": 0}),
                "Tus-Checksum-Algorithm": header(",".join(CHECKSUM_ALGORITHMS)),
            },
        },
    },
}

OFFSET: Schema = {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**63 - 1}
OFFSET_BODY: Schema = {"application/offset+octet-stream": {"schema": {"type": "string", "format": "binary"}}}

NO_AUTH: list[Schema] = []
PUBLIC = {"security": NO_AUTH}
FILENAME = ref("parameters", "filename")
OWNER: Schema = {
    "name": "owner",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1},
}
LINK_TOKEN: Schema = {
    "name": "token",
    "in": "path",
    "required": True,
    "description": "The link's secret (144 random bits, URL-safe base64).",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{16,64}$"},
}
LINK_QUERY: Schema = {
    "name": "dl",
    "in": "query",
    "required": False,
    "description": "Any value: the file itself even for `Accept: text/html` (the landing page's button).",
    "schema": {"type": "string"},
}
LINK_AUTH: list[Schema] = [{}, {"linkPassword": []}]

PATHS: Schema = {
    "/openapi.json": {
        "get": {
            "summary": "This document",
            **PUBLIC,
            "responses": {"200": reply("OpenAPI 3.1", {"type": "object"})},
        }
    },
    "/health": {
        "get": {
            "summary": "Liveness: the database answers a read",
            **PUBLIC,
            "responses": {"200": reply("Up", schema("Health")), **errors(503)},
        },
    },
    "/register": {
        "post": {
            "summary": "Create an account",
            **PUBLIC,
            "description": "Allowed by the `registration` setting: `open`, `invite` (with a valid"
            " invite code) or `closed` (403).",
            "requestBody": {"required": True, "content": json_body(schema("Credentials"))},
            "responses": {
                "201": reply("Registered", schema("Message")),
                **errors(400, 403, 409, 413, 503),
            },
        }
    },
    "/login": {
        "post": {
            "summary": "Get a token",
            **PUBLIC,
            "description": "One 401 for an unknown user and a wrong password; repeated failures lock the"
            " account and the client address for a doubling time (429). A disabled account answers"
            " 403, and only to the right password.",
            "requestBody": {"required": True, "content": json_body(schema("Login"))},
            "responses": {
                "200": reply("An access token and a refresh token", schema("Token")),
                **errors(400, 401, 403, 413, 429, 503),
            },
        }
    },
    "/token/refresh": {
        "post": {
            "summary": "Trade a refresh token for a new pair",
            **PUBLIC,
            "description": "The refresh token goes in the body (no `Authorization`) and is used up; using"
            " it again revokes its session (401).",
            "requestBody": {"required": True, "content": json_body(schema("RefreshRequest"))},
            "responses": {
                "200": reply("A new pair, as from `/login`", schema("Token")),
                **errors(400, 401, 413),
            },
        }
    },
    "/logout": {
        "post": {
            "summary": "End this session",
            "description": "The Bearer token's session (and that of `refresh_token`, if it is yours) ends:"
            " its access and refresh tokens stop working at once.",
            "requestBody": {"required": False, "content": json_body(schema("LogoutRequest"))},
            "responses": {"200": reply("Logged out", schema("Message")), **errors(400, 401, 413)},
        }
    },
    "/logout/all": {
        "post": {
            "summary": "End every session",
            "description": "Every access and refresh token of yours stops working.",
            "responses": {"200": reply("Logged out everywhere", schema("Message")), **errors(401, 503)},
        }
    },
    "/password": {
        "post": {
            "summary": "Change your password",
            "description": "A wrong `old_password` (401) counts toward the login throttle (429). Every"
            " other token of yours stops working; the reply starts a new session.",
            "requestBody": {"required": True, "content": json_body(schema("PasswordChange"))},
            "responses": {
                "200": reply("Changed, with a new pair", schema("PasswordChanged")),
                **errors(400, 401, 413, 429, 503),
            },
        }
    },
    "/upload": {
        "post": {
            "summary": "Upload a file (multipart)",
            "description": "The file in the field `file`, named by its part's filename. Streamed; replaces"
            " an existing file of that name atomically.",
            "parameters": DIGEST_HEADERS,
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file"],
                            "properties": {"file": {"type": "string", "format": "binary"}},
                        },
                    }
                },
            },
            "responses": {"201": reply("Stored", schema("Uploaded")), **errors(400, 401, 413)},
        }
    },
    "/upload/{filename}": {
        "put": {
            "summary": "Upload a file (raw body, `curl -T`)",
            "parameters": [FILENAME, *DIGEST_HEADERS],
            "requestBody": {
                "required": True,
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            },
            "responses": {"201": reply("Stored", schema("Uploaded")), **errors(400, 401, 413)},
        }
    },
    "/download/{filename}": {
        "get": download("Download your file", [FILENAME], head=False, extra=errors(401)),
        "head": download("Download your file", [FILENAME], head=True, extra=errors(401)),
    },
    "/files": {
        "get": {
            "summary": "Your files",
            "parameters": PAGING,
            "responses": {"200": reply("By name", schema("FileList")), **errors(400, 401)},
        }
    },
    "/files/{filename}": {
        "delete": {
            "summary": "Delete a file (and its shares and links)",
            "parameters": [FILENAME],
            "responses": {"200": reply("Deleted", schema("Deleted")), **errors(400, 401, 404)},
        }
    },
    "/me": {
        "get": {
            "summary": "Who you are, usage and limits",
            "responses": {"200": reply("Bytes", schema("Me")), **errors(401)},
        }
    },
    "/files/{filename}/shares": {
        "parameters": [FILENAME],
        "post": {
            "summary": "Let another user read a file",
            "requestBody": {"required": True, "content": json_body(schema("ShareRequest"))},
            "responses": {"201": reply("Shared", schema("Share")), **errors(400, 401, 404, 413)},
        },
        "get": {
            "summary": "Who may read a file",
            "responses": {"200": reply("Grantees", schema("Grantees")), **errors(400, 401, 404)},
        },
    },
    "/files/{filename}/shares/{username}": {
        "delete": {
            "summary": "Revoke a share",
            "parameters": [
                FILENAME,
                {
                    "name": "username",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "minLength": 1},
                },
            ],
            "responses": {"200": reply("Revoked", schema("Share")), **errors(400, 401, 404)},
        }
    },
    "/shared": {
        "get": {
            "summary": "Files shared with you",
            "parameters": PAGING,
            "responses": {"200": reply("By owner and name", schema("SharedList")), **errors(400, 401)},
        }
    },
    "/shared/{owner}/{filename}": {
        "get": download("Download a file shared with you", [OWNER, FILENAME], head=False, extra=errors(401)),
        "head": download("Download a file shared with you", [OWNER, FILENAME], head=True, extra=errors(401)),
    },
    "/files/{filename}/links": {
        "post": {
            "summary": "Create a public link",
            "parameters": [FILENAME],
            "requestBody": {"required": False, "content": json_body(schema("LinkRequest"))},
            "responses": {"201": reply("The link", schema("NewLink")), **errors(400, 401, 404, 413, 503)},
        }
    },
    "/links": {
        "get": {
            "summary": "Your links",
            "parameters": LINK_PAGING,
            "responses": {"200": reply("Oldest first", schema("LinkList")), **errors(400, 401)},
        }
    },
    "/links/{id}": {
        "delete": {
            "summary": "Revoke a link",
            "parameters": [
                {
                    "name": "id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,32}$"},
                }
            ],
            "responses": {"200": reply("Revoked", schema("LinkRevoked")), **errors(401, 404)},
        }
    },
    "/s/{token}": {
        "get": {
            **download(
                "Download through a public link (no account)",
                [LINK_TOKEN, LINK_QUERY],
                head=False,
                extra=errors(401, 410, 429),
                landing=True,
            ),
            "security": LINK_AUTH,
        },
        "head": {
            **download(
                "Download through a public link (no account)",
                [LINK_TOKEN],
                head=True,
                extra=errors(401, 410, 429),
            ),
            "security": LINK_AUTH,
        },
    },
    "/tus": {
        "options": TUS_OPTIONS,
        "post": {
            "summary": "Create a resumable upload (tus creation, creation-with-upload)",
            "parameters": [
                ref("parameters", "Tus-Resumable"),
                {
                    "name": "Upload-Length",
                    "in": "header",
                    "required": True,
                    "schema": OFFSET,
                    "example": 1048576,
                },
                {
                    "name": "Upload-Metadata",
                    "in": "header",
                    "required": True,
                    "description": "Comma-separated `key base64value` pairs; `filename` is required.",
                    "schema": {"type": "string", "minLength": 1},
                    "example": "filename " + base64.b64encode(b"big.iso").decode(),
                },
                ref("parameters", "Upload-Checksum"),
            ],
            "requestBody": {"required": False, "content": OFFSET_BODY},
            "responses": {
                "201": reply(
                    "Created (with the first bytes stored, if any; the whole file: uploaded)",
                    schema("TusCreated"),
                    tus_headers("Tus-Resumable", "Location", "Upload-Offset", "Upload-Expires"),
                ),
                **tus_errors(*TUS_ERRORS),
            },
        },
    },
    "/tus/{id}": {
        "parameters": [ref("parameters", "tus_id")],
        "options": TUS_OPTIONS,
        "head": {
            "summary": "Where a resumable upload stands",
            "parameters": [ref("parameters", "Tus-Resumable")],
            "responses": {
                "200": {
                    "description": "Its offset, length and metadata.",
                    "headers": {
                        **tus_headers("Tus-Resumable", "Upload-Offset", "Upload-Length", "Upload-Expires"),
                        "Upload-Metadata": header("As sent when created.", required=False),
                    },
                },
                **tus_errors(401, 404, 412),
            },
        },
        "patch": {
            "summary": "Append bytes at Upload-Offset",
            "parameters": [
                ref("parameters", "Tus-Resumable"),
                {
                    "name": "Upload-Offset",
                    "in": "header",
                    "required": True,
                    "schema": OFFSET,
                },
                ref("parameters", "Upload-Checksum"),
            ],
            "requestBody": {"required": True, "content": OFFSET_BODY},
            "responses": {
                "204": {
                    "description": "Stored; the last byte makes it an ordinary file.",
                    "headers": tus_headers("Tus-Resumable", "Upload-Offset", "Upload-Expires"),
                },
                **tus_errors(*TUS_ERRORS),
            },
        },
        "delete": {
            "summary": "Abandon a resumable upload (tus termination)",
            "parameters": [ref("parameters", "Tus-Resumable")],
            "responses": {
                "204": {"description": "Removed.", "headers": tus_headers("Tus-Resumable")},
                **tus_errors(401, 404, 409, 412),
            },
        },
    },
}

# The web app (handlers/pages.py, handlers/web.py): its page, its assets, the browser session
# (refresh token in a cookie), cookie-authenticated downloads, QR codes, the link page's form.
WEB_HEADER: Schema = {
    "name": CSRF_HEADER,
    "in": "header",
    "required": True,
    "description": "Always `1`: a header another site cannot send without CORS (CSRF).",
    "schema": {"type": "string", "const": "1"},
}


def cookie(name: str, description: str, required: bool) -> Schema:
    return {
        "name": name,
        "in": "cookie",
        "required": required,
        "description": description,
        "schema": {"type": "string"},
    }


REFRESH_PARAM = cookie(REFRESH_COOKIE, "The refresh token (httpOnly, set by the session routes).", True)
DOWNLOAD_PARAM = cookie(DOWNLOAD_COOKIE, "A copy of the access token (httpOnly, path /web/dl).", True)
SESSION_COOKIES = {
    "Set-Cookie": header("The refresh and download cookies (httpOnly, Secure, SameSite=Strict).")
}
HTML = {"text/html": {"schema": {"type": "string"}}}


def page(description: str) -> Schema:
    return {"description": description, "content": HTML}


def web_session(
    summary: str, description: str, body: Schema | None, *codes: int, bearer: bool = False
) -> Schema:
    op: Schema = {
        "summary": summary,
        "description": description,
        "parameters": [WEB_HEADER],
        "responses": {
            "200": reply("A session for the page", schema("WebSession"), SESSION_COOKIES),
            **errors(*codes),
        },
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": json_body(body)}
    return op if bearer else {**op, **PUBLIC}


STATIC_PARAMS: list[Schema] = [
    {
        "name": "version",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9]{1,64}$"},
    },
    {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
    },
]
PASSWORD_ERRORS = (400, 401, 403, 413, 429, 503)  # a password checked under the login throttle
WEB_PATHS: Schema = {
    "/": {
        "get": {"summary": "The web app", **PUBLIC, "responses": {"200": page("The app's page")}},
        "head": {
            "summary": "The web app (headers only)",
            **PUBLIC,
            "responses": {"200": {"description": "OK"}},
        },
    },
    "/static/{version}/{name}": {
        "get": {
            "summary": "A web app asset (cached for a year under the current version)",
            **PUBLIC,
            "parameters": STATIC_PARAMS,
            "responses": {
                "200": {"description": "The asset", "content": {"*/*": {"schema": {}}}},
                **errors(404),
            },
        },
        "head": {
            "summary": "A web app asset (headers only)",
            **PUBLIC,
            "parameters": STATIC_PARAMS,
            "responses": {"200": {"description": "The asset's headers"}, **errors(404)},
        },
    },
    "/web/session": {
        "post": web_session(
            "Sign in from the web app",
            "As `/login`, throttled alike; the refresh token goes only in an httpOnly cookie.",
            schema("Login"),
            *PASSWORD_ERRORS,
        )
    },
    "/web/session/refresh": {
        "post": {
            **web_session(
                "Renew the web app's session",
                "The refresh cookie for a new pair (it rotates); a refused cookie is cleared (401).",
                None,
                401,
                403,
                413,
            ),
            "parameters": [WEB_HEADER, REFRESH_PARAM],
        }
    },
    "/web/session/end": {
        "post": {
            "summary": "Sign the web app out",
            "description": "Ends the refresh cookie's session, if any, and clears the cookies.",
            **PUBLIC,
            "parameters": [WEB_HEADER, {**REFRESH_PARAM, "required": False}],
            "responses": {"200": reply("Signed out", schema("Message"), SESSION_COOKIES), **errors(403, 413)},
        }
    },
    "/web/session/password": {
        "post": web_session(
            "Change your password from the web app",
            "As `/password`; every other session ends and this one gets new cookies.",
            schema("PasswordChange"),
            *PASSWORD_ERRORS,
            bearer=True,
        )
    },
    "/web/dl/files/{filename}": {
        "get": {
            **download("Download your file (web app)", [FILENAME, DOWNLOAD_PARAM], False, errors(401)),
            **PUBLIC,
        },
        "head": {
            **download("Download your file (web app)", [FILENAME, DOWNLOAD_PARAM], True, errors(401)),
            **PUBLIC,
        },
    },
    "/web/dl/shared/{owner}/{filename}": {
        "get": {
            **download(
                "Download a file shared with you (web app)",
                [OWNER, FILENAME, DOWNLOAD_PARAM],
                False,
                errors(401),
            ),
            **PUBLIC,
        },
        "head": {
            **download(
                "Download a file shared with you (web app)",
                [OWNER, FILENAME, DOWNLOAD_PARAM],
                True,
                errors(401),
            ),
            **PUBLIC,
        },
    },
    "/web/qr": {
        "post": {
            "summary": "A QR code of a text (a link's URL), as SVG",
            "requestBody": {"required": True, "content": json_body(schema("QRRequest"))},
            "responses": {
                "200": {
                    "description": "The QR code",
                    "content": {"image/svg+xml": {"schema": {"type": "string"}}},
                },
                **errors(400, 401, 413),
            },
        }
    },
}
PATHS.update(WEB_PATHS)
PATHS["/s/{token}"]["get"]["responses"]["403"] = page("A browser's page: the password was wrong")
PATHS["/s/{token}"]["post"] = {
    "summary": "The public link page's form: open it with a password, or download (`dl`)",
    **PUBLIC,
    "parameters": [LINK_TOKEN],
    "requestBody": {
        "required": False,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "properties": {"password": {"type": "string"}, "dl": {"type": "string"}},
                }
            }
        },
    },
    "responses": {
        "200": {
            "description": "The page with the file's details, or with `dl` the file"
            f" (a form of at most {MAX_FORM_BYTES} bytes).",
            "content": {**HTML, **ANY_BYTES},
        },
        **{str(code): page("The page, saying what went wrong") for code in (403, 410, 413, 429)},
        "404": {
            "description": "The page saying so; a malformed token gets the server's JSON 404",
            "content": {**HTML, **json_body(schema("Error"))},
        },
    },
}

DOCUMENT: Schema = {
    "openapi": "3.1.0",
    "info": {
        "title": "vault",
        "version": __version__,
        "description": 'Encrypted file server. Every error is `{"message", "status"}` with that HTTP status;'
        " protected operations need `Authorization: Bearer <token>` from `POST /login`.",
    },
    "security": [{"bearerAuth": []}],
    "paths": PATHS,
    "components": {
        "securitySchemes": {
            "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            "linkPassword": {
                "type": "http",
                "scheme": "basic",
                "description": "A public link's password, with any user name (`curl -u :PASSWORD`).",
            },
        },
        "schemas": SCHEMAS,
        "responses": ERROR_RESPONSES,
        "parameters": PARAMETERS,
    },
}


class OpenAPIHandler(BaseHandler):
    def get(self) -> None:
        self.write_json(200, DOCUMENT)


def routes() -> list[tuple[str, type]]:
    return [(r"/openapi.json", OpenAPIHandler)]
