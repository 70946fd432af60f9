-- The seed's `logs` table, plus the stream entry id that makes inserts idempotent
-- (a redelivered entry hits ON CONFLICT and is skipped) and the time we received the log.
CREATE TABLE logs (
    id          BIGSERIAL PRIMARY KEY,
    device_id   VARCHAR(100) NOT NULL,
    log_level   VARCHAR(10)  NOT NULL
                CHECK (log_level IN ('DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL')),
    message     TEXT         NOT NULL,
    log_data    JSONB,
    created_at  TIMESTAMPTZ  NOT NULL,
    received_at TIMESTAMPTZ  NOT NULL,
    stream_id   VARCHAR(41)  NOT NULL,
    CONSTRAINT logs_stream_id_key UNIQUE (stream_id)
);

-- Newest-first reads per device: GET /api/logs/<device_id>.
CREATE INDEX logs_device_created_idx ON logs (device_id, created_at DESC, id DESC);

-- Per-level totals for /api/stats, kept in the same transaction as the inserts so they
-- always agree with the table without counting it. One row per (writer, level): each
-- drain consumer updates only its own rows, so concurrent writers never wait on each other.
CREATE TABLE log_counts (
    writer    TEXT        NOT NULL,
    log_level VARCHAR(10) NOT NULL,
    n         BIGINT      NOT NULL DEFAULT 0,
    PRIMARY KEY (writer, log_level)
);
