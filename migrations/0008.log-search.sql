-- depends: 0007.partitioned-logs
-- Finding logs (docs/querying.md): what GET /api/logs filters on, served by indexes,
-- and per-device counters for the device list.
--
-- `q` (a case-insensitive substring of message, ILIKE) is served by a trigram index;
-- GIN's pending list (fastupdate, on by default) lets a drain's insert append its
-- trigrams and leaves merging them into the index to VACUUM, in bulk.
-- Fleet-wide pages are ordered by (created_at, id): newest first, they read this
-- index backwards, and since/until are ranges of it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX logs_message_trgm_idx ON logs USING gin (message gin_trgm_ops);
CREATE INDEX logs_created_idx ON logs (created_at);

-- The device list (GET /api/devices) reads last-seen times and per-level totals here,
-- never from `logs`. Kept like log_counts: in the transaction that inserts the rows,
-- per writer (concurrent drains never wait on each other) and per UTC day of receive
-- time (dropping a partition deletes its days here too). Apart from log_counts so that
-- /api/stats's totals still sum a few rows per day, not one per device.
CREATE TABLE device_counts (
    writer    TEXT         NOT NULL,
    day       DATE         NOT NULL,
    device_id VARCHAR(100) NOT NULL,
    -- Logs per level in columns, not rows: a batch updates one row per device, not five.
    debug     BIGINT       NOT NULL DEFAULT 0,
    info      BIGINT       NOT NULL DEFAULT 0,
    warning   BIGINT       NOT NULL DEFAULT 0,
    error     BIGINT       NOT NULL DEFAULT 0,
    critical  BIGINT       NOT NULL DEFAULT 0,
    last_seen TIMESTAMPTZ  NOT NULL,  -- the newest receive time counted in the row
    PRIMARY KEY (writer, day, device_id)
);
-- Rows already stored are counted now; those of logs_legacy as `make migrate` moves them.
INSERT INTO device_counts (writer, day, device_id, debug, info, warning, error, critical, last_seen)
    SELECT 'migration', (received_at AT TIME ZONE 'UTC')::date, device_id,
           count(*) FILTER (WHERE log_level = 'DEBUG'), count(*) FILTER (WHERE log_level = 'INFO'),
           count(*) FILTER (WHERE log_level = 'WARNING'), count(*) FILTER (WHERE log_level = 'ERROR'),
           count(*) FILTER (WHERE log_level = 'CRITICAL'), max(received_at)
    FROM logs GROUP BY 2, 3;
