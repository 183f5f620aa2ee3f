-- vault schema, version 4 (PRAGMA user_version). See docs/FORMAT.md for the columns' meaning.
-- id is random (not a counter); tag = HMAC under a key derived from master key key_id over
-- id, username, password_hash and token_epoch, so a row cannot be forged or edited without the
-- master key. Raising token_epoch revokes every access token issued before (version 2).
CREATE TABLE IF NOT EXISTS users (
    id            INTEGER PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE COLLATE NOCASE,
    password_hash BLOB NOT NULL,
    key_id        INTEGER NOT NULL,
    tag           BLOB NOT NULL,
    created       REAL NOT NULL,
    quota         INTEGER,  -- per-user overrides set by `run.py admin`; NULL: the configured default
    max_file_size INTEGER,
    token_epoch   INTEGER NOT NULL DEFAULT 0,
    disabled      INTEGER NOT NULL DEFAULT 0,  -- version 3: 1 refuses logins (in the tag once set)
    last_login    REAL                         -- version 3: informational, not tagged
);

-- Invite codes (version 3): a code is stored only as HMAC under the master-derived row key
-- key_id (code_hash), so a row cannot be added without the master key. Single use: used and
-- user_id are set in the transaction that creates the account.
CREATE TABLE IF NOT EXISTS invites (
    code_hash BLOB PRIMARY KEY,
    key_id    INTEGER NOT NULL,
    created   REAL NOT NULL,
    expires   REAL NOT NULL,
    used      REAL,
    user_id   INTEGER
);

-- state: 0 STAGED (upload in progress, never served), 1 LIVE, 2 DELETED (awaiting purge).
-- Header columns are NULL until the upload commits. A resumable (tus) upload is a STAGED row
-- with tus_id set; it keeps its wrapped key, target name, declared length, the offset stored
-- so far and the sealed partial segment (tail) until it completes or expires; its header_tag
-- column then holds the upload tag (docs/FORMAT.md).
CREATE TABLE IF NOT EXISTS files (
    file_id     BLOB PRIMARY KEY,
    owner       INTEGER NOT NULL,
    state       INTEGER NOT NULL,
    name        TEXT,
    version     INTEGER,
    suite       INTEGER,
    seg_size    INTEGER,
    size        INTEGER,
    seg_count   INTEGER,
    sha256      BLOB,
    seg_root    BLOB,
    key_id      INTEGER,
    wrapped_key BLOB,
    header_tag  BLOB,
    created     REAL NOT NULL,
    tus_id      TEXT,
    upload_length INTEGER,
    upload_offset INTEGER,
    tail        BLOB,
    expires     REAL,
    metadata    TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS files_live_name ON files (owner, name) WHERE state = 1;
CREATE UNIQUE INDEX IF NOT EXISTS files_tus_id ON files (tus_id) WHERE tus_id IS NOT NULL;

-- One row per encrypted segment: data = IV || ciphertext || HMAC tag; tag repeats the last 32
-- bytes of data, before it, so all of a file's tags read without touching the blobs. With
-- blob_store: s3 (version 4) data is empty and size holds the object's length (NULL: in data).
CREATE TABLE IF NOT EXISTS segments (
    file_id BLOB NOT NULL,
    idx     INTEGER NOT NULL,
    tag     BLOB NOT NULL,
    data    BLOB NOT NULL,
    size    INTEGER,
    PRIMARY KEY (file_id, idx)
);

-- A file shared with another user, by name (it follows a replacement; deleting the file drops
-- it). tag = HMAC under a master-derived key over owner, name and grantee (docs/FORMAT.md).
CREATE TABLE IF NOT EXISTS grants (
    owner   INTEGER NOT NULL,
    name    TEXT NOT NULL,
    grantee INTEGER NOT NULL,
    created REAL NOT NULL,
    key_id  INTEGER NOT NULL,
    tag     BLOB NOT NULL,
    PRIMARY KEY (owner, name, grantee)
);
CREATE INDEX IF NOT EXISTS grants_grantee ON grants (grantee);

-- A public link: the secret in its URL is stored only as SHA-256 (token_hash). The tag covers
-- every field but the counters (bytes_served, failures, locked_until).
CREATE TABLE IF NOT EXISTS links (
    id            TEXT PRIMARY KEY,
    token_hash    BLOB NOT NULL UNIQUE,
    owner         INTEGER NOT NULL,
    name          TEXT NOT NULL,
    created       REAL NOT NULL,
    expires       REAL,
    password_hash BLOB,
    max_downloads INTEGER,
    bytes_served  INTEGER NOT NULL DEFAULT 0,
    failures      INTEGER NOT NULL DEFAULT 0,
    locked_until  REAL NOT NULL DEFAULT 0,
    key_id        INTEGER NOT NULL,
    tag           BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS links_owner ON links (owner, name);
-- A page of the owner's links (GET /links?limit=N&after=...), by (created, id).
CREATE INDEX IF NOT EXISTS links_created ON links (owner, created, id);

-- The secrets of revoked links (and links of deleted files), so they answer 410, not 404.
CREATE TABLE IF NOT EXISTS revoked_links (
    token_hash BLOB PRIMARY KEY,
    revoked    REAL NOT NULL
);

-- Refresh tokens (version 2): the opaque token is stored only as its SHA-256 (id). Tokens
-- rotated from one login share a family; used and revoked are NULL or the time it happened.
-- tag = HMAC under a master-derived key over every column, rewritten with used and revoked.
CREATE TABLE IF NOT EXISTS refresh_tokens (
    id      BLOB PRIMARY KEY,
    user_id INTEGER NOT NULL,
    family  TEXT NOT NULL,
    epoch   INTEGER NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    used    REAL,
    revoked REAL,
    key_id  INTEGER NOT NULL,
    tag     BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS refresh_tokens_user ON refresh_tokens (user_id, family);
CREATE INDEX IF NOT EXISTS refresh_tokens_revoked ON refresh_tokens (revoked) WHERE revoked IS NOT NULL;

-- Append-only audit log. mac = HMAC(K_audit, previous mac || this entry): rewriting, dropping
-- or reordering an entry breaks the chain from there on (run.py admin audit-verify).
CREATE TABLE IF NOT EXISTS audit (
    seq     INTEGER PRIMARY KEY,
    at      REAL NOT NULL,
    actor   TEXT NOT NULL,
    address TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    outcome TEXT NOT NULL,
    key_id  INTEGER NOT NULL,
    mac     BLOB NOT NULL
);

-- Shared state of the processes serving this database together (workers: N; vault/store.py
-- StateStore, storage/sqlite_state.py). Each process is a holder with a lease it renews; its
-- holds (upload slots, quota bytes, link bytes, pins, locks) count only while the lease runs.
-- Counters: login failures, registrations, and versions raised when a total changes.
CREATE TABLE IF NOT EXISTS state_holders (
    holder  TEXT PRIMARY KEY,
    pid     INTEGER NOT NULL,
    expires REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state_holds (
    id     TEXT PRIMARY KEY,
    kind   TEXT NOT NULL,
    key    TEXT NOT NULL,
    holder TEXT NOT NULL,
    amount INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS state_holds_key ON state_holds (kind, key);
CREATE TABLE IF NOT EXISTS state_counters (
    kind    TEXT NOT NULL,
    key     TEXT NOT NULL,
    count   INTEGER NOT NULL,
    stamp   REAL NOT NULL,
    version INTEGER NOT NULL,
    expires REAL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
-- purge looks for STAGED and DELETED rows often when several processes share the database
CREATE INDEX IF NOT EXISTS files_unlive ON files (state) WHERE state != 1;
