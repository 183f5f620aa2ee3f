-- vault schema for PostgreSQL (storage/postgres.py), version 3: the same model, columns and
-- meaning as storage/schema.sql (docs/FORMAT.md), in PostgreSQL's types: INTEGER -> BIGINT,
-- REAL -> DOUBLE PRECISION, BLOB -> BYTEA. The version is kept in vault_meta, not user_version.
CREATE TABLE IF NOT EXISTS vault_meta (
    key   TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS users (
    id            BIGINT PRIMARY KEY,
    username      TEXT NOT NULL,
    password_hash BYTEA NOT NULL,
    key_id        BIGINT NOT NULL,
    tag           BYTEA NOT NULL,
    created       DOUBLE PRECISION NOT NULL,
    quota         BIGINT,
    max_file_size BIGINT,
    token_epoch   BIGINT NOT NULL DEFAULT 0,
    disabled      BIGINT NOT NULL DEFAULT 0,
    last_login    DOUBLE PRECISION
);
-- SQLite's COLLATE NOCASE folds ASCII only; user names are ASCII (vault/auth.py), so lower()
-- gives the same uniqueness.
CREATE UNIQUE INDEX IF NOT EXISTS users_username ON users (lower(username));

CREATE TABLE IF NOT EXISTS invites (
    code_hash BYTEA PRIMARY KEY,
    key_id    BIGINT NOT NULL,
    created   DOUBLE PRECISION NOT NULL,
    expires   DOUBLE PRECISION NOT NULL,
    used      DOUBLE PRECISION,
    user_id   BIGINT
);

CREATE TABLE IF NOT EXISTS files (
    file_id       BYTEA PRIMARY KEY,
    owner         BIGINT NOT NULL,
    state         BIGINT NOT NULL,
    name          TEXT,
    version       BIGINT,
    suite         BIGINT,
    seg_size      BIGINT,
    size          BIGINT,
    seg_count     BIGINT,
    sha256        BYTEA,
    seg_root      BYTEA,
    key_id        BIGINT,
    wrapped_key   BYTEA,
    header_tag    BYTEA,
    created       DOUBLE PRECISION NOT NULL,
    tus_id        TEXT,
    upload_length BIGINT,
    upload_offset BIGINT,
    tail          BYTEA,
    expires       DOUBLE PRECISION,
    metadata      TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS files_live_name ON files (owner, name) WHERE state = 1;
-- A page of the owner's files (GET /files?limit=N&after=...): names in code point order.
CREATE INDEX IF NOT EXISTS files_live_name_c ON files (owner, name COLLATE "C") WHERE state = 1;
CREATE UNIQUE INDEX IF NOT EXISTS files_tus_id ON files (tus_id) WHERE tus_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS files_state ON files (state);

-- Segments are stored as they are (already encrypted): no compression attempt by TOAST.
CREATE TABLE IF NOT EXISTS segments (
    file_id BYTEA NOT NULL,
    idx     BIGINT NOT NULL,
    tag     BYTEA NOT NULL,
    data    BYTEA NOT NULL,
    PRIMARY KEY (file_id, idx)
);
ALTER TABLE segments ALTER COLUMN data SET STORAGE EXTERNAL;
-- version 4: blob_store: s3 keeps data empty and the object's length in size (NULL: in data)
ALTER TABLE segments ADD COLUMN IF NOT EXISTS size BIGINT;

CREATE TABLE IF NOT EXISTS grants (
    owner   BIGINT NOT NULL,
    name    TEXT NOT NULL,
    grantee BIGINT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    key_id  BIGINT NOT NULL,
    tag     BYTEA NOT NULL,
    PRIMARY KEY (owner, name, grantee)
);
CREATE INDEX IF NOT EXISTS grants_grantee ON grants (grantee);

CREATE TABLE IF NOT EXISTS links (
    id            TEXT PRIMARY KEY,
    token_hash    BYTEA NOT NULL UNIQUE,
    owner         BIGINT NOT NULL,
    name          TEXT NOT NULL,
    created       DOUBLE PRECISION NOT NULL,
    expires       DOUBLE PRECISION,
    password_hash BYTEA,
    max_downloads BIGINT,
    bytes_served  BIGINT NOT NULL DEFAULT 0,
    failures      BIGINT NOT NULL DEFAULT 0,
    locked_until  DOUBLE PRECISION NOT NULL DEFAULT 0,
    key_id        BIGINT NOT NULL,
    tag           BYTEA NOT NULL
);
CREATE INDEX IF NOT EXISTS links_owner ON links (owner, name);
-- A page of the owner's links (GET /links?limit=N&after=...), by (created, id).
CREATE INDEX IF NOT EXISTS links_created ON links (owner, created, id COLLATE "C");

CREATE TABLE IF NOT EXISTS revoked_links (
    token_hash BYTEA PRIMARY KEY,
    revoked    DOUBLE PRECISION NOT NULL
);

CREATE TABLE IF NOT EXISTS refresh_tokens (
    id      BYTEA PRIMARY KEY,
    user_id BIGINT NOT NULL,
    family  TEXT NOT NULL,
    epoch   BIGINT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    expires DOUBLE PRECISION NOT NULL,
    used    DOUBLE PRECISION,
    revoked DOUBLE PRECISION,
    key_id  BIGINT NOT NULL,
    tag     BYTEA NOT NULL
);
CREATE INDEX IF NOT EXISTS refresh_tokens_user ON refresh_tokens (user_id, family);
CREATE INDEX IF NOT EXISTS refresh_tokens_revoked ON refresh_tokens (revoked) WHERE revoked IS NOT NULL;

-- Appended under a transaction-scoped advisory lock (storage/postgres.py), so entries from every
-- instance form one contiguous chain.
CREATE TABLE IF NOT EXISTS audit (
    seq     BIGINT PRIMARY KEY,
    at      DOUBLE PRECISION NOT NULL,
    actor   TEXT NOT NULL,
    address TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    outcome TEXT NOT NULL,
    key_id  BIGINT NOT NULL,
    mac     BYTEA NOT NULL
);

-- Shared state of the instances serving this database (vault/store.py StateStore,
-- storage/postgres_state.py): each process is a holder with a lease it renews; its holds (upload
-- slots, quota bytes, link bytes, pins, locks) count only while the lease runs. Counters: login
-- failures, registrations, and versions raised when a total changes.
CREATE TABLE IF NOT EXISTS state_holders (
    holder  TEXT PRIMARY KEY,
    pid     BIGINT NOT NULL,
    expires DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS state_holds (
    id     TEXT PRIMARY KEY,
    kind   TEXT NOT NULL,
    key    TEXT NOT NULL,
    holder TEXT NOT NULL,
    amount BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS state_holds_key ON state_holds (kind, key);
CREATE TABLE IF NOT EXISTS state_counters (
    kind    TEXT NOT NULL,
    key     TEXT NOT NULL,
    count   BIGINT NOT NULL,
    stamp   DOUBLE PRECISION NOT NULL,
    version BIGINT NOT NULL,
    expires DOUBLE PRECISION,
    PRIMARY KEY (kind, key)
);
