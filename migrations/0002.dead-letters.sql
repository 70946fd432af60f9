-- depends: 0001.create-logs
-- Stream entries that could not be stored, with why, so that nothing is dropped
-- silently: PostgreSQL rejected them (poison), they were not ours (malformed), or
-- they were delivered too often without ever being stored (they kill workers).
CREATE TABLE dead_letters (
    id              BIGSERIAL PRIMARY KEY,
    stream_id       VARCHAR(41) NOT NULL,
    payload         JSONB       NOT NULL,
    reason          TEXT        NOT NULL,
    delivery_count  INTEGER     NOT NULL,
    first_failed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_failed_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT dead_letters_stream_id_key UNIQUE (stream_id)
);
