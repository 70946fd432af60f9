-- depends: 0004.device-sequences
-- Credentials. Only a SHA-256 of each secret is kept (secrets are 256 random bits, so
-- a fast hash is enough; nothing here can be turned back into a key). A key's role
-- and scope never change after creation: revoke it and create another. The API
-- checks keys against a copy in Redis (kept in step by the CLI and a beat task),
-- so ingest goes on while PostgreSQL is down.
CREATE TABLE device_keys (
    id            VARCHAR(32)  PRIMARY KEY,
    name          TEXT         NOT NULL DEFAULT '',
    role          VARCHAR(10)  NOT NULL CHECK (role IN ('device', 'reader', 'admin')),
    device_id     VARCHAR(100),            -- role device: one device ...
    device_prefix VARCHAR(100),            -- ... or every device id starting with this (a fleet key)
    secret_sha256 CHAR(64)     NOT NULL,
    rate_limit    DOUBLE PRECISION,        -- logs per second per device; NULL: RATE_LIMIT_PER_DEVICE
    rate_burst    INTEGER,                 -- NULL: RATE_LIMIT_BURST
    created_at    TIMESTAMPTZ  NOT NULL DEFAULT now(),
    last_used_at  TIMESTAMPTZ,
    revoked_at    TIMESTAMPTZ,
    CHECK ((role = 'device') = (num_nonnulls(device_id, device_prefix) = 1))
);
