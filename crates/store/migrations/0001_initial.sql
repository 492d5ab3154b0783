-- sealroom schema. Portable SQL (SQLite and PostgreSQL): TEXT ids, BIGINT unix seconds,
-- BOOLEAN flags.

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    role TEXT NOT NULL,
    disabled BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL
);

CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id),
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    -- passkey: base64url credential id (unique across all users) and the serialised passkey
    credential_id TEXT UNIQUE,
    passkey TEXT,
    -- software: base64url Ed25519 public key
    public_key TEXT UNIQUE,
    backup_eligible BOOLEAN NOT NULL DEFAULT FALSE,
    restricted_ok BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at BIGINT,
    revoked_reason TEXT
);
CREATE INDEX devices_user ON devices(user_id);

CREATE TABLE enrolments (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id),
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    revoked_at BIGINT,
    first_admin BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id),
    device_id TEXT NOT NULL REFERENCES devices(id),
    created_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX sessions_device ON sessions(device_id);

CREATE TABLE meetings (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    level TEXT NOT NULL,
    organiser_id TEXT NOT NULL REFERENCES users(id),
    starts_at BIGINT,
    ends_at BIGINT,
    lobby BOOLEAN NOT NULL,
    capacity BIGINT NOT NULL,
    locked BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL
);

CREATE TABLE invitations (
    meeting_id TEXT NOT NULL REFERENCES meetings(id),
    user_id TEXT NOT NULL REFERENCES users(id),
    host BOOLEAN NOT NULL,
    PRIMARY KEY (meeting_id, user_id)
);
CREATE INDEX invitations_user ON invitations(user_id);

-- The audit log: each entry's hash covers its fields and the previous entry's hash.
CREATE TABLE audit (
    seq BIGINT PRIMARY KEY,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    subject TEXT NOT NULL,
    source TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);

-- Signed checkpoints of the audit chain head.
CREATE TABLE audit_checkpoints (
    seq BIGINT PRIMARY KEY,
    hash TEXT NOT NULL,
    at BIGINT NOT NULL,
    signature TEXT NOT NULL
);
